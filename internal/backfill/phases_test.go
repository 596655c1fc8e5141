package backfill

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/syncd/syncd/internal/stripeemu"
)

// readOrder records, in order, each customer whose transactions are
// listed from the newest page (the start of a read), by account.
type readOrder struct {
	base http.RoundTripper
	mu   sync.Mutex
	seq  [][2]string
}

func (o *readOrder) RoundTrip(req *http.Request) (*http.Response, error) {
	path, q := req.URL.Path, req.URL.Query()
	if strings.HasSuffix(path, "/balance_transactions") && q.Get("starting_after") == "" && q.Get("ending_before") == "" &&
		!strings.Contains(req.URL.RawQuery, "created") {
		c := strings.TrimSuffix(strings.TrimPrefix(path, "/v1/customers/"), "/balance_transactions")
		o.mu.Lock()
		o.seq = append(o.seq, [2]string{req.Header.Get("Stripe-Account"), c})
		o.mu.Unlock()
	}
	return o.base.RoundTrip(req)
}

// TestBackfillReadsBalancesFirstRoundRobin backfills a skewed world of four
// accounts, the largest named first, with one worker so that the order of
// reads is the order of the jobs: every customer with a non-zero balance
// is read before any without one, and that phase's end is logged and
// metered; within each phase the accounts take turns a page at a time, so
// the small accounts are done before the large one's last page; each
// customer is read once, and the mirror is complete.
func TestBackfillReadsBalancesFirstRoundRobin(t *testing.T) {
	t.Parallel()
	w := newWarehouse(t, 20000)
	emu, url := newEmulator(t, stripeemu.Config{Seed: 5, Scale: stripeemu.Scale{Customers: 1200, Accounts: 3}})
	accounts := emu.Accounts()
	size := map[string]int{}
	nonzero := map[[2]string]bool{}
	for _, c := range emu.Customers() {
		size[c.Account]++
		nonzero[[2]string{c.Account, c.ID}] = c.Balance != 0
	}
	slices.SortFunc(accounts, func(a, b string) int { return size[b] - size[a] })
	big := accounts[0]
	if size[big] <= 300 || size[accounts[1]] > size[big]/2+1 {
		t.Fatalf("account sizes %v: want one large account", size)
	}
	order := &readOrder{base: http.DefaultTransport}
	src := NewStripeSource(StripeOptions{APIKey: testKey, URL: url, Retry: fastRetry, Metrics: w.m,
		Logger: testLogger(t), HTTPClient: &http.Client{Transport: order}})
	core, logs := observer.New(zap.InfoLevel)
	sum, err := Run(context.Background(), Options{Source: src, Conn: w.conn, Sink: w.sink, Metrics: w.m,
		Logger: zap.New(core), Accounts: accounts, Concurrency: 1, ProgressMode: "none"})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(sum)

	withBalance := 0
	for _, nz := range nonzero {
		if nz {
			withBalance++
		}
	}
	reads := map[[2]string]int{}
	lastNonzero, firstZero := -1, len(order.seq)
	lastOf := map[string]int{} // per account, its last read in the first phase
	for i, k := range order.seq {
		reads[k]++
		if nonzero[k] {
			lastNonzero = i
			lastOf[k[0]] = i
		} else {
			firstZero = min(firstZero, i)
		}
	}
	if withBalance == 0 || withBalance == len(nonzero) {
		t.Fatalf("%d of %d customers have a balance: want some of each", withBalance, len(nonzero))
	}
	if lastNonzero > firstZero {
		t.Errorf("a customer without a balance was read (read %d) before the last one with a balance (read %d)", firstZero, lastNonzero)
	}
	for _, a := range accounts[1:] {
		if lastOf[a] > lastOf[big] {
			t.Errorf("account %s (%d customers) was read to its end after the large account %s (%d): not round-robin",
				a, size[a], big, size[big])
		}
	}
	if len(reads) != len(nonzero) || len(order.seq) != len(nonzero) {
		t.Errorf("%d reads of %d distinct customers; want each of the %d read once", len(order.seq), len(reads), len(nonzero))
	}
	ended := logs.FilterMessage("every customer with a non-zero balance is read; reading the rest").All()
	if len(ended) != 1 || ended[0].ContextMap()["customers"] != int64(withBalance) {
		t.Errorf("phase end logged %v; want once, with %d customers", ended, withBalance)
	}
	var g dto.Metric
	if err := w.m.BackfillBalances.WithLabelValues("stripe").Write(&g); err != nil {
		t.Fatal(err)
	}
	if v := g.GetGauge().GetValue(); v <= 0 {
		t.Errorf("syncd_backfill_balances_seconds = %v; want the phase's duration", v)
	}
	assertMirrors(t, w.conn, emu.Truth())
}

// TestBackfillSinceResumes interrupts a --since catch-up and runs it
// again: the rerun reads only the changed customers the first did not
// finish; once it has finished, a third run with the same window reads
// them all again (a finished catch-up is not resumed).
func TestBackfillSinceResumes(t *testing.T) {
	t.Parallel()
	w := newWarehouse(t, 20000)
	emu, url := newEmulator(t, stripeemu.Config{Seed: 4, Customers: 300, Latency: time.Millisecond})
	src := newSource(t, url, w.m, 0)
	mustBackfill(t, w, src, Options{})
	changed := map[string]bool{}
	for _, c := range emu.Customers()[:200] {
		if _, err := emu.RandomTransaction(c.Account, c.ID); err != nil {
			t.Fatal(err)
		}
		changed[c.ID] = true
	}
	since := time.Now().Add(-10 * time.Minute)

	// The first catch-up gets the events and about half the customers.
	stall := &stallAfter{base: http.DefaultTransport, budget: 100}
	interrupted := NewStripeSource(StripeOptions{APIKey: testKey, URL: url, Retry: fastRetry,
		Metrics: w.m, Logger: testLogger(t), HTTPClient: &http.Client{Transport: stall}})
	ctx, cancel := context.WithCancel(context.Background())
	before := len(sinceDone(t, w))
	go func() {
		defer cancel()
		waitFor(t, time.Minute, "the interrupted catch-up to stall", func() bool { return stall.stalled() })
		time.Sleep(500 * time.Millisecond) // its last reads' checkpoints commit
	}()
	if _, err := backfill(t, ctx, w, interrupted, Options{Since: since, Concurrency: 4}); err == nil {
		t.Fatal("the interrupted catch-up reported success")
	}
	for deadline := time.Now().Add(30 * time.Second); w.sink.Queued() > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the sink did not drain")
		}
	}
	done := sinceDone(t, w)
	if before != 0 || len(done) == 0 || len(done) >= len(changed) {
		t.Fatalf("the interrupted catch-up finished %d of %d changed customers; want some, not all", len(done), len(changed))
	}

	emu.ResetCounters()
	sum := mustBackfill(t, w, src, Options{Since: since, Concurrency: 4})
	for c := range done {
		if n := emu.CustomerListCalls("", c); n != 0 {
			t.Errorf("customer %s, finished by the interrupted catch-up, was read %d times by its rerun", c, n)
		}
	}
	if sum.Resumed != len(done) || sum.Customers != len(changed)-len(done) {
		t.Errorf("rerun: %d read + %d resumed; want %d + %d", sum.Customers, sum.Resumed, len(changed)-len(done), len(done))
	}
	assertMirrors(t, w.conn, emu.Truth())

	emu.ResetCounters()
	if sum := mustBackfill(t, w, src, Options{Since: since, Concurrency: 4}); sum.Customers != len(changed) || sum.Resumed != 0 {
		t.Errorf("a catch-up after a finished one read %d and resumed %d; want all %d read", sum.Customers, sum.Resumed, len(changed))
	}
}

// sinceDone is the customers --since catch-ups have checkpointed.
func sinceDone(t *testing.T, w *warehouse) map[string]bool {
	t.Helper()
	rows, err := w.conn.Query(context.Background(), `SELECT DISTINCT customer FROM backfill_customers
		WHERE run_id LIKE 'since-%' AND customer != ''`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			t.Fatal(err)
		}
		out[c] = true
	}
	return out
}
