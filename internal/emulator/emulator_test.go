package emulator

import (
	"context"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func TestWebhookQueueRetries(t *testing.T) {
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Sig") != "ok" {
			t.Errorf("header not set")
		}
		if calls.Add(1) < 3 {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	defer srv.Close()
	q := NewWebhookQueue(WebhookConfig{URL: srv.URL, Attempts: 3, Backoff: time.Millisecond,
		Header: func(h http.Header, _ []byte) { h.Set("X-Sig", "ok") }})
	q.Enqueue([]byte(`{}`))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := q.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	q.Enqueue([]byte(`{}`)) // answered at once now
	if err := q.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	q.Close()
	if s := q.Stats(); s != (DeliveryStats{Attempts: 4, Delivered: 2}) {
		t.Errorf("stats %+v", s)
	}
	NewWebhookQueue(WebhookConfig{}).Enqueue([]byte(`{}`)) // no URL: nothing
}

func TestFaultsAndCounters(t *testing.T) {
	f := NewFaults(1, 0.2, 0.1, 0)
	c := NewRequestCounters[string]("a", "b")
	codes := map[int]int{}
	for range 1000 {
		c.Request("a")
		switch code := f.Draw(); code {
		case http.StatusTooManyRequests:
			c.Throttled()
		case http.StatusInternalServerError:
			c.Failed()
		}
		codes[f.Draw()]++
	}
	if codes[429] < 150 || codes[429] > 250 || codes[500] < 60 || codes[500] > 140 {
		t.Errorf("codes %v", codes)
	}
	c.ListServed("x")
	got := c.Counts()
	if got.Total != 1000 || got.ByKind["a"] != 1000 || got.ByKind["b"] != 0 || got.Throttled == 0 || c.ListCalls("x") != 1 {
		t.Errorf("counts %+v", got)
	}
	c.Reset()
	if got := c.Counts(); got.Total != 0 || got.Throttled != 0 || c.ListCalls("x") != 0 {
		t.Errorf("after reset %+v", got)
	}
	f.SetRates(0, 0)
	if f.Draw() != 0 {
		t.Error("fault with zero rates")
	}
	f.SetLatency(time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if f.Delay(ctx) {
		t.Error("Delay outlived its context")
	}
}

func TestPick(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	n := map[string]int{}
	items := []string{"a", "bb", "cccccccc"} // weights 1, 2, 8
	for range 11000 {
		n[Pick(rng, items, func(s string) int { return len(s) })]++
	}
	if n["a"] < 700 || n["a"] > 1300 || n["cccccccc"] < 7500 || n["cccccccc"] > 8500 {
		t.Errorf("draws %v", n)
	}
}
