package backfill

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/syncd/syncd/internal/metrics"
	"github.com/syncd/syncd/internal/orbapi"
	"github.com/syncd/syncd/internal/ratelimit"
	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/internal/sink"
)

const providerOrb = "orb"

// OrbSource reads the Orb API through orbapi, with the same limiter and
// backoff as StripeSource. It implements Lister.
//
// Orb's transactions do not name their customer or currency, so the source
// remembers every customer it lists (or fetches one it has not listed) and
// Row takes them from there. Orb's cursors are opaque, so it also remembers
// which cursor follows each page's last customer: the backfill checkpoint
// is that customer's id.
type OrbSource struct {
	limited
	client *orbapi.Client
	http   *http.Client
	retry  Retry
	m      *metrics.Metrics
	log    *zap.Logger

	requests atomic.Int64
	retries  atomic.Int64

	mu        sync.Mutex
	customers map[string]row.OrbCustomer
	after     map[string]string // last customer id of a page → Orb's cursor of the next page
}

// NewOrbSource returns a source for o.URL with o.APIKey.
func NewOrbSource(o OrbOptions) *OrbSource {
	o.defaults()
	s := &OrbSource{http: o.HTTPClient, retry: o.Retry, m: o.Metrics, log: o.Logger,
		limited:   newLimited(&o, providerOrb, "balance_transactions"),
		customers: map[string]row.OrbCustomer{}, after: map[string]string{}}
	s.client = &orbapi.Client{BaseURL: o.URL, APIKey: o.APIKey, Do: s.do}
	return s
}

// Provider is "orb".
func (s *OrbSource) Provider() string { return providerOrb }

// Stats reports the HTTP requests sent (retries included) and the retries.
func (s *OrbSource) Stats() (requests, retries int64) {
	return s.requests.Load(), s.retries.Load()
}

// do sends one attempt through the shared limiter and counts it. Orb's
// 429s name no limit and Orb documents one, the key's rate: each lowers it.
func (s *OrbSource) do(req *http.Request) (*http.Response, error) {
	endpoint := orbEndpoint(req.URL.Path)
	pm, err := s.wait(req.Context(), "", endpoint)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	resp, err := s.http.Do(req)
	s.requests.Add(1)
	s.m.SourceSeconds.WithLabelValues(providerOrb).Observe(time.Since(t0).Seconds())
	status, reason := 0, ""
	if err == nil {
		status = resp.StatusCode
	}
	if status == http.StatusTooManyRequests {
		reason = ratelimit.GlobalRate
	}
	s.done(pm, "", endpoint, status, reason, reason)
	s.m.SourceRequests.WithLabelValues(providerOrb, endpoint, metrics.Code(status)).Inc()
	return resp, err
}

// orbEndpoint is the endpoint label of an API path.
func orbEndpoint(path string) string {
	rest, _ := strings.CutPrefix(path, "/v1/customers")
	switch {
	case rest == "" || rest == "/":
		return "customers"
	case strings.HasSuffix(rest, "/balance_transactions"):
		return "balance_transactions"
	}
	return "customer"
}

// call runs one API call, retrying 429s, 5xx and lost connections with
// backoff (never shorter than Retry-After), and returns when the
// successful response arrived.
func (s *OrbSource) call(ctx context.Context, path string, fn func() error) (time.Time, error) {
	var arrived time.Time
	err := s.retry.run(ctx, s.log, &s.retries, func() (bool, time.Duration, error) {
		err := fn()
		if err == nil {
			arrived = time.Now()
			return false, 0, nil
		}
		re := &RequestError{Path: path, Err: err}
		var (
			ae *orbapi.APIError
			ne net.Error
		)
		switch {
		case errors.As(err, &ae):
			re.Status, re.Code = ae.Status, ae.Type
			return ae.Temporary(), ae.RetryAfter, re
		case errors.As(err, &ne), errors.Is(err, io.ErrUnexpectedEOF):
			return true, 0, re // no (complete) response
		}
		return false, 0, re
	})
	return arrived, err
}

// Customer returns an Orb customer as the API has it now, and remembers it
// for Row.
func (s *OrbSource) Customer(ctx context.Context, id string) (orbapi.Customer, error) {
	var c orbapi.Customer
	_, err := s.call(ctx, "/v1/customers/"+id, func() (err error) {
		c, _, err = s.client.GetCustomer(ctx, id)
		return err
	})
	if err != nil {
		return orbapi.Customer{}, err
	}
	s.mu.Lock()
	s.customers[id] = row.OrbCustomer{ID: c.ID, ExternalCustomerID: c.ExternalCustomerID, Currency: c.Currency}
	s.mu.Unlock()
	return c, nil
}

func (s *OrbSource) known(id string) (row.OrbCustomer, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.customers[id]
	return c, ok
}

// CustomerPage implements Lister. Orb has no Connect accounts: account
// must be "". cursor is the last customer id of the previous page; one
// this process has not listed (a resumed run) is found by listing from
// the start, which costs a request per 100 customers.
func (s *OrbSource) CustomerPage(ctx context.Context, account, cursor string) ([]string, string, error) {
	if account != "" {
		return nil, "", fmt.Errorf("orb has no accounts; got %q", account)
	}
	s.mu.Lock()
	orbCursor, known := s.after[cursor]
	s.mu.Unlock()
	if cursor == "" || known {
		return s.customerPage(ctx, orbCursor)
	}
	for orbCursor = ""; ; {
		ids, next, err := s.customerPage(ctx, orbCursor)
		if err != nil {
			return nil, "", err
		}
		for i, id := range ids {
			if id == cursor {
				if i < len(ids)-1 || next == "" {
					return ids[i+1:], next, nil
				}
				return s.CustomerPage(ctx, account, next)
			}
		}
		if next == "" {
			return nil, "", fmt.Errorf("resume the customer listing after %s: no such customer", cursor)
		}
		s.mu.Lock()
		orbCursor = s.after[next]
		s.mu.Unlock()
	}
}

// customerPage lists one page at Orb's cursor and remembers its customers.
func (s *OrbSource) customerPage(ctx context.Context, orbCursor string) ([]string, string, error) {
	var p orbapi.Page
	_, err := s.call(ctx, "/v1/customers", func() (err error) {
		p, err = s.client.ListCustomers(ctx, orbCursor, orbapi.MaxLimit)
		return err
	})
	if err != nil {
		return nil, "", err
	}
	ids := make([]string, 0, len(p.Data))
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, raw := range p.Data {
		// Only what rows need: the rest of a customer may take any shape.
		var c struct {
			ID                 string  `json:"id"`
			ExternalCustomerID *string `json:"external_customer_id"`
			Currency           *string `json:"currency"`
		}
		if err := json.Unmarshal(raw, &c); err != nil || c.ID == "" {
			return nil, "", errors.New("list orb customers: an item is not a customer with an id")
		}
		oc := row.OrbCustomer{ID: c.ID, ExternalCustomerID: c.ExternalCustomerID}
		if c.Currency != nil {
			oc.Currency = *c.Currency
		}
		s.customers[c.ID] = oc
		ids = append(ids, c.ID)
	}
	if !p.HasMore || len(ids) == 0 {
		return ids, "", nil
	}
	last := ids[len(ids)-1]
	s.after[last] = p.NextCursor
	return ids, last, nil
}

// Transactions implements Lister. Orb lists newest first and has no
// ending_before, so the incremental read pages from the newest until it
// meets sinceID and stops there. A sinceID never met means everything was
// read, which is what a lost cursor needs anyway.
func (s *OrbSource) Transactions(ctx context.Context, account, customer, sinceID string, fn func(Page) error) (string, error) {
	if account != "" {
		return "", fmt.Errorf("orb has no accounts; got %q", account)
	}
	if _, ok := s.known(customer); !ok {
		// A customer named on the command line: Row needs its currency.
		if _, err := s.Customer(ctx, customer); err != nil {
			return "", err
		}
	}
	newest, cursor := sinceID, ""
	path := "/v1/customers/" + customer + "/balance_transactions"
	for first := true; ; first = false {
		var p orbapi.Page
		at, err := s.call(ctx, path, func() (err error) {
			p, err = s.client.ListBalanceTransactions(ctx, customer, cursor, orbapi.MaxLimit)
			return err
		})
		if err != nil {
			return "", err
		}
		items, met := p.Data, false
		for i, raw := range items {
			id, err := itemID(raw)
			if err != nil || id == "" {
				return "", fmt.Errorf("list balance transactions of %s: an item has no id", customer)
			}
			if sinceID != "" && id == sinceID {
				items, met = items[:i], true
				break
			}
			if first && i == 0 {
				newest = id
			}
		}
		if len(items) > 0 {
			if err := fn(Page{Items: items, HasMore: p.HasMore && !met, ObservedAt: at}); err != nil {
				return "", err
			}
		}
		if met || !p.HasMore {
			return newest, nil
		}
		cursor = p.NextCursor
	}
}

// Table implements Lister.
func (s *OrbSource) Table() sink.Table { return row.OrbTxnTable }

// Row implements Lister with the one Orb normaliser.
func (s *OrbSource) Row(raw []byte, m row.Meta) ([]any, error) {
	r, err := s.txn(raw, m)
	if err != nil {
		return nil, err
	}
	return r.Values(), nil
}

// txn normalises raw with the customer m names, as listed or fetched by
// this source.
func (s *OrbSource) txn(raw []byte, m row.Meta) (*row.OrbTxn, error) {
	c, ok := s.known(m.CustomerID)
	if !ok {
		return nil, fmt.Errorf("orb customer %q was not read before its transactions", m.CustomerID)
	}
	return row.NormalizeOrb(raw, c, m)
}
