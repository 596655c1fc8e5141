package webhook_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/chtest"
	"github.com/syncd/syncd/internal/metrics"
	"github.com/syncd/syncd/internal/webhook"
)

// heldBody is a request whose body is sent in part and then held open, as
// a client without a secret can do on as many connections as it likes.
type heldBody struct {
	conn net.Conn
	r    *bufio.Reader
}

// holdBody opens a connection to url, declares a body of declared bytes and
// sends the first send of them.
func holdBody(t *testing.T, url string, declared, send int) *heldBody {
	t.Helper()
	host := strings.TrimPrefix(url, "http://")
	conn, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "POST /webhooks/stripe HTTP/1.1\r\nHost: %s\r\nStripe-Signature: t=1,v1=00\r\nContent-Length: %d\r\n\r\n", host, declared)
	// Written in the background: the server may refuse the body before it
	// has all been sent, and stop reading it.
	go func() {
		chunk := bytes.Repeat([]byte("x"), 64<<10)
		for send > 0 {
			n := min(send, len(chunk))
			if _, err := conn.Write(chunk[:n]); err != nil {
				return
			}
			send -= n
		}
	}()
	return &heldBody{conn: conn, r: bufio.NewReader(conn)}
}

// answer reads the response to the held request, if one comes within wait.
func (h *heldBody) answer(t *testing.T, wait time.Duration) (int, string) {
	t.Helper()
	_ = h.conn.SetReadDeadline(time.Now().Add(wait))
	resp, err := http.ReadResponse(h.r, nil)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var msg bytes.Buffer
	_, _ = msg.ReadFrom(resp.Body)
	return resp.StatusCode, strings.TrimSpace(msg.String())
}

// waitUsed waits until budget holds want bytes.
func waitUsed(t *testing.T, b *webhook.Budget, want func(int64) bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !want(b.Used()) {
		if time.Now().After(deadline) {
			t.Fatalf("budget holds %d bytes after 5s; want %s", b.Used(), what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestBodyBudget: bodies held open by clients without a secret fill the
// budget's part for large bodies; past it a body is refused with 503 at
// once, a signed event still gets its 200 from the part kept for small
// bodies, and every byte comes back when a request ends, however it ends.
func TestBodyBudget(t *testing.T) {
	f := start(t, chtest.DSN(t), 10*time.Second)
	const budget = 2 << 20 // the smallest: 1.75 MiB for large bodies, 256 KiB kept for small ones
	bodies := webhook.NewBudget(budget)
	m := metrics.New()
	srv := httptest.NewServer(webhook.Stripe(webhook.StripeOptions{
		Common:       webhook.Common{Sink: f.sink, Metrics: m, AckTimeout: 3 * time.Second, Bodies: bodies},
		Secrets:      []string{secretOld},
		TriggerTypes: triggers,
		Dirty:        f.dirty,
	}))
	t.Cleanup(srv.Close)

	// All but the last byte of a 1 MiB body and of a 768 KiB one, held:
	// the large part is full.
	const large = budget - budget/8
	first := holdBody(t, srv.URL, 1<<20, 1<<20-1)
	waitUsed(t, bodies, func(n int64) bool { return n == 1<<20 }, "the held body's 1 MiB")
	second := holdBody(t, srv.URL, large-1<<20, large-1<<20-1)
	waitUsed(t, bodies, func(n int64) bool { return n == large }, "the large part, full")

	// A third outgrows it: 503 at once, its bytes given back.
	began := time.Now()
	third := holdBody(t, srv.URL, 1<<20, 1<<20-1)
	code, msg := third.answer(t, 2*time.Second)
	if code != http.StatusServiceUnavailable {
		t.Fatalf("a body past the budget: %d %q, want 503", code, msg)
	}
	if took := time.Since(began); took > time.Second {
		t.Errorf("the 503 took %s; want it at once", took)
	}
	waitUsed(t, bodies, func(n int64) bool { return n == large }, "only the held bodies")

	// A signed event is small: it is taken while the large bodies are held.
	body := event("evt_budget", "customer.updated", "", customerObject("cus_budget"))
	if code, msg := post(t, srv.URL, body, sign(body, secretOld, time.Now())); code != 200 {
		t.Fatalf("a signed event while bodies are held: %d %q, want 200", code, msg)
	}

	// Held past the ack timeout, the bodies are cut off; their bytes come
	// back.
	for _, h := range []*heldBody{first, second} {
		if code, msg := h.answer(t, 5*time.Second); code != http.StatusBadRequest || !strings.Contains(msg, "in time") {
			t.Errorf("a body held past the ack timeout: %d %q, want 400, not received in time", code, msg)
		}
	}
	waitUsed(t, bodies, func(n int64) bool { return n == 0 }, "nothing once every request has ended")

	// A client that goes away mid-body gives its bytes back too.
	gone := holdBody(t, srv.URL, 1<<20, 512<<10)
	waitUsed(t, bodies, func(n int64) bool { return n >= 512<<10 }, "the half-sent body")
	gone.conn.Close()
	waitUsed(t, bodies, func(n int64) bool { return n == 0 }, "nothing once the client went away")

	if got := value(m.WebhookRequests.WithLabelValues("stripe", metrics.OutcomeUnavailable)); got != 1 {
		t.Errorf("%v requests counted unavailable, want the one refused", got)
	}
}

// TestBodyBudgetManyClients: more large bodies than the budget holds, at
// once; each is answered (never an unbounded buffer), the budget is never
// exceeded, and it is whole again afterwards.
func TestBodyBudgetManyClients(t *testing.T) {
	f := start(t, chtest.DSN(t), 10*time.Second)
	bodies := webhook.NewBudget(4 << 20)
	srv := httptest.NewServer(webhook.Stripe(webhook.StripeOptions{
		Common:  webhook.Common{Sink: f.sink, AckTimeout: 2 * time.Second, Bodies: bodies},
		Secrets: []string{secretOld},
	}))
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	peak := make(chan int64)
	go func() {
		var most int64
		for ctx.Err() == nil {
			most = max(most, bodies.Used())
			time.Sleep(time.Millisecond)
		}
		peak <- most
	}()
	held := make([]*heldBody, 20)
	for i := range held {
		held[i] = holdBody(t, srv.URL, 1<<20, 1<<20-1)
	}
	codes := map[int]int{}
	for _, h := range held {
		code, _ := h.answer(t, 5*time.Second)
		codes[code]++
	}
	cancel()
	if p := <-peak; p > 4<<20 {
		t.Errorf("the budget of 4 MiB held %d bytes", p)
	}
	if codes[503] < 16 || codes[503]+codes[400] != len(held) {
		t.Errorf("answers %v: want a 503 for every body past the budget, 400 (cut off, unsigned) for the rest", codes)
	}
	waitUsed(t, bodies, func(n int64) bool { return n == 0 }, "nothing once every request has ended")
}

// TestStripeOutageFailsFast: while the sink knows ClickHouse is
// unreachable, a webhook is answered 503 within a second, however long the
// ack timeout; when ClickHouse is back the sink's probe finds it and 200s
// resume without waiting for the insert retries' backoff.
func TestStripeOutageFailsFast(t *testing.T) {
	if testing.Short() {
		t.Skip("stops and restarts a ClickHouse server")
	}
	ch := chtest.Private(t)
	f := start(t, ch.DSN("fastfail"), 30*time.Second)
	deliver := func(id string) (int, time.Duration) {
		body := event(id, "customer.updated", "", customerObject("cus_fast"))
		began := time.Now()
		code, _ := post(t, f.url, body, sign(body, secretOld, time.Now()))
		return code, time.Since(began)
	}
	if code, _ := deliver("evt_before"); code != 200 {
		t.Fatalf("before the outage: %d", code)
	}
	if err := ch.Stop(); err != nil {
		t.Fatal(err)
	}
	var slowest time.Duration
	for i := range 20 {
		code, took := deliver(fmt.Sprintf("evt_down_%d", i))
		if code != http.StatusServiceUnavailable || took > time.Second {
			t.Fatalf("event %d while ClickHouse is down: %d after %s, with an ack timeout of 30s; want 503 within a second",
				i, code, took.Round(time.Millisecond))
		}
		slowest = max(slowest, took)
		time.Sleep(50 * time.Millisecond)
	}
	if !f.sink.Unreachable() {
		t.Error("the sink does not know ClickHouse is unreachable")
	}
	// Long enough for the retries' backoff to have grown past the probe's
	// period.
	time.Sleep(3 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := ch.Start(ctx); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	for i := 0; ; i++ {
		code, _ := deliver(fmt.Sprintf("evt_after_%d", i))
		if code == 200 {
			break
		}
		if time.Since(back) > 5*time.Second {
			t.Fatalf("still %d 5s after ClickHouse came back", code)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("503s within %s while down; 200 again %s after ClickHouse was back", slowest, time.Since(back).Round(time.Millisecond))
	settle(t, f.sink)
	if n := count(t, f.conn, "SELECT count() FROM stripe_events FINAL WHERE id = 'evt_before'"); n != 1 {
		t.Error("the event acknowledged before the outage is missing")
	}
}

// TestNoRequestHeldPast5s: with ClickHouse slow rather than down (an insert
// into stripe_events takes 6 s), the sink cannot know it is unreachable;
// the default ack timeout still answers 503 within Orb's 5 s.
func TestNoRequestHeldPast5s(t *testing.T) {
	f := start(t, chtest.DSN(t), 0)
	for i := range 2 { // sleep() stops at 3 s a block: two views, 6 s
		if err := f.conn.Exec(context.Background(), fmt.Sprintf(
			"CREATE MATERIALIZED VIEW test_slow_events_%d ENGINE = Null AS SELECT sleep(3) AS s FROM stripe_events", i)); err != nil {
			t.Fatal(err)
		}
	}
	body := event("evt_slow", "customer.updated", "", customerObject("cus_slow"))
	began := time.Now()
	code, _ := post(t, f.url, body, sign(body, secretOld, time.Now()))
	took := time.Since(began)
	if code != http.StatusServiceUnavailable || took > 5*time.Second {
		t.Fatalf("an event whose insert takes 6 s: %d after %s; want 503 within 5 s", code, took.Round(time.Millisecond))
	}
	if took < webhook.DefaultAckTimeout {
		t.Errorf("answered after %s, before the ack timeout (%s)", took.Round(time.Millisecond), webhook.DefaultAckTimeout)
	}
	t.Logf("503 after %s", took.Round(time.Millisecond))
}
