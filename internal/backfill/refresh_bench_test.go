package backfill

import (
	"context"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/stripeemu"
)

// BenchmarkRefreshUtilisation marks every customer of an emulator whose
// answers take 300 ms dirty at once and reports how much of the rate limit
// the refresher used while draining them (requests/s ÷ limit), with the
// default, measured, number of refreshes in flight. Run:
//
//	go test ./internal/backfill -run '^$' -bench RefreshUtilisation -benchtime 1x
func BenchmarkRefreshUtilisation(b *testing.B) {
	const (
		limit     = 100.0
		customers = 1500
	)
	w := newWarehouse(b, 10000)
	emu, url := newEmulator(b, stripeemu.Config{Seed: 41, Customers: customers, Latency: 300 * time.Millisecond})
	for range b.N {
		emu.ResetCounters()
		r := NewRefresher(RefresherOptions{Source: newSource(b, url, w.m, limit), Sink: w.sink, Conn: w.conn, Metrics: w.m,
			Logger: testLogger(b), SweepInterval: time.Hour, RecentInterval: time.Hour})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = r.Run(ctx); close(done) }()
		start := time.Now()
		for _, c := range emu.Customers() {
			r.MarkDirty(c.Account, c.ID, "")
		}
		for !r.Idle() {
			time.Sleep(5 * time.Millisecond)
		}
		elapsed := time.Since(start)
		cancel()
		<-done
		n := emu.Requests().Total
		b.ReportMetric(float64(n)/elapsed.Seconds()/limit, "utilisation")
		b.ReportMetric(float64(n)/elapsed.Seconds(), "requests/s")
		b.ReportMetric(elapsed.Seconds(), "s")
	}
}
