// Package orbemu serves a stateful, seeded imitation of the Orb API's
// customer and balance transaction endpoints from memory, with faults and signed webhooks: the test oracle.
package orbemu

import (
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"sync"
	"time"

	"github.com/shopspring/decimal"

	"github.com/syncd/syncd/internal/emulator"
	"github.com/syncd/syncd/internal/ratelimit"
)

// Config describes the generated world and the faults injected into it.
type Config struct {
	Seed      int64
	Customers int // generated customers, most with 0–3 transactions
	// HeavyTxns adds one customer per entry with that many transactions
	// (e.g. []int{300, 5000}).
	HeavyTxns []int
	End       time.Time // newest generated timestamp; zero means DefaultEnd
	APIKey    string    // the accepted Bearer token; empty accepts any non-empty one

	Latency    time.Duration // added to every request
	Rate429    float64       // fraction of requests answered 429
	Rate500    float64       // fraction of requests answered 500
	RetryAfter time.Duration // sent with every injected 429; 0 means 1s
	// Limits are enforced as Orb does (zero: none): the key's rate of
	// requests (orbapi.LiveRate, orbapi.TestRate) and requests in flight.
	// Over one of them a request is answered 429 with a Retry-After.
	Limits ratelimit.Limits

	WebhookURL      string
	WebhookSecret   string
	WebhookSync     bool          // deliver inside the mutating call instead of in the background
	WebhookAttempts int           // per event; 0 means 5
	WebhookBackoff  time.Duration // first retry delay, doubling; 0 means 50ms
	HTTPClient      *http.Client  // for webhooks; nil means a 10s-timeout client
}

// DefaultEnd is the newest generated timestamp unless Config.End is set.
var DefaultEnd = time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)

// Txn is a balance transaction as the oracle knows it: Orb's fields with
// their exact decimal strings, the customer it belongs to, and Raw, the JSON
// object exactly as the API lists it and webhooks carry it.
type Txn struct {
	CustomerID         string
	ExternalCustomerID *string
	Currency           string // the customer's; Orb's transaction has none

	ID              string
	Action          string
	Type            string // increment or decrement
	Amount          string
	StartingBalance string
	EndingBalance   string
	CreatedAt       time.Time
	Description     *string
	InvoiceID       *string
	CreditNoteID    *string
	Raw             []byte
}

// Customer is an Orb customer as it stands now.
type Customer struct {
	ID                 string
	ExternalCustomerID *string
	Name, Email        string
	Currency           string
	Balance            string // the newest transaction's ending_balance
	CreatedAt          time.Time
	Metadata           map[string]string
	Raw                []byte // the JSON object as GET /v1/customers/{id} serves it
}

// Event is a webhook event the emulator produced.
type Event struct {
	ID         string
	Type       string
	CustomerID string
	CreatedAt  time.Time
	Raw        []byte // the body POSTed to the webhook URL
}

type customer struct {
	Customer
	deleted bool // DeleteCustomer: kept in place, as list cursors index the slice
	balance decimal.Decimal
	prec    int32
	txns    []*Txn // oldest first; only ever appended to
	txnIdx  map[string]int
}

// Emulator is an http.Handler serving the Orb API from memory.
type Emulator struct {
	cfg Config

	mu        sync.RWMutex
	gen       *generator
	customers []*customer // oldest first; only ever appended to
	custIdx   map[string]int
	events    []Event

	mux      *http.ServeMux
	faults   *emulator.Faults
	limits   *emulator.Enforcer
	counters *emulator.RequestCounters[string] // list calls by customer
	webhooks *emulator.WebhookQueue
}

// New generates the world described by cfg.
func New(cfg Config) (*Emulator, error) {
	if cfg.End.IsZero() {
		cfg.End = DefaultEnd
	}
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = time.Second
	}
	if cfg.WebhookURL != "" && cfg.WebhookSecret == "" {
		return nil, errors.New("orbemu: WebhookURL needs a WebhookSecret")
	}
	if cfg.Customers < 0 {
		return nil, errors.New("orbemu: Customers must not be negative")
	}
	e := &Emulator{
		cfg:     cfg,
		gen:     newGenerator(cfg.Seed),
		custIdx: map[string]int{},
		faults:  emulator.NewFaults(cfg.Seed, cfg.Rate429, cfg.Rate500, cfg.Latency),
		limits:  emulator.NewEnforcer(cfg.Limits),
		counters: emulator.NewRequestCounters[string](KindCustomers, KindCustomer,
			KindBalanceTransactions, KindOther),
	}
	e.generate()
	e.mux = e.routes()
	e.webhooks = emulator.NewWebhookQueue(emulator.WebhookConfig{
		URL: cfg.WebhookURL, Sync: cfg.WebhookSync, Attempts: cfg.WebhookAttempts,
		Backoff: cfg.WebhookBackoff, Client: cfg.HTTPClient, Header: e.webhookHeader,
	})
	return e, nil
}

// SetFaults changes the injected 429 and 500 rates.
func (e *Emulator) SetFaults(rate429, rate500 float64) { e.faults.SetRates(rate429, rate500) }

// SetLatency changes the delay added to every request.
func (e *Emulator) SetLatency(d time.Duration) { e.faults.SetLatency(d) }

// ErrNotFound reports an unknown customer.
var ErrNotFound = errors.New("orbemu: not found")

func (e *Emulator) lookup(id string) (*customer, error) {
	i, ok := e.custIdx[id]
	if !ok || e.customers[i].deleted {
		return nil, fmt.Errorf("customer %q: %w", id, ErrNotFound)
	}
	return e.customers[i], nil
}

// Customers returns every customer, oldest first.
func (e *Emulator) Customers() []Customer {
	e.mu.RLock()
	defer e.mu.RUnlock()
	out := make([]Customer, 0, len(e.customers))
	for _, c := range e.customers {
		if !c.deleted {
			out = append(out, c.Customer)
		}
	}
	return out
}

// CustomerTruth returns one customer as it stands.
func (e *Emulator) CustomerTruth(id string) (Customer, bool) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	c, err := e.lookup(id)
	if err != nil {
		return Customer{}, false
	}
	return c.Customer, true
}

// Truth returns every transaction of every customer, oldest first per
// customer: what a complete mirror must hold.
func (e *Emulator) Truth() []Txn {
	e.mu.RLock()
	defer e.mu.RUnlock()
	var out []Txn
	for _, c := range e.customers {
		if c.deleted {
			continue
		}
		for _, t := range c.txns {
			out = append(out, *t)
		}
	}
	return out
}

// TruthFor returns one customer's transactions, oldest first (the API lists
// them newest first); nil when the customer does not exist.
func (e *Emulator) TruthFor(customerID string) []Txn {
	e.mu.RLock()
	defer e.mu.RUnlock()
	c, err := e.lookup(customerID)
	if err != nil {
		return nil
	}
	out := make([]Txn, len(c.txns))
	for i, t := range c.txns {
		out[i] = *t
	}
	return out
}

// Events returns every event produced so far, oldest first.
func (e *Emulator) Events() []Event {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return append([]Event(nil), e.events...)
}

var plainDecimal = regexp.MustCompile(`^[0-9]+(\.[0-9]{1,12})?$`)

// AddTransaction appends a transaction to a customer as Orb's
// "create customer balance transaction" would: typ is increment or
// decrement, amount a positive decimal string kept exactly as given (at most
// 12 decimals). It updates the balance, records a
// customer.balance_transaction_created event and delivers it.
func (e *Emulator) AddTransaction(customerID, action, typ, amount string) (Txn, error) {
	if typ != "increment" && typ != "decrement" {
		return Txn{}, fmt.Errorf("orbemu: type %q: want increment or decrement", typ)
	}
	if action == "" {
		return Txn{}, errors.New("orbemu: empty action")
	}
	if !plainDecimal.MatchString(amount) {
		return Txn{}, fmt.Errorf("orbemu: amount %q: want a positive decimal string", amount)
	}
	amt := decimal.RequireFromString(amount)
	if !amt.IsPositive() {
		return Txn{}, fmt.Errorf("orbemu: amount %q must be positive", amount)
	}
	e.mu.Lock()
	c, err := e.lookup(customerID)
	if err != nil {
		e.mu.Unlock()
		return Txn{}, err
	}
	at := time.Now().UTC().Truncate(time.Second)
	if n := len(c.txns); n > 0 && !at.After(c.txns[n-1].CreatedAt) {
		at = c.txns[n-1].CreatedAt.Add(time.Second)
	}
	t := e.appendTxn(c, draw{action: action, typ: typ, amount: amt, amountText: amount}, at)
	ev := e.recordEvent(c, t)
	out := *t
	e.mu.Unlock()
	e.deliver(ev)
	return out, nil
}

// DeleteCustomer deletes a customer as Orb's DELETE /v1/customers/{id}
// does: it leaves the customer list, its balance transactions answer 404,
// and GET /v1/customers/{id} answers only {"id", "deleted": true} — what
// Orb answers while the deletion is in process; once it has completed Orb
// answers 404, as for a customer that never existed. Orb sends no webhook
// for it.
func (e *Emulator) DeleteCustomer(id string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.lookup(id)
	if err != nil {
		return err
	}
	c.deleted = true
	return nil
}
