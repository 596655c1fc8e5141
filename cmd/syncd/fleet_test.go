package main

import (
	"fmt"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/stripeemu"
)

// requestLog records when each request reached the emulator.
type requestLog struct {
	mu    sync.Mutex
	times []time.Time
}

func (l *requestLog) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l.mu.Lock()
		l.times = append(l.times, time.Now())
		l.mu.Unlock()
		h.ServeHTTP(w, r)
	})
}

// busiest is the most requests in any window of length d.
func (l *requestLog) busiest(d time.Duration) int {
	l.mu.Lock()
	ts := slices.Clone(l.times)
	l.mu.Unlock()
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	best, j := 0, 0
	for i := range ts {
		for ts[i].Sub(ts[j]) >= d {
			j++
		}
		best = max(best, i-j+1)
	}
	return best
}

// TestFleetLosesNothingWhenReplicasGo runs three `syncd serve` processes on
// one database under signed Stripe object, Orb and trigger events, SIGKILLs
// one for good mid-stream, then drains another with a shutdown timeout its
// slow ClickHouse inserts cannot meet (rows left queued), and leaves the
// third alone: within 60 s every acknowledged event has its transaction
// row and every refresh it owed is done, by the survivor; and the three
// together never exceeded the Stripe rate limit they share.
func TestFleetLosesNothingWhenReplicasGo(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three syncd processes")
	}
	bin := buildSyncd(t)
	dsn, conn := migrated(t)
	// Transaction rows queue behind their intake rows, as on a slow disk:
	// what a SIGKILL or a cut-short drain loses.
	slowTransactionInserts(t, conn)
	const limit = 15
	reqs := &requestLog{}
	emu, api := emulator(t, stripeemu.Config{Seed: 17, Customers: 90, Latency: 20 * time.Millisecond}, reqs.wrap)
	args := serveArgs(dsn, "--stripe-api-key", testAPIKey, "--stripe-api-url", api,
		"--stripe-webhook-secret", testSecret, "--orb-webhook-secret", testOrbSecret,
		"--rate-limit", fmt.Sprint(limit), "--shutdown-timeout", "1s")
	triggers := mutate(t, emu, emu.Customers(), -77)
	objects := objectEvents("fleet", 40)
	emu.ResetCounters()

	procs := startFleet(t, bin, args, 3)

	// Deliveries go round robin to the processes still up; one that is
	// gone is skipped, as a load balancer does.
	var (
		mu   sync.Mutex
		down = map[int]bool{}
		next int
	)
	target := func() string {
		mu.Lock()
		defer mu.Unlock()
		for {
			next++
			if i := next % len(procs); !down[i] {
				return procs[i].web
			}
		}
	}
	gone := func(i int) {
		mu.Lock()
		down[i] = true
		mu.Unlock()
	}
	// Process 0 is SIGKILLed once a third of the object events are
	// acknowledged, and never comes back.
	kill, _ := killAt(procs[0], len(objects)/3, func() { gone(0) })
	var (
		objSent  []objectSent
		trigSent []sent
		wg       sync.WaitGroup
	)
	wg.Go(func() { objSent = streamObjects(objects, 40, target, kill) })
	wg.Go(func() { trigSent = stream(triggers, 40, target, nil) })
	wg.Wait()
	<-procs[0].done

	// Process 1 drains but cannot finish: its slow inserts outlast the
	// 1 s shutdown timeout, so rows it acknowledged stay queued.
	gone(1)
	_ = procs[1].cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-procs[1].done:
	case <-time.After(30 * time.Second):
		t.Fatal("process 1 did not exit after SIGTERM")
	}
	stopped := time.Now()

	// Events the gone processes did not acknowledge are retried, as the
	// providers do, at the survivor.
	var retryObj []objectEvent
	for _, s := range objSent {
		if s.code != 200 {
			retryObj = append(retryObj, s.ev)
		}
	}
	var retryTrig []stripeemu.Event
	for _, s := range trigSent {
		if s.code != 200 {
			retryTrig = append(retryTrig, s.ev)
		}
	}
	objSent = append(objSent, streamObjects(retryObj, 40, target, nil)...)
	trigSent = append(trigSent, stream(retryTrig, 40, target, nil)...)

	lostAtStop := 0
	if _, txn, _ := missing(t, conn, objSent); txn > 0 {
		lostAtStop = txn
	}
	for {
		intake, txn, example := missing(t, conn, objSent)
		if intake > 0 {
			t.Fatalf("%d acknowledged events have no intake row (e.g. %s)", intake, example)
		}
		if txn == 0 {
			break
		}
		if time.Since(stopped) > 60*time.Second {
			t.Fatalf("60 s after the replicas went, %d acknowledged events still lack their transaction row (e.g. %s)", txn, example)
		}
		time.Sleep(500 * time.Millisecond)
	}
	recovered := time.Since(stopped)
	acknowledged(t, emu, conn, trigSent)
	if d := time.Since(stopped); d > 60*time.Second+30*time.Second {
		t.Errorf("owed refreshes took %s after the replicas went", d)
	}
	t.Logf("%d object events (%d missing their row when the replicas went, back after %s), %d triggers; refreshes done %s after",
		len(objSent), lostAtStop, recovered.Round(time.Second), len(trigSent), time.Since(stopped).Round(time.Second))
	if lostAtStop == 0 {
		t.Log("note: no transaction row was missing when the replicas went; the replay was not exercised this run")
	}
	// The survivor reports the fleet's backlog, read from ClickHouse: none.
	survivor := procs[2]
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(scrape(t, survivor.admin), "syncd_refresh_owed_customers 0\n"); {
		if time.Now().After(deadline) {
			t.Fatalf("the survivor still reports refreshes owed:\n%s", grepLines(scrape(t, survivor.admin), "syncd_refresh_owed"))
		}
		time.Sleep(500 * time.Millisecond)
	}
	if m := scrape(t, survivor.admin); !strings.Contains(m, "syncd_fleet_members 1\n") {
		t.Errorf("the survivor does not see itself alone:\n%s", grepLines(m, "syncd_fleet_members"))
	}

	// One budget: the three processes together stayed within the limit
	// (each spends a third while three are alive; the token buckets let
	// each start a second with one request in hand).
	if got := reqs.busiest(2 * time.Second); got > 2*limit+len(procs) {
		t.Errorf("%d requests in the busiest 2 s across the fleet; the shared limit allows %d", got, 2*limit+len(procs))
	}
	t.Logf("busiest 2 s: %d requests (limit %d/s shared by %d processes); %d requests in all", reqs.busiest(2*time.Second), limit, len(procs), len(reqs.times))
}

// TestFleetSharesTheRateLimit: three serve processes draining a burst of
// triggers and a concurrent `syncd backfill` spend one Stripe budget: in
// no 5-second window do they send more than the limit allows, where each
// spending the whole limit would send up to four times as much.
func TestFleetSharesTheRateLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("runs four syncd processes")
	}
	bin := buildSyncd(t)
	dsn, conn := migrated(t)
	const limit = 20
	reqs := &requestLog{}
	emu, api := emulator(t, stripeemu.Config{Seed: 23, Customers: 150}, reqs.wrap)
	source := []string{"--stripe-api-key", testAPIKey, "--stripe-api-url", api, "--rate-limit", fmt.Sprint(limit)}
	args := serveArgs(dsn, append(source, "--stripe-webhook-secret", testSecret)...)
	triggers := mutate(t, emu, emu.Customers(), -55)

	procs := startFleet(t, bin, args, 3)
	reqs.mu.Lock()
	reqs.times = nil
	reqs.mu.Unlock()

	backfill := exec.Command(bin, append([]string{"backfill", "--full", "--clickhouse-dsn", dsn, "--log-format", "console"}, source...)...)
	backfill.Env = []string{"PATH=/usr/bin:/bin"}
	var out strings.Builder
	backfill.Stdout, backfill.Stderr = &out, &out
	if err := backfill.Start(); err != nil {
		t.Fatal(err)
	}
	var i int
	var mu sync.Mutex
	target := func() string {
		mu.Lock()
		defer mu.Unlock()
		i++
		return procs[i%len(procs)].web
	}
	sent := stream(triggers, 300, target, nil)
	for _, s := range sent {
		if s.code != 200 {
			t.Fatalf("%s: %d", s.ev.ID, s.code)
		}
	}
	if err := backfill.Wait(); err != nil {
		t.Fatalf("backfill: %v\n%s", err, out.String())
	}
	acknowledged(t, emu, conn, sent)
	// Over 5 s a shared budget allows 5 × limit, plus the one request in
	// hand each process's token bucket starts with; four budgets would
	// allow four times that.
	got := reqs.busiest(5 * time.Second)
	t.Logf("%d requests; busiest 5 s: %d (limit %d/s shared by 3 serve processes and a backfill)", len(reqs.times), got, limit)
	if allowed := 5*limit + 4; got > allowed {
		t.Errorf("%d requests in the busiest 5 s; one shared budget allows %d", got, allowed)
	}
	if len(reqs.times) < 4*limit {
		t.Errorf("only %d requests: the load did not test the limit", len(reqs.times))
	}
}

// startFleet starts n `syncd serve` processes with args and waits until
// each is ready and sees all n in the fleet.
func startFleet(t *testing.T, bin string, args []string, n int) []*process {
	t.Helper()
	procs := make([]*process, n)
	for i := range procs {
		procs[i] = startProcess(t, bin, args)
	}
	for _, p := range procs {
		p.ready(t)
	}
	want := fmt.Sprintf("syncd_fleet_members %d\n", n)
	deadline := time.Now().Add(30 * time.Second)
	for _, p := range procs {
		for !strings.Contains(scrape(t, p.admin), want) {
			if time.Now().After(deadline) {
				t.Fatalf("a process does not see %d members:\n%s", n, p.logs)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return procs
}
