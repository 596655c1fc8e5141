package main

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/syncd/syncd/internal/config"
	"github.com/syncd/syncd/internal/metrics"
)

// noClickHouse is a DSN nothing answers: serve starts and keeps retrying,
// which is all the admin port needs.
const noClickHouse = "clickhouse://127.0.0.1:1/nowhere"

// getBody answers GET url's status and body; 0 when no answer came.
func getBody(t *testing.T, client *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Logf("GET %s: %v", url, err)
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestPprofOnlyWithTheFlag: /debug/pprof/ (and its cmdline, which shows a
// secret given as a flag) is a 404 unless --pprof or SYNCD_PPROF asks for it.
func TestPprofOnlyWithTheFlag(t *testing.T) {
	paths := []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/heap", "/debug/pprof/symbol"}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want int
	}{
		{"default", nil, nil, 404},
		{"--pprof", []string{"--pprof"}, nil, 200},
		{"SYNCD_PPROF", nil, map[string]string{"SYNCD_PPROF": "true"}, 200},
		{"--pprof=false over SYNCD_PPROF", []string{"--pprof=false"}, map[string]string{"SYNCD_PPROF": "true"}, 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := serveInProcessEnv(t, serveArgs(noClickHouse, tc.args...), func(k string) string { return tc.env[k] })
			for _, p := range paths {
				if code, _ := getBody(t, http.DefaultClient, in.admin+p); code != tc.want {
					t.Errorf("GET %s = %d, want %d", p, code, tc.want)
				}
				if code, _ := getBody(t, http.DefaultClient, in.web+p); code != 404 {
					t.Errorf("GET %s on the webhook port = %d, want 404", p, code)
				}
			}
			if code, _ := getBody(t, http.DefaultClient, in.admin+"/healthz"); code != 200 {
				t.Errorf("/healthz = %d", code)
			}
		})
	}
}

// TestAdminBoundsProfiles: a profile or trace longer than maxProfile is
// refused at once with 400, not run for as long as asked (net/http/pprof
// extends the write deadline by ?seconds=, so WriteTimeout alone would not
// bound it); one within it is served.
func TestAdminBoundsProfiles(t *testing.T) {
	in := serveInProcess(t, serveArgs(noClickHouse, "--pprof"))
	client := &http.Client{Timeout: 10 * time.Second}
	for _, p := range []string{"/debug/pprof/profile?seconds=3600", "/debug/pprof/trace?seconds=61",
		"/debug/pprof/heap?seconds=86400", "/debug/pprof/profile?seconds=Inf", "/debug/pprof/trace?seconds=NaN"} {
		start := time.Now()
		code, body := getBody(t, client, in.admin+p)
		if code != 400 || !strings.Contains(body, "at most 60") {
			t.Errorf("GET %s = %d %.80q, want 400 saying the limit", p, code, body)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("GET %s took %s to be refused", p, took)
		}
	}
	if code, body := getBody(t, client, in.admin+"/debug/pprof/trace?seconds=0.2"); code != 200 || body == "" {
		t.Errorf("a 0.2s trace: %d, %d bytes", code, len(body))
	}
	if code, body := getBody(t, client, in.admin+"/debug/pprof/profile?seconds=1"); code != 200 || body == "" {
		t.Errorf("a 1s CPU profile: %d, %d bytes", code, len(body))
	}
}

// TestAdminServerTimeouts: a slow or idle client cannot hold an admin
// connection open for ever, and an answer's write is bounded.
func TestAdminServerTimeouts(t *testing.T) {
	srv := adminServer(&config.Config{}, metrics.New(), &readiness{store: &store{}}, zap.NewNop())
	for name, d := range map[string]time.Duration{
		"ReadHeaderTimeout": srv.ReadHeaderTimeout,
		"ReadTimeout":       srv.ReadTimeout,
		"WriteTimeout":      srv.WriteTimeout,
		"IdleTimeout":       srv.IdleTimeout,
	} {
		if d <= 0 || d > 2*time.Minute {
			t.Errorf("admin %s = %s, want set and at most 2m", name, d)
		}
	}
}
