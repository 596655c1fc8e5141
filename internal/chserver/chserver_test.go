package chserver

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestFindBinary(t *testing.T) {
	exe := fakeInfo{mode: 0o755}
	cases := []struct {
		name     string
		files    map[string]fs.FileInfo
		onPath   map[string]string
		wantPath string
		wantArgs []string
	}{
		{"debian package", map[string]fs.FileInfo{"/usr/sbin/clickhouse-server": exe},
			map[string]string{"clickhouse": "/opt/clickhouse"}, "/usr/sbin/clickhouse-server", nil},
		{"clickhouse-server on PATH", nil,
			map[string]string{"clickhouse-server": "/usr/local/bin/clickhouse-server", "clickhouse": "/opt/clickhouse"},
			"/usr/local/bin/clickhouse-server", nil},
		{"single clickhouse binary", nil,
			map[string]string{"clickhouse": "/opt/clickhouse"}, "/opt/clickhouse", []string{"server"}},
		{"not executable", map[string]fs.FileInfo{"/usr/sbin/clickhouse-server": fakeInfo{mode: 0o644}},
			map[string]string{"clickhouse": "/opt/clickhouse"}, "/opt/clickhouse", []string{"server"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path, args, err := findBinary(fakeStat(c.files), fakeLookPath(c.onPath))
			if err != nil {
				t.Fatal(err)
			}
			if path != c.wantPath || strings.Join(args, " ") != strings.Join(c.wantArgs, " ") {
				t.Errorf("findBinary = %q %q, want %q %q", path, args, c.wantPath, c.wantArgs)
			}
		})
	}
}

func TestFindBinaryMissingSaysWhatToInstall(t *testing.T) {
	_, _, err := findBinary(fakeStat(nil), fakeLookPath(nil))
	if err == nil {
		t.Fatal("findBinary found a server where there is none")
	}
	for _, want := range []string{"clickhouse-server not found", "apt-get install -y clickhouse-server"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

// Both engines, whichever SYNCD_TEST_CLICKHOUSE names: the harness must
// start, restart and stop each the same way.
func TestStartQueryRestartStop(t *testing.T) {
	for _, e := range []Engine{EngineServer, EngineChDB} {
		t.Run(string(e), func(t *testing.T) { testStartQueryRestartStop(t, e) })
	}
}

func testStartQueryRestartStop(t *testing.T, engine Engine) {
	var err error
	if engine == EngineServer {
		_, _, err = FindBinary()
	} else {
		_, err = findChDB(os.Getenv)
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	s := &Server{Dir: dir, Engine: engine}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop() })
	if want := "clickhouse://127.0.0.1:" + strconv.Itoa(s.TCPPort) + "/db"; s.DSN("db") != want {
		t.Errorf("DSN = %q, want %q", s.DSN("db"), want)
	}

	query(t, s, "CREATE TABLE default.t (n UInt32) ENGINE = MergeTree ORDER BY n")
	query(t, s, "INSERT INTO default.t (n) VALUES (1), (2), (3)")
	tcp, http := s.TCPPort, s.HTTPPort
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if s.TCPPort != tcp || s.HTTPPort != http {
		t.Errorf("Restart moved ports from %d/%d to %d/%d", tcp, http, s.TCPPort, s.HTTPPort)
	}
	if got := query(t, s, "SELECT sum(n) FROM default.t"); got != "6\n" {
		t.Errorf("after Restart, sum = %q, want 6", got)
	}

	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := httpGet(s, "/ping"); err == nil {
		t.Error("server still answers after Stop")
	}

	// Start again on the same directory: the data is still there.
	s2 := &Server{Dir: dir, Engine: engine}
	if err := s2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s2.Stop() })
	if got := query(t, s2, "SELECT count() FROM default.t"); got != "3\n" {
		t.Errorf("after a new Start on the same dir, count = %q, want 3", got)
	}
}

func query(t *testing.T, s *Server, q string) string {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Post("http://127.0.0.1:"+strconv.Itoa(s.HTTPPort)+"/", "text/plain", strings.NewReader(q))
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = errors.New(resp.Status + ": " + string(body))
	}
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return string(body)
}

func httpGet(s *Server, path string) (string, error) {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://127.0.0.1:" + strconv.Itoa(s.HTTPPort) + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", errors.New(resp.Status + ": " + string(b))
	}
	return string(b), nil
}

type fakeInfo struct {
	fs.FileInfo
	mode fs.FileMode
}

func (f fakeInfo) IsDir() bool       { return false }
func (f fakeInfo) Mode() fs.FileMode { return f.mode }

func fakeStat(files map[string]fs.FileInfo) func(string) (fs.FileInfo, error) {
	return func(p string) (fs.FileInfo, error) {
		if fi, ok := files[p]; ok {
			return fi, nil
		}
		return nil, fs.ErrNotExist
	}
}

func fakeLookPath(onPath map[string]string) func(string) (string, error) {
	return func(name string) (string, error) {
		if p, ok := onPath[name]; ok {
			return p, nil
		}
		return "", errors.New("not found")
	}
}

// TestChDBIgnoresAServerConfigInItsDir: a directory that held the 18.16
// server (make demo's .tmp/clickhouse, say) has its config.xml, which
// clickhouse-local would read from its working directory; the 26.7 engine
// starts there all the same.
func TestChDBIgnoresAServerConfigInItsDir(t *testing.T) {
	if _, err := findChDB(os.Getenv); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/config.xml", []byte("<yandex><not-closed>"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := &Server{Dir: dir, Engine: EngineChDB}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	if got := query(t, s, "SELECT 1"); got != "1\n" {
		t.Errorf("SELECT 1 = %q", got)
	}
}
