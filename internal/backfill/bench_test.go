package backfill

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/syncd/syncd/internal/config"
	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/internal/sink"
	"github.com/syncd/syncd/internal/stripeemu"
)

// BenchmarkRateLimitUtilisation: 150 ms per request and --rate-limit 100;
// reports achieved requests/s ÷ the limit over the whole run (goal ≥ 0.95),
// and between the 5th and 95th percentile request. Two sizes: a run of about
// 17 s, and one of about a minute. A run pays a fixed cost that no
// concurrency removes (the first customer page's latency before anything
// else can be asked, the last request's latency, and committing the last
// rows and checkpoints); the longer the run, the less it weighs.
//
//	go test ./internal/backfill -run '^$' -bench RateLimitUtilisation -benchtime 1x
func BenchmarkRateLimitUtilisation(b *testing.B) {
	for _, customers := range []int{1500, 5000} {
		b.Run(fmt.Sprintf("customers=%d", customers), func(b *testing.B) { rateLimitUtilisation(b, customers) })
	}
}

func rateLimitUtilisation(b *testing.B, customers int) {
	const limit = 100
	// The sink batches as `syncd backfill` does by default.
	w := newWarehouseWith(b, backfillSink())
	_, url := newEmulator(b, stripeemu.Config{Seed: 11, Customers: customers, Latency: 150 * time.Millisecond})
	for b.Loop() {
		rec := &stamps{base: http.DefaultTransport}
		src := NewStripeSource(StripeOptions{APIKey: testKey, URL: url, RateLimit: limit, Retry: fastRetry,
			Metrics: w.m, Logger: testLogger(b), HTTPClient: &http.Client{Transport: rec}})
		start := time.Now()
		sum, err := Run(context.Background(), Options{Source: src, Conn: w.conn, Sink: w.sink, Metrics: w.m,
			Logger: testLogger(b), Full: true})
		end := time.Now()
		if err != nil {
			b.Fatal(err)
		}
		perSec := float64(sum.Requests) / sum.Duration.Seconds()
		steady := rec.steady()
		b.ReportMetric(perSec/limit, "utilisation")
		b.ReportMetric(steady/limit, "steady-utilisation")
		b.Logf("%v: %.1f req/s of %d over the whole run; %.1f req/s between the 5th and 95th percentile request", sum, perSec, limit, steady)
		b.Logf("first request %s after the start; last %s before the end; 95th percentile request %s before the end",
			rec.at[0].Sub(start).Round(time.Millisecond), end.Sub(rec.at[len(rec.at)-1]).Round(time.Millisecond), end.Sub(rec.at[len(rec.at)*95/100]).Round(time.Millisecond))
		b.Logf("requests sent per 200 ms: %s", rec.buckets(start, end, 200*time.Millisecond))
	}
}

// BenchmarkRowsIntoClickHouse: no latency, no limit, a few customers with
// very many transactions; reports rows/s committed (goal ≥ 100,000) and, as
// the baseline measured in the same run on the same server, a bare
// clickhouse-go PrepareBatch/Append/Send of the same rows in inserts of the
// same size, one at a time, into a copy of the table. The backfill's sink is
// set as `syncd backfill` sets it (SinkOptions: 50,000-row batches, one
// sorted INSERT per partition, two in flight). Read the ratio: absolute
// figures on a shared 2-core machine move with its load.
//
//	go test ./internal/backfill -run '^$' -bench RowsIntoClickHouse -benchtime 1x
func BenchmarkRowsIntoClickHouse(b *testing.B) {
	w := newWarehouseWith(b, backfillSink())
	batch := config.BackfillBatchRows
	e, url := newEmulator(b, stripeemu.Config{Seed: 12, Customers: 1,
		HeavyCustomers: []int{150000, 150000, 150000, 150000}})
	// Twice: the first run grows the heap from nothing, which the backfill
	// that follows would not pay again.
	bareInsert(b, w.conn, e.Truth(), batch)
	bare := bareInsert(b, w.conn, e.Truth(), batch)
	for b.Loop() {
		src := newSource(b, url, w.m, 0)
		c0 := takeCPU()
		sum, err := Run(context.Background(), Options{Source: src, Conn: w.conn, Sink: w.sink, Metrics: w.m,
			Logger: testLogger(b), Full: true, Concurrency: 4})
		if err != nil {
			b.Fatal(err)
		}
		cpu := takeCPU().since(c0, sum.Rows)
		perSec := float64(sum.Rows) / sum.Duration.Seconds()
		b.ReportMetric(perSec, "rows/s")
		b.ReportMetric(bare.perSec, "bare-rows/s")
		b.ReportMetric(perSec/bare.perSec, "of-bare")
		b.Logf("%v: %.0f rows/s, CPU per row: %s", sum, perSec, cpu)
		b.Logf("bare insert of the same rows: %.0f rows/s, CPU per row: %s; backfill ÷ bare = %.2f", bare.perSec, bare.cpu, perSec/bare.perSec)
	}
}

// backfillSink is the sink's batching as `syncd backfill` sets it by default.
func backfillSink() sink.Options {
	return SinkOptions(sink.Options{BatchRows: config.BackfillBatchRows, FlushInterval: config.BackfillFlushInterval})
}

// cpuTimes is CPU time used so far by this process and by the ClickHouse
// server it started (none when the tests use SYNCD_TEST_CLICKHOUSE_DSN): a
// child named clickhouse-server or clickhouse, or the 26.x engine's
// chdb-server.
type cpuTimes struct{ self, server time.Duration }

func takeCPU() cpuTimes {
	var c cpuTimes
	me := os.Getpid()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid … utime stime: fields 4, 14 and 15.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 13 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		ticks := time.Duration(u+s) * 10 * time.Millisecond // USER_HZ is 100 on Linux
		switch {
		case pid == me:
			c.self = ticks
		case ppid == me && (bytes.Contains(stat[:i], []byte("clickhouse")) || bytes.Contains(stat[:i], []byte("chdb"))):
			c.server += ticks
		}
	}
	return c
}

// since renders the CPU used per row since c0.
func (c cpuTimes) since(c0 cpuTimes, rows int64) string {
	per := func(d time.Duration) string {
		return fmt.Sprintf("%.1fµs", float64(d.Nanoseconds())/1e3/float64(rows))
	}
	return fmt.Sprintf("syncd+emulator %s, clickhouse-server %s", per(c.self-c0.self), per(c.server-c0.server))
}

// bareInsert times clickhouse-go inserting txns, normalised beforehand, in
// inserts of batch rows into a scratch copy of the transaction table, which
// it drops afterwards (its merges would otherwise run on into the
// measurement that follows).
func bareInsert(b *testing.B, conn driver.Conn, txns []stripeemu.Txn, batch int) bareResult {
	b.Helper()
	ctx := context.Background()
	now := time.Now()
	rows := make([][]any, len(txns))
	for i, t := range txns {
		r, err := row.NormalizeStripe(t.Raw, row.Meta{AccountID: t.Account, Source: row.SourceBackfill, ObservedAt: now})
		if err != nil {
			b.Fatal(err)
		}
		rows[i] = r.Values()
	}
	const scratch = "bare_stripe_txns"
	if err := conn.Exec(ctx, "CREATE TABLE "+scratch+" AS "+row.StripeTxnTable.Name); err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := conn.Exec(ctx, "DROP TABLE "+scratch); err != nil {
			b.Fatal(err)
		}
	}()
	insert := "INSERT INTO " + scratch + " (" + strings.Join(row.StripeTxnTable.Columns, ", ") + ")"
	c0 := takeCPU()
	start := time.Now()
	for lo := 0; lo < len(rows); lo += batch {
		pb, err := conn.PrepareBatch(ctx, insert)
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range rows[lo:min(lo+batch, len(rows))] {
			if err := pb.Append(r...); err != nil {
				b.Fatal(err)
			}
		}
		if err := pb.Send(); err != nil {
			b.Fatal(err)
		}
	}
	return bareResult{perSec: float64(len(rows)) / time.Since(start).Seconds(), cpu: takeCPU().since(c0, int64(len(rows)))}
}

type bareResult struct {
	perSec float64
	cpu    string
}

// stamps records when each request was sent.
type stamps struct {
	base http.RoundTripper
	mu   sync.Mutex
	at   []time.Time
}

func (s *stamps) RoundTrip(r *http.Request) (*http.Response, error) {
	s.mu.Lock()
	s.at = append(s.at, time.Now())
	s.mu.Unlock()
	return s.base.RoundTrip(r)
}

// buckets counts the requests sent in each interval of width d from start
// to end, the first and last second of it only.
func (s *stamps) buckets(start, end time.Time, d time.Duration) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := make([]int, int(end.Sub(start)/d)+1)
	for _, t := range s.at {
		c[int(t.Sub(start)/d)]++
	}
	k := int(time.Second / d)
	if len(c) <= 2*k {
		return fmt.Sprint(c)
	}
	return fmt.Sprintf("first second %v … last second %v", c[:k], c[len(c)-k:])
}

// steady is the request rate between the 5th and the 95th percentile
// request: the run without its start-up and its tail (a customer with
// thousands of transactions is read page by page, one request at a time).
func (s *stamps) steady() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.at)
	lo, hi := n/20, n-n/20-1
	if hi <= lo {
		return 0
	}
	return float64(hi-lo) / s.at[hi].Sub(s.at[lo]).Seconds()
}
