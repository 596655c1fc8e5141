package main

import (
	"fmt"
	"maps"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/stripeemu"
)

// TestServeRefreshesOnlyStripeAccounts: serve refreshes the accounts
// --stripe-accounts names, as backfill reads them — without the flag the
// key's own account only. A trigger event of another account, an invoice's
// (read through the related object when thin) as well as a customer's, is
// stored, counted and logged, and never refreshed.
// (TestServeConnectEventRefreshesThroughStripeAccount: with the account
// named, it is refreshed.)
func TestServeRefreshesOnlyStripeAccounts(t *testing.T) {
	eachFormat(t, func(t *testing.T, format func([]stripeemu.Event) []stripeemu.Event) {
		for _, tt := range []struct {
			name     string
			flags    []string
			platform bool // the platform's trigger is refreshed
		}{
			{"without --stripe-accounts", nil, true},
			{"--stripe-accounts naming another account", []string{"--stripe-accounts", "acct_1Elsewhere"}, false},
		} {
			t.Run(tt.name, func(t *testing.T) { testServeRefreshScope(t, format, tt.flags, tt.platform) })
		}
	})
}

func testServeRefreshScope(t *testing.T, format func([]stripeemu.Event) []stripeemu.Event, flags []string, platformRefreshed bool) {
	dsn, conn := migrated(t)
	var (
		mu    sync.Mutex
		reads = map[string]int{} // API reads by Stripe-Account
	)
	emu, api := emulator(t, stripeemu.Config{Seed: 31, Customers: 3, Accounts: []string{"", "acct_connected"}},
		func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				reads[r.Header.Get("Stripe-Account")]++
				mu.Unlock()
				h.ServeHTTP(w, r)
			})
		})
	in := serveInProcess(t, serveArgs(dsn, append([]string{"--stripe-api-key", testAPIKey, "--stripe-api-url", api,
		"--stripe-webhook-secret", testSecret}, flags...)...))
	in.ready(t)

	var platform, connected stripeemu.Customer
	for _, c := range emu.Customers() {
		switch {
		case c.Account == "" && platform.ID == "":
			platform = c
		case c.Account == "acct_connected" && connected.ID == "":
			connected = c
		}
	}
	// An invoice-backed transaction: invoice.paid and customer.updated.
	outside := format(mutateWith(t, emu, []stripeemu.Customer{connected}, 700, "applied_to_invoice"))
	home := format(mutate(t, emu, []stripeemu.Customer{platform}, -300))
	if len(outside) != 2 {
		t.Fatalf("%d events for the connected customer, want invoice.paid and customer.updated", len(outside))
	}
	for _, ev := range append(outside, home...) {
		if code := deliver(http.DefaultClient, in.web, ev.Raw); code != 200 {
			t.Fatalf("%s %s: %d", ev.Type, ev.ID, code)
		}
	}

	// Stored: every event is in the intake log.
	stored := eventIDs(t, conn)
	for _, ev := range append(outside, home...) {
		if !stored[ev.ID] {
			t.Errorf("event %s (%s) not stored", ev.ID, ev.Type)
		}
	}
	skipped := len(outside)
	if !platformRefreshed {
		skipped += len(home)
	}
	// Whether to refresh is decided when the event is stored, before the
	// 200: the count is final, and a skipped event is never refreshed.
	if m := scrape(t, in.admin); !strings.Contains(m, fmt.Sprintf("\nsyncd_refresh_skipped_events_total %d\n", skipped)) {
		t.Errorf("want syncd_refresh_skipped_events_total %d; metrics:\n%s", skipped, grepLines(m, "syncd_refresh_skipped"))
	}
	// The refresher also looks for work in the intake log, where these
	// events are, every 2 s (RefresherOptions.RecentInterval): a look
	// must have passed before nothing refreshed means anything.
	time.Sleep(3 * time.Second)
	where := fmt.Sprintf("WHERE customer = '%s'", platform.ID)
	if platformRefreshed {
		want := truthRows(emu.TruthFor("", platform.ID))
		for deadline := time.Now().Add(30 * time.Second); diff(mirror(t, conn, where), want) != ""; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the platform's customer was not refreshed:\n%s", diff(mirror(t, conn, where), want))
			}
		}
	} else {
		if rows := mirror(t, conn, where); len(rows) != 0 {
			t.Errorf("the platform's customer, outside --stripe-accounts, was refreshed: %d rows", len(rows))
		}
	}
	if rows := mirror(t, conn, fmt.Sprintf("WHERE customer = '%s'", connected.ID)); len(rows) != 0 {
		t.Errorf("the connected customer, outside --stripe-accounts, was refreshed: %d rows", len(rows))
	}
	mu.Lock()
	got := maps.Clone(reads)
	mu.Unlock()
	if got["acct_connected"] != 0 {
		t.Errorf("%d API reads as acct_connected, want none", got["acct_connected"])
	}
	if !platformRefreshed && len(got) != 0 {
		t.Errorf("API reads %v, want none", got)
	}
	warn := in.logs.find(t, "trigger events of an account outside --stripe-accounts are stored, not refreshed", 5*time.Second)
	if warn["account"] != "acct_connected" {
		t.Errorf("warn line %v, want it to name acct_connected, the first account outside", warn)
	}
}

// grepLines returns the lines of s that contain substr.
func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
