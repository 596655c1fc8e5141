package backfill

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/stripeemu"
)

func backfill(t *testing.T, ctx context.Context, w *warehouse, src *StripeSource, o Options) (Summary, error) {
	t.Helper()
	o.Source, o.Conn, o.Sink, o.Metrics, o.Logger = src, w.conn, w.sink, w.m, testLogger(t)
	if o.ProgressMode == "" {
		o.ProgressMode = "none"
	}
	sum, err := Run(ctx, o)
	t.Logf("%v (err: %v)", sum, err)
	return sum, err
}

func mustBackfill(t *testing.T, w *warehouse, src *StripeSource, o Options) Summary {
	t.Helper()
	sum, err := backfill(t, context.Background(), w, src, o)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

func assertNoDrift(t *testing.T, w *warehouse, src *StripeSource, o VerifyOptions) {
	t.Helper()
	o.Source, o.Conn, o.Logger = src, w.conn, testLogger(t)
	rep, err := Verify(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	_, _ = rep.WriteTo(&out)
	if !rep.Clean() {
		t.Fatalf("verify found drift:\n%s", out.String())
	}
	t.Log(strings.TrimSpace(out.String()))
}

func TestBackfillThousandCustomersThroughThrottling(t *testing.T) {
	t.Parallel()
	w := newWarehouse(t, 50000)
	emu, url := newEmulator(t, stripeemu.Config{Seed: 1, Customers: 333, Accounts: []string{"", "acct_1Alpha", "acct_1Beta"},
		HeavyCustomers: []int{5000}, Rate429: 0.1})
	// A limit (not binding here) so that the 5,000 are read in time slices.
	src := newSource(t, url, w.m, 2000)
	sum := mustBackfill(t, w, src, Options{AllAccounts: true, Concurrency: 16})
	if want := len(emu.Customers()); sum.Customers != want || want < 1000 {
		t.Errorf("backfill read %d customers; the emulator has %d (want ≥ 1000)", sum.Customers, want)
	}
	if sum.Retries == 0 || emu.Requests().Throttled == 0 {
		t.Errorf("no 429 was retried (retries %d, throttled %d): the fault injection is not exercised", sum.Retries, emu.Requests().Throttled)
	}
	// Each transaction read once: the 5,000 are read in time slices at once.
	if truth := emu.Truth(); sum.Rows != int64(len(truth)) {
		t.Errorf("wrote %d rows for %d transactions", sum.Rows, len(truth))
	}
	assertMirrors(t, w.conn, emu.Truth())
	assertNoDrift(t, w, src, VerifyOptions{AllAccounts: true, Concurrency: 16})

	// The sweep finished: the next run is a new incremental sweep, one
	// list call per customer, and no rows.
	emu.SetFaults(0, 0)
	emu.ResetCounters()
	sum = mustBackfill(t, w, src, Options{AllAccounts: true, Concurrency: 16})
	if got, want := emu.Requests().ByKind[stripeemu.KindBalanceTransactions], int64(len(emu.Customers())); got != want || sum.Rows != 0 {
		t.Errorf("incremental rerun: %d list calls, %d rows; want %d calls (one per customer) and 0 rows", got, sum.Rows, want)
	}
}

func TestBackfillResumesAfterInterruption(t *testing.T) {
	t.Parallel()
	w := newWarehouse(t, 20000)
	emu, url := newEmulator(t, stripeemu.Config{Seed: 2, Customers: 400, HeavyCustomers: []int{1500}, Latency: time.Millisecond})
	// The interrupted run gets about half the requests a whole run makes
	// (455); after that its requests hang until it is cancelled, so it
	// cannot finish before the test interrupts it, however fast it is.
	stall := &stallAfter{base: http.DefaultTransport, budget: 230}
	interrupted := NewStripeSource(StripeOptions{APIKey: testKey, URL: url, Retry: fastRetry,
		Metrics: w.m, Logger: testLogger(t), HTTPClient: &http.Client{Transport: stall}})
	src := newSource(t, url, w.m, 0)

	// Interrupt the run once its checkpoints stop moving.
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		defer cancel()
		last, still := -1, 0
		for giveUp := time.Now().Add(time.Minute); ctx.Err() == nil && still < 20 && time.Now().Before(giveUp); {
			time.Sleep(20 * time.Millisecond)
			done, err := checkpointedCustomers(w)
			switch {
			case err != nil || !stall.stalled() || len(done) != last || len(done) == 0:
				// On a slow disk the first checkpoints can take a while.
				still = 0
			default:
				still++
			}
			if err == nil {
				last = len(done)
			}
		}
	}()
	if _, err := backfill(t, ctx, w, interrupted, Options{Concurrency: 8}); err == nil {
		t.Fatal("the interrupted run reported success")
	}
	// Checkpoints the run queued before it was interrupted still commit (as
	// `syncd backfill` drains its sink before it exits): count them after.
	for deadline := time.Now().Add(30 * time.Second); w.sink.Queued() > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the sink still holds %d rows 30 s after the interrupted run", w.sink.Queued())
		}
	}
	done := doneIn(t, w)
	if len(done) == 0 || len(done) >= len(emu.Customers()) {
		t.Fatalf("%d of %d customers checkpointed by the interrupted run; want some, not all", len(done), len(emu.Customers()))
	}

	emu.ResetCounters()
	sum := mustBackfill(t, w, src, Options{Concurrency: 8})
	for c := range done {
		if n := emu.CustomerListCalls("", c); n != 0 {
			t.Fatalf("customer %s, finished before the interruption, was read %d times by the rerun", c, n)
		}
	}
	if sum.Resumed != len(done) || sum.Customers+sum.Resumed != len(emu.Customers()) {
		t.Errorf("rerun: %d read + %d resumed; want %d + %d", sum.Customers, sum.Resumed, len(emu.Customers())-len(done), len(done))
	}
	assertMirrors(t, w.conn, emu.Truth())
	assertNoDrift(t, w, src, VerifyOptions{})
}

func doneIn(t *testing.T, w *warehouse) map[string]bool {
	t.Helper()
	done, err := checkpointedCustomers(w)
	if err != nil {
		t.Fatal(err)
	}
	return done
}

// checkpointedCustomers are the customers some run recorded as done.
func checkpointedCustomers(w *warehouse) (map[string]bool, error) {
	rows, err := w.conn.Query(context.Background(), `SELECT DISTINCT customer FROM backfill_customers`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			return nil, err
		}
		out[c] = true
	}
	return out, rows.Err()
}

func TestBackfillSinceReadsOnlyChangedCustomersAndFullCatchesEdits(t *testing.T) {
	t.Parallel()
	w := newWarehouse(t, 20000)
	emu, url := newEmulator(t, stripeemu.Config{Seed: 3, Customers: 100, Accounts: []string{"", "acct_1Conn"}})
	src := newSource(t, url, w.m, 0)
	mustBackfill(t, w, src, Options{AllAccounts: true})

	// Mutate 20 customers; one gets 250 new transactions, so the
	// incremental read walks forward over several pages.
	changed := map[[2]string]bool{}
	for i, c := range emu.Customers()[:20] {
		n := 1
		if i == 0 {
			n = 250
		}
		for range n {
			if _, err := emu.RandomTransaction(c.Account, c.ID); err != nil {
				t.Fatal(err)
			}
		}
		changed[[2]string{c.Account, c.ID}] = true
	}
	emu.ResetCounters()
	sum := mustBackfill(t, w, src, Options{AllAccounts: true, Since: time.Now().Add(-10 * time.Minute)})
	if sum.Mode != "since" || sum.Customers != 20 {
		t.Errorf("--since: mode %s, %d customers read; want since, 20", sum.Mode, sum.Customers)
	}
	for _, c := range emu.Customers() {
		n := emu.CustomerListCalls(c.Account, c.ID)
		if changed[[2]string{c.Account, c.ID}] != (n > 0) {
			t.Errorf("--since: customer %s (changed: %v) was listed %d times", c.ID, changed[[2]string{c.Account, c.ID}], n)
		}
	}
	if emu.Requests().ByKind[stripeemu.KindCustomers] != 0 {
		t.Error("--since enumerated every customer")
	}
	assertMirrors(t, w.conn, emu.Truth())
	assertNoDrift(t, w, src, VerifyOptions{AllAccounts: true})

	// An edited description announces nothing: an incremental sweep keeps
	// the old text, verify reports it, --full fixes it.
	var edited stripeemu.Txn
	for _, tx := range emu.Truth() {
		if tx.Account == "acct_1Conn" {
			edited = tx
			break
		}
	}
	if _, err := emu.EditDescription(edited.Account, edited.Customer, edited.ID, "edited quietly"); err != nil {
		t.Fatal(err)
	}
	mustBackfill(t, w, src, Options{AllAccounts: true})
	rep, err := Verify(context.Background(), VerifyOptions{Source: src, Conn: w.conn, AllAccounts: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Drifts) != 1 || fmt.Sprint(rep.Drifts[0].Mismatched) != fmt.Sprintf("[%s (description)]", edited.ID) {
		t.Fatalf("verify after a silent edit: %+v; want one transaction %s mismatched in its description", rep.Drifts, edited.ID)
	}
	mustBackfill(t, w, src, Options{AllAccounts: true, Full: true})
	assertMirrors(t, w.conn, emu.Truth())
	assertNoDrift(t, w, src, VerifyOptions{AllAccounts: true})
}

func TestBackfillFailsWhenRequestsKeepFailing(t *testing.T) {
	t.Parallel()
	w := newWarehouse(t, 1000)
	_, url := newEmulator(t, stripeemu.Config{Seed: 4, Customers: 5, Rate500: 1})
	sum, err := backfill(t, context.Background(), w, newSource(t, url, w.m, 0), Options{})
	if err == nil {
		t.Fatal("a backfill whose every request failed reported success")
	}
	if msg := err.Error(); !strings.Contains(msg, "HTTP 500 after 8 attempts") || !strings.Contains(msg, "/v1/customers") {
		t.Errorf("error %q does not say what failed and how often", msg)
	}
	if sum.Customers != 0 || sum.Requests != 8 || sum.Retries != 7 {
		t.Errorf("summary %+v; want 0 customers, 8 requests, 7 retries", sum)
	}
}

func TestEventsWindowFallsBackToSweep(t *testing.T) {
	t.Parallel()
	w := newWarehouse(t, 1000)
	emu, url := newEmulator(t, stripeemu.Config{Seed: 5, Customers: 12})
	var out bytes.Buffer
	sum := mustBackfill(t, w, newSource(t, url, w.m, 0), Options{Since: time.Now().Add(-31 * 24 * time.Hour), Progress: &out, ProgressMode: "log"})
	if sum.Mode != "incremental" || sum.Customers != 12 || !strings.Contains(out.String(), "beyond the 30-day Events window") {
		t.Errorf("--since 31 days ago: mode %s, %d customers, output %q; want a said fallback to a sweep of 12", sum.Mode, sum.Customers, out.String())
	}
	if emu.Requests().ByKind[stripeemu.KindEvents] != 0 {
		t.Error("events were listed beyond the 30-day window")
	}
}

// stallAfter passes budget requests through, then holds every further one
// until its context ends.
type stallAfter struct {
	base   http.RoundTripper
	budget int64
	n      atomic.Int64
}

func (s *stallAfter) RoundTrip(req *http.Request) (*http.Response, error) {
	if s.n.Add(1) > s.budget {
		<-req.Context().Done()
		return nil, req.Context().Err()
	}
	return s.base.RoundTrip(req)
}

func (s *stallAfter) stalled() bool { return s.n.Load() > s.budget }
