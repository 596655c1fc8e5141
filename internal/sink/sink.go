// Package sink writes rows to ClickHouse in batches and tells each writer
// when its rows are committed: the acknowledgement a webhook's 200 waits for.
//
// Each table has one bounded queue and one writer goroutine doing group
// commit: while one insert is in flight, arriving rows gather, and when it
// returns everything gathered (up to BatchRows) goes in the next insert. A
// failed insert is retried with exponential backoff and jitter until it
// succeeds or the sink is closed; rows are never dropped silently. With the
// default of one insert in flight per table, a table's rows commit in the
// order they were queued: webhook recovery relies on it.
//
// The queue is bounded in rows and in bytes (Options.QueueRows,
// QueueBytes): past either, TryWrite refuses and Write waits. While
// ClickHouse is known unreachable (an insert failed to reach it), TryWrite
// refuses at once and a waiting Ack says so (Ack.Unreachable), so that a
// webhook answers 503 within the second instead of waiting for a retry; a
// probe finds ClickHouse again and the retries resume. A bulk writer that
// only waits for acknowledgements (backfill) may ask for more inserts in
// flight (Options.Inserts): ClickHouse works on each INSERT with one thread,
// so a second one uses a second core. It may also ask for one INSERT per
// partition (Options.ByPartition), which spares ClickHouse splitting every
// block by partition.
package sink

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/cenkalti/backoff/v5"
	"go.uber.org/zap"

	"github.com/syncd/syncd/internal/metrics"
)

// Table names a ClickHouse table and the columns every INSERT into it names,
// in the order of a row's values.
type Table struct {
	Name    string
	Columns []string
	// Partition, if set, returns the table's partition for a row (the
	// value of its PARTITION BY expression, or any key equal for rows of
	// one partition); Options.ByPartition uses it. It must not fail: it
	// sees only rows of the table's shape.
	Partition func(row []any) int64
	// Order, if set, compares rows as the table's ORDER BY does.
	// Options.ByPartition sends each INSERT's rows in that order:
	// ClickHouse skips sorting a block that already is. Rows it orders
	// differently from the server are still written correctly, only
	// sorted again by the server.
	Order func(a, b []any) int
}

// Errors a writer can see.
var (
	ErrQueueFull = errors.New("sink queue is full")
	ErrClosed    = errors.New("sink is closed")
	// ErrUnavailable: ClickHouse is known unreachable; TryWrite takes
	// nothing until it answers again.
	ErrUnavailable = errors.New("clickhouse is unreachable")
)

// Options tune a Sink; the zero value of each field picks a default.
type Options struct {
	BatchRows     int           // max rows per insert [10000]
	FlushInterval time.Duration // how long a batch may wait to fill [0: group commit]
	QueueRows     int           // max rows waiting, over all tables [200000]
	QueueBytes    int64         // max RowBytes of the rows waiting, over all tables [64 MiB]
	MinBackoff    time.Duration // first retry delay [100ms]
	MaxBackoff    time.Duration // longest retry delay [10s]
	InsertTimeout time.Duration // one insert attempt [60s]
	// Inserts in flight per table [1]. Above 1, a table's batches may
	// commit out of order (each still whole, each acknowledged when it
	// commits).
	Inserts int
	// ByPartition sends each batch of a table with a Partition function as
	// one INSERT per partition (the batch's small partitions together:
	// minStepRows). ClickHouse otherwise splits every block it
	// receives by partition, copying each column (in the backfill benchmark
	// a third of the server's CPU per row); an INSERT of one partition's
	// rows, sorted by Table.Order, is written as it came (sorting them
	// took another fifth). The parts made are the same, one per
	// partition per batch. A batch then commits in steps: a table's rows
	// no longer commit in the order queued, a write is acknowledged when
	// all its rows are committed, and a failed step is retried without
	// repeating the steps before it.
	ByPartition bool
	Metrics     *metrics.Metrics
	Logger      *zap.Logger
}

func (o *Options) defaults() {
	if o.BatchRows <= 0 {
		o.BatchRows = 10000
	}
	if o.QueueRows <= 0 {
		o.QueueRows = 200000
	}
	if o.QueueRows < o.BatchRows {
		o.QueueRows = o.BatchRows
	}
	if o.QueueBytes <= 0 {
		o.QueueBytes = DefaultQueueBytes
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 100 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 10 * time.Second
	}
	if o.InsertTimeout <= 0 {
		o.InsertTimeout = 60 * time.Second
	}
	if o.Inserts <= 0 {
		o.Inserts = 1
	}
	if o.Metrics == nil {
		o.Metrics = metrics.New()
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
}

// DefaultQueueBytes is Options.QueueBytes' default.
const DefaultQueueBytes = 64 << 20

// Sink is a batched, acknowledged ClickHouse writer. It is safe for
// concurrent use.
type Sink struct {
	conn driver.Conn
	opts Options

	spaceM      sync.Mutex
	queued      int64         // rows accepted and not yet resolved
	queuedBytes int64         // their RowBytes
	space       chan struct{} // closed and replaced whenever rows leave the queue

	health health

	mu     sync.Mutex
	queues map[string]*queue
	closed bool

	stop     context.Context // cancelled when Close gives up: abandon retries
	stopNow  context.CancelFunc
	draining chan struct{} // closed by Close: send what is left without lingering
	hurry    chan struct{} // closed by StopLingering
	hurryOne sync.Once
	wg       sync.WaitGroup
}

// New returns a Sink writing through conn.
func New(conn driver.Conn, opts Options) *Sink {
	opts.defaults()
	stop, cancel := context.WithCancel(context.Background())
	s := &Sink{
		conn: conn, opts: opts, queues: map[string]*queue{},
		space: make(chan struct{}), stop: stop, stopNow: cancel, draining: make(chan struct{}),
		hurry: make(chan struct{}),
	}
	s.health.init()
	return s
}

// Ack resolves when every row of one Write is committed, or can no longer be.
type Ack struct {
	remaining atomic.Int64
	done      chan struct{}
	once      sync.Once
	err       error
	health    *health // nil for an Ack of no rows
}

func newAck(n int, h *health) *Ack {
	a := &Ack{done: make(chan struct{}), health: h}
	a.remaining.Store(int64(n))
	if n == 0 {
		a.resolve(nil)
	}
	return a
}

func (a *Ack) resolve(err error) {
	a.once.Do(func() { a.err = err; close(a.done) })
}

func (a *Ack) committed(n int) {
	if a.remaining.Add(-int64(n)) == 0 {
		a.resolve(nil)
	}
}

// Done is closed when the Ack is resolved.
func (a *Ack) Done() <-chan struct{} { return a.done }

// Err is nil when the rows are committed; valid once Done is closed.
func (a *Ack) Err() error { <-a.done; return a.err }

// Wait blocks until the rows are committed (nil), cannot be (the reason), or
// ctx ends first (ctx's error; the rows stay queued and may still commit).
func (a *Ack) Wait(ctx context.Context) error {
	select {
	case <-a.done:
		return a.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Unreachable is closed when the sink finds ClickHouse unreachable while
// these rows wait (at once if it already knows): a writer answering a client
// can give up without waiting out the retries. The rows stay queued and are
// committed once ClickHouse is back, unless the sink is closed first.
func (a *Ack) Unreachable() <-chan struct{} {
	if a.health == nil {
		return nil
	}
	return a.health.lostSignal()
}

// TryWrite queues rows for t without blocking: ErrQueueFull when there is
// no room, ErrUnavailable while ClickHouse is known unreachable, so that the
// caller can refuse its own client (a webhook answers 503).
func (s *Sink) TryWrite(t Table, rows ...[]any) (*Ack, error) {
	if s.health.isDown() {
		return nil, ErrUnavailable
	}
	size := RowsBytes(rows)
	if !s.reserve(len(rows), size) {
		return nil, ErrQueueFull
	}
	return s.enqueue(t, rows, size)
}

// Write queues rows for t, waiting while the queue is full (backpressure for
// backfill) until ctx ends. It waits out an outage too: the rows queue up
// to the limits, and the retries commit them once ClickHouse is back.
func (s *Sink) Write(ctx context.Context, t Table, rows ...[]any) (*Ack, error) {
	size := RowsBytes(rows)
	for !s.reserve(len(rows), size) {
		s.spaceM.Lock()
		ch := s.space
		s.spaceM.Unlock()
		if s.reserve(len(rows), size) {
			break
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return s.enqueue(t, rows, size)
}

// reserve takes room for n rows of size bytes. A write larger than the
// whole queue is let in when the queue is empty, so it cannot wait forever.
func (s *Sink) reserve(n int, size int64) bool {
	s.spaceM.Lock()
	defer s.spaceM.Unlock()
	if s.queued > 0 && (s.queued+int64(n) > int64(s.opts.QueueRows) || s.queuedBytes+size > s.opts.QueueBytes) {
		return false
	}
	s.queued += int64(n)
	s.queuedBytes += size
	s.opts.Metrics.SinkQueueRows.Add(float64(n))
	return true
}

func (s *Sink) release(n int, size int64) {
	s.opts.Metrics.SinkQueueRows.Sub(float64(n))
	s.spaceM.Lock()
	s.queued -= int64(n)
	s.queuedBytes -= size
	close(s.space)
	s.space = make(chan struct{})
	s.spaceM.Unlock()
}

// Value sizes RowBytes counts beyond the bytes of strings: an interface
// value in the row's slice, the scalar or header it points to, and a row's
// own slice and segment bookkeeping.
const (
	valueOverhead = 32
	rowOverhead   = 64
)

// RowBytes is what a queued row is taken to hold in memory: the bytes of its
// strings (string, *string, []byte, []string values) plus a fixed overhead
// per value and per row. It is an estimate, cheap enough for every write,
// that grows with what a client can make large (payloads, raw JSON).
func RowBytes(row []any) int64 {
	n := int64(rowOverhead + valueOverhead*len(row))
	for _, v := range row {
		switch v := v.(type) {
		case string:
			n += int64(len(v))
		case *string:
			if v != nil {
				n += int64(len(*v))
			}
		case []byte:
			n += int64(len(v))
		case []string:
			for _, e := range v {
				n += 16 + int64(len(e))
			}
		case *[]string:
			if v != nil {
				for _, e := range *v {
					n += 16 + int64(len(e))
				}
			}
		}
	}
	return n
}

// RowsBytes is the RowBytes of rows together.
func RowsBytes(rows [][]any) int64 {
	var n int64
	for _, r := range rows {
		n += RowBytes(r)
	}
	return n
}

func (s *Sink) enqueue(t Table, rows [][]any, size int64) (*Ack, error) {
	for i, r := range rows {
		if len(r) != len(t.Columns) {
			s.release(len(rows), size)
			return nil, fmt.Errorf("write to %s: row %d has %d values for %d columns", t.Name, i, len(r), len(t.Columns))
		}
	}
	ack := newAck(len(rows), &s.health)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.release(len(rows), size)
		return nil, ErrClosed
	}
	q := s.queues[t.Name]
	if q == nil {
		q = &queue{table: t, insert: insertSQL(t), wake: make(chan struct{}, 1)}
		s.queues[t.Name] = q
		for range s.opts.Inserts {
			s.wg.Add(1)
			go s.run(q)
		}
	}
	// Pushed under s.mu so that Close cannot let the writer exit between
	// the closed check and the push.
	if len(rows) > 0 {
		q.push(segment{ack: ack, rows: rows, size: size})
	}
	s.mu.Unlock()
	return ack, nil
}

func insertSQL(t Table) string {
	return "INSERT INTO " + t.Name + " (" + strings.Join(t.Columns, ", ") + ")"
}

// segment is the rows of one Write still waiting in a queue.
type segment struct {
	ack  *Ack
	rows [][]any
	// size is the bytes the rows were reserved with. Sizes are carried
	// from the write to its release, not measured again, so that the
	// queue's count comes back to exactly zero whatever the rows point to.
	size int64
}

type queue struct {
	table  Table
	insert string
	wake   chan struct{}

	mu   sync.Mutex
	segs []segment
	rows int
}

func (q *queue) push(seg segment) {
	q.mu.Lock()
	q.segs = append(q.segs, seg)
	q.rows += len(seg.rows)
	q.mu.Unlock()
	q.poke()
}

// poke wakes a writer waiting for rows, if one is.
func (q *queue) poke() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *queue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.rows
}

// take removes up to max rows from the front, splitting a segment if needed.
func (q *queue) take(max int) []segment {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []segment
	n := 0
	for len(q.segs) > 0 && n < max {
		seg := q.segs[0]
		if room := max - n; len(seg.rows) > room {
			head := min(RowsBytes(seg.rows[:room]), seg.size)
			out = append(out, segment{ack: seg.ack, rows: seg.rows[:room], size: head})
			q.segs[0].rows, q.segs[0].size = seg.rows[room:], seg.size-head
			n += room
			break
		}
		out = append(out, seg)
		n += len(seg.rows)
		q.segs[0] = segment{}
		q.segs = q.segs[1:]
	}
	q.rows -= n
	return out
}

// run is one of a table's writers: group commit with an optional linger.
func (s *Sink) run(q *queue) {
	defer s.wg.Done()
	for {
		if q.len() == 0 {
			select {
			case <-q.wake:
			case <-s.draining:
				if q.len() == 0 {
					return
				}
			}
		}
		if s.opts.FlushInterval > 0 && q.len() < s.opts.BatchRows && !s.hurried() {
			s.linger(q)
		}
		batch := q.take(s.opts.BatchRows)
		if len(batch) == 0 {
			continue
		}
		if s.opts.Inserts > 1 && q.len() > 0 {
			q.poke() // what is left is another writer's next batch
		}
		if rest, err := s.commit(q, batch); err != nil {
			// Only Close giving up ends a commit with an error: fail what
			// is left, including the rest of this batch.
			s.abandon(q, rest, err)
			return
		}
	}
}

// linger waits for the batch to fill, its deadline, Close or StopLingering.
func (s *Sink) linger(q *queue) {
	deadline := time.NewTimer(s.opts.FlushInterval)
	defer deadline.Stop()
	for q.len() < s.opts.BatchRows {
		select {
		case <-q.wake:
		case <-deadline.C:
			return
		case <-s.draining:
			return
		case <-s.hurry:
			return
		}
	}
}

func (s *Sink) hurried() bool {
	select {
	case <-s.hurry:
		return true
	default:
		return false
	}
}

// StopLingering makes the sink send every batch as soon as the previous
// insert returns, as if FlushInterval were 0. A writer that knows no more
// large input is coming (a backfill whose readers are done) calls it so that
// its last rows do not wait out the linger.
func (s *Sink) StopLingering() {
	s.hurryOne.Do(func() { close(s.hurry) })
}

// commit inserts batch, as one INSERT or (ByPartition) one per partition,
// and on giving up returns the shares of the rows not committed.
func (s *Sink) commit(q *queue, batch []segment) ([]share, error) {
	steps := s.plan(q.table, batch)
	for i, st := range steps {
		if err := s.commitStep(q, st); err != nil {
			var rest []share
			for _, st := range steps[i:] {
				rest = append(rest, st.shares...)
			}
			return rest, err
		}
	}
	return nil, nil
}

// share is n rows of one write, of size bytes (RowBytes).
type share struct {
	ack  *Ack
	n    int
	size int64
}

// step is the rows of one INSERT and the writes they come from.
type step struct {
	rows   [][]any
	shares []share
}

// minStepRows is the fewest rows of one partition that ByPartition sends as
// an INSERT of their own; the smaller partitions of a batch share one
// INSERT, which ClickHouse splits as before. Splitting spares the server
// about 5 µs of copying per row; an INSERT costs a few round trips more, which
// on a distant server are worth more than that for a handful of rows. A
// rate-limited backfill's batch is typically of this kind (a second of
// many small customers, a few rows in each of ~24 months); an unlimited
// one's partitions hold thousands.
const minStepRows = 1000

// plan makes the INSERTs of batch: one, or with ByPartition and a
// partitioned table one per partition of at least minStepRows rows, in the
// order each partition first appears, and one for the rest. The rows of
// each partition are sorted by t.Order when the table has one (in the
// shared INSERT too: ClickHouse's split keeps their order).
func (s *Sink) plan(t Table, batch []segment) []step {
	if !s.opts.ByPartition || t.Partition == nil {
		n := 0
		for _, seg := range batch {
			n += len(seg.rows)
		}
		one := step{rows: make([][]any, 0, n), shares: make([]share, 0, len(batch))}
		for _, seg := range batch {
			one.rows = append(one.rows, seg.rows...)
			one.shares = append(one.shares, share{seg.ack, len(seg.rows), seg.size})
		}
		return []step{one}
	}
	index := map[int64]int{}
	var steps []step
	for _, seg := range batch {
		// The segment's size is shared out by row; its first share takes
		// what measuring each row does not account for.
		firstStep, firstShare, measured := -1, 0, int64(0)
		for _, r := range seg.rows {
			k := t.Partition(r)
			i, ok := index[k]
			if !ok {
				i = len(steps)
				index[k] = i
				steps = append(steps, step{})
			}
			st := &steps[i]
			st.rows = append(st.rows, r)
			size := RowBytes(r)
			measured += size
			if last := len(st.shares) - 1; last >= 0 && st.shares[last].ack == seg.ack {
				st.shares[last].n++
				st.shares[last].size += size
			} else {
				st.shares = append(st.shares, share{seg.ack, 1, size})
			}
			if firstStep < 0 {
				firstStep, firstShare = i, len(st.shares)-1
			}
		}
		if firstStep >= 0 {
			steps[firstStep].shares[firstShare].size += seg.size - measured
		}
	}
	if t.Order != nil {
		// Stable: of two rows with one key, the one queued later stays
		// later, and ReplacingMergeTree keeps the last of equal versions.
		for _, st := range steps {
			sortStable(st.rows, t.Order)
		}
	}
	var small step
	own := steps[:0]
	for _, st := range steps {
		if len(st.rows) >= minStepRows {
			own = append(own, st)
			continue
		}
		small.rows = append(small.rows, st.rows...)
		small.shares = append(small.shares, st.shares...)
	}
	if len(small.rows) > 0 {
		own = append(own, small)
	}
	return own
}

// sortStable sorts rows by order, stably. List pages come newest first, so
// rows arrive in descending runs: each is reversed first (a strictly
// descending run holds no two equal rows, so stability is kept), which
// leaves the sort ascending runs to merge. BenchmarkSortStable: 1.6 times
// faster than sorting them as they came, with int keys; more in a run, where
// a table's Order costs more per comparison.
func sortStable(rows [][]any, order func(a, b []any) int) {
	for i := 0; i < len(rows); {
		j := i + 1
		for j < len(rows) && order(rows[j-1], rows[j]) > 0 {
			j++
		}
		slices.Reverse(rows[i:j])
		i = j
	}
	slices.SortStableFunc(rows, order)
}

// commitStep inserts st as one INSERT, retrying with backoff until it
// succeeds or the sink is told to stop.
func (s *Sink) commitStep(q *queue, st step) error {
	n := len(st.rows)
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = s.opts.MinBackoff
	bo.MaxInterval = s.opts.MaxBackoff
	bo.RandomizationFactor = 0.5
	for attempt := 1; ; attempt++ {
		start := time.Now()
		err := s.insert(q, st.rows)
		s.opts.Metrics.SinkFlush.Observe(time.Since(start).Seconds())
		if err == nil {
			s.opts.Metrics.SinkRows.WithLabelValues(q.table.Name).Add(float64(n))
			// Released before the writers hear: an acknowledged row no
			// longer counts as queued.
			var size int64
			for _, sh := range st.shares {
				size += sh.size
			}
			s.release(n, size)
			for _, sh := range st.shares {
				sh.ack.committed(sh.n)
			}
			s.health.found(s.opts.Logger)
			if attempt > 1 {
				s.opts.Logger.Info("clickhouse insert recovered", zap.String("table", q.table.Name), zap.Int("attempts", attempt))
			}
			return nil
		}
		s.opts.Metrics.SinkErrors.Inc()
		wait := bo.NextBackOff()
		if replicasMissing(err) {
			// The server answers but cannot commit: a ping would find
			// nothing wrong, so only a retry that succeeds says it can
			// again. It fails at once while it cannot, and is tried
			// every second: writers are taken again within a second of
			// the replica's return.
			wait = min(wait, replicaRetry)
		}
		s.opts.Logger.Warn("clickhouse insert failed; retrying",
			zap.String("table", q.table.Name), zap.Int("rows", n), zap.Int("attempt", attempt),
			zap.Duration("retry_in", wait), zap.Error(err))
		// An insert that did not reach ClickHouse, or could not commit
		// there, tells the writers (they stop waiting, and new ones are
		// refused); one that did not reach it starts the probe, whose
		// success cuts this wait short.
		var back <-chan struct{}
		if s.stop.Err() == nil {
			switch {
			case unreachable(err):
				back = s.health.lost(s.opts.Logger, s.probe)
			case replicasMissing(err):
				s.health.lost(s.opts.Logger, nil)
			}
		}
		select {
		case <-time.After(wait):
		case <-back:
		case <-s.stop.Done():
			return fmt.Errorf("flush %d rows to %s: %w", n, q.table.Name, err)
		}
	}
}

// blockRows is the most rows sent in one block of an insert. An insert of
// more rows is sent as several blocks of one INSERT (still one query, still
// retried whole): the driver reuses its column buffers from block to block
// instead of growing fresh ones to the whole batch's size, which on a VM where
// a page fault is dear cost more CPU than the rest of the client's insert.
// ClickHouse squashes the blocks of one INSERT back into one before it writes
// parts, so the parts made are the same. See docs/benchmarks.md. (If the
// connection drops mid-INSERT, ClickHouse 18.16 writes the blocks it has
// received; the retry sends them again, identical, and ReplacingMergeTree
// keeps one.)
const blockRows = 2048

func (s *Sink) insert(q *queue, rows [][]any) error {
	ctx, cancel := context.WithTimeout(s.stop, s.opts.InsertTimeout)
	defer cancel()
	b, err := s.conn.PrepareBatch(ctx, q.insert)
	if err != nil {
		return fmt.Errorf("prepare insert into %s: %w", q.table.Name, err)
	}
	for i, r := range rows {
		if err := b.Append(r...); err != nil {
			_ = b.Abort()
			return &appendError{fmt.Errorf("append to %s: %w", q.table.Name, err)}
		}
		if (i+1)%blockRows == 0 {
			if err := b.Flush(); err != nil {
				_ = b.Abort()
				return fmt.Errorf("send a block to %s: %w", q.table.Name, err)
			}
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("send to %s: %w", q.table.Name, err)
	}
	return nil
}

// appendError is a row the driver could not encode: the server was not
// asked, so it says nothing of whether ClickHouse is reachable.
type appendError struct{ err error }

func (e *appendError) Error() string { return e.err.Error() }
func (e *appendError) Unwrap() error { return e.err }

// unreachable tells whether a failed insert failed to reach ClickHouse: a
// refused or broken connection, a timeout. An exception the server sent, or
// a row the driver refused, says it answered.
func unreachable(err error) bool {
	var ex *clickhouse.Exception
	var ae *appendError
	return !errors.As(err, &ex) && !errors.As(err, &ae)
}

// Codes of a server that answers but cannot commit an INSERT until another
// server is back: a cluster short of replicas for the quorum
// (TOO_FEW_LIVE_REPLICAS), a quorum INSERT that timed out waiting for one
// (UNKNOWN_STATUS_OF_INSERT), a replica cut off from ZooKeeper
// (TABLE_IS_READ_ONLY, KEEPER_EXCEPTION), a shard a Distributed INSERT
// cannot reach (ALL_CONNECTION_TRIES_FAILED, NETWORK_ERROR,
// SOCKET_TIMEOUT). Not UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE: before 20.x
// (insert_quorum_parallel) a table takes one quorum INSERT at a time, and
// two writers meet it in turn without anything being down; it is retried.
var replicaCodes = []int32{285, 319, 242, 999, 279, 210, 209}

// replicaRetry is the longest wait between retries of an insert that
// failed for want of another server.
const replicaRetry = time.Second

// replicasMissing tells whether a failed insert failed for want of another
// server of the cluster: the sink then refuses writes that cannot wait, as
// when ClickHouse is unreachable, rather than let a webhook wait out its
// deadline.
func replicasMissing(err error) bool {
	var ex *clickhouse.Exception
	return errors.As(err, &ex) && slices.Contains(replicaCodes, ex.Code)
}

// abandon fails the rows of rest and everything still queued in q with err.
func (s *Sink) abandon(q *queue, rest []share, err error) {
	for {
		n, size := 0, int64(0)
		for _, sh := range rest {
			n += sh.n
			size += sh.size
		}
		if n > 0 {
			s.release(n, size)
		}
		for _, sh := range rest {
			sh.ack.resolve(err)
		}
		batch := q.take(int(^uint(0) >> 1))
		if len(batch) == 0 {
			return
		}
		rest = rest[:0]
		for _, seg := range batch {
			rest = append(rest, share{seg.ack, len(seg.rows), seg.size})
		}
	}
}

// Queued reports rows accepted and not yet committed or failed.
func (s *Sink) Queued() int {
	s.spaceM.Lock()
	defer s.spaceM.Unlock()
	return int(s.queued)
}

// QueuedBytes reports the RowBytes of the rows Queued counts.
func (s *Sink) QueuedBytes() int64 {
	s.spaceM.Lock()
	defer s.spaceM.Unlock()
	return s.queuedBytes
}

// Unreachable tells whether the sink knows ClickHouse to be unreachable:
// its last insert failed to reach it, and no probe or retry has since.
func (s *Sink) Unreachable() bool { return s.health.isDown() }

// probeEvery is how often, while ClickHouse is unreachable, the sink pings
// it to find it back sooner than the insert retries' backoff would.
const probeEvery = 500 * time.Millisecond

// probe pings ClickHouse until it answers, the retries find it first
// (back is closed), or the sink stops.
func (s *Sink) probe(back <-chan struct{}) {
	tick := time.NewTicker(probeEvery)
	defer tick.Stop()
	for {
		select {
		case <-back:
			return
		case <-s.stop.Done():
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(s.stop, probeEvery)
		err := s.conn.Ping(ctx)
		cancel()
		if err == nil {
			s.health.found(s.opts.Logger)
			return
		}
	}
}

// health is what the sink knows of ClickHouse's reachability.
type health struct {
	mu   sync.Mutex
	down bool
	gone chan struct{} // closed when ClickHouse is found unreachable
	back chan struct{} // closed when it is found again
}

func (h *health) init() {
	h.gone, h.back = make(chan struct{}), make(chan struct{})
	close(h.back)
}

func (h *health) isDown() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.down
}

// lostSignal is closed when ClickHouse is (or is next) found unreachable.
func (h *health) lostSignal() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.gone
}

// lost records that an insert could not reach ClickHouse, or could not
// commit there; the first such failure of a spell starts probe, if any. It returns a channel closed when
// ClickHouse is found again.
func (h *health) lost(log *zap.Logger, probe func(back <-chan struct{})) <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.down {
		h.down = true
		close(h.gone)
		h.back = make(chan struct{})
		log.Warn("clickhouse unreachable or short of replicas: refusing writes that cannot wait (webhooks answer 503) until it takes them")
		if probe != nil {
			go probe(h.back)
		}
	}
	return h.back
}

// found records that ClickHouse answered.
func (h *health) found(log *zap.Logger) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.down {
		h.down = false
		h.gone = make(chan struct{})
		close(h.back)
		log.Info("clickhouse reachable again: taking writes")
	}
}

// Close stops accepting writes and sends everything queued. If ctx ends
// first, outstanding retries are abandoned, their Acks fail, and the error
// says how many rows were not written.
func (s *Sink) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.closed = true
	s.mu.Unlock()
	close(s.draining)
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		s.stopNow()
		return nil
	case <-ctx.Done():
	}
	lost := s.Queued()
	s.stopNow()
	<-done
	if lost > 0 {
		return fmt.Errorf("close sink: %d rows not written to ClickHouse: %w", lost, ctx.Err())
	}
	return nil
}
