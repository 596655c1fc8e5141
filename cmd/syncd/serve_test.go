package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/syncd/syncd/internal/chtest"
	"github.com/syncd/syncd/internal/stripeemu"
)

// contractMetrics is CONTRACT.md's metric list with its documented labels.
var contractMetrics = []struct {
	name   string
	typ    dto.MetricType
	labels []string
}{
	{"syncd_webhook_requests_total", dto.MetricType_COUNTER, []string{"provider", "outcome"}},
	{"syncd_webhook_ack_seconds", dto.MetricType_HISTOGRAM, nil},
	{"syncd_events_total", dto.MetricType_COUNTER, []string{"provider", "type"}},
	{"syncd_sink_rows_total", dto.MetricType_COUNTER, []string{"table"}},
	{"syncd_sink_flush_seconds", dto.MetricType_HISTOGRAM, nil},
	{"syncd_sink_queue_rows", dto.MetricType_GAUGE, nil},
	{"syncd_sink_errors_total", dto.MetricType_COUNTER, nil},
	{"syncd_source_requests_total", dto.MetricType_COUNTER, []string{"provider", "endpoint", "code"}},
	{"syncd_source_request_seconds", dto.MetricType_HISTOGRAM, nil},
	{"syncd_refresh_queue_depth", dto.MetricType_GAUGE, nil},
	{"syncd_backfill_customers_total", dto.MetricType_COUNTER, []string{"provider"}},
	{"syncd_sync_lag_seconds", dto.MetricType_GAUGE, []string{"provider"}},
}

// TestServeExportsEveryContractMetricFromStartUp scrapes /metrics before
// ClickHouse was ever reached: every series a dashboard uses is there.
func TestServeExportsEveryContractMetricFromStartUp(t *testing.T) {
	in := serveInProcess(t, serveArgs("clickhouse://127.0.0.1:1/nowhere",
		"--stripe-api-key", testAPIKey, "--stripe-webhook-secret", testSecret))
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(strings.NewReader(scrape(t, in.admin)))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range contractMetrics {
		f := families[want.name]
		if f == nil {
			t.Errorf("%s is missing", want.name)
			continue
		}
		if f.GetType() != want.typ {
			t.Errorf("%s is a %v, want %v", want.name, f.GetType(), want.typ)
		}
		if len(f.GetMetric()) == 0 {
			t.Errorf("%s has no series", want.name)
			continue
		}
		for _, m := range f.GetMetric() {
			var names []string
			for _, l := range m.GetLabel() {
				names = append(names, l.GetName())
			}
			for _, l := range want.labels {
				if !slices.Contains(names, l) {
					t.Errorf("%s series %v lacks label %q", want.name, names, l)
				}
			}
		}
	}
	// The labelled series a dashboard selects exist before any traffic.
	text := scrape(t, in.admin)
	for _, series := range []string{
		`syncd_webhook_requests_total{outcome="unavailable",provider="stripe"} 0`,
		`syncd_webhook_requests_total{outcome="ok",provider="orb"} 0`,
		`syncd_events_total{provider="stripe",type="customer.updated"} 0`,
		`syncd_sink_rows_total{table="stripe_events"} 0`,
		`syncd_source_requests_total{code="429",endpoint="balance_transactions",provider="stripe"} 0`,
		`syncd_sync_lag_seconds{provider="stripe"} 0`,
	} {
		if !strings.Contains(text, series) {
			t.Errorf("/metrics lacks %s", series)
		}
	}
	// ClickHouse is unreachable: alive, not ready, and webhooks are refused.
	if code := getStatus(in.admin + "/readyz"); code != 503 {
		t.Errorf("/readyz = %d without ClickHouse, want 503", code)
	}
	if code := deliver(http.DefaultClient, in.web, []byte(`{"id":"evt_1","type":"customer.updated","created":1,"data":{"object":{"object":"customer","id":"cus_1"}}}`)); code != 503 {
		t.Errorf("webhook answered %d without ClickHouse, want 503", code)
	}
	if code := getStatus(in.admin + "/debug/pprof/"); code != 404 {
		t.Errorf("/debug/pprof/ = %d on the admin port without --pprof, want 404", code)
	}
	if code := getStatus(in.web + "/debug/pprof/"); code != 404 {
		t.Errorf("/debug/pprof/ = %d on the webhook port, want 404", code)
	}
	if code := getStatus(in.web + "/metrics"); code != 404 {
		t.Errorf("/metrics = %d on the webhook port, want 404", code)
	}
}

// TestServeReadiness follows /readyz through a ClickHouse that is down at
// start, comes up with an old schema, is migrated, goes away and returns.
func TestServeReadiness(t *testing.T) {
	if testing.Short() {
		t.Skip("stops and starts a ClickHouse server")
	}
	ch := chtest.Private(t)
	if err := ch.Stop(); err != nil {
		t.Fatal(err)
	}
	dsn := ch.DSN("default")
	in := serveInProcess(t, serveArgs(dsn, "--stripe-api-key", testAPIKey, "--stripe-webhook-secret", testSecret))
	if code := getStatus(in.admin + "/readyz"); code != 503 {
		t.Errorf("/readyz = %d while ClickHouse is down at start, want 503", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := ch.Start(ctx); err != nil {
		t.Fatal(err)
	}
	in.logs.find(t, "clickhouse reachable", 30*time.Second)
	time.Sleep(1500 * time.Millisecond) // past the readiness cache
	if code := getStatus(in.admin + "/readyz"); code != 503 {
		t.Errorf("/readyz = %d before migrations, want 503", code)
	}
	if err := run(ctx, []string{"migrate", "--clickhouse-dsn", dsn}, func(string) string { return "" }, &strings.Builder{}, &strings.Builder{}); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, in.admin+"/readyz", 200, 10*time.Second)
	if err := ch.Stop(); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, in.admin+"/readyz", 503, 10*time.Second)
	if err := ch.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, in.admin+"/readyz", 200, 30*time.Second)
	if code := getStatus(in.admin + "/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
}

// TestServeConvergesUnderDuplicatesAndReordering delivers the events of
// changing customers three times each, shuffled: the mirror ends equal to
// the emulator's truth.
func TestServeConvergesUnderDuplicatesAndReordering(t *testing.T) {
	eachFormat(t, testServeConvergesUnderDuplicatesAndReordering)
}

func testServeConvergesUnderDuplicatesAndReordering(t *testing.T, format func([]stripeemu.Event) []stripeemu.Event) {
	dsn, conn := migrated(t)
	emu, api := emulator(t, stripeemu.Config{Seed: 7, Customers: 6, Accounts: []string{"", "acct_conv"}}, nil)
	in := serveInProcess(t, serveArgs(dsn, "--stripe-api-key", testAPIKey, "--stripe-api-url", api,
		"--stripe-webhook-secret", testSecret, "--rate-limit", "500", "--endpoint-rate-limit", "500", "--stripe-accounts", "all"))
	in.ready(t)

	customers := emu.Customers()
	rng := rand.New(rand.NewPCG(1, 2))
	send := func(evs []stripeemu.Event) {
		var all []stripeemu.Event
		for range 3 {
			all = append(all, format(evs)...)
		}
		rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
		var wg sync.WaitGroup
		ch := make(chan stripeemu.Event)
		for range 8 {
			wg.Go(func() {
				for ev := range ch {
					if code := deliver(http.DefaultClient, in.web, ev.Raw); code != 200 {
						t.Errorf("%s %s: %d", ev.Type, ev.ID, code)
					}
				}
			})
		}
		for _, ev := range all {
			ch <- ev
		}
		close(ch)
		wg.Wait()
	}
	send(mutate(t, emu, customers, -250))
	// A second wave for half the customers while the first is refreshing:
	// incremental reads pick up where the first stopped.
	send(mutate(t, emu, customers[:len(customers)/2], 4000))

	want := truthRows(emu.Truth())
	deadline := time.Now().Add(60 * time.Second)
	for {
		d := diff(mirror(t, conn, ""), want)
		if d == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("mirror differs from the emulator after 60s:\n%s", d)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Stays equal: nothing late overwrites it.
	time.Sleep(time.Second)
	if d := diff(mirror(t, conn, ""), want); d != "" {
		t.Fatalf("mirror drifted:\n%s", d)
	}
	t.Logf("%d customers, %d transactions, %d list calls", len(customers), len(want), emu.Requests().ByKind[stripeemu.KindBalanceTransactions])
}

// TestServeConnectEventRefreshesThroughStripeAccount: an event from a
// connected account that --stripe-accounts names is refreshed with
// Stripe-Account set to that account (TestServeRefreshesOnlyStripeAccounts:
// and one it does not name is not).
func TestServeConnectEventRefreshesThroughStripeAccount(t *testing.T) {
	eachFormat(t, testServeConnectEventRefreshesThroughStripeAccount)
}

func testServeConnectEventRefreshesThroughStripeAccount(t *testing.T, format func([]stripeemu.Event) []stripeemu.Event) {
	dsn, conn := migrated(t)
	var (
		mu      sync.Mutex
		headers []string
	)
	emu, api := emulator(t, stripeemu.Config{Seed: 3, Customers: 2, Accounts: []string{"", "acct_connected"}},
		func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.HasSuffix(r.URL.Path, "/balance_transactions") {
					mu.Lock()
					headers = append(headers, r.Header.Get("Stripe-Account"))
					mu.Unlock()
				}
				h.ServeHTTP(w, r)
			})
		})
	in := serveInProcess(t, serveArgs(dsn, "--stripe-api-key", testAPIKey, "--stripe-api-url", api,
		"--stripe-webhook-secret", testSecret, "--stripe-accounts", "acct_connected"))
	in.ready(t)

	var target stripeemu.Customer
	for _, c := range emu.Customers() {
		if c.Account == "acct_connected" {
			target = c
			break
		}
	}
	evs := format(mutate(t, emu, []stripeemu.Customer{target}, 1234))
	for _, ev := range evs {
		if !strings.Contains(string(ev.Raw), `"account":"acct_connected"`) && !strings.Contains(string(ev.Raw), `"context":"acct_connected"`) {
			t.Fatalf("emulator event lacks the account: %s", ev.Raw)
		}
		if code := deliver(http.DefaultClient, in.web, ev.Raw); code != 200 {
			t.Fatalf("%s: %d", ev.ID, code)
		}
	}
	want := truthRows(emu.TruthFor(target.Account, target.ID))
	where := fmt.Sprintf("WHERE customer = '%s'", target.ID)
	deadline := time.Now().Add(30 * time.Second)
	for diff(mirror(t, conn, where), want) != "" {
		if time.Now().After(deadline) {
			t.Fatalf("connected customer not refreshed:\n%s", diff(mirror(t, conn, where), want))
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, r := range mirror(t, conn, where) {
		if r.Account != "acct_connected" {
			t.Errorf("row %s has account_id %q", r.ID, r.Account)
		}
	}
	// The refresh's rows name the event that triggered it (the newest of
	// those delivered, when they coalesced).
	var delivered []string
	for _, ev := range evs {
		delivered = append(delivered, ev.ID)
	}
	rows, err := conn.Query(context.Background(), "SELECT id, _source, ifNull(_event_id, '') FROM stripe_customer_balance_transactions FINAL "+where)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id, source, eventID string
		if err := rows.Scan(&id, &source, &eventID); err != nil {
			t.Fatal(err)
		}
		if source != "refresh" || !slices.Contains(delivered, eventID) {
			t.Errorf("row %s: _source %q, _event_id %q; want refresh and one of %v", id, source, eventID, delivered)
		}
	}
	rows.Close()
	mu.Lock()
	defer mu.Unlock()
	if len(headers) == 0 {
		t.Fatal("no balance transaction list call")
	}
	for _, h := range headers {
		if h != "acct_connected" {
			t.Errorf("list call with Stripe-Account %q, want acct_connected", h)
		}
	}
}

// sent is one webhook delivery and its answer.
type sent struct {
	ev   stripeemu.Event
	code int
}

// stream delivers evs one after another at rate per second, to whichever
// address target returns at the time; acked, when set, is told of each 200.
func stream(evs []stripeemu.Event, rate int, target func() string, acked func()) []sent {
	client := &http.Client{Timeout: 15 * time.Second}
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	out := make([]sent, len(evs))
	var wg sync.WaitGroup
	for i, ev := range evs {
		<-tick.C
		wg.Go(func() {
			out[i] = sent{ev, deliver(client, target(), ev.Raw)}
			if out[i].code == 200 && acked != nil {
				acked()
			}
		})
	}
	wg.Wait()
	return out
}

// acknowledged checks that every event answered 200 is in stripe_events and
// that the customer it named reached the emulator's truth: its refresh ran.
func acknowledged(t *testing.T, emu *stripeemu.Emulator, conn driver.Conn, results []sent) (customers map[[2]string]bool) {
	t.Helper()
	customers = map[[2]string]bool{}
	var ids []string
	for _, s := range results {
		if s.code == 200 {
			ids = append(ids, s.ev.ID)
			customers[[2]string{s.ev.Account, s.ev.Customer}] = true
		}
	}
	stored := eventIDs(t, conn)
	for _, id := range ids {
		if !stored[id] {
			t.Errorf("%s was answered 200 but is not in stripe_events", id)
		}
	}
	deadline := time.Now().Add(90 * time.Second)
	for k := range customers {
		want := truthRows(emu.TruthFor(k[0], k[1]))
		where := fmt.Sprintf("WHERE account_id = '%s' AND customer = '%s'", k[0], k[1])
		for {
			d := diff(mirror(t, conn, where), want)
			if d == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("refresh owed to %v never happened:\n%s", k, d)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if emu.CustomerListCalls(k[0], k[1]) == 0 {
			t.Errorf("%v: no list call reached the emulator", k)
		}
	}
	return customers
}

// TestServeKill9LosesNothingAcknowledged runs the real binary, kills it
// with SIGKILL while events stream in and refreshes are queued, restarts
// it, and finds every acknowledged event stored and every refresh it
// triggered done.
func TestServeKill9LosesNothingAcknowledged(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills the syncd binary")
	}
	eachFormat(t, func(t *testing.T, format func([]stripeemu.Event) []stripeemu.Event) {
		testServeKill9LosesNothingAcknowledged(t, func(emu *stripeemu.Emulator) []stripeemu.Event {
			return format(mutate(t, emu, emu.Customers(), -99))
		})
	})
	// Thin events about invoices, credit notes and checkout sessions name
	// no customer: the refresh they owe goes through reading the object,
	// which the kill interrupts. customer.updated is held back, so nothing
	// else marks the customers.
	t.Run("thin related objects", func(t *testing.T) {
		testServeKill9LosesNothingAcknowledged(t, func(emu *stripeemu.Emulator) []stripeemu.Event {
			types := []string{"applied_to_invoice", "credit_note", "checkout_session_subscription_payment"}
			var out []stripeemu.Event
			for i, c := range emu.Customers() {
				for _, ev := range mutateWith(t, emu, []stripeemu.Customer{c}, -99, types[i%len(types)]) {
					if ev.Type != "customer.updated" {
						out = append(out, ev.AsThin())
					}
				}
			}
			return out
		})
	})
}

func testServeKill9LosesNothingAcknowledged(t *testing.T, events func(*stripeemu.Emulator) []stripeemu.Event) {
	bin := buildSyncd(t)
	dsn, conn := migrated(t)
	emu, api := emulator(t, stripeemu.Config{Seed: 11, Customers: 40, Latency: 20 * time.Millisecond}, nil)
	// A low rate limit keeps refreshes queued behind the acknowledgements,
	// so the kill lands while refreshes are owed.
	args := serveArgs(dsn, "--stripe-api-key", testAPIKey, "--stripe-api-url", api,
		"--stripe-webhook-secret", testSecret, "--rate-limit", "8")
	evs := events(emu)
	emu.ResetCounters()

	p := startProcess(t, bin, args)
	var mu sync.Mutex
	addr := p.web
	target := func() string { mu.Lock(); defer mu.Unlock(); return addr }

	// SIGKILL once a fifth of the events are acknowledged: mid-stream.
	kill, killed := killAt(p, len(evs)/5, nil)
	first := stream(evs, 50, target, kill)
	<-killed

	var owedAtKill int
	for _, s := range first {
		if s.code == 200 && emu.CustomerListCalls(s.ev.Account, s.ev.Customer) == 0 {
			owedAtKill++
		}
	}
	// Restart; Stripe retries what was not acknowledged, once it is ready
	// (before that, 503 is the right answer).
	p2 := startProcess(t, bin, args)
	p2.ready(t)
	mu.Lock()
	addr = p2.web
	mu.Unlock()
	var retry []stripeemu.Event
	for _, s := range first {
		if s.code != 200 {
			retry = append(retry, s.ev)
		}
	}
	second := stream(retry, 100, target, nil)
	for _, s := range second {
		if s.code != 200 {
			t.Errorf("retry of %s after restart: %d", s.ev.ID, s.code)
		}
	}
	acked := 0
	for _, s := range first {
		if s.code == 200 {
			acked++
		}
	}
	if acked == 0 || acked == len(first) {
		t.Fatalf("%d of %d acknowledged before the kill: the kill was not mid-stream", acked, len(first))
	}
	customers := acknowledged(t, emu, conn, append(first, second...))
	t.Logf("%d events: %d acknowledged before SIGKILL (%d customers still owed a refresh), %d retried after restart; %d customers converged",
		len(evs), acked, owedAtKill, len(retry), len(customers))
	if owedAtKill == 0 {
		t.Log("note: every refresh had started before the kill; recovery was not exercised this run")
	}
}

// TestServeSIGTERMDrains sends SIGTERM to the binary under load: it exits 0
// and every acknowledged event and its refresh are in ClickHouse.
func TestServeSIGTERMDrains(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the syncd binary")
	}
	bin := buildSyncd(t)
	dsn, conn := migrated(t)
	emu, api := emulator(t, stripeemu.Config{Seed: 5, Customers: 30}, nil)
	p := startProcess(t, bin, serveArgs(dsn, "--stripe-api-key", testAPIKey, "--stripe-api-url", api,
		"--stripe-webhook-secret", testSecret, "--shutdown-timeout", "20s"))
	p.ready(t) // before it, 503 is the right answer
	evs := mutate(t, emu, emu.Customers(), 77)

	// SIGTERM once a fifth of the events are acknowledged: mid-stream.
	results := stream(evs, 100, func() string { return p.web }, p.signalAfter(len(evs)/5, syscall.SIGTERM))
	p.exitedCleanly(t)
	p.logs.find(t, "drained; bye", time.Second)
	for _, s := range results {
		if s.code != 200 && s.code != 0 {
			t.Errorf("%s answered %d during the drain", s.ev.ID, s.code)
		}
	}
	stored := eventIDs(t, conn)
	acked := 0
	for _, s := range results {
		if s.code == 200 {
			acked++
			if !stored[s.ev.ID] {
				t.Errorf("%s acknowledged but not stored", s.ev.ID)
			}
		}
	}
	if acked == 0 || acked == len(results) {
		t.Errorf("%d of %d acknowledged: SIGTERM did not land mid-stream", acked, len(results))
	}
	t.Logf("%d of %d events acknowledged before SIGTERM stopped the listener", acked, len(results))
}
