package main

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// The load generator's HTTP client reads every response shape net/http's
// server sends, keeps its connection between requests, and redials when
// the server closes it.
func TestPosterReadsResponsesAndKeepsConnection(t *testing.T) {
	var conns atomic.Int64
	var got atomic.Value
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got.Store(r.Method + " " + r.URL.Path + " " + r.Header.Get("Stripe-Signature") + " " + string(b))
		switch string(b) {
		case "sized":
			w.Write([]byte("accepted"))
		case "chunked":
			w.Write([]byte("part one;"))
			w.(http.Flusher).Flush()
			w.Write([]byte("part two"))
		case "close":
			w.Header().Set("Connection", "close")
			w.Write([]byte("bye"))
		case "busy":
			http.Error(w, "queue full", http.StatusServiceUnavailable)
		case "empty":
			w.WriteHeader(http.StatusOK)
		}
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()

	p := &poster{addr: strings.TrimPrefix(srv.URL, "http://"), path: "/webhooks/stripe"}
	defer p.close()
	for _, c := range []struct {
		body  string
		want  int
		conns int64
	}{
		{"sized", 200, 1}, {"chunked", 200, 1}, {"empty", 200, 1}, {"busy", 503, 1},
		{"close", 200, 1}, {"sized", 200, 2}, {"chunked", 200, 2},
	} {
		status, err := p.post("t=1,v1=abc", []byte(c.body))
		if err != nil || status != c.want {
			t.Fatalf("%s: status %d, err %v; want %d", c.body, status, err, c.want)
		}
		if g := got.Load().(string); g != "POST /webhooks/stripe t=1,v1=abc "+c.body {
			t.Errorf("the server got %q", g)
		}
		if n := conns.Load(); n != c.conns {
			t.Errorf("after %s: %d connections; want %d", c.body, n, c.conns)
		}
	}
}
