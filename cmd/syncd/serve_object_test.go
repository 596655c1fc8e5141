package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/syncd/syncd/internal/orbsig"
)

const testOrbSecret = "whsec_orb_serve_test"

// objectEvent is one signed object event: Stripe's customer_balance_transaction
// or Orb's customer.balance_transaction_created.
type objectEvent struct {
	orb       bool
	id, txnID string
	body      []byte
}

func objectEvents(run string, n int) []objectEvent {
	now := time.Now().UTC()
	out := make([]objectEvent, 0, 2*n)
	for i := range n {
		sid, stx := fmt.Sprintf("evt_%s_%d", run, i), fmt.Sprintf("cbtxn_%s_%d", run, i)
		out = append(out, objectEvent{id: sid, txnID: stx, body: fmt.Appendf(nil,
			`{"id":%q,"object":"event","account":null,"api_version":"2025-08-27.basil","created":%d,`+
				`"data":{"object":{"id":%q,"object":"customer_balance_transaction","amount":-%d,"checkout_session":null,`+
				`"created":%d,"credit_note":null,"currency":"usd","customer":"cus_k%d","customer_account":null,"description":null,`+
				`"ending_balance":-%d,"invoice":null,"livemode":false,"metadata":{},"type":"adjustment"}},`+
				`"livemode":false,"type":"customer_balance_transaction.created"}`, sid, now.Unix(), stx, i+1, now.Unix(), i%7, i+1)})
		oid, otx := fmt.Sprintf("oevt_%s_%d", run, i), fmt.Sprintf("otxn_%s_%d", run, i)
		out = append(out, objectEvent{orb: true, id: oid, txnID: otx, body: fmt.Appendf(nil,
			`{"id":%q,"created_at":%q,"type":"customer.balance_transaction_created",`+
				`"customer":{"id":"ocus_k%d","external_customer_id":null,"currency":"USD"},`+
				`"properties":{"balance_transaction":{"id":%q,"action":"manual_adjustment","amount":"%d.50",`+
				`"created_at":%q,"credit_note":null,"description":null,"ending_balance":"0","invoice":null,`+
				`"starting_balance":"0","type":"increment"}}}`, oid, now.Format(time.RFC3339), i%7, otx, i, now.Format(time.RFC3339))})
	}
	return out
}

// deliverObject signs ev as its provider would and POSTs it; 0 when no
// answer came.
func deliverObject(client *http.Client, base string, ev objectEvent) int {
	if !ev.orb {
		return deliver(client, base, ev.body)
	}
	req, err := http.NewRequest(http.MethodPost, base+"/webhooks/orb", bytes.NewReader(ev.body))
	if err != nil {
		return 0
	}
	stamp, sig := orbsig.Sign(ev.body, testOrbSecret, time.Now())
	req.Header.Set(orbsig.TimestampHeader, stamp)
	req.Header.Set(orbsig.SignatureHeader, sig)
	resp, err := client.Do(req)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// objectSent is one delivery and its answer.
type objectSent struct {
	ev   objectEvent
	code int
}

// streamObjects delivers evs at rate per second, each in its own goroutine
// (a provider delivers concurrently), to whichever address target returns.
func streamObjects(evs []objectEvent, rate int, target func() string, acked func()) []objectSent {
	client := &http.Client{Timeout: 15 * time.Second}
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	out := make([]objectSent, len(evs))
	var wg sync.WaitGroup
	for i, ev := range evs {
		<-tick.C
		wg.Go(func() {
			out[i] = objectSent{ev, deliverObject(client, target(), ev)}
			if out[i].code == 200 && acked != nil {
				acked()
			}
		})
	}
	wg.Wait()
	return out
}

// all decodes every log line whose msg is msg so far.
func (l *logs) all(msg string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range l.lines {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// ids returns the distinct values of column id in table.
func ids(t testing.TB, conn driver.Conn, table string) map[string]bool {
	t.Helper()
	rows, err := conn.Query(context.Background(), "SELECT DISTINCT id FROM "+table)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		out[id] = true
	}
	return out
}

// missing counts the acknowledged events of results whose intake row or
// transaction row is not in ClickHouse.
func missing(t testing.TB, conn driver.Conn, results []objectSent) (intake, txn int, example string) {
	t.Helper()
	se, oe := ids(t, conn, "stripe_events"), ids(t, conn, "orb_events")
	st, ot := ids(t, conn, "stripe_customer_balance_transactions"), ids(t, conn, "orb_customer_balance_transactions")
	for _, s := range results {
		if s.code != 200 {
			continue
		}
		events, txns := se, st
		if s.ev.orb {
			events, txns = oe, ot
		}
		if !events[s.ev.id] {
			intake++
			example = s.ev.id + " (intake row)"
		}
		if !txns[s.ev.txnID] {
			txn++
			if example == "" {
				example = s.ev.txnID + " (transaction row)"
			}
		}
	}
	return intake, txn, example
}

// slowTransactionInserts makes every insert into the transaction tables
// take 1.5 s longer (a materialized view that sleeps once per inserted
// block), as on a slow disk: transaction rows then queue behind their
// intake rows, which is what a crash or a drain must not lose.
func slowTransactionInserts(t *testing.T, conn driver.Conn) {
	t.Helper()
	for _, table := range []string{"stripe_customer_balance_transactions", "orb_customer_balance_transactions"} {
		if err := conn.Exec(context.Background(), fmt.Sprintf(
			"CREATE MATERIALIZED VIEW test_slow_%s ENGINE = Null AS SELECT sleep(1.5) AS s FROM %s", table, table)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestServeKill9KeepsObjectEvents runs the real binary, streams Stripe and
// Orb object events, kills it with SIGKILL mid-stream, and restarts it.
// Every event answered 200 has its intake row at once, and, as soon as the
// restarted process is ready (it replays the intake log first), its
// transaction row too, including those the kill caught queued.
func TestServeKill9KeepsObjectEvents(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills the syncd binary")
	}
	bin := buildSyncd(t)
	dsn, conn := migrated(t)
	slowTransactionInserts(t, conn)
	args := serveArgs(dsn, "--stripe-api-key", testAPIKey, "--stripe-api-url", "http://127.0.0.1:1",
		"--stripe-webhook-secret", testSecret, "--orb-webhook-secret", testOrbSecret)

	var mu sync.Mutex
	p := startProcess(t, bin, args)
	p.ready(t)
	addr := p.web
	target := func() string { mu.Lock(); defer mu.Unlock(); return addr }

	evs := objectEvents("k9", 600) // 1,200 deliveries, half Stripe, half Orb
	var once sync.Once
	acks, killed := 0, make(chan struct{})
	first := streamObjects(evs, 600, target, func() {
		mu.Lock()
		acks++
		n := acks
		mu.Unlock()
		if n == len(evs)/3 {
			once.Do(func() {
				_ = p.cmd.Process.Signal(syscall.SIGKILL)
				<-p.done
				close(killed)
			})
		}
	})
	<-killed
	acked := 0
	for _, s := range first {
		if s.code == 200 {
			acked++
		}
	}
	if acked == 0 || acked == len(first) {
		t.Fatalf("%d of %d acknowledged before the kill: the kill was not mid-stream", acked, len(first))
	}
	lostIntake, lostTxn, example := missing(t, conn, first)
	if lostIntake > 0 {
		t.Errorf("%d acknowledged events have no intake row after SIGKILL, e.g. %s", lostIntake, example)
	}
	if lostTxn == 0 {
		t.Errorf("every transaction row had committed before the kill: recovery is not exercised")
	}

	p2 := startProcess(t, bin, args)
	p2.ready(t)
	if i, x, example := missing(t, conn, first); i > 0 || x > 0 {
		t.Errorf("restarted process is ready, yet %d intake and %d transaction rows of acknowledged events are missing, e.g. %s", i, x, example)
	}
	replayed := map[string]int{}
	for _, m := range p2.logs.all("transaction rows replayed from the intake log") {
		replayed[m["provider"].(string)] += int(m["rows"].(float64))
	}
	if len(replayed) != 2 {
		t.Errorf("replay log lines by provider: %v, want stripe and orb", replayed)
	}
	if replayed["stripe"]+replayed["orb"] < lostTxn {
		t.Errorf("restart replayed %v rows; %d were missing after the kill", replayed, lostTxn)
	}

	// The provider retries what was not acknowledged.
	mu.Lock()
	addr = p2.web
	mu.Unlock()
	var retry []objectEvent
	for _, s := range first {
		if s.code != 200 {
			retry = append(retry, s.ev)
		}
	}
	second := streamObjects(retry, 300, target, nil)
	for _, s := range second {
		if s.code != 200 {
			t.Errorf("retry of %s after restart: %d", s.ev.id, s.code)
		}
	}
	for deadline := time.Now().Add(20 * time.Second); ; {
		i, x, example := missing(t, conn, append(first, second...))
		if i == 0 && x == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("20s after the retries, %d intake and %d transaction rows of acknowledged events are missing, e.g. %s", i, x, example)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%d deliveries: %d acknowledged before SIGKILL, of which %d had no transaction row yet (the kill caught them queued); "+
		"restart replayed %v rows from the intake log; %d retried after restart",
		len(evs), acked, lostTxn, replayed, len(retry))
}

// TestServeSIGTERMDrainsObjectEvents: SIGTERM mid-stream of object events
// over slow transaction inserts; the process exits 0 and, with no restart,
// every acknowledged event has its intake row and its transaction row.
func TestServeSIGTERMDrainsObjectEvents(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the syncd binary")
	}
	bin := buildSyncd(t)
	dsn, conn := migrated(t)
	slowTransactionInserts(t, conn)
	p := startProcess(t, bin, serveArgs(dsn, "--stripe-api-key", testAPIKey, "--stripe-api-url", "http://127.0.0.1:1",
		"--stripe-webhook-secret", testSecret, "--orb-webhook-secret", testOrbSecret, "--shutdown-timeout", "20s"))
	p.ready(t)
	evs := objectEvents("term", 300)
	results := streamObjects(evs, 600, func() string { return p.web }, p.signalAfter(len(evs)/3, syscall.SIGTERM))
	p.exitedCleanly(t)
	acked := 0
	for _, s := range results {
		if s.code == 200 {
			acked++
		} else if s.code != 0 && s.code != 503 {
			t.Errorf("%s answered %d during the drain", s.ev.id, s.code)
		}
	}
	if acked == 0 || acked == len(results) {
		t.Errorf("%d of %d acknowledged: SIGTERM did not land mid-stream", acked, len(results))
	}
	if i, x, example := missing(t, conn, results); i > 0 || x > 0 {
		t.Errorf("after a clean drain, %d intake and %d transaction rows of acknowledged events are missing, e.g. %s", i, x, example)
	}
	t.Logf("%d of %d deliveries acknowledged before SIGTERM; all their rows committed by the drain", acked, len(results))
}
