package backfill

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"go.uber.org/zap"

	"github.com/syncd/syncd/internal/metrics"
	"github.com/syncd/syncd/internal/ratelimit"
	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/internal/sink"
)

// RefresherOptions configure a Refresher.
type RefresherOptions struct {
	Source  *StripeSource
	Sink    *sink.Sink
	Conn    driver.Conn // reads cursors and the intake log
	Metrics *metrics.Metrics
	Logger  *zap.Logger
	// Workers caps the refreshes reading the API at once; one whose
	// rows are read waits for their commit without holding a place. 0 (the
	// default): as many as keep the rate limit busy, by Little's law on
	// the request: this process's share of the limit × a request's
	// latency (measured, without the wait for the limiter) × 1.5, plus 2,
	// between 4 and 256. The limiter, not this, bounds the request rate.
	Workers int

	// RetryInitial and RetryMax bound the delay before a failed refresh is
	// tried again [1s, 1m]. A failed refresh is never dropped.
	RetryInitial, RetryMax time.Duration
	// Grace is how long in-flight refreshes may run on after Run's context
	// ends [5s]; one cut short is owed again at the next start.
	Grace time.Duration
	// OwedWindow is how far back Run looks for refreshes owed by
	// acknowledged events [72h: Stripe retries webhooks for 3 days].
	OwedWindow time.Duration

	// Owner, when set, decides which customers this process refreshes (and
	// which thin events' objects it reads): a mark for a customer it does
	// not own is left to the owner, which finds the acknowledged event in
	// ClickHouse. nil: this process owns everything.
	Owner Owner
	// RecentInterval is how often trigger events received since the last
	// look are read from ClickHouse [2s]: what another process received
	// for a customer this one owns. SweepInterval is how often every
	// refresh still owed in OwedWindow is [15s]: what a process that died
	// had queued, whoever received it. Both run from Run's start.
	RecentInterval, SweepInterval time.Duration
	// MaxCursors bounds the incremental cursors kept in memory [100,000];
	// past it one is forgotten and read again from ClickHouse when needed.
	MaxCursors int
	// Park is how long an account is left alone after a refresh of it
	// failed with a permanent error, 401 or 403 (a revoked key, a
	// disconnected Connect account) [1h]; its marks meanwhile are dropped.
	Park time.Duration
}

// Owner tells whether this process owns a key: "account/customer" for a
// refresh, "account/type/id" for a thin event's related object.
type Owner interface {
	Owns(key string) bool
}

// Refresher re-reads the balance transactions of customers marked dirty by
// webhooks: coalesced per customer, one refresh in flight per customer,
// incrementally from the newest transaction held. Completions are recorded
// in ClickHouse so a restarted process redoes what acknowledged events owe.
type Refresher struct {
	o     RefresherOptions
	retry Retry

	mu      sync.Mutex
	entries map[refreshKey]*dirty
	ready   []refreshKey
	running int                   // refreshes started and not finished
	reading int                   // refreshes and related reads holding a place to read the API
	cursors map[refreshKey]string // newest id held, once read or written
	parked  map[string]time.Time  // account → until when its marks are dropped
	wake    chan struct{}
	backlog atomic.Int64  // customers owed for longer than backlogAfter, as of the last gauges
	sweep   chan struct{} // a full sweep now (the fleet changed)

	// Thin events' related objects whose customer is to be read, with the
	// events that referred to each (MarkRelated).
	related         map[relatedKey][]row.StripeEvent
	relatedReady    []relatedKey
	relatedFailures map[relatedKey]int
}

type refreshKey struct{ account, customer string }

func (k refreshKey) String() string { return k.account + "/" + k.customer }

type dirty struct {
	since        time.Time // the oldest mark this entry's next completion covers
	eventID      string    // the newest mark's event: the rows' _event_id
	through      time.Time // while running: the events this refresh covers
	running      bool
	reading      bool // running and holding a place to read the API
	queued       bool // in ready
	again        bool // marked while running: refresh once more
	againSince   time.Time
	againEventID string
	failures     int
}

// NewRefresher returns a Refresher; Run starts it.
func NewRefresher(o RefresherOptions) *Refresher {
	if o.Metrics == nil {
		o.Metrics = metrics.New()
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.RetryInitial <= 0 {
		o.RetryInitial = time.Second
	}
	if o.RetryMax <= 0 {
		o.RetryMax = time.Minute
	}
	if o.Grace <= 0 {
		o.Grace = 5 * time.Second
	}
	if o.OwedWindow <= 0 {
		o.OwedWindow = 72 * time.Hour
	}
	if o.RecentInterval <= 0 {
		o.RecentInterval = 2 * time.Second
	}
	if o.SweepInterval <= 0 {
		o.SweepInterval = 15 * time.Second
	}
	if o.MaxCursors <= 0 {
		o.MaxCursors = 100_000
	}
	if o.Park <= 0 {
		o.Park = time.Hour
	}
	return &Refresher{
		o:       o,
		retry:   Retry{Initial: o.RetryInitial, Max: o.RetryMax},
		entries: map[refreshKey]*dirty{},
		cursors: map[refreshKey]string{},
		parked:  map[string]time.Time{},
		wake:    make(chan struct{}, 1),
		sweep:   make(chan struct{}, 1),

		related:         map[relatedKey][]row.StripeEvent{},
		relatedFailures: map[relatedKey]int{},
	}
}

// MarkDirty asks for customer of account ("" for the platform) to be
// refreshed because of event eventID ("" when none), which the rows the
// refresh writes name as their _event_id. It never blocks; marks for a
// customer already queued coalesce (the newest event's id is kept), and a
// mark during its refresh causes exactly one more.
func (r *Refresher) MarkDirty(account, customer, eventID string) {
	r.mark(refreshKey{account, customer}, eventID, time.Time{})
}

// mark queues k for the event eventID. A mark found in ClickHouse carries
// the event's arrival: it needs no further refresh when one running now
// already covers it. Keys of parked accounts, or owned by another process,
// are dropped.
func (r *Refresher) mark(k refreshKey, eventID string, received time.Time) {
	if k.customer == "" || !r.owns(k.String()) {
		return
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if until, ok := r.parked[k.account]; ok {
		if now.Before(until) {
			return
		}
		delete(r.parked, k.account)
	}
	e := r.entries[k]
	if e != nil && e.running && !received.IsZero() && !received.After(e.through) {
		return
	}
	switch {
	case e == nil:
		r.entries[k] = &dirty{since: now, eventID: eventID, queued: true}
		r.ready = append(r.ready, k)
		r.signal()
	case e.running && !e.again:
		e.again, e.againSince, e.againEventID = true, now, eventID
	case e.running:
		e.againEventID = eventID
	default:
		e.eventID = eventID
	}
	r.queueGauge()
}

// maxAutoWorkers bounds the refreshes reading the API when Workers is 0.
const maxAutoWorkers = 256

// maxRunning bounds the refreshes started and not finished, most of them
// waiting for their rows to commit: while ClickHouse is slow, the rows
// stay in the sink's bounded queue and the marks in the entries, rather
// than in ever more goroutines.
const maxRunning = 4096

// concurrency is how many refreshes (and related reads) may read the API
// at once; r.mu is held.
//
// It is Little's law on the request, not on the refresh: the requests a
// limit of λ/s needs in flight are λ × a request's latency. A refresh's
// own duration is no measure of that: it includes the wait for the limiter
// and for ClickHouse, both of which grow with the refreshes in flight, so
// sizing by it ran away to the cap, and with hundreds of requests queued
// at the limiter each page of a customer waited seconds for its turn (the
// customers with many pages, read one page after another, then drained
// long after the rest: 0.62–0.77 of the limit, issue 16). The latency is
// the source's moving average of a request without the limiter's wait;
// × 1.5 + 2 leaves room for its jitter and for the rest of a read (the
// cursor query, the rows handed to the sink).
func (r *Refresher) concurrency() int {
	if r.o.Workers > 0 {
		return r.o.Workers
	}
	rate, latency := math.Inf(1), time.Duration(0)
	if r.o.Source != nil {
		rate, latency = r.o.Source.CurrentLimit(), r.o.Source.Latency()
	}
	if latency <= 0 {
		latency = time.Second // until measured: generous, so the start is at full rate
	}
	n := rate*latency.Seconds()*1.5 + 2
	if math.IsInf(n, 0) || math.IsNaN(n) || n > maxAutoWorkers {
		return maxAutoWorkers
	}
	return max(4, int(math.Ceil(n)))
}

// backlogAfter is how long a customer waits for its refresh before it
// counts as a backlog: longer than a refresh takes when the budget keeps up
// (a p95 of about 0.6 s at 300 ms API latency, docs/benchmarks.md).
const backlogAfter = 2 * time.Second

// Backlog is how many customers have waited for a refresh longer than
// backlogAfter, as of the last second: the fleet gives this process a larger
// share of the API budget while it is not zero (internal/fleet).
func (r *Refresher) Backlog() int { return int(r.backlog.Load()) }

// keepOwned filters queue in place to the keys this process owns, calling
// drop for each other one; r.mu is held.
func keepOwned[K fmt.Stringer](r *Refresher, queue []K, drop func(K)) []K {
	kept := queue[:0]
	for _, k := range queue {
		if r.owns(k.String()) {
			kept = append(kept, k)
		} else {
			drop(k)
		}
	}
	clear(queue[len(kept):])
	return kept
}

func (r *Refresher) owns(key string) bool {
	return r.o.Owner == nil || r.o.Owner.Owns(key)
}

// Rebalance drops the queued work this process no longer owns (the fleet
// changed: the owner finds it in ClickHouse) and sweeps for the work it
// now owns at once, such as a dead process's. Refreshes and reads in
// flight finish.
func (r *Refresher) Rebalance() {
	r.mu.Lock()
	r.ready = keepOwned(r, r.ready, func(k refreshKey) { delete(r.entries, k) })
	for k, e := range r.entries {
		if !e.running && !e.queued && !r.owns(k.String()) { // waiting to retry
			delete(r.entries, k)
		}
	}
	r.relatedReady = keepOwned(r, r.relatedReady, func(k relatedKey) { delete(r.related, k) })
	r.queueGauge()
	r.mu.Unlock()
	select {
	case r.sweep <- struct{}{}:
	default:
	}
}

// Idle reports whether nothing is queued, waiting to retry, or running.
func (r *Refresher) Idle() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.entries) == 0 && len(r.related) == 0
}

func (r *Refresher) signal() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// queueGauge updates the queue depth; r.mu is held. O(1): it runs on every
// mark.
func (r *Refresher) queueGauge() {
	r.o.Metrics.RefreshQueue.Set(float64(len(r.entries) - r.running + len(r.relatedReady)))
}

// gauges updates the queue depth and this process's lag, once a second;
// r.mu is held.
func (r *Refresher) gauges() {
	r.queueGauge()
	var oldest time.Time
	backlog, cutoff := 0, time.Now().Add(-backlogAfter)
	for _, e := range r.entries {
		if oldest.IsZero() || e.since.Before(oldest) {
			oldest = e.since
		}
		if !e.running && e.since.Before(cutoff) {
			backlog++
		}
	}
	r.backlog.Store(int64(backlog))
	lag := 0.0
	if !oldest.IsZero() {
		lag = time.Since(oldest).Seconds()
	}
	r.o.Metrics.SyncLag.WithLabelValues("stripe").Set(lag)
}

// Run first marks dirty every customer whose acknowledged trigger events
// arrived after its last recorded refresh, then refreshes until ctx ends.
// It returns once in-flight refreshes have finished (or Grace has passed).
func (r *Refresher) Run(ctx context.Context) error {
	// In-flight refreshes outlive ctx by Grace, so that SIGTERM does not
	// waste a list call that is nearly done.
	work, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	// Refreshes wait for the API's limits ahead of backfill and verify reads.
	work = ratelimit.WithPriority(work, ratelimit.Refresh)
	stopGrace := context.AfterFunc(ctx, func() { time.AfterFunc(r.o.Grace, cancel) })
	defer stopGrace()

	var wg sync.WaitGroup
	// The dispatcher holds a count of wg until it returns, so the counts
	// it adds for what it starts never race with Wait.
	wg.Go(func() {
		for {
			k, rk, ok := r.next(ctx)
			switch {
			case !ok:
				return
			case rk != nil:
				wg.Go(func() {
					release := sync.OnceFunc(r.release)
					err := r.resolve(work, *rk, release)
					release()
					r.resolved(*rk, err)
				})
			default:
				wg.Go(func() { r.finish(k, r.refresh(work, k)) })
			}
		}
	})
	wg.Go(func() { r.sweepOwed(ctx) })
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			r.mu.Lock()
			r.gauges()
			r.mu.Unlock()
		case <-ctx.Done():
			wg.Wait()
			return nil
		}
	}
}

// sweepOwed finds in ClickHouse, for as long as ctx lasts, the work that
// acknowledged events owe and this process owns: every SweepInterval (and
// at once when the fleet changes) every refresh still owed within
// OwedWindow and every thin event whose object was never read; every
// RecentInterval those of events received since the last look. Failures
// (ClickHouse away) are retried at the next tick; marks coalesce with what
// is queued, so overlap costs nothing.
func (r *Refresher) sweepOwed(ctx context.Context) {
	full := time.NewTicker(r.o.SweepInterval)
	defer full.Stop()
	recent := time.NewTicker(r.o.RecentInterval)
	defer recent.Stop()
	var (
		lastFull   time.Time // zero: the first full sweep has not succeeded
		lastRecent time.Time
		failures   int
	)
	sweep := func(since time.Time, fullSweep bool) bool {
		start := time.Now()
		err := r.sweepOnce(ctx, since, fullSweep)
		if err != nil {
			if ctx.Err() == nil {
				failures++
				lvl := zap.DebugLevel
				if failures == 3 {
					lvl = zap.WarnLevel
				}
				r.o.Logger.Check(lvl, "cannot read owed refreshes yet; will look again").Write(zap.Error(err))
			}
			return false
		}
		failures = 0
		if fullSweep {
			lastFull = start
		}
		lastRecent = start
		return true
	}
	sweep(time.Time{}, true)
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.sweep:
			sweep(time.Time{}, true)
		case <-full.C:
			sweep(time.Time{}, true)
		case <-recent.C:
			if lastFull.IsZero() {
				sweep(time.Time{}, true)
				continue
			}
			// An event is stored before its 200 and its received_at is
			// its arrival, up to the ack timeout earlier: look back that
			// far and a little more.
			sweep(lastRecent.Add(-15*time.Second), false)
		}
	}
}

// sweepOnce marks what is owed: since events received at or after since
// (zero: all of OwedWindow, and the fleet-wide gauges are updated).
func (r *Refresher) sweepOnce(ctx context.Context, since time.Time, full bool) error {
	window := r.o.OwedWindow
	if !full {
		window = time.Since(since)
	}
	owed, err := owedRefreshes(ctx, r.o.Conn, window, !full)
	if err != nil {
		return err
	}
	thin, err := unresolvedThinEvents(ctx, r.o.Conn, window, TriggerTypes)
	if err != nil {
		return err
	}
	marked, queued := 0, 0
	var oldest time.Time
	for _, o := range owed {
		if oldest.IsZero() || o.received.Before(oldest) {
			oldest = o.received
		}
		k := refreshKey{o.account, o.customer}
		if r.owns(k.String()) {
			r.mark(k, o.eventID, o.received)
			marked++
		}
	}
	for _, ev := range thin {
		if typ, id, ok := thinRelated(ev.Payload); ok && r.owns(relatedKey{ev.AccountID, typ, id}.String()) {
			r.MarkRelated(ev, typ, id)
			queued++
		}
	}
	if full {
		r.o.Metrics.RefreshOwed.Set(float64(len(owed)))
		age := 0.0
		if !oldest.IsZero() {
			age = max(0, time.Since(oldest).Seconds())
		}
		r.o.Metrics.RefreshOwedOldest.Set(age)
		if marked > 0 || queued > 0 {
			r.o.Logger.Info("refreshes owed by acknowledged events queued", zap.Int("customers", marked),
				zap.Int("thin_events_to_resolve", queued), zap.Int("owed_fleet_wide", len(owed)))
		}
	}
	return nil
}

// next waits for a place to read the API and a customer to refresh or a
// related object to read (rk non-nil; first, since each leads to a
// refresh), or for ctx to end. The place is taken: the refresh gives it up
// once it has read the API (doneReading), the related read once it has its
// answer (release).
func (r *Refresher) next(ctx context.Context) (k refreshKey, rk *relatedKey, ok bool) {
	for {
		if ctx.Err() != nil {
			return refreshKey{}, nil, false
		}
		r.mu.Lock()
		if r.reading >= r.concurrency() {
			r.mu.Unlock()
			select {
			case <-r.wake:
			case <-ctx.Done():
				return refreshKey{}, nil, false
			}
			continue
		}
		if len(r.relatedReady) > 0 {
			rk := r.relatedReady[0]
			r.relatedReady = r.relatedReady[1:]
			r.reading++
			if len(r.relatedReady) > 0 || len(r.ready) > 0 {
				r.signal()
			}
			r.mu.Unlock()
			return refreshKey{}, &rk, true
		}
		if len(r.ready) > 0 && r.running < maxRunning {
			k := r.ready[0]
			r.ready[0] = refreshKey{}
			r.ready = r.ready[1:]
			e := r.entries[k]
			e.queued, e.running, e.reading = false, true, true
			// What this refresh will cover (see refresh).
			e.through = time.Now().Truncate(time.Second).Add(-time.Second)
			r.running++
			r.reading++
			if len(r.ready) > 0 {
				r.signal()
			}
			r.queueGauge()
			r.mu.Unlock()
			return k, nil, true
		}
		r.mu.Unlock()
		select {
		case <-r.wake:
		case <-ctx.Done():
			return refreshKey{}, nil, false
		}
	}
}

// resolved records the outcome of reading k's customer: a failure is
// retried after a backoff, like a failed refresh.
func (r *Refresher) resolved(k relatedKey, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		delete(r.relatedFailures, k)
		return
	}
	r.relatedFailures[k]++
	wait := r.retry.delay(r.relatedFailures[k])
	r.o.Logger.Warn("reading a thin event's related object failed; will retry", zap.String("account", k.account),
		zap.String("object_type", k.objectType), zap.String("object", k.id), zap.Duration("retry_in", wait), zap.Error(err))
	time.AfterFunc(wait, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.relatedReady = append(r.relatedReady, k)
		r.signal()
	})
}

// finish records the outcome of k's refresh: done, once more, or retry.
func (r *Refresher) finish(k refreshKey, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entries[k]
	if e.reading { // failed while reading the API
		e.reading = false
		r.reading--
	}
	e.running = false
	r.running--
	r.signal() // a place is free
	defer r.queueGauge()
	if status, permanent := permanentError(err); permanent {
		// Retrying cannot help until someone acts: park the account and
		// say so. Its events stay owed in ClickHouse, so the sweep after
		// the park (or another process) tries again.
		delete(r.entries, k)
		r.parked[k.account] = time.Now().Add(r.o.Park)
		r.o.Metrics.RefreshParked.WithLabelValues(strconv.Itoa(status)).Inc()
		r.o.Logger.Error("refresh failed with a permanent error; the account's refreshes are parked",
			zap.String("account", k.account), zap.String("customer", k.customer), zap.Int("status", status),
			zap.Duration("parked_for", r.o.Park), zap.Error(err))
		return
	}
	if err != nil {
		e.failures++
		wait := r.retry.delay(e.failures)
		r.o.Logger.Warn("refresh failed; will retry", zap.String("account", k.account), zap.String("customer", k.customer),
			zap.Int("failures", e.failures), zap.Duration("retry_in", wait), zap.Error(err))
		time.AfterFunc(wait, func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			if e := r.entries[k]; e != nil && !e.running && !e.queued {
				e.queued = true
				r.ready = append(r.ready, k)
				r.signal()
			}
		})
		return
	}
	e.failures = 0
	if e.again {
		e.again, e.since, e.eventID = false, e.againSince, e.againEventID
		e.queued = true
		r.ready = append(r.ready, k)
		r.signal()
		return
	}
	delete(r.entries, k)
}

// release gives up a related read's place to read the API.
func (r *Refresher) release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reading--
	r.signal()
}

// doneReading gives up k's place to read the API: its refresh has read what it
// needs and now only waits for ClickHouse.
func (r *Refresher) doneReading(k refreshKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.entries[k]; e.reading {
		e.reading = false
		r.reading--
		r.signal()
	}
}

// refresh reads k's new transactions, gives up its place to read the API,
// waits until the rows are committed, then records the cursor and the
// completion: never before the rows, so that a cursor never skips a row
// that is not held. The wait holds no place, so the requests in flight do
// not depend on how fast ClickHouse commits; the cursor and completion rows
// of the refreshes finishing together share the sink's inserts.
func (r *Refresher) refresh(ctx context.Context, k refreshKey) error {
	// Every trigger received before start announced a change this list call
	// sees; DateTime has whole seconds, so claim one second less.
	start := time.Now()
	through := start.Truncate(time.Second).Add(-time.Second)

	r.mu.Lock()
	since, known := r.cursors[k]
	var eventID *string
	if id := r.entries[k].eventID; id != "" {
		eventID = &id
	}
	r.mu.Unlock()
	if !known {
		var err error
		if since, err = r.readCursors(ctx, k); err != nil {
			return err
		}
	}
	log := r.o.Logger
	res, err := readCustomer(ctx, r.o.Source, r.o.Sink, log, k.account, k.customer, since, row.SourceRefresh, eventID)
	if NotFound(err) {
		// A deleted customer has no transactions to read: done.
		log.Info("customer not found; nothing to refresh", zap.String("account", k.account), zap.String("customer", k.customer))
		res, err = &readResult{newest: since}, nil
	}
	if err != nil {
		return err
	}
	r.doneReading(k)
	if err := res.wait(ctx); err != nil {
		return err
	}
	now := time.Now()
	acks := make([]*sink.Ack, 0, 2)
	if res.newest != "" && res.newest != since {
		a, err := r.o.Sink.Write(ctx, cursorTable, cursorRow("stripe", k.account, k.customer, res.newest, now))
		if err != nil {
			return err
		}
		acks = append(acks, a)
	}
	a, err := r.o.Sink.Write(ctx, refreshTable, refreshRow(k.account, k.customer, through, now))
	if err != nil {
		return err
	}
	acks = append(acks, a)
	for _, a := range acks {
		if err := a.Wait(ctx); err != nil {
			return err
		}
	}
	r.mu.Lock()
	r.remember(k, res.newest)
	r.mu.Unlock()
	if res.rows > 0 {
		log.Debug("customer refreshed", zap.String("account", k.account), zap.String("customer", k.customer), zap.Int("rows", res.rows))
	}
	return nil
}

// cursorPrefetch is how many queued customers' cursors one query reads.
const cursorPrefetch = 200

// readCursors reads k's cursor from ClickHouse, and in the same query those
// of customers of k's account queued behind it whose cursors are not in
// memory: a backlog then costs one query per cursorPrefetch refreshes, not
// one each (ClickHouse connections, not the API, would bound the rate).
func (r *Refresher) readCursors(ctx context.Context, k refreshKey) (string, error) {
	want := []string{k.customer}
	r.mu.Lock()
	for _, q := range r.ready {
		if len(want) == cursorPrefetch {
			break
		}
		if _, known := r.cursors[q]; !known && q.account == k.account {
			want = append(want, q.customer)
		}
	}
	r.mu.Unlock()
	cs, err := cursors(ctx, r.o.Conn, "stripe", k.account, want)
	if err != nil {
		return "", err
	}
	r.mu.Lock()
	for _, c := range want[1:] {
		r.remember(refreshKey{k.account, c}, cs[c]) // "": none held
	}
	r.mu.Unlock()
	return cs[k.customer], nil
}

// remember keeps k's cursor, forgetting another when MaxCursors are kept;
// r.mu is held.
func (r *Refresher) remember(k refreshKey, newest string) {
	if _, known := r.cursors[k]; !known && len(r.cursors) >= r.o.MaxCursors {
		for old := range r.cursors { // any one: map order is random enough
			delete(r.cursors, old)
			break
		}
	}
	r.cursors[k] = newest
}

// permanentError reports whether err is an API answer that no retry can
// change: 401 (the key is revoked or wrong) or 403 (e.g. a Connect account
// that disconnected the platform).
func permanentError(err error) (status int, ok bool) {
	var re *RequestError
	if errors.As(err, &re) && (re.Status == http.StatusUnauthorized || re.Status == http.StatusForbidden) {
		return re.Status, true
	}
	return 0, false
}
