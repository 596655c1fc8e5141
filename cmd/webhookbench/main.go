// Command webhookbench measures syncd's Stripe webhook route: it signs and
// POSTs customer_balance_transaction events over loopback with N concurrent
// connections and reports durable events/s and ack latency, next to the bare
// cost of the stack measured in the same run. A 200 means the event's
// stripe_events row has committed; the transaction row it carries is
// committed in the background, and after each run the program waits for
// that backlog and reports how long it took.
//
//	go run ./cmd/webhookbench
//
// Without -target it builds and starts `syncd serve` itself (after `syncd
// migrate`) on a fresh database it drops at the end, on a private ClickHouse
// server unless -clickhouse-dsn names one. With -replicas N it starts N
// `syncd serve` processes on that one database, as a deployment's pods
// share it, and binds each load connection to one of them in turn.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	stripewebhook "github.com/stripe/stripe-go/v82/webhook"

	"github.com/syncd/syncd/internal/chserver"
	"github.com/syncd/syncd/internal/row"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "webhookbench:", err)
		os.Exit(1)
	}
}

type options struct {
	target   string
	secret   string
	dsn      string
	syncd    string
	conns    int
	duration time.Duration
	rate     int
	replicas int
}

func run(args []string, stdout io.Writer) error {
	var o options
	fs := flag.NewFlagSet("webhookbench", flag.ContinueOnError)
	fs.StringVar(&o.target, "target", "", "base URL of a running syncd serve (default: start one)")
	fs.StringVar(&o.secret, "secret", "whsec_webhookbench", "webhook secret the target is configured with")
	fs.StringVar(&o.dsn, "clickhouse-dsn", "", "ClickHouse server for the syncd this program starts, on which a fresh database is made (default: a private server in a temp dir)")
	fs.StringVar(&o.syncd, "syncd", "", "syncd binary to start (default: go build ./cmd/syncd)")
	fs.IntVar(&o.conns, "conns", 512, "concurrent connections, each a keep-alive HTTP/1.1 connection sending one event at a time (Stripe delivers over many)")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "length of each load run")
	fs.IntVar(&o.rate, "rate", 1000, "events per second of the fixed-rate run")
	fs.IntVar(&o.replicas, "replicas", 1, "syncd serve processes to start on the one database; connections are spread across them round robin (ignored with -target)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.replicas < 1 {
		return errors.New("-replicas must be at least 1")
	}

	fmt.Fprintf(stdout, "webhookbench: %d CPUs, GOMAXPROCS %d, %s, %s, load average at start %s\n\n", runtime.NumCPU(),
		runtime.GOMAXPROCS(0), runtime.Version(), time.Now().UTC().Format(time.RFC3339), loadAverage())

	bare := measureVerifyDecode(o.secret, 2*time.Second)
	fmt.Fprintf(stdout, "signature check + envelope decode + normalise, in-process, 1 goroutine: %.0f events/s (%.1f µs each)\n\n",
		bare, 1e6/bare)

	plain, stop, err := plainServer()
	if err != nil {
		return err
	}
	defer stop()

	targets, admins := []string{o.target}, []string(nil)
	if o.target == "" {
		srv, err := startSyncd(o)
		if err != nil {
			return err
		}
		defer srv.stop()
		targets, admins = srv.urls, srv.admins
		// Interrupted, stop the syncd child too (its ClickHouse server
		// dies with this process).
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
		go func() {
			<-sigs
			srv.stop()
			os.Exit(130)
		}()
	}

	syncdName := "syncd"
	if len(targets) > 1 {
		syncdName = fmt.Sprintf("syncd ×%d replicas", len(targets))
		fmt.Fprintf(stdout, "%d syncd serve replicas on one database; each connection bound to one, round robin\n\n", len(targets))
	}
	fmt.Fprintln(stdout, "| run | conns | offered | events/s (2xx) | non-2xx | p50 ack | p99 ack | max ack |")
	fmt.Fprintln(stdout, "|---|---|---|---|---|---|---|---|")
	report := func(name string, conns int, offered string, r result) {
		fmt.Fprintf(stdout, "| %s | %d | %s | %.0f | %d | %s | %s | %s |\n", name, conns, offered, r.rate(),
			r.failed, ms(r.quantile(0.50)), ms(r.quantile(0.99)), ms(r.quantile(1)))
	}
	report("plain net/http 200 handler", o.conns, "max", load([]string{plain}, o.secret, o.conns, 0, o.duration))
	// Warm-up: connections, ClickHouse parts, the sink's first inserts.
	load(targets, o.secret, o.conns, 0, 2*time.Second)
	for _, run := range []struct {
		conns int
		rate  int
	}{{o.conns, 0}, {o.conns, o.rate}} {
		before := sinkStats(admins)
		r := load(targets, o.secret, run.conns, run.rate, o.duration)
		offered := "max"
		if run.rate > 0 {
			offered = fmt.Sprintf("%d/s", run.rate)
		}
		report(syncdName+", object events, durable", run.conns, offered, r)
		if len(admins) > 0 {
			// A 200 waits for the intake row; the transaction row is
			// committed in the background. Count the run as done when that
			// backlog is, so the next run does not inherit it.
			backlog := queuedRows(admins)
			drained, ok := waitDrained(admins, 2*time.Minute)
			after := sinkStats(admins)
			n, secs := after.inserts-before.inserts, after.seconds-before.seconds
			if n > 0 {
				l := fmt.Sprintf("%s: %.0f inserts, %.0f rows each, %.1f ms each (mean); rows: %s; queued when the load stopped: %.0f rows, all committed %s later",
					offered, n, (after.total()-before.total())/n, 1000*secs/n, after.minus(before), backlog, drained.Round(10*time.Millisecond))
				if !ok {
					l += " (NOT drained: gave up)"
				}
				inserts = append(inserts, l)
			}
		}
	}
	if len(inserts) > 0 {
		fmt.Fprintln(stdout, "\nsyncd's ClickHouse inserts (all tables) during each run and its background drain:")
		for _, l := range inserts {
			fmt.Fprintln(stdout, "  "+l)
		}
	}
	return nil
}

var inserts []string

type stats struct {
	inserts, seconds float64
	rows             map[string]float64 // by table
}

func (s stats) total() float64 {
	t := 0.0
	for _, v := range s.rows {
		t += v
	}
	return t
}

// minus lists the rows written per table since before.
func (s stats) minus(before stats) string {
	var parts []string
	for table, v := range s.rows {
		if d := v - before.rows[table]; d > 0 {
			parts = append(parts, fmt.Sprintf("%s %.0f", table, d))
		}
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

// queuedRows sums syncd_sink_queue_rows over the replicas; -1 when any
// is unknown.
func queuedRows(admins []string) float64 {
	total := 0.0
	for _, admin := range admins {
		v := -1.0
		scrapeMetrics(admin, func(name string, value float64) {
			if name == "syncd_sink_queue_rows" {
				v = value
			}
		})
		if v < 0 {
			return -1
		}
		total += v
	}
	return total
}

// waitDrained waits until every replica's sink queue is empty and says
// how long that took.
func waitDrained(admins []string, limit time.Duration) (time.Duration, bool) {
	start := time.Now()
	for time.Since(start) < limit {
		if queuedRows(admins) == 0 {
			return time.Since(start), true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start), false
}

// sinkStats reads inserts, rows per table and insert seconds from each
// replica's /metrics, summed.
func sinkStats(admins []string) stats {
	out := stats{rows: map[string]float64{}}
	for _, admin := range admins {
		scrapeMetrics(admin, func(name string, v float64) {
			switch {
			case name == "syncd_sink_flush_seconds_count":
				out.inserts += v
			case strings.HasPrefix(name, "syncd_sink_rows_total{"):
				table := strings.TrimSuffix(strings.TrimPrefix(name, `syncd_sink_rows_total{table="`), `"}`)
				out.rows[table] += v
			case name == "syncd_sink_flush_seconds_sum":
				out.seconds += v
			}
		})
	}
	return out
}

// scrapeMetrics calls fn with each sample of syncd's /metrics.
func scrapeMetrics(admin string, fn func(name string, value float64)) {
	if admin == "" {
		return
	}
	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		return
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(value, &v); err != nil {
			continue
		}
		fn(name, v)
	}
}

// loadAverage is /proc/loadavg's one-minute figure: how much else the
// machine was doing.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Fields(string(b))[0]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

var seq atomic.Int64

// object returns a unique customer_balance_transaction event.
func object() []byte {
	n := seq.Add(1)
	now := time.Now().Unix()
	return fmt.Appendf(nil, `{"id":"evt_bench_%d","object":"event","account":null,"api_version":"2025-08-27.basil","created":%d,`+
		`"data":{"object":{"id":"cbtxn_bench_%d","object":"customer_balance_transaction","amount":-%d,"checkout_session":null,`+
		`"created":%d,"credit_note":null,"currency":"usd","customer":"cus_bench_%d","customer_account":null,"description":"bench credit",`+
		`"ending_balance":-%d,"invoice":null,"livemode":false,"metadata":{"source":"webhookbench"},"type":"adjustment"}},`+
		`"livemode":false,"pending_webhooks":1,"request":{"id":"req_bench","idempotency_key":null},"type":"customer_balance_transaction.created"}`,
		n, now, n, 100+n%900, now, n%5000, 100+n%900)
}

// measureVerifyDecode runs, in a loop, the work the route does before it
// queues rows: signature check, one decode of the envelope, the object's
// normalisation.
func measureVerifyDecode(secret string, d time.Duration) float64 {
	body := object()
	header := stripewebhook.GenerateTestSignedPayload(&stripewebhook.UnsignedPayload{Payload: body, Secret: secret, Timestamp: time.Now()}).Header
	var env struct {
		ID      string `json:"id"`
		Type    string `json:"type"`
		Created int64  `json:"created"`
		Data    struct {
			Object json.RawMessage `json:"object"`
		} `json:"data"`
	}
	start := time.Now()
	n := 0
	for time.Since(start) < d {
		for range 100 {
			if err := stripewebhook.ValidatePayloadWithTolerance(body, header, secret, 5*time.Minute); err != nil {
				panic(err)
			}
			if err := json.Unmarshal(body, &env); err != nil {
				panic(err)
			}
			txn, err := row.NormalizeStripe(env.Data.Object, row.Meta{Source: row.SourceWebhook, EventID: &env.ID, ObservedAt: time.Unix(env.Created, 0)})
			if err != nil {
				panic(err)
			}
			_ = txn.Values()
			n++
		}
	}
	return float64(n) / time.Since(start).Seconds()
}

// plainServer is net/http with a handler that reads the body and answers
// 200: what the machine can do with no work behind the route.
func plainServer() (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusOK)
	})}
	go srv.Serve(ln)
	return "http://" + ln.Addr().String(), func() { srv.Close() }, nil
}

type result struct {
	ok, failed int
	elapsed    time.Duration
	latencies  []time.Duration
}

func (r result) rate() float64 { return float64(r.ok) / r.elapsed.Seconds() }

func (r result) quantile(q float64) time.Duration {
	if len(r.latencies) == 0 {
		return 0
	}
	i := int(q * float64(len(r.latencies)-1))
	return r.latencies[i]
}

// load POSTs signed object events to <base>/webhooks/stripe from conns
// workers for d, worker i bound to bases[i % len(bases)]: as fast as answers come (rate 0), or at rate events/s
// with latency measured from each event's scheduled time, so a stall
// counts against every event it delays. Each worker keeps one HTTP/1.1
// connection alive, as a Stripe delivery worker does, and speaks HTTP
// itself (poster): net/http's client would cost this program, which shares
// the two cores with syncd and ClickHouse, about three times the CPU.
func load(bases []string, secret string, conns, rate int, d time.Duration) result {
	hosts := make([]string, len(bases))
	for i, base := range bases {
		u, err := url.Parse(base)
		if err != nil {
			panic(err)
		}
		hosts[i] = u.Host
	}
	var (
		mu  sync.Mutex
		res result
		wg  sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(d)
	var schedule chan time.Time
	if rate > 0 {
		schedule = make(chan time.Time, rate)
		go func() {
			defer close(schedule)
			interval := time.Second / time.Duration(rate)
			for i := 0; ; i++ {
				at := start.Add(time.Duration(i) * interval)
				if at.After(deadline) {
					return
				}
				time.Sleep(time.Until(at))
				schedule <- at
			}
		}()
	}
	for i := range conns {
		wg.Go(func() {
			p := &poster{addr: hosts[i%len(hosts)], path: "/webhooks/stripe"}
			defer p.close()
			var lat []time.Duration
			ok, failed := 0, 0
			for {
				var began time.Time
				if schedule != nil {
					at, more := <-schedule
					if !more {
						break
					}
					began = at
				} else {
					if time.Now().After(deadline) {
						break
					}
					began = time.Now()
				}
				body := object()
				sig := stripewebhook.GenerateTestSignedPayload(&stripewebhook.UnsignedPayload{Payload: body, Secret: secret, Timestamp: time.Now()}).Header
				if status, err := p.post(sig, body); err == nil && status == http.StatusOK {
					ok++
					lat = append(lat, time.Since(began))
				} else {
					failed++
				}
			}
			mu.Lock()
			res.ok += ok
			res.failed += failed
			res.latencies = append(res.latencies, lat...)
			mu.Unlock()
		})
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	slices.Sort(res.latencies)
	return res
}

// poster sends webhook POSTs over one keep-alive HTTP/1.1 connection,
// redialling after an error or a "Connection: close".
type poster struct {
	addr, path string
	conn       net.Conn
	r          *bufio.Reader
	req        []byte
}

func (p *poster) close() {
	if p.conn != nil {
		p.conn.Close()
		p.conn = nil
	}
}

// post sends one signed event and returns the response's status code
// once the whole response is read.
func (p *poster) post(sig string, body []byte) (int, error) {
	if p.conn == nil {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			return 0, err
		}
		p.conn, p.r = c, bufio.NewReaderSize(c, 4096)
	}
	_ = p.conn.SetDeadline(time.Now().Add(30 * time.Second))
	p.req = fmt.Appendf(p.req[:0], "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nStripe-Signature: %s\r\nContent-Length: %d\r\n\r\n",
		p.path, p.addr, sig, len(body))
	p.req = append(p.req, body...)
	status, keep, err := p.exchange()
	if err != nil || !keep {
		p.close()
	}
	return status, err
}

func (p *poster) exchange() (status int, keep bool, err error) {
	if _, err := p.conn.Write(p.req); err != nil {
		return 0, false, err
	}
	line, err := p.r.ReadSlice('\n')
	if err != nil {
		return 0, false, err
	}
	// HTTP/1.1 200 OK
	if len(line) < 12 || !strings.HasPrefix(string(line), "HTTP/1.") {
		return 0, false, fmt.Errorf("bad status line %q", line)
	}
	if status, err = strconv.Atoi(string(line[9:12])); err != nil {
		return 0, false, fmt.Errorf("bad status line %q", line)
	}
	length, chunked, keep := -1, false, true
	for {
		h, err := p.r.ReadSlice('\n')
		if err != nil {
			return 0, false, err
		}
		hs := strings.TrimRight(string(h), "\r\n")
		if hs == "" {
			break
		}
		name, value, _ := strings.Cut(hs, ":")
		value = strings.TrimSpace(value)
		switch {
		case strings.EqualFold(name, "Content-Length"):
			if length, err = strconv.Atoi(value); err != nil || length < 0 {
				return 0, false, fmt.Errorf("bad Content-Length %q", value)
			}
		case strings.EqualFold(name, "Transfer-Encoding"):
			chunked = strings.EqualFold(value, "chunked")
		case strings.EqualFold(name, "Connection"):
			keep = !strings.EqualFold(value, "close")
		}
	}
	switch {
	case chunked:
		for {
			h, err := p.r.ReadSlice('\n')
			if err != nil {
				return 0, false, err
			}
			n, err := strconv.ParseUint(strings.TrimSpace(string(h)), 16, 31)
			if err != nil {
				return 0, false, fmt.Errorf("bad chunk size %q", h)
			}
			if _, err := p.r.Discard(int(n) + 2); err != nil { // the chunk and its CRLF
				return 0, false, err
			}
			if n == 0 {
				return status, keep, nil
			}
		}
	case length >= 0:
		_, err = p.r.Discard(length)
		return status, keep, err
	}
	// Neither: the body runs to the end of the connection.
	_, err = io.Copy(io.Discard, p.r)
	return status, false, err
}

// syncdServer is one or more `syncd serve` child processes on one fresh
// database: their public and admin base URLs.
type syncdServer struct {
	urls, admins []string
	stop         func()
}

func startSyncd(o options) (*syncdServer, error) {
	bin := o.syncd
	var cleanup []func()
	undo := func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
	}
	if bin == "" {
		dir, err := os.MkdirTemp("", "webhookbench-")
		if err != nil {
			return nil, err
		}
		cleanup = append(cleanup, func() { os.RemoveAll(dir) })
		bin = filepath.Join(dir, "syncd")
		if out, err := exec.Command("go", "build", "-o", bin, "github.com/syncd/syncd/cmd/syncd").CombinedOutput(); err != nil {
			undo()
			return nil, fmt.Errorf("go build syncd: %v\n%s", err, out)
		}
	}
	server := o.dsn
	if server == "" {
		dir, err := os.MkdirTemp("", "webhookbench-ch-")
		if err != nil {
			undo()
			return nil, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		ch, err := chserver.Start(ctx, dir)
		cancel()
		if err != nil {
			os.RemoveAll(dir)
			undo()
			return nil, err
		}
		cleanup = append(cleanup, func() { _ = ch.Stop(); os.RemoveAll(dir) })
		server = ch.DSN("default")
	}
	dsn, drop, err := freshDatabase(server)
	if err != nil {
		undo()
		return nil, err
	}
	cleanup = append(cleanup, drop)
	if out, err := exec.Command(bin, "migrate", "--clickhouse-dsn", dsn).CombinedOutput(); err != nil {
		undo()
		return nil, fmt.Errorf("syncd migrate: %v\n%s", err, out)
	}
	s := &syncdServer{stop: undo}
	for range o.replicas {
		web, admin, stop, err := startServe(bin, dsn, o.secret)
		if err != nil {
			undo()
			return nil, err
		}
		cleanup = append(cleanup, stop)
		s.urls = append(s.urls, web)
		s.admins = append(s.admins, admin)
	}
	for _, u := range s.urls {
		if err := waitWritable(u, o.secret); err != nil {
			undo()
			return nil, err
		}
	}
	return s, nil
}

// startServe starts one `syncd serve` on dsn, each on its own ports, and
// returns its public and admin base URLs once it has logged them.
func startServe(bin, dsn, secret string) (web, admin string, stop func(), err error) {
	cmd := exec.Command(bin, "serve", "--clickhouse-dsn", dsn, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--stripe-api-key", "sk_test_webhookbench", "--stripe-api-url", "http://127.0.0.1:1",
		"--stripe-webhook-secret", secret)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return "", "", nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", "", nil, err
	}
	stop = func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}
	addr := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sent := false
		for sc.Scan() {
			var m map[string]any
			if !sent && json.Unmarshal(sc.Bytes(), &m) == nil && m["msg"] == "serving" {
				addr <- [2]string{m["listen"].(string), m["admin_listen"].(string)}
				sent = true
			}
			if lvl, _ := m["level"].(string); lvl == "error" {
				fmt.Fprintln(os.Stderr, "syncd:", sc.Text())
			}
		}
	}()
	select {
	case a := <-addr:
		return "http://" + a[0], "http://" + a[1], stop, nil
	case <-time.After(30 * time.Second):
		stop()
		return "", "", nil, errors.New("syncd serve did not log its address within 30s")
	}
}

// waitWritable waits until syncd has reached ClickHouse and stores events.
func waitWritable(base, secret string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		r := load([]string{base}, secret, 1, 0, 10*time.Millisecond)
		if r.ok > 0 {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return errors.New("syncd did not store an event within 30s")
}

// freshDatabase returns dsn pointing at a new database, and a func that
// drops it.
func freshDatabase(dsn string) (string, func(), error) {
	u, err := url.Parse(dsn)
	if err != nil {
		return "", nil, errors.New("-clickhouse-dsn is not a URL")
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	db := "syncd_webhookbench_" + hex.EncodeToString(b)
	u.Path = "/" + db
	admin := *u
	admin.Path = "/default"
	opts, err := clickhouse.ParseDSN(admin.String())
	if err != nil {
		return "", nil, err
	}
	conn, err := clickhouse.Open(opts)
	if err != nil {
		return "", nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := conn.Exec(ctx, "CREATE DATABASE "+db); err != nil {
		conn.Close()
		return "", nil, fmt.Errorf("create database %s: %w", db, err)
	}
	drop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+db)
		conn.Close()
	}
	return u.String(), drop, nil
}
