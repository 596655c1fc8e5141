package sink_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/chtest"
	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/internal/sink"
)

// eventRow is an intake-log row whose payload is size bytes.
func eventRow(id string, size int) []any {
	ev := row.StripeEvent{ID: id, Type: "customer.updated", Created: time.Now(), ReceivedAt: time.Now(),
		Payload: []byte(`{"pad":"` + strings.Repeat("x", max(size-10, 0)) + `"}`)}
	return ev.Values()
}

// TestQueueBytesRefusesPastItsBudget: rows are counted by their bytes too:
// a queue far from its row limit refuses once its rows' bytes would pass
// QueueBytes, takes rows again once they are committed, and a write larger
// than the whole budget still goes in alone.
func TestQueueBytesRefusesPastItsBudget(t *testing.T) {
	conn := migrated(t, chtest.DSN(t))
	const payload = 1 << 20
	s := sink.New(conn, sink.Options{QueueBytes: 4 << 20, FlushInterval: time.Hour})
	defer s.Close(context.Background())

	var acks []*sink.Ack
	for i := range 3 {
		ack, err := s.TryWrite(row.StripeEventTable, eventRow(fmt.Sprintf("evt_big_%d", i), payload))
		if err != nil {
			t.Fatalf("row %d of 1 MiB, 4 MiB budget: %v", i, err)
		}
		acks = append(acks, ack)
	}
	if got := s.QueuedBytes(); got < 3*payload || got > 3*payload+4096 {
		t.Errorf("3 rows of 1 MiB count %d bytes", got)
	}
	if _, err := s.TryWrite(row.StripeEventTable, eventRow("evt_big_3", payload), eventRow("evt_big_4", payload)); !errors.Is(err, sink.ErrQueueFull) {
		t.Fatalf("past the byte budget (3 rows queued of 200000): want ErrQueueFull, got %v", err)
	}
	// Small rows still fit in what is left.
	if _, err := s.TryWrite(row.StripeEventTable, eventRow("evt_small", 100)); err != nil {
		t.Fatalf("a small row within the budget: %v", err)
	}
	// A blocking Write waits for room: it goes in once the queue drains.
	written := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		ack, err := s.Write(ctx, row.StripeEventTable, eventRow("evt_waited", 2*payload))
		if err == nil {
			err = ack.Wait(ctx)
		}
		written <- err
	}()
	select {
	case err := <-written:
		t.Fatalf("Write past the budget returned at once (%v); want it to wait", err)
	case <-time.After(200 * time.Millisecond):
	}
	s.StopLingering()
	for _, ack := range acks {
		if err := ack.Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-written; err != nil {
		t.Fatalf("the waiting Write: %v", err)
	}
	if s.QueuedBytes() != 0 || s.Queued() != 0 {
		t.Errorf("after every commit %d rows of %d bytes still count", s.Queued(), s.QueuedBytes())
	}

	// Empty, the queue takes a write larger than its whole budget, so that
	// it cannot wait forever.
	ack, err := s.TryWrite(row.StripeEventTable, eventRow("evt_huge", 5*payload))
	if err != nil {
		t.Fatalf("a write larger than the budget into an empty queue: %v", err)
	}
	if err := ack.Err(); err != nil {
		t.Fatal(err)
	}
	var n uint64
	if err := conn.QueryRow(context.Background(), "SELECT count() FROM stripe_events").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 6 {
		t.Errorf("stripe_events holds %d rows, want the 6 taken", n)
	}
}

// TestRowBytes: a row counts its strings' bytes, wherever they are, plus a
// fixed overhead per value.
func TestRowBytes(t *testing.T) {
	s, long := "abc", strings.Repeat("y", 1000)
	cases := []struct {
		name string
		row  []any
		want int64
	}{
		{"scalars", []any{int64(1), uint8(0), time.Now()}, 0},
		{"string", []any{long}, 1000},
		{"*string and nil", []any{&long, (*string)(nil)}, 1000},
		{"[]byte", []any{[]byte(long)}, 1000},
		{"[]string", []any{[]string{s, long}}, 2*16 + 1003},
	}
	for _, c := range cases {
		overhead := sink.RowBytes(make([]any, len(c.row)))
		if got := sink.RowBytes(c.row) - overhead; got != c.want {
			t.Errorf("%s: %d bytes beyond the overhead, want %d", c.name, got, c.want)
		}
	}
	if sink.RowBytes(nil) <= 0 || sink.RowBytes([]any{1}) <= sink.RowBytes(nil) {
		t.Error("rows and values must cost something even without strings")
	}
}

// TestUnreachableFailsFastThenProbes: ClickHouse stops. The first insert
// that cannot reach it tells the writers waiting (Ack.Unreachable) and
// TryWrite refuses at once; Write still queues, for backfill waits out an
// outage. ClickHouse comes back: the probe finds it within a second,
// although the retries' backoff is far longer, and what was queued
// commits.
func TestUnreachableFailsFastThenProbes(t *testing.T) {
	if testing.Short() {
		t.Skip("stops and restarts a ClickHouse server")
	}
	srv := chtest.Private(t)
	conn := migrated(t, srv.DSN("probe"))
	s := sink.New(conn, sink.Options{MinBackoff: 20 * time.Second, MaxBackoff: time.Minute, InsertTimeout: 5 * time.Second})
	defer func() {
		// Bounded: a failed test may leave ClickHouse stopped.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Close(ctx)
	}()
	write(t, s, row.StripeEventTable, eventRow("evt_up", 100))

	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	waiting, err := s.TryWrite(row.StripeEventTable, eventRow("evt_in_flight", 100))
	if err != nil {
		t.Fatalf("before any insert failed the sink cannot know: %v", err)
	}
	select {
	case <-waiting.Unreachable():
	case <-waiting.Done():
		t.Fatalf("a row committed with ClickHouse stopped: %v", waiting.Err())
	case <-time.After(2 * time.Second):
		t.Fatal("a writer waiting on a stopped ClickHouse was not told within 2s")
	}
	t.Logf("told %s after the stop", time.Since(stopped).Round(time.Millisecond))
	if !s.Unreachable() {
		t.Error("Unreachable() is false while an insert cannot connect")
	}
	if _, err := s.TryWrite(row.StripeEventTable, eventRow("evt_refused", 100)); !errors.Is(err, sink.ErrUnavailable) {
		t.Fatalf("TryWrite while unreachable: want ErrUnavailable, got %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	queued, err := s.Write(ctx, row.StripeEventTable, eventRow("evt_backfill", 100))
	if err != nil {
		t.Fatalf("Write while unreachable: %v; want it queued", err)
	}
	select {
	case <-waiting.Unreachable():
	default:
		t.Error("a write queued during the outage is not told it is unreachable")
	}

	time.Sleep(time.Second)
	start, cancelStart := context.WithTimeout(context.Background(), time.Minute)
	defer cancelStart()
	if err := srv.Start(start); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	for _, ack := range []*sink.Ack{waiting, queued} {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err := ack.Wait(ctx)
		cancel()
		if err != nil {
			t.Fatalf("rows queued during the outage not committed 3s after ClickHouse was back (the backoff is 20s): %v", err)
		}
	}
	t.Logf("committed %s after ClickHouse was back", time.Since(back).Round(time.Millisecond))
	if s.Unreachable() {
		t.Error("still unreachable after a commit")
	}
	write(t, s, row.StripeEventTable, eventRow("evt_after", 100))
}

// TestServerErrorIsNotUnreachable: an insert ClickHouse answers with an
// exception (here: no such table) is retried, but says nothing of
// reachability: other writes are taken.
func TestServerErrorIsNotUnreachable(t *testing.T) {
	conn := migrated(t, chtest.DSN(t))
	s := sink.New(conn, sink.Options{MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	missing := sink.Table{Name: "no_such_table", Columns: []string{"id"}}
	if _, err := s.TryWrite(missing, []any{"x"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // a few failed attempts
	if s.Unreachable() {
		t.Fatal("a server exception made the sink think ClickHouse unreachable")
	}
	write(t, s, row.StripeEventTable, eventRow("evt_fine", 100))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_ = s.Close(ctx) // gives up on the missing table
}

// TestQueueBytesComeBackToZero: however writes are split into batches and
// partitions, every byte reserved is given back once its rows commit.
func TestQueueBytesComeBackToZero(t *testing.T) {
	conn := migrated(t, chtest.DSN(t))
	month := time.Date(2025, 1, 15, 0, 0, 0, 0, time.UTC).Unix()
	for _, opts := range []sink.Options{
		{BatchRows: 7},
		{BatchRows: 7, Inserts: 2, ByPartition: true},
	} {
		s := sink.New(conn, opts)
		var acks []*sink.Ack
		for w := range 10 {
			rows := make([][]any, 10)
			for i := range rows {
				id := fmt.Sprintf("cbtxn_zero_%d_%d", w, i)
				rows[i] = stripeRowAt(t, id, int64(i), month+int64(i%3)*31*86400, time.Now()).Values()
			}
			ack, err := s.TryWrite(row.StripeTxnTable, rows...)
			if err != nil {
				t.Fatal(err)
			}
			acks = append(acks, ack)
		}
		for _, ack := range acks {
			if err := ack.Err(); err != nil {
				t.Fatal(err)
			}
		}
		if s.Queued() != 0 || s.QueuedBytes() != 0 {
			t.Errorf("%+v: after every commit %d rows of %d bytes still count", opts, s.Queued(), s.QueuedBytes())
		}
		if err := s.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}
