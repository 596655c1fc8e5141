package orbemu

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Request kinds, the keys of Counters.ByKind.
const (
	KindCustomers           = "customers"            // GET /v1/customers
	KindCustomer            = "customer"             // GET /v1/customers/{id}
	KindBalanceTransactions = "balance_transactions" // GET /v1/customers/{id}/balance_transactions
	KindOther               = "other"
)

func (e *Emulator) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/customers", e.listCustomers)
	mux.HandleFunc("GET /v1/customers/{id}", e.getCustomer)
	mux.HandleFunc("GET /v1/customers/{id}/balance_transactions", e.listTxns)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, notFound("No route matches "+r.Method+" "+r.URL.Path))
	})
	return mux
}

func pathKind(path string) string {
	rest, ok := strings.CutPrefix(path, "/v1/customers")
	switch {
	case !ok:
		return KindOther
	case rest == "" || rest == "/":
		return KindCustomers
	case strings.HasSuffix(rest, "/balance_transactions"):
		return KindBalanceTransactions
	case strings.Count(rest, "/") == 1:
		return KindCustomer
	}
	return KindOther
}

// ServeHTTP counts the request, checks the key, enforces the rate and
// concurrency limits, waits the latency (the request is in flight
// meanwhile), injects faults, then serves the route.
func (e *Emulator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.counters.Request(pathKind(r.URL.Path))
	if err := e.checkKey(r); err != nil {
		writeError(w, err)
		return
	}
	// Orb's limits are the key's: one budget, the route's pattern the endpoint.
	_, endpoint := e.mux.Handler(r)
	release, reason, wait := e.limits.Admit("", endpoint)
	if reason != "" {
		e.rateLimited(w, max(wait, time.Millisecond))
		return
	}
	defer release()
	if !e.faults.Delay(r.Context()) {
		return
	}
	switch e.faults.Draw() {
	case http.StatusTooManyRequests:
		e.counters.Throttled()
		e.rateLimited(w, e.cfg.RetryAfter)
		return
	case http.StatusInternalServerError:
		e.counters.Failed()
		writeError(w, &apiError{Status: http.StatusInternalServerError, Type: errorType + "500-internal-server-error",
			Title: "Internal server error", Detail: "An unexpected error occurred."})
		return
	}
	e.mux.ServeHTTP(w, r)
}

// rateLimited answers Orb's 429, with the delay after which a retry may
// pass (a concurrency limit names none: the configured RetryAfter).
func (e *Emulator) rateLimited(w http.ResponseWriter, retryAfter time.Duration) {
	if retryAfter <= 0 {
		retryAfter = e.cfg.RetryAfter
	}
	w.Header().Set("Retry-After", strconv.FormatFloat(retryAfter.Seconds(), 'f', 3, 64))
	writeError(w, &apiError{Status: http.StatusTooManyRequests, Type: errorType + "429-too-many-requests",
		Title: "Too many requests", Detail: "Request rate limit exceeded; retry after the Retry-After delay."})
}

func (e *Emulator) checkKey(r *http.Request) *apiError {
	key, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || key == "" || (e.cfg.APIKey != "" && key != e.cfg.APIKey) {
		return &apiError{Status: http.StatusUnauthorized, Type: errorType + "401-authentication-error",
			Title: "Authentication error", Detail: "The API key in the Authorization header is missing or invalid."}
	}
	return nil
}

const errorType = "https://docs.withorb.com/reference/error-responses#"

// apiError is Orb's error body.
type apiError struct {
	Type   string `json:"type"`
	Status int    `json:"status"`
	Title  string `json:"title"`
	Detail string `json:"detail"`
}

func notFound(detail string) *apiError {
	return &apiError{Status: http.StatusNotFound, Type: errorType + "404-resource-not-found",
		Title: "Resource not found", Detail: detail}
}

func badRequest(detail string) *apiError {
	return &apiError{Status: http.StatusBadRequest, Type: errorType + "400-constraint-violation",
		Title: "Constraint violation", Detail: detail}
}

func writeError(w http.ResponseWriter, e *apiError) {
	body, _ := json.Marshal(e)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Status)
	w.Write(body)
}

// listQuery reads limit (1–100, default 20) and the opaque cursor, which
// names the last item of the previous page.
func listQuery(r *http.Request) (limit int, after string, _ *apiError) {
	q := r.URL.Query()
	limit = 20
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 100 {
			return 0, "", badRequest("limit must be an integer between 1 and 100")
		}
		limit = n
	}
	if c := q.Get("cursor"); c != "" {
		id, err := base64.RawURLEncoding.DecodeString(c)
		if err != nil || len(id) == 0 {
			return 0, "", badRequest("Invalid cursor")
		}
		after = string(id)
	}
	return limit, after, nil
}

// writePage serves items newest first from a slice kept oldest first. start is
// the index of the newest item the page may hold; since items are only
// appended, a cursor keeps its place while new items arrive.
// Items for which skip (when not nil) is true are left out.
func writePage(w http.ResponseWriter, start, limit int, raw func(int) []byte, id func(int) string, skip func(int) bool) {
	var b strings.Builder
	b.WriteString(`{"data":[`)
	n, last := 0, -1
	i := start
	for ; i >= 0 && n < limit; i-- {
		if skip != nil && skip(i) {
			continue
		}
		if n > 0 {
			b.WriteByte(',')
		}
		b.Write(raw(i))
		n, last = n+1, i
	}
	for skip != nil && i >= 0 && skip(i) {
		i--
	}
	b.WriteString(`],"pagination_metadata":{"has_more":`)
	if i >= 0 {
		fmt.Fprintf(&b, `true,"next_cursor":%q}}`, base64.RawURLEncoding.EncodeToString([]byte(id(last))))
	} else {
		b.WriteString(`false,"next_cursor":null}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write([]byte(b.String()))
}

// pageStart is the index of the newest item a page holds: the newest of
// all, or the one just older than the cursor's.
func pageStart(index map[string]int, n int, after string) (int, bool) {
	if after == "" {
		return n - 1, true
	}
	i, ok := index[after]
	return i - 1, ok
}

func (e *Emulator) listCustomers(w http.ResponseWriter, r *http.Request) {
	limit, after, aerr := listQuery(r)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	e.mu.RLock()
	defer e.mu.RUnlock()
	start, ok := pageStart(e.custIdx, len(e.customers), after)
	if !ok {
		writeError(w, badRequest("Invalid cursor"))
		return
	}
	writePage(w, start, limit,
		func(i int) []byte { return e.customers[i].Raw },
		func(i int) string { return e.customers[i].ID },
		func(i int) bool { return e.customers[i].deleted })
}

func (e *Emulator) getCustomer(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	e.mu.RLock()
	defer e.mu.RUnlock()
	w.Header().Set("Content-Type", "application/json")
	if i, ok := e.custIdx[id]; ok && e.customers[i].deleted {
		fmt.Fprintf(w, `{"id":%q,"deleted":true}`, id)
		return
	}
	c, err := e.lookup(id)
	if err != nil {
		writeError(w, notFound("Customer "+id+" not found"))
		return
	}
	w.Write(c.Raw)
}

func (e *Emulator) listTxns(w http.ResponseWriter, r *http.Request) {
	limit, after, aerr := listQuery(r)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	id := r.PathValue("id")
	e.mu.RLock()
	defer e.mu.RUnlock()
	c, err := e.lookup(id)
	if err != nil {
		writeError(w, notFound("Customer "+id+" not found"))
		return
	}
	start, ok := pageStart(c.txnIdx, len(c.txns), after)
	if !ok {
		writeError(w, badRequest("Invalid cursor"))
		return
	}
	e.counters.ListServed(id)
	writePage(w, start, limit,
		func(i int) []byte { return c.txns[i].Raw },
		func(i int) string { return c.txns[i].ID }, nil)
}

// Counters are request counts since the last ResetCounters.
type Counters struct {
	Total     int64
	ByKind    map[string]int64 // see the Kind… constants
	Throttled int64            // answered 429 by fault injection
	Failed    int64            // answered 500 by fault injection
	// Limited are the requests answered 429 for exceeding Config.Limits,
	// by the limit exceeded (ratelimit.GlobalRate, …).
	Limited map[string]int64
}

// Requests reports the requests received since the last ResetCounters.
func (e *Emulator) Requests() Counters {
	c := e.counters.Counts()
	return Counters{Total: c.Total, ByKind: c.ByKind, Throttled: c.Throttled, Failed: c.Failed, Limited: e.limits.Refused()}
}

// CustomerListCalls counts the balance-transaction list pages served (200)
// for one customer since the last ResetCounters.
func (e *Emulator) CustomerListCalls(customer string) int { return e.counters.ListCalls(customer) }

// ResetCounters zeroes every request counter.
func (e *Emulator) ResetCounters() {
	e.counters.Reset()
	e.limits.ResetRefused()
}
