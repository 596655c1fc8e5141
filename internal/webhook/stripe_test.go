package webhook_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	stripewebhook "github.com/stripe/stripe-go/v82/webhook"

	"github.com/syncd/syncd/internal/chtest"
	"github.com/syncd/syncd/internal/metrics"
	"github.com/syncd/syncd/internal/sink"
	"github.com/syncd/syncd/internal/webhook"
)

func TestMain(m *testing.M) { chtest.Main(m) }

const (
	secretOld = "whsec_old_0123456789abcdef"
	secretNew = "whsec_new_fedcba9876543210"
)

// triggers is the list of Stripe events that change a balance.
var triggers = []string{
	"customer.created", "customer.updated", "customer.deleted",
	"invoice.finalized", "invoice.paid", "invoice.voided", "invoice.marked_uncollectible", "invoice.updated",
	"credit_note.created", "credit_note.updated", "credit_note.voided", "checkout.session.completed",
}

// dirtyLog records MarkDirty and MarkRelated calls.
type dirtyLog struct {
	mu      sync.Mutex
	marks   [][2]string
	related []relatedMark
}

func (d *dirtyLog) MarkDirty(account, customer, _ string) {
	d.mu.Lock()
	d.marks = append(d.marks, [2]string{account, customer})
	d.mu.Unlock()
}

func (d *dirtyLog) all() [][2]string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.marks)
}

type fixture struct {
	url     string
	conn    driver.Conn
	sink    *sink.Sink
	dirty   *dirtyLog
	metrics *metrics.Metrics
}

// start serves the Stripe route over a real ClickHouse database at dsn.
func start(t *testing.T, dsn string, ackTimeout time.Duration) *fixture {
	t.Helper()
	ctx := context.Background()
	conn, err := sink.Open(ctx, dsn, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := sink.Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}
	f := &fixture{conn: conn, dirty: &dirtyLog{}, metrics: metrics.New()}
	f.sink = sink.New(conn, sink.Options{Metrics: f.metrics, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = f.sink.Close(ctx)
	})
	srv := httptest.NewServer(webhook.Stripe(webhook.StripeOptions{
		Common:       webhook.Common{Sink: f.sink, Metrics: f.metrics, AckTimeout: ackTimeout},
		Secrets:      []string{secretOld, secretNew},
		Tolerance:    5 * time.Minute,
		TriggerTypes: triggers,
		Dirty:        f.dirty,
		Related:      f.dirty,
	}))
	t.Cleanup(srv.Close)
	f.url = srv.URL
	return f
}

func event(id, typ, account, object string) []byte {
	acct := "null"
	if account != "" {
		acct = `"` + account + `"`
	}
	return fmt.Appendf(nil, `{"id":%q,"object":"event","account":%s,"api_version":"2020-08-27","created":1700000000,`+
		`"data":{"object":%s,"previous_attributes":{"balance":0}},"livemode":false,"pending_webhooks":1,`+
		`"request":{"id":null,"idempotency_key":null},"type":%q}`, id, acct, object, typ)
}

func customerObject(id string) string {
	return fmt.Sprintf(`{"id":%q,"object":"customer","balance":-500,"currency":"usd","email":null}`, id)
}

func txnObject(id, customer string, amount int64) string {
	return fmt.Sprintf(`{"id":%q,"object":"customer_balance_transaction","amount":%d,"checkout_session":null,`+
		`"created":1700000000,"credit_note":null,"currency":"usd","customer":%q,"customer_account":null,`+
		`"description":"goodwill","ending_balance":%d,"invoice":null,"livemode":false,"metadata":{"b":"2","a":"1"},"type":"adjustment"}`,
		id, amount, customer, amount)
}

func sign(body []byte, secret string, at time.Time) string {
	return stripewebhook.GenerateTestSignedPayload(&stripewebhook.UnsignedPayload{Payload: body, Secret: secret, Timestamp: at}).Header
}

func post(t testing.TB, url string, body []byte, sig string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if sig != "" {
		req.Header.Set(webhook.StripeSignatureHeader, sig)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(msg))
}

// settle waits until s has committed everything queued: an object event's
// transaction row is committed in the background, after its 200.
func settle(t testing.TB, s *sink.Sink) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.Queued() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d rows still queued after 10s", s.Queued())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// soon reports whether the count query turns non-zero within 5 s.
func soon(t testing.TB, conn driver.Conn, query string, args ...any) bool {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); count(t, conn, query, args...) == 0; {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

func count(t testing.TB, conn driver.Conn, query string, args ...any) uint64 {
	t.Helper()
	var n uint64
	if err := conn.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

func TestStripeStatusCodes(t *testing.T) {
	f := start(t, chtest.DSN(t), 10*time.Second)
	now := time.Now()
	valid := event("evt_valid", "customer.updated", "", customerObject("cus_1"))
	truncated := valid[:len(valid)/2]
	huge := bytes.Repeat([]byte("x"), 5<<20)

	cases := []struct {
		name    string
		method  string
		body    []byte
		sig     string
		chunked bool
		want    int
		outcome string
	}{
		{"GET is not allowed", http.MethodGet, nil, "", false, 405, metrics.OutcomeMethod},
		{"missing signature", http.MethodPost, valid, "", false, 400, metrics.OutcomeBadSig},
		{"unknown secret", http.MethodPost, valid, sign(valid, "whsec_someone_else", now), false, 400, metrics.OutcomeBadSig},
		{"garbage header", http.MethodPost, valid, "t=abc,v1=zz", false, 400, metrics.OutcomeBadSig},
		{"signature of another body", http.MethodPost, valid, sign([]byte("{}"), secretOld, now), false, 400, metrics.OutcomeBadSig},
		{"replayed old timestamp", http.MethodPost, valid, sign(valid, secretOld, now.Add(-6*time.Minute)), false, 400, metrics.OutcomeBadSig},
		{"future timestamp", http.MethodPost, valid, sign(valid, secretOld, now.Add(6*time.Minute)), false, 400, metrics.OutcomeBadSig},
		{"5 MiB body", http.MethodPost, huge, sign(huge, secretOld, now), false, 413, metrics.OutcomeTooLarge},
		{"5 MiB body without a length", http.MethodPost, huge, sign(huge, secretOld, now), true, 413, metrics.OutcomeTooLarge},
		{"signed body truncated mid-JSON", http.MethodPost, truncated, sign(truncated, secretOld, now), false, 400, metrics.OutcomeBadRequest},
		{"signed JSON that is no event", http.MethodPost, []byte(`{"hello":1}`), sign([]byte(`{"hello":1}`), secretOld, now), false, 400, metrics.OutcomeBadRequest},
		{"within the tolerance, slightly ahead", http.MethodPost, valid, sign(valid, secretOld, now.Add(time.Minute)), false, 200, metrics.OutcomeOK},
		{"old secret", http.MethodPost, valid, sign(valid, secretOld, now), false, 200, metrics.OutcomeOK},
		{"new secret", http.MethodPost, valid, sign(valid, secretNew, now), false, 200, metrics.OutcomeOK},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := value(f.metrics.WebhookRequests.WithLabelValues("stripe", c.outcome))
			var body io.Reader = bytes.NewReader(c.body)
			if c.chunked {
				body = io.MultiReader(body) // hides the length: sent chunked
			}
			req, _ := http.NewRequest(c.method, f.url, body)
			if c.sig != "" {
				req.Header.Set(webhook.StripeSignatureHeader, c.sig)
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
			if bytes.Contains(msg, []byte("whsec_")) || (c.sig != "" && bytes.Contains(msg, []byte(c.sig))) {
				t.Errorf("answer %q quotes a secret or the signature", msg)
			}
			if got := value(f.metrics.WebhookRequests.WithLabelValues("stripe", c.outcome)); got != before+1 {
				t.Errorf("syncd_webhook_requests_total{outcome=%q} went %v → %v", c.outcome, before, got)
			}
		})
	}
	if n := count(t, f.conn, "SELECT count() FROM stripe_events FINAL"); n != 1 {
		t.Errorf("stripe_events holds %d events, want only evt_valid", n)
	}
}

func TestStripeRouting(t *testing.T) {
	f := start(t, chtest.DSN(t), 10*time.Second)
	now := time.Now()
	send := func(body []byte) {
		t.Helper()
		if code, msg := post(t, f.url, body, sign(body, secretNew, now)); code != 200 {
			t.Fatalf("status %d (%s), want 200", code, msg)
		}
	}

	// A trigger, delivered three times: one event row, a mark per delivery
	// (the refresher coalesces them).
	trigger := event("evt_trigger", "customer.updated", "", customerObject("cus_a"))
	for range 3 {
		send(trigger)
	}
	// Invoice and expanded-customer credit note name the customer field.
	send(event("evt_inv", "invoice.paid", "acct_conn", `{"id":"in_1","object":"invoice","customer":"cus_b"}`))
	send(event("evt_cn", "credit_note.created", "", `{"id":"cn_1","object":"credit_note","customer":{"id":"cus_c","object":"customer"}}`))
	// Unknown types are stored, answered 200 and counted ignored.
	ignoredBefore := value(f.metrics.WebhookRequests.WithLabelValues("stripe", metrics.OutcomeIgnored))
	send(event("evt_unknown", "payment_intent.created", "", `{"id":"pi_1","object":"payment_intent","customer":"cus_d"}`))
	if got := value(f.metrics.WebhookRequests.WithLabelValues("stripe", metrics.OutcomeIgnored)); got != ignoredBefore+1 {
		t.Errorf("ignored outcome went %v → %v", ignoredBefore, got)
	}
	// An event carrying the transaction itself becomes the row, twice over
	// harmlessly.
	obj := event("evt_txn", "customer_balance_transaction.created", "acct_conn", txnObject("cbtxn_1", "cus_e", -700))
	send(obj)
	send(obj)

	want := [][2]string{{"", "cus_a"}, {"", "cus_a"}, {"", "cus_a"}, {"acct_conn", "cus_b"}, {"", "cus_c"}}
	if got := f.dirty.all(); !slices.Equal(got, want) {
		t.Errorf("marked dirty %v, want %v", got, want)
	}

	type eventRow struct {
		ID, Type, Account, Customer, APIVersion string
	}
	rows, err := f.conn.Query(context.Background(),
		"SELECT id, type, account_id, customer, api_version FROM stripe_events FINAL ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	var got []eventRow
	for rows.Next() {
		var r eventRow
		if err := rows.Scan(&r.ID, &r.Type, &r.Account, &r.Customer, &r.APIVersion); err != nil {
			t.Fatal(err)
		}
		got = append(got, r)
	}
	rows.Close()
	wantRows := []eventRow{
		{"evt_cn", "credit_note.created", "", "cus_c", "2020-08-27"},
		{"evt_inv", "invoice.paid", "acct_conn", "cus_b", "2020-08-27"},
		{"evt_trigger", "customer.updated", "", "cus_a", "2020-08-27"},
		{"evt_txn", "customer_balance_transaction.created", "acct_conn", "", "2020-08-27"},
		{"evt_unknown", "payment_intent.created", "", "", "2020-08-27"},
	}
	if !slices.Equal(got, wantRows) {
		t.Errorf("stripe_events FINAL:\n got %v\nwant %v", got, wantRows)
	}
	var payload string
	if err := f.conn.QueryRow(context.Background(), "SELECT any(payload) FROM stripe_events WHERE id = 'evt_trigger'").Scan(&payload); err != nil {
		t.Fatal(err)
	}
	if payload != string(trigger) {
		t.Errorf("payload is not the body as received:\n%s", payload)
	}

	settle(t, f.sink)
	var (
		account, customer, source, eventID string
		amount                             int64
		keys                               []string
	)
	if err := f.conn.QueryRow(context.Background(),
		"SELECT account_id, customer, amount, _source, assumeNotNull(_event_id), metadata.key FROM stripe_customer_balance_transactions FINAL WHERE id = 'cbtxn_1'").
		Scan(&account, &customer, &amount, &source, &eventID, &keys); err != nil {
		t.Fatal(err)
	}
	if account != "acct_conn" || customer != "cus_e" || amount != -700 || source != "webhook" || eventID != "evt_txn" || !slices.Equal(keys, []string{"a", "b"}) {
		t.Errorf("txn row: account %q customer %q amount %d source %q event %q keys %v", account, customer, amount, source, eventID, keys)
	}
	if n := count(t, f.conn, "SELECT count() FROM stripe_customer_balance_transactions FINAL"); n != 1 {
		t.Errorf("%d txn rows after a duplicate delivery, want 1", n)
	}
	if got := value(f.metrics.Events.WithLabelValues("stripe", "customer_balance_transaction")); got != 2 {
		t.Errorf("syncd_events_total{type=customer_balance_transaction} = %v, want 2", got)
	}
	if got := value(f.metrics.Events.WithLabelValues("stripe", metrics.Other)); got != 1 {
		t.Errorf("syncd_events_total{type=other} = %v, want 1 (payment_intent.created folded)", got)
	}
}

// TestStripeObjectEventDurableBefore200 reads ClickHouse the moment each
// 200 arrives: the intake row must be there; the transaction row is
// committed in the background and follows within moments.
func TestStripeObjectEventDurableBefore200(t *testing.T) {
	f := start(t, chtest.DSN(t), 10*time.Second)
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			id, txn := fmt.Sprintf("evt_o%02d", i), fmt.Sprintf("cbtxn_o%02d", i)
			body := event(id, "customer_balance_transaction.created", "", txnObject(txn, fmt.Sprintf("cus_%d", i%5), -int64(i+1)))
			if code, msg := post(t, f.url, body, sign(body, secretOld, time.Now())); code != 200 {
				t.Errorf("%s: status %d (%s)", id, code, msg)
				return
			}
			if n := count(t, f.conn, "SELECT count() FROM stripe_events WHERE id = ?", id); n == 0 {
				t.Errorf("%s answered 200 before it was in stripe_events", id)
			}
			if !soon(t, f.conn, "SELECT count() FROM stripe_customer_balance_transactions WHERE id = ?", txn) {
				t.Errorf("%s not in stripe_customer_balance_transactions 5s after %s's 200", txn, id)
			}
		})
	}
	wg.Wait()
}

func TestStripeMalformedTransactionIsRefused(t *testing.T) {
	f := start(t, chtest.DSN(t), 10*time.Second)
	body := event("evt_bad", "customer_balance_transaction.created", "", `{"id":"cbtxn_x","object":"customer_balance_transaction","amount":"12"}`)
	code, msg := post(t, f.url, body, sign(body, secretOld, time.Now()))
	if code != 400 || !strings.Contains(msg, "amount") {
		t.Errorf("status %d (%s), want 400 naming the field", code, msg)
	}
	if n := count(t, f.conn, "SELECT count() FROM stripe_events"); n != 0 {
		t.Errorf("a refused event left %d rows", n)
	}
}

func TestStripeAnswers503WhenTheSinkCannotTakeIt(t *testing.T) {
	f := start(t, chtest.DSN(t), 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.sink.Close(ctx); err != nil {
		t.Fatal(err)
	}
	body := event("evt_late", "customer.updated", "", customerObject("cus_1"))
	if code, _ := post(t, f.url, body, sign(body, secretOld, time.Now())); code != 503 {
		t.Errorf("status %d after the sink closed, want 503", code)
	}
	if marks := f.dirty.all(); len(marks) != 0 {
		t.Errorf("an event that is not durable marked %v dirty", marks)
	}
}

// TestStripeClickHouseOutage stops ClickHouse while events arrive: no 200
// while it is down, recovery without help, nothing acknowledged missing.
func TestStripeClickHouseOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("stops and restarts a ClickHouse server")
	}
	ch := chtest.Private(t)
	f := start(t, ch.DSN("outage"), time.Second)

	type result struct {
		id         string
		code       int
		start, end time.Time
	}
	var (
		mu      sync.Mutex
		results []result
		stop    = make(chan struct{})
		wg      sync.WaitGroup
	)
	client := &http.Client{Timeout: 10 * time.Second}
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("evt_%d_%d", w, i)
				body := event(id, "customer.updated", "", customerObject(fmt.Sprintf("cus_%d", i%7)))
				req, _ := http.NewRequest(http.MethodPost, f.url, bytes.NewReader(body))
				req.Header.Set(webhook.StripeSignatureHeader, sign(body, secretOld, time.Now()))
				r := result{id: id, start: time.Now()}
				if resp, err := client.Do(req); err == nil {
					r.code = resp.StatusCode
					resp.Body.Close()
				}
				r.end = time.Now()
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	time.Sleep(time.Second)
	if err := ch.Stop(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	time.Sleep(3 * time.Second)
	up := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := ch.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// Recovery: a fresh event is acknowledged without any help.
	deadline := time.Now().Add(30 * time.Second)
	for {
		body := event("evt_after", "customer.updated", "", customerObject("cus_after"))
		code, _ := post(t, f.url, body, sign(body, secretOld, time.Now()))
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %d 30s after ClickHouse came back", code)
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()

	var acked []string
	var okBefore, unavailableWhileDown, okAfter int
	for _, r := range results {
		switch {
		case r.code == 200 && r.start.After(down) && r.end.Before(up):
			t.Errorf("%s answered 200 while ClickHouse was down", r.id)
		case r.code == 503 && r.start.After(down) && r.end.Before(up):
			unavailableWhileDown++
		case r.code == 200 && r.end.Before(down):
			okBefore++
		case r.code == 200 && r.start.After(up):
			okAfter++
		}
		if r.code == 200 {
			acked = append(acked, r.id)
		} else if r.code != 503 && r.code != 0 {
			t.Errorf("%s answered %d", r.id, r.code)
		}
	}
	if okBefore == 0 || unavailableWhileDown == 0 || okAfter == 0 {
		t.Errorf("want 200s before, 503s during and 200s after the outage; got %d, %d, %d", okBefore, unavailableWhileDown, okAfter)
	}
	rows, err := f.conn.Query(context.Background(), "SELECT DISTINCT id FROM stripe_events")
	if err != nil {
		t.Fatal(err)
	}
	stored := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		stored[id] = true
	}
	rows.Close()
	for _, id := range acked {
		if !stored[id] {
			t.Errorf("%s was acknowledged but is not in stripe_events", id)
		}
	}
	t.Logf("%d requests: %d acknowledged before, %d refused during, %d acknowledged after the outage",
		len(results), okBefore, unavailableWhileDown, okAfter)
}

// value reads a counter.
func value(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}
