// Package backfill pages the source APIs into ClickHouse: the `syncd backfill`
// and `syncd verify` runs, and the per-customer refresh worker of `syncd serve`.
package backfill

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/syncd/syncd/internal/metrics"
	"github.com/syncd/syncd/internal/ratelimit"

	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/internal/sink"
)

// TriggerTypes are the Stripe event types that announce a change to a
// customer's credit balance. Stripe has no event whose object is a balance
// transaction, so each of these marks the customer it names dirty; `syncd
// backfill --since` asks /v1/events for exactly these.
var TriggerTypes = []string{
	"customer.created", "customer.updated", "customer.deleted",
	"invoice.finalized", "invoice.paid", "invoice.voided", "invoice.marked_uncollectible", "invoice.updated",
	"credit_note.created", "credit_note.updated", "credit_note.voided",
	"checkout.session.completed",
}

// Page is one page of a list endpoint: the items' raw JSON in the API's
// order, whether more follow, and when the response arrived.
type Page struct {
	// Items are the page's own: nothing writes to them once the page is
	// handed over, so rows may refer to them (row.Meta.RawStable).
	Items      []json.RawMessage
	HasMore    bool
	ObservedAt time.Time
}

// Lister is what backfill, verify and refresh need from one provider's API.
// It is provider-neutral: Stripe implements it here, Orb can too.
type Lister interface {
	// Provider is the provider's label value ("stripe", "orb").
	Provider() string
	// CustomerPage returns the ids of one page of account's customers after
	// cursor ("" for the first page) and the cursor of the next page ("" when
	// this is the last).
	CustomerPage(ctx context.Context, account, cursor string) (ids []string, next string, err error)
	// Transactions walks customer's transactions newer than sinceID (all of
	// them when sinceID is ""), calling fn with each page (one call at a time,
	// not necessarily in the API's order nor from one goroutine), and returns
	// the id of the newest transaction it saw (sinceID when there was none
	// newer), once every call of fn has returned.
	// ErrCursorGone means sinceID is unknown to the API: read everything.
	Transactions(ctx context.Context, account, customer, sinceID string, fn func(Page) error) (newest string, err error)
	// Table is the mirror table of the provider's transactions, and Row
	// normalises one transaction into its values.
	Table() sink.Table
	Row(raw []byte, m row.Meta) ([]any, error)
}

// itemID reads the "id" of a raw object.
func itemID(raw json.RawMessage) (string, error) {
	var v struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", err
	}
	return v.ID, nil
}

// SourceOptions configure a StripeSource or an OrbSource.
type SourceOptions struct {
	APIKey string
	URL    string // base URL; "" means the provider's public API
	// The limits of one budget (internal/ratelimit), split between the
	// fleet's processes (Share): RateLimit is requests per second in all,
	// EndpointRateLimit to each endpoint, MaxConcurrent in flight; 0 means
	// no limit of that kind. Scope says whether Connect accounts share the
	// platform's budget (the default) or have their own.
	RateLimit         float64
	EndpointRateLimit float64
	MaxConcurrent     int
	Scope             ratelimit.Scope
	Retry             Retry
	HTTPClient        *http.Client // nil: a client with pooled connections and a 60s timeout
	Metrics           *metrics.Metrics
	Logger            *zap.Logger
}

// StripeOptions and OrbOptions are the SourceOptions of each source.
type (
	StripeOptions = SourceOptions
	OrbOptions    = SourceOptions
)

// defaults fills what the caller left zero.
func (o *SourceOptions) defaults() {
	o.Retry.defaults()
	if o.Metrics == nil {
		o.Metrics = metrics.New()
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.HTTPClient == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConns = 512
		t.MaxIdleConnsPerHost = 256
		o.HTTPClient = &http.Client{Timeout: 60 * time.Second, Transport: t}
	}
}

// limited is the rate limiting both sources share: every request waits for
// a permit of the limiter and reports its answer back, and the metrics
// follow.
type limited struct {
	lim      *ratelimit.Limiter
	provider string
	m        *metrics.Metrics
	// bulk is the endpoint that bounds a customer's read (its balance
	// transactions): what sizes the work in flight.
	bulk string
}

func newLimited(o *SourceOptions, provider, bulk string) limited {
	l := limited{provider: provider, m: o.Metrics, bulk: bulk, lim: ratelimit.New(ratelimit.Options{
		Limits: ratelimit.Limits{Global: o.RateLimit, Endpoint: o.EndpointRateLimit, Concurrency: o.MaxConcurrent},
		Scope:  o.Scope,
	})}
	l.gauges("", bulk)
	return l
}

// Share spends a 1/n share of each configured limit: n processes sharing
// the account's budget equally.
func (l *limited) Share(n int) {
	if n >= 1 {
		l.SetShare(1 / float64(n))
	}
}

// SetShare spends the fraction f of each configured limit: this process's
// share of the account's budget (internal/fleet, Member.Share).
func (l *limited) SetShare(f float64) {
	l.lim.SetShare(f)
	l.gauges("", l.bulk)
}

// RateLimit is the configured requests per second a customer's read may
// use: the lower of the global and the per-endpoint limit (0: unlimited).
func (l *limited) RateLimit() float64 {
	c := l.lim.Limits()
	return lowest(c.Global, c.Endpoint)
}

// CurrentLimit is RateLimit as this process applies it now (its share,
// lowered after 429s; +Inf when unlimited), for the platform's budget.
func (l *limited) CurrentLimit() float64 {
	c := l.lim.Current("", l.bulk)
	if r := lowest(c.Global, c.Endpoint); r > 0 {
		return r
	}
	return math.Inf(1)
}

// lowest is the lower of two limits, 0 meaning none.
func lowest(a, b float64) float64 {
	if a <= 0 || (b > 0 && b < a) {
		return b
	}
	return a
}

// wait blocks until a request of account to endpoint may be sent, at the
// priority ctx carries (refreshes before backfill and verify).
func (l *limited) wait(ctx context.Context, account, endpoint string) (*ratelimit.Permit, error) {
	return l.lim.Wait(ctx, account, endpoint, ratelimit.PriorityOf(ctx))
}

// done reports a permit's answer: a 429 is counted by reason (label,
// which may name no limit) and lowers the limit reason names.
func (l *limited) done(pm *ratelimit.Permit, account, endpoint string, status int, reason, label string) {
	pm.Done(reason)
	if status == http.StatusTooManyRequests {
		if label == "" {
			label = "unknown"
		}
		l.m.SourceThrottled.WithLabelValues(l.provider, label).Inc()
	}
	l.gauges(account, endpoint)
}

// gauges publishes the limits applied now to account's budget.
func (l *limited) gauges(account, endpoint string) {
	c := l.lim.Current(account, endpoint)
	l.m.SourceLimit.WithLabelValues(l.provider, "global").Set(c.Global)
	l.m.SourceLimit.WithLabelValues(l.provider, "endpoint").Set(c.Endpoint)
	l.m.SourceLimit.WithLabelValues(l.provider, "concurrency").Set(float64(c.Concurrency))
}
