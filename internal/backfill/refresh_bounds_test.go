package backfill

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/syncd/syncd/internal/metrics"
	"github.com/syncd/syncd/internal/stripeemu"
)

// ownsPrefix owns the keys that start with prefix.
type ownsPrefix struct {
	mu     sync.Mutex
	prefix string
}

func (o *ownsPrefix) Owns(key string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return strings.HasPrefix(key, o.prefix)
}

func (o *ownsPrefix) set(p string) {
	o.mu.Lock()
	o.prefix = p
	o.mu.Unlock()
}

// TestRefreshParksPermanentErrors: a refresh answered 403 (a Connect
// account that disconnected) is not retried forever: the account is parked,
// counted, and its marks are dropped while parked; other accounts go on.
func TestRefreshParksPermanentErrors(t *testing.T) {
	t.Parallel()
	w := newWarehouse(t, 10000)
	emu, url := newEmulator(t, stripeemu.Config{Seed: 31, Customers: 3})
	r, _ := startRefresher(t, w, newSource(t, url, w.m, 0))
	// The emulator answers 403 account_invalid for an account it does not know.
	r.MarkDirty("acct_1Gone", "cus_x", "evt_1")
	ok := customersWith(emu, "", 1)[0]
	r.MarkDirty("", ok.ID, "evt_2")
	waitFor(t, 10*time.Second, "idle", r.Idle)
	if got := counterValue(w.m.RefreshParked.WithLabelValues("403")); got != 1 {
		t.Errorf("syncd_refresh_parked_total{code=403} = %v, want 1", got)
	}
	assertMirrors(t, w.conn, emu.TruthFor("", ok.ID))
	before := emu.Requests().Total
	r.MarkDirty("acct_1Gone", "cus_y", "evt_3")
	time.Sleep(200 * time.Millisecond)
	if !r.Idle() {
		t.Error("a mark of a parked account was queued")
	}
	if n := emu.Requests().Total - before; n != 0 {
		t.Errorf("%d requests for a parked account", n)
	}
}

// TestRefreshLeavesOthersKeysToTheirOwner: a mark for a customer another
// process owns is not queued; when the fleet changes, queued work that is
// no longer this process's is dropped (its owner finds it in ClickHouse).
func TestRefreshLeavesOthersKeysToTheirOwner(t *testing.T) {
	r := NewRefresher(RefresherOptions{Metrics: metrics.New(), Owner: &ownsPrefix{prefix: "/cus_mine"}})
	owner := r.o.Owner.(*ownsPrefix)
	r.MarkDirty("", "cus_theirs", "evt_1")
	if !r.Idle() {
		t.Fatal("a customer owned by another process was queued")
	}
	for i := range 10 {
		r.MarkDirty("", fmt.Sprintf("cus_mine_%d", i), "evt_2")
	}
	if got := gaugeValue(r.o.Metrics.RefreshQueue); got != 10 {
		t.Fatalf("queue depth %v, want 10", got)
	}
	owner.set("/cus_mine_1")
	r.Rebalance()
	r.mu.Lock()
	n := len(r.entries)
	r.mu.Unlock()
	if n != 1 {
		t.Errorf("%d entries after a rebalance that left this process one key", n)
	}
	select {
	case <-r.sweep:
	default:
		t.Error("a rebalance did not ask for a sweep")
	}
}

// TestRefreshCursorsAreBounded: however many customers were refreshed, at
// most MaxCursors cursors are kept.
func TestRefreshCursorsAreBounded(t *testing.T) {
	t.Parallel()
	w := newWarehouse(t, 10000)
	emu, url := newEmulator(t, stripeemu.Config{Seed: 32, Customers: 25})
	r := NewRefresher(RefresherOptions{Source: newSource(t, url, w.m, 0), Sink: w.sink, Conn: w.conn, Metrics: w.m,
		Logger: testLogger(t), MaxCursors: 5})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Run(ctx) }()
	for _, c := range emu.Customers() {
		r.MarkDirty(c.Account, c.ID, "")
	}
	waitFor(t, 20*time.Second, "idle", r.Idle)
	r.mu.Lock()
	n := len(r.cursors)
	r.mu.Unlock()
	if n > 5 {
		t.Errorf("%d cursors kept, MaxCursors 5", n)
	}
	var want []stripeemu.Txn
	for _, c := range emu.Customers() {
		want = append(want, emu.TruthFor(c.Account, c.ID)...)
	}
	assertMirrors(t, w.conn, want)
}

// BenchmarkMarkDirtyBacklog marks b.N customers on top of a backlog of
// 20,000: the cost of a mark, which webhooks pay before their 200, does
// not grow with the backlog (it walked the whole queue before).
func BenchmarkMarkDirtyBacklog(b *testing.B) {
	r := NewRefresher(RefresherOptions{Metrics: metrics.New()})
	for i := range 20_000 {
		r.MarkDirty("", fmt.Sprintf("cus_backlog_%d", i), "")
	}
	b.ResetTimer()
	for i := range b.N {
		r.MarkDirty("", fmt.Sprintf("cus_new_%d", i), "")
	}
}

func gaugeValue(g prometheus.Gauge) float64 {
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		panic(err)
	}
	return m.GetGauge().GetValue()
}
