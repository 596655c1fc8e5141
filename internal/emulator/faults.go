// Package emulator is the machinery the stateful provider API emulators
// (internal/stripeemu, internal/orbemu) share: seeded fault injection and
// added latency, per-kind request counters, a webhook delivery queue with
// retries, and weighted draws for seeded data. What a provider's API looks
// like (objects, pagination, error bodies, signatures) stays in its emulator.
package emulator

import (
	"context"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Faults decides, from an RNG seeded once, which requests fail with a 429 or
// a 500, and how long every request is delayed. It is safe for concurrent use.
type Faults struct {
	mu      sync.Mutex
	rng     *rand.Rand
	rate429 float64
	rate500 float64
	latency atomic.Int64
}

// NewFaults returns Faults drawing from an RNG seeded with seed, failing the
// given fractions of requests and delaying each by latency.
func NewFaults(seed int64, rate429, rate500 float64, latency time.Duration) *Faults {
	f := &Faults{rng: rand.New(rand.NewPCG(uint64(seed), 0xfa17)), rate429: rate429, rate500: rate500}
	f.latency.Store(int64(latency))
	return f
}

// SetRates changes the fractions of requests answered 429 and 500.
func (f *Faults) SetRates(rate429, rate500 float64) {
	f.mu.Lock()
	f.rate429, f.rate500 = rate429, rate500
	f.mu.Unlock()
}

// SetLatency changes the delay added to every request.
func (f *Faults) SetLatency(d time.Duration) { f.latency.Store(int64(d)) }

// Delay waits the configured latency; false means ctx ended first.
func (f *Faults) Delay(ctx context.Context) bool {
	d := time.Duration(f.latency.Load())
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	select {
	case <-ctx.Done():
		t.Stop()
		return false
	case <-t.C:
		return true
	}
}

// Draw decides whether a request fails: http.StatusTooManyRequests,
// http.StatusInternalServerError, or 0 to serve it. With both rates zero
// it draws nothing, so the RNG's sequence is kept for when faults return.
func (f *Faults) Draw() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rate429 <= 0 && f.rate500 <= 0 {
		return 0
	}
	switch u := f.rng.Float64(); {
	case u < f.rate429:
		return http.StatusTooManyRequests
	case u < f.rate429+f.rate500:
		return http.StatusInternalServerError
	}
	return 0
}
