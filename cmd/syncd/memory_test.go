package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/chtest"
	"github.com/syncd/syncd/internal/stripeemu"
)

// memoryOf reads a process's resident set size now (VmRSS) and at its peak
// (VmHWM) from /proc, in bytes.
func memoryOf(pid int) (rss, peak int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok || (name != "VmRSS" && name != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %q", name, line)
		}
		if name == "VmRSS" {
			rss = kb << 10
		} else {
			peak = kb << 10
		}
	}
	if rss == 0 || peak == 0 {
		return 0, 0, fmt.Errorf("no VmRSS/VmHWM in /proc/%d/status", pid)
	}
	return rss, peak, nil
}

// memoryWatch samples a child process's resident memory every 50 ms.
type memoryWatch struct {
	pid     int
	mu      sync.Mutex
	samples []memorySample
	stop    chan struct{}
	done    chan struct{}
}

type memorySample struct {
	at  time.Time
	rss int64
}

func watchMemory(t *testing.T, p *process) *memoryWatch {
	t.Helper()
	w := &memoryWatch{pid: p.cmd.Process.Pid, stop: make(chan struct{}), done: make(chan struct{})}
	if _, _, err := memoryOf(w.pid); err != nil {
		t.Skipf("cannot read the child's memory: %v", err)
	}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			if rss, _, err := memoryOf(w.pid); err == nil {
				w.mu.Lock()
				w.samples = append(w.samples, memorySample{time.Now(), rss})
				w.mu.Unlock()
			}
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(w.end)
	return w
}

// end stops sampling.
func (w *memoryWatch) end() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// peak is the kernel's high-water mark of the process's resident memory
// (VmHWM), which no sampling can miss.
func (w *memoryWatch) peak(t *testing.T) int64 {
	t.Helper()
	_, peak, err := memoryOf(w.pid)
	if err != nil {
		t.Fatalf("read the child's peak memory: %v", err)
	}
	return peak
}

// between returns the lowest and highest sampled VmRSS in [from, to).
func (w *memoryWatch) between(from, to time.Time) (low, high int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, s := range w.samples {
		if s.at.Before(from) || !s.at.Before(to) {
			continue
		}
		if low == 0 || s.rss < low {
			low = s.rss
		}
		high = max(high, s.rss)
	}
	return low, high
}

func mib(n int64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }

// floodOnce is one client without a secret: it declares a 1 MiB body on a
// webhook route, sends 1 MiB − 1 byte of it slowly and holds the last one
// back, until syncd answers (the status) or ctx ends (0).
func floodOnce(ctx context.Context, host string) int {
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", host)
	if err != nil {
		return 0
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	fmt.Fprintf(conn, "POST /webhooks/stripe HTTP/1.1\r\nHost: %s\r\nStripe-Signature: t=1,v1=00\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n",
		host, 1<<20)
	answered := make(chan int, 1)
	go func() {
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			answered <- 0
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	for left := 1<<20 - 1; left > 0; left -= len(chunk) {
		if _, err := conn.Write(chunk[:min(left, len(chunk))]); err != nil {
			break // refused: the answer is on its way
		}
		select {
		case code := <-answered:
			return code
		case <-time.After(20 * time.Millisecond):
		}
	}
	return <-answered
}

// TestServeBodyFloodStaysBounded runs the real binary and opens 300
// connections without a secret, each sending 1 MiB − 1 byte of a 1 MiB body
// slowly and holding it open, again as soon as it is answered. syncd's
// resident memory stays under 300 MiB (each connection could otherwise
// hold its megabyte, or two once a buffer doubles), and signed events get
// their 200 within 10 s throughout.
func TestServeBodyFloodStaysBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the syncd binary")
	}
	const (
		clients  = 300
		limit    = 300 << 20
		ackLimit = 10 * time.Second
	)
	bin := buildSyncd(t)
	dsn, conn := migrated(t)
	p := startProcess(t, bin, serveArgs(dsn, "--stripe-api-key", testAPIKey, "--stripe-api-url", "http://127.0.0.1:1",
		"--stripe-webhook-secret", testSecret, "--orb-webhook-secret", testOrbSecret))
	p.ready(t)
	mem := watchMemory(t, p)
	idle, _, _ := memoryOf(p.cmd.Process.Pid)

	ctx, stopFlood := context.WithCancel(context.Background())
	defer stopFlood()
	host := strings.TrimPrefix(p.web, "http://")
	var (
		mu      sync.Mutex
		answers = map[int]int{}
		flood   sync.WaitGroup
	)
	for range clients {
		flood.Go(func() {
			for ctx.Err() == nil {
				code := floodOnce(ctx, host)
				mu.Lock()
				answers[code]++
				mu.Unlock()
			}
		})
	}

	time.Sleep(2 * time.Second)
	client := &http.Client{Timeout: 2 * ackLimit}
	var slowest time.Duration
	for _, ev := range objectEvents("flood", 4) {
		began := time.Now()
		code := deliverObject(client, p.web, ev)
		took := time.Since(began)
		if code != 200 || took > ackLimit {
			t.Errorf("signed event %s during the flood: %d after %s, want 200 within %s", ev.id, code, took.Round(time.Millisecond), ackLimit)
		}
		slowest = max(slowest, took)
		time.Sleep(500 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	stopFlood()
	flood.Wait()
	select {
	case <-p.done:
		t.Fatalf("syncd exited during the flood: %v", p.err)
	default:
	}
	peak := mem.peak(t)
	mem.end()
	if peak > limit {
		t.Errorf("resident memory peaked at %s under the flood; want under %s", mib(peak), mib(limit))
	}
	for _, table := range []string{"stripe_events", "orb_events"} {
		if n := len(ids(t, conn, table)); n != 4 {
			t.Errorf("%s holds %d events, want the 4 signed ones", table, n)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if answers[503] == 0 {
		t.Errorf("answers to the flood %v: none refused for the budget", answers)
	}
	t.Logf("%d clients holding 1 MiB − 1 byte: answers %v; resident memory %s idle, peak %s; slowest signed event %s",
		clients, answers, mib(idle), mib(peak), slowest.Round(time.Millisecond))
}

// outageTiming is one delivery during the outage test.
type outageTiming struct {
	ev         objectEvent
	code       int
	start, end time.Time
}

func (o outageTiming) took() time.Duration { return o.end.Sub(o.start) }

// envOr reads a test parameter from the environment.
func envOr[T any](t *testing.T, name string, def T, parse func(string) (T, error)) T {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	x, err := parse(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return x
}

// TestServeClickHouseOutageUnderLoad runs the real binary (GOMEMLIMIT set,
// as the chart sets it) under a steady stream of signed Stripe and Orb
// object events, stops ClickHouse for a while, and starts it again. Once
// the outage is known every delivery is answered 503 within a second, none
// is ever held past 5 s, resident memory stays flat and bounded, 200s
// return when ClickHouse does, and every event answered 200 has its rows.
// SYNCD_TEST_OUTAGE (15s) and SYNCD_TEST_OUTAGE_RATE (200 events/s) set the
// outage's length and the load; docs/benchmarks.md has a run of 2m at 500.
func TestServeClickHouseOutageUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the syncd binary and stops a ClickHouse server")
	}
	outage := envOr(t, "SYNCD_TEST_OUTAGE", 15*time.Second, time.ParseDuration)
	rate := envOr(t, "SYNCD_TEST_OUTAGE_RATE", 200, strconv.Atoi)
	const (
		warm, after = 3 * time.Second, 10 * time.Second
		failFast    = time.Second
		slack       = 500 * time.Millisecond // scheduling on a loaded machine
		neverPast   = 5 * time.Second
		memLimit    = 300 << 20
	)

	srv := chtest.Private(t)
	dsn := srv.DSN("outage_load")
	if err := run(context.Background(), []string{"migrate", "--clickhouse-dsn", dsn}, func(string) string { return "" }, io.Discard, io.Discard); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	conn := chtest.Conn(t, dsn)
	bin := buildSyncd(t)
	p := startProcessEnv(t, bin, serveArgs(dsn, "--stripe-api-key", testAPIKey, "--stripe-api-url", "http://127.0.0.1:1",
		"--stripe-webhook-secret", testSecret, "--orb-webhook-secret", testOrbSecret), "GOMEMLIMIT=460MiB")
	p.ready(t)
	mem := watchMemory(t, p)

	// The load: rate deliveries a second, each on its own goroutine, for
	// as long as the test runs.
	ctx, stopLoad := context.WithCancel(context.Background())
	defer stopLoad()
	client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 512}}
	var (
		mu      sync.Mutex
		results []outageTiming
		load    sync.WaitGroup
	)
	load.Go(func() {
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		var inflight sync.WaitGroup
		defer inflight.Wait()
		for batch := 0; ; batch++ {
			for _, ev := range objectEvents(fmt.Sprintf("o%d", batch), 500) {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				inflight.Go(func() {
					r := outageTiming{ev: ev, start: time.Now()}
					r.code = deliverObject(client, p.web, ev)
					r.end = time.Now()
					mu.Lock()
					results = append(results, r)
					mu.Unlock()
				})
			}
		}
	})

	time.Sleep(warm)
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	time.Sleep(outage)
	startCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := srv.Start(startCtx); err != nil {
		t.Fatal(err)
	}
	up := time.Now()
	time.Sleep(after)
	stopLoad()
	load.Wait()

	select {
	case <-p.done:
		t.Fatalf("syncd exited during the outage: %v", p.err)
	default:
	}
	peak := mem.peak(t)
	// Flat: what the outage's second half adds to its first quarter.
	_, early := mem.between(down, down.Add(outage/4))
	_, late := mem.between(down.Add(outage/2), up)
	mem.end()

	var (
		okBefore, okAfter, refused, heldLong, slowRefusals, okDuring, during int
		firstOKAfter                                                         time.Time
		slowest, slowestRefusal                                              time.Duration
		acked                                                                []objectSent
		codes                                                                = map[int]int{}
	)
	sort.Slice(results, func(i, j int) bool { return results[i].start.Before(results[j].start) })
	for _, r := range results {
		codes[r.code]++
		if !r.start.Before(down) && r.start.Before(up) {
			during++
		}
		slowest = max(slowest, r.took())
		if r.took() > neverPast+slack {
			heldLong++
		}
		known := r.start.After(down.Add(failFast)) && r.end.Before(up)
		switch {
		case r.code == 200:
			acked = append(acked, objectSent{r.ev, 200})
			switch {
			case r.end.Before(down):
				okBefore++
			case r.start.After(up):
				okAfter++
				if firstOKAfter.IsZero() {
					firstOKAfter = r.end
				}
			case known:
				okDuring++
			}
		case known && r.code == 503:
			refused++
			slowestRefusal = max(slowestRefusal, r.took())
			if r.took() > failFast+slack {
				slowRefusals++
			}
		}
	}
	if okDuring > 0 {
		t.Errorf("%d deliveries answered 200 while ClickHouse was down", okDuring)
	}
	if heldLong > 0 {
		t.Errorf("%d deliveries held past %s (slowest %s)", heldLong, neverPast, slowest.Round(time.Millisecond))
	}
	if refused == 0 || slowRefusals > 0 {
		t.Errorf("once the outage was known: %d refused with 503, %d of them after more than %s (slowest %s)",
			refused, slowRefusals, failFast, slowestRefusal.Round(time.Millisecond))
	}
	if okBefore == 0 || okAfter == 0 {
		t.Errorf("want 200s before and after the outage: %d before, %d after", okBefore, okAfter)
	}
	for _, r := range results {
		if r.start.After(up.Add(after/2)) && r.code != 200 {
			t.Errorf("%s answered %d %s after ClickHouse was back", r.ev.id, r.code, r.start.Sub(up).Round(time.Millisecond))
			break
		}
	}
	if peak > memLimit {
		t.Errorf("resident memory peaked at %s; want under %s", mib(peak), mib(memLimit))
	}
	if late > early+64<<20 {
		t.Errorf("resident memory grew during the outage: %s in its first quarter, %s in its second half", mib(early), mib(late))
	}
	for deadline := time.Now().Add(60 * time.Second); ; {
		i, x, example := missing(t, conn, acked)
		if i == 0 && x == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d intake and %d transaction rows of acknowledged events missing 60s after the outage, e.g. %s", i, x, example)
		}
		time.Sleep(500 * time.Millisecond)
	}
	// The rate reached: on a loaded machine the load may fall short of
	// the one asked for.
	t.Logf("%s outage at %d events/s asked, %.0f/s sent during it: %d deliveries %v; %d acknowledged before, %d refused once known (slowest %s), "+
		"%d acknowledged after (the first %s after ClickHouse was back); slowest answer %s; "+
		"resident memory %s early in the outage, %s late, peak %s (GOMEMLIMIT 460MiB); every acknowledged event's rows present",
		outage, rate, float64(during)/up.Sub(down).Seconds(), len(results), codes, okBefore, refused, slowestRefusal.Round(time.Millisecond),
		okAfter, firstOKAfter.Sub(up).Round(time.Millisecond), slowest.Round(time.Millisecond),
		mib(early), mib(late), mib(peak))
}

// scaleRun is one run of the real binary against a scaled world.
type scaleRun struct {
	took time.Duration
	peak int64 // the kernel's high-water mark of its resident memory (VmHWM)
	out  string
}

// runMeasured runs bin with args (GOMEMLIMIT unset) to its end and reads
// its peak resident memory: the kernel's high-water mark (VmHWM), read from
// /proc every 20 ms while it runs (monotonic, so only growth in its last
// 20 ms could be missed). Not getrusage's ru_maxrss: os/exec starts a
// child sharing the parent's memory until exec (CLONE_VM), and Linux
// carries that memory's high-water mark into the child's ru_maxrss, so
// it reports the test process's own peak (an emulator holding a large
// world) whenever that is higher.
func runMeasured(t *testing.T, bin string, args ...string) (scaleRun, error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	began := time.Now()
	if err := cmd.Start(); err != nil {
		return scaleRun{}, err
	}
	var peak atomic.Int64
	stop := make(chan struct{})
	var polled sync.WaitGroup
	polled.Go(func() {
		for {
			if _, hwm, err := memoryOf(cmd.Process.Pid); err == nil {
				peak.Store(max(peak.Load(), hwm))
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	err := cmd.Wait()
	close(stop)
	polled.Wait()
	return scaleRun{took: time.Since(began), out: out.String(), peak: peak.Load()}, err
}

// TestBackfillAndVerifyMemoryAtScale runs the real binary's first full
// backfill, then its verify, against a scaled Stripe world (customers
// spread skewed over Connect accounts, most without transactions, a few
// with thousands), GOMEMLIMIT unset: verify finds no drift, and each
// process's peak resident memory stays under the chart's 512 MiB limit.
// SYNCD_TEST_SCALE_CUSTOMERS (50000), SYNCD_TEST_SCALE_ACCOUNTS (200),
// SYNCD_TEST_SCALE_RATE (--rate-limit, 5000 requests/s),
// SYNCD_TEST_SCALE_VERIFY_RATE (verify's, the same) and
// SYNCD_TEST_SCALE_LATENCY (the emulator's, 0) set the world and the
// clock. The limits keep Stripe's shape, scaled: each endpoint gets a
// quarter of the rate limit (25/s of 100/s live), and the requests in
// flight are not capped below what the latency needs; with
// SYNCD_TEST_SCALE_RATE=2000 and SYNCD_TEST_SCALE_LATENCY=15ms the run is
// Stripe's live limits and a 300 ms API, 20 times faster.
// docs/benchmarks.md has the million-customer run, with the time over the
// physical bound it logs.
func TestBackfillAndVerifyMemoryAtScale(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the syncd binary and backfills a large world")
	}
	customers := envOr(t, "SYNCD_TEST_SCALE_CUSTOMERS", 50000, strconv.Atoi)
	accounts := envOr(t, "SYNCD_TEST_SCALE_ACCOUNTS", 200, strconv.Atoi)
	rate := envOr(t, "SYNCD_TEST_SCALE_RATE", 5000, strconv.Atoi)
	verifyRate := envOr(t, "SYNCD_TEST_SCALE_VERIFY_RATE", rate, strconv.Atoi)
	latency := envOr(t, "SYNCD_TEST_SCALE_LATENCY", time.Duration(0), time.ParseDuration)
	const limit = 512 << 20

	bin := buildSyncd(t)
	dsn, conn := migrated(t)
	emu, api := emulator(t, stripeemu.Config{Seed: 1, Scale: stripeemu.Scale{Customers: customers, Accounts: accounts},
		Latency: latency}, nil)
	world := emu.World()
	args := func(cmd string, rate int) []string {
		return []string{cmd, "--clickhouse-dsn", dsn, "--stripe-api-key", testAPIKey, "--stripe-api-url", api,
			"--stripe-accounts", "all", "--rate-limit", strconv.Itoa(rate), "--endpoint-rate-limit", strconv.Itoa(rate / 4),
			"--max-concurrent-requests", "1000", "--log-level", "warn"}
	}

	bf, err := runMeasured(t, bin, append(args("backfill", rate), "--full", "--progress", "none")...)
	if err != nil {
		t.Fatalf("backfill: %v\n%s", err, bf.out)
	}
	served := emu.Requests()
	var parts, maxParts uint64
	if err := conn.QueryRow(context.Background(), `SELECT count(), max(n) FROM (
			SELECT partition, count() AS n FROM system.parts
			WHERE active AND database = currentDatabase() AND table = 'stripe_customer_balance_transactions'
			GROUP BY partition)`).Scan(&parts, &maxParts); err != nil {
		t.Fatal(err)
	}
	var held uint64
	if err := conn.QueryRow(context.Background(), `SELECT count() FROM stripe_customer_balance_transactions`).Scan(&held); err != nil {
		t.Fatal(err)
	}
	if held != uint64(world.Transactions) {
		t.Errorf("the backfill wrote %d rows; the world has %d transactions", held, world.Transactions)
	}

	vf, err := runMeasured(t, bin, args("verify", verifyRate)...)
	if err != nil || !strings.Contains(vf.out, "no drift") {
		t.Errorf("verify: %v\n%s", err, vf.out)
	}
	for _, r := range []struct {
		name string
		run  scaleRun
	}{{"backfill", bf}, {"verify", vf}} {
		if r.run.peak == 0 || r.run.peak > limit {
			t.Errorf("%s: peak resident memory %s; want under %s", r.name, mib(r.run.peak), mib(limit))
		}
	}
	// The physical bound: the fewest requests that read the world, at the
	// binding limit (the balance-transaction endpoint's, the customer
	// list's or the global one). Logged, not asserted: timing is the
	// benchmark's.
	endpoint := float64(rate / 4)
	secs := max(float64(world.Requests-world.ListRequests)/endpoint, float64(world.ListRequests)/endpoint,
		float64(world.Requests)/float64(rate))
	b := time.Duration(secs * float64(time.Second))
	bound := fmt.Sprintf("; bound %s (%d requests, %d of them lists, at %d/s per endpoint, %d/s in all): bound ÷ time %.3f",
		b.Round(time.Millisecond), world.Requests, world.ListRequests, rate/4, rate, b.Seconds()/bf.took.Seconds())
	t.Logf("world: %d accounts, %d customers, %d transactions, %d requests at least, latency %s", world.Accounts, world.Customers,
		world.Transactions, world.Requests, latency)
	t.Logf("backfill --full: %s, %d requests served, peak RSS %s; %d active parts, at most %d in a partition%s",
		bf.took.Round(time.Millisecond), served.Total, mib(bf.peak), parts, maxParts, bound)
	t.Logf("verify at %d requests/s: %s, peak RSS %s: %s", verifyRate, vf.took.Round(time.Millisecond), mib(vf.peak),
		strings.TrimSpace(lastLine(vf.out)))
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
