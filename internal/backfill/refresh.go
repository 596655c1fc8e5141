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
}

type refreshKey struct{ account, customer string }

type dirty struct {
	since      time.Time // the oldest mark this entry's next completion covers
	running    bool
	queued     bool // in ready
	again      bool // marked while running: refresh once more
	againSince time.Time
	failures   int
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
	}
}

// MarkDirty asks for customer of account ("" for the platform) to be
// refreshed. It never blocks; marks for a customer already queued coalesce,
// and a mark during its refresh causes exactly one more.
func (r *Refresher) MarkDirty(account, customer string) {
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
		r.entries[k] = &dirty{since: now, queued: true}
		r.ready = append(r.ready, k)
		r.signal()
	case e.running && !e.again:
		e.again, e.againSince = true, now
	}
	r.gauges()
}

// Idle reports whether nothing is queued, waiting to retry, or running.
func (r *Refresher) Idle() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.entries) == 0
}

func (r *Refresher) signal() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// gauges updates the queue depth and lag; r.mu is held.
func (r *Refresher) gauges() {
	r.o.Metrics.RefreshQueue.Set(float64(len(r.entries) - r.running))
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
				k, ok := r.next(ctx)
				if !ok {
					return
				}
				r.finish(k, r.refresh(work, k))
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

// recoverOwed marks dirty what acknowledged events still owe, retrying
// while ClickHouse is unreachable.
func (r *Refresher) recoverOwed(ctx context.Context) {
	for n := 1; ; n++ {
		owed, err := owedRefreshes(ctx, r.o.Conn, r.o.OwedWindow)
		if err == nil {
			for _, k := range owed {
				r.MarkDirty(k[0], k[1])
			}
			if len(owed) > 0 {
				r.o.Logger.Info("refreshes owed by acknowledged events queued", zap.Int("customers", len(owed)))
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

// next waits for a customer to refresh, or for ctx to end.
func (r *Refresher) next(ctx context.Context) (refreshKey, bool) {
	for {
		if ctx.Err() != nil {
			return refreshKey{}, false
		}
		r.mu.Lock()
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
			return k, true
		}
		r.mu.Unlock()
		select {
		case <-r.wake:
		case <-ctx.Done():
			return refreshKey{}, false
		}
	}
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
		e.again, e.since = false, e.againSince
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
	r.mu.Unlock()
	if !known {
		cs, err := cursors(ctx, r.o.Conn, "stripe", k.account, []string{k.customer})
		if err != nil {
			return err
		}
		since = cs[k.customer]
	}
	log := r.o.Logger
	res, err := readCustomer(ctx, r.o.Source, r.o.Sink, log, k.account, k.customer, since, row.SourceRefresh)
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
