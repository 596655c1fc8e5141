package emulator

import (
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/syncd/syncd/internal/ratelimit"
)

// Enforcer holds an emulator's clients to a provider's limits, as the
// provider does: per account a global rate, a rate per endpoint and a cap on
// requests in flight. Each rate is a token bucket holding one second of
// requests (the limits are documented per second), so a client pacing
// itself within them is never refused and one above them soon is. It is
// safe for concurrent use; a nil *Enforcer admits everything.
type Enforcer struct {
	limits ratelimit.Limits

	mu       sync.Mutex
	accounts map[string]*enforced
	refused  map[string]int64 // by reason
}

type enforced struct {
	global    *rate.Limiter
	endpoints map[string]*rate.Limiter
	inFlight  int
}

// NewEnforcer returns an Enforcer of l, or nil when l limits nothing.
func NewEnforcer(l ratelimit.Limits) *Enforcer {
	if l == (ratelimit.Limits{}) {
		return nil
	}
	return &Enforcer{limits: l, accounts: map[string]*enforced{}, refused: map[string]int64{}}
}

// Limits returns the enforced limits (zero for a nil Enforcer).
func (e *Enforcer) Limits() ratelimit.Limits {
	if e == nil {
		return ratelimit.Limits{}
	}
	return e.limits
}

func bucket(limit float64) *rate.Limiter {
	if limit <= 0 {
		return rate.NewLimiter(rate.Inf, 1)
	}
	return rate.NewLimiter(rate.Limit(limit), int(math.Ceil(limit)))
}

// Admit decides a request of account (the budget it spends) to endpoint (a
// bounded set of names: the caller's routes). Admitted, it returns release,
// to be called when the answer is written, and reason "". Refused, it
// returns the reason (ratelimit.GlobalRate, …) and how long until the
// refused rate would admit it (0 for concurrency).
func (e *Enforcer) Admit(account, endpoint string) (release func(), reason string, retryAfter time.Duration) {
	if e == nil {
		return func() {}, "", 0
	}
	now := time.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	a := e.accounts[account]
	if a == nil {
		a = &enforced{global: bucket(e.limits.Global), endpoints: map[string]*rate.Limiter{}}
		e.accounts[account] = a
	}
	if c := e.limits.Concurrency; c > 0 && a.inFlight >= c {
		e.refused[ratelimit.GlobalConcurrency]++
		return nil, ratelimit.GlobalConcurrency, 0
	}
	eb := a.endpoints[endpoint]
	if eb == nil {
		eb = bucket(e.limits.Endpoint)
		a.endpoints[endpoint] = eb
	}
	// Both buckets must have a token; neither is spent when the other is
	// empty, as a refused request does not count.
	g := a.global.ReserveN(now, 1)
	if d := g.DelayFrom(now); d > 0 {
		g.CancelAt(now)
		e.refused[ratelimit.GlobalRate]++
		return nil, ratelimit.GlobalRate, d
	}
	if r := eb.ReserveN(now, 1); r.DelayFrom(now) > 0 {
		d := r.DelayFrom(now)
		r.CancelAt(now)
		g.CancelAt(now)
		e.refused[ratelimit.EndpointRate]++
		return nil, ratelimit.EndpointRate, d
	}
	a.inFlight++
	var once sync.Once
	return func() {
		once.Do(func() {
			e.mu.Lock()
			a.inFlight--
			e.mu.Unlock()
		})
	}, "", 0
}

// Refused reports the requests refused since the last ResetRefused, by
// reason.
func (e *Enforcer) Refused() map[string]int64 {
	out := map[string]int64{}
	if e == nil {
		return out
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for k, v := range e.refused {
		out[k] = v
	}
	return out
}

// ResetRefused zeroes the refusal counts.
func (e *Enforcer) ResetRefused() {
	if e == nil {
		return
	}
	e.mu.Lock()
	clear(e.refused)
	e.mu.Unlock()
}
