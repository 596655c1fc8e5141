package stripeapi

import (
	"testing"

	"github.com/syncd/syncd/internal/ratelimit"
)

// Stripe counts a named operation as one endpoint whatever the ids in it.
func TestEndpoint(t *testing.T) {
	for path, want := range map[string]string{
		"/v1/customers?limit=100":                            "GET /v1/customers",
		"/v1/customers/cus_1":                                "GET /v1/customers/{id}",
		"/v1/customers/cus_1/balance_transactions?limit=100": "GET /v1/customers/{id}/balance_transactions",
		"/v1/customers/cus_2/balance_transactions/cbtxn_9":   "GET /v1/customers/{id}/balance_transactions/{id}",
		"/v1/events?types[]=invoice.paid":                    "GET /v1/events",
		"/v1/checkout/sessions/cs_1":                         "GET /v1/checkout/sessions/{id}",
		"/v1/accounts":                                       "GET /v1/accounts",
	} {
		if got := Endpoint("GET", path); got != want {
			t.Errorf("%s: %q, want %q", path, got, want)
		}
	}
}

// The mode comes from the key's prefix; anything not live gets the
// sandbox's lower limits.
func TestDefaultLimits(t *testing.T) {
	for key, global := range map[string]float64{"sk_live_x": 100, "rk_live_x": 100, "sk_test_x": 25, "rk_test_x": 25, "": 25, "pk_live_x": 25} {
		if got := DefaultLimits(key); got != (ratelimit.Limits{Global: global, Endpoint: 25, Concurrency: 20}) {
			t.Errorf("%q: %+v", key, got)
		}
	}
}

// Only the documented reasons are limits; a lock is not.
func TestThrottle(t *testing.T) {
	if got := Throttle("endpoint-rate", "rate_limit"); got != ratelimit.EndpointRate {
		t.Errorf("endpoint-rate: %q", got)
	}
	if got := Throttle("global-rate", "lock_timeout"); got != "" {
		t.Errorf("lock_timeout: %q", got)
	}
	if got := Throttle("made-up", "rate_limit"); got != "" {
		t.Errorf("unknown reason: %q", got)
	}
}
