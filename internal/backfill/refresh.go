package backfill

import (
	"context"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"go.uber.org/zap"

	"github.com/syncd/syncd/internal/metrics"
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
	Workers int // concurrent refreshes [8]

	// RetryInitial and RetryMax bound the delay before a failed refresh is
	// tried again [1s, 1m]. A failed refresh is never dropped.
	RetryInitial, RetryMax time.Duration
	// Grace is how long in-flight refreshes may run on after Run's context
	// ends [5s]; one cut short is owed again at the next start.
	Grace time.Duration
	// OwedWindow is how far back Run looks for refreshes owed by
	// acknowledged events [72h: Stripe retries webhooks for 3 days].
	OwedWindow time.Duration
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
	running int
	cursors map[refreshKey]string // newest id held, once read or written
	wake    chan struct{}

	// Thin events' related objects whose customer is to be read, with the
	// events that referred to each (MarkRelated).
	related         map[relatedKey][]row.StripeEvent
	relatedReady    []relatedKey
	relatedFailures map[relatedKey]int
}

type refreshKey struct{ account, customer string }

type dirty struct {
	since        time.Time // the oldest mark this entry's next completion covers
	eventID      string    // the newest mark's event: the rows' _event_id
	running      bool
	queued       bool // in ready
	again        bool // marked while running: refresh once more
	againSince   time.Time
	againEventID string
	failures     int
}

// NewRefresher returns a Refresher; Run starts it.
func NewRefresher(o RefresherOptions) *Refresher {
	if o.Workers <= 0 {
		o.Workers = 8
	}
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
	return &Refresher{
		o:       o,
		retry:   Retry{Initial: o.RetryInitial, Max: o.RetryMax},
		entries: map[refreshKey]*dirty{},
		cursors: map[refreshKey]string{},
		wake:    make(chan struct{}, 1),

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
	if customer == "" {
		return
	}
	k := refreshKey{account, customer}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entries[k]
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
	r.gauges()
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

// gauges updates the queue depth and lag; r.mu is held.
func (r *Refresher) gauges() {
	r.o.Metrics.RefreshQueue.Set(float64(len(r.entries) - r.running + len(r.relatedReady)))
	var oldest time.Time
	for _, e := range r.entries {
		if oldest.IsZero() || e.since.Before(oldest) {
			oldest = e.since
		}
	}
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
	stopGrace := context.AfterFunc(ctx, func() { time.AfterFunc(r.o.Grace, cancel) })
	defer stopGrace()

	var wg sync.WaitGroup
	for range r.o.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k, rk, ok := r.next(ctx)
				switch {
				case !ok:
					return
				case rk != nil:
					r.resolved(*rk, r.resolve(work, *rk))
				default:
					r.finish(k, r.refresh(work, k))
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.recoverOwed(ctx)
	}()
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

// recoverOwed marks dirty what acknowledged events still owe, and queues
// the related objects of thin events whose customer is still unknown,
// retrying while ClickHouse is unreachable.
func (r *Refresher) recoverOwed(ctx context.Context) {
	for n := 1; ; n++ {
		owed, err := owedRefreshes(ctx, r.o.Conn, r.o.OwedWindow)
		var thin []row.StripeEvent
		if err == nil {
			thin, err = unresolvedThinEvents(ctx, r.o.Conn, r.o.OwedWindow, TriggerTypes)
		}
		if err == nil {
			for _, k := range owed {
				r.MarkDirty(k.account, k.customer, k.eventID)
			}
			queued := 0
			for _, ev := range thin {
				if typ, id, ok := thinRelated(ev.Payload); ok {
					r.MarkRelated(ev, typ, id)
					queued++
				}
			}
			if len(owed) > 0 || queued > 0 {
				r.o.Logger.Info("refreshes owed by acknowledged events queued", zap.Int("customers", len(owed)),
					zap.Int("thin_events_to_resolve", queued))
			}
			return
		}
		if ctx.Err() != nil {
			return
		}
		wait := r.retry.delay(n)
		r.o.Logger.Warn("cannot read owed refreshes yet; retrying", zap.Duration("retry_in", wait), zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// next waits for a customer to refresh or a related object to read (rk
// non-nil; first, since each leads to a refresh), or for ctx to end.
func (r *Refresher) next(ctx context.Context) (k refreshKey, rk *relatedKey, ok bool) {
	for {
		if ctx.Err() != nil {
			return refreshKey{}, nil, false
		}
		r.mu.Lock()
		if len(r.relatedReady) > 0 {
			rk := r.relatedReady[0]
			r.relatedReady = r.relatedReady[1:]
			if len(r.relatedReady) > 0 || len(r.ready) > 0 {
				r.signal()
			}
			r.mu.Unlock()
			return refreshKey{}, &rk, true
		}
		if len(r.ready) > 0 {
			k := r.ready[0]
			r.ready[0] = refreshKey{}
			r.ready = r.ready[1:]
			e := r.entries[k]
			e.queued, e.running = false, true
			r.running++
			if len(r.ready) > 0 {
				r.signal()
			}
			r.gauges()
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
	e.running = false
	r.running--
	defer r.gauges()
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

// refresh reads k's new transactions, waits until they are committed, then
// records the cursor and the completion.
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
		cs, err := cursors(ctx, r.o.Conn, "stripe", k.account, []string{k.customer})
		if err != nil {
			return err
		}
		since = cs[k.customer]
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
	r.cursors[k] = res.newest
	r.mu.Unlock()
	if res.rows > 0 {
		log.Debug("customer refreshed", zap.String("account", k.account), zap.String("customer", k.customer), zap.Int("rows", res.rows))
	}
	return nil
}
