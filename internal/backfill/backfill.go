package backfill

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"go.uber.org/zap"

	"github.com/syncd/syncd/internal/metrics"
	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/internal/sink"
)

// EventsWindow is how far back Stripe's Events API reaches.
const EventsWindow = 30 * 24 * time.Hour

// Options describe one backfill run.
type Options struct {
	Source  Lister
	Conn    driver.Conn
	Sink    *sink.Sink
	Metrics *metrics.Metrics
	Logger  *zap.Logger

	// Accounts are Connect accounts to read; AllAccounts reads the platform
	// and every connected account. With neither, the platform only.
	Accounts    []string
	AllAccounts bool
	Customers   []string  // only these customers
	Since       time.Time // only customers that changed since then
	Full        bool      // ignore the cursors: re-read every transaction
	Concurrency int       // customers read at once [sized from the rate limit]

	Progress      io.Writer     // where progress goes; nil: nowhere
	ProgressMode  string        // "line" (a live \r line), "log" (a zap line every ProgressEvery), "none"
	ProgressEvery time.Duration // [5s]
}

// Summary is what a run did.
type Summary struct {
	Mode      string // "incremental", "full", "since", "customers"
	Accounts  int
	Customers int // customers read in this run
	Resumed   int // customers an interrupted run had already finished
	// Deleted counts the customers a sweep listed (or --since found in an
	// account's events) that the API then did not find (404): deleted.
	// They are logged and skipped, not failed.
	Deleted   int
	Rows      int64
	Malformed int
	Requests  int64
	Retries   int64
	Duration  time.Duration
}

func (s Summary) String() string {
	resumed := ""
	if s.Resumed > 0 {
		resumed = fmt.Sprintf(" (+%d finished before the restart)", s.Resumed)
	}
	deleted := ""
	if s.Deleted > 0 {
		deleted = fmt.Sprintf(" (%d deleted while the run read them: skipped)", s.Deleted)
	}
	return fmt.Sprintf("%s backfill: %d accounts, %d customers%s%s, %d rows, %d requests, %d retries, %s",
		s.Mode, s.Accounts, s.Customers, resumed, deleted, s.Rows, s.Requests, s.Retries, s.Duration.Round(time.Millisecond))
}

// accountLister and changeFinder are what a source may offer beyond Lister.
type accountLister interface {
	Accounts(ctx context.Context) ([]string, error)
}

type changeFinder interface {
	ChangedCustomers(ctx context.Context, account string, since time.Time) ([]string, error)
}

type statser interface {
	Stats() (requests, retries int64)
	RateLimit() float64
}

// DefaultConcurrency is enough workers for the rate limiter, not latency,
// to be the bottleneck: twice the requests in flight at 250 ms each.
func DefaultConcurrency(ratePerSecond float64) int {
	if ratePerSecond <= 0 {
		return 16
	}
	return min(64, max(4, int(math.Ceil(ratePerSecond*0.25*2))))
}

// SinkOptions sets o as a backfill's sink wants it. Two inserts in flight
// per table: the backfill waits only for acknowledgements, and every
// checkpoint table is read under FINAL by version, so batches committing
// out of order are harmless; ClickHouse works on each INSERT with one
// thread, so a second one uses a second core (three did worse than two on
// 2 cores). One INSERT per partition: a backfill's batch spans as many
// months as the customers it holds, and ClickHouse would otherwise copy
// every column splitting it (docs/benchmarks.md).
func SinkOptions(o sink.Options) sink.Options {
	o.Inserts, o.ByPartition = SinkInserts, true
	return o
}

// SinkInserts is how many inserts per table SinkOptions keeps in flight.
const SinkInserts = 2

// commitDepth is how many read customers may wait for their rows and then
// their checkpoints to be committed. Customers finish at the commit
// latency times this depth at most, so it must cover customers/s × insert
// latency: at 4 × Concurrency, a 0.4 s insert of rows spread over many
// monthly partitions held a 400-customer run to ~80 customers/s. An entry
// is a few words (the rows themselves wait in the sink, bounded by its
// QueueRows); a crash only re-reads the customers not yet checkpointed.
const commitDepth = 4096

// job is one customer to read.
type job struct {
	acct     *acctState
	customer string
	since    string // newest id held; "" reads everything
	page     *pageState
	phase    phase // of the sweep that listed it; 0 when chosen
}

// acctState is one account's part of the run.
type acctState struct {
	id      string
	run     *run              // nil when the run reads chosen customers only
	cursors map[string]string // newest id held per chosen customer

	// The sweep's listing: its phase, the cursor of its next page, the
	// checkpointed cursor it resumed from, and whether the run is one an
	// earlier process began (so customers may be done already).
	phase        phase
	listCursor   string
	resumeCursor string
	resumed      bool

	started *sink.Ack // the new run's row, when startRun began one

	mu       sync.Mutex
	pages    []*pageState
	inflight map[string]bool // customers sent and not yet checkpointed
}

// pageState tracks one enumerated page of customers, so that the run's
// enumeration cursor only moves past pages whose customers are all done.
type pageState struct {
	cursor   string // the run cursor once the page is done; "" leaves it
	pending  int
	complete bool
}

type runner struct {
	o     Options
	src   Lister
	ctx   context.Context
	fail  context.CancelCauseFunc
	start time.Time

	total      atomic.Int64 // customers to read, once enumeration is over
	enumerated atomic.Bool
	customers  atomic.Int64
	resumed    atomic.Int64
	deleted    atomic.Int64
	rows       atomic.Int64
	malformed  atomic.Int64

	// The first phase of a sweep: whether its listing is over, its
	// customers sent and not yet checkpointed, and those checkpointed.
	phaseMu         sync.Mutex
	balancesListed  bool
	balancesEnded   bool
	balancesPending int
	balancesDone    int
}

// Run reads the source into the sink as o describes and returns a summary.
// An error means the run is incomplete: what finished is checkpointed, and
// the next run resumes.
func Run(ctx context.Context, o Options) (Summary, error) {
	if o.Metrics == nil {
		o.Metrics = metrics.New()
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.ProgressEvery <= 0 {
		o.ProgressEvery = 5 * time.Second
	}
	limit := 0.0
	if s, ok := o.Source.(statser); ok {
		limit = s.RateLimit()
	}
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency(limit)
	}
	ctx, fail := context.WithCancelCause(ctx)
	defer fail(nil)
	r := &runner{o: o, src: o.Source, ctx: ctx, fail: fail, start: time.Now()}
	var req0, retries0 int64
	if s, ok := o.Source.(statser); ok {
		req0, retries0 = s.Stats()
	}
	sum := Summary{Mode: "incremental"}
	if o.Full {
		sum.Mode = "full"
	}
	err := r.run(&sum)
	sum.Customers = int(r.customers.Load())
	sum.Resumed = int(r.resumed.Load())
	sum.Deleted = int(r.deleted.Load())
	sum.Rows = r.rows.Load()
	sum.Malformed = int(r.malformed.Load())
	if s, ok := o.Source.(statser); ok {
		sum.Requests, sum.Retries = s.Stats()
		sum.Requests -= req0
		sum.Retries -= retries0
	}
	sum.Duration = time.Since(r.start)
	if err == nil && sum.Malformed > 0 {
		err = fmt.Errorf("%d transactions were refused by the normaliser (see the log) and not written; their customers are not checkpointed", sum.Malformed)
	}
	return sum, err
}

func (r *runner) run(sum *Summary) error {
	o := r.o
	accounts, err := r.accounts()
	if err != nil {
		return err
	}
	sum.Accounts = len(accounts)

	// Decide what to read: chosen customers, changed customers, or a sweep.
	var chosen map[string][]string // account → customers
	sinceRun := ""                 // the run id a --since catch-up checkpoints under
	if !o.Since.IsZero() {
		cf, ok := o.Source.(changeFinder)
		switch age := time.Since(o.Since); {
		case !ok:
			o.Logger.Warn("the source has no events API; --since falls back to an incremental sweep")
		case age > EventsWindow:
			o.Logger.Warn("--since is beyond the 30-day window of Stripe's Events API; falling back to an incremental sweep of every customer",
				zap.Time("since", o.Since))
			r.notef("--since %s is beyond the 30-day Events window: running a full incremental sweep instead\n", o.Since.UTC().Format(time.RFC3339))
		default:
			sum.Mode = "since"
			from := sinceFrom(o.Since)
			sinceRun = sinceRunID(from)
			chosen = map[string][]string{}
			for _, a := range accounts {
				cs, err := cf.ChangedCustomers(r.ctx, a, from)
				if err != nil {
					return fmt.Errorf("find customers changed since %s in %s: %w", o.Since.UTC().Format(time.RFC3339), accountName(a), err)
				}
				chosen[a] = cs
			}
		}
	}
	if len(o.Customers) > 0 {
		want := map[string]bool{}
		for _, c := range o.Customers {
			want[c] = true
		}
		if chosen == nil {
			sum.Mode = "customers"
			chosen = map[string][]string{}
			for _, a := range accounts {
				chosen[a] = o.Customers
			}
		} else {
			for a, cs := range chosen {
				var keep []string
				for _, c := range cs {
					if want[c] {
						keep = append(keep, c)
					}
				}
				chosen[a] = keep
			}
		}
	}

	var prev map[string]*run
	if chosen == nil {
		if prev, err = latestRuns(r.ctx, o.Conn, r.src.Provider()); err != nil {
			return err
		}
	}
	states := make([]*acctState, 0, len(accounts))
	for _, a := range accounts {
		st := &acctState{id: a, inflight: map[string]bool{}}
		states = append(states, st)
		if chosen == nil {
			// A sweep reads the held cursors page by page as it lists.
			if err := r.startRun(st, prev[a]); err != nil {
				return err
			}
			continue
		}
		if sinceRun != "" && len(o.Customers) == 0 && len(chosen[a]) > 0 {
			// Checkpointed customer by customer, as a sweep is: a rerun of
			// an unfinished catch-up skips the customers it has finished.
			id, resumed, err := r.sinceRun(a, sinceRun)
			if err != nil {
				return err
			}
			st.run, st.resumed = &run{Provider: r.src.Provider(), Account: a, ID: id}, resumed
		}
		if only := chosen[a]; len(only) > 0 && !o.Full {
			cs, err := cursors(r.ctx, o.Conn, r.src.Provider(), a, only)
			if err != nil {
				return err
			}
			st.cursors = cs
		}
	}

	jobs := make(chan job, 4*o.Concurrency)
	read := make(chan readDone, commitDepth)
	checkpointed := make(chan checkpoint, commitDepth)
	var workers, stages sync.WaitGroup
	for range o.Concurrency {
		workers.Add(1)
		go func() { defer workers.Done(); r.work(jobs, read) }()
	}
	stages.Add(2)
	go func() { defer stages.Done(); r.commitRows(read, checkpointed) }()
	go func() { defer stages.Done(); r.commitCheckpoints(checkpointed) }()
	stopProgress := r.progress()

	enumErr := r.enumerate(states, chosen, jobs)
	close(jobs)
	workers.Wait()
	// Nothing large is coming: the last rows and checkpoints go now
	// instead of waiting out the sink's linger.
	o.Sink.StopLingering()
	close(read)
	stages.Wait()
	stopProgress()

	if err := context.Cause(r.ctx); err != nil {
		return err
	}
	if enumErr != nil {
		return enumErr
	}
	for _, st := range states {
		if st.started == nil {
			continue
		}
		if err := st.started.Wait(r.ctx); err != nil {
			return fmt.Errorf("record the new run: %w", err)
		}
	}
	// Every customer is read and checkpointed: close the sweeps, so that
	// the next run starts a new one. Only now: a run row saying finished
	// while checkpoints were still on their way would, after a kill, make
	// the next run start a new sweep and read again the customers this
	// one had finished (one insert more at the end of a run is the cost).
	var finished []*sink.Ack
	if sinceRun != "" && r.malformed.Load() == 0 {
		// The catch-up is over: the next one, of any window, reads every
		// customer its events name again.
		for _, st := range states {
			if st.run == nil {
				continue
			}
			a, err := o.Sink.Write(r.ctx, doneTable, []any{r.src.Provider(), st.id, st.run.ID, "", uint64(0), time.Now().UTC()})
			if err != nil {
				return fmt.Errorf("record the finished catch-up: %w", err)
			}
			finished = append(finished, a)
		}
	}
	if chosen == nil && r.malformed.Load() == 0 {
		for _, st := range states {
			st.mu.Lock()
			st.run.Finished = true
			vals := st.run.row(time.Now())
			st.mu.Unlock()
			a, err := o.Sink.Write(r.ctx, runTable, vals)
			if err != nil {
				return fmt.Errorf("record the finished run: %w", err)
			}
			finished = append(finished, a)
		}
	}
	for _, a := range finished {
		if err := a.Wait(r.ctx); err != nil {
			return fmt.Errorf("record the finished run: %w", err)
		}
	}
	return nil
}

func (r *runner) notef(format string, args ...any) {
	if r.o.Progress != nil && r.o.ProgressMode != "none" {
		fmt.Fprintf(r.o.Progress, format, args...)
	}
}

// accounts resolves the accounts to read.
func (r *runner) accounts() ([]string, error) {
	switch {
	case r.o.AllAccounts:
		al, ok := r.o.Source.(accountLister)
		if !ok {
			return nil, fmt.Errorf("--stripe-accounts all: %s has no connected accounts", r.src.Provider())
		}
		acc, err := al.Accounts(r.ctx)
		if err != nil {
			return nil, err
		}
		return append([]string{""}, acc...), nil
	case len(r.o.Accounts) > 0:
		return r.o.Accounts, nil
	}
	return []string{""}, nil
}

// startRun resumes the account's interrupted sweep prev, or starts a new
// one.
func (r *runner) startRun(st *acctState, prev *run) error {
	if prev != nil && !prev.Finished && (prev.Full || !r.o.Full) {
		done, err := doneCount(r.ctx, r.o.Conn, prev)
		if err != nil {
			return err
		}
		st.run, st.resumed = prev, true
		st.phase, st.listCursor = parseCursor(prev.Cursor)
		st.resumeCursor = st.listCursor
		if _, ok := r.src.(balanceLister); !ok {
			st.phase = phaseRest
		}
		// Finished customers are skipped as the listing meets them.
		r.resumed.Add(done)
		r.total.Add(done)
		r.o.Logger.Info("resuming an interrupted backfill", zap.String("account", st.id), zap.String("run", prev.ID),
			zap.Bool("full", prev.Full), zap.Int64("customers_done", done))
		return nil
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	now := time.Now()
	st.run = &run{Provider: r.src.Provider(), Account: st.id, ID: now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:]),
		Full: r.o.Full, StartedAt: now}
	st.phase = phaseBalances
	if _, ok := r.src.(balanceLister); !ok {
		st.phase = phaseRest
	}
	// Not waited for here: the first request goes out now, not after an
	// insert (and the sink's linger). What depends on the row is the next
	// run's choice between resuming this sweep and starting a new one, so
	// no customer's checkpoint is written before it is committed. The run
	// fails if the row cannot be written (run waits for started).
	a, err := r.o.Sink.Write(r.ctx, runTable, st.run.row(now))
	if err != nil {
		return err
	}
	st.started = a
	return nil
}

// enumerate feeds jobs: the chosen customers, or every customer of each
// account from its run's cursor on.
func (r *runner) enumerate(states []*acctState, chosen map[string][]string, jobs chan<- job) error {
	defer r.enumerated.Store(true)
	send := func(j job) bool {
		select {
		case jobs <- j:
			return true
		case <-r.ctx.Done():
			return false
		}
	}
	if chosen != nil {
		n := 0
		for _, cs := range chosen {
			n += len(cs)
		}
		r.total.Store(int64(n))
		for _, st := range states {
			for chunk := range slices.Chunk(chosen[st.id], 1000) {
				read := chunk
				if st.resumed {
					var err error
					if read, err = r.notDone(st, slices.Clone(chunk)); err != nil {
						return err
					}
					r.resumed.Add(int64(len(chunk) - len(read)))
				}
				for _, c := range read {
					if !send(job{acct: st, customer: c, since: st.cursors[c]}) {
						return nil
					}
				}
			}
		}
		return nil
	}
	return r.sweep(states, send)
}

// readDone is a customer whose rows are queued in the sink.
type readDone struct {
	job
	res *readResult
}

// checkpoint is a customer whose checkpoint rows are queued.
type checkpoint struct {
	job
	acks []*sink.Ack
}

func (r *runner) work(jobs <-chan job, out chan<- readDone) {
	for j := range jobs {
		if r.ctx.Err() != nil {
			continue
		}
		res, err := readCustomer(r.ctx, r.src, r.o.Sink, r.o.Logger, j.acct.id, j.customer, j.since, row.SourceBackfill, nil)
		if NotFound(err) {
			if len(r.o.Customers) > 0 {
				// A customer named by --customer, looked for in every
				// account: not this one's (or deleted).
				r.o.Logger.Info("customer not found in account; skipped", zap.String("account", j.acct.id), zap.String("customer", j.customer))
			} else {
				// Listed by this sweep, or named by this account's events
				// (--since), and gone since: deleted. Its rows stay; the
				// customer is done.
				r.deleted.Add(1)
				r.o.Metrics.BackfillDeleted.WithLabelValues(r.src.Provider()).Inc()
				r.o.Logger.Warn("customer deleted while the backfill read it; skipped", zap.String("provider", r.src.Provider()),
					zap.String("account", j.acct.id), zap.String("customer", j.customer), zap.Error(err))
			}
			res, err = &readResult{newest: j.since}, nil
		}
		if err != nil {
			if r.ctx.Err() == nil {
				r.fail(fmt.Errorf("customer %s of %s: %w", j.customer, accountName(j.acct.id), err))
			}
			continue
		}
		out <- readDone{job: j, res: res}
	}
}

// commitRows waits, in order, for each customer's rows to be committed,
// then queues its checkpoint.
func (r *runner) commitRows(in <-chan readDone, out chan<- checkpoint) {
	defer close(out)
	for d := range in {
		if r.ctx.Err() != nil {
			continue
		}
		if err := d.res.wait(r.ctx); err != nil {
			r.failCommit(err)
			continue
		}
		r.rows.Add(int64(d.res.rows))
		if d.res.malformed > 0 {
			// Not checkpointed: the next run reads it again and fails again,
			// loudly, rather than skipping what it could not store.
			r.malformed.Add(int64(d.res.malformed))
			continue
		}
		now := time.Now()
		var acks []*sink.Ack
		if d.res.newest != "" && d.res.newest != d.since {
			a, err := r.o.Sink.Write(r.ctx, cursorTable, cursorRow(r.src.Provider(), d.acct.id, d.customer, d.res.newest, now))
			if err != nil {
				r.failCommit(err)
				continue
			}
			acks = append(acks, a)
		}
		if d.acct.run != nil {
			// A customer's checkpoint names its run: it is written only
			// once the run's row is committed (at once after the first),
			// so a kill never leaves checkpoints that no run row leads
			// the next run to.
			if st := d.acct.started; st != nil {
				if err := st.Wait(r.ctx); err != nil {
					r.failCommit(err)
					continue
				}
			}
			a, err := r.o.Sink.Write(r.ctx, doneTable, []any{r.src.Provider(), d.acct.id, d.acct.run.ID, d.customer,
				uint64(d.res.rows), now.UTC()})
			if err != nil {
				r.failCommit(err)
				continue
			}
			acks = append(acks, a)
		}
		out <- checkpoint{job: d.job, acks: acks}
	}
}

func (r *runner) failCommit(err error) {
	if r.ctx.Err() == nil {
		r.fail(fmt.Errorf("write to ClickHouse: %w", err))
	}
}

// commitCheckpoints waits for each checkpoint, then counts the customer done.
func (r *runner) commitCheckpoints(in <-chan checkpoint) {
	for c := range in {
		if r.ctx.Err() != nil {
			continue
		}
		failed := false
		for _, a := range c.acks {
			if err := a.Wait(r.ctx); err != nil {
				r.failCommit(err)
				failed = true
				break
			}
		}
		if failed {
			continue
		}
		r.customers.Add(1)
		r.o.Metrics.BackfillCustomer.WithLabelValues(r.src.Provider()).Inc()
		if c.page != nil {
			c.acct.mu.Lock()
			c.page.pending--
			delete(c.acct.inflight, c.customer)
			c.acct.mu.Unlock()
			r.advance(c.acct)
		}
		if c.phase == phaseBalances {
			r.balancesRead(1)
		}
	}
}

// advance moves the account's enumeration cursor past every leading page
// whose customers are all done, and records it.
func (r *runner) advance(st *acctState) {
	st.mu.Lock()
	moved := false
	for len(st.pages) > 0 && st.pages[0].complete && st.pages[0].pending == 0 {
		if st.pages[0].cursor != "" {
			st.run.Cursor = st.pages[0].cursor
			moved = true
		}
		st.pages = st.pages[1:]
	}
	var rowVals []any
	if moved {
		rowVals = st.run.row(time.Now())
	}
	st.mu.Unlock()
	if moved {
		// Not waited for: a lost cursor only means listing a few pages again.
		_, _ = r.o.Sink.Write(r.ctx, runTable, rowVals)
	}
}
