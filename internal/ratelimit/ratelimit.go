// Package ratelimit is syncd's client side of a provider's API limits: per
// budget (an account, or a Connect platform and all its connected accounts)
// a global rate, a rate per endpoint and a cap on requests in flight, each
// split across the fleet and each lowered by the 429s that name it and
// raised again gradually (additive increase, multiplicative decrease).
//
// Waiting is fair: of each (account, endpoint) lane at most laneDepth
// requests at a time wait for the budget's tokens, so a busy account queues
// behind every other account's next requests rather than ahead of them, and
// within a lane a refresh goes before backfill and verify reads.
package ratelimit

import (
	"context"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Reasons a provider gives for a 429; Stripe names them in the
// Stripe-Rate-Limited-Reason header.
const (
	GlobalRate          = "global-rate"
	EndpointRate        = "endpoint-rate"
	GlobalConcurrency   = "global-concurrency"
	EndpointConcurrency = "endpoint-concurrency"
	ResourceSpecific    = "resource-specific"
)

// Limits are one budget's limits. A zero field is no limit of that kind.
type Limits struct {
	Global      float64 // requests per second
	Endpoint    float64 // requests per second to each endpoint
	Concurrency int     // requests in flight
}

// Scope says whose budget a request made for a connected account spends.
type Scope string

const (
	// ScopePlatform: one budget for the key's own account and every
	// connected account, the safe assumption where the provider does not
	// say which applies.
	ScopePlatform Scope = "platform"
	// ScopeAccount: each connected account has a budget of its own.
	ScopeAccount Scope = "account"
)

// Priority orders the requests of one lane waiting for tokens.
type Priority int

const (
	// Refresh is a webhook-triggered refresh: it goes first.
	Refresh Priority = iota
	// Bulk is a backfill or verify read.
	Bulk
	priorities
)

// AIMD tuning: a 429 halves the limit it names (at most once per cooldown,
// since the requests already in flight meet the same limit), down to a
// floor; the limit then grows back by a fixed fraction per second.
const (
	cutFactor = 0.5
	floor     = 0.05
	recovery  = 0.1 // of the configured limit per second
	cooldown  = time.Second
)

// Options configure a Limiter.
type Options struct {
	Limits Limits
	Scope  Scope // ScopePlatform when empty
	// OnCut, when set, is called (without locks held) when a 429 lowers a
	// limit, with the reason and the new limit of this process for that
	// budget (requests per second, or requests in flight).
	OnCut func(reason string, limit float64)
}

// Limiter is the process's view of a provider's limits. Its state per
// budget and per endpoint is made on first use, so thousands of accounts
// cost only those that send requests.
type Limiter struct {
	o Options

	mu      sync.Mutex
	share   float64 // of each limit, for this process (fleet)
	budgets map[string]*budget
	now     func() time.Time
}

// New returns a limiter for o.
func New(o Options) *Limiter {
	if o.Scope == "" {
		o.Scope = ScopePlatform
	}
	return &Limiter{o: o, share: 1, budgets: map[string]*budget{}, now: time.Now}
}

// Limits returns the configured limits (before the fleet's split).
func (l *Limiter) Limits() Limits { return l.o.Limits }

// Scope returns the budget scope.
func (l *Limiter) Scope() Scope { return l.o.Scope }

// SetShare makes this process spend a fraction (0, 1] of every limit: the
// fleet's split of one budget between its live members.
func (l *Limiter) SetShare(f float64) {
	if f <= 0 || f > 1 || math.IsNaN(f) {
		f = 1
	}
	l.mu.Lock()
	l.share = f
	l.mu.Unlock()
}

// Share returns the fraction of each limit this process spends.
func (l *Limiter) Share() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.share
}

// aimd is one limit's multiplier: f since the last cut at, recovering.
type aimd struct {
	f  float64
	at time.Time // zero: never cut, f is 1
}

func (a *aimd) factor(now time.Time) float64 {
	if a.at.IsZero() {
		return 1
	}
	return min(1, a.f+recovery*now.Sub(a.at).Seconds())
}

// cut lowers the multiplier unless it was lowered within the cooldown.
func (a *aimd) cut(now time.Time) bool {
	if !a.at.IsZero() && now.Sub(a.at) < cooldown {
		return false
	}
	a.f, a.at = max(floor, a.factor(now)*cutFactor), now
	return true
}

// budget is one account's (or platform's) state.
type budget struct {
	global    *rate.Limiter
	gAIMD     aimd
	cAIMD     aimd
	endpoints map[string]*endpoint
	lanes     map[[2]string]*lane // by (account, endpoint)

	inFlight int
	slotQ    []chan struct{} // waiting for a slot, first come first served
}

type endpoint struct {
	bucket *rate.Limiter
	aimd   aimd
}

// lane lets laneDepth requests of an (account, endpoint) at a time wait
// for the budget: the others wait here, refreshes first.
type lane struct {
	n       int // requests past the lane
	waiters [priorities][]chan struct{}
}

// laneDepth is two so that a lane's next request has reserved its token
// before the one ahead leaves: with one, each hand-over (a goroutine
// waking) came after the token was due, and a token bucket holding one
// token lost that time (a backfill reached 95.8% of its rate, not 100%).
const laneDepth = 2

func newBucket() *rate.Limiter { return rate.NewLimiter(rate.Inf, 1) }

// budgetKey is the budget that account's requests spend.
func (l *Limiter) budgetKey(account string) string {
	if l.o.Scope == ScopeAccount {
		return account
	}
	return ""
}

func (l *Limiter) budget(account string) *budget {
	k := l.budgetKey(account)
	b := l.budgets[k]
	if b == nil {
		b = &budget{global: newBucket(), endpoints: map[string]*endpoint{}, lanes: map[[2]string]*lane{}}
		l.budgets[k] = b
	}
	return b
}

func (b *budget) endpoint(name string) *endpoint {
	e := b.endpoints[name]
	if e == nil {
		e = &endpoint{bucket: newBucket()}
		b.endpoints[name] = e
	}
	return e
}

// setRate sets bucket to limit×share×factor per second (limit 0: no limit).
func setRate(bucket *rate.Limiter, now time.Time, limit, share, factor float64) {
	r := rate.Inf
	if limit > 0 {
		r = rate.Limit(limit * share * factor)
	}
	if bucket.Limit() != r {
		bucket.SetLimitAt(now, r)
	}
}

// slots is the budget's current cap on requests in flight (0: none).
func (l *Limiter) slots(b *budget, now time.Time) int {
	if l.o.Limits.Concurrency <= 0 {
		return 0
	}
	return max(1, int(float64(l.o.Limits.Concurrency)*l.share*b.cAIMD.factor(now)))
}

// Permit is one admitted request. Done must be called once it has its
// answer.
type Permit struct {
	l        *Limiter
	b        *budget
	endpoint string
	slot     bool
}

// Wait blocks until a request of account to endpoint may be sent, or ctx
// ends.
func (l *Limiter) Wait(ctx context.Context, account, endpoint string, p Priority) (*Permit, error) {
	if p < 0 || p >= priorities {
		p = Bulk
	}
	l.mu.Lock()
	b := l.budget(account)
	key := [2]string{account, endpoint}
	ln := b.lanes[key]
	if ln == nil {
		ln = &lane{}
		b.lanes[key] = ln
	}
	if ln.n >= laneDepth {
		ch := make(chan struct{})
		ln.waiters[p] = append(ln.waiters[p], ch)
		l.mu.Unlock()
		select {
		case <-ch: // a place in the lane was handed over (n counts it)
		case <-ctx.Done():
			l.mu.Lock()
			if !removeWaiter(&ln.waiters[p], ch) {
				// Handed over just now: pass it on.
				l.leaveLane(b, key, ln)
			}
			l.mu.Unlock()
			return nil, ctx.Err()
		}
	} else {
		ln.n++
		l.mu.Unlock()
	}

	permit := &Permit{l: l, b: b, endpoint: endpoint}
	err := l.admit(ctx, permit)
	l.mu.Lock()
	l.leaveLane(b, key, ln)
	l.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return permit, nil
}

// leaveLane hands a place in the lane to its next waiter, refreshes
// first, or frees it (and forgets the lane when it is empty: lanes cost
// nothing idle).
func (l *Limiter) leaveLane(b *budget, key [2]string, ln *lane) {
	for p := range ln.waiters {
		if q := ln.waiters[p]; len(q) > 0 {
			ln.waiters[p] = q[1:]
			close(q[0])
			return
		}
	}
	if ln.n--; ln.n == 0 {
		delete(b.lanes, key)
	}
}

func removeWaiter(q *[]chan struct{}, ch chan struct{}) bool {
	for i, c := range *q {
		if c == ch {
			*q = append((*q)[:i], (*q)[i+1:]...)
			return true
		}
	}
	return false
}

// admit takes a slot, then the endpoint's token, then the budget's.
func (l *Limiter) admit(ctx context.Context, pm *Permit) error {
	b := pm.b
	l.mu.Lock()
	if n := l.slots(b, l.now()); n > 0 {
		if b.inFlight >= n || len(b.slotQ) > 0 {
			ch := make(chan struct{})
			b.slotQ = append(b.slotQ, ch)
			l.mu.Unlock()
			select {
			case <-ch: // a slot was handed over (inFlight counts it)
			case <-ctx.Done():
				l.mu.Lock()
				if !removeWaiter(&b.slotQ, ch) {
					l.releaseSlot(b)
				}
				l.mu.Unlock()
				return ctx.Err()
			}
			l.mu.Lock()
		} else {
			b.inFlight++
		}
		pm.slot = true
	}
	now := l.now()
	var buckets []*rate.Limiter
	if l.o.Limits.Endpoint > 0 {
		e := b.endpoint(pm.endpoint)
		setRate(e.bucket, now, l.o.Limits.Endpoint, l.share, e.aimd.factor(now))
		buckets = append(buckets, e.bucket)
	}
	setRate(b.global, now, l.o.Limits.Global, l.share, b.gAIMD.factor(now))
	buckets = append(buckets, b.global)
	l.mu.Unlock()
	// One bucket after the other, the budget's last, so that the request
	// leaves when the global bucket says (the one all endpoints share).
	for _, bk := range buckets {
		if err := bk.Wait(ctx); err != nil {
			pm.release()
			return err
		}
	}
	return nil
}

// releaseSlot frees a slot and hands those free (the cap may have grown
// since) to the first waiters; l.mu is held.
func (l *Limiter) releaseSlot(b *budget) {
	b.inFlight--
	n := l.slots(b, l.now())
	for len(b.slotQ) > 0 && (n == 0 || b.inFlight < n) {
		b.inFlight++ // the waiter's
		close(b.slotQ[0])
		b.slotQ = b.slotQ[1:]
	}
}

func (pm *Permit) release() {
	if !pm.slot {
		return
	}
	pm.slot = false
	pm.l.mu.Lock()
	pm.l.releaseSlot(pm.b)
	pm.l.mu.Unlock()
}

// Done ends the request. reason is the 429's reason ("" for any other
// answer, or a 429 that names no limit): the limit it names is lowered.
func (pm *Permit) Done(reason string) {
	pm.release()
	if reason == "" {
		return
	}
	l := pm.l
	l.mu.Lock()
	now := l.now()
	b := pm.b
	var cut bool
	var limit float64
	switch reason {
	case GlobalRate:
		if l.o.Limits.Global > 0 && b.gAIMD.cut(now) {
			cut, limit = true, l.o.Limits.Global*l.share*b.gAIMD.factor(now)
		}
	case EndpointRate:
		if l.o.Limits.Endpoint > 0 {
			e := b.endpoint(pm.endpoint)
			if e.aimd.cut(now) {
				cut, limit = true, l.o.Limits.Endpoint*l.share*e.aimd.factor(now)
			}
		}
	case GlobalConcurrency, EndpointConcurrency:
		// syncd caps only the budget's requests in flight: an endpoint's
		// concurrency limit lowers that cap too.
		if l.o.Limits.Concurrency > 0 && b.cAIMD.cut(now) {
			cut, limit = true, float64(l.slots(b, now))
		}
	}
	l.mu.Unlock()
	if cut && l.o.OnCut != nil {
		l.o.OnCut(reason, limit)
	}
}

// Current returns the limits this process applies now to account's
// budget: its share, lowered by recent 429s.
func (l *Limiter) Current(account, endpoint string) Limits {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	var out Limits
	b := l.budgets[l.budgetKey(account)]
	if b == nil {
		b = &budget{}
	}
	if g := l.o.Limits.Global; g > 0 {
		out.Global = g * l.share * b.gAIMD.factor(now)
	}
	if e := l.o.Limits.Endpoint; e > 0 {
		f := 1.0
		if ep := b.endpoints[endpoint]; ep != nil {
			f = ep.aimd.factor(now)
		}
		out.Endpoint = e * l.share * f
	}
	out.Concurrency = l.slots(b, now)
	return out
}

type priorityKey struct{}

// WithPriority marks the requests made with ctx as of priority p.
func WithPriority(ctx context.Context, p Priority) context.Context {
	return context.WithValue(ctx, priorityKey{}, p)
}

// PriorityOf is the priority WithPriority gave ctx; Bulk when none.
func PriorityOf(ctx context.Context) Priority {
	if p, ok := ctx.Value(priorityKey{}).(Priority); ok {
		return p
	}
	return Bulk
}
