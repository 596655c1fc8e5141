package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// start runs the command in process and returns its base URL.
func start(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"--listen", "127.0.0.1:0"}, args...),
			func(string) string { return "" }, pw, io.Discard)
		pw.Close()
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("no banner: %v", err)
	}
	go io.Copy(io.Discard, pr)
	_, url, ok := strings.Cut(strings.TrimSpace(line), "listening on ")
	if !ok {
		t.Fatalf("banner %q", line)
	}
	return url
}

func do(t *testing.T, method, url string, out any) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	req.Header.Set("Authorization", "Bearer sk_test_demo")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: %d %s", method, url, resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, out); err != nil {
		t.Fatalf("%s %s: %v: %s", method, url, err, body)
	}
}

func TestControlAPIDrivesLiveChanges(t *testing.T) {
	var mu sync.Mutex
	hooks := 0
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Stripe-Signature") == "" {
			w.WriteHeader(400)
			return
		}
		mu.Lock()
		hooks++
		mu.Unlock()
	}))
	defer hook.Close()
	base := start(t, "--customers", "30", "--seed", "3", "--accounts", "platform,acct_1Demo",
		"--webhook-url", hook.URL, "--webhook-secret", "whsec_demo")

	type summary struct {
		Customers, Transactions, Events int
		Accounts                        map[string]struct{ Customers, Transactions int }
	}
	var before summary
	do(t, "GET", base+"/_emu/truth/summary", &before)
	if before.Customers != 60 || before.Accounts["acct_1Demo"].Customers != 30 || before.Accounts["platform"].Customers != 30 {
		t.Fatalf("summary %+v", before)
	}
	var made []json.RawMessage
	do(t, "POST", base+"/_emu/mutate?n=20&account=acct_1Demo", &made)
	var after summary
	do(t, "GET", base+"/_emu/truth/summary", &after)
	if len(made) != 20 || after.Transactions != before.Transactions+20 ||
		after.Accounts["acct_1Demo"].Transactions != before.Accounts["acct_1Demo"].Transactions+20 {
		t.Fatalf("after 20 mutations: %+v (before %+v)", after, before)
	}

	var edited struct{ ID, Description string }
	do(t, "POST", base+"/_emu/edit-description?description=renamed", &edited)
	if edited.ID == "" || edited.Description != "renamed" {
		t.Errorf("edited %+v", edited)
	}

	var list struct{ Data []json.RawMessage }
	do(t, "GET", base+"/v1/customers?limit=5", &list)
	if len(list.Data) != 5 {
		t.Errorf("API through the command: %d customers", len(list.Data))
	}

	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := hooks
		mu.Unlock()
		if n >= 20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d webhooks delivered for 20 mutations", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestUnknownProvider(t *testing.T) {
	err := run(context.Background(), []string{"--provider", "paypal"}, func(string) string { return "" }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "paypal") {
		t.Fatalf("got %v", err)
	}
}

// The documented limits are enforced unless --limits off; the flags
// override them.
func TestLimitFlags(t *testing.T) {
	status := func(url string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer sk_test_demo")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Stripe-Rate-Limited-Reason")
	}
	url := start(t, "--customers", "2", "--rate-limit", "1", "--endpoint-rate-limit", "5")
	status(url + "/v1/customers")
	if code, reason := status(url + "/v1/events"); code != http.StatusTooManyRequests || reason != "global-rate" {
		t.Errorf("second request at 1/s: %d %q", code, reason)
	}
	url = start(t, "--customers", "2", "--endpoint-rate-limit", "1")
	status(url + "/v1/customers")
	if code, reason := status(url + "/v1/customers"); code != http.StatusTooManyRequests || reason != "endpoint-rate" {
		t.Errorf("second request to an endpoint at 1/s: %d %q", code, reason)
	}
	url = start(t, "--customers", "2", "--limits", "off", "--rate-limit", "1")
	for range 5 {
		if code, _ := status(url + "/v1/customers"); code != http.StatusOK {
			t.Errorf("--limits off: %d", code)
		}
	}
	for _, bad := range [][]string{{"--limits", "some"}, {"--rate-limit-scope", "all"}, {"--rate-limit", "-1"}} {
		if err := run(context.Background(), bad, func(string) string { return "" }, io.Discard, io.Discard); err == nil {
			t.Errorf("%v: no error", bad)
		}
	}
}
