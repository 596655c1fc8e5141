package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/syncd/syncd/internal/backfill"
	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/internal/sink"
	"github.com/syncd/syncd/internal/stripeemu"
)

// stripeCLI runs syncd commands against dsn and the emulator at api, with
// --stripe-accounts all, and returns stdout and the exit code.
func stripeCLI(t *testing.T, dsn, api string) func(args ...string) (string, int) {
	return func(args ...string) (string, int) {
		t.Helper()
		var out bytes.Buffer
		args = append(args, "--clickhouse-dsn", dsn, "--stripe-api-key", testAPIKey, "--stripe-api-url", api,
			"--stripe-accounts", "all", "--log-level", "error", "--rate-limit", "1000", "--endpoint-rate-limit", "1000")
		err := run(context.Background(), args, func(string) string { return "" }, &out, io.Discard)
		return out.String(), exitCode(err, io.Discard)
	}
}

// writeObservation writes vals, a row of the Stripe mirror, through the
// sink as syncd writes one, and waits until it is committed.
func writeObservation(t *testing.T, conn driver.Conn, vals []any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sk := sink.New(conn, sink.Options{BatchRows: 10})
	defer sk.Close(ctx)
	ack, err := sk.Write(ctx, row.StripeTxnTable, vals)
	if err != nil {
		t.Fatal(err)
	}
	if err := ack.Wait(ctx); err != nil {
		t.Fatal(err)
	}
}

// removeTxn deletes a transaction's rows from the mirror, as an operator
// would remove a row the API never had, and waits for the mutation.
func removeTxn(t *testing.T, conn driver.Conn, id string) {
	t.Helper()
	ctx := context.Background()
	if err := conn.Exec(ctx, "ALTER TABLE stripe_customer_balance_transactions DELETE WHERE id = ?", id); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var n uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM stripe_customer_balance_transactions WHERE id = ?", id).Scan(&n); err == nil && n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still there 30s after ALTER … DELETE", id)
		}
	}
}

// TestVerifyFindsEveryTamperedColumn writes, for each mirrored column of
// stripe_customer_balance_transactions in turn, a newer observation of one
// transaction with that column changed: `syncd verify` exits 1 naming the
// column (or, for the columns that place a row — account_id, customer,
// id — the account, customer or transaction it now names), and 0 once
// `syncd backfill --full` has observed the transaction again. A row the
// API never had (a changed id, a customer that never existed) is not
// undone by a backfill, which never deletes: verify keeps reporting it
// until it is removed.
func TestVerifyFindsEveryTamperedColumn(t *testing.T) {
	dsn, conn := migrated(t)
	emu, api := emulator(t, stripeemu.Config{Seed: 41, Customers: 6, Accounts: []string{"", "acct_1Verify"}}, nil)
	syncd := stripeCLI(t, dsn, api)
	if out, code := syncd("backfill", "--progress", "none"); code != 0 {
		t.Fatalf("backfill: exit %d\n%s", code, out)
	}
	if out, code := syncd("verify"); code != 0 || !strings.Contains(out, "verify: no drift") {
		t.Fatalf("verify after the backfill: exit %d\n%s", code, out)
	}

	var victim stripeemu.Txn // metadata, so both of its columns can change
	for _, tx := range emu.Truth() {
		if tx.Account == "acct_1Verify" && len(tx.Metadata) > 0 {
			victim = tx
			break
		}
	}
	if victim.ID == "" {
		t.Fatal("no transaction with metadata in acct_1Verify")
	}
	observed := func() []any {
		r, err := row.NormalizeStripe(victim.Raw, row.Meta{AccountID: victim.Account, Source: row.SourceBackfill, ObservedAt: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		return r.Values()
	}

	columns := row.MirroredColumns(row.StripeTxnTable)
	if len(columns) != 16 {
		t.Errorf("%d mirrored columns %v: every one is tampered with below", len(columns), columns)
	}
	for _, col := range columns {
		t.Run(col, func(t *testing.T) {
			vals := observed()
			i := slices.Index(row.StripeTxnTable.Columns, col)
			var want string // what verify's report must say
			switch col {
			case "account_id":
				vals[i] = "acct_1Tampered"
				want = fmt.Sprintf("acct_1Tampered %s: %s; 1 extra [%s]", victim.Customer, backfill.UnknownAccount, victim.ID)
			case "customer":
				vals[i] = "cus_Tampered0001"
				want = fmt.Sprintf("acct_1Verify cus_Tampered0001: %s; 1 extra [%s]", backfill.UnknownCustomer, victim.ID)
			case "id":
				vals[i] = "cbtxn_tampered"
				want = fmt.Sprintf("acct_1Verify %s: 1 extra [cbtxn_tampered]", victim.Customer)
			default:
				vals[i] = tamper(t, vals[i])
				want = fmt.Sprintf("%s (%s)", victim.ID, col)
			}
			writeObservation(t, conn, vals)
			out, code := syncd("verify")
			if code != 1 || !strings.Contains(out, want) || !strings.Contains(out, "verify: DRIFT") {
				t.Fatalf("verify after changing %s: exit %d, want 1 and a report saying %q:\n%s", col, code, want, out)
			}
			t.Logf("verify after changing %s:\n%s", col, out)
			if out, code := syncd("backfill", "--full", "--progress", "none"); code != 0 {
				t.Fatalf("backfill --full: exit %d\n%s", code, out)
			}
			out, code = syncd("verify")
			if col == "id" {
				if code != 1 || !strings.Contains(out, want) {
					t.Errorf("verify after --full: exit %d, want the transaction the API never had still reported:\n%s", code, out)
				}
				removeTxn(t, conn, "cbtxn_tampered")
				out, code = syncd("verify")
			}
			if code != 0 || !strings.Contains(out, "verify: no drift") {
				t.Fatalf("verify after backfill --full: exit %d, want 0:\n%s", code, out)
			}
		})
	}

	t.Run("a customer that never existed", func(t *testing.T) {
		phantom := observed()
		phantom[slices.Index(row.StripeTxnTable.Columns, "id")] = "cbtxn_phantom"
		phantom[slices.Index(row.StripeTxnTable.Columns, "account_id")] = ""
		phantom[slices.Index(row.StripeTxnTable.Columns, "customer")] = "cus_NeverExisted"
		writeObservation(t, conn, phantom)
		want := "platform cus_NeverExisted: " + backfill.UnknownCustomer + "; 1 extra [cbtxn_phantom]"
		for _, step := range []string{"written", "after backfill --full"} {
			if step != "written" {
				if out, code := syncd("backfill", "--full", "--progress", "none"); code != 0 {
					t.Fatalf("backfill --full: exit %d\n%s", code, out)
				}
			}
			if out, code := syncd("verify"); code != 1 || !strings.Contains(out, want) {
				t.Fatalf("verify, the row %s: exit %d, want 1 and %q:\n%s", step, code, want, out)
			}
		}
		removeTxn(t, conn, "cbtxn_phantom")
		if out, code := syncd("verify"); code != 0 {
			t.Fatalf("verify once the row is removed: exit %d\n%s", code, out)
		}
	})
}

// tamper returns another value of a column, in the form Values gives it.
func tamper(t *testing.T, v any) any {
	t.Helper()
	switch x := v.(type) {
	case *string:
		if x == nil {
			s := "tampered"
			return &s
		}
		s := *x + "x"
		return &s
	case *int64:
		n := *x + 1
		return &n
	case uint8:
		return 1 - x
	case *time.Time:
		at := x.Add(-time.Hour)
		return &at
	case []string:
		out := slices.Clone(x)
		out[0] += "x"
		return out
	}
	t.Fatalf("no tampering for %T", v)
	return nil
}

// TestDeletedCustomers: a customer deleted in Stripe keeps its rows;
// verify lists it as deleted and exits 0; a backfill sweep that lists a
// customer deleted before it reads the customer's transactions skips it,
// says so, and exits 0; and the customer.deleted webhook (snapshot or
// thin) puts it in stripe_deleted_customers.
func TestDeletedCustomers(t *testing.T) {
	dsn, conn := migrated(t)
	var (
		emu      *stripeemu.Emulator
		mu       sync.Mutex
		onList   func() // run once, after a customer list page is served
		victimID string
	)
	emu, api := emulator(t, stripeemu.Config{Seed: 43, Customers: 8, Accounts: []string{"", "acct_1Deleted"}},
		func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				h.ServeHTTP(w, r)
				if r.URL.Path == "/v1/customers" && r.Header.Get("Stripe-Account") == "" {
					mu.Lock()
					f := onList
					onList = nil
					mu.Unlock()
					if f != nil {
						f()
					}
				}
			})
		})
	syncd := stripeCLI(t, dsn, api)
	if out, code := syncd("backfill", "--progress", "none"); code != 0 {
		t.Fatalf("backfill: exit %d\n%s", code, out)
	}
	withTxns := func(account string) []stripeemu.Customer {
		var out []stripeemu.Customer
		for _, c := range emu.Customers() {
			if c.Account == account && c.Transactions > 0 {
				out = append(out, c)
			}
		}
		return out
	}

	// Deleted between two runs: verify lists it, not as drift.
	gone := withTxns("acct_1Deleted")[0]
	if _, err := emu.DeleteCustomer(gone.Account, gone.ID); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("acct_1Deleted %s: deleted in the API; %d transactions held (not drift)", gone.ID, gone.Transactions)
	out, code := syncd("verify")
	if code != 0 || !strings.Contains(out, want) || !strings.Contains(out, "verify: no drift") {
		t.Fatalf("verify with a deleted customer: exit %d, want 0 and %q:\n%s", code, want, out)
	}

	// Deleted while a sweep runs: listed, then 404.
	victim := withTxns("")[0]
	victimID = victim.ID
	mu.Lock()
	onList = func() {
		if _, err := emu.DeleteCustomer("", victimID); err != nil {
			t.Error(err)
		}
	}
	mu.Unlock()
	out, code = syncd("backfill", "--full", "--progress", "none")
	if code != 0 || !strings.Contains(out, "(1 deleted while the run read them: skipped)") {
		t.Fatalf("backfill over a customer deleted mid-run: exit %d, want 0 and the deletion counted:\n%s", code, out)
	}
	var held uint64
	if err := conn.QueryRow(context.Background(), "SELECT count() FROM stripe_customer_balance_transactions FINAL WHERE customer = ?",
		victimID).Scan(&held); err != nil || held != uint64(victim.Transactions) {
		t.Errorf("the deleted customer's rows: %d (%v), want its %d kept", held, err, victim.Transactions)
	}
	out, code = syncd("verify")
	if code != 0 || !strings.Contains(out, "platform "+victimID+": deleted in the API") {
		t.Fatalf("verify: exit %d, want 0 and %s listed as deleted:\n%s", code, victimID, out)
	}
	// The next incremental sweep resumes nothing and fails on nothing.
	if out, code := syncd("backfill", "--progress", "none"); code != 0 {
		t.Fatalf("the next backfill: exit %d\n%s", code, out)
	}
}

// TestCustomerDeletedWebhook: customer.deleted, as a snapshot event or a
// thin v1.customer.deleted, marks the customer deleted in
// stripe_deleted_customers; its rows stay.
func TestCustomerDeletedWebhook(t *testing.T) {
	eachFormat(t, func(t *testing.T, format func([]stripeemu.Event) []stripeemu.Event) {
		dsn, conn := migrated(t)
		emu, api := emulator(t, stripeemu.Config{Seed: 44, Customers: 4, Accounts: []string{"", "acct_1Hook"}}, nil)
		if out, code := stripeCLI(t, dsn, api)("backfill", "--progress", "none"); code != 0 {
			t.Fatalf("backfill: exit %d\n%s", code, out)
		}
		in := serveInProcess(t, serveArgs(dsn, "--stripe-api-key", testAPIKey, "--stripe-api-url", api,
			"--stripe-webhook-secret", testSecret, "--stripe-accounts", "all"))
		in.ready(t)
		var victim stripeemu.Customer
		for _, c := range emu.Customers() {
			if c.Account == "acct_1Hook" && c.Transactions > 0 {
				victim = c
				break
			}
		}
		ev, err := emu.DeleteCustomer(victim.Account, victim.ID)
		if err != nil {
			t.Fatal(err)
		}
		ev = format([]stripeemu.Event{ev})[0]
		if code := deliver(http.DefaultClient, in.web, ev.Raw); code != 200 {
			t.Fatalf("%s: %d", ev.ID, code)
		}
		// The refresh it triggers finds the customer gone (404) and is done.
		rows, err := conn.Query(context.Background(), "SELECT account_id, customer, toUnixTimestamp(deleted_at) FROM stripe_deleted_customers")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for rows.Next() {
			var a, c string
			var at uint32
			if err := rows.Scan(&a, &c, &at); err != nil {
				t.Fatal(err)
			}
			got = append(got, fmt.Sprintf("%s %s %d", a, c, at))
		}
		rows.Close()
		if want := fmt.Sprintf("acct_1Hook %s %d", victim.ID, ev.Created); fmt.Sprint(got) != "["+want+"]" {
			t.Errorf("stripe_deleted_customers: %v, want [%s]", got, want)
		}
		in.settled(t)
		var held uint64
		if err := conn.QueryRow(context.Background(), "SELECT count() FROM stripe_customer_balance_transactions FINAL WHERE customer = ?",
			victim.ID).Scan(&held); err != nil || held != uint64(victim.Transactions) {
			t.Errorf("the deleted customer's rows: %d (%v), want its %d kept", held, err, victim.Transactions)
		}
	})
}
