package backfill

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/orbapi"
	"github.com/syncd/syncd/internal/orbemu"
	"github.com/syncd/syncd/internal/ratelimit"
	"github.com/syncd/syncd/internal/stripeapi"
	"github.com/syncd/syncd/internal/stripeemu"
)

// throttled is every 429 the emulator answered, and those for reason.
func throttled(limited map[string]int64, injected int64, reason string) (all, of int64) {
	all = injected
	for _, n := range limited {
		all += n
	}
	return all, limited[reason]
}

// stripeUnderLimits runs a backfill, a verify and the refresh of every
// customer at once, each a process of a fleet of three (a third of each
// limit), against an emulator enforcing Stripe's live limits: 100 requests
// a second per account, 25 to each endpoint, and syncd's 20 in flight.
// Connected accounts spend the platform's budget. endpointLimit false is
// syncd ignoring the per-endpoint limit.
func stripeUnderLimits(t *testing.T, endpointLimit bool) (stripeemu.Counters, *stripeemu.Emulator, *warehouse, []error) {
	w := newWarehouse(t, 10000)
	limits := stripeapi.DefaultLimits("sk_live_limits")
	emu, url := newEmulator(t, stripeemu.Config{Seed: 21, Customers: 40, Accounts: []string{"", "acct_1LimA", "acct_1LimB"},
		Latency: 20 * time.Millisecond, Limits: limits})
	source := func() *StripeSource {
		o := StripeOptions{APIKey: testKey, URL: url, RateLimit: limits.Global, EndpointRateLimit: limits.Endpoint,
			MaxConcurrent: limits.Concurrency, Retry: fastRetry, Metrics: w.m, Logger: testLogger(t)}
		if !endpointLimit {
			o.EndpointRateLimit = 0
		}
		s := NewStripeSource(o)
		s.Share(3)
		return s
	}
	refresher, _ := startRefresher(t, w, source())
	accounts := emu.Accounts()
	ctx := context.Background()
	var mu sync.Mutex
	var errs []error
	fail := func(err error) {
		if err != nil {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		_, err := backfill(t, ctx, w, source(), Options{Accounts: accounts})
		fail(err)
	})
	wg.Go(func() {
		_, err := Verify(ctx, VerifyOptions{Source: source(), Conn: w.conn, Metrics: w.m, Logger: testLogger(t), Accounts: accounts})
		fail(err)
	})
	wg.Go(func() {
		for _, c := range emu.Customers() {
			refresher.MarkDirty(c.Account, c.ID, "")
		}
		waitFor(t, 2*time.Minute, "the refresher to go idle", refresher.Idle)
	})
	wg.Wait()
	return emu.Requests(), emu, w, errs
}

// Backfill, refresh and verify at once stay inside Stripe's limits: under
// 0.5% of the requests are answered 429, none for an endpoint's rate, and
// the mirror is complete. The same work with syncd ignoring the
// per-endpoint limit (still inside the global one) is refused for the
// endpoint's rate again and again: the emulator enforces it.
func TestStripeLimitsHold(t *testing.T) {
	t.Parallel()
	got, emu, w, errs := stripeUnderLimits(t, true)
	all, endpoint := throttled(got.Limited, got.Throttled, ratelimit.EndpointRate)
	t.Logf("within limits: %d requests, %d answered 429 %v", got.Total, all, got.Limited)
	if len(errs) > 0 {
		t.Fatalf("errors: %v", errs)
	}
	if got.Total < 300 {
		t.Fatalf("only %d requests: too few to measure", got.Total)
	}
	if all*200 >= got.Total || endpoint > 0 {
		t.Errorf("%d of %d requests answered 429 (%d endpoint-rate); want under 0.5%% and no endpoint-rate", all, got.Total, endpoint)
	}
	assertMirrors(t, w.conn, emu.Truth())

	got, _, _, _ = stripeUnderLimits(t, false)
	all, endpoint = throttled(got.Limited, got.Throttled, ratelimit.EndpointRate)
	t.Logf("endpoint limit ignored: %d requests, %d answered 429 %v", got.Total, all, got.Limited)
	if endpoint*20 < got.Total {
		t.Errorf("ignoring the endpoint limit: %d of %d requests answered 429 endpoint-rate; want 5%% or more", endpoint, got.Total)
	}
}

// A backfill and a verify at once, each half of the fleet's budget, stay
// inside Orb's test-mode limit of 50 requests a second.
func TestOrbLimitsHold(t *testing.T) {
	t.Parallel()
	w := newWarehouse(t, 10000)
	limits := orbapi.DefaultLimits()
	emu, url := newOrbEmulator(t, orbemu.Config{Seed: 22, Customers: 150, Latency: 20 * time.Millisecond, Limits: limits})
	source := func() *OrbSource {
		s := NewOrbSource(OrbOptions{APIKey: orbTestKey, URL: url, RateLimit: limits.Global, MaxConcurrent: limits.Concurrency,
			Retry: fastRetry, Metrics: w.m, Logger: testLogger(t)})
		s.Share(2)
		return s
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	var runErr, verifyErr error
	wg.Go(func() {
		_, runErr = Run(ctx, Options{Source: source(), Conn: w.conn, Sink: w.sink, Metrics: w.m, Logger: testLogger(t), ProgressMode: "none"})
	})
	wg.Go(func() {
		_, verifyErr = VerifyOrb(ctx, OrbVerifyOptions{Source: source(), Conn: w.conn, Metrics: w.m, Logger: testLogger(t)})
	})
	wg.Wait()
	if runErr != nil || verifyErr != nil {
		t.Fatalf("backfill: %v; verify: %v", runErr, verifyErr)
	}
	got := emu.Requests()
	all, _ := throttled(got.Limited, got.Throttled, ratelimit.GlobalRate)
	t.Logf("%d requests, %d answered 429 %v", got.Total, all, got.Limited)
	if got.Total < 300 || all*200 >= got.Total {
		t.Errorf("%d of %d requests answered 429; want under 0.5%% of at least 300", all, got.Total)
	}
}
