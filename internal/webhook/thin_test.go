package webhook_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/chtest"
	"github.com/syncd/syncd/internal/metrics"
	"github.com/syncd/syncd/internal/row"
)

// relatedMark is one MarkRelated call.
type relatedMark struct {
	eventID, account, objectType, objectID string
	payload                                string
}

func (d *dirtyLog) MarkRelated(ev row.StripeEvent, objectType, id string) {
	d.mu.Lock()
	d.related = append(d.related, relatedMark{ev.ID, ev.AccountID, objectType, id, string(ev.Payload)})
	d.mu.Unlock()
}

func (d *dirtyLog) relatedMarks() []relatedMark {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.related)
}

// thinEvent is a thin event as a Stripe event destination sends it.
func thinEvent(id, typ, account, relType, relID string) []byte {
	ctx := "null"
	if account != "" {
		ctx = strconv.Quote(account)
	}
	rel := "null"
	if relType != "" {
		rel = fmt.Sprintf(`{"id":%q,"type":%q,"url":"/v1/objects/%s"}`, relID, relType, relID)
	}
	return fmt.Appendf(nil, `{"id":%q,"object":"v2.core.event","type":%q,"livemode":false,`+
		`"created":"2026-11-30T10:15:30.123Z","context":%s,"related_object":%s,"reason":null}`, id, typ, ctx, rel)
}

// TestStripeThinEvents: the route tells thin events from snapshot events by
// the body, stores each with its id, type and the account from context,
// and marks its customer dirty, directly or by handing the related object
// over; pings and types syncd does not use are stored as ignored.
func TestStripeThinEvents(t *testing.T) {
	f := start(t, chtest.DSN(t), 10*time.Second)
	now := time.Now()
	send := func(body []byte, secret string) {
		t.Helper()
		if code, msg := post(t, f.url, body, sign(body, secret, now)); code != 200 {
			t.Fatalf("status %d (%s), want 200", code, msg)
		}
	}
	ignoredBefore := value(f.metrics.WebhookRequests.WithLabelValues("stripe", metrics.OutcomeIgnored))

	// Signed with the old secret during a rotation, from a connected account.
	send(thinEvent("evt_thin_cus", "v1.customer.updated", "acct_conn", "customer", "cus_a"), secretOld)
	invoice := thinEvent("evt_thin_inv", "v1.invoice.paid", "", "invoice", "in_1")
	send(invoice, secretNew)
	send(thinEvent("evt_thin_cn", "v1.credit_note.created", "acct_conn", "credit_note", "cn_1"), secretNew)
	send(thinEvent("evt_thin_cs", "v1.checkout.session.completed", "", "checkout.session", "cs_test_1"), secretNew)
	send(thinEvent("evt_thin_ping", "v2.core.event_destination.ping", "", "", ""), secretNew)
	send(thinEvent("evt_thin_other", "v1.payment_intent.created", "", "payment_intent", "pi_1"), secretNew)
	// A trigger type without the v1. prefix is not a v1 thin event.
	send(thinEvent("evt_thin_noprefix", "customer.updated", "", "customer", "cus_z"), secretNew)

	if got, want := f.dirty.all(), [][2]string{{"acct_conn", "cus_a"}}; !slices.Equal(got, want) {
		t.Errorf("marked dirty %v, want %v", got, want)
	}
	wantRelated := []relatedMark{
		{"evt_thin_inv", "", "invoice", "in_1", string(invoice)},
		{"evt_thin_cn", "acct_conn", "credit_note", "cn_1", ""},
		{"evt_thin_cs", "", "checkout.session", "cs_test_1", ""},
	}
	got := f.dirty.relatedMarks()
	if len(got) != len(wantRelated) {
		t.Fatalf("related marks %v, want %v", got, wantRelated)
	}
	for i, w := range wantRelated {
		g := got[i]
		if w.payload == "" {
			g.payload = ""
		}
		if g != w {
			t.Errorf("related mark %d = %+v, want %+v", i, g, w)
		}
	}
	if got := value(f.metrics.WebhookRequests.WithLabelValues("stripe", metrics.OutcomeIgnored)); got != ignoredBefore+3 {
		t.Errorf("ignored outcome went %v → %v, want 3 more (ping, unused type, unprefixed)", ignoredBefore, got)
	}

	type eventRow struct{ ID, Type, Account, Customer, Created string }
	rows, err := f.conn.Query(context.Background(),
		"SELECT id, type, account_id, customer, toString(created) FROM stripe_events FINAL ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	var rowsGot []eventRow
	for rows.Next() {
		var r eventRow
		if err := rows.Scan(&r.ID, &r.Type, &r.Account, &r.Customer, &r.Created); err != nil {
			t.Fatal(err)
		}
		rowsGot = append(rowsGot, r)
	}
	rows.Close()
	const at = "2026-11-30 10:15:30"
	wantRows := []eventRow{
		{"evt_thin_cn", "v1.credit_note.created", "acct_conn", "", at},
		{"evt_thin_cs", "v1.checkout.session.completed", "", "", at},
		{"evt_thin_cus", "v1.customer.updated", "acct_conn", "cus_a", at},
		{"evt_thin_inv", "v1.invoice.paid", "", "", at},
		{"evt_thin_noprefix", "customer.updated", "", "", at},
		{"evt_thin_other", "v1.payment_intent.created", "", "", at},
		{"evt_thin_ping", "v2.core.event_destination.ping", "", "", at},
	}
	if !slices.Equal(rowsGot, wantRows) {
		t.Errorf("stripe_events FINAL:\n got %v\nwant %v", rowsGot, wantRows)
	}
	if got := value(f.metrics.Events.WithLabelValues("stripe", "invoice.paid")); got != 1 {
		t.Errorf("syncd_events_total{type=invoice.paid} = %v, want 1 (thin counted with snapshot)", got)
	}
}

// TestStripeThinEventsRefused: a thin event is checked like any other.
func TestStripeThinEventsRefused(t *testing.T) {
	f := start(t, chtest.DSN(t), 10*time.Second)
	now := time.Now()
	for _, c := range []struct {
		name string
		body []byte
		sig  string
		want int
	}{
		{"unsigned", thinEvent("evt_1", "v1.customer.updated", "", "customer", "cus_a"), "", 400},
		{"wrong secret", thinEvent("evt_1", "v1.customer.updated", "", "customer", "cus_a"), "x", 400},
		{"no id", []byte(`{"object":"v2.core.event","type":"v1.customer.updated","created":"2026-11-30T10:15:30Z"}`), "sign", 400},
		{"no type", []byte(`{"id":"evt_1","object":"v2.core.event","created":"2026-11-30T10:15:30Z"}`), "sign", 400},
		{"no created", []byte(`{"id":"evt_1","object":"v2.core.event","type":"v1.customer.updated"}`), "sign", 400},
		{"created not a time", []byte(`{"id":"evt_1","object":"v2.core.event","type":"v1.customer.updated","created":17}`), "sign", 400},
		{"created past 2106", []byte(`{"id":"evt_1","object":"v2.core.event","type":"v1.customer.updated","created":"2200-01-01T00:00:00Z"}`), "sign", 400},
		{"created before 1970", []byte(`{"id":"evt_1","object":"v2.core.event","type":"v1.customer.updated","created":"1969-12-31T23:59:59Z"}`), "sign", 400},
	} {
		t.Run(c.name, func(t *testing.T) {
			sig := c.sig
			switch sig {
			case "sign":
				sig = sign(c.body, secretNew, now)
			case "x":
				sig = sign(c.body, "whsec_someone_else", now)
			}
			if code, msg := post(t, f.url, c.body, sig); code != c.want {
				t.Errorf("status %d (%s), want %d", code, msg, c.want)
			}
		})
	}
	if n := count(t, f.conn, "SELECT count() FROM stripe_events"); n != 0 {
		t.Errorf("%d refused events stored", n)
	}
	if len(f.dirty.all()) != 0 || len(f.dirty.relatedMarks()) != 0 {
		t.Error("a refused event marked something")
	}
}

// TestStripeSignatureWithTwoTimestamps: stripe-go verifies against the last
// t= of a header and syncd checked the future skew of the first, so
// t=<now>,t=<future>,v1=<signature over future> passed. One t= only.
func TestStripeSignatureWithTwoTimestamps(t *testing.T) {
	f := start(t, chtest.DSN(t), 10*time.Second)
	body := event("evt_twice", "customer.updated", "", customerObject("cus_a"))
	now := time.Now()
	future := now.Add(time.Hour)
	signedFuture := sign(body, secretNew, future) // t=<future>,v1=<sig>
	for _, header := range []string{
		fmt.Sprintf("t=%d,%s", now.Unix(), signedFuture),
		fmt.Sprintf("%s,t=%d", signedFuture, now.Unix()),
		fmt.Sprintf("t=%d,%s", now.Unix(), sign(body, secretNew, now)),
	} {
		if code, msg := post(t, f.url, body, header); code != 400 {
			t.Errorf("%s: status %d (%s), want 400", header, code, msg)
		}
	}
	if code, msg := post(t, f.url, body, signedFuture); code != 400 {
		t.Errorf("future timestamp alone: status %d (%s), want 400", code, msg)
	}
	if code, msg := post(t, f.url, body, sign(body, secretNew, now)); code != 200 {
		t.Errorf("one t=: status %d (%s), want 200", code, msg)
	}
}

// TestStripeSnapshotCreatedOutsideDateTime: a snapshot event dated past
// 2106 would wrap in stripe_events.created; it is refused instead.
func TestStripeSnapshotCreatedOutsideDateTime(t *testing.T) {
	f := start(t, chtest.DSN(t), 10*time.Second)
	body := []byte(`{"id":"evt_late","object":"event","created":4294967296,"type":"customer.updated",` +
		`"data":{"object":{"id":"cus_a","object":"customer"}}}`)
	if code, msg := post(t, f.url, body, sign(body, secretNew, time.Now())); code != 400 {
		t.Errorf("status %d (%s), want 400", code, msg)
	}
	if n := count(t, f.conn, "SELECT count() FROM stripe_events"); n != 0 {
		t.Errorf("%d rows stored", n)
	}
}
