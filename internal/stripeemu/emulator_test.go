package stripeemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v82"
	"github.com/stripe/stripe-go/v82/webhook"

	"github.com/syncd/syncd/internal/ratelimit"
	"github.com/syncd/syncd/internal/stripeapi"
)

const connected = "acct_1ConnectedAcct0001"

func newEmu(t *testing.T, cfg Config) *Emulator {
	t.Helper()
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

type listPage struct {
	Object  string            `json:"object"`
	Data    []json.RawMessage `json:"data"`
	HasMore bool              `json:"has_more"`
	URL     string            `json:"url"`
}

// get serves one request in process and returns the status and body.
func get(t *testing.T, h http.Handler, account, path string) (int, []byte) {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	req.Header.Set("Authorization", "Bearer sk_test_emulator")
	if account != "" {
		req.Header.Set("Stripe-Account", account)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.Bytes()
}

func getPage(t *testing.T, h http.Handler, account, path string) listPage {
	t.Helper()
	code, body := get(t, h, account, path)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, code, body)
	}
	var p listPage
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return p
}

func ids(t *testing.T, raws []json.RawMessage) []string {
	out := make([]string, len(raws))
	for i, r := range raws {
		var o struct{ ID string }
		if err := json.Unmarshal(r, &o); err != nil {
			t.Fatal(err)
		}
		out[i] = o.ID
	}
	return out
}

func truthIDs(txns []Txn) []string {
	out := make([]string, len(txns))
	for i, x := range txns {
		out[i] = x.ID
	}
	return out
}

func TestGenerationIsDeterministicAndConsistent(t *testing.T) {
	cfg := Config{Seed: 7, Customers: 300, Accounts: []string{"", connected}, HeavyCustomers: []int{2000}}
	a, b := newEmu(t, cfg), newEmu(t, cfg)
	ta, tb := a.Truth(), b.Truth()
	if len(ta) != len(tb) || len(ta) < 2000 {
		t.Fatalf("truth sizes %d, %d", len(ta), len(tb))
	}
	for i := range ta {
		if !bytes.Equal(ta[i].Raw, tb[i].Raw) {
			t.Fatalf("txn %d differs between runs of one seed:\n%s\n%s", i, ta[i].Raw, tb[i].Raw)
		}
	}
	if other := newEmu(t, Config{Seed: 8, Customers: 300}).Truth(); len(other) > 0 && other[0].ID == ta[0].ID {
		t.Fatal("another seed gave the same ids")
	}

	types := map[string]bool{}
	counts := map[int]int{}
	for _, c := range a.Customers() {
		txns := a.TruthFor(c.Account, c.ID)
		counts[min(len(txns), 4)]++
		var bal, last int64
		for _, x := range txns {
			types[x.Type] = true
			if x.EndingBalance != bal+x.Amount || x.Amount == 0 {
				t.Fatalf("%s: ending_balance %d after %d%+d", x.ID, x.EndingBalance, bal, x.Amount)
			}
			if x.Created <= last {
				t.Fatalf("%s: created %d not after %d", x.ID, x.Created, last)
			}
			if x.Currency != c.Currency || x.Customer != c.ID || x.Account != c.Account {
				t.Fatalf("%s: belongs to %s/%s %s", x.ID, x.Account, x.Customer, x.Currency)
			}
			implied := map[string]*string{"applied_to_invoice": x.Invoice, "credit_note": x.CreditNote,
				"checkout_session_subscription_payment": x.CheckoutSession}
			if p, ok := implied[x.Type]; ok && p == nil {
				t.Fatalf("%s: type %s without its id", x.ID, x.Type)
			}
			bal, last = x.EndingBalance, x.Created
		}
		if c.Balance != bal {
			t.Fatalf("%s: balance %d, newest ending_balance %d", c.ID, c.Balance, bal)
		}
	}
	for _, typ := range Types {
		if !types[typ] {
			t.Errorf("no transaction of type %s", typ)
		}
	}
	if counts[0]+counts[1]+counts[2]+counts[3] < counts[4]*2 {
		t.Errorf("counts not skewed: %v", counts)
	}
}

func TestServedJSONMatchesTheFixtureShape(t *testing.T) {
	e := newEmu(t, Config{Seed: 1, HeavyCustomers: []int{3}})
	x := e.Truth()[0]
	var got map[string]any
	if err := json.Unmarshal(x.Raw, &got); err != nil {
		t.Fatal(err)
	}
	want := []string{"id", "object", "amount", "checkout_session", "created", "credit_note", "currency",
		"customer", "customer_account", "description", "ending_balance", "invoice", "livemode", "metadata", "type"}
	for _, k := range want {
		if _, ok := got[k]; !ok {
			t.Errorf("served object lacks %q: %s", k, x.Raw)
		}
	}
	if len(got) != len(want) || got["object"] != "customer_balance_transaction" || got["customer_account"] != nil {
		t.Errorf("unexpected shape: %s", x.Raw)
	}
	var decoded stripe.CustomerBalanceTransaction
	if err := json.Unmarshal(x.Raw, &decoded); err != nil || decoded.ID != x.ID || decoded.EndingBalance != x.EndingBalance {
		t.Fatalf("stripe-go decodes %s as %+v: %v", x.Raw, decoded, err)
	}
}

// Answers carry a Content-Length, as Stripe's do, rather than chunks (which
// net/http would use for a large page otherwise).
func TestAnswersAreSized(t *testing.T) {
	e := newEmu(t, Config{Seed: 1, HeavyCustomers: []int{300}})
	srv := httptest.NewServer(e)
	defer srv.Close()
	c := heaviest(e)
	for _, path := range []string{"/v1/customers?limit=100", "/v1/customers/" + c.ID + "/balance_transactions?limit=100",
		"/v1/customers/" + c.ID, "/v1/nowhere"} {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
		req.Header.Set("Authorization", "Bearer sk_test_emulator")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if res.ContentLength != int64(len(body)) || len(res.TransferEncoding) != 0 || len(body) == 0 {
			t.Errorf("%s: %d, Content-Length %d, Transfer-Encoding %v for a body of %d bytes", path, res.StatusCode, res.ContentLength, res.TransferEncoding, len(body))
		}
	}
}

// heaviest returns the customer with the most transactions.
func heaviest(e *Emulator) Customer {
	cs := e.Customers()
	return slices.MaxFunc(cs, func(a, b Customer) int { return a.Transactions - b.Transactions })
}

func TestPaginationWalksBothWaysToTheTruth(t *testing.T) {
	e := newEmu(t, Config{Seed: 2, Customers: 50, HeavyCustomers: []int{537}})
	for _, c := range e.Customers() {
		truth := truthIDs(e.TruthFor("", c.ID))
		base := "/v1/customers/" + c.ID + "/balance_transactions?limit=7"

		var back []string // newest first, following starting_after
		for path := base; ; {
			p := getPage(t, e, "", path)
			back = append(back, ids(t, p.Data)...)
			if !p.HasMore {
				break
			}
			path = base + "&starting_after=" + back[len(back)-1]
		}
		slices.Reverse(back)
		if !slices.Equal(back, truth) {
			t.Fatalf("%s: backward walk %d ids, truth %d", c.ID, len(back), len(truth))
		}
		if len(truth) < 2 {
			continue
		}
		// Forward from the oldest, as an incremental reader holding only it does.
		fwd := truth[:1]
		for cursor := truth[0]; ; {
			p := getPage(t, e, "", base+"&ending_before="+cursor)
			got := ids(t, p.Data)
			if len(got) == 0 {
				break
			}
			slices.Reverse(got)
			fwd = append(fwd, got...)
			cursor = got[len(got)-1]
			if !p.HasMore {
				break
			}
		}
		if !slices.Equal(fwd, truth) {
			t.Fatalf("%s: forward walk %v, truth %v", c.ID, fwd, truth)
		}
	}
}

func TestListErrors(t *testing.T) {
	e := newEmu(t, Config{Seed: 3, Customers: 5, Accounts: []string{"", connected}})
	cus := e.Customers()[0].ID
	tests := []struct {
		name, account, path, auth string
		code                      int
		errType, errCode, param   string
	}{
		{"limit zero", "", "/v1/customers?limit=0", "", 400, "invalid_request_error", "", "limit"},
		{"limit too big", "", "/v1/customers/" + cus + "/balance_transactions?limit=101", "", 400, "invalid_request_error", "", "limit"},
		{"limit not a number", "", "/v1/events?limit=ten", "", 400, "invalid_request_error", "", "limit"},
		{"both cursors", "", "/v1/customers?starting_after=a&ending_before=b", "", 400, "invalid_request_error", "", "starting_after"},
		{"unknown cursor", "", "/v1/customers?starting_after=cus_nope", "", 400, "invalid_request_error", "resource_missing", "starting_after"},
		{"bad created", "", "/v1/customers?created[gte]=yesterday", "", 400, "invalid_request_error", "", "created[gte]"},
		{"unknown customer", "", "/v1/customers/cus_x/balance_transactions", "", 404, "invalid_request_error", "resource_missing", "id"},
		{"unknown customer retrieve", "", "/v1/customers/cus_x", "", 404, "invalid_request_error", "resource_missing", "id"},
		{"no key", "", "/v1/customers", "none", 401, "invalid_request_error", "", ""},
		{"publishable key", "", "/v1/customers", "Bearer pk_test_abc", 401, "invalid_request_error", "", ""},
		{"unknown account", "acct_unknown", "/v1/customers", "", 403, "invalid_request_error", "account_invalid", ""},
		{"unknown route", "", "/v1/charges", "", 404, "invalid_request_error", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, tc.path, nil)
			switch tc.auth {
			case "":
				req.Header.Set("Authorization", "Bearer rk_test_restricted")
			case "none":
			default:
				req.Header.Set("Authorization", tc.auth)
			}
			if tc.account != "" {
				req.Header.Set("Stripe-Account", tc.account)
			}
			rec := httptest.NewRecorder()
			e.ServeHTTP(rec, req)
			var body struct {
				Error struct{ Type, Code, Param, Message string }
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("%d %s: %v", rec.Code, rec.Body, err)
			}
			got := body.Error
			if rec.Code != tc.code || got.Type != tc.errType || got.Code != tc.errCode || got.Param != tc.param || got.Message == "" {
				t.Fatalf("got %d %s", rec.Code, rec.Body)
			}
		})
	}
	code, body := get(t, e, "", "/v1/customers/cus_x/balance_transactions")
	want := `{"error":{"code":"resource_missing","doc_url":"https://stripe.com/docs/error-codes/resource-missing","message":"No such customer: 'cus_x'","param":"id","type":"invalid_request_error"}}`
	if code != 404 || string(bytes.TrimSpace(body)) != want {
		t.Errorf("unknown customer: %d %s", code, body)
	}
}

func TestStripeAccountIsolation(t *testing.T) {
	e := newEmu(t, Config{Seed: 4, Customers: 20, Accounts: []string{"", connected}})
	byAccount := map[string][]string{}
	for _, c := range e.Customers() {
		byAccount[c.Account] = append(byAccount[c.Account], c.ID)
	}
	for _, acct := range []string{"", connected} {
		p := getPage(t, e, acct, "/v1/customers?limit=100")
		got := ids(t, p.Data)
		slices.Sort(got)
		want := slices.Sorted(slices.Values(byAccount[acct]))
		if !slices.Equal(got, want) {
			t.Fatalf("account %q lists %v, want %v", acct, got, want)
		}
	}
	foreign := byAccount[connected][0]
	if code, _ := get(t, e, "", "/v1/customers/"+foreign+"/balance_transactions"); code != 404 {
		t.Errorf("platform key reads a connected account's customer: %d", code)
	}
	if code, _ := get(t, e, connected, "/v1/customers/"+foreign+"/balance_transactions"); code != 200 {
		t.Errorf("connected customer with Stripe-Account: %d", code)
	}
	p := getPage(t, e, "", "/v1/accounts")
	if got := ids(t, p.Data); !slices.Equal(got, []string{connected}) {
		t.Errorf("accounts %v", got)
	}
}

func TestCreatedFilters(t *testing.T) {
	e := newEmu(t, Config{Seed: 5, HeavyCustomers: []int{400}})
	c := heaviest(e)
	truth := e.TruthFor("", c.ID)
	mid := truth[len(truth)/2].Created
	tests := []struct {
		op   string
		keep func(int64) bool
	}{
		{"gte", func(x int64) bool { return x >= mid }},
		{"gt", func(x int64) bool { return x > mid }},
		{"lte", func(x int64) bool { return x <= mid }},
		{"lt", func(x int64) bool { return x < mid }},
	}
	for _, tc := range tests {
		var want []string
		for _, x := range slices.Backward(truth) {
			if tc.keep(x.Created) {
				want = append(want, x.ID)
			}
		}
		var got []string
		base := "/v1/customers/" + c.ID + "/balance_transactions?limit=100&created[" + tc.op + "]=" + strconv.FormatInt(mid, 10)
		for path := base; ; {
			p := getPage(t, e, "", path)
			got = append(got, ids(t, p.Data)...)
			if !p.HasMore {
				break
			}
			path = base + "&starting_after=" + got[len(got)-1]
		}
		if !slices.Equal(got, want) {
			t.Errorf("created[%s]: %d ids, want %d", tc.op, len(got), len(want))
		}
	}
}

// Transactions made in bulk share a second: a range cut there with
// created[lt] below and created[gte] above, each paged by starting_after,
// lists every one of them exactly once, newest first.
func TestCreatedFiltersWithinASharedSecond(t *testing.T) {
	e := newEmu(t, Config{Seed: 5, Customers: 1})
	c := e.Customers()[0]
	at := time.Unix(c.Created, 0).Add(time.Hour)
	if tx := e.TruthFor("", c.ID); len(tx) > 0 {
		at = time.Unix(tx[len(tx)-1].Created, 0).Add(time.Hour)
	}
	for i := range 250 {
		if _, err := e.AddTransactionAt("", c.ID, int64(i+1), "adjustment", at.Add(time.Duration(i/120)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.AddTransactionAt("", c.ID, 1, "adjustment", at.Add(-time.Second)); err == nil {
		t.Error("a transaction dated before the newest was accepted")
	}
	cut := strconv.FormatInt(at.Add(time.Second).Unix(), 10) // 120 before it, 120 in it, 10 after
	read := func(filter string) []string {
		var got []string
		base := "/v1/customers/" + c.ID + "/balance_transactions?limit=100&" + filter
		for path := base; ; {
			p := getPage(t, e, "", path)
			got = append(got, ids(t, p.Data)...)
			if !p.HasMore {
				return got
			}
			path = base + "&starting_after=" + got[len(got)-1]
		}
	}
	got := append(read("created[gte]="+cut), read("created[lt]="+cut)...)
	want := truthIDs(e.TruthFor("", c.ID))
	slices.Reverse(want)
	if !slices.Equal(got, want) {
		t.Errorf("created[gte] then created[lt] at a shared second: %d ids, want the %d of the truth, newest first", len(got), len(want))
	}
}

func TestEventsTypesFilter(t *testing.T) {
	e := newEmu(t, Config{Seed: 6, Customers: 200})
	all := e.Events()
	if len(all) == 0 {
		t.Fatal("no seeded events")
	}
	want := map[string]int{}
	for _, ev := range all {
		want[ev.Type]++
	}
	count := func(query string) (n int, types map[string]bool) {
		types = map[string]bool{}
		var last string
		for {
			path := "/v1/events?limit=100&" + query
			if last != "" {
				path += "&starting_after=" + last
			}
			p := getPage(t, e, "", path)
			for _, raw := range p.Data {
				var ev struct{ ID, Type string }
				json.Unmarshal(raw, &ev)
				types[ev.Type] = true
				last = ev.ID
				n++
			}
			if !p.HasMore {
				return n, types
			}
		}
	}
	n, types := count("types[]=customer.updated&types[]=invoice.paid")
	if n != want["customer.updated"]+want["invoice.paid"] || len(types) != 2 {
		t.Errorf("types[]: %d events of %v, want %d", n, types, want["customer.updated"]+want["invoice.paid"])
	}
	if n, _ := count("type=customer.*"); n != want["customer.updated"]+want["customer.created"] {
		t.Errorf("type=customer.*: %d", n)
	}
	if n, _ := count("types[0]=credit_note.created"); n != want["credit_note.created"] {
		t.Errorf("types[0]: %d, want %d", n, want["credit_note.created"])
	}
}

func TestStripeGoClientListsAcrossPages(t *testing.T) {
	e := newEmu(t, Config{Seed: 9, Accounts: []string{connected}, HeavyCustomers: []int{250}})
	srv := httptest.NewServer(e)
	defer srv.Close()
	c := heaviest(e)
	sc := stripe.NewClient("sk_test_emulator", stripe.WithBackends(stripe.NewBackendsWithConfig(&stripe.BackendConfig{
		URL: stripe.String(srv.URL), HTTPClient: srv.Client(), LeveledLogger: &stripe.LeveledLogger{Level: stripe.LevelError},
	})))
	params := &stripe.CustomerBalanceTransactionListParams{Customer: stripe.String(c.ID)}
	params.Limit = stripe.Int64(100)
	params.SetStripeAccount(connected)
	var got []*stripe.CustomerBalanceTransaction
	for x, err := range sc.V1CustomerBalanceTransactions.List(context.Background(), params) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, x)
	}
	truth := e.TruthFor(connected, c.ID)
	if len(got) != len(truth) || e.CustomerListCalls(connected, c.ID) != 3 {
		t.Fatalf("stripe-go listed %d of %d in %d calls", len(got), len(truth), e.CustomerListCalls(connected, c.ID))
	}
	for i, x := range got {
		w := truth[len(truth)-1-i]
		if x.ID != w.ID || x.Amount != w.Amount || x.EndingBalance != w.EndingBalance ||
			string(x.Type) != w.Type || string(x.Currency) != w.Currency || x.Customer.ID != c.ID {
			t.Fatalf("item %d: %+v, want %+v", i, x, w)
		}
	}
	cp := &stripe.CustomerListParams{}
	cp.SetStripeAccount(connected)
	n := 0
	for _, err := range sc.V1Customers.List(context.Background(), cp) {
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 1 {
		t.Errorf("customers listed: %d", n)
	}
}

func TestMutationsEmitSignedWebhooks(t *testing.T) {
	const secret = "whsec_test_emulator"
	var mu sync.Mutex
	var got []stripe.Event
	fail := 1 // answer the first POST 500 to see a retry
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		ev, err := webhook.ConstructEventWithOptions(body, r.Header.Get("Stripe-Signature"), secret,
			webhook.ConstructEventOptions{IgnoreAPIVersionMismatch: true})
		if err != nil {
			t.Errorf("signature: %v", err)
			w.WriteHeader(400)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if fail > 0 {
			fail--
			w.WriteHeader(500)
			return
		}
		got = append(got, ev)
	}))
	defer hook.Close()
	e := newEmu(t, Config{Seed: 10, Customers: 10, Accounts: []string{connected},
		WebhookURL: hook.URL, WebhookSecret: secret, WebhookBackoff: time.Millisecond})
	c := e.Customers()[0]
	x, err := e.AddTransaction(connected, c.ID, -1500, "adjustment")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.WaitDeliveries(ctx); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Type != "customer.updated" || got[0].Account != connected {
		t.Fatalf("delivered %+v", got)
	}
	if prev := got[0].Data.PreviousAttributes["balance"]; prev != float64(c.Balance) {
		t.Errorf("previous_attributes.balance %v, want %d", prev, c.Balance)
	}
	if now, _ := e.CustomerTruth(connected, c.ID); now.Balance != c.Balance-1500 || x.EndingBalance != now.Balance {
		t.Errorf("balance %d after -1500 on %d (txn ending %d)", now.Balance, c.Balance, x.EndingBalance)
	}
	if s := e.DeliveryStats(); s.Attempts != 2 || s.Delivered != 1 || s.Pending != 0 {
		t.Errorf("stats %+v", s)
	}
	p := getPage(t, e, connected, "/v1/events?limit=1")
	if ids(t, p.Data)[0] != got[0].ID {
		t.Errorf("newest event is not the delivered one")
	}

	// An edited description changes what the API serves but sends nothing.
	before := len(e.Events())
	if _, err := e.EditDescription(connected, c.ID, x.ID, "edited"); err != nil {
		t.Fatal(err)
	}
	e.Flush()
	if len(e.Events()) != before || e.DeliveryStats().Attempts != 2 {
		t.Error("EditDescription emitted an event")
	}
	code, body := get(t, e, connected, "/v1/customers/"+c.ID+"/balance_transactions/"+x.ID)
	var served stripe.CustomerBalanceTransaction
	json.Unmarshal(body, &served)
	if code != 200 || served.Description != "edited" {
		t.Errorf("served after edit: %d %s", code, body)
	}

	// Redelivery sends the same event id again.
	e.Deliver(e.Events()[len(e.Events())-1])
	e.Flush()
	if len(got) != 2 || got[1].ID != got[0].ID {
		t.Errorf("redelivery: %d deliveries", len(got))
	}
}

func TestFaultInjection(t *testing.T) {
	e := newEmu(t, Config{Seed: 11, Customers: 3, Rate429: 0.2, Rate500: 0.1})
	codes := map[int]int{}
	for range 2000 {
		code, body := get(t, e, "", "/v1/customers")
		codes[code]++
		if code == 429 && !bytes.Contains(body, []byte(`"code":"rate_limit"`)) {
			t.Fatalf("429 body %s", body)
		}
	}
	if codes[429] < 320 || codes[429] > 480 || codes[500] < 140 || codes[500] > 260 {
		t.Errorf("codes %v for rates 0.2 / 0.1", codes)
	}
	if r := e.Requests(); r.Total != 2000 || r.Throttled != int64(codes[429]) || r.ByKind[KindCustomers] != 2000 {
		t.Errorf("counters %+v", r)
	}
	e.SetFaults(0, 0)
	e.ResetCounters()
	if code, _ := get(t, e, "", "/v1/customers"); code != 200 || e.Requests().Total != 1 {
		t.Errorf("after SetFaults(0, 0): %d", code)
	}
}

func BenchmarkListPage(b *testing.B) {
	e, _ := New(Config{Seed: 1, HeavyCustomers: []int{5000}})
	c := e.Customers()[0]
	for _, x := range e.Customers() {
		if x.Transactions == 5000 {
			c = x
		}
	}
	req := httptest.NewRequest(http.MethodGet, "/v1/customers/"+c.ID+"/balance_transactions?limit=100&"+
		url.Values{"starting_after": {e.TruthFor("", c.ID)[2500].ID}}.Encode(), nil)
	req.Header.Set("Authorization", "Bearer sk_test_x")
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, req)
	}
	b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "rows/s")
}

// A deleted customer answers as Stripe's does: GET gives only id, object
// and deleted: true; its balance transactions are 404; the list leaves it
// out; a customer.deleted event (and its thin form) names it.
func TestDeleteCustomer(t *testing.T) {
	e := newEmu(t, Config{Seed: 9, Customers: 5, Accounts: []string{"", connected}})
	var victim Customer
	for _, c := range e.Customers() {
		if c.Account == connected && c.Transactions > 0 {
			victim = c
			break
		}
	}
	if victim.ID == "" {
		t.Fatal("no connected customer with transactions")
	}
	ev, err := e.DeleteCustomer(connected, victim.ID)
	if err != nil {
		t.Fatal(err)
	}
	code, body := get(t, e, connected, "/v1/customers/"+victim.ID)
	var got map[string]any
	if err := json.Unmarshal(body, &got); err != nil || code != 200 || len(got) != 3 ||
		got["id"] != victim.ID || got["object"] != "customer" || got["deleted"] != true {
		t.Errorf("GET the deleted customer: %d %s", code, body)
	}
	if code, body := get(t, e, connected, "/v1/customers/"+victim.ID+"/balance_transactions"); code != 404 ||
		!strings.Contains(string(body), "resource_missing") {
		t.Errorf("its balance transactions: %d %s, want 404 resource_missing", code, body)
	}
	if code, _ := get(t, e, "", "/v1/customers/"+victim.ID); code != 404 {
		t.Errorf("the deleted customer from another account: %d, want 404", code)
	}
	if slices.Contains(ids(t, getPage(t, e, connected, "/v1/customers?limit=100").Data), victim.ID) {
		t.Error("the deleted customer is still listed")
	}
	if _, ok := e.CustomerTruth(connected, victim.ID); ok {
		t.Error("the deleted customer is still in the truth")
	}
	if _, err := e.DeleteCustomer(connected, victim.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleting twice: %v, want ErrNotFound", err)
	}
	var snap struct {
		Type    string `json:"type"`
		Account string `json:"account"`
		Data    struct {
			Object struct{ ID, Object string } `json:"object"`
		} `json:"data"`
	}
	var thin struct {
		Type          string                    `json:"type"`
		Context       *string                   `json:"context"`
		RelatedObject struct{ ID, Type string } `json:"related_object"`
	}
	if err := json.Unmarshal(ev.Raw, &snap); err != nil || snap.Type != "customer.deleted" || snap.Account != connected ||
		snap.Data.Object.ID != victim.ID || snap.Data.Object.Object != "customer" || ev.Customer != victim.ID {
		t.Errorf("event %s", ev.Raw)
	}
	if err := json.Unmarshal(ev.Thin, &thin); err != nil || thin.Type != "v1.customer.deleted" || thin.Context == nil ||
		*thin.Context != connected || thin.RelatedObject.ID != victim.ID || thin.RelatedObject.Type != "customer" {
		t.Errorf("thin event %s", ev.Thin)
	}
	p := getPage(t, e, connected, "/v1/events?types[]=customer.deleted")
	if got := ids(t, p.Data); !slices.Equal(got, []string{ev.ID}) {
		t.Errorf("/v1/events?types[]=customer.deleted lists %v, want [%s]", got, ev.ID)
	}
}

// Over a limit the emulator answers as Stripe does: 429, the limit in
// Stripe-Rate-Limited-Reason, the rate_limit error body. Every customer's
// balance transactions are one endpoint, and a connected account's requests
// spend the platform's budget unless LimitScope says otherwise.
func TestLimitsAnswerAsStripeDoes(t *testing.T) {
	for _, scope := range []ratelimit.Scope{ratelimit.ScopePlatform, ratelimit.ScopeAccount} {
		e := newEmu(t, Config{Seed: 12, Customers: 3, Accounts: []string{"", "acct_1Lim"},
			Limits: ratelimit.Limits{Global: 4, Endpoint: 2}, LimitScope: scope})
		cs := customersOf(e, "")
		call := func(account, path string) (int, string, []byte) {
			req := httptest.NewRequest(http.MethodGet, path, nil)
			req.Header.Set("Authorization", "Bearer sk_test_emulator")
			if account != "" {
				req.Header.Set("Stripe-Account", account)
			}
			rec := httptest.NewRecorder()
			e.ServeHTTP(rec, req)
			return rec.Code, rec.Header().Get(stripeapi.ReasonHeader), rec.Body.Bytes()
		}
		for i := range 2 {
			if code, _, body := call("", "/v1/customers/"+cs[i].ID+"/balance_transactions"); code != 200 {
				t.Fatalf("%s: request %d: %d %s", scope, i, code, body)
			}
		}
		code, reason, body := call("", "/v1/customers/"+cs[2].ID+"/balance_transactions")
		var apiErr struct {
			Error struct{ Type, Code, Message string } `json:"error"`
		}
		if err := json.Unmarshal(body, &apiErr); err != nil || code != 429 || reason != ratelimit.EndpointRate ||
			apiErr.Error.Type != "invalid_request_error" || apiErr.Error.Code != "rate_limit" || apiErr.Error.Message == "" {
			t.Fatalf("%s: third balance transaction list: %d %q %s", scope, code, reason, body)
		}
		if code, _, _ := call("", "/v1/events"); code != 200 {
			t.Fatalf("%s: another endpoint: %d", scope, code)
		}
		// The platform has spent 3 of its 4 a second; the connected
		// account 0 of its own or 3 of the shared.
		code1, _, _ := call("acct_1Lim", "/v1/customers")
		code2, reason, _ := call("acct_1Lim", "/v1/events")
		wantReason := ratelimit.GlobalRate
		if scope == ratelimit.ScopeAccount {
			wantReason = ""
		}
		if code1 != 200 || reason != wantReason {
			t.Errorf("%s: connected account: %d, then %d %q; want 200 and reason %q", scope, code1, code2, reason, wantReason)
		}
		if got := e.Requests().Limited; got[ratelimit.EndpointRate] != 1 {
			t.Errorf("%s: limited %v", scope, got)
		}
	}
}

func customersOf(e *Emulator, account string) []Customer {
	var out []Customer
	for _, c := range e.Customers() {
		if c.Account == account {
			out = append(out, c)
		}
	}
	return out
}
