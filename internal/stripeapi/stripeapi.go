// Package stripeapi is syncd's model of the Stripe API's limits
// (docs.stripe.com/rate-limits): what a key may spend, how a request's
// endpoint is named, and what a 429 means. The client (internal/backfill)
// and the emulator (internal/stripeemu) both use it, so they agree.
package stripeapi

import (
	"strings"

	"github.com/syncd/syncd/internal/ratelimit"
)

// Stripe's documented limits, per account: a global rate of 100 requests
// per second in live mode and 25 in a sandbox, and 25 per second for each
// endpoint unless documented otherwise. Stripe raises them for some
// accounts on request: each is a setting.
const (
	LiveGlobalRate = 100
	TestGlobalRate = 25
	EndpointRate   = 25
)

// DefaultConcurrency is syncd's cap on one budget's requests in flight.
// Stripe has concurrency limiters but documents no number; at its rate
// limits and the API's latency (a list page takes 0.2–0.5 s) 20 requests in
// flight keep 40 or more requests per second going.
const DefaultConcurrency = 20

// Livemode reports whether key is a live key (sk_live_, rk_live_). Any other
// key is held to the sandbox's lower limits.
func Livemode(key string) bool {
	return strings.HasPrefix(key, "sk_live_") || strings.HasPrefix(key, "rk_live_")
}

// DefaultLimits are Stripe's documented limits for key's mode, and syncd's
// concurrency cap.
func DefaultLimits(key string) ratelimit.Limits { return ModeLimits(Livemode(key)) }

// ModeLimits are Stripe's documented limits in live mode or in a sandbox,
// and syncd's concurrency cap.
func ModeLimits(live bool) ratelimit.Limits {
	l := ratelimit.Limits{Global: TestGlobalRate, Endpoint: EndpointRate, Concurrency: DefaultConcurrency}
	if live {
		l.Global = LiveGlobalRate
	}
	return l
}

// ReasonHeader names the limit a 429 hit.
const ReasonHeader = "Stripe-Rate-Limited-Reason"

// Throttle is what a 429 from Stripe means for the limiter: the limit its
// Stripe-Rate-Limited-Reason names, or "" when it names none or is not a
// limit being hit (code lock_timeout: an object lock held by another
// request, only retried).
func Throttle(reason, code string) string {
	if code == "lock_timeout" {
		return ""
	}
	switch reason {
	case ratelimit.GlobalRate, ratelimit.EndpointRate, ratelimit.GlobalConcurrency,
		ratelimit.EndpointConcurrency, ratelimit.ResourceSpecific:
		return reason
	}
	return ""
}

// Endpoint names the API operation a request calls, as Stripe counts
// endpoints: the method and the path with each object id replaced, so
// GET /v1/customers/cus_1/balance_transactions and the same list of
// another customer are one endpoint,
// "GET /v1/customers/{id}/balance_transactions".
func Endpoint(method, path string) string {
	path, _, _ = strings.Cut(path, "?")
	parts := strings.Split(strings.Trim(path, "/"), "/")
	// /v1/{resource}/{id}/{sub-resource}/{id}…: the ids are in the even
	// places after the version; a nested resource such as
	// /v1/checkout/sessions/{id} has two names first.
	start := 1
	if len(parts) > 2 && parts[1] == "checkout" {
		start = 2
	}
	for i := start + 1; i < len(parts); i += 2 {
		parts[i] = "{id}"
	}
	return method + " /" + strings.Join(parts, "/")
}
