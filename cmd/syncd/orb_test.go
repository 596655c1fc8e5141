package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/orbemu"
)

// TestOrbEndToEnd runs the commands as an operator would: serve with only
// an Orb secret, backfill --provider orb, webhooks from the emulator, then
// verify --provider orb clean, and exit 1 once a row is removed.
func TestOrbEndToEnd(t *testing.T) {
	const secret = "whsec_orb_e2e"
	dsn, conn := migrated(t)
	in := serveInProcess(t, serveArgs(dsn, "--orb-webhook-secret", "whsec_orb_retired,"+secret))
	in.ready(t)
	if m := in.logs.find(t, "sources", time.Second); m["orb_webhooks"] != true || m["stripe_webhooks"] != false {
		t.Errorf("sources line %v, want only orb_webhooks on", m)
	}
	if code := getStatus(in.web + "/webhooks/stripe"); code != 404 {
		t.Errorf("/webhooks/stripe without a Stripe secret: %d, want 404", code)
	}

	emu, err := orbemu.New(orbemu.Config{Seed: 66, Customers: 30, HeavyTxns: []int{150}, APIKey: "orb_key_e2e",
		Rate429: 0.05, RetryAfter: 5 * time.Millisecond, WebhookURL: in.web + "/webhooks/orb", WebhookSecret: secret})
	if err != nil {
		t.Fatal(err)
	}
	api := httptest.NewServer(emu)
	t.Cleanup(func() { api.Close(); _ = emu.Close() })

	syncd := func(args ...string) (string, error) {
		t.Helper()
		var out bytes.Buffer
		args = append(args, "--provider", "orb", "--clickhouse-dsn", dsn, "--orb-api-key", "orb_key_e2e", "--orb-api-url", api.URL)
		err := run(context.Background(), args, func(string) string { return "" }, &out, io.Discard)
		return out.String(), err
	}
	if out, err := syncd("backfill", "--progress", "none"); err != nil {
		t.Fatalf("backfill: %v\n%s", err, out)
	}

	customers := emu.Customers()
	for i := range 20 {
		if _, err := emu.AddTransaction(customers[i%len(customers)].ID, "manual_adjustment", "decrement", "0.01"); err != nil {
			t.Fatal(err)
		}
	}
	emu.Flush()
	if st := emu.DeliveryStats(); st.Delivered != 20 || st.Failed != 0 {
		t.Fatalf("webhook deliveries %+v, want 20 delivered", st)
	}

	// A 200 means the intake row committed; the transaction rows follow
	// in the background.
	in.settled(t)
	out, err := syncd("verify")
	if err != nil || !strings.Contains(out, "no drift") {
		t.Fatalf("verify: %v\n%s", err, out)
	}

	gone := emu.TruthFor(customers[len(customers)-1].ID)[0].ID
	ctx := context.Background()
	if err := conn.Exec(ctx, "ALTER TABLE orb_customer_balance_transactions DELETE WHERE id = ?", gone); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		var n uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM orb_customer_balance_transactions WHERE id = ?", gone).Scan(&n); err == nil && n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still there 30s after ALTER … DELETE", gone)
		}
		time.Sleep(50 * time.Millisecond)
	}
	out, err = syncd("verify")
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(out, gone) || !strings.Contains(out, "DRIFT") {
		t.Fatalf("verify after removing %s: %v\n%s", gone, err, out)
	}
}
