package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	stripewebhook "github.com/stripe/stripe-go/v82/webhook"

	"github.com/syncd/syncd/internal/chtest"
	"github.com/syncd/syncd/internal/sink"
	"github.com/syncd/syncd/internal/stripeemu"
)

func TestMain(m *testing.M) { chtest.Main(m) }

const (
	testAPIKey = "sk_test_serve"
	testSecret = "whsec_serve_test_secret"
)

// logs collects a serve process's log lines and finds the addresses it
// bound in its "serving" line.
type logs struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	lines []string
}

func (l *logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	for {
		i := bytes.IndexByte(l.buf.Bytes(), '\n')
		if i < 0 {
			break
		}
		l.lines = append(l.lines, string(l.buf.Next(i+1)))
	}
	return len(p), nil
}

func (l *logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "")
}

// find waits for the first line whose msg is msg and decodes it.
func (l *logs) find(t testing.TB, msg string, timeout time.Duration) map[string]any {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for seen := 0; ; {
		l.mu.Lock()
		lines := l.lines[seen:]
		seen = len(l.lines)
		l.mu.Unlock()
		for _, line := range lines {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == msg {
				return m
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q log line after %s; logs:\n%s", msg, timeout, l)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// instance is one running `syncd serve`.
type instance struct {
	web, admin string // base URLs
	logs       *logs
}

func (in *instance) bind(t testing.TB) {
	t.Helper()
	m := in.logs.find(t, "serving", 30*time.Second)
	in.web, in.admin = "http://"+m["listen"].(string), "http://"+m["admin_listen"].(string)
	waitStatus(t, in.admin+"/healthz", 200, 10*time.Second)
}

// ready waits until /readyz says ClickHouse answers and the schema is
// current: before that, webhooks are rightly answered 503.
func (in *instance) ready(t testing.TB) {
	t.Helper()
	waitStatus(t, in.admin+"/readyz", 200, 30*time.Second)
}

// settled waits until the sink has committed every row queued so far, as
// /metrics reports it: an object event's transaction row is committed in
// the background, after the 200.
func (in *instance) settled(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(scrape(t, in.admin), "\nsyncd_sink_queue_rows 0\n") {
		if time.Now().After(deadline) {
			t.Fatal("sink queue not empty after 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func serveArgs(dsn string, extra ...string) []string {
	return append([]string{"serve", "--clickhouse-dsn", dsn,
		"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-level", "info"}, extra...)
}

// serveInProcess runs `syncd serve` through run() until the test ends, and
// fails the test when it does not drain and return nil.
func serveInProcess(t testing.TB, args []string) *instance {
	t.Helper()
	return serveInProcessEnv(t, args, func(string) string { return "" })
}

// serveInProcessEnv is serveInProcess with the environment getenv.
func serveInProcessEnv(t testing.TB, args []string, getenv func(string) string) *instance {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	in := &instance{logs: &logs{}}
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, getenv, io.Discard, in.logs) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve returned %v", err)
			}
		case <-time.After(40 * time.Second):
			t.Errorf("serve did not return within 40s of cancel")
		}
	})
	in.bind(t)
	return in
}

// buildSyncd builds the syncd binary the way users do.
func buildSyncd(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "syncd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// process is `syncd serve` as a child process.
type process struct {
	instance
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited
	err  error         // cmd.Wait's, once done is closed
}

// killAt returns a callback for each acknowledgement that SIGKILLs p at
// the n-th (calling before first, if set) and returns once p has exited,
// and a channel closed then.
func killAt(p *process, n int, before func()) (acked func(), killed <-chan struct{}) {
	var acks atomic.Int64
	done := make(chan struct{})
	return func() {
		if acks.Add(1) != int64(n) {
			return
		}
		if before != nil {
			before()
		}
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
		close(done)
	}, done
}

func startProcess(t *testing.T, bin string, args []string) *process {
	t.Helper()
	return startProcessEnv(t, bin, args)
}

// startProcessEnv is startProcess with env (KEY=value) added to the child's
// environment.
func startProcessEnv(t *testing.T, bin string, args []string, env ...string) *process {
	t.Helper()
	p := &process{instance: instance{logs: &logs{}}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append([]string{"PATH=/usr/bin:/bin"}, env...)
	p.cmd.Stderr = p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	p.bind(t)
	return p
}

func waitStatus(t testing.TB, url string, want int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := 0
	for {
		if resp, err := http.Get(url); err == nil {
			last = resp.StatusCode
			resp.Body.Close()
			if last == want {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %d after %s, want %d", url, last, timeout, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func getStatus(url string) int {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// deliver signs raw as Stripe would and POSTs it; 0 when no answer came.
func deliver(client *http.Client, url string, raw []byte) int {
	signed := stripewebhook.GenerateTestSignedPayload(&stripewebhook.UnsignedPayload{Payload: raw, Secret: testSecret, Timestamp: time.Now()})
	req, err := http.NewRequest(http.MethodPost, url+"/webhooks/stripe", bytes.NewReader(raw))
	if err != nil {
		return 0
	}
	req.Header.Set("Stripe-Signature", signed.Header)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// migrated returns the DSN of a fresh database with the schema applied.
func migrated(t *testing.T) (string, driver.Conn) {
	t.Helper()
	dsn := chtest.DSN(t)
	var out bytes.Buffer
	if err := run(context.Background(), []string{"migrate", "--clickhouse-dsn", dsn}, func(string) string { return "" }, &out, io.Discard); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	conn, err := sink.Open(context.Background(), dsn, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return dsn, conn
}

// emulator serves a Stripe emulator; wrap, when set, sees every request.
func emulator(t testing.TB, cfg stripeemu.Config, wrap func(http.Handler) http.Handler) (*stripeemu.Emulator, string) {
	t.Helper()
	e, err := stripeemu.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var h http.Handler = e
	if wrap != nil {
		h = wrap(e)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(func() { srv.Close(); e.Close() })
	return e, srv.URL
}

// eachFormat runs test with the emulator's events as Stripe sends them to
// an endpoint of each payload format: snapshot events, and thin events.
func eachFormat(t *testing.T, test func(t *testing.T, format func([]stripeemu.Event) []stripeemu.Event)) {
	t.Run("snapshot", func(t *testing.T) { test(t, func(evs []stripeemu.Event) []stripeemu.Event { return evs }) })
	t.Run("thin", func(t *testing.T) {
		test(t, func(evs []stripeemu.Event) []stripeemu.Event {
			out := make([]stripeemu.Event, len(evs))
			for i, ev := range evs {
				out[i] = ev.AsThin()
			}
			return out
		})
	})
}

// mutate adds one transaction to each customer and returns the events the
// emulator recorded for it.
func mutate(t *testing.T, e *stripeemu.Emulator, customers []stripeemu.Customer, amount int64) []stripeemu.Event {
	t.Helper()
	return mutateWith(t, e, customers, amount, "adjustment")
}

// mutateWith is mutate with transactions of type typ: an invoice-backed
// type, say, adds the invoice's event to customer.updated.
func mutateWith(t *testing.T, e *stripeemu.Emulator, customers []stripeemu.Customer, amount int64, typ string) []stripeemu.Event {
	t.Helper()
	seen := map[string]bool{}
	for _, ev := range e.Events() {
		seen[ev.ID] = true
	}
	for _, c := range customers {
		if _, err := e.AddTransaction(c.Account, c.ID, amount, typ); err != nil {
			t.Fatal(err)
		}
	}
	var out []stripeemu.Event
	for _, ev := range e.Events() {
		if !seen[ev.ID] {
			out = append(out, ev)
		}
	}
	return out
}

type txnRow struct {
	Account, ID, Customer, Type string
	Amount, EndingBalance       int64
	Created                     int64
	Raw                         string
}

// mirror reads stripe_customer_balance_transactions FINAL for the given
// customers, ordered like truth.
func mirror(t testing.TB, conn driver.Conn, where string) []txnRow {
	t.Helper()
	rows, err := conn.Query(context.Background(), `SELECT account_id, id, customer, type, amount, ending_balance,
		toUnixTimestamp(created), _raw FROM stripe_customer_balance_transactions FINAL `+where+`
		ORDER BY account_id, customer, created, id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []txnRow
	for rows.Next() {
		var r txnRow
		var created uint32
		if err := rows.Scan(&r.Account, &r.ID, &r.Customer, &r.Type, &r.Amount, &r.EndingBalance, &created, &r.Raw); err != nil {
			t.Fatal(err)
		}
		r.Created = int64(created)
		out = append(out, r)
	}
	return out
}

func truthRows(txns []stripeemu.Txn) []txnRow {
	out := make([]txnRow, len(txns))
	for i, x := range txns {
		out[i] = txnRow{x.Account, x.ID, x.Customer, x.Type, x.Amount, x.EndingBalance, x.Created, string(x.Raw)}
	}
	return out
}

// diff describes how got differs from want, "" when equal.
func diff(got, want []txnRow) string {
	g, w := map[string]txnRow{}, map[string]txnRow{}
	for _, r := range got {
		g[r.Account+"/"+r.ID] = r
	}
	for _, r := range want {
		w[r.Account+"/"+r.ID] = r
	}
	var b strings.Builder
	for k, r := range w {
		if gr, ok := g[k]; !ok {
			fmt.Fprintf(&b, "missing %s (customer %s)\n", k, r.Customer)
		} else if gr != r {
			fmt.Fprintf(&b, "differs %s:\n  got  %+v\n  want %+v\n", k, gr, r)
		}
	}
	for k := range g {
		if _, ok := w[k]; !ok {
			fmt.Fprintf(&b, "extra %s\n", k)
		}
	}
	if len(got) != len(g) {
		fmt.Fprintf(&b, "%d rows for %d ids: FINAL left duplicates\n", len(got), len(g))
	}
	return b.String()
}

// scrape returns the /metrics text.
func scrape(t testing.TB, admin string) string {
	t.Helper()
	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		b.WriteString(sc.Text())
		b.WriteByte('\n')
	}
	return b.String()
}

// eventIDs returns the ids in stripe_events.
func eventIDs(t testing.TB, conn driver.Conn) map[string]bool {
	t.Helper()
	return ids(t, conn, "stripe_events")
}

// signalAfter returns an acknowledgement callback that sends sig to p once n
// events are acknowledged: mid-stream, however fast the machine.
func (p *process) signalAfter(n int, sig os.Signal) func() {
	var (
		mu   sync.Mutex
		acks int
	)
	return func() {
		mu.Lock()
		defer mu.Unlock()
		if acks++; acks == n {
			_ = p.cmd.Process.Signal(sig)
		}
	}
}

// exitedCleanly waits for p to exit after a SIGTERM and fails unless it
// exited 0.
func (p *process) exitedCleanly(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatal("syncd did not exit within 30s of SIGTERM")
	}
	if p.err != nil {
		t.Fatalf("syncd exited with %v; logs:\n%s", p.err, p.logs)
	}
}
