package webhook

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/syncd/syncd/internal/chtest"
	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/internal/sink"
)

// recoverWorld is a migrated database and a sink on it.
type recoverWorld struct {
	conn driver.Conn
	sink *sink.Sink
}

func newRecoverWorld(t *testing.T) *recoverWorld {
	t.Helper()
	ctx := context.Background()
	conn, err := sink.Open(ctx, chtest.DSN(t), true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := sink.Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}
	s := sink.New(conn, sink.Options{MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Close(ctx)
	})
	return &recoverWorld{conn, s}
}

// deliver stores what the route makes of body received at at: the intake
// row always, the transaction row only when withTxn (false: a crash lost
// it after the 200).
func (w *recoverWorld) deliver(t *testing.T, decode func([]byte, time.Time) (*delivery, error), body []byte, at time.Time, withTxn bool) {
	t.Helper()
	d, err := decode(body, at)
	if err != nil {
		t.Fatal(err)
	}
	for _, wr := range d.writes {
		if wr.derived && !withTxn {
			continue
		}
		ack, err := w.sink.Write(context.Background(), wr.table, wr.row)
		if err != nil {
			t.Fatal(err)
		}
		if err := ack.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

func (w *recoverWorld) count(t *testing.T, query string, args ...any) uint64 {
	t.Helper()
	var n uint64
	if err := w.conn.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

func (w *recoverWorld) recover(t *testing.T) map[string]Replayed {
	t.Helper()
	rs, err := Recover(context.Background(), RecoverOptions{Conn: w.conn, Sink: w.sink})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]Replayed{}
	for _, r := range rs {
		out[r.Provider] = r
	}
	return out
}

func stripeObjectEvent(n string, at time.Time) []byte {
	return fmt.Appendf(nil, `{"id":"evt_%s","object":"event","account":null,"api_version":"2025-08-27.basil","created":%d,`+
		`"data":{"object":{"id":"cbtxn_%s","object":"customer_balance_transaction","amount":-250,"checkout_session":null,`+
		`"created":%d,"credit_note":null,"currency":"usd","customer":"cus_r","customer_account":null,"description":"r",`+
		`"ending_balance":-250,"invoice":null,"livemode":false,"metadata":{},"type":"adjustment"}},`+
		`"livemode":false,"type":"customer_balance_transaction.created"}`, n, at.Unix(), n, at.Unix())
}

func stripeOtherEvent(n, typ, object string, at time.Time) []byte {
	return fmt.Appendf(nil, `{"id":"evt_%s","object":"event","created":%d,"data":{"object":%s},"livemode":false,"type":%q}`,
		n, at.Unix(), object, typ)
}

func orbObjectEvent(n, typ string, at time.Time) []byte {
	return fmt.Appendf(nil, `{"id":"oevt_%s","created_at":%q,"type":%q,`+
		`"customer":{"id":"ocus_r","external_customer_id":null,"currency":"USD"},`+
		`"properties":{"balance_transaction":{"id":"otxn_%s","action":"manual_adjustment","amount":"1.25",`+
		`"created_at":%q,"credit_note":null,"description":null,"ending_balance":"1.25","invoice":null,`+
		`"starting_balance":"0","type":"increment"}}}`, n, at.Format(time.RFC3339), typ, n, at.Format(time.RFC3339))
}

// TestRecoverReplaysLostTransactionRows: intake rows whose transaction rows
// are missing get them back, equal to what the route writes; rows already
// there are rewritten harmlessly; rows older than the watermark's margin,
// trigger events and other Orb types are not read.
func TestRecoverReplaysLostTransactionRows(t *testing.T) {
	w := newRecoverWorld(t)
	now := time.Now().UTC().Truncate(time.Second)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	stripe, orb := (&stripeAccepter{triggers: map[string]bool{"customer.updated": true}}).decode, (&orbAccepter{}).decode

	w.deliver(t, stripe, stripeObjectEvent("old", ago(2*time.Hour)), ago(2*time.Hour), false) // before T − margin: not read
	w.deliver(t, stripe, stripeObjectEvent("a", ago(time.Hour)), ago(time.Hour), true)
	w.deliver(t, stripe, stripeObjectEvent("c", ago(30*time.Minute)), ago(30*time.Minute), true) // T
	w.deliver(t, stripe, stripeObjectEvent("d", ago(32*time.Minute)), ago(32*time.Minute), false)
	w.deliver(t, stripe, stripeObjectEvent("e", ago(10*time.Minute)), ago(10*time.Minute), false)
	w.deliver(t, stripe, stripeOtherEvent("trig", "customer.updated", `{"object":"customer","id":"cus_t"}`, ago(9*time.Minute)), ago(9*time.Minute), true)
	w.deliver(t, stripe, stripeOtherEvent("ign", "payment_intent.created", `{"object":"payment_intent","id":"pi_1"}`, ago(8*time.Minute)), ago(8*time.Minute), true)

	w.deliver(t, orb, orbObjectEvent("h", OrbTxnCreated, ago(20*time.Minute)), ago(20*time.Minute), true) // T
	w.deliver(t, orb, orbObjectEvent("i", OrbTxnCreated, ago(15*time.Minute)), ago(15*time.Minute), false)
	w.deliver(t, orb, orbObjectEvent("j", OrbTxnCreated, ago(3*time.Hour)), ago(3*time.Hour), false) // before T − margin
	w.deliver(t, orb, orbObjectEvent("k", "customer.credit_balance_depleted", ago(14*time.Minute)), ago(14*time.Minute), true)

	stripeIDs := func() string {
		var ids []string
		rows, err := w.conn.Query(context.Background(), "SELECT id FROM stripe_customer_balance_transactions FINAL ORDER BY id")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var id string
			_ = rows.Scan(&id)
			ids = append(ids, id)
		}
		return fmt.Sprint(ids)
	}
	if got := stripeIDs(); got != "[cbtxn_a cbtxn_c]" {
		t.Fatalf("before recovery: %s", got)
	}

	// Round 1 starts from the route's rows; round 2 from the watermark the
	// replays moved (cbtxn_e, otxn_i): a rerun is harmless.
	want := []struct {
		stripeMark, orbMark                          time.Duration
		stripeEvents, stripeRows, orbEvents, orbRows int
	}{
		{30 * time.Minute, 20 * time.Minute, 4, 3, 2, 2}, // stripe reads c d e ign; orb h i
		{10 * time.Minute, 15 * time.Minute, 2, 1, 2, 2}, // stripe reads e ign; orb h i
	}
	for round, wt := range want {
		got := w.recover(t)
		s, o := got[providerStripe], got[providerOrb]
		if !s.Watermark.Equal(ago(wt.stripeMark)) || !s.Since.Equal(ago(wt.stripeMark+5*time.Minute)) ||
			s.Events != wt.stripeEvents || s.Rows != wt.stripeRows || s.Skipped != 0 {
			t.Errorf("round %d: stripe %+v; want watermark −%s, since 5m before it, %d events read, %d rows",
				round+1, s, wt.stripeMark, wt.stripeEvents, wt.stripeRows)
		}
		if !o.Watermark.Equal(ago(wt.orbMark)) || o.Events != wt.orbEvents || o.Rows != wt.orbRows {
			t.Errorf("round %d: orb %+v; want watermark −%s, %d events read, %d rows", round+1, o, wt.orbMark, wt.orbEvents, wt.orbRows)
		}
		if got := stripeIDs(); got != "[cbtxn_a cbtxn_c cbtxn_d cbtxn_e]" {
			t.Errorf("round %d: stripe rows %s, want a c d e (old is before the window)", round+1, got)
		}
		if n := w.count(t, "SELECT count() FROM orb_customer_balance_transactions FINAL"); n != 2 {
			t.Errorf("round %d: %d orb rows, want otxn_h and otxn_i", round+1, n)
		}
	}

	// A replayed row equals what the route queued: same _synced_at (the
	// arrival), _version (the event's created), _event_id and _raw.
	for _, id := range []string{"cbtxn_c", "cbtxn_d", "cbtxn_e"} {
		if n := w.count(t, "SELECT uniqExact(_synced_at, _version, _observed_at, _raw, assumeNotNull(_event_id), _source) FROM stripe_customer_balance_transactions WHERE id = ?", id); n != 1 {
			t.Errorf("%s: %d distinct versions of the row, want 1", id, n)
		}
	}
	var synced time.Time
	var source, event string
	if err := w.conn.QueryRow(context.Background(), "SELECT any(_synced_at), any(_source), any(assumeNotNull(_event_id)) FROM stripe_customer_balance_transactions WHERE id = 'cbtxn_d'").
		Scan(&synced, &source, &event); err != nil {
		t.Fatal(err)
	}
	if !synced.Equal(ago(32*time.Minute)) || source != row.SourceWebhook || event != "evt_d" {
		t.Errorf("replayed cbtxn_d: _synced_at %v (want the intake row's received_at %v), _source %q, _event_id %q", synced, ago(32*time.Minute), source, event)
	}
	if n := w.count(t, "SELECT uniqExact(_synced_at, _version, _raw) FROM orb_customer_balance_transactions WHERE id = 'otxn_h'"); n != 1 {
		t.Errorf("otxn_h: %d distinct versions after replays, want 1", n)
	}
}

// TestRecoverWithoutWebhookRowsReadsTheWindow: with no webhook transaction
// row at all, the intake log is read back over the window (72 h), in
// slices no wider than the span that keeps a crash mid-recovery safe.
func TestRecoverWithoutWebhookRowsReadsTheWindow(t *testing.T) {
	w := newRecoverWorld(t)
	now := time.Now().UTC().Truncate(time.Second)
	stripe, orb := (&stripeAccepter{}).decode, (&orbAccepter{}).decode
	const n = 14
	for i := range n { // every 50 s over ~11 minutes, an hour ago
		at := now.Add(-time.Hour + time.Duration(i)*50*time.Second)
		w.deliver(t, stripe, stripeObjectEvent(fmt.Sprint("w", i), at), at, false)
		w.deliver(t, orb, orbObjectEvent(fmt.Sprint("w", i), OrbTxnCreated, at), at, false)
	}
	old := now.Add(-100 * time.Hour)
	w.deliver(t, stripe, stripeObjectEvent("ancient", old), old, false)

	sl, err := planSlices(context.Background(), w.conn, replaySpecs()[0], now.Add(-DefaultRecoverWindow))
	if err != nil {
		t.Fatal(err)
	}
	total := uint64(0)
	for i, s := range sl {
		total += s.rows
		if s.to.Sub(s.from) > recoverSliceSpan || (i > 0 && s.from.Before(sl[i-1].to)) {
			t.Errorf("slice %d [%s, %s) is wider than %s or overlaps the previous", i, s.from, s.to, recoverSliceSpan)
		}
	}
	if len(sl) < 3 || total != n {
		t.Errorf("%d slices holding %d rows; want ≥ 3 slices over the 11 minutes holding all %d", len(sl), total, n)
	}

	got := w.recover(t)
	for _, p := range []string{providerStripe, providerOrb} {
		if r := got[p]; !r.Watermark.IsZero() || r.Rows != n || r.Since.After(now.Add(-DefaultRecoverWindow+time.Minute)) {
			t.Errorf("%s: %+v; want no watermark, since = now − 72h, %d rows", p, r, n)
		}
	}
	if c := w.count(t, "SELECT count() FROM stripe_customer_balance_transactions FINAL"); c != n {
		t.Errorf("%d stripe rows, want %d (not the one 100 h old)", c, n)
	}
	if c := w.count(t, "SELECT count() FROM orb_customer_balance_transactions FINAL"); c != n {
		t.Errorf("%d orb rows, want %d", c, n)
	}
}

// TestReplayMissingWritesOnlyWhatIsMissing: while another process keeps
// writing webhook rows (the watermark moves on), the rows a dead process
// acknowledged and lost are found by event id and written again, and rows
// that are there are not read at all.
func TestReplayMissingWritesOnlyWhatIsMissing(t *testing.T) {
	w := newRecoverWorld(t)
	stripe := &stripeAccepter{triggers: map[string]bool{}}
	orb := &orbAccepter{}
	base := time.Now().Add(-10 * time.Minute).Truncate(time.Second)
	for i := range 6 {
		at := base.Add(time.Duration(i) * time.Second)
		lost := i%2 == 0 // the dead process's
		w.deliver(t, stripe.decode, stripeObjectEvent(fmt.Sprint("m", i), at), at, !lost)
		w.deliver(t, orb.decode, orbObjectEvent(fmt.Sprint("m", i), OrbTxnCreated, at), at, !lost)
	}
	// A survivor's newer row: the start-up watermark would skip the gap.
	later := time.Now().Add(-time.Minute).Truncate(time.Second)
	w.deliver(t, stripe.decode, stripeObjectEvent("later", later), later, true)
	w.deliver(t, stripe.decode, stripeOtherEvent("trigger", "customer.updated", `{"id":"cus_r","object":"customer"}`, later), later, true)

	rs, err := ReplayMissing(context.Background(), RecoverOptions{Conn: w.conn, Sink: w.sink},
		base.Add(-time.Minute), time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		// Stripe also reads the trigger event, which has no row to miss.
		wantEvents := map[string]int{"stripe": 4, "orb": 3}[r.Provider]
		if r.Rows != 3 || r.Events != wantEvents {
			t.Errorf("%s: %d events read, %d rows written; want %d and 3", r.Provider, r.Events, r.Rows, wantEvents)
		}
	}
	if n := w.count(t, "SELECT count() FROM stripe_customer_balance_transactions FINAL WHERE id LIKE 'cbtxn_m%'"); n != 6 {
		t.Errorf("%d Stripe rows, want 6", n)
	}
	if n := w.count(t, "SELECT count() FROM orb_customer_balance_transactions FINAL WHERE id LIKE 'otxn_m%'"); n != 6 {
		t.Errorf("%d Orb rows, want 6", n)
	}
	// A second look finds nothing missing.
	rs, err = ReplayMissing(context.Background(), RecoverOptions{Conn: w.conn, Sink: w.sink}, base.Add(-time.Minute), time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Rows != 0 {
			t.Errorf("%s: second look wrote %d rows", r.Provider, r.Rows)
		}
	}
}
