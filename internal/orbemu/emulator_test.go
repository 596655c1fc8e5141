package orbemu_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/syncd/syncd/internal/orbapi"
	"github.com/syncd/syncd/internal/orbemu"
	"github.com/syncd/syncd/internal/orbsig"
	"github.com/syncd/syncd/internal/ratelimit"
)

const key = "orb_test_key"

func start(t *testing.T, cfg orbemu.Config) (*orbemu.Emulator, *orbapi.Client) {
	t.Helper()
	cfg.APIKey = key
	emu, err := orbemu.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(emu)
	t.Cleanup(func() { srv.Close(); emu.Close() })
	return emu, &orbapi.Client{BaseURL: srv.URL, APIKey: key, HTTP: srv.Client()}
}

func walk(t *testing.T, list func(cursor string) (orbapi.Page, error)) []json.RawMessage {
	t.Helper()
	var all []json.RawMessage
	cursor := ""
	for range 10000 {
		p, err := list(cursor)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, p.Data...)
		if !p.HasMore {
			return all
		}
		cursor = p.NextCursor
	}
	t.Fatal("pagination does not end")
	return nil
}

func TestClientWalksEveryPageAndMatchesTruth(t *testing.T) {
	emu, c := start(t, orbemu.Config{Seed: 7, Customers: 60, HeavyTxns: []int{250}})
	ctx := context.Background()

	rawCustomers := walk(t, func(cur string) (orbapi.Page, error) { return c.ListCustomers(ctx, cur, 7) })
	customers := emu.Customers()
	if len(rawCustomers) != len(customers) {
		t.Fatalf("listed %d customers, truth has %d", len(rawCustomers), len(customers))
	}
	for i, raw := range rawCustomers {
		want := customers[len(customers)-1-i]
		if !bytes.Equal(raw, want.Raw) {
			t.Fatalf("customer %d: listed %s, want %s (newest first)", i, raw, want.Raw)
		}
	}

	total := 0
	for _, cust := range customers {
		limit := 100
		if len(emu.TruthFor(cust.ID)) > 100 {
			limit = 33
		}
		raws := walk(t, func(cur string) (orbapi.Page, error) {
			return c.ListBalanceTransactions(ctx, cust.ID, cur, limit)
		})
		truth := emu.TruthFor(cust.ID)
		if len(raws) != len(truth) {
			t.Fatalf("customer %s: listed %d txns, truth has %d", cust.ID, len(raws), len(truth))
		}
		for i, raw := range raws {
			if want := truth[len(truth)-1-i].Raw; !bytes.Equal(raw, want) {
				t.Fatalf("customer %s txn %d: %s, want %s", cust.ID, i, raw, want)
			}
		}
		checkChain(t, cust, truth)
		total += len(truth)

		got, raw, err := c.GetCustomer(ctx, cust.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Balance != cust.Balance || got.Currency != cust.Currency || !bytes.Equal(raw, cust.Raw) {
			t.Errorf("GetCustomer(%s) = %+v", cust.ID, got)
		}
	}
	if total != len(emu.Truth()) || total < 250 {
		t.Errorf("walked %d txns, Truth has %d", total, len(emu.Truth()))
	}
}

// checkChain asserts what a ledger reader relies on: each transaction starts
// where the previous ended, moves by its amount in its direction, and the
// customer's balance is the last ending balance.
func checkChain(t *testing.T, cust orbemu.Customer, txns []orbemu.Txn) {
	t.Helper()
	balance := decimal.Zero
	for i, tx := range txns {
		start, amount, end := decimal.RequireFromString(tx.StartingBalance), decimal.RequireFromString(tx.Amount), decimal.RequireFromString(tx.EndingBalance)
		want := start.Add(amount)
		if tx.Type == "decrement" {
			want = start.Sub(amount)
		}
		if !start.Equal(balance) || !end.Equal(want) || !amount.IsPositive() {
			t.Fatalf("customer %s txn %d breaks the chain: %+v", cust.ID, i, tx)
		}
		if i > 0 && !tx.CreatedAt.After(txns[i-1].CreatedAt) {
			t.Fatalf("customer %s txn %d not after its predecessor", cust.ID, i)
		}
		if tx.CustomerID != cust.ID || tx.Currency != cust.Currency {
			t.Fatalf("txn %s: customer %s currency %s", tx.ID, tx.CustomerID, tx.Currency)
		}
		balance = end
	}
	if !decimal.RequireFromString(cust.Balance).Equal(balance) {
		t.Fatalf("customer %s balance %s, last ending %s", cust.ID, cust.Balance, balance)
	}
}

func TestWorldIsSeededAndVaried(t *testing.T) {
	a, _ := orbemu.New(orbemu.Config{Seed: 3, Customers: 300, HeavyTxns: []int{1000}})
	b, _ := orbemu.New(orbemu.Config{Seed: 3, Customers: 300, HeavyTxns: []int{1000}})
	ta, tb := a.Truth(), b.Truth()
	if len(ta) != len(tb) || !bytes.Equal(ta[len(ta)-1].Raw, tb[len(tb)-1].Raw) {
		t.Fatal("same seed, different worlds")
	}
	seen := map[string]bool{}
	for _, c := range a.Customers() {
		seen["currency "+c.Currency] = true
		if c.ExternalCustomerID == nil {
			seen["null external id"] = true
		}
	}
	for _, tx := range ta {
		seen["action "+tx.Action] = true
		if tx.Amount == "0.000000000001" || strings.HasPrefix(tx.Amount, "0.00000000000") {
			seen["tiny amount"] = true
		}
		if tx.InvoiceID == nil {
			seen["null invoice"] = true
		}
		if tx.CreditNoteID != nil {
			seen["credit note"] = true
		}
		if tx.Description == nil {
			seen["null description"] = true
		}
	}
	for _, want := range []string{"currency USD", "currency EUR", "currency JPY", "currency KWD",
		"null external id", "tiny amount", "null invoice", "credit note", "null description",
		"action applied_to_invoice", "action manual_adjustment", "action prorated_refund",
		"action revert_prorated_refund", "action return_from_voiding", "action credit_note_applied",
		"action credit_note_voided", "action overpayment_refund", "action external_payment"} {
		if !seen[want] {
			t.Errorf("no %s in the generated world", want)
		}
	}
}

func get(t *testing.T, h http.Handler, path, auth string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, path, nil)
	if auth != "" {
		r.Header.Set("Authorization", auth)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestErrorsAreOrbShaped(t *testing.T) {
	emu, _ := start(t, orbemu.Config{Seed: 1, Customers: 3})
	id := emu.Customers()[0].ID
	tests := []struct {
		name, path, auth string
		status           int
		typeSuffix       string
	}{
		{"no key", "/v1/customers", "", 401, "#401-authentication-error"},
		{"wrong key", "/v1/customers", "Bearer nope", 401, "#401-authentication-error"},
		{"basic auth", "/v1/customers", "Basic " + key, 401, "#401-authentication-error"},
		{"unknown customer", "/v1/customers/nope", "Bearer " + key, 404, "#404-resource-not-found"},
		{"unknown customer's txns", "/v1/customers/nope/balance_transactions", "Bearer " + key, 404, "#404-resource-not-found"},
		{"limit too big", "/v1/customers/" + id + "/balance_transactions?limit=101", "Bearer " + key, 400, "#400-constraint-violation"},
		{"bad cursor", "/v1/customers?cursor=!!", "Bearer " + key, 400, "#400-constraint-violation"},
		{"unknown route", "/v1/invoices", "Bearer " + key, 404, "#404-resource-not-found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := get(t, emu, tt.path, tt.auth)
			var body struct {
				Type   string
				Status int
				Title  string
			}
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %q: %v", w.Body, err)
			}
			if w.Code != tt.status || body.Status != tt.status || !strings.HasSuffix(body.Type, tt.typeSuffix) || body.Title == "" {
				t.Errorf("got %d %s", w.Code, w.Body)
			}
		})
	}
	if w := get(t, emu, "/v1/customers/"+id, "Bearer "+key); w.Code != 200 {
		t.Errorf("known customer: %d", w.Code)
	}
}

func TestFaults(t *testing.T) {
	emu, c := start(t, orbemu.Config{Seed: 1, Customers: 2, Rate429: 1, RetryAfter: 2 * time.Second})
	_, err := c.ListCustomers(context.Background(), "", 10)
	var apiErr *orbapi.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 429 || apiErr.RetryAfter != 2*time.Second || !apiErr.Temporary() {
		t.Fatalf("err = %#v", err)
	}
	emu.SetFaults(0, 1)
	_, err = c.ListCustomers(context.Background(), "", 10)
	if !errors.As(err, &apiErr) || apiErr.Status != 500 {
		t.Fatalf("err = %v", err)
	}
	emu.SetFaults(0.3, 0.3)
	ok := 0
	for range 200 {
		if _, err := c.ListCustomers(context.Background(), "", 10); err == nil {
			ok++
		}
	}
	n := emu.Requests()
	if ok < 40 || ok > 120 || n.Total != 202 || n.Throttled+n.Failed+int64(ok) != 202 || n.ByKind[orbemu.KindCustomers] != 202 {
		t.Errorf("ok %d of 200, counters %+v", ok, n)
	}
	emu.ResetCounters()
	if n := emu.Requests(); n.Total != 0 || n.Throttled != 0 {
		t.Errorf("after reset: %+v", n)
	}

	emu.SetFaults(0, 0)
	emu.SetLatency(30 * time.Millisecond)
	began := time.Now()
	if _, err := c.ListCustomers(context.Background(), "", 10); err != nil || time.Since(began) < 30*time.Millisecond {
		t.Errorf("latency not applied: %v after %v", err, time.Since(began))
	}
}

func TestCustomerListCalls(t *testing.T) {
	emu, c := start(t, orbemu.Config{Seed: 2, HeavyTxns: []int{45}})
	id := emu.Customers()[0].ID
	walk(t, func(cur string) (orbapi.Page, error) {
		return c.ListBalanceTransactions(context.Background(), id, cur, 10)
	})
	if n := emu.CustomerListCalls(id); n != 5 {
		t.Errorf("list calls = %d, want 5", n)
	}
}

type receiver struct {
	mu       sync.Mutex
	bodies   [][]byte
	failures int // answer 500 to this many deliveries first
	errs     []error
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.failures > 0 {
		rc.failures--
		w.WriteHeader(500)
		return
	}
	if err := orbsig.Verify(body, r.Header, []string{"whsec_emu"}, 5*time.Minute, time.Now()); err != nil {
		rc.errs = append(rc.errs, err)
		w.WriteHeader(400)
		return
	}
	rc.bodies = append(rc.bodies, body)
}

func TestAddTransactionDeliversSignedEvent(t *testing.T) {
	rc := &receiver{failures: 2}
	hook := httptest.NewServer(rc)
	defer hook.Close()
	emu, c := start(t, orbemu.Config{Seed: 5, Customers: 5, WebhookURL: hook.URL, WebhookSecret: "whsec_emu",
		WebhookBackoff: time.Millisecond})
	cust := emu.Customers()[0]
	before := len(emu.TruthFor(cust.ID))

	tx, err := emu.AddTransaction(cust.ID, "manual_adjustment", "increment", "0.000000000001")
	if err != nil {
		t.Fatal(err)
	}
	tx2, err := emu.AddTransaction(cust.ID, "applied_to_invoice", "decrement", "11.00")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := emu.WaitDeliveries(ctx); err != nil {
		t.Fatal(err)
	}
	if len(rc.errs) > 0 || len(rc.bodies) != 2 {
		t.Fatalf("received %d events, errors %v", len(rc.bodies), rc.errs)
	}
	if s := emu.DeliveryStats(); s.Delivered != 2 || s.Attempts != 4 || s.Failed != 0 {
		t.Errorf("stats %+v", s)
	}

	truth := emu.TruthFor(cust.ID)
	if len(truth) != before+2 || truth[len(truth)-1].ID != tx2.ID || tx.Amount != "0.000000000001" || tx2.Amount != "11.00" {
		t.Fatalf("truth not updated: %+v", truth[len(truth)-2:])
	}
	now, _ := emu.CustomerTruth(cust.ID)
	checkChain(t, now, truth)
	if !decimal.RequireFromString(now.Balance).Equal(decimal.RequireFromString(cust.Balance).Add(decimal.RequireFromString("0.000000000001")).Sub(decimal.NewFromInt(11))) {
		t.Errorf("balance %s after +0.000000000001 -11.00 from %s", now.Balance, cust.Balance)
	}

	// The newest event carries the transaction as the list serves it and the
	// customer with its new balance.
	var ev struct {
		ID, Type   string
		CreatedAt  string `json:"created_at"`
		Customer   json.RawMessage
		Properties struct {
			BalanceTransaction json.RawMessage `json:"balance_transaction"`
		}
	}
	bodies := slices.Clone(rc.bodies)
	slices.SortFunc(bodies, func(a, b []byte) int { return bytes.Index(a, []byte(tx2.ID)) - bytes.Index(b, []byte(tx2.ID)) })
	if err := json.Unmarshal(bodies[1], &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Type != "customer.balance_transaction_created" || ev.ID == "" || ev.CreatedAt == "" ||
		!bytes.Equal(ev.Properties.BalanceTransaction, tx2.Raw) || !bytes.Equal(ev.Customer, now.Raw) {
		t.Errorf("event %s", bodies[1])
	}
	page, err := c.ListBalanceTransactions(context.Background(), cust.ID, "", 1)
	if err != nil || !bytes.Equal(page.Data[0], tx2.Raw) {
		t.Errorf("list head %s, %v", page.Data, err)
	}

	// Redelivery re-signs the same body.
	events := emu.Events()
	emu.Deliver(events[0])
	if err := emu.WaitDeliveries(ctx); err != nil {
		t.Fatal(err)
	}
	if len(rc.bodies) != 3 || !bytes.Equal(rc.bodies[2], events[0].Raw) {
		t.Errorf("redelivery: %d bodies", len(rc.bodies))
	}
}

func TestAddTransactionRejects(t *testing.T) {
	emu, _ := start(t, orbemu.Config{Seed: 1, Customers: 1})
	id := emu.Customers()[0].ID
	for _, tc := range [][3]string{
		{id, "increment", "-1"}, {id, "increment", "0"}, {id, "sideways", "1"},
		{id, "increment", "1e3"}, {id, "increment", "0.0000000000001"}, {"nope", "increment", "1"},
	} {
		if _, err := emu.AddTransaction(tc[0], "manual_adjustment", tc[1], tc[2]); err == nil {
			t.Errorf("AddTransaction%v accepted", tc)
		}
	}
	if _, err := orbemu.New(orbemu.Config{WebhookURL: "http://x"}); err == nil {
		t.Error("WebhookURL without a secret accepted")
	}
}

// A deleted customer leaves the list (pages around it stay whole, with the
// page size and cursors of the rest), answers {"id", "deleted": true} to
// GET, and 404 for its transactions.
func TestDeleteCustomer(t *testing.T) {
	emu, c := start(t, orbemu.Config{Seed: 8, Customers: 45})
	ctx := context.Background()
	all := emu.Customers()
	gone := []string{all[3].ID, all[20].ID, all[21].ID, all[44].ID}
	for _, id := range gone {
		if err := emu.DeleteCustomer(id); err != nil {
			t.Fatal(err)
		}
	}
	if err := emu.DeleteCustomer(gone[0]); !errors.Is(err, orbemu.ErrNotFound) {
		t.Errorf("deleting twice: %v, want ErrNotFound", err)
	}
	var listed []string
	for _, raw := range walk(t, func(cursor string) (orbapi.Page, error) { return c.ListCustomers(ctx, cursor, 10) }) {
		var v struct{ ID string }
		if err := json.Unmarshal(raw, &v); err != nil {
			t.Fatal(err)
		}
		listed = append(listed, v.ID)
	}
	var want []string
	for _, cus := range emu.Customers() {
		want = append([]string{cus.ID}, want...) // newest first
	}
	if !slices.Equal(listed, want) || len(want) != len(all)-len(gone) {
		t.Errorf("listed %d customers %v, want the %d not deleted %v", len(listed), listed, len(all)-len(gone), want)
	}
	cus, _, err := c.GetCustomer(ctx, gone[1])
	if err != nil || !cus.Deleted || cus.ID != gone[1] || cus.Currency != "" {
		t.Errorf("GET a deleted customer: %+v, %v; want only its id and deleted", cus, err)
	}
	var ae *orbapi.APIError
	if _, err := c.ListBalanceTransactions(ctx, gone[1], "", 10); !errors.As(err, &ae) || ae.Status != 404 {
		t.Errorf("transactions of a deleted customer: %v, want 404", err)
	}
	if _, _, err := c.GetCustomer(ctx, "never_existed"); !errors.As(err, &ae) || ae.Status != 404 {
		t.Errorf("GET a customer that never existed: %v, want 404", err)
	}
}

// Over Orb's rate the emulator answers 429 in Orb's error shape, with a
// Retry-After of when a request would pass; all endpoints share the rate.
func TestRateLimitAnswersAsOrbDoes(t *testing.T) {
	emu, c := start(t, orbemu.Config{Seed: 3, Customers: 2, Limits: ratelimit.Limits{Global: 2}})
	ctx := context.Background()
	p, err := c.ListCustomers(ctx, "", 10)
	if err != nil {
		t.Fatal(err)
	}
	var cust struct{ ID string }
	if err := json.Unmarshal(p.Data[0], &cust); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListBalanceTransactions(ctx, cust.ID, "", 10); err != nil {
		t.Fatal(err)
	}
	_, _, err = c.GetCustomer(ctx, cust.ID)
	var apiErr *orbapi.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 429 || !strings.HasSuffix(apiErr.Type, "#429-too-many-requests") ||
		apiErr.RetryAfter <= 0 || apiErr.RetryAfter > time.Second {
		t.Fatalf("third request in a second at 2/s: %#v", err)
	}
	if n := emu.Requests(); n.Limited[ratelimit.GlobalRate] != 1 || n.Throttled != 0 {
		t.Errorf("counters %+v", n)
	}
}
