package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	stripewebhook "github.com/stripe/stripe-go/v82/webhook"

	"github.com/syncd/syncd/internal/orbsig"
	"github.com/syncd/syncd/internal/stripeemu"
)

// post signs body for provider ("stripe" or "orb") and POSTs it, returning
// the status and the answer's body.
func post(t *testing.T, base, provider string, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+"/webhooks/"+provider, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if provider == "orb" {
		stamp, sig := orbsig.Sign(body, testOrbSecret, time.Now())
		req.Header.Set(orbsig.TimestampHeader, stamp)
		req.Header.Set(orbsig.SignatureHeader, sig)
	} else {
		signed := stripewebhook.GenerateTestSignedPayload(&stripewebhook.UnsignedPayload{Payload: body, Secret: testSecret, Timestamp: time.Now()})
		req.Header.Set("Stripe-Signature", signed.Header)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestWebhookRefusesTimesOutsideDateTime: a transaction whose created (Stripe)
// or created_at (Orb) DateTime cannot hold is answered 400 with the field
// named, and nothing is stored; the ends of the range are stored exactly.
func TestWebhookRefusesTimesOutsideDateTime(t *testing.T) {
	dsn, conn := migrated(t)
	in := serveInProcess(t, serveArgs(dsn, "--stripe-api-key", testAPIKey, "--stripe-api-url", "http://127.0.0.1:1",
		"--stripe-webhook-secret", testSecret, "--orb-webhook-secret", testOrbSecret))
	in.ready(t)

	now := time.Now().Unix()
	stripeEvent := func(n int, created string) []byte {
		return fmt.Appendf(nil, `{"id":"evt_range_%d","object":"event","account":null,"api_version":"2025-08-27.basil","created":%d,`+
			`"data":{"object":{"id":"cbtxn_range_%d","object":"customer_balance_transaction","amount":-100,"checkout_session":null,`+
			`"created":%s,"credit_note":null,"currency":"usd","customer":"cus_range","customer_account":null,"description":null,`+
			`"ending_balance":-100,"invoice":null,"livemode":false,"metadata":{},"type":"adjustment"}},`+
			`"livemode":false,"type":"customer_balance_transaction.created"}`, n, now, n, created)
	}
	orbEvent := func(n int, createdAt string) []byte {
		return fmt.Appendf(nil, `{"id":"oevt_range_%d","created_at":%q,"type":"customer.balance_transaction_created",`+
			`"customer":{"id":"ocus_range","external_customer_id":null,"currency":"USD"},`+
			`"properties":{"balance_transaction":{"id":"otxn_range_%d","action":"manual_adjustment","amount":"1.50",`+
			`"created_at":%q,"credit_note":null,"description":null,"ending_balance":"0","invoice":null,`+
			`"starting_balance":"0","type":"increment"}}}`, n, time.Now().UTC().Format(time.RFC3339), n, createdAt)
	}

	for n, tc := range []struct {
		provider, created string
		stored            int64 // toUnixTimestamp of the stored row; -1: refused
	}{
		{"stripe", "4294967296", -1},
		{"stripe", "-1", -1},
		{"stripe", "4294967295", 4294967295},
		{"stripe", "0", 0},
		{"orb", "2106-02-07T06:28:16Z", -1},
		{"orb", "1969-12-31T23:59:59Z", -1},
		{"orb", "2106-02-07T06:28:15Z", 4294967295},
		{"orb", "1970-01-01T00:00:00Z", 0},
	} {
		body, field, table := stripeEvent(n, tc.created), "field created:", "stripe_customer_balance_transactions"
		if tc.provider == "orb" {
			body, field, table = orbEvent(n, tc.created), "field created_at:", "orb_customer_balance_transactions"
		}
		code, answer := post(t, in.web, tc.provider, body)
		if tc.stored < 0 {
			if code != 400 || !strings.Contains(answer, field) || !strings.Contains(answer, "outside ClickHouse's DateTime range") {
				t.Errorf("%s created %s: %d %q; want 400 naming the field and DateTime's range", tc.provider, tc.created, code, answer)
			}
			continue
		}
		if code != 200 {
			t.Errorf("%s created %s: %d %q, want 200", tc.provider, tc.created, code, answer)
			continue
		}
		in.settled(t)
		col := "created"
		if tc.provider == "orb" {
			col = "created_at"
		}
		var got uint32
		if err := conn.QueryRow(context.Background(), fmt.Sprintf("SELECT toUnixTimestamp(%s) FROM %s WHERE id LIKE '%%txn_range_%d'", col, table, n)).
			Scan(&got); err != nil {
			t.Errorf("%s created %s: %v", tc.provider, tc.created, err)
		} else if int64(got) != tc.stored {
			t.Errorf("%s created %s stored as %d, want %d", tc.provider, tc.created, got, tc.stored)
		}
	}
	in.settled(t)
	for table, want := range map[string]int{
		"stripe_events": 2, "orb_events": 2, "stripe_customer_balance_transactions": 2, "orb_customer_balance_transactions": 2,
	} {
		if got := len(ids(t, conn, table)); got != want {
			t.Errorf("%s holds %d ids, want %d: a refused event left a row", table, got, want)
		}
	}
}

// TestBackfillReportsTimesOutsideDateTime: a transaction the API lists with
// a created DateTime cannot hold is not written (neither wrapped nor
// dropped silently): the backfill logs it, exits 1 saying so, and leaves the
// customer unchecked so the next run reports it again; every other
// transaction is mirrored.
func TestBackfillReportsTimesOutsideDateTime(t *testing.T) {
	dsn, conn := migrated(t)
	emu, url := emulator(t, stripeemu.Config{Seed: 14, Customers: 4}, nil)
	bad := emu.Customers()[1]
	far, err := emu.AddTransactionAt(bad.Account, bad.ID, 700, "adjustment", time.Unix(1<<32, 0))
	if err != nil {
		t.Fatal(err)
	}

	for attempt := 1; attempt <= 2; attempt++ {
		var stdout, stderr bytes.Buffer
		err := run(context.Background(), []string{"backfill", "--clickhouse-dsn", dsn, "--stripe-api-key", testAPIKey,
			"--stripe-api-url", url, "--progress", "none"}, func(string) string { return "" }, &stdout, &stderr)
		code := exitCode(err, &stderr)
		logs := stderr.String()
		if code != 1 || !strings.Contains(logs, "1 transactions were refused by the normaliser") {
			t.Fatalf("backfill run %d: exit %d; want 1 and the refusal counted; stderr:\n%s", attempt, code, logs)
		}
		if !strings.Contains(logs, "source object refused by the normaliser") || !strings.Contains(logs, far.ID) ||
			!strings.Contains(logs, "field created: 4294967296 is outside ClickHouse's DateTime range") {
			t.Errorf("backfill run %d: the log does not name %s and its created; stderr:\n%s", attempt, far.ID, logs)
		}
	}

	var want []stripeemu.Txn
	for _, x := range emu.Truth() {
		if x.ID != far.ID {
			want = append(want, x)
		}
	}
	if d := diff(mirror(t, conn, ""), truthRows(want)); d != "" {
		t.Errorf("the warehouse differs from the truth without %s:\n%s", far.ID, d)
	}
}
