package ratelimit

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const bt = "GET /v1/customers/{id}/balance_transactions"

// clock is a settable time for the AIMD arithmetic.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func withClock(l *Limiter) *clock {
	c := &clock{t: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
	l.now = c.now
	return c
}

func acquire(t *testing.T, l *Limiter, account, endpoint string, p Priority) *Permit {
	t.Helper()
	pm, err := l.Wait(context.Background(), account, endpoint, p)
	if err != nil {
		t.Fatal(err)
	}
	return pm
}

// A 429 lowers exactly the limit it names, halving it at most once per
// cooldown, and the limit grows back by a tenth of the configured value a
// second.
func TestAIMDLowersTheLimitNamed(t *testing.T) {
	l := New(Options{Limits: Limits{Global: 100, Endpoint: 20, Concurrency: 8}})
	c := withClock(l)
	acquire(t, l, "", bt, Bulk).Done(GlobalRate)
	if got := l.Current("", bt); got != (Limits{Global: 50, Endpoint: 20, Concurrency: 8}) {
		t.Fatalf("after global-rate: %+v", got)
	}
	// The requests in flight meet the same limit: one cut per cooldown.
	acquire(t, l, "", bt, Bulk).Done(GlobalRate)
	if got := l.Current("", bt).Global; got != 50 {
		t.Fatalf("a second global-rate within the cooldown cut again: %v", got)
	}
	c.t = c.t.Add(2 * time.Second)
	if got := l.Current("", bt).Global; got != 70 {
		t.Fatalf("2s after the cut: %v, want 50 + 2 × 10", got)
	}
	acquire(t, l, "", bt, Bulk).Done(EndpointRate)
	got := l.Current("", bt)
	if got.Endpoint != 10 || got.Global != 70 || l.Current("", "GET /v1/customers").Endpoint != 20 {
		t.Fatalf("endpoint-rate must halve that endpoint only: %+v", got)
	}
	acquire(t, l, "", bt, Bulk).Done(GlobalConcurrency)
	if got := l.Current("", bt).Concurrency; got != 4 {
		t.Fatalf("after global-concurrency: %d in flight, want 4", got)
	}
	// Neither a 429 naming no limit nor a resource's own limit moves any.
	before := l.Current("", bt)
	acquire(t, l, "", bt, Bulk).Done("")
	acquire(t, l, "", bt, Bulk).Done(ResourceSpecific)
	if got := l.Current("", bt); got != before {
		t.Fatalf("%+v became %+v", before, got)
	}
	c.t = c.t.Add(time.Minute)
	if got := l.Current("", bt); got != (Limits{Global: 100, Endpoint: 20, Concurrency: 8}) {
		t.Fatalf("recovered: %+v", got)
	}
	// Cuts bottom out at the floor.
	for range 20 {
		c.t = c.t.Add(cooldown)
		acquire(t, l, "", bt, Bulk).Done(GlobalRate)
	}
	if got := l.Current("", bt).Global; got < 100*floor || got > 100*floor+100*recovery*cooldown.Seconds() {
		t.Fatalf("after 20 cuts: %v", got)
	}
}

// Each process of a fleet spends its share of every limit; with account
// scope a connected account's 429s lower its own budget only, with
// platform scope the shared one.
func TestShareAndScope(t *testing.T) {
	l := New(Options{Limits: Limits{Global: 100, Endpoint: 25, Concurrency: 20}, Scope: ScopeAccount})
	withClock(l)
	l.SetShare(0.25)
	if got := l.Current("acct_1", bt); got != (Limits{Global: 25, Endpoint: 6.25, Concurrency: 5}) {
		t.Fatalf("a quarter share: %+v", got)
	}
	acquire(t, l, "acct_1", bt, Bulk).Done(GlobalRate)
	if a, b := l.Current("acct_1", bt).Global, l.Current("acct_2", bt).Global; a != 12.5 || b != 25 {
		t.Fatalf("account scope: acct_1 %v acct_2 %v", a, b)
	}
	p := New(Options{Limits: Limits{Global: 100}})
	withClock(p)
	acquire(t, p, "acct_1", bt, Bulk).Done(GlobalRate)
	if a, b := p.Current("acct_1", bt).Global, p.Current("", bt).Global; a != 50 || b != 50 {
		t.Fatalf("platform scope: acct_1 %v platform %v", a, b)
	}
}

// No more requests are in flight than the cap, and the lanes of requests
// that finished are forgotten.
func TestConcurrencyCap(t *testing.T) {
	l := New(Options{Limits: Limits{Concurrency: 3}})
	var in, most atomic.Int64
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			pm := acquire(t, l, "", []string{"a", "b", "c", "d"}[i%4], Bulk)
			n := in.Add(1)
			for {
				m := most.Load()
				if n <= m || most.CompareAndSwap(m, n) {
					break
				}
			}
			time.Sleep(time.Millisecond)
			in.Add(-1)
			pm.Done("")
		})
	}
	wg.Wait()
	if most.Load() != 3 {
		t.Errorf("at most %d in flight, want 3", most.Load())
	}
	b := l.budgets[""]
	if b.inFlight != 0 || len(b.slotQ) != 0 || len(b.lanes) != 0 {
		t.Errorf("left behind: %d in flight, %d waiting, %d lanes", b.inFlight, len(b.slotQ), len(b.lanes))
	}
}

// One busy account must not starve another sharing the platform's budget:
// a request of a quiet account waits behind at most the requests the busy
// account has at the bucket (laneDepth), not behind all its workers.
func TestFairAcrossAccounts(t *testing.T) {
	l := New(Options{Limits: Limits{Global: 200, Endpoint: 1000}})
	ctx, cancel := context.WithCancel(context.Background())
	var granted atomic.Int64
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			for ctx.Err() == nil {
				pm, err := l.Wait(ctx, "acct_busy", bt, Bulk)
				if err != nil {
					return
				}
				granted.Add(1)
				pm.Done("")
			}
		})
	}
	for granted.Load() < 60 { // the busy account's workers are all queued
		time.Sleep(time.Millisecond)
	}
	for range 3 {
		before := granted.Load()
		acquire(t, l, "acct_quiet", bt, Bulk).Done("")
		// One more than laneDepth: a grant just before may be counted late.
		if ahead := granted.Load() - before; ahead > laneDepth+1 {
			t.Errorf("the quiet account's request waited behind %d of the busy account's; want at most %d", ahead, laneDepth+1)
		}
	}
	cancel()
	wg.Wait()
}

// Within a lane, refreshes go before the backfill reads queued ahead.
func TestRefreshesFirst(t *testing.T) {
	// Slow enough that the queue is built while bulk0 waits at the bucket.
	l := New(Options{Limits: Limits{Global: 5}})
	acquire(t, l, "", bt, Bulk).Done("") // the first takes the only token
	var mu sync.Mutex
	var order []string
	var wg sync.WaitGroup
	start := func(name string, p Priority) {
		wg.Go(func() {
			acquire(t, l, "", bt, p).Done("")
			mu.Lock()
			order = append(order, name)
			mu.Unlock()
		})
	}
	waiting := func(n int) {
		for {
			l.mu.Lock()
			ln := l.budgets[""].lanes[[2]string{"", bt}]
			got := -1 // the lane is not full yet
			if ln != nil && ln.n == laneDepth {
				got = len(ln.waiters[Refresh]) + len(ln.waiters[Bulk])
			}
			l.mu.Unlock()
			if got == n {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
	// Fill the lane: two bulk reads wait at the bucket, three queue.
	start("bulk0", Bulk)
	start("bulk0", Bulk)
	for i := range 3 {
		waiting(i)
		start("bulk", Bulk)
	}
	waiting(3)
	start("refresh", Refresh)
	wg.Wait()
	if order[0] != "bulk0" || order[1] != "bulk0" || order[2] != "refresh" {
		t.Errorf("order %v: the refresh must follow the reads already at the bucket", order)
	}
}

// A request given up while it waits leaves no trace.
func TestCancelWhileWaiting(t *testing.T) {
	l := New(Options{Limits: Limits{Global: 0.001, Concurrency: 1}})
	pm := acquire(t, l, "", bt, Bulk)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := l.Wait(ctx, "", bt, Bulk); err == nil {
		t.Fatal("want the context's error")
	}
	pm.Done("")
	b := l.budgets[""]
	if b.inFlight != 0 || len(b.slotQ) != 0 || len(b.lanes) != 0 {
		t.Errorf("left behind: %d in flight, %d waiting, %d lanes", b.inFlight, len(b.slotQ), len(b.lanes))
	}
}
