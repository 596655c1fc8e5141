// Package backfill pages the source APIs into ClickHouse: the `syncd backfill`
// and `syncd verify` runs, and the per-customer refresh worker of `syncd serve`.
package backfill

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/syncd/syncd/internal/metrics"

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
	APIKey     string
	URL        string  // base URL; "" means the provider's public API
	RateLimit  float64 // requests per second for the whole process; 0 means unlimited
	Retry      Retry
	HTTPClient *http.Client // nil: a client with pooled connections and a 60s timeout
	Metrics    *metrics.Metrics
	Logger     *zap.Logger
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

// limiter is the process-wide token bucket for RateLimit.
// share sets l to a 1/n share of limit requests per second (limit 0:
// unlimited): n processes spending the same budget at once.
func share(l *rate.Limiter, limit float64, n int) {
	if limit <= 0 || n < 1 {
		return
	}
	l.SetLimit(rate.Limit(limit / float64(n)))
}

func (o *SourceOptions) limiter() *rate.Limiter {
	if o.RateLimit > 0 {
		return rate.NewLimiter(rate.Limit(o.RateLimit), 1)
	}
	return rate.NewLimiter(rate.Inf, 1)
}
