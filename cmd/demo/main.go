// Command demo runs syncd's whole job on one machine and prints what it did:
// a private ClickHouse, the Stripe and Orb emulators with generated
// customers, `syncd migrate`, `syncd backfill`, `syncd serve` receiving live
// signed webhooks, and `syncd verify`. `make demo` runs it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"

	"github.com/syncd/syncd/internal/chserver"
	"github.com/syncd/syncd/internal/ledger"
	"github.com/syncd/syncd/internal/sink"
)

const (
	database      = "syncd_demo"
	stripeKey     = "sk_test_demo"
	orbKey        = "orb_demo_key"
	stripeSecret  = "whsec_demo_secret_not_for_production"
	orbSecret     = "whsec_orb_demo_secret"
	liveMutations = 30
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

type demo struct {
	dir, syncd, emulator string
	customers            int
	thin                 bool
	stdout, log          io.Writer
	dsn                  string
	listen, admin        string
	stripeURL, orbURL    string
	procs                []*exec.Cmd
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	d := &demo{stdout: stdout}
	fs.StringVar(&d.dir, "dir", ".tmp/demo", "working directory (ClickHouse data, logs)")
	fs.StringVar(&d.syncd, "syncd", "bin/syncd", "the syncd binary")
	fs.StringVar(&d.emulator, "emulator", "bin/emulator", "the emulator binary")
	fs.IntVar(&d.customers, "customers", 300, "generated customers per provider")
	fs.BoolVar(&d.thin, "stripe-thin-events", false, "the Stripe emulator sends thin events (as a thin-event destination does) instead of snapshot events")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := os.MkdirAll(d.dir, 0o755); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(d.dir, "demo.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	d.log = logf
	defer d.stopAll()
	start := time.Now()

	// 1. ClickHouse: the user's server, or a private one in the demo dir.
	if base := getenv("SYNCD_CLICKHOUSE_DSN"); base != "" {
		d.dsn, err = withDatabase(base, database)
		if err != nil {
			return err
		}
		d.step("ClickHouse: using SYNCD_CLICKHOUSE_DSN's server, database %s", database)
	} else {
		srv, err := chserver.Start(ctx, filepath.Join(d.dir, "clickhouse"))
		if err != nil {
			return err
		}
		defer srv.Stop()
		d.dsn = srv.DSN(database)
		d.step("ClickHouse: private server on 127.0.0.1:%d (data in %s)", srv.TCPPort, filepath.Join(d.dir, "clickhouse"))
	}
	conn, err := sink.Open(ctx, d.dsn, true)
	if err != nil {
		return err
	}
	defer conn.Close()
	// A fresh database each run: the emulators generate new data every time.
	if err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+database); err != nil {
		return fmt.Errorf("reset the demo database: %w", err)
	}
	conn.Close()

	ports, err := freePorts(4)
	if err != nil {
		return err
	}
	d.listen, d.admin = fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])
	d.stripeURL, d.orbURL = fmt.Sprintf("http://127.0.0.1:%d", ports[2]), fmt.Sprintf("http://127.0.0.1:%d", ports[3])

	// 2. The emulators, sending signed webhooks to syncd serve.
	stripeArgs := []string{"--accounts", "platform,acct_1DemoConnected"}
	format := "snapshot"
	if d.thin {
		stripeArgs, format = append(stripeArgs, "--thin-events"), "thin"
	}
	if err := d.startEmulator(ctx, "stripe", ports[2], "/webhooks/stripe", stripeSecret, stripeArgs...); err != nil {
		return err
	}
	if err := d.startEmulator(ctx, "orb", ports[3], "/webhooks/orb", orbSecret); err != nil {
		return err
	}
	d.step("emulators: Stripe at %s (platform + one Connect account, %s events), Orb at %s, %d customers each",
		d.stripeURL, format, d.orbURL, d.customers)

	env := []string{
		"SYNCD_CLICKHOUSE_DSN=" + d.dsn, "SYNCD_LOG_FORMAT=console",
		"SYNCD_STRIPE_API_KEY=" + stripeKey, "SYNCD_STRIPE_API_URL=" + d.stripeURL,
		"SYNCD_ORB_API_KEY=" + orbKey, "SYNCD_ORB_API_URL=" + d.orbURL,
		// No rate limit is set: syncd keeps to the test-mode limits it
		// documents (Stripe 25/s, and 25/s per endpoint; Orb 50/s), which
		// the emulators enforce, answering 429 beyond them.
	}

	// 3. migrate and backfill.
	if err := d.syncdRun(ctx, env, "migrate"); err != nil {
		return err
	}
	d.step("syncd migrate: schema applied")
	for _, provider := range []string{"stripe", "orb"} {
		t0 := time.Now()
		args := []string{"backfill", "--provider", provider, "--progress", "none"}
		if provider == "stripe" {
			args = append(args, "--stripe-accounts", "all")
		}
		if err := d.syncdRun(ctx, env, args...); err != nil {
			return err
		}
		d.step("syncd backfill --provider %s: done in %s", provider, time.Since(t0).Round(time.Millisecond))
	}

	// 4. serve, then live changes that arrive as signed webhooks.
	serve := exec.CommandContext(ctx, d.syncd, "serve", "--listen", d.listen, "--admin-listen", d.admin,
		"--stripe-webhook-secret", stripeSecret, "--orb-webhook-secret", orbSecret, "--stripe-accounts", "all")
	serve.Env = append(os.Environ(), env...)
	serve.Stdout, serve.Stderr = d.log, d.log
	if err := serve.Start(); err != nil {
		return fmt.Errorf("start syncd serve: %w", err)
	}
	d.procs = append(d.procs, serve)
	if err := waitHTTP(ctx, "http://"+d.admin+"/readyz", 30*time.Second); err != nil {
		return fmt.Errorf("syncd serve did not become ready (see %s): %w", filepath.Join(d.dir, "demo.log"), err)
	}
	d.step("syncd serve: ready, webhooks on %s, metrics on http://%s/metrics", d.listen, d.admin)
	for _, p := range []struct{ url, what string }{
		{d.stripeURL + fmt.Sprintf("/_emu/mutate?n=%d", liveMutations), "Stripe"},
		{d.stripeURL + fmt.Sprintf("/_emu/mutate?n=%d&account=acct_1DemoConnected", liveMutations/3), "Stripe Connect"},
		{d.orbURL + fmt.Sprintf("/_emu/mutate?n=%d", liveMutations), "Orb"},
	} {
		if err := post(ctx, p.url); err != nil {
			return fmt.Errorf("live changes in the %s emulator: %w", p.what, err)
		}
	}
	d.step("live changes: %d Stripe, %d Stripe Connect and %d Orb transactions created; webhooks sent", liveMutations, liveMutations/3, liveMutations)
	if err := d.waitCaughtUp(ctx); err != nil {
		return err
	}

	// 5. The SIGTERM drain, verify, and the report.
	if err := serve.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	if err := serve.Wait(); err != nil {
		return fmt.Errorf("syncd serve did not drain cleanly: %w", err)
	}
	d.procs = d.procs[:len(d.procs)-1]
	d.step("syncd serve: SIGTERM, drained, exit 0")

	verdicts := map[string]string{}
	for _, provider := range []string{"stripe", "orb"} {
		args := []string{"verify", "--provider", provider}
		if provider == "stripe" {
			args = append(args, "--stripe-accounts", "all")
		}
		out, err := d.syncdOutput(ctx, env, args...)
		verdicts[provider] = lastLine(out)
		if err != nil {
			return fmt.Errorf("syncd verify --provider %s found drift:\n%s", provider, out)
		}
	}
	conn, err = sink.Open(ctx, d.dsn, false)
	if err != nil {
		return err
	}
	defer conn.Close()
	return d.report(ctx, conn, verdicts, time.Since(start))
}

func (d *demo) step(format string, args ...any) {
	fmt.Fprintf(d.stdout, "  ✓ "+format+"\n", args...)
}

func (d *demo) startEmulator(ctx context.Context, provider string, port int, path, secret string, extra ...string) error {
	args := append([]string{"--provider", provider, "--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--customers", fmt.Sprint(d.customers), "--seed", "7",
		"--webhook-url", "http://" + d.listen + path, "--webhook-secret", secret}, extra...)
	cmd := exec.CommandContext(ctx, d.emulator, args...)
	cmd.Stdout, cmd.Stderr = d.log, d.log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the %s emulator (%s): %w", provider, d.emulator, err)
	}
	d.procs = append(d.procs, cmd)
	return waitHTTP(ctx, fmt.Sprintf("http://127.0.0.1:%d/_emu/healthz", port), 15*time.Second)
}

func (d *demo) syncdRun(ctx context.Context, env []string, args ...string) error {
	out, err := d.syncdOutput(ctx, env, args...)
	if err != nil {
		return fmt.Errorf("syncd %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (d *demo) syncdOutput(ctx context.Context, env []string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, d.syncd, args...)
	cmd.Env = append(os.Environ(), env...)
	var out strings.Builder
	cmd.Stdout = io.MultiWriter(&out, d.log)
	cmd.Stderr = d.log
	err := cmd.Run()
	return out.String(), err
}

// waitCaughtUp waits until the emulators have delivered every webhook and
// syncd has no refresh queued or lagging.
func (d *demo) waitCaughtUp(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		pending := 0.0
		for _, u := range []string{d.stripeURL, d.orbURL} {
			var s struct {
				Deliveries struct {
					Pending float64 `json:"pending"`
				} `json:"deliveries"`
			}
			if err := getJSON(ctx, u+"/_emu/truth/summary", &s); err == nil {
				pending += s.Deliveries.Pending
			}
		}
		m, err := scrape(ctx, "http://"+d.admin+"/metrics")
		if err == nil && pending == 0 && m["syncd_refresh_queue_depth"] == 0 && m[`syncd_sync_lag_seconds{provider="stripe"}`] == 0 {
			d.step("caught up: %0.f webhook requests answered 200, refresh queue empty",
				m[`syncd_webhook_requests_total{outcome="ok",provider="stripe"}`]+m[`syncd_webhook_requests_total{outcome="ok",provider="orb"}`])
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return errors.New("syncd did not catch up with the live changes within 60s")
}

func (d *demo) report(ctx context.Context, conn driver.Conn, verdicts map[string]string, took time.Duration) error {
	w := d.stdout
	fmt.Fprintf(w, "\n── syncd demo report ─────────────────────────────────────────────\n")
	fmt.Fprintf(w, "\nrows mirrored (one per transaction, FINAL):\n")
	for _, q := range []struct{ provider, table string }{
		{"stripe", "stripe_customer_balance_transactions"}, {"orb", "orb_customer_balance_transactions"},
	} {
		rows, err := conn.Query(ctx, "SELECT _source, count() FROM "+q.table+" FINAL GROUP BY _source ORDER BY _source")
		if err != nil {
			return err
		}
		var parts []string
		var total uint64
		for rows.Next() {
			var src string
			var n uint64
			if err := rows.Scan(&src, &n); err != nil {
				return err
			}
			parts = append(parts, fmt.Sprintf("%s %d", src, n))
			total += n
		}
		rows.Close()
		fmt.Fprintf(w, "  %-7s %7d   (last written by: %s)\n", q.provider, total, strings.Join(parts, ", "))
	}
	fmt.Fprintf(w, "\nwebhook events received and durable:\n")
	for _, q := range []struct{ provider, table string }{{"stripe", "stripe_events"}, {"orb", "orb_events"}} {
		var n uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM "+q.table+" FINAL").Scan(&n); err != nil {
			return err
		}
		fmt.Fprintf(w, "  %-7s %7d\n", q.provider, n)
	}
	// Balances in different currencies do not compare, so the ranking is
	// within the most common one.
	var currency string
	if err := conn.QueryRow(ctx, "SELECT currency FROM customer_balances GROUP BY currency ORDER BY count() DESC, currency LIMIT 1").Scan(&currency); err != nil {
		return fmt.Errorf("query customer_balances: %w", err)
	}
	fmt.Fprintf(w, "\nfive largest customer credit balances in %s (customer_balances):\n", strings.ToUpper(currency))
	// The balance is read as a decimal and formatted here (money), the same
	// on every ClickHouse: toString(Decimal) prints twelve decimals on 18.16
	// and drops the trailing zeros on 26.x.
	rows, err := conn.Query(ctx, `SELECT provider, account_id, customer, currency, credit_balance
		FROM customer_balances WHERE currency = ?
		ORDER BY credit_balance DESC, provider, account_id, customer LIMIT 5`, currency)
	if err != nil {
		return fmt.Errorf("query customer_balances: %w", err)
	}
	for rows.Next() {
		var provider, account, customer, currency string
		var balance decimal.Decimal
		if err := rows.Scan(&provider, &account, &customer, &currency, &balance); err != nil {
			return err
		}
		if account != "" {
			customer = account + "/" + customer
		}
		fmt.Fprintf(w, "  %-7s %-40s %16s %s\n", provider, customer, money(balance, currency), strings.ToUpper(currency))
	}
	rows.Close()
	fmt.Fprintf(w, "\nsyncd verify:\n")
	for _, p := range []string{"stripe", "orb"} {
		fmt.Fprintf(w, "  %-7s %s\n", p, verdicts[p])
	}
	fmt.Fprintf(w, "\ndone in %s; logs in %s\n", took.Round(100*time.Millisecond), filepath.Join(d.dir, "demo.log"))
	return nil
}

// money renders d with the digits of currency's minor unit, and more when
// d has more (Orb amounts may): 12.50, 1234 (JPY), 0.125 (KWD), 1.000001.
func money(d decimal.Decimal, currency string) string {
	places := ledger.Exponent(currency)
	if s := d.String(); strings.Contains(s, ".") {
		places = max(places, int32(len(s)-strings.Index(s, ".")-1))
	}
	return d.StringFixed(places)
}

func (d *demo) stopAll() {
	for i := len(d.procs) - 1; i >= 0; i-- {
		p := d.procs[i]
		if p.Process == nil {
			continue
		}
		_ = p.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = p.Process.Kill()
		}
	}
	d.procs = nil
}

func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func waitHTTP(ctx context.Context, url string, within time.Duration) error {
	deadline := time.Now().Add(within)
	var last error
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s answered %s", url, resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return last
}

func post(ctx context.Context, url string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: %s %s", url, resp.Status, b)
	}
	return nil
}

func getJSON(ctx context.Context, url string, v any) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

// scrape reads the Prometheus text format into series → value.
func scrape(ctx context.Context, url string) (map[string]float64, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(line[i+1:], &v); err == nil {
			out[line[:i]] = v
		}
	}
	return out, nil
}

func withDatabase(dsn, db string) (string, error) {
	i := strings.Index(dsn, "://")
	if i < 0 {
		return "", fmt.Errorf("SYNCD_CLICKHOUSE_DSN %q is not a clickhouse:// DSN", dsn)
	}
	rest := dsn[i+3:]
	host, query := rest, ""
	if j := strings.IndexByte(rest, '?'); j >= 0 {
		host, query = rest[:j], rest[j:]
	}
	if j := strings.IndexByte(host, '/'); j >= 0 {
		host = host[:j]
	}
	return dsn[:i+3] + host + "/" + db + query, nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
