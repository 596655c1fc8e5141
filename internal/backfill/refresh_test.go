package backfill

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/internal/sink"
	"github.com/syncd/syncd/internal/stripeemu"
)

func startRefresher(t *testing.T, w *warehouse, src *StripeSource) (*Refresher, func()) {
	t.Helper()
	r := NewRefresher(RefresherOptions{Source: src, Sink: w.sink, Conn: w.conn, Metrics: w.m, Logger: testLogger(t),
		Workers: 4, RetryInitial: 10 * time.Millisecond, RetryMax: 100 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = r.Run(ctx) }()
	stop := func() { cancel(); wg.Wait() }
	t.Cleanup(stop)
	return r, stop
}

func customersWith(e *stripeemu.Emulator, account string, minTxns int) []stripeemu.Customer {
	var out []stripeemu.Customer
	for _, c := range e.Customers() {
		if c.Account == account && c.Transactions >= minTxns {
			out = append(out, c)
		}
	}
	return out
}

func TestRefreshCoalescesBurstsAndConverges(t *testing.T) {
	t.Parallel()
	w := newWarehouse(t, 10000)
	emu, url := newEmulator(t, stripeemu.Config{Seed: 7, Customers: 30, Accounts: []string{"", "acct_1Conn"}, HeavyCustomers: []int{250}})
	r, _ := startRefresher(t, w, newSource(t, url, w.m, 0))

	heavy := customersWith(emu, "", 250)[0]
	conn := customersWith(emu, "acct_1Conn", 1)[0]
	for range 50 {
		r.MarkDirty("", heavy.ID, "")
		r.MarkDirty("acct_1Conn", conn.ID, "")
	}
	waitFor(t, 20*time.Second, "the refresher to go idle", r.Idle)
	// 250 transactions are three pages; a burst of 50 marks costs one or two reads of them.
	if n := emu.CustomerListCalls("", heavy.ID); n < 3 || n > 6 {
		t.Errorf("burst of 50 marks cost %d list calls for a 3-page customer; want 3 to 6", n)
	}
	assertMirrors(t, w.conn, append(emu.TruthFor("", heavy.ID), emu.TruthFor("acct_1Conn", conn.ID)...))

	// New transactions: an incremental read, from the newest id held.
	emu.ResetCounters()
	for range 3 {
		if _, err := emu.AddTransaction("", heavy.ID, -500, "adjustment"); err != nil {
			t.Fatal(err)
		}
	}
	for range 50 {
		r.MarkDirty("", heavy.ID, "")
	}
	waitFor(t, 20*time.Second, "the refresher to go idle", r.Idle)
	if n := emu.CustomerListCalls("", heavy.ID); n < 1 || n > 2 {
		t.Errorf("incremental refresh after a burst of 50 marks cost %d list calls; want 1 or 2", n)
	}
	assertMirrors(t, w.conn, append(emu.TruthFor("", heavy.ID), emu.TruthFor("acct_1Conn", conn.ID)...))

	var src string
	if err := w.conn.QueryRow(context.Background(), `SELECT any(_source) FROM stripe_customer_balance_transactions`).Scan(&src); err != nil {
		t.Fatal(err)
	}
	if src != row.SourceRefresh {
		t.Errorf("_source = %q, want %q", src, row.SourceRefresh)
	}
}

func TestRefreshRetriesThroughFaults(t *testing.T) {
	t.Parallel()
	w := newWarehouse(t, 10000)
	emu, url := newEmulator(t, stripeemu.Config{Seed: 8, Customers: 20, Rate429: 0.3, Rate500: 0.2})
	r, _ := startRefresher(t, w, newSource(t, url, w.m, 0))
	for _, c := range emu.Customers() {
		r.MarkDirty("", c.ID, "")
	}
	waitFor(t, 30*time.Second, "the refresher to go idle", r.Idle)
	assertMirrors(t, w.conn, emu.Truth())
}

// A refresh owed by an acknowledged event survives a restart: it is derived
// from stripe_events and stripe_refreshes alone.
func TestRefreshRecoversWhatAcknowledgedEventsOwe(t *testing.T) {
	t.Parallel()
	w := newWarehouse(t, 10000)
	emu, url := newEmulator(t, stripeemu.Config{Seed: 9, Customers: 10, Accounts: []string{"", "acct_1Conn"}})
	owed := customersWith(emu, "", 1)[0]
	owedConn := customersWith(emu, "acct_1Conn", 1)[0]
	done := customersWith(emu, "", 1)[1]

	ctx := context.Background()
	now := time.Now()
	var rows [][]any
	for i, c := range []stripeemu.Customer{owed, owedConn, done} {
		ev := &row.StripeEvent{ID: "evt_" + c.ID, Type: "customer.updated", AccountID: c.Account, Created: now.Add(-time.Minute),
			Customer: c.ID, Payload: []byte(`{}`), ReceivedAt: now.Add(-time.Duration(3+i) * time.Second)}
		rows = append(rows, ev.Values())
	}
	ack, err := w.sink.Write(ctx, row.StripeEventTable, rows...)
	if err != nil {
		t.Fatal(err)
	}
	// done was refreshed after its event arrived. (A refresh claims one
	// second less than its start, so events are dated a few seconds back:
	// one received in the second a refresh started is owed once more.)
	ack2, err := w.sink.Write(ctx, refreshTable, refreshRow("", done.ID, now.Add(time.Minute), now))
	if err != nil {
		t.Fatal(err)
	}
	if err := ack.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ack2.Wait(ctx); err != nil {
		t.Fatal(err)
	}

	r, stop := startRefresher(t, w, newSource(t, url, w.m, 0))
	waitFor(t, 20*time.Second, "owed refreshes to run", func() bool {
		return emu.CustomerListCalls("", owed.ID) > 0 && emu.CustomerListCalls("acct_1Conn", owedConn.ID) > 0 && r.Idle()
	})
	if n := emu.CustomerListCalls("", done.ID); n != 0 {
		t.Errorf("a customer refreshed after its last event was read %d times at start-up", n)
	}
	assertMirrors(t, w.conn, append(emu.TruthFor("", owed.ID), emu.TruthFor("acct_1Conn", owedConn.ID)...))
	// The rows name the event that owed the refresh.
	for _, c := range []stripeemu.Customer{owed, owedConn} {
		var n uint64
		if err := w.conn.QueryRow(ctx, "SELECT count() FROM stripe_customer_balance_transactions FINAL WHERE customer = ? AND (_event_id IS NULL OR _event_id != ?)",
			c.ID, "evt_"+c.ID).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("%d rows of %s do not name evt_%s as _event_id", n, c.ID, c.ID)
		}
	}
	stop()

	// A second start owes nothing more.
	assertRestartOwesNothing(t, w, emu, url)
}

// assertRestartOwesNothing starts another refresher over w: with nothing
// owed, it sends no request.
func assertRestartOwesNothing(t *testing.T, w *warehouse, emu *stripeemu.Emulator, url string) {
	t.Helper()
	emu.ResetCounters()
	r, _ := startRefresher(t, w, newSource(t, url, w.m, 0))
	time.Sleep(300 * time.Millisecond)
	waitFor(t, 5*time.Second, "idle", r.Idle)
	if n := emu.Requests().Total; n != 0 {
		t.Errorf("a restart with nothing owed sent %d requests; want 0", n)
	}
}

// TestRefreshReadsOnWhileRowsCommit: a refresh gives up its place to read
// the API once it has read, so with a single place and a sink that lingers
// 4 s before each insert every marked customer is read before the first
// insert, where a refresh holding its place until its rows and cursor were
// committed read one customer per two commits. No cursor is recorded
// before the rows it covers are held.
func TestRefreshReadsOnWhileRowsCommit(t *testing.T) {
	t.Parallel()
	w := newWarehouseWith(t, sink.Options{BatchRows: 100_000, FlushInterval: 4 * time.Second})
	emu, url := newEmulator(t, stripeemu.Config{Seed: 11, Customers: 12})
	r := NewRefresher(RefresherOptions{Source: newSource(t, url, w.m, 0), Sink: w.sink, Conn: w.conn, Metrics: w.m,
		Logger: testLogger(t), Workers: 1})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	cs := emu.Customers()
	for _, c := range cs {
		r.MarkDirty(c.Account, c.ID, "")
	}
	waitFor(t, 3*time.Second, "every customer read from the API", func() bool { return emu.Requests().Total >= int64(len(cs)) })
	if n := countRows(t, w, `SELECT count() FROM stripe_customer_balance_transactions`); n != 0 {
		t.Fatalf("%d rows committed before the sink's 4 s linger ended: the test proves nothing", n)
	}

	truth := map[string]int{}
	for _, c := range cs {
		truth[c.ID] = len(emu.TruthFor(c.Account, c.ID))
	}
	for !r.Idle() {
		// Cursors first, rows second: rows only grow, so a customer whose
		// cursor was recorded must have all its rows by the second read.
		withCursor := customerCounts(t, w, `SELECT customer, count() FROM sync_cursors GROUP BY customer`)
		held := customerCounts(t, w, `SELECT customer, count() FROM stripe_customer_balance_transactions GROUP BY customer`)
		for c := range withCursor {
			if held[c] != truth[c] {
				t.Fatalf("customer %s has a cursor but %d of its %d rows", c, held[c], truth[c])
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	assertMirrors(t, w.conn, emu.Truth())
}

func countRows(t *testing.T, w *warehouse, query string) uint64 {
	t.Helper()
	var n uint64
	if err := w.conn.QueryRow(context.Background(), query).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// customerCounts runs a query of (customer, count) pairs.
func customerCounts(t *testing.T, w *warehouse, query string) map[string]int {
	t.Helper()
	rows, err := w.conn.Query(context.Background(), query)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var c string
		var n uint64
		if err := rows.Scan(&c, &n); err != nil {
			t.Fatal(err)
		}
		out[c] = int(n)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestRefreshSlicesAHeavyCustomerWithoutCursor: the first refresh of a
// customer with many pages (no cursor, never listed by CustomerPage) asks
// once when the customer was created and reads the rest in time slices at
// once, not one page after another (issue 16: the customers with many pages
// drained alone at the end of a burst). Every transaction is still mirrored.
func TestRefreshSlicesAHeavyCustomerWithoutCursor(t *testing.T) {
	t.Parallel()
	w := newWarehouse(t, 10000)
	emu, url := newEmulator(t, stripeemu.Config{Seed: 8, Customers: 1, HeavyCustomers: []int{2500}, Latency: 20 * time.Millisecond})
	r, _ := startRefresher(t, w, newSource(t, url, w.m, 100))
	heavy := customersWith(emu, "", 2500)[0]
	r.MarkDirty("", heavy.ID, "")
	waitFor(t, 30*time.Second, "the refresher to go idle", r.Idle)

	got := emu.Requests().ByKind
	if got[stripeemu.KindCustomer] != 1 {
		t.Errorf("%d requests for the customer; want 1, for when it was created", got[stripeemu.KindCustomer])
	}
	// 2,500 transactions are 25 full pages read in a row; in slices each
	// slice ends in a part-filled page.
	if n := got[stripeemu.KindBalanceTransactions]; n <= 25 {
		t.Errorf("%d list calls: the history was read one page after another, not in slices", n)
	}
	assertMirrors(t, w.conn, emu.TruthFor("", heavy.ID))
}

// Backlog counts the customers that have waited for their refresh longer
// than backlogAfter (the fleet gives a backlogged serve process the larger
// share of the budget), and falls to zero once they are refreshed.
func TestRefreshBacklog(t *testing.T) {
	t.Parallel()
	w := newWarehouse(t, 10000)
	emu, url := newEmulator(t, stripeemu.Config{Seed: 9, Customers: 24})
	r, _ := startRefresher(t, w, newSource(t, url, w.m, 4))
	for _, c := range emu.Customers() {
		r.MarkDirty(c.Account, c.ID, "")
	}
	// At 4 requests/s the 24 customers take 6 s: some wait past 2 s.
	waitFor(t, 10*time.Second, "a backlog", func() bool { return r.Backlog() > 0 })
	waitFor(t, 30*time.Second, "the refresher to go idle", r.Idle)
	waitFor(t, 5*time.Second, "no backlog", func() bool { return r.Backlog() == 0 })
}
