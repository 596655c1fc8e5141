package backfill

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"

	"github.com/syncd/syncd/internal/orbemu"
	"github.com/syncd/syncd/internal/webhook"
)

const orbHookSecret = "whsec_orb_converge"

// orbHeldRow is what the warehouse holds for one Orb transaction under FINAL.
type orbHeldRow struct {
	customer, external, currency, action, typ string
	amount, starting, ending                  decimal.Decimal
	created                                   time.Time
}

func orbMirror(t testing.TB, conn driver.Conn) map[string]orbHeldRow {
	t.Helper()
	rows, err := conn.Query(context.Background(), `SELECT id, customer_id, ifNull(external_customer_id, ''), currency, action, type,
		amount, starting_balance, ending_balance, created_at FROM orb_customer_balance_transactions FINAL`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]orbHeldRow{}
	for rows.Next() {
		var id string
		var h orbHeldRow
		if err := rows.Scan(&id, &h.customer, &h.external, &h.currency, &h.action, &h.typ, &h.amount, &h.starting, &h.ending, &h.created); err != nil {
			t.Fatal(err)
		}
		if _, dup := out[id]; dup {
			t.Fatalf("FINAL returned %s twice", id)
		}
		out[id] = h
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// assertOrbMirrors fails unless the warehouse holds exactly the emulator's
// transactions, every field equal in value.
func assertOrbMirrors(t testing.TB, conn driver.Conn, truth []orbemu.Txn) {
	t.Helper()
	got := orbMirror(t, conn)
	var missing, wrong, extra []string
	for _, tx := range truth {
		h, ok := got[tx.ID]
		if !ok {
			missing = append(missing, tx.ID)
			continue
		}
		delete(got, tx.ID)
		ext := ""
		if tx.ExternalCustomerID != nil {
			ext = *tx.ExternalCustomerID
		}
		if h.customer != tx.CustomerID || h.external != ext || h.currency != tx.Currency || h.action != tx.Action || h.typ != tx.Type ||
			!h.amount.Equal(decimal.RequireFromString(tx.Amount)) || !h.starting.Equal(decimal.RequireFromString(tx.StartingBalance)) ||
			!h.ending.Equal(decimal.RequireFromString(tx.EndingBalance)) || !h.created.Equal(tx.CreatedAt) {
			wrong = append(wrong, fmt.Sprintf("%s (%+v vs %+v)", tx.ID, h, tx))
		}
	}
	for id := range got {
		extra = append(extra, id)
	}
	sort.Strings(extra)
	if len(missing)+len(wrong)+len(extra) > 0 {
		t.Fatalf("warehouse differs from the emulator's truth (%d txns): %d missing (e.g. %v), %d wrong (e.g. %v), %d extra (e.g. %v)",
			len(truth), len(missing), first(missing), len(wrong), first(wrong), len(extra), first(extra))
	}
}

// TestOrbWebhooksAndBackfillConverge runs the Orb route and the Orb backfill
// against the emulator: webhooks delivered three times in shuffled order,
// some never delivered at all, backfills before and after, injected 429s.
// The mirror must equal the emulator's truth and verify find no drift;
// then it must find the drift made by hand.
func TestOrbWebhooksAndBackfillConverge(t *testing.T) {
	t.Parallel()
	w := newWarehouse(t, 20000)
	var refuse atomic.Bool
	route := webhook.Orb(webhook.OrbOptions{Common: webhook.Common{Sink: w.sink, Metrics: w.m}, Secrets: []string{orbHookSecret}})
	hook := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if refuse.Load() {
			http.Error(rw, "down for the test", http.StatusServiceUnavailable)
			return
		}
		route.ServeHTTP(rw, r)
	}))
	t.Cleanup(hook.Close)
	emu, url := newOrbEmulator(t, orbemu.Config{Seed: 61, Customers: 80, HeavyTxns: []int{420},
		Rate429: 0.1, RetryAfter: 5 * time.Millisecond,
		WebhookURL: hook.URL, WebhookSecret: orbHookSecret, WebhookAttempts: 2, WebhookBackoff: 5 * time.Millisecond})
	ctx := context.Background()
	src := newOrbSource(t, url, w.m, 0)
	backfill := func(o Options) Summary {
		t.Helper()
		o.Source, o.Conn, o.Sink, o.Metrics, o.Logger = src, w.conn, w.sink, w.m, testLogger(t)
		sum, err := Run(ctx, o)
		if err != nil {
			t.Fatalf("backfill: %v (%s)", err, sum)
		}
		return sum
	}

	// History by backfill.
	sum := backfill(Options{})
	assertOrbMirrors(t, w.conn, emu.Truth())
	if sum.Rows != int64(len(emu.Truth())) {
		t.Errorf("first backfill wrote %d rows for %d transactions", sum.Rows, len(emu.Truth()))
	}

	// New transactions by webhook, each delivered three times, shuffled.
	rng := rand.New(rand.NewPCG(61, 6))
	customers := emu.Customers()
	add := func(n int) {
		for i := range n {
			c := customers[rng.IntN(len(customers))]
			typ := []string{"increment", "decrement"}[i%2]
			amount := []string{"0.000000000001", "123456789012345.5", "11.00", "3.25"}[i%4]
			if _, err := emu.AddTransaction(c.ID, "manual_adjustment", typ, amount); err != nil {
				t.Fatal(err)
			}
		}
	}
	before := len(emu.Events())
	add(40)
	emu.Flush()
	events := emu.Events()[before:]
	for range 2 {
		rng.Shuffle(len(events), func(i, j int) { events[i], events[j] = events[j], events[i] })
		for _, ev := range events {
			emu.Deliver(ev)
		}
	}
	emu.Flush()
	if st := emu.DeliveryStats(); st.Failed > 0 {
		t.Fatalf("deliveries: %+v", st)
	}
	assertOrbMirrors(t, w.conn, emu.Truth())

	// Webhooks lost for good: the incremental backfill picks them up, and a
	// customer with nothing new costs one list page.
	refuse.Store(true)
	add(15)
	emu.Flush()
	refuse.Store(false)
	emu.ResetCounters()
	sum = backfill(Options{})
	assertOrbMirrors(t, w.conn, emu.Truth())
	// The checkpoint is the backfill's own: it re-reads what the webhooks
	// brought since, and nothing older.
	if sum.Rows != 40+15 {
		t.Errorf("incremental backfill wrote %d rows, want the 55 transactions added since the first", sum.Rows)
	}
	for _, c := range customers {
		if n := emu.CustomerListCalls(c.ID); n != 1 {
			t.Errorf("incremental backfill read %d pages of %s, want 1", n, c.ID)
		}
	}

	verify := func() *Report {
		t.Helper()
		rep, err := VerifyOrb(ctx, OrbVerifyOptions{Source: src, Conn: w.conn, Metrics: w.m, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	if rep := verify(); !rep.Clean() || rep.Customers != len(customers) || rep.Transactions != len(emu.Truth()) {
		t.Fatalf("verify after convergence: %+v", rep)
	}

	// Drift by hand: one transaction removed, the newest of another
	// customer given a wrong ending balance by a later observation.
	truth := emu.TruthFor(customers[len(customers)-1].ID)
	gone := truth[len(truth)-3].ID
	if err := w.conn.Exec(ctx, "ALTER TABLE orb_customer_balance_transactions DELETE WHERE id = ?", gone); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the mutation to remove "+gone, func() bool {
		var n uint64
		_ = w.conn.QueryRow(ctx, "SELECT count() FROM orb_customer_balance_transactions WHERE id = ?", gone).Scan(&n)
		return n == 0
	})
	var changed orbemu.Txn
	for _, c := range customers {
		if txns := emu.TruthFor(c.ID); len(txns) > 0 && c.ID != customers[len(customers)-1].ID {
			changed = txns[len(txns)-1]
			break
		}
	}
	raw := []byte(changed.Raw)
	vals, err := src.Row(raw, rowMeta(changed.CustomerID))
	if err != nil {
		t.Fatal(err)
	}
	vals[7] = decimal.RequireFromString(changed.EndingBalance).Add(decimal.New(1, -2)) // ending_balance
	ack, err := w.sink.Write(ctx, src.Table(), vals)
	if err != nil {
		t.Fatal(err)
	}
	if err := ack.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	rep := verify()
	if rep.Clean() || len(rep.Drifts) != 2 {
		t.Fatalf("verify after removing %s and changing %s: %+v", gone, changed.ID, rep.Drifts)
	}
	for _, d := range rep.Drifts {
		switch d.Customer {
		case customers[len(customers)-1].ID:
			if len(d.Missing) != 1 || d.Missing[0] != gone {
				t.Errorf("drift of %s: %+v, want %s missing", d.Customer, d, gone)
			}
		case changed.CustomerID:
			if fmt.Sprint(d.Mismatched) != fmt.Sprintf("[%s (ending_balance)]", changed.ID) || !d.BalanceDiffers() {
				t.Errorf("drift of %s: %+v, want %s mismatched in its ending_balance and the balance off", d.Customer, d, changed.ID)
			}
		default:
			t.Errorf("unexpected drift %+v", d)
		}
	}
}
