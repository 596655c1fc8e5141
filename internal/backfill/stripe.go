package backfill

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	stripe "github.com/stripe/stripe-go/v82"
	"go.uber.org/zap"

	"github.com/syncd/syncd/internal/metrics"
	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/internal/sink"
	"github.com/syncd/syncd/internal/stripeapi"
)

// Retry is syncd's own retry policy for source requests: exponential
// backoff with full jitter on 429, 5xx and network errors. A request that
// has failed Attempts times, or for longer than MaxElapsed, fails.
type Retry struct {
	Initial    time.Duration // first delay [500ms]
	Max        time.Duration // longest delay [20s]
	Attempts   int           // attempts in all [8]
	MaxElapsed time.Duration // give up after this long [2m]
}

func (r *Retry) defaults() {
	if r.Initial <= 0 {
		r.Initial = 500 * time.Millisecond
	}
	if r.Max <= 0 {
		r.Max = 20 * time.Second
	}
	if r.Attempts <= 0 {
		r.Attempts = 8
	}
	if r.MaxElapsed <= 0 {
		r.MaxElapsed = 2 * time.Minute
	}
}

// delay is the wait before attempt n+1 (n ≥ 1): full jitter over an
// exponentially growing ceiling, so that many workers throttled at once do
// not come back in step.
func (r *Retry) delay(n int) time.Duration {
	ceil := r.Initial << min(n-1, 20)
	if ceil > r.Max || ceil <= 0 {
		ceil = r.Max
	}
	return ceil/2 + rand.N(ceil/2+1)
}

// StripeSource reads the Stripe API through stripe-go's backend, keeping
// every object's raw JSON. One StripeSource is shared by every worker of a
// process: its limiter holds the process to its share of Stripe's limits.
type StripeSource struct {
	limited
	backend stripe.RawRequestBackend
	key     string
	retry   Retry
	m       *metrics.Metrics
	log     *zap.Logger

	requests atomic.Int64
	retries  atomic.Int64
	latency  atomic.Int64  // moving average of a successful request, in ns
	timeout  time.Duration // of one attempt; 0: none

	// created is when each customer listed by CustomerPage was created, by
	// (account, customer), until Transactions reads it: slices start there.
	mu      sync.Mutex
	created map[[2]string]int64
}

// NewStripeSource returns a source for o.URL with o.APIKey.
func NewStripeSource(o StripeOptions) *StripeSource {
	o.defaults()
	if o.URL == "" {
		o.URL = "https://api.stripe.com"
	}
	hc := o.HTTPClient
	// The transport wrapper records each attempt's status, which stripe-go
	// does not expose for error bodies it cannot parse.
	base := hc.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	wrapped := *hc
	wrapped.Transport = statusTransport{base}
	// The client's timeout becomes each attempt's context deadline:
	// stripe-go reads a body to its end but never closes it, and net/http
	// stops a Client.Timeout's timer, and its goroutine, only on Close, so
	// every request would otherwise hold both for the whole timeout (a
	// backfill at 2,000 requests/s held 20,000 goroutines, hundreds of MiB).
	wrapped.Timeout = 0
	backend := stripe.GetBackendWithConfig(stripe.APIBackend, &stripe.BackendConfig{
		HTTPClient:        &wrapped,
		URL:               stripe.String(strings.TrimRight(o.URL, "/")),
		MaxNetworkRetries: stripe.Int64(0), // retried once, here, and counted
		LeveledLogger:     &stripe.LeveledLogger{Level: stripe.LevelNull},
		EnableTelemetry:   stripe.Bool(false),
	}).(stripe.RawRequestBackend)
	s := &StripeSource{backend: backend, key: o.APIKey, retry: o.Retry, m: o.Metrics, log: o.Logger,
		created: map[[2]string]int64{}, limited: newLimited(&o, "stripe", stripeTxnEndpoint), timeout: hc.Timeout}
	return s
}

// Provider is "stripe".
func (s *StripeSource) Provider() string { return "stripe" }

// Latency is the moving average of a successful request's duration, from
// sending it to its answer (the wait for the limiter not included); 0
// until one has succeeded.
func (s *StripeSource) Latency() time.Duration { return time.Duration(s.latency.Load()) }

// stripeTxnEndpoint is the endpoint of every customer's balance
// transactions, as Stripe counts endpoints.
const stripeTxnEndpoint = "GET /v1/customers/{id}/balance_transactions"

// Stats reports the HTTP requests sent (retries included) and the retries.
func (s *StripeSource) Stats() (requests, retries int64) {
	return s.requests.Load(), s.retries.Load()
}

// RequestError is a source request that failed for good: a permanent error
// (4xx other than 429), or a transient one that outlasted the retry policy.
type RequestError struct {
	Path     string // method and path, never the key
	Status   int    // last HTTP status; 0 when there was no response
	Code     string // Stripe's error code, e.g. resource_missing
	Param    string // the parameter Stripe blames, if any
	Attempts int
	Elapsed  time.Duration
	Err      error
}

func (e *RequestError) Error() string {
	what := "no response"
	if e.Status != 0 {
		what = "HTTP " + strconv.Itoa(e.Status)
	}
	if e.Attempts > 1 {
		return fmt.Sprintf("GET %s: %s after %d attempts over %s: %v", e.Path, what, e.Attempts, e.Elapsed.Round(time.Millisecond), e.Err)
	}
	return fmt.Sprintf("GET %s: %s: %v", e.Path, what, e.Err)
}

func (e *RequestError) Unwrap() error { return e.Err }

// NotFound reports whether err is the API saying the object does not exist.
func NotFound(err error) bool {
	var re *RequestError
	return errors.As(err, &re) && re.Status == http.StatusNotFound
}

// ErrCursorGone is returned by Transactions when the cursor id is unknown.
var ErrCursorGone = errors.New("cursor object no longer exists")

type attemptKey struct{}

// attempt is filled by statusTransport for the request that carries it.
type attempt struct {
	status     int
	retryAfter time.Duration
	limited    string // Stripe-Rate-Limited-Reason
	netErr     error
}

// statusTransport records each attempt's status. It also turns a transport
// error into a synthetic error response: stripe-go v82.5.1's RawRequest
// dereferences the nil response of a failed round trip and panics.
type statusTransport struct{ base http.RoundTripper }

func (t statusTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(r)
	a, ok := r.Context().Value(attemptKey{}).(*attempt)
	if !ok {
		return resp, err
	}
	if err != nil {
		a.netErr = err
		msg, _ := json.Marshal(err.Error())
		return &http.Response{
			StatusCode: http.StatusServiceUnavailable, Status: "503 network error",
			Header:  http.Header{"Content-Type": {"application/json"}},
			Body:    io.NopCloser(strings.NewReader(`{"error":{"type":"api_error","message":` + string(msg) + `}}`)),
			Request: r, ProtoMajor: 1, ProtoMinor: 1,
		}, nil
	}
	a.status = resp.StatusCode
	a.limited = resp.Header.Get(stripeapi.ReasonHeader)
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		a.retryAfter = time.Duration(s) * time.Second
	}
	return resp, nil
}

// run calls attempt until it succeeds (nil), fails for good, or the
// policy gives up. A failed attempt is a *RequestError (its Path, Status,
// Code, Param and Err set; run fills in Attempts and Elapsed) with whether
// it is worth retrying and the server's Retry-After; any other error ends
// the call as it is. Each retry is counted in retries.
func (r *Retry) run(ctx context.Context, log *zap.Logger, retries *atomic.Int64,
	attempt func() (transient bool, retryAfter time.Duration, err error)) error {
	start := time.Now()
	for n := 1; ; n++ {
		transient, retryAfter, err := attempt()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var re *RequestError
		if !errors.As(err, &re) {
			return err
		}
		re.Attempts, re.Elapsed = n, time.Since(start)
		if !transient || n >= r.Attempts || re.Elapsed >= r.MaxElapsed {
			return re
		}
		wait := max(r.delay(n), retryAfter)
		retries.Add(1)
		log.Debug("source request failed; retrying", zap.String("path", re.Path), zap.Int("status", re.Status),
			zap.Int("attempt", n), zap.Duration("retry_in", wait), zap.Error(re.Err))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// get sends GET path (query included) as account ("" for the key's own),
// retrying transient failures, and returns the body and when it arrived.
func (s *StripeSource) get(ctx context.Context, endpoint, account, path string) ([]byte, time.Time, error) {
	var body []byte
	var arrived time.Time
	op := stripeapi.Endpoint(http.MethodGet, path)
	err := s.retry.run(ctx, s.log, &s.retries, func() (bool, time.Duration, error) {
		pm, err := s.wait(ctx, account, op)
		if err != nil {
			return false, 0, err
		}
		a := &attempt{}
		params := &stripe.RawParams{}
		actx, cancel := ctx, context.CancelFunc(func() {})
		if s.timeout > 0 {
			actx, cancel = context.WithTimeout(ctx, s.timeout)
		}
		defer cancel() // RawRequest has read the whole body
		params.Context = context.WithValue(actx, attemptKey{}, a)
		if account != "" {
			params.SetStripeAccount(account)
		}
		t0 := time.Now()
		resp, err := s.backend.RawRequest(http.MethodGet, path, s.key, "", params)
		arrived = time.Now()
		s.requests.Add(1)
		s.m.SourceSeconds.WithLabelValues("stripe").Observe(arrived.Sub(t0).Seconds())
		status := a.status
		if a.netErr != nil {
			status, err = 0, a.netErr
		} else if err == nil && resp != nil {
			status = resp.StatusCode
		}
		s.m.SourceRequests.WithLabelValues("stripe", endpoint, metrics.Code(status)).Inc()
		if err == nil && status < 300 {
			s.done(pm, account, op, status, "", "")
			body = resp.RawJSON
			s.observe(arrived.Sub(t0))
			return false, 0, nil
		}
		if err == nil {
			err = fmt.Errorf("unexpected status %d", status)
		}
		re := &RequestError{Path: path, Status: status, Err: s.redact(err)}
		var se *stripe.Error
		if errors.As(err, &se) {
			re.Code, re.Param = string(se.Code), se.Param
			re.Err = errors.New(s.redact(errors.New(se.Msg)).Error())
		}
		// A 429 names the limit it hit, which is lowered; lock_timeout
		// is an object lock, only retried.
		reason := stripeapi.Throttle(a.limited, re.Code)
		label := reason
		if re.Code == "lock_timeout" {
			label = re.Code
		}
		s.done(pm, account, op, status, reason, label)
		// No response at all (connection refused or reset, timeout) is
		// transient too.
		return status == 0 || status == http.StatusTooManyRequests || status >= 500, a.retryAfter, re
	})
	if err != nil {
		return nil, time.Time{}, err
	}
	return body, arrived, nil
}

// observe folds one request's duration into the moving average that
// sizes slices.
func (s *StripeSource) observe(d time.Duration) {
	old := s.latency.Load()
	if old == 0 {
		s.latency.Store(int64(d))
		return
	}
	s.latency.Store(old + (int64(d)-old)/8)
}

func (s *StripeSource) redact(err error) error {
	if s.key != "" && len(s.key) >= 8 && strings.Contains(err.Error(), s.key) {
		return errors.New(strings.ReplaceAll(err.Error(), s.key, "[redacted]"))
	}
	return err
}

func (s *StripeSource) list(ctx context.Context, endpoint, account, path string, q url.Values) (Page, error) {
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	body, at, err := s.get(ctx, endpoint, account, path)
	if err != nil {
		return Page{}, err
	}
	items, more, err := splitList(body)
	if err != nil {
		return Page{}, fmt.Errorf("GET %s: decode list: %w", path, err)
	}
	return Page{Items: items, HasMore: more, ObservedAt: at}, nil
}

// ListCustomers returns one page of account's customers, newest first,
// after the customer startingAfter ("" for the first page).
func (s *StripeSource) ListCustomers(ctx context.Context, account, startingAfter string) (Page, error) {
	q := url.Values{"limit": {"100"}}
	if startingAfter != "" {
		q.Set("starting_after", startingAfter)
	}
	return s.list(ctx, "customers", account, "/v1/customers", q)
}

// ListTransactions returns one page of a customer's balance transactions,
// newest first. With endingBefore set it is the page immediately newer
// than that transaction; with startingAfter, the page older than it.
func (s *StripeSource) ListTransactions(ctx context.Context, account, customer, startingAfter, endingBefore string) (Page, error) {
	q := url.Values{"limit": {"100"}}
	if startingAfter != "" {
		q.Set("starting_after", startingAfter)
	}
	if endingBefore != "" {
		q.Set("ending_before", endingBefore)
	}
	return s.txnPage(ctx, account, customer, q)
}

func (s *StripeSource) txnPage(ctx context.Context, account, customer string, q url.Values) (Page, error) {
	return s.list(ctx, "balance_transactions", account, "/v1/customers/"+url.PathEscape(customer)+"/balance_transactions", q)
}

// GetCustomer returns the customer object's raw JSON.
func (s *StripeSource) GetCustomer(ctx context.Context, account, customer string) (json.RawMessage, error) {
	body, _, err := s.get(ctx, "customer", account, "/v1/customers/"+url.PathEscape(customer))
	return body, err
}

// ListEvents returns one page of account's events of the given types
// created at or after since, newest first.
func (s *StripeSource) ListEvents(ctx context.Context, account string, since time.Time, types []string, startingAfter string) (Page, error) {
	q := url.Values{"limit": {"100"}, "created[gte]": {strconv.FormatInt(since.Unix(), 10)}}
	for _, t := range types {
		q.Add("types[]", t)
	}
	if startingAfter != "" {
		q.Set("starting_after", startingAfter)
	}
	return s.list(ctx, "events", account, "/v1/events", q)
}

// ListAccounts returns one page of the platform's connected accounts.
func (s *StripeSource) ListAccounts(ctx context.Context, startingAfter string) (Page, error) {
	q := url.Values{"limit": {"100"}}
	if startingAfter != "" {
		q.Set("starting_after", startingAfter)
	}
	return s.list(ctx, "accounts", "", "/v1/accounts", q)
}

// Accounts lists every connected account id.
func (s *StripeSource) Accounts(ctx context.Context) ([]string, error) {
	var out []string
	cursor := ""
	for {
		p, err := s.ListAccounts(ctx, cursor)
		if err != nil {
			return nil, fmt.Errorf("list connected accounts: %w", err)
		}
		for _, it := range p.Items {
			id, err := itemID(it)
			if err != nil || id == "" {
				return nil, fmt.Errorf("list connected accounts: an item has no id")
			}
			out = append(out, id)
			cursor = id
		}
		if !p.HasMore || len(p.Items) == 0 {
			return out, nil
		}
	}
}

// CustomerPage implements Lister.
func (s *StripeSource) CustomerPage(ctx context.Context, account, cursor string) ([]string, string, error) {
	ids, _, next, err := s.CustomerBalancePage(ctx, account, cursor)
	return ids, next, err
}

// Transactions implements Lister. Without sinceID it walks from the newest
// page back (starting_after the last id of each page); when the first page
// has more behind it and there is a rate limit, the rest is read in time
// slices at once (slices, readSlices), from when the customer was created
// (known from CustomerPage, or else read with one request for the
// customer), and fn may be called from several goroutines, one page at a
// time. With sinceID it walks forward in time: ending_before=sinceID
// returns the page just newer than it, newest first, so the first id of
// each page is the next cursor.
func (s *StripeSource) Transactions(ctx context.Context, account, customer, sinceID string, fn func(Page) error) (string, error) {
	s.mu.Lock()
	created, known := s.created[[2]string{account, customer}]
	delete(s.created, [2]string{account, customer})
	s.mu.Unlock()

	newest := sinceID
	after, before := "", sinceID
	for first := true; ; first = false {
		p, err := s.ListTransactions(ctx, account, customer, after, before)
		if err != nil {
			var re *RequestError
			if sinceID != "" && errors.As(err, &re) && re.Param == "ending_before" &&
				(re.Status == http.StatusBadRequest || re.Status == http.StatusNotFound) {
				return "", fmt.Errorf("%w: %v", ErrCursorGone, err)
			}
			return "", err
		}
		if len(p.Items) == 0 {
			return newest, nil
		}
		if err := fn(p); err != nil {
			return "", err
		}
		head, err := keyOf(p.Items[0])
		if err != nil || head.ID == "" {
			return "", fmt.Errorf("list balance transactions of %s: an item has no id", customer)
		}
		tail, err := keyOf(p.Items[len(p.Items)-1])
		if err != nil || tail.ID == "" {
			return "", fmt.Errorf("list balance transactions of %s: an item has no id", customer)
		}
		if sinceID != "" {
			newest, before = head.ID, head.ID
		} else {
			if first {
				newest = head.ID
				if p.HasMore && !known && s.RateLimit() > 0 {
					// A refresh of a customer with no cursor: one request
					// to another endpoint for when it was created lets
					// the rest be read in slices at once, rather than a
					// page at a time behind every other refresh.
					created, known = s.customerCreated(ctx, account, customer)
				}
				if p.HasMore && known {
					if bounds := s.slices(created, head.Created, tail.Created, len(p.Items)); len(bounds) > 0 {
						if err := s.readSlices(ctx, account, customer, bounds, tail.ID, fn); err != nil {
							return "", err
						}
						return newest, nil
					}
				}
			}
			after = tail.ID
		}
		if !p.HasMore {
			return newest, nil
		}
	}
}

// customerCreated reads when customer was created; ok is false when that is
// unknown (an error, a deleted customer), and the caller reads on a page at
// a time.
func (s *StripeSource) customerCreated(ctx context.Context, account, customer string) (created int64, ok bool) {
	raw, err := s.GetCustomer(ctx, account, customer)
	if err != nil {
		return 0, false
	}
	c, err := keyOf(raw)
	return c.Created, err == nil && c.Created > 0
}

// listed is what paging needs of a listed object.
type listed struct {
	ID      string `json:"id"`
	Created int64  `json:"created"`
}

func keyOf(raw json.RawMessage) (listed, error) {
	var k listed
	err := json.Unmarshal(raw, &k)
	return k, err
}

// maxSlices bounds the slices of one customer.
const maxSlices = 32

// slices plans the reading of a customer's history older than its first
// page, which held n transactions created from oldest to newest; the
// customer was created at created. It returns the inner boundaries
// b1 < … < b(k−1) of k slices of [created, oldest] (none: read on
// sequentially). k is what keeps the rate limit busy, rate × latency
// requests in flight, but at most a quarter of the pages the rest is
// estimated to hold at the first page's density: every slice ends in a
// part-filled page, and each of those is a request more than a sequential
// read makes. Without a rate limit nothing waits for tokens, and slices
// only cost: each insert then spans more monthly partitions (in
// BenchmarkRowsIntoClickHouse the server's CPU per row doubled).
func (s *StripeSource) slices(created, newest, oldest int64, n int) []int64 {
	limit := s.RateLimit()
	if limit <= 0 || created <= 0 || oldest <= created || n == 0 {
		return nil
	}
	k := min(maxSlices, int(math.Ceil(limit*time.Duration(s.latency.Load()).Seconds())))
	// Transactions per second on the first page, times the rest's span.
	rest := float64(n) / float64(newest-oldest+1) * float64(oldest-created)
	k = min(k, int(math.Ceil(rest/100/4)))
	k = min(k, int(oldest-created)) // whole seconds: at most one slice per second
	if k < 2 {
		return nil
	}
	bounds := make([]int64, 0, k-1)
	span := oldest - created // ≥ k, so the bounds are distinct and inside
	for i := 1; i < k; i++ {
		bounds = append(bounds, created+int64(i)*span/int64(k))
	}
	return bounds
}

// readSlices reads, k = len(bounds)+1 at once, the slices of a customer's
// history older than the transaction after: created < b1, b1 ≤ created <
// b2, …, and b(k−1) ≤ created after `after`. The slices are half-open in
// whole seconds, so each transaction is in exactly one of them however many
// share its second; the last pages on from after, so it holds the
// transactions of after's second not yet read. The first error stops the
// other slices and is returned.
func (s *StripeSource) readSlices(ctx context.Context, account, customer string, bounds []int64, after string, fn func(Page) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var mu sync.Mutex
	one := func(p Page) error {
		mu.Lock()
		defer mu.Unlock()
		return fn(p)
	}
	var wg sync.WaitGroup
	for i := 0; i <= len(bounds); i++ {
		q := url.Values{"limit": {"100"}}
		if i > 0 {
			q.Set("created[gte]", strconv.FormatInt(bounds[i-1], 10))
		}
		cursor := after
		if i < len(bounds) {
			q.Set("created[lt]", strconv.FormatInt(bounds[i], 10))
			cursor = ""
		}
		wg.Go(func() {
			if err := s.readSlice(ctx, account, customer, q, cursor, one); err != nil {
				cancel(err)
			}
		})
	}
	wg.Wait()
	return context.Cause(ctx)
}

// readSlice pages through one slice, newest first, from after ("" for its
// newest page).
func (s *StripeSource) readSlice(ctx context.Context, account, customer string, q url.Values, after string, fn func(Page) error) error {
	for {
		if after != "" {
			q.Set("starting_after", after)
		}
		p, err := s.txnPage(ctx, account, customer, q)
		if err != nil {
			return err
		}
		if len(p.Items) == 0 {
			return nil
		}
		if err := fn(p); err != nil {
			return err
		}
		if after, err = itemID(p.Items[len(p.Items)-1]); err != nil || after == "" {
			return fmt.Errorf("list balance transactions of %s: an item has no id", customer)
		}
		if !p.HasMore {
			return nil
		}
	}
}

func accountName(account string) string {
	if account == "" {
		return "the platform account"
	}
	return "account " + account
}

// Table implements Lister.
func (s *StripeSource) Table() sink.Table { return row.StripeTxnTable }

// Row implements Lister with the one Stripe normaliser.
func (s *StripeSource) Row(raw []byte, m row.Meta) ([]any, error) {
	r, err := row.NormalizeStripe(raw, m)
	if err != nil {
		return nil, err
	}
	return r.Values(), nil
}

// ChangedCustomers returns the customers of account named by trigger
// events created at or after since, each once.
func (s *StripeSource) ChangedCustomers(ctx context.Context, account string, since time.Time) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	cursor := ""
	for {
		p, err := s.ListEvents(ctx, account, since, TriggerTypes, cursor)
		if err != nil {
			return nil, err
		}
		for _, raw := range p.Items {
			var ev struct {
				ID   string `json:"id"`
				Data struct {
					Object json.RawMessage `json:"object"`
				} `json:"data"`
			}
			if err := json.Unmarshal(raw, &ev); err != nil || ev.ID == "" {
				return nil, fmt.Errorf("list events: an item is not an event")
			}
			cursor = ev.ID
			if c := EventCustomer(ev.Data.Object); c != "" && !seen[c] {
				seen[c] = true
				out = append(out, c)
			}
		}
		if !p.HasMore || len(p.Items) == 0 {
			return out, nil
		}
	}
}

// EventCustomer returns the customer an event's data.object names: the
// object itself when it is a customer, else its customer field (an id or
// an expanded customer). "" when it names none.
func EventCustomer(object json.RawMessage) string {
	var obj struct {
		ID       string          `json:"id"`
		Object   string          `json:"object"`
		Customer json.RawMessage `json:"customer"`
	}
	if json.Unmarshal(object, &obj) != nil {
		return ""
	}
	if obj.Object == "customer" {
		return obj.ID
	}
	var id string
	if json.Unmarshal(obj.Customer, &id) == nil {
		return id
	}
	var exp struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(obj.Customer, &exp) == nil {
		return exp.ID
	}
	return ""
}
