package backfill

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/internal/stripeemu"
)

// thinIntake is a thin event's intake row, as the webhook route writes it.
func thinIntake(t *testing.T, ev stripeemu.Event, receivedAt time.Time) row.StripeEvent {
	t.Helper()
	var thin struct {
		Type    string  `json:"type"`
		Context *string `json:"context"`
		Created string  `json:"created"`
	}
	if err := json.Unmarshal(ev.Thin, &thin); err != nil {
		t.Fatal(err)
	}
	created, err := time.Parse(time.RFC3339, thin.Created)
	if err != nil {
		t.Fatal(err)
	}
	account := ""
	if thin.Context != nil {
		account = *thin.Context
	}
	return row.StripeEvent{ID: ev.ThinID, Type: thin.Type, AccountID: account, Created: created.Truncate(time.Second),
		Payload: ev.Thin, ReceivedAt: receivedAt}
}

// thinNonCustomerEvents adds an invoice-, a credit-note- and a
// checkout-backed transaction to each customer and returns the thin events
// whose related object is not the customer (not customer.updated).
func thinNonCustomerEvents(t *testing.T, emu *stripeemu.Emulator, customers []stripeemu.Customer) []stripeemu.Event {
	t.Helper()
	seen := map[string]bool{}
	for _, ev := range emu.Events() {
		seen[ev.ID] = true
	}
	for _, c := range customers {
		for _, typ := range []string{"applied_to_invoice", "credit_note", "checkout_session_subscription_payment"} {
			if _, err := emu.AddTransaction(c.Account, c.ID, -321, typ); err != nil {
				t.Fatal(err)
			}
		}
	}
	var out []stripeemu.Event
	for _, ev := range emu.Events() {
		if !seen[ev.ID] && ev.Type != "customer.updated" {
			out = append(out, ev)
		}
	}
	if len(out) != 3*len(customers) {
		t.Fatalf("%d invoice, credit note and checkout events for %d customers", len(out), len(customers))
	}
	return out
}

// TestRefreshReadsThinEventsRelatedObjects: a thin event about an invoice,
// a credit note or a checkout session names no customer; the refresher
// reads the object (through Stripe-Account for a connected account),
// records the customer on the event's intake row, and refreshes it. Events
// about one object coalesce into one read.
func TestRefreshReadsThinEventsRelatedObjects(t *testing.T) {
	t.Parallel()
	w := newWarehouse(t, 10000)
	emu, url := newEmulator(t, stripeemu.Config{Seed: 21, Customers: 6, Accounts: []string{"", "acct_1Thin"}})
	customers := append(customersWith(emu, "", 0)[:2], customersWith(emu, "acct_1Thin", 0)[:2]...)
	evs := thinNonCustomerEvents(t, emu, customers)
	emu.ResetCounters()

	r, _ := startRefresher(t, w, newSource(t, url, w.m, 0))
	ctx := context.Background()
	now := time.Now().Add(-3 * time.Second)
	for _, ev := range evs {
		in := thinIntake(t, ev, now)
		ack, err := w.sink.Write(ctx, row.StripeEventTable, in.Values())
		if err != nil {
			t.Fatal(err)
		}
		if err := ack.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		var rel struct {
			RelatedObject struct{ ID, Type string } `json:"related_object"`
		}
		if err := json.Unmarshal(ev.Thin, &rel); err != nil {
			t.Fatal(err)
		}
		// Twice: a retried delivery reads the object once.
		r.MarkRelated(in, rel.RelatedObject.Type, rel.RelatedObject.ID)
		r.MarkRelated(in, rel.RelatedObject.Type, rel.RelatedObject.ID)
	}
	waitFor(t, 20*time.Second, "thin events' customers refreshed", r.Idle)
	var want []stripeemu.Txn
	for _, c := range customers {
		want = append(want, emu.TruthFor(c.Account, c.ID)...)
	}
	assertMirrors(t, w.conn, want)
	if n := emu.Requests().ByKind[stripeemu.KindOther]; n != int64(len(evs)) {
		t.Errorf("%d object reads for %d events delivered twice each; want one per object", n, len(evs))
	}
	checkResolved(t, w, evs)
	checkEventIDs(t, w, evs)
}

// checkEventIDs: the rows a refresh wrote name, as _event_id, one of the
// thin events that owed it (the newest mark's, when several coalesced).
func checkEventIDs(t *testing.T, w *warehouse, evs []stripeemu.Event) {
	t.Helper()
	ids := map[string][]string{} // customer → its thin events
	for _, ev := range evs {
		ids[ev.Customer] = append(ids[ev.Customer], ev.ThinID)
	}
	rows, err := w.conn.Query(context.Background(),
		"SELECT customer, _source, ifNull(_event_id, '') FROM stripe_customer_balance_transactions FINAL WHERE amount = -321")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var customer, source, eventID string
		if err := rows.Scan(&customer, &source, &eventID); err != nil {
			t.Fatal(err)
		}
		n++
		if source != row.SourceRefresh || !slices.Contains(ids[customer], eventID) {
			t.Errorf("row of %s: _source %q, _event_id %q; want refresh and one of %v", customer, source, eventID, ids[customer])
		}
	}
	if n != len(evs) {
		t.Errorf("%d new rows, want %d", n, len(evs))
	}
}

// checkResolved: every thin event's newest intake row names its customer.
func checkResolved(t *testing.T, w *warehouse, evs []stripeemu.Event) {
	t.Helper()
	rows, err := w.conn.Query(context.Background(), "SELECT id, account_id, customer FROM stripe_events FINAL")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[string][2]string{}
	for rows.Next() {
		var id, account, customer string
		if err := rows.Scan(&id, &account, &customer); err != nil {
			t.Fatal(err)
		}
		got[id] = [2]string{account, customer}
	}
	for _, ev := range evs {
		if g := got[ev.ThinID]; g != [2]string{ev.Account, ev.Customer} {
			t.Errorf("%s (%s): stripe_events FINAL has account/customer %q, want %q", ev.ThinID, ev.Type, g, [2]string{ev.Account, ev.Customer})
		}
	}
}

// TestRefreshRecoversThinEventsAfterACrash: thin events acknowledged by a
// process that died before it read their related objects (intake rows with
// no customer) are found in ClickHouse by the next refresher, read, and
// their customers refreshed; a third start owes nothing.
func TestRefreshRecoversThinEventsAfterACrash(t *testing.T) {
	t.Parallel()
	w := newWarehouse(t, 10000)
	emu, url := newEmulator(t, stripeemu.Config{Seed: 22, Customers: 5, Accounts: []string{"", "acct_1Thin"}})
	customers := []stripeemu.Customer{customersWith(emu, "", 0)[0], customersWith(emu, "acct_1Thin", 0)[0]}
	evs := thinNonCustomerEvents(t, emu, customers)
	emu.ResetCounters()

	ctx := context.Background()
	var rows [][]any
	for _, ev := range evs {
		in := thinIntake(t, ev, time.Now().Add(-3*time.Second))
		rows = append(rows, in.Values())
	}
	// An ignored thin type and a ping stay ignored.
	for _, typ := range []string{"v1.payment_intent.created", "v2.core.event_destination.ping"} {
		ign := row.StripeEvent{ID: "evt_ign_" + typ, Type: typ, Created: time.Now(), Payload: []byte(`{}`), ReceivedAt: time.Now()}
		rows = append(rows, ign.Values())
	}
	ack, err := w.sink.Write(ctx, row.StripeEventTable, rows...)
	if err != nil {
		t.Fatal(err)
	}
	if err := ack.Wait(ctx); err != nil {
		t.Fatal(err)
	}

	r, stop := startRefresher(t, w, newSource(t, url, w.m, 0))
	waitFor(t, 20*time.Second, "recovered thin events read and refreshed", func() bool {
		return r.Idle() && emu.CustomerListCalls(customers[0].Account, customers[0].ID) > 0 &&
			emu.CustomerListCalls(customers[1].Account, customers[1].ID) > 0
	})
	var want []stripeemu.Txn
	for _, c := range customers {
		want = append(want, emu.TruthFor(c.Account, c.ID)...)
	}
	assertMirrors(t, w.conn, want)
	checkResolved(t, w, evs)
	checkEventIDs(t, w, evs)
	stop()
	assertRestartOwesNothing(t, w, emu, url)
}
