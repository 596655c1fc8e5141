package webhook_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"

	"github.com/syncd/syncd/internal/chtest"
	"github.com/syncd/syncd/internal/metrics"
	"github.com/syncd/syncd/internal/orbsig"
	"github.com/syncd/syncd/internal/sink"
	"github.com/syncd/syncd/internal/webhook"
)

const (
	orbSecretOld = "whsec_orb_old_0123456789"
	orbSecretNew = "whsec_orb_new_9876543210"
)

type orbFixture struct {
	url     string
	conn    driver.Conn
	sink    *sink.Sink
	metrics *metrics.Metrics
}

// startOrb serves the Orb route over a real ClickHouse database.
func startOrb(t *testing.T) *orbFixture {
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
	f := &orbFixture{conn: conn, metrics: metrics.New()}
	f.sink = sink.New(conn, sink.Options{Metrics: f.metrics, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = f.sink.Close(ctx)
	})
	srv := httptest.NewServer(webhook.Orb(webhook.OrbOptions{
		Common:    webhook.Common{Sink: f.sink, Metrics: f.metrics, AckTimeout: 10 * time.Second},
		Secrets:   []string{orbSecretOld, orbSecretNew},
		Tolerance: 5 * time.Minute,
	}))
	t.Cleanup(srv.Close)
	f.url = srv.URL
	return f
}

func orbTxn(id, typ, amount, starting, ending string) string {
	return fmt.Sprintf(`{"id":%q,"action":"manual_adjustment","amount":%q,"created_at":"2024-03-27T15:42:29+00:00",`+
		`"credit_note":null,"description":"goodwill","ending_balance":%q,"invoice":{"id":"inv_1"},`+
		`"starting_balance":%q,"type":%q}`, id, amount, ending, starting, typ)
}

func orbEvent(id, typ, customer, txn string) []byte {
	return fmt.Appendf(nil, `{"id":%q,"created_at":"2024-03-27T15:42:29.551Z","type":%q,`+
		`"customer":{"id":%q,"external_customer_id":"ext-%s","currency":"USD","balance":"1.00","name":"A"},`+
		`"properties":{"balance_transaction":%s}}`, id, typ, customer, customer, txn)
}

// orbHeaders signs body with secret at ts; extra signature values are
// sent as further X-Orb-Signature lines before the real one.
func orbHeaders(body []byte, secret string, ts time.Time, extra ...string) http.Header {
	stamp, sig := orbsig.Sign(body, secret, ts)
	h := http.Header{}
	h.Set(orbsig.TimestampHeader, stamp)
	for _, e := range extra {
		h.Add(orbsig.SignatureHeader, e)
	}
	h.Add(orbsig.SignatureHeader, sig)
	return h
}

func postOrb(t testing.TB, url string, body []byte, h http.Header) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(msg))
}

func TestOrbStatusCodes(t *testing.T) {
	f := startOrb(t)
	now := time.Now()
	valid := orbEvent("evt_valid", webhook.OrbTxnCreated, "cus_1", orbTxn("txn_1", "increment", "5.00", "0.00", "5.00"))
	truncated := valid[:len(valid)/2]
	huge := bytes.Repeat([]byte("x"), 5<<20)
	noEvent := []byte(`{"hello":1}`)
	badTxn := orbEvent("evt_badtxn", webhook.OrbTxnCreated, "cus_1", `{"id":"txn_x","action":"manual_adjustment","type":"increment"}`)
	other := []byte(`{"id":"evt_other","created_at":"2024-03-27T15:42:29.551Z","type":"subscription.started","properties":{}}`)
	v2only := orbHeaders(valid, orbSecretOld, now)
	v2only.Set(orbsig.SignatureHeader, strings.Replace(v2only.Get(orbsig.SignatureHeader), "v1=", "v2=", 1))
	noStamp := orbHeaders(valid, orbSecretOld, now)
	noStamp.Del(orbsig.TimestampHeader)

	cases := []struct {
		name    string
		method  string
		body    []byte
		h       http.Header
		chunked bool
		want    int
		outcome string
	}{
		{"GET is not allowed", http.MethodGet, nil, nil, false, 405, metrics.OutcomeMethod},
		{"no signature headers", http.MethodPost, valid, nil, false, 400, metrics.OutcomeBadSig},
		{"no timestamp header", http.MethodPost, valid, noStamp, false, 400, metrics.OutcomeBadSig},
		{"unknown secret", http.MethodPost, valid, orbHeaders(valid, "whsec_someone_else", now), false, 400, metrics.OutcomeBadSig},
		{"non-v1 scheme", http.MethodPost, valid, v2only, false, 400, metrics.OutcomeBadSig},
		{"signature of another body", http.MethodPost, valid, orbHeaders([]byte("{}"), orbSecretOld, now), false, 400, metrics.OutcomeBadSig},
		{"stale timestamp", http.MethodPost, valid, orbHeaders(valid, orbSecretOld, now.Add(-6*time.Minute)), false, 400, metrics.OutcomeBadSig},
		{"future timestamp", http.MethodPost, valid, orbHeaders(valid, orbSecretOld, now.Add(6*time.Minute)), false, 400, metrics.OutcomeBadSig},
		{"5 MiB body", http.MethodPost, huge, orbHeaders(huge, orbSecretOld, now), false, 413, metrics.OutcomeTooLarge},
		{"5 MiB body without a length", http.MethodPost, huge, orbHeaders(huge, orbSecretOld, now), true, 413, metrics.OutcomeTooLarge},
		{"signed body truncated mid-JSON", http.MethodPost, truncated, orbHeaders(truncated, orbSecretOld, now), false, 400, metrics.OutcomeBadRequest},
		{"signed JSON that is no event", http.MethodPost, noEvent, orbHeaders(noEvent, orbSecretOld, now), false, 400, metrics.OutcomeBadRequest},
		{"transaction without amounts", http.MethodPost, badTxn, orbHeaders(badTxn, orbSecretOld, now), false, 400, metrics.OutcomeBadRequest},
		{"within the tolerance, slightly ahead", http.MethodPost, valid, orbHeaders(valid, orbSecretOld, now.Add(time.Minute)), false, 200, metrics.OutcomeOK},
		{"old secret", http.MethodPost, valid, orbHeaders(valid, orbSecretOld, now), false, 200, metrics.OutcomeOK},
		{"new secret", http.MethodPost, valid, orbHeaders(valid, orbSecretNew, now), false, 200, metrics.OutcomeOK},
		{"one of several signatures matches", http.MethodPost, valid,
			orbHeaders(valid, orbSecretNew, now, "v1=00ff", "v0=abc"), false, 200, metrics.OutcomeOK},
		{"other event types are stored and ignored", http.MethodPost, other, orbHeaders(other, orbSecretNew, now), false, 200, metrics.OutcomeIgnored},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := value(f.metrics.WebhookRequests.WithLabelValues("orb", c.outcome))
			var body io.Reader = bytes.NewReader(c.body)
			if c.chunked {
				body = io.MultiReader(body) // hides the length: sent chunked
			}
			req, _ := http.NewRequest(c.method, f.url, body)
			for k, v := range c.h {
				req.Header[k] = v
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			msg, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, msg, c.want)
			}
			if bytes.Contains(msg, []byte("whsec_")) || (c.h != nil && bytes.Contains(msg, []byte(c.h.Get(orbsig.SignatureHeader)[3:]))) {
				t.Errorf("answer %q quotes a secret or the signature", msg)
			}
			if got := value(f.metrics.WebhookRequests.WithLabelValues("orb", c.outcome)); got != before+1 {
				t.Errorf("syncd_webhook_requests_total{provider=orb,outcome=%q} went %v → %v", c.outcome, before, got)
			}
		})
	}
	settle(t, f.sink)
	if n := count(t, f.conn, "SELECT count() FROM orb_events FINAL"); n != 2 {
		t.Errorf("orb_events holds %d events, want evt_valid and evt_other", n)
	}
	if n := count(t, f.conn, "SELECT count() FROM orb_customer_balance_transactions FINAL"); n != 1 {
		t.Errorf("orb_customer_balance_transactions holds %d rows, want txn_1 only", n)
	}
	if got := value(f.metrics.Events.WithLabelValues("orb", webhook.OrbTxnCreated)); got != 4 {
		t.Errorf("syncd_events_total{provider=orb,type=%s} = %v, want 4", webhook.OrbTxnCreated, got)
	}
	if got := value(f.metrics.Events.WithLabelValues("orb", metrics.Other)); got != 1 {
		t.Errorf("syncd_events_total{provider=orb,type=other} = %v, want 1", got)
	}
}

// TestOrbDurableBefore200 reads ClickHouse the moment each 200 arrives:
// the intake row must already be there; the transaction row, committed in
// the background, follows within moments.
func TestOrbDurableBefore200(t *testing.T) {
	f := startOrb(t)
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			id, txn := fmt.Sprintf("evt_d%02d", i), fmt.Sprintf("txn_d%02d", i)
			body := orbEvent(id, webhook.OrbTxnCreated, fmt.Sprintf("cus_%d", i%5), orbTxn(txn, "decrement", "1.5", "0", "-1.5"))
			code, msg := postOrb(t, f.url, body, orbHeaders(body, orbSecretOld, time.Now()))
			if code != 200 {
				t.Errorf("%s: status %d (%s)", id, code, msg)
				return
			}
			if n := count(t, f.conn, "SELECT count() FROM orb_events WHERE id = ?", id); n == 0 {
				t.Errorf("%s answered 200 before it was in orb_events", id)
			}
			if !soon(t, f.conn, "SELECT count() FROM orb_customer_balance_transactions WHERE id = ?", txn) {
				t.Errorf("%s not in orb_customer_balance_transactions 5s after %s's 200", txn, id)
			}
		})
	}
	wg.Wait()
}

func TestOrbRowFromEnvelope(t *testing.T) {
	f := startOrb(t)
	body := orbEvent("evt_row", webhook.OrbTxnCreated, "cus_row", orbTxn("txn_row", "increment", "11.00", "0.00", "11.00"))
	for range 3 { // duplicates are harmless
		if code, msg := postOrb(t, f.url, body, orbHeaders(body, orbSecretOld, time.Now())); code != 200 {
			t.Fatalf("status %d (%s)", code, msg)
		}
	}
	settle(t, f.sink)
	var (
		customer, ext, currency, action, typ, source, eventID, invoice, payload string
		created, observed                                                       time.Time
	)
	err := f.conn.QueryRow(context.Background(), `SELECT customer_id, assumeNotNull(external_customer_id), currency, action, type,
		_source, assumeNotNull(_event_id), assumeNotNull(invoice_id), created_at, _observed_at
		FROM orb_customer_balance_transactions FINAL WHERE id = 'txn_row'`).
		Scan(&customer, &ext, &currency, &action, &typ, &source, &eventID, &invoice, &created, &observed)
	if err != nil {
		t.Fatal(err)
	}
	if customer != "cus_row" || ext != "ext-cus_row" || currency != "USD" || action != "manual_adjustment" || typ != "increment" ||
		source != "webhook" || eventID != "evt_row" || invoice != "inv_1" {
		t.Errorf("row: customer %q ext %q currency %q action %q type %q source %q event %q invoice %q",
			customer, ext, currency, action, typ, source, eventID, invoice)
	}
	if want := time.Date(2024, 3, 27, 15, 42, 29, 0, time.UTC); !created.Equal(want) || !observed.Equal(want) {
		t.Errorf("created_at %v, _observed_at %v; want both %v (the event's created_at, to the second)", created, observed, want)
	}
	if n := count(t, f.conn, "SELECT count() FROM orb_customer_balance_transactions FINAL"); n != 1 {
		t.Errorf("%d rows after three deliveries, want 1", n)
	}
	if err := f.conn.QueryRow(context.Background(), "SELECT any(payload) FROM orb_events WHERE id = 'evt_row'").Scan(&payload); err != nil {
		t.Fatal(err)
	}
	if payload != string(body) {
		t.Errorf("payload is not the body as received:\n%s", payload)
	}
}

// TestOrbAmountsSurviveExactly sends Orb's decimal strings through the
// webhook path and reads them back from ClickHouse as decimals.
func TestOrbAmountsSurviveExactly(t *testing.T) {
	f := startOrb(t)
	cases := []struct{ amount, starting, ending string }{
		{"0.000000000001", "0", "0.000000000001"},
		{"123456789012345.5", "-123456789012345.5", "0"},
		{"-42.25", "100", "57.75"},
		{"11.00", "-0.000000000001", "10.999999999999"},
		{"-99999999999999999999999999.999999999999", "0", "-99999999999999999999999999.999999999999"},
	}
	for i, c := range cases {
		body := orbEvent(fmt.Sprintf("evt_amt%d", i), webhook.OrbTxnCreated, "cus_amt", orbTxn(fmt.Sprintf("txn_amt%d", i), "increment", c.amount, c.starting, c.ending))
		if code, msg := postOrb(t, f.url, body, orbHeaders(body, orbSecretOld, time.Now())); code != 200 {
			t.Fatalf("%s: status %d (%s)", c.amount, code, msg)
		}
	}
	settle(t, f.sink)
	for i, c := range cases {
		var amount, starting, ending decimal.Decimal
		var text string
		if err := f.conn.QueryRow(context.Background(), `SELECT amount, starting_balance, ending_balance, toString(amount)
			FROM orb_customer_balance_transactions FINAL WHERE id = ?`, fmt.Sprintf("txn_amt%d", i)).
			Scan(&amount, &starting, &ending, &text); err != nil {
			t.Fatal(err)
		}
		for _, p := range []struct {
			name string
			got  decimal.Decimal
			sent string
		}{{"amount", amount, c.amount}, {"starting_balance", starting, c.starting}, {"ending_balance", ending, c.ending}} {
			if !p.got.Equal(decimal.RequireFromString(p.sent)) {
				t.Errorf("%s %q came back as %s", p.name, p.sent, p.got)
			}
		}
		// What an analyst sees in SQL. (18.16's toString pads the widest
		// Decimal128 values with spaces, so only the amounts.)
		if d, err := decimal.NewFromString(text); i < 4 && (err != nil || !d.Equal(decimal.RequireFromString(c.amount))) {
			t.Errorf("toString(amount) of %q is %q", c.amount, text)
		}
	}
	// One digit more than Decimal(38, 12) holds is refused, not rounded.
	body := orbEvent("evt_amt_x", webhook.OrbTxnCreated, "cus_amt", orbTxn("txn_amt_x", "increment", "0.0000000000001", "0", "0"))
	if code, msg := postOrb(t, f.url, body, orbHeaders(body, orbSecretOld, time.Now())); code != 400 || !strings.Contains(msg, "amount") {
		t.Errorf("13 decimal places: status %d (%s), want 400 naming amount", code, msg)
	}
}

func TestOrbAnswers503WhenTheSinkCannotTakeIt(t *testing.T) {
	f := startOrb(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.sink.Close(ctx); err != nil {
		t.Fatal(err)
	}
	body := orbEvent("evt_late", webhook.OrbTxnCreated, "cus_1", orbTxn("txn_late", "increment", "1", "0", "1"))
	if code, _ := postOrb(t, f.url, body, orbHeaders(body, orbSecretOld, time.Now())); code != 503 {
		t.Errorf("status %d after the sink closed, want 503", code)
	}
	if got := value(f.metrics.WebhookRequests.WithLabelValues("orb", metrics.OutcomeUnavailable)); got != 1 {
		t.Errorf("syncd_webhook_requests_total{provider=orb,outcome=unavailable} = %v, want 1", got)
	}
}
