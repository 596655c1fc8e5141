// Package orbapi lists Orb customers and their balance transactions over
// plain net/http, keeping each object's raw JSON for the normaliser.
package orbapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/syncd/syncd/internal/ratelimit"
)

// DefaultBaseURL is Orb's production API.
const DefaultBaseURL = "https://api.withorb.com"

// MaxLimit is the largest page Orb serves.
const MaxLimit = 100

// maxBody bounds what is read of a response: a page of 100 objects is far smaller.
const maxBody = 32 << 20

// Client calls the Orb API. It never retries: 429s and 5xx come back as
// *APIError, for the caller's shared backoff and rate limiter to handle.
// The zero value talks to DefaultBaseURL with http.DefaultClient.
type Client struct {
	BaseURL string // DefaultBaseURL when empty
	APIKey  string
	HTTP    *http.Client // http.DefaultClient when nil
	// Do, when set, sends every request instead of HTTP.Do: the hook for rate
	// limiting and metrics. The request carries the Authorization header.
	Do func(*http.Request) (*http.Response, error)
}

// Page is one page of a list endpoint. Data holds each element's JSON
// exactly as received.
type Page struct {
	Data       []json.RawMessage
	HasMore    bool
	NextCursor string
}

// Customer holds the fields of an Orb customer that syncd reads itself.
type Customer struct {
	ID                 string            `json:"id"`
	ExternalCustomerID *string           `json:"external_customer_id"`
	Name               string            `json:"name"`
	Email              string            `json:"email"`
	Currency           string            `json:"currency"`
	Balance            string            `json:"balance"` // a decimal string in Currency
	CreatedAt          time.Time         `json:"created_at"`
	Metadata           map[string]string `json:"metadata"`
	// Deleted is true, and the other fields empty, while Orb deletes the
	// customer; afterwards the customer answers 404.
	Deleted bool `json:"deleted"`
}

// APIError is Orb's error response:
// {"type":"https://docs.withorb.com/reference/error-responses#…","status":429,"title":"…","detail":"…"}.
type APIError struct {
	Status     int
	Type       string
	Title      string
	Detail     string
	RetryAfter time.Duration // from the Retry-After header; 0 when absent
}

func (e *APIError) Error() string {
	msg := fmt.Sprintf("orb api: %d %s", e.Status, e.Title)
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

// Temporary reports whether the request may succeed if retried later.
func (e *APIError) Temporary() bool {
	return e.Status == http.StatusTooManyRequests || e.Status >= 500
}

// ListCustomers returns one page of customers, newest first. An empty cursor
// starts at the beginning; limit is clamped to 1–MaxLimit.
func (c *Client) ListCustomers(ctx context.Context, cursor string, limit int) (Page, error) {
	page, err := c.list(ctx, "/v1/customers", cursor, limit)
	if err != nil {
		return Page{}, fmt.Errorf("list orb customers: %w", err)
	}
	return page, nil
}

// ListBalanceTransactions returns one page of a customer's balance
// transactions, newest first.
func (c *Client) ListBalanceTransactions(ctx context.Context, customerID, cursor string, limit int) (Page, error) {
	if customerID == "" {
		return Page{}, errors.New("list orb balance transactions: empty customer id")
	}
	page, err := c.list(ctx, "/v1/customers/"+url.PathEscape(customerID)+"/balance_transactions", cursor, limit)
	if err != nil {
		return Page{}, fmt.Errorf("list orb balance transactions of customer %s: %w", customerID, err)
	}
	return page, nil
}

// GetCustomer returns a customer, decoded and as raw JSON.
func (c *Client) GetCustomer(ctx context.Context, id string) (Customer, json.RawMessage, error) {
	if id == "" {
		return Customer{}, nil, errors.New("get orb customer: empty id")
	}
	body, err := c.get(ctx, "/v1/customers/"+url.PathEscape(id), nil)
	if err != nil {
		return Customer{}, nil, fmt.Errorf("get orb customer %s: %w", id, err)
	}
	var cust Customer
	if err := json.Unmarshal(body, &cust); err != nil {
		return Customer{}, nil, fmt.Errorf("get orb customer %s: decode: %w", id, err)
	}
	if cust.ID == "" {
		return Customer{}, nil, fmt.Errorf("get orb customer %s: response has no id", id)
	}
	return cust, json.RawMessage(body), nil
}

func (c *Client) list(ctx context.Context, path, cursor string, limit int) (Page, error) {
	q := url.Values{"limit": {strconv.Itoa(min(max(limit, 1), MaxLimit))}}
	if cursor != "" {
		q.Set("cursor", cursor)
	}
	body, err := c.get(ctx, path, q)
	if err != nil {
		return Page{}, err
	}
	return decodePage(body)
}

func (c *Client) get(ctx context.Context, path string, q url.Values) ([]byte, error) {
	base := c.BaseURL
	if base == "" {
		base = DefaultBaseURL
	}
	u := strings.TrimRight(base, "/") + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.APIKey)
	req.Header.Set("Accept", "application/json")
	resp, err := c.do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return nil, fmt.Errorf("read response: %w", err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, newAPIError(resp, body, time.Now())
	}
	if len(body) > maxBody {
		return nil, fmt.Errorf("response larger than %d bytes", maxBody)
	}
	return body, nil
}

func (c *Client) do(req *http.Request) (*http.Response, error) {
	if c.Do != nil {
		return c.Do(req)
	}
	if c.HTTP != nil {
		return c.HTTP.Do(req)
	}
	return http.DefaultClient.Do(req)
}

// newAPIError reads Orb's error JSON when there is one; a proxy's HTML page
// still yields the status and its text.
func newAPIError(resp *http.Response, body []byte, now time.Time) *APIError {
	e := &APIError{Status: resp.StatusCode, RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), now)}
	var wire struct {
		Type   string `json:"type"`
		Title  string `json:"title"`
		Detail string `json:"detail"`
	}
	if json.Unmarshal(body, &wire) == nil {
		e.Type, e.Title, e.Detail = wire.Type, wire.Title, wire.Detail
	}
	if e.Title == "" {
		e.Title = http.StatusText(resp.StatusCode)
	}
	return e
}

// parseRetryAfter reads delay-seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		if secs <= 0 || secs > 24*3600 {
			return 0
		}
		return time.Duration(secs * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// decodePage parses {"data":[…],"pagination_metadata":{"has_more":…,"next_cursor":…}}.
// A page that claims more without a cursor would make a caller loop for
// ever, so it is an error, as is an element that is not an object.
func decodePage(body []byte) (Page, error) {
	var wire struct {
		Data       *[]json.RawMessage `json:"data"`
		Pagination *struct {
			HasMore    bool    `json:"has_more"`
			NextCursor *string `json:"next_cursor"`
		} `json:"pagination_metadata"`
	}
	if err := json.Unmarshal(body, &wire); err != nil {
		return Page{}, fmt.Errorf("decode page: %w", err)
	}
	if wire.Data == nil {
		return Page{}, errors.New("decode page: no data array")
	}
	if wire.Pagination == nil {
		return Page{}, errors.New("decode page: no pagination_metadata")
	}
	p := Page{Data: *wire.Data, HasMore: wire.Pagination.HasMore}
	if wire.Pagination.NextCursor != nil {
		p.NextCursor = *wire.Pagination.NextCursor
	}
	if p.HasMore && p.NextCursor == "" {
		return Page{}, errors.New("decode page: has_more without next_cursor")
	}
	for i, raw := range p.Data {
		if trimmed := bytes.TrimSpace(raw); len(trimmed) == 0 || trimmed[0] != '{' {
			return Page{}, fmt.Errorf("decode page: element %d is not an object", i)
		}
	}
	return p, nil
}

// Orb's documented limit on GET requests per second: 100 in live mode, 50
// in test mode. An Orb key does not say its mode, so syncd's default is
// test mode's, which a live account may raise with --rate-limit. Orb
// documents no limit per endpoint nor on requests in flight; syncd caps the
// latter as it does for Stripe.
const (
	LiveRate           = 100
	TestRate           = 50
	DefaultConcurrency = 20
)

// DefaultLimits are syncd's limits for an Orb key.
func DefaultLimits() ratelimit.Limits {
	return ratelimit.Limits{Global: TestRate, Concurrency: DefaultConcurrency}
}
