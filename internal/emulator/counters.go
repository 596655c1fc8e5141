package emulator

import (
	"sync"
	"sync/atomic"
)

// RequestCounts is a snapshot of RequestCounters. An emulator converts it to
// its own exported type with the same fields.
type RequestCounts struct {
	Total     int64
	ByKind    map[string]int64
	Throttled int64 // answered 429 by fault injection
	Failed    int64 // answered 500 by fault injection
}

// RequestCounters counts requests by kind, the faults injected, and the list
// pages served per key K (say, a customer). It is safe for concurrent use.
type RequestCounters[K comparable] struct {
	total, throttled, failed atomic.Int64
	byKind                   map[string]*atomic.Int64 // fixed keys: lock-free
	mu                       sync.Mutex
	lists                    map[K]int
}

// NewRequestCounters counts the given request kinds; Request panics on any other.
func NewRequestCounters[K comparable](kinds ...string) *RequestCounters[K] {
	c := &RequestCounters[K]{byKind: make(map[string]*atomic.Int64, len(kinds)), lists: map[K]int{}}
	for _, k := range kinds {
		c.byKind[k] = new(atomic.Int64)
	}
	return c
}

// Request counts one request of the given kind.
func (c *RequestCounters[K]) Request(kind string) {
	c.total.Add(1)
	c.byKind[kind].Add(1)
}

// Throttled counts a request answered 429 by fault injection.
func (c *RequestCounters[K]) Throttled() { c.throttled.Add(1) }

// Failed counts a request answered 500 by fault injection.
func (c *RequestCounters[K]) Failed() { c.failed.Add(1) }

// ListServed counts one list page served for key.
func (c *RequestCounters[K]) ListServed(key K) {
	c.mu.Lock()
	c.lists[key]++
	c.mu.Unlock()
}

// ListCalls reports the list pages served for key since the last Reset.
func (c *RequestCounters[K]) ListCalls(key K) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lists[key]
}

// Counts reports the requests counted since the last Reset.
func (c *RequestCounters[K]) Counts() RequestCounts {
	out := RequestCounts{Total: c.total.Load(), Throttled: c.throttled.Load(), Failed: c.failed.Load(),
		ByKind: make(map[string]int64, len(c.byKind))}
	for k, v := range c.byKind {
		out.ByKind[k] = v.Load()
	}
	return out
}

// Reset zeroes every counter.
func (c *RequestCounters[K]) Reset() {
	c.total.Store(0)
	c.throttled.Store(0)
	c.failed.Store(0)
	for _, v := range c.byKind {
		v.Store(0)
	}
	c.mu.Lock()
	clear(c.lists)
	c.mu.Unlock()
}
