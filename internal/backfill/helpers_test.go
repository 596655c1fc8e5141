package backfill

import (
	"context"
	"net/http/httptest"
	"sort"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/syncd/syncd/internal/chtest"
	"github.com/syncd/syncd/internal/metrics"
	"github.com/syncd/syncd/internal/sink"
	"github.com/syncd/syncd/internal/stripeemu"
)

func TestMain(m *testing.M) { chtest.Main(m) }

const testKey = "sk_test_backfill0123456789"

// warehouse is a migrated database with a sink writing to it.
type warehouse struct {
	dsn  string
	conn driver.Conn
	sink *sink.Sink
	m    *metrics.Metrics
}

func newWarehouse(t testing.TB, batchRows int) *warehouse {
	t.Helper()
	return newWarehouseWith(t, sink.Options{BatchRows: batchRows, FlushInterval: 50 * time.Millisecond})
}

// newWarehouseWith is newWarehouse with the sink's batching as given.
func newWarehouseWith(t testing.TB, so sink.Options) *warehouse {
	t.Helper()
	ctx := context.Background()
	dsn := chtest.DSN(t)
	conn, err := sink.Open(ctx, dsn, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := sink.Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}
	m := metrics.New()
	so.Metrics, so.Logger = m, testLogger(t)
	so.MinBackoff, so.MaxBackoff = 50*time.Millisecond, time.Second
	sk := sink.New(conn, so)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = sk.Close(ctx)
	})
	return &warehouse{dsn: dsn, conn: conn, sink: sk, m: m}
}

func newEmulator(t testing.TB, cfg stripeemu.Config) (*stripeemu.Emulator, string) {
	t.Helper()
	e, err := stripeemu.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(e)
	t.Cleanup(func() { srv.Close(); _ = e.Close() })
	return e, srv.URL
}

// fastRetry keeps fault tests quick.
var fastRetry = Retry{Initial: 5 * time.Millisecond, Max: 50 * time.Millisecond, Attempts: 8, MaxElapsed: 10 * time.Second}

func newSource(t testing.TB, url string, m *metrics.Metrics, limit float64) *StripeSource {
	return NewStripeSource(StripeOptions{APIKey: testKey, URL: url, RateLimit: limit, Retry: fastRetry,
		Metrics: m, Logger: testLogger(t)})
}

func testLogger(t testing.TB) *zap.Logger {
	return zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
}

// heldRow is what the warehouse holds for one transaction under FINAL.
type heldRow struct {
	Account, ID, Customer, Description string
	Amount, EndingBalance              int64
}

func held(t testing.TB, conn driver.Conn) map[string]heldRow {
	t.Helper()
	rows, err := conn.Query(context.Background(), `SELECT account_id, id, customer, ifNull(description, ''), amount, ending_balance
		FROM stripe_customer_balance_transactions FINAL`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]heldRow{}
	for rows.Next() {
		var h heldRow
		if err := rows.Scan(&h.Account, &h.ID, &h.Customer, &h.Description, &h.Amount, &h.EndingBalance); err != nil {
			t.Fatal(err)
		}
		if _, dup := out[h.ID]; dup {
			t.Fatalf("FINAL returned %s twice", h.ID)
		}
		out[h.ID] = h
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// assertMirrors fails unless the warehouse holds exactly truth.
func assertMirrors(t testing.TB, conn driver.Conn, truth []stripeemu.Txn) {
	t.Helper()
	got := held(t, conn)
	var missing, wrong []string
	for _, tx := range truth {
		h, ok := got[tx.ID]
		if !ok {
			missing = append(missing, tx.ID)
			continue
		}
		delete(got, tx.ID)
		desc := ""
		if tx.Description != nil {
			desc = *tx.Description
		}
		if h.Account != tx.Account || h.Customer != tx.Customer || h.Amount != tx.Amount ||
			h.EndingBalance != tx.EndingBalance || h.Description != desc {
			wrong = append(wrong, tx.ID)
		}
	}
	var extra []string
	for id := range got {
		extra = append(extra, id)
	}
	sort.Strings(extra)
	if len(missing)+len(wrong)+len(extra) > 0 {
		t.Fatalf("warehouse differs from the emulator's truth (%d txns): %d missing (e.g. %v), %d wrong (e.g. %v), %d extra (e.g. %v)",
			len(truth), len(missing), firstFew(missing), len(wrong), firstFew(wrong), len(extra), firstFew(extra))
	}
}

func firstFew(s []string) []string {
	if len(s) > 3 {
		return s[:3]
	}
	return s
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
