package sink_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"

	"github.com/syncd/syncd/internal/chtest"
	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/internal/sink"
)

func TestMain(m *testing.M) { chtest.Main(m) }

func migrated(t testing.TB, dsn string) driver.Conn {
	t.Helper()
	ctx := context.Background()
	conn, err := sink.Open(ctx, dsn, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := sink.Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}
	return conn
}

func fixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("../row/testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func stripeRow(t testing.TB, id string, amount int64, observed time.Time) *row.StripeTxn {
	t.Helper()
	return stripeRowAt(t, id, amount, 1680216086, observed)
}

// stripeRowAt is stripeRow created at the Unix time created.
func stripeRowAt(t testing.TB, id string, amount, created int64, observed time.Time) *row.StripeTxn {
	t.Helper()
	return stripeRowOf(t, row.Meta{Source: row.SourceBackfill, ObservedAt: observed}, id, "cus_1", amount, created)
}

// stripeRowOf is a transaction of customer, observed as m says.
func stripeRowOf(t testing.TB, m row.Meta, id, customer string, amount, created int64) *row.StripeTxn {
	t.Helper()
	raw := fmt.Sprintf(`{"id":%q,"object":"customer_balance_transaction","amount":%d,"checkout_session":null,"created":%d,
"credit_note":null,"currency":"usd","customer":%q,"customer_account":null,"description":null,"ending_balance":%d,
"invoice":null,"livemode":false,"metadata":{},"type":"adjustment"}`, id, amount, created, customer, amount)
	r, err := row.NormalizeStripe([]byte(raw), m)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func write(t testing.TB, s *sink.Sink, tbl sink.Table, rows ...[]any) {
	t.Helper()
	ack, err := s.TryWrite(tbl, rows...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ack.Wait(ctx); err != nil {
		t.Fatal(err)
	}
}

// Every column comes back as written, NULLs included.
func TestRoundTripEveryColumn(t *testing.T) {
	conn := migrated(t, chtest.DSN(t))
	s := sink.New(conn, sink.Options{})
	defer s.Close(context.Background())
	ctx := context.Background()
	observed := time.Date(2026, 11, 23, 3, 0, 0, 0, time.UTC)

	for _, name := range []string{"stripe_documented.json", "stripe_expanded.json"} {
		ev := "evt_9"
		want, err := row.NormalizeStripe(fixture(t, name), row.Meta{AccountID: "acct_9", Source: row.SourceWebhook, EventID: &ev, ObservedAt: observed})
		if err != nil {
			t.Fatal(err)
		}
		write(t, s, row.StripeTxnTable, want.Values())
		var got row.StripeTxn
		var livemode uint8
		var raw string
		err = conn.QueryRow(ctx, `SELECT account_id, id, livemode, customer, customer_account, amount, currency, created, type,
			description, ending_balance, invoice, credit_note, checkout_session, metadata.key, metadata.value, _raw, _source,
			_event_id, _observed_at, _version, _synced_at FROM stripe_customer_balance_transactions FINAL WHERE id = ?`, want.ID).Scan(
			&got.AccountID, &got.ID, &livemode, &got.Customer, &got.CustomerAccount, &got.Amount, &got.Currency, &got.Created,
			&got.Type, &got.Description, &got.EndingBalance, &got.Invoice, &got.CreditNote, &got.CheckoutSession,
			&got.MetadataKeys, &got.MetadataValues, &raw, &got.Source, &got.EventID, &got.ObservedAt, &got.Version, &got.SyncedAt)
		if err != nil {
			t.Fatal(err)
		}
		got.Livemode, got.Raw = livemode == 1, []byte(raw)
		want.SyncedAt = want.SyncedAt.Truncate(time.Second)
		for _, tm := range []*time.Time{&got.Created, &got.ObservedAt, &got.SyncedAt} {
			*tm = tm.UTC()
		}
		if !reflect.DeepEqual(&got, want) {
			t.Errorf("%s:\n got %+v\nwant %+v", name, got, *want)
		}
	}

	// Orb: decimals exact, NULLs kept.
	for _, amount := range []string{"0.000000000001", "123456789012345.5", "-42.125", "11.00"} {
		raw := fmt.Sprintf(`{"id":"o-%s","action":"manual_adjustment","amount":%q,"created_at":"2024-03-27T15:42:29.551",
"credit_note":null,"description":null,"ending_balance":%q,"invoice":{"id":"inv"},"starting_balance":"0","type":"increment"}`, amount, amount, amount)
		want, err := row.NormalizeOrb([]byte(raw), row.OrbCustomer{ID: "c1", Currency: "USD"}, row.Meta{Source: row.SourceBackfill, ObservedAt: observed})
		if err != nil {
			t.Fatal(err)
		}
		write(t, s, row.OrbTxnTable, want.Values())
		var got row.OrbTxn
		err = conn.QueryRow(ctx, `SELECT id, customer_id, external_customer_id, amount, ending_balance, description, invoice_id, credit_note_id, created_at
			FROM orb_customer_balance_transactions FINAL WHERE id = ?`, want.ID).Scan(
			&got.ID, &got.CustomerID, &got.ExternalCustomerID, &got.Amount, &got.EndingBalance, &got.Description, &got.InvoiceID, &got.CreditNoteID, &got.CreatedAt)
		if err != nil {
			t.Fatal(err)
		}
		if !got.Amount.Equal(decimal.RequireFromString(amount)) || !got.EndingBalance.Equal(want.EndingBalance) {
			t.Errorf("amount %s came back as %s", amount, got.Amount)
		}
		if got.ExternalCustomerID != nil || got.Description != nil || got.CreditNoteID != nil || got.InvoiceID == nil || *got.InvoiceID != "inv" {
			t.Errorf("nullable columns: %+v", got)
		}
		if !got.CreatedAt.Equal(time.Date(2024, 3, 27, 15, 42, 29, 0, time.UTC)) {
			t.Errorf("created_at = %v", got.CreatedAt)
		}
	}
}

// A later observation wins, whatever order the writes arrive in.
func TestLaterObservationWins(t *testing.T) {
	conn := migrated(t, chtest.DSN(t))
	s := sink.New(conn, sink.Options{})
	defer s.Close(context.Background())
	t0 := time.Now()
	// Written twice, identical: one row.
	write(t, s, row.StripeTxnTable, stripeRow(t, "cbtxn_dup", 100, t0).Values())
	write(t, s, row.StripeTxnTable, stripeRow(t, "cbtxn_dup", 100, t0).Values())
	// The newer observation first, the older second: the newer stays.
	write(t, s, row.StripeTxnTable, stripeRow(t, "cbtxn_order", 200, t0.Add(time.Second)).Values())
	write(t, s, row.StripeTxnTable, stripeRow(t, "cbtxn_order", 100, t0).Values())
	rows, err := conn.Query(context.Background(), "SELECT id, amount FROM stripe_customer_balance_transactions FINAL ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[string]int64{}
	n := 0
	for rows.Next() {
		var id string
		var amount int64
		if err := rows.Scan(&id, &amount); err != nil {
			t.Fatal(err)
		}
		got[id] = amount
		n++
	}
	if n != 2 || got["cbtxn_dup"] != 100 || got["cbtxn_order"] != 200 {
		t.Errorf("FINAL gave %d rows %v; want cbtxn_dup=100, cbtxn_order=200", n, got)
	}
}

func TestQueueFullIsAnError(t *testing.T) {
	conn := migrated(t, chtest.DSN(t))
	s := sink.New(conn, sink.Options{QueueRows: 10, BatchRows: 10, FlushInterval: time.Hour})
	r := stripeRow(t, "cbtxn_q", 1, time.Now()).Values()
	rows := make([][]any, 10)
	for i := range rows {
		rows[i] = r
	}
	ack, err := s.TryWrite(row.StripeTxnTable, rows[:6]...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.TryWrite(row.StripeTxnTable, rows[:6]...); !errors.Is(err, sink.ErrQueueFull) {
		t.Fatalf("want ErrQueueFull, got %v", err)
	}
	// Close sends what lingered, and the acknowledged write commits.
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := ack.Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.TryWrite(row.StripeTxnTable, r); !errors.Is(err, sink.ErrClosed) {
		t.Fatalf("write after Close: want ErrClosed, got %v", err)
	}
}

func TestRowShapeChecked(t *testing.T) {
	conn := migrated(t, chtest.DSN(t))
	s := sink.New(conn, sink.Options{})
	defer s.Close(context.Background())
	if _, err := s.TryWrite(row.StripeTxnTable, []any{"too", "short"}); err == nil {
		t.Fatal("a row with the wrong number of values must be refused")
	}
	if s.Queued() != 0 {
		t.Fatalf("refused rows still count as queued: %d", s.Queued())
	}
}

// ClickHouse stops mid-stream and comes back: every acknowledged row is
// there, and the writer recovered without a restart.
func TestClickHouseRestartLosesNothingAcknowledged(t *testing.T) {
	t.Run("serve", func(t *testing.T) { restartLosesNothing(t, sink.Options{}) })
	// As a backfill writes: two inserts in flight, each batch one INSERT
	// per month; an outage can fall between the months of one batch.
	t.Run("backfill", func(t *testing.T) { restartLosesNothing(t, sink.Options{Inserts: 2, ByPartition: true}) })
}

func restartLosesNothing(t *testing.T, opts sink.Options) {
	srv := chtest.Private(t)
	conn := migrated(t, srv.DSN("outage"))
	opts.MinBackoff, opts.MaxBackoff, opts.InsertTimeout = 20*time.Millisecond, 200*time.Millisecond, 5*time.Second
	s := sink.New(conn, opts)
	month := time.Date(2025, 1, 15, 0, 0, 0, 0, time.UTC).Unix()

	var mu sync.Mutex
	var acked []string
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			id := fmt.Sprintf("cbtxn_%06d", i)
			created := month + int64(i%3)*31*86400 // three months
			ack, err := s.TryWrite(row.StripeTxnTable, stripeRowAt(t, id, int64(i), created, time.Now()).Values())
			if err != nil {
				continue // refused: never acknowledged, the provider would retry
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if ack.Err() == nil {
					mu.Lock()
					acked = append(acked, id)
					mu.Unlock()
				}
			}()
		}
	}()
	time.Sleep(300 * time.Millisecond)
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	mu.Lock()
	before := len(acked)
	mu.Unlock()
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close after recovery: %v", err)
	}
	wg.Wait()
	if len(acked) <= before {
		t.Fatalf("no writes were acknowledged after the restart (%d before, %d after)", before, len(acked))
	}
	have := map[string]bool{}
	rows, err := conn.Query(context.Background(), "SELECT id FROM stripe_customer_balance_transactions")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		_ = rows.Scan(&id)
		have[id] = true
	}
	rows.Close()
	missing := 0
	for _, id := range acked {
		if !have[id] {
			missing++
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged rows are missing", missing, len(acked))
	}
	t.Logf("%d rows acknowledged across the restart, all present", len(acked))
}

// Close gives up at its deadline when ClickHouse stays down, and says how
// much was not written; the waiting writers see the failure.
func TestCloseReportsWhatCouldNotBeWritten(t *testing.T) {
	srv := chtest.Private(t)
	conn := migrated(t, srv.DSN("down"))
	s := sink.New(conn, sink.Options{MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, InsertTimeout: time.Second})
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	ack, err := s.TryWrite(row.StripeTxnTable, stripeRow(t, "cbtxn_lost", 1, time.Now()).Values())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	err = s.Close(ctx)
	if err == nil {
		t.Fatal("Close must report rows it could not write")
	}
	t.Log(err)
	if ack.Err() == nil {
		t.Fatal("the writer of an unwritten row must not see success")
	}
}

func TestMigrateTwiceAndConcurrently(t *testing.T) {
	dsn := chtest.DSN(t)
	ctx := context.Background()
	schemaOf := func(conn driver.Conn) string {
		rows, err := conn.Query(ctx, "SELECT name, replaceAll(create_table_query, currentDatabase(), 'DB') FROM system.tables WHERE database = currentDatabase() ORDER BY name")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		out := ""
		for rows.Next() {
			var name, q string
			_ = rows.Scan(&name, &q)
			out += q + "\n"
		}
		return out
	}
	conn := migrated(t, dsn)
	first := schemaOf(conn)
	again, err := sink.Migrate(ctx, conn)
	if err != nil || len(again) != 0 {
		t.Fatalf("second migrate applied %v, err %v", again, err)
	}
	if schemaOf(conn) != first {
		t.Fatal("second migrate changed the schema")
	}
	if err := sink.SchemaCurrent(ctx, conn); err != nil {
		t.Fatal(err)
	}

	// Three migrators at once against fresh databases, a few times: 0004
	// drops and recreates views that another migrator may be creating.
	for round := 0; round < 4; round++ {
		fresh := chtest.DSN(t)
		var wg sync.WaitGroup
		errs := make([]error, 3)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := sink.Open(ctx, fresh, true)
				if err != nil {
					errs[i] = err
					return
				}
				defer c.Close()
				_, errs[i] = sink.Migrate(ctx, c)
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatalf("concurrent migrate: %v", err)
			}
		}
		c := migrated(t, fresh)
		if schemaOf(c) != first {
			t.Fatal("concurrent migrations gave a different schema")
		}
	}
}

// StopLingering sends a batch that would otherwise wait for its linger.
func TestStopLingeringSendsAtOnce(t *testing.T) {
	conn := migrated(t, chtest.DSN(t))
	s := sink.New(conn, sink.Options{BatchRows: 1000, FlushInterval: time.Hour})
	defer s.Close(context.Background())
	ack, err := s.TryWrite(row.StripeTxnTable, stripeRow(t, "cbtxn_linger", 1, time.Now()).Values())
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-ack.Done():
		t.Fatal("a lone row was sent before its hour-long linger")
	case <-time.After(200 * time.Millisecond):
	}
	s.StopLingering()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ack.Wait(ctx); err != nil {
		t.Fatalf("after StopLingering the row should commit without waiting out the linger: %v", err)
	}
}

// A batch larger than one block goes as several blocks of one INSERT: every
// row lands once, every column intact, and ClickHouse makes one part of it
// (one block number), as it would of a single block.
func TestBatchOfManyBlocksIsOneInsert(t *testing.T) {
	conn := migrated(t, chtest.DSN(t))
	const n = 5*2048 + 17
	s := sink.New(conn, sink.Options{BatchRows: n, QueueRows: n, FlushInterval: time.Hour})
	now := time.Now()
	rows := make([][]any, n)
	var sum int64
	for i := range rows {
		rows[i] = stripeRow(t, fmt.Sprintf("cbtxn_%06d", i), int64(i), now).Values()
		sum += int64(i)
	}
	ack, err := s.TryWrite(row.StripeTxnTable, rows...)
	if err != nil {
		t.Fatal(err)
	}
	// The linger is an hour: Close is what sends the batch, whole.
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := ack.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	var count, distinct, raws uint64
	var total int64
	if err := conn.QueryRow(context.Background(), `SELECT count(), uniqExact(id), sum(amount), uniqExact(_raw)
		FROM stripe_customer_balance_transactions`).Scan(&count, &distinct, &total, &raws); err != nil {
		t.Fatal(err)
	}
	if count != n || distinct != n || total != sum || raws != n {
		t.Errorf("%d rows, %d ids, %d distinct _raw, sum(amount) %d; want %d, %d, %d, %d", count, distinct, raws, total, n, n, n, sum)
	}
	var blocks uint64
	if err := conn.QueryRow(context.Background(), `SELECT toUInt64(max(max_block_number)) FROM system.parts
		WHERE database = currentDatabase() AND table = 'stripe_customer_balance_transactions'`).Scan(&blocks); err != nil {
		t.Fatal(err)
	}
	if blocks != 1 {
		t.Errorf("the batch made parts up to block number %d; want one insert (block 1)", blocks)
	}
}

// overlapConn is a real connection whose inserts take at least 50 ms and
// which records how many were ever in flight at once.
type overlapConn struct {
	driver.Conn
	now, max atomic.Int64
}

func (c *overlapConn) PrepareBatch(ctx context.Context, query string, opts ...driver.PrepareBatchOption) (driver.Batch, error) {
	b, err := c.Conn.PrepareBatch(ctx, query, opts...)
	if err != nil {
		return nil, err
	}
	n := c.now.Add(1)
	for m := c.max.Load(); n > m && !c.max.CompareAndSwap(m, n); m = c.max.Load() {
	}
	return &overlapBatch{Batch: b, c: c}, nil
}

type overlapBatch struct {
	driver.Batch
	c *overlapConn
}

func (b *overlapBatch) Send() error {
	defer b.c.now.Add(-1)
	time.Sleep(50 * time.Millisecond)
	return b.Batch.Send()
}

// One insert in flight per table by default (the order webhook recovery
// relies on); Options.Inserts allows more, and every row still commits.
func TestInsertsInFlight(t *testing.T) {
	base := migrated(t, chtest.DSN(t))
	for _, inserts := range []int{1, 2} {
		t.Run(fmt.Sprint(inserts), func(t *testing.T) {
			ctx := context.Background()
			if err := base.Exec(ctx, "TRUNCATE TABLE stripe_customer_balance_transactions"); err != nil {
				t.Fatal(err)
			}
			conn := &overlapConn{Conn: base}
			s := sink.New(conn, sink.Options{BatchRows: 100, Inserts: inserts})
			now := time.Now()
			var acks []*sink.Ack
			for i := range 2000 {
				ack, err := s.Write(ctx, row.StripeTxnTable, stripeRow(t, fmt.Sprintf("cbtxn_%d_%06d", inserts, i), int64(i), now).Values())
				if err != nil {
					t.Fatal(err)
				}
				acks = append(acks, ack)
			}
			for _, a := range acks {
				if err := a.Wait(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Close(ctx); err != nil {
				t.Fatal(err)
			}
			var n uint64
			if err := base.QueryRow(ctx, "SELECT count() FROM stripe_customer_balance_transactions").Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 2000 || conn.max.Load() != int64(inserts) {
				t.Errorf("%d rows committed with at most %d inserts in flight; want 2000 with %d", n, conn.max.Load(), inserts)
			}
		})
	}
}

// monthsRows are rows created in three months, interleaved, in two writes
// whose rows span two months each.
func monthsRows(t testing.TB) (writes [2][][]any, perMonth map[string]int) {
	t.Helper()
	months := []int64{
		time.Date(2025, 1, 15, 0, 0, 0, 0, time.UTC).Unix(),
		time.Date(2025, 2, 15, 0, 0, 0, 0, time.UTC).Unix(),
		time.Date(2025, 3, 15, 0, 0, 0, 0, time.UTC).Unix(),
	}
	perMonth = map[string]int{}
	now := time.Now()
	for i := range 6000 {
		w := i % 2
		m := w + i/2%2 // write 0: January and February; write 1: February and March
		r := stripeRowAt(t, fmt.Sprintf("cbtxn_%06d", i), int64(i), months[m]+int64(i), now)
		writes[w] = append(writes[w], r.Values())
		perMonth[r.Created.Format("200601")]++
	}
	return writes, perMonth
}

// tryWrites queues each write's rows into the transaction table.
func tryWrites(t testing.TB, s *sink.Sink, writes ...[][]any) []*sink.Ack {
	t.Helper()
	acks := make([]*sink.Ack, len(writes))
	for i, w := range writes {
		ack, err := s.TryWrite(row.StripeTxnTable, w...)
		if err != nil {
			t.Fatal(err)
		}
		acks[i] = ack
	}
	return acks
}

// partsByMonth reads the rows of each partition of the transaction table,
// and checks that each is one part.
func partsByMonth(t testing.TB, conn driver.Conn) map[string]int {
	t.Helper()
	q, err := conn.Query(context.Background(), `SELECT partition, toUInt64(sum(rows)), count()
		FROM system.parts WHERE database = currentDatabase() AND table = 'stripe_customer_balance_transactions' AND active
		GROUP BY partition`)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	rows := map[string]int{}
	for q.Next() {
		var (
			p    string
			n, c uint64
		)
		if err := q.Scan(&p, &n, &c); err != nil {
			t.Fatal(err)
		}
		if c != 1 {
			t.Errorf("partition %s has %d parts; want 1", p, c)
		}
		rows[p] = int(n)
	}
	if err := q.Err(); err != nil {
		t.Fatal(err)
	}
	return rows
}

// With ByPartition a batch goes as one INSERT per partition; without, as
// one INSERT that ClickHouse splits. The parts made, one per partition, and
// the rows in them are the same either way.
func TestOneInsertPerPartition(t *testing.T) {
	base := migrated(t, chtest.DSN(t))
	for _, byPartition := range []bool{false, true} {
		t.Run(fmt.Sprintf("ByPartition=%v", byPartition), func(t *testing.T) {
			ctx := context.Background()
			if err := base.Exec(ctx, "TRUNCATE TABLE stripe_customer_balance_transactions"); err != nil {
				t.Fatal(err)
			}
			conn := &failConn{Conn: base}
			writes, want := monthsRows(t)
			// One batch: the linger is an hour, and Close sends it.
			s := sink.New(conn, sink.Options{BatchRows: 10000, FlushInterval: time.Hour, ByPartition: byPartition})
			acks := tryWrites(t, s, writes[:]...)
			if err := s.Close(ctx); err != nil {
				t.Fatal(err)
			}
			for _, a := range acks {
				if err := a.Wait(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if got := partsByMonth(t, base); !reflect.DeepEqual(got, want) {
				t.Errorf("rows per partition %v; want %v", got, want)
			}
			wantInserts := []map[string]int{want}
			if byPartition {
				// In the order each month first appears in the batch.
				wantInserts = []map[string]int{{"202501": want["202501"]}, {"202502": want["202502"]}, {"202503": want["202503"]}}
			}
			if !reflect.DeepEqual(conn.inserts, wantInserts) {
				t.Errorf("rows per month of each insert %v; want %v", conn.inserts, wantInserts)
			}
		})
	}
}

// failConn is a real connection whose inserts numbered (from 1) for which
// fail is true fail before sending anything, and which counts the rows of
// each successful insert by key. (Before anything: ClickHouse 18.16 writes
// the blocks of an INSERT whose connection drops, so an insert failing after
// its first 2,048-row block would land that block and make the counts here
// depend on where it failed. The sink's retry then writes those rows again,
// identical, and ReplacingMergeTree keeps one.)
type failConn struct {
	driver.Conn
	fail func(n int64) bool   // nil: none fails
	key  func(r []any) string // nil: stripeMonth
	n    atomic.Int64

	mu      sync.Mutex
	inserts []map[string]int
}

func (c *failConn) PrepareBatch(ctx context.Context, query string, opts ...driver.PrepareBatchOption) (driver.Batch, error) {
	n := c.n.Add(1)
	if c.fail != nil && c.fail(n) {
		return nil, fmt.Errorf("insert %d refused by the test", n)
	}
	b, err := c.Conn.PrepareBatch(ctx, query, opts...)
	if err != nil {
		return nil, err
	}
	return &failBatch{Batch: b, c: c, months: map[string]int{}}, nil
}

// sent is how many rows the successful inserts sent.
func (c *failConn) sent() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, in := range c.inserts {
		for _, k := range in {
			n += k
		}
	}
	return n
}

type failBatch struct {
	driver.Batch
	c      *failConn
	months map[string]int
}

func (b *failBatch) Append(v ...any) error {
	key := b.c.key
	if key == nil {
		key = stripeMonth
	}
	b.months[key(v)]++
	return b.Batch.Append(v...)
}

// stripeMonth is the month a Stripe transaction row was created in.
func stripeMonth(r []any) string { return r[7].(*time.Time).Format("200601") }

func (b *failBatch) Send() error {
	if err := b.Batch.Send(); err != nil {
		return err
	}
	b.c.mu.Lock()
	b.c.inserts = append(b.c.inserts, b.months)
	b.c.mu.Unlock()
	return nil
}

// A failed step of a batch sent by partition is retried alone: the steps
// already committed are not sent again, and every row lands once.
func TestByPartitionRetriesOnlyWhatFailed(t *testing.T) {
	base := migrated(t, chtest.DSN(t))
	conn := &failConn{Conn: base, fail: func(n int64) bool { return n == 2 }}
	s := sink.New(conn, sink.Options{BatchRows: 10000, FlushInterval: time.Hour, ByPartition: true, MinBackoff: 10 * time.Millisecond})
	writes, want := monthsRows(t)
	acks := tryWrites(t, s, writes[:]...)
	ctx := context.Background()
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	for _, a := range acks {
		if err := a.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := conn.sent(); got != 6000 || conn.n.Load() != 4 {
		t.Errorf("%d inserts sent %d rows; want 4 inserts (3 partitions, one retried) sending 6,000 rows", conn.n.Load(), got)
	}
	if got := partsByMonth(t, base); !reflect.DeepEqual(got, want) {
		t.Errorf("rows per partition %v; want %v", got, want)
	}
}

// When Close gives up on a batch sent by partition, the writers whose rows
// were not all committed see the failure, a write wholly committed before
// it sees success, and the queue's count of rows comes back to zero (each
// row released once, committed or not).
func TestByPartitionGivingUp(t *testing.T) {
	base := migrated(t, chtest.DSN(t))
	conn := &failConn{Conn: base, fail: func(n int64) bool { return n > 1 }}
	s := sink.New(conn, sink.Options{BatchRows: 10000, FlushInterval: time.Hour, ByPartition: true,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	writes, _ := monthsRows(t)
	january := writes[0][:0:0]
	for _, r := range writes[0] {
		if stripeMonth(r) == "202501" {
			january = append(january, r)
		}
	}
	acks := tryWrites(t, s, january, writes[1])
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	err := s.Close(ctx)
	if err == nil {
		t.Fatal("Close must report rows it could not write")
	}
	t.Log(err)
	if err := acks[0].Err(); err != nil {
		t.Errorf("January's write, committed by the first insert, sees %v", err)
	}
	if acks[1].Err() == nil {
		t.Error("a write with rows not committed must not see success")
	}
	if q := s.Queued(); q != 0 {
		t.Errorf("Queued() = %d after Close; want 0", q)
	}
	if got := conn.sent(); got != len(january) {
		t.Errorf("%d rows sent; want January's %d", got, len(january))
	}
}

// writerBlocks reads the server's count of blocks written as parts by
// inserts, and of those it found already sorted.
func writerBlocks(t testing.TB, conn driver.Conn) (blocks, sorted uint64) {
	t.Helper()
	if err := conn.QueryRow(context.Background(), `SELECT
		sumIf(value, event = 'MergeTreeDataWriterBlocks'), sumIf(value, event = 'MergeTreeDataWriterBlocksAlreadySorted')
		FROM system.events`).Scan(&blocks, &sorted); err != nil {
		t.Fatal(err)
	}
	return blocks, sorted
}

// Table.Partition and Table.Order agree with the server: rows of several
// accounts, customers and months, queued in no order, go as one INSERT per
// partition that ClickHouse writes as one block (its partitions are the
// sink's) and finds already sorted (its ORDER BY is the sink's). Small
// partitions share one INSERT, which ClickHouse splits, and their parts are
// still found sorted.
func TestTableLayoutsMatchTheServer(t *testing.T) {
	conn := migrated(t, chtest.DSN(t))
	observed := time.Now()
	edge := time.Date(2025, 1, 31, 23, 0, 0, 0, time.UTC).Unix() // a month's edge
	// The i-th of n rows: ids and times are permutations of i, so rows are
	// queued in no order.
	at := func(i, n int) int64 { return edge + int64(i*37%7200) }
	stripe := func(i, n int, created int64) []any {
		m := row.Meta{AccountID: fmt.Sprintf("acct_%d", i%2), Source: row.SourceBackfill, ObservedAt: observed}
		return stripeRowOf(t, m, fmt.Sprintf("cbtxn_%d", (i*7919)%n), fmt.Sprintf("cus_%d", i%3), 1, created).Values()
	}
	orb := func(i, n int, created int64) []any {
		raw := fmt.Sprintf(`{"id":"o-%d","action":"manual_adjustment","amount":"1","created_at":%q,"credit_note":null,
"description":null,"ending_balance":"1","invoice":null,"starting_balance":"0","type":"increment"}`,
			(i*7919)%n, time.Unix(created, 0).UTC().Format("2006-01-02T15:04:05"))
		r, err := row.NormalizeOrb([]byte(raw), row.OrbCustomer{ID: fmt.Sprintf("c%d", i%3), Currency: "USD"}, row.Meta{Source: row.SourceBackfill, ObservedAt: observed})
		if err != nil {
			t.Fatal(err)
		}
		return r.Values()
	}
	// Two hours across the edge: ~2,000 rows in each month.
	edgeRows := func(mk func(i, n int, created int64) []any) [][]any {
		rows := make([][]any, 4000)
		for i := range rows {
			rows[i] = mk(i, len(rows), at(i, len(rows)))
		}
		return rows
	}
	// 2,000 rows in January and 20 in each of March to July.
	smallMonths := func() [][]any {
		var rows [][]any
		for i := range 2100 {
			created := at(i, 2100) - 3600 // January
			if i%21 == 20 {
				created = time.Date(2025, time.Month(3+i%5), 15, 0, 0, i, 0, time.UTC).Unix()
			}
			rows = append(rows, stripe(i, 2100, created))
		}
		return rows
	}
	for _, tc := range []struct {
		name            string
		table           sink.Table
		rows            [][]any
		inserts, blocks int
	}{
		{"stripe", row.StripeTxnTable, edgeRows(stripe), 2, 2},
		{"orb", row.OrbTxnTable, edgeRows(orb), 2, 2},
		{"stripe, small months", row.StripeTxnTable, smallMonths(), 2, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := conn.Exec(context.Background(), "TRUNCATE TABLE "+tc.table.Name); err != nil {
				t.Fatal(err)
			}
			counted := &failConn{Conn: conn, key: func([]any) string { return "" }}
			s := sink.New(counted, sink.Options{BatchRows: len(tc.rows), FlushInterval: time.Hour, ByPartition: true})
			blocks0, sorted0 := writerBlocks(t, conn)
			ack, err := s.TryWrite(tc.table, tc.rows...)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			if err := ack.Err(); err != nil {
				t.Fatal(err)
			}
			blocks, sorted := writerBlocks(t, conn)
			if inserts := int(counted.n.Load()); inserts != tc.inserts || int(blocks-blocks0) != tc.blocks || sorted-sorted0 != blocks-blocks0 {
				t.Errorf("%d inserts made %d blocks, %d of them already sorted; want %d, %d, all",
					inserts, blocks-blocks0, sorted-sorted0, tc.inserts, tc.blocks)
			}
			var n uint64
			if err := conn.QueryRow(context.Background(), "SELECT count() FROM "+tc.table.Name).Scan(&n); err != nil || int(n) != len(tc.rows) {
				t.Errorf("%d rows in the table (%v); want %d", n, err, len(tc.rows))
			}
		})
	}
}

// TestOpenAsksForSynchronousInserts: on a server that has async_insert
// (21.11 and later) every query of a connection from Open runs with it
// off, so an INSERT returns only once its rows are in a part; 18.16, which
// refuses unknown settings, is sent none.
func TestOpenAsksForSynchronousInserts(t *testing.T) {
	ctx := context.Background()
	conn, err := sink.Open(ctx, chtest.DSN(t), false)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	v, err := conn.ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM system.settings WHERE name = 'async_insert'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Logf("server %s has no async_insert: nothing to send", v)
		return
	}
	var value string
	if err := conn.QueryRow(ctx, "SELECT value FROM system.settings WHERE name = 'async_insert'").Scan(&value); err != nil {
		t.Fatal(err)
	}
	if value != "0" {
		t.Errorf("server %s: async_insert = %s on a connection from Open, want 0", v, value)
	}
}
