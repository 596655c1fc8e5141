package backfill

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/stripeemu"
)

// BenchmarkRateLimitUtilisation: 150 ms per request and --rate-limit 100;
// reports achieved requests/s ÷ the limit (goal ≥ 0.95).
//
//	go test ./internal/backfill -run '^$' -bench RateLimitUtilisation -benchtime 1x
func BenchmarkRateLimitUtilisation(b *testing.B) {
	const limit = 100
	w := newWarehouse(b, 50000)
	_, url := newEmulator(b, stripeemu.Config{Seed: 11, Customers: 1500, Latency: 150 * time.Millisecond})
	for b.Loop() {
		rec := &stamps{base: http.DefaultTransport}
		src := NewStripeSource(StripeOptions{APIKey: testKey, URL: url, RateLimit: limit, Retry: fastRetry,
			Metrics: w.m, Logger: testLogger(b), HTTPClient: &http.Client{Transport: rec}})
		sum, err := Run(context.Background(), Options{Source: src, Conn: w.conn, Sink: w.sink, Metrics: w.m,
			Logger: testLogger(b), Full: true})
		if err != nil {
			b.Fatal(err)
		}
		perSec := float64(sum.Requests) / sum.Duration.Seconds()
		steady := rec.steady()
		b.ReportMetric(perSec/limit, "utilisation")
		b.ReportMetric(steady/limit, "steady-utilisation")
		b.Logf("%v: %.1f req/s of %d over the whole run; %.1f req/s between the 5th and 95th percentile request", sum, perSec, limit, steady)
	}
}

// BenchmarkRowsIntoClickHouse: no latency, no limit, a few customers with
// very many transactions; reports rows/s committed (goal ≥ 100,000).
//
//	go test ./internal/backfill -run '^$' -bench RowsIntoClickHouse -benchtime 1x
func BenchmarkRowsIntoClickHouse(b *testing.B) {
	w := newWarehouse(b, 100000)
	_, url := newEmulator(b, stripeemu.Config{Seed: 12, Customers: 1,
		HeavyCustomers: []int{150000, 150000, 150000, 150000}})
	for b.Loop() {
		src := newSource(b, url, w.m, 0)
		sum, err := Run(context.Background(), Options{Source: src, Conn: w.conn, Sink: w.sink, Metrics: w.m,
			Logger: testLogger(b), Full: true, Concurrency: 4})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(sum.Rows)/sum.Duration.Seconds(), "rows/s")
		b.Logf("%v: %.0f rows/s", sum, float64(sum.Rows)/sum.Duration.Seconds())
	}
}

// stamps records when each request was sent.
type stamps struct {
	base http.RoundTripper
	mu   sync.Mutex
	at   []time.Time
}

func (s *stamps) RoundTrip(r *http.Request) (*http.Response, error) {
	s.mu.Lock()
	s.at = append(s.at, time.Now())
	s.mu.Unlock()
	return s.base.RoundTrip(r)
}

// steady is the request rate between the 5th and the 95th percentile
// request: the run without its start-up and its tail (a customer with
// thousands of transactions is read page by page, one request at a time).
func (s *stamps) steady() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.at)
	lo, hi := n/20, n-n/20-1
	if hi <= lo {
		return 0
	}
	return float64(hi-lo) / s.at[hi].Sub(s.at[lo]).Seconds()
}
