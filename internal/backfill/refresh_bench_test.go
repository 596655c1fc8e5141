package backfill

import (
	"context"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/sink"
	"github.com/syncd/syncd/internal/stripeemu"
)

// refreshLatency is the emulator's answer time in the refresh benchmarks:
// about a real Stripe list call's.
const refreshLatency = 300 * time.Millisecond

// BenchmarkRefreshUtilisation marks every customer of an emulator whose
// answers take 300 ms dirty at once and reports how much of the binding
// rate limit (what the source reports as this process's limit) the
// refresher used while draining them, with the default, measured, number
// of refreshes reading the API. Run:
//
//	go test ./internal/backfill -run '^$' -bench RefreshUtilisation -benchtime 1x
//
// "incremental" is `syncd serve`'s steady state: every customer's cursor
// is held (as a backfill leaves it) and one transaction is new, so each
// refresh is one request. "full" holds no cursor: each refresh reads the
// customer's whole history, newest page first, one page after another,
// and the few customers with up to 20 pages decide when the drain ends.
// "slow_commits" is "incremental" with a sink that lingers 1 s before each
// insert, as if every ClickHouse commit took a second, at limit 200: a
// refresh that held its place until its rows and cursor were committed
// would need 200 × 2.3 s of them.
// utilisation is the requests over the whole drain (first mark to idle)
// ÷ the limit; api_utilisation is the same up to the last request's
// arrival at the emulator (sampled every 5 ms), leaving out the last
// answers and commits; queued_utilisation up to the moment the
// last customer started, while work was waiting for the refresher. tail_s
// is the rest of the drain: the last commits, and in "full" the longest
// customers' page-after-page reads.
func BenchmarkRefreshUtilisation(b *testing.B) {
	for _, c := range []struct {
		name        string
		incremental bool
		limit       float64
		linger      time.Duration
	}{
		{"incremental", true, 100, 50 * time.Millisecond},
		{"full", false, 100, 50 * time.Millisecond},
		{"slow_commits", true, 200, time.Second},
	} {
		b.Run(c.name, func(b *testing.B) {
			for range b.N {
				benchUtilisation(b, c.incremental, c.limit, c.linger)
			}
		})
	}
}

func benchUtilisation(b *testing.B, incremental bool, limit float64, linger time.Duration) {
	const customers = 1500
	w := newWarehouseWith(b, sink.Options{BatchRows: 10000, FlushInterval: linger})
	emu, url := newEmulator(b, stripeemu.Config{Seed: 41, Customers: customers, Latency: refreshLatency})
	if incremental {
		seedCursors(b, w, emu)
		for _, c := range emu.Customers() {
			if _, err := emu.AddTransaction(c.Account, c.ID, -500, "adjustment"); err != nil {
				b.Fatal(err)
			}
		}
	}
	emu.ResetCounters()
	src := newSource(b, url, w.m, limit)
	r := NewRefresher(RefresherOptions{Source: src, Sink: w.sink, Conn: w.conn, Metrics: w.m,
		Logger: testLogger(b), SweepInterval: time.Hour, RecentInterval: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = r.Run(ctx); close(done) }()
	start := time.Now()
	for _, c := range emu.Customers() {
		r.MarkDirty(c.Account, c.ID, "")
	}
	var (
		queued         time.Duration // until the last customer started
		queuedRequests int64
		lastRequest    time.Duration // until the last request arrived
		requests       int64
	)
	for !r.Idle() {
		if queued == 0 && !r.waiting() {
			queued, queuedRequests = time.Since(start), emu.Requests().Total
		}
		if n := emu.Requests().Total; n != requests {
			lastRequest, requests = time.Since(start), n
		}
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	cancel()
	<-done
	bound := src.CurrentLimit()
	n := emu.Requests().Total
	b.ReportMetric(float64(n)/elapsed.Seconds()/bound, "utilisation")
	b.ReportMetric(float64(queuedRequests)/queued.Seconds()/bound, "queued_utilisation")
	b.ReportMetric(float64(n)/lastRequest.Seconds()/bound, "api_utilisation")
	b.ReportMetric(float64(n)/elapsed.Seconds(), "requests/s")
	b.ReportMetric(bound, "limit")
	b.ReportMetric(float64(n), "requests")
	b.ReportMetric(elapsed.Seconds(), "s")
	b.ReportMetric((elapsed - queued).Seconds(), "tail_s")
}

// waiting reports whether a marked customer has not started yet.
func (r *Refresher) waiting() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ready) > 0
}

// seedCursors records as held, as a backfill would, every transaction the
// emulator has: each customer's cursor is its newest transaction.
func seedCursors(b *testing.B, w *warehouse, emu *stripeemu.Emulator) {
	b.Helper()
	now := time.Now()
	var rows [][]any
	for _, c := range emu.Customers() {
		if txns := emu.TruthFor(c.Account, c.ID); len(txns) > 0 {
			rows = append(rows, cursorRow("stripe", c.Account, c.ID, txns[len(txns)-1].ID, now))
		}
	}
	ctx := context.Background()
	ack, err := w.sink.Write(ctx, cursorTable, rows...)
	if err != nil {
		b.Fatal(err)
	}
	if err := ack.Wait(ctx); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkRefreshFreshness measures how long after a trigger a customer's
// new transaction is queryable in ClickHouse, with the emulator answering
// in 300 ms and --rate-limit 100, on customers whose cursors are held (as
// after a backfill). A trigger is a transaction added in the emulator,
// then the customer marked dirty, which the webhook route does once the
// event is committed and just before its 200; the time runs from just
// before the mark to the moment a query (every 100 ms) first returns the
// transaction, so each figure is an upper bound of the time from the 200,
// by up to 100 ms. Run:
//
//	go test ./internal/backfill -run '^$' -bench RefreshFreshness -benchtime 1x
//
// "steady" sends 10 triggers a second for 30 s to customers drawn at
// random from 1,500; "burst" sends one to each of 10,000 customers at once
// (SYNCD_BENCH_BURST sets another count) and reports the drain's request
// rate ÷ the limit.
func BenchmarkRefreshFreshness(b *testing.B) {
	b.Run("steady", func(b *testing.B) {
		for range b.N {
			benchFreshness(b, 1500, false, func(customers []stripeemu.Customer, fire func(stripeemu.Customer)) {
				rng := rand.New(rand.NewPCG(7, 7))
				tick := time.NewTicker(100 * time.Millisecond)
				defer tick.Stop()
				for range 300 {
					<-tick.C
					fire(customers[rng.IntN(len(customers))])
				}
			})
		}
	})
	b.Run("burst", func(b *testing.B) {
		n := 10_000
		if s := os.Getenv("SYNCD_BENCH_BURST"); s != "" {
			var err error
			if n, err = strconv.Atoi(s); err != nil || n < 1 {
				b.Fatalf("SYNCD_BENCH_BURST=%q: want a positive count", s)
			}
		}
		for range b.N {
			benchFreshness(b, n, true, func(customers []stripeemu.Customer, fire func(stripeemu.Customer)) {
				for _, c := range customers {
					fire(c)
				}
			})
		}
	})
}

// benchFreshness runs a refresher over an emulator of n customers whose
// cursors are held, lets send fire triggers, and reports the freshness of
// each trigger's transaction once every one is queryable (and, for a
// burst, the drain's request rate ÷ the limit).
func benchFreshness(b *testing.B, n int, burst bool, send func([]stripeemu.Customer, func(stripeemu.Customer))) {
	const limit = 100.0
	w := newWarehouse(b, 10000)
	emu, url := newEmulator(b, stripeemu.Config{Seed: 43, Customers: n, Latency: refreshLatency})
	seedCursors(b, w, emu)
	emu.ResetCounters()
	src := newSource(b, url, w.m, limit)
	r := NewRefresher(RefresherOptions{Source: src, Sink: w.sink, Conn: w.conn, Metrics: w.m,
		Logger: testLogger(b), SweepInterval: time.Hour, RecentInterval: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { _ = r.Run(ctx); close(done) }()

	var (
		mu      sync.Mutex
		marked  = map[string]time.Time{} // transaction id → its trigger, until seen
		fresh   []time.Duration
		first   time.Time
		last    time.Time // the last transaction seen
		sent    int
		pollErr error
	)
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		since := time.Now().Add(-time.Minute)
		for ctx.Err() == nil {
			time.Sleep(100 * time.Millisecond)
			// _synced_at is when the row was made, before its commit: look
			// well back, the set of ids waiting filters what was seen.
			rows, err := w.conn.Query(ctx, `SELECT id FROM stripe_customer_balance_transactions WHERE _synced_at >= ?`,
				since.Add(-30*time.Second).UTC().Truncate(time.Second))
			if err != nil {
				if ctx.Err() == nil {
					pollErr = err
				}
				return
			}
			since = time.Now()
			var ids []string
			for rows.Next() {
				var id string
				if err := rows.Scan(&id); err != nil {
					pollErr = err
					rows.Close()
					return
				}
				ids = append(ids, id)
			}
			rows.Close()
			mu.Lock()
			for _, id := range ids {
				if at, ok := marked[id]; ok {
					fresh = append(fresh, since.Sub(at))
					delete(marked, id)
					last = since
				}
			}
			mu.Unlock()
		}
	}()

	customers := emu.Customers()
	send(customers, func(c stripeemu.Customer) {
		t, err := emu.AddTransaction(c.Account, c.ID, -500, "adjustment")
		if err != nil {
			b.Fatal(err)
		}
		mu.Lock()
		now := time.Now()
		if first.IsZero() {
			first = now
		}
		marked[t.ID] = now
		sent++
		mu.Unlock()
		r.MarkDirty(c.Account, c.ID, "evt_fresh_"+t.ID)
	})
	deadline := time.Now().Add(time.Duration(sent/int(limit))*2*time.Second + 2*time.Minute)
	for {
		mu.Lock()
		left := len(marked)
		mu.Unlock()
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d triggered transactions not queryable by the deadline", left, sent)
		}
		select {
		case <-polled:
			b.Fatalf("polling ClickHouse: %v", pollErr)
		case <-time.After(50 * time.Millisecond):
		}
	}
	cancel()
	<-done
	<-polled
	slices.Sort(fresh)
	q := func(p float64) float64 { return fresh[int(p*float64(len(fresh)-1))].Seconds() }
	drain := last.Sub(first)
	b.ReportMetric(q(0.50), "p50_s")
	b.ReportMetric(q(0.95), "p95_s")
	b.ReportMetric(fresh[len(fresh)-1].Seconds(), "max_s")
	b.ReportMetric(float64(sent), "triggers")
	b.ReportMetric(drain.Seconds(), "drain_s")
	if burst {
		b.ReportMetric(float64(emu.Requests().Total)/drain.Seconds()/src.CurrentLimit(), "drain_utilisation")
	}
	b.Logf("%d triggers, %d requests, freshness p50 %.2fs p95 %.2fs max %.2fs, drained in %s",
		sent, emu.Requests().Total, q(0.5), q(0.95), fresh[len(fresh)-1].Seconds(), drain.Round(time.Millisecond))
}
