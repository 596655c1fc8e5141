package stripeemu

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/syncd/syncd/internal/ratelimit"
	"github.com/syncd/syncd/internal/stripeapi"
)

// Path kinds counted by Requests.
const (
	KindCustomers           = "customers"            // GET /v1/customers
	KindCustomer            = "customer"             // GET /v1/customers/{id}
	KindBalanceTransactions = "balance_transactions" // GET /v1/customers/{id}/balance_transactions
	KindBalanceTransaction  = "balance_transaction"  // GET /v1/customers/{id}/balance_transactions/{txn}
	KindEvents              = "events"
	KindAccounts            = "accounts"
	KindOther               = "other"
)

func (e *Emulator) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/customers", e.listCustomers)
	mux.HandleFunc("GET /v1/customers/{id}", e.getCustomer)
	mux.HandleFunc("GET /v1/customers/{id}/balance_transactions", e.listTxns)
	mux.HandleFunc("GET /v1/customers/{id}/balance_transactions/{txn}", e.getTxn)
	mux.HandleFunc("GET /v1/events", e.listEvents)
	mux.HandleFunc("GET /v1/invoices/{id}", e.getObject("invoice"))
	mux.HandleFunc("GET /v1/credit_notes/{id}", e.getObject("credit_note"))
	mux.HandleFunc("GET /v1/checkout/sessions/{id}", e.getObject("checkout.session"))
	mux.HandleFunc("GET /v1/accounts", e.listAccounts)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &apiError{status: http.StatusNotFound, Type: "invalid_request_error",
			Message: fmt.Sprintf("Unrecognized request URL (%s: %s). Please see https://stripe.com/docs or we can help at https://support.stripe.com/.", r.Method, r.URL.Path)})
	})
	return mux
}

func pathKind(path string) string {
	rest, ok := strings.CutPrefix(path, "/v1/")
	if !ok {
		return KindOther
	}
	parts := strings.Split(strings.TrimSuffix(rest, "/"), "/")
	switch {
	case parts[0] == "events" && len(parts) == 1:
		return KindEvents
	case parts[0] == "accounts" && len(parts) == 1:
		return KindAccounts
	case parts[0] != "customers":
		return KindOther
	case len(parts) == 1:
		return KindCustomers
	case len(parts) == 2:
		return KindCustomer
	case len(parts) == 3 && parts[2] == "balance_transactions":
		return KindBalanceTransactions
	case len(parts) == 4 && parts[2] == "balance_transactions":
		return KindBalanceTransaction
	}
	return KindOther
}

// ServeHTTP counts the request, checks the key and the Stripe-Account
// header, enforces the rate and concurrency limits, waits the latency (the
// request is in flight meanwhile), injects faults, then serves the route.
func (e *Emulator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.counters.Request(pathKind(r.URL.Path))
	h := w.Header()
	h.Set("Request-Id", fmt.Sprintf("req_emu%010d", e.reqSeq.Add(1)))
	h.Set("Stripe-Version", APIVersion)
	if err := checkKey(r); err != nil {
		writeError(w, err)
		return
	}
	acct := r.Header.Get("Stripe-Account")
	if acct != "" {
		if _, ok := e.accounts[acct]; !ok || acct == "" {
			writeError(w, &apiError{status: http.StatusForbidden, Type: "invalid_request_error",
				Code:    "account_invalid",
				Message: fmt.Sprintf("The provided key does not have access to account '%s' (or that account does not exist). Application access may have been revoked.", acct)})
			return
		}
	}
	if e.cfg.LimitScope != ratelimit.ScopeAccount {
		acct = "" // the platform's budget, shared by its connected accounts
	}
	// The route's pattern is the endpoint, as Stripe counts them: one for
	// every customer's balance transactions.
	_, endpoint := e.mux.Handler(r)
	release, reason, _ := e.limits.Admit(acct, endpoint)
	if reason != "" {
		rateLimited(w, reason)
		return
	}
	defer release()
	if !e.faults.Delay(r.Context()) {
		return
	}
	switch e.faults.Draw() {
	case http.StatusTooManyRequests:
		e.counters.Throttled()
		rateLimited(w, "")
		return
	case http.StatusInternalServerError:
		e.counters.Failed()
		writeError(w, &apiError{status: http.StatusInternalServerError, Type: "api_error",
			Message: "An unknown error occurred"})
		return
	}
	e.mux.ServeHTTP(w, r)
}

// rateLimited answers 429 as Stripe does, naming the limit hit in
// Stripe-Rate-Limited-Reason (none for an injected fault).
func rateLimited(w http.ResponseWriter, reason string) {
	if reason != "" {
		w.Header().Set(stripeapi.ReasonHeader, reason)
	}
	writeError(w, &apiError{status: http.StatusTooManyRequests, Type: "invalid_request_error",
		Code: "rate_limit", DocURL: "https://stripe.com/docs/error-codes/rate-limit",
		Message: "Too many requests hit the API too quickly. We recommend an exponential backoff of your requests."})
}

func checkKey(r *http.Request) *apiError {
	key, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		key, _, _ = r.BasicAuth()
	}
	if key == "" {
		return &apiError{status: http.StatusUnauthorized, Type: "invalid_request_error",
			Message: "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, or we can help at https://support.stripe.com/."}
	}
	for _, p := range []string{"sk_test_", "sk_live_", "rk_test_", "rk_live_"} {
		if len(key) > len(p) && strings.HasPrefix(key, p) {
			return nil
		}
	}
	masked := key
	if len(masked) > 8 {
		masked = masked[:8] + strings.Repeat("*", 4) + masked[len(masked)-4:]
	}
	return &apiError{status: http.StatusUnauthorized, Type: "invalid_request_error",
		Message: "Invalid API Key provided: " + masked}
}

// apiError is Stripe's error body.
type apiError struct {
	status  int
	Code    string `json:"code,omitempty"`
	DocURL  string `json:"doc_url,omitempty"`
	Message string `json:"message"`
	Param   string `json:"param,omitempty"`
	Type    string `json:"type"`
}

func invalidParam(param, msg string) *apiError {
	return &apiError{status: http.StatusBadRequest, Type: "invalid_request_error", Param: param, Message: msg}
}

func missing(kind, id, param string) *apiError {
	return &apiError{status: http.StatusNotFound, Type: "invalid_request_error", Code: "resource_missing",
		DocURL: "https://stripe.com/docs/error-codes/resource-missing", Param: param,
		Message: fmt.Sprintf("No such %s: '%s'", kind, id)}
}

func writeError(w http.ResponseWriter, e *apiError) {
	body, _ := json.Marshal(struct {
		Error *apiError `json:"error"`
	}{e})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.status)
	w.Write(append(body, '\n'))
}

// writeJSON answers with body, sized as Stripe's API sizes its answers
// (a Content-Length, not chunks).
func writeJSON(w http.ResponseWriter, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.Write(body)
}

// account resolves the Stripe-Account header (already validated).
func (e *Emulator) account(r *http.Request) *account {
	return e.accounts[r.Header.Get("Stripe-Account")]
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

func writeList(w http.ResponseWriter, data [][]byte, hasMore bool, path string) {
	bp := bufPool.Get().(*[]byte)
	*bp = appendList((*bp)[:0], data, hasMore, path)
	writeJSON(w, *bp)
	bufPool.Put(bp)
}

// serveList answers a list request: sel picks the page from the request's
// account under the read lock; the body is written after it is released.
func (e *Emulator) serveList(w http.ResponseWriter, r *http.Request, path string,
	sel func(a *account, lq listQuery) ([][]byte, bool, *apiError)) {
	lq, aerr := parseList(r.URL.Query())
	var data [][]byte
	var more bool
	if aerr == nil {
		e.mu.RLock()
		data, more, aerr = sel(e.account(r), lq)
		e.mu.RUnlock()
	}
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	writeList(w, data, more, path)
}

// pageOf resolves the cursors through byID, then selects a page of items.
// An unknown cursor is Stripe's resource_missing on that parameter.
func pageOf[T listable](items []T, byID map[string]T, lq listQuery, kind string) ([][]byte, bool, *apiError) {
	ck, aerr := resolveCursors(lq, kind, func(id string) (int64, int64, bool) {
		it, ok := byID[id]
		if !ok {
			return 0, 0, false
		}
		c, s := it.key()
		return c, s, true
	})
	if aerr != nil {
		return nil, false, aerr
	}
	data, more := page(items, lq, ck)
	return data, more, nil
}

func (e *Emulator) listTxns(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	e.serveList(w, r, "/v1/customers/"+id+"/balance_transactions", func(a *account, lq listQuery) ([][]byte, bool, *apiError) {
		c, ok := a.find(id, true)
		if !ok {
			return nil, false, missing("customer", id, "id")
		}
		data, more, aerr := pageOf(c.txns, c.txnByID, lq, "customer_balance_transaction")
		if aerr == nil {
			e.counters.ListServed([2]string{a.id, id})
		}
		return data, more, aerr
	})
}

func (e *Emulator) getTxn(w http.ResponseWriter, r *http.Request) {
	id, tid := r.PathValue("id"), r.PathValue("txn")
	e.mu.RLock()
	c, ok := e.account(r).find(id, true)
	var raw []byte
	if ok {
		if t, ok := c.txnByID[tid]; ok {
			raw = t.Raw
		}
	}
	e.mu.RUnlock()
	switch {
	case !ok:
		writeError(w, missing("customer", id, "id"))
	case raw == nil:
		writeError(w, missing("customer_balance_transaction", tid, "id"))
	default:
		writeJSON(w, raw)
	}
}

// getObject serves an invoice, credit note or checkout session as the
// newest event about it carried it (what a thin event's reader fetches).
func (e *Emulator) getObject(kind string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		e.mu.RLock()
		raw, ok := e.account(r).objects[id]
		e.mu.RUnlock()
		var head objectHead
		if ok && (json.Unmarshal(raw, &head) != nil || head.Object != kind) {
			ok = false
		}
		if !ok {
			writeError(w, missing(kind, id, "id"))
			return
		}
		writeJSON(w, raw)
	}
}

func (e *Emulator) getCustomer(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	e.mu.RLock()
	a := e.account(r)
	c, ok := a.find(id, false)
	var raw []byte
	if ok {
		raw = c.raw
	} else {
		raw, ok = a.deleted[id]
	}
	e.mu.RUnlock()
	if !ok {
		writeError(w, missing("customer", id, "id"))
		return
	}
	writeJSON(w, raw)
}

func (e *Emulator) listCustomers(w http.ResponseWriter, r *http.Request) {
	e.serveList(w, r, "/v1/customers", func(a *account, lq listQuery) ([][]byte, bool, *apiError) {
		if a.lazy != nil {
			return a.lazy.customerPage(lq)
		}
		return pageOf(a.customers, a.customerByID, lq, "customer")
	})
}

func (e *Emulator) listEvents(w http.ResponseWriter, r *http.Request) {
	match := typeFilter(r.URL.Query())
	e.serveList(w, r, "/v1/events", func(a *account, lq listQuery) ([][]byte, bool, *apiError) {
		evs := a.events
		if match != nil {
			evs = nil
			for _, ev := range a.events {
				if match(ev.Type) {
					evs = append(evs, ev)
				}
			}
		}
		return pageOf(evs, a.eventByID, lq, "event")
	})
}

func (e *Emulator) listAccounts(w http.ResponseWriter, r *http.Request) {
	e.serveList(w, r, "/v1/accounts", func(a *account, lq listQuery) ([][]byte, bool, *apiError) {
		byID := map[string]*account{}
		var accts []*account
		if a.id == "" { // a connected account has no connected accounts
			for _, id := range e.accountIDs {
				if id != "" {
					accts = append(accts, e.accounts[id])
					byID[id] = e.accounts[id]
				}
			}
		}
		slices.SortFunc(accts, byKey[*account])
		return pageOf(accts, byID, lq, "account")
	})
}

func badCursor(kind, id, param string) *apiError {
	err := missing(kind, id, param)
	err.status = http.StatusBadRequest
	return err
}

// Counters are request counts since the last ResetCounters.
type Counters struct {
	Total     int64            `json:"total"`
	ByKind    map[string]int64 `json:"by_kind"`   // see the Kind… constants
	Throttled int64            `json:"throttled"` // answered 429 by fault injection
	Failed    int64            `json:"failed"`    // answered 500 by fault injection
	// Limited are the requests answered 429 for exceeding Config.Limits,
	// by Stripe-Rate-Limited-Reason.
	Limited map[string]int64 `json:"limited"`
}

// Requests reports the requests received since the last ResetCounters.
func (e *Emulator) Requests() Counters {
	c := e.counters.Counts()
	return Counters{Total: c.Total, ByKind: c.ByKind, Throttled: c.Throttled, Failed: c.Failed, Limited: e.limits.Refused()}
}

// CustomerListCalls counts the balance-transaction list pages served (200)
// for one customer since the last ResetCounters.
func (e *Emulator) CustomerListCalls(account, customer string) int {
	return e.counters.ListCalls([2]string{account, customer})
}

// ResetCounters zeroes every request counter.
func (e *Emulator) ResetCounters() {
	e.counters.Reset()
	e.limits.ResetRefused()
}
