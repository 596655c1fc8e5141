// Package stripeemu serves a stateful, seeded imitation of the Stripe API's
// customer balance endpoints from memory, with faults and signed webhooks: the test oracle.
package stripeemu

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/syncd/syncd/internal/emulator"
	"github.com/syncd/syncd/internal/ratelimit"
)

// Config describes the generated world and the faults injected into it.
type Config struct {
	Seed      int64
	Customers int      // generated customers per account
	Accounts  []string // "" is the platform account, acct_… connected ones; empty means {""}
	// HeavyCustomers adds, to the first account, one customer per entry with
	// that many transactions (e.g. []int{5000}).
	HeavyCustomers []int
	// Scale, when Scale.Customers > 0, generates a large read-only world
	// compactly instead (Customers, Accounts and HeavyCustomers unset).
	Scale    Scale
	End      time.Time // newest generated timestamp; zero means DefaultEnd
	Livemode bool

	Latency time.Duration // added to every request
	Rate429 float64       // fraction of requests answered 429 rate_limit
	Rate500 float64       // fraction of requests answered 500 api_error

	// Limits are enforced as Stripe does (zero: none): per account a global
	// rate, a rate per endpoint and a cap on requests in flight; over one
	// of them a request is answered 429 with Stripe-Rate-Limited-Reason.
	// stripeapi.DefaultLimits has Stripe's documented values.
	Limits ratelimit.Limits
	// LimitScope says whether a connected account's requests spend the
	// platform's budget (the default) or their own.
	LimitScope ratelimit.Scope

	WebhookURL    string
	WebhookSecret string
	// ThinEvents delivers each change as a thin event (Stripe's v2 event
	// notification: related_object, context, snapshot_event) instead of a
	// snapshot event, as an event destination configured for thin events
	// does. /v1/events still serves snapshot events, as Stripe does.
	ThinEvents      bool
	WebhookSync     bool          // deliver inside the mutating call instead of in the background
	WebhookAttempts int           // per event; 0 means 5
	WebhookBackoff  time.Duration // first retry delay, doubling; 0 means 50ms
	HTTPClient      *http.Client  // for webhooks; nil means a 10s-timeout client
}

// Emulator is an http.Handler serving the Stripe API from memory.
type Emulator struct {
	cfg Config

	mu         sync.RWMutex
	gen        *generator
	accountIDs []string
	accounts   map[string]*account

	mux    *http.ServeMux
	faults *emulator.Faults
	reqSeq atomic.Int64

	limits   *emulator.Enforcer
	counters *emulator.RequestCounters[[2]string] // list calls by (account, customer)
	webhooks *emulator.WebhookQueue
}

// New generates the world described by cfg.
func New(cfg Config) (*Emulator, error) {
	if cfg.Scale.Customers > 0 {
		switch {
		case len(cfg.Accounts) > 0 || cfg.Customers > 0 || len(cfg.HeavyCustomers) > 0:
			return nil, errors.New("stripeemu: Scale replaces Customers, Accounts and HeavyCustomers")
		case cfg.Scale.Accounts < 0 || cfg.Scale.Accounts > 100_000:
			return nil, errors.New("stripeemu: Scale.Accounts: want 0–100000")
		case cfg.Scale.Customers > 100_000_000:
			return nil, errors.New("stripeemu: Scale.Customers: want at most 100000000")
		}
		cfg.Accounts = []string{}
	}
	if len(cfg.Accounts) == 0 && cfg.Scale.Customers == 0 {
		cfg.Accounts = []string{""}
	}
	if cfg.End.IsZero() {
		cfg.End = DefaultEnd
	}
	if cfg.WebhookURL != "" && cfg.WebhookSecret == "" {
		return nil, errors.New("stripeemu: WebhookURL needs a WebhookSecret")
	}
	e := &Emulator{
		cfg:      cfg,
		gen:      &generator{rng: rand.New(rand.NewPCG(uint64(cfg.Seed), 0x5717e))},
		accounts: map[string]*account{"": newAccount("")},
		faults:   emulator.NewFaults(cfg.Seed, cfg.Rate429, cfg.Rate500, cfg.Latency),
		limits:   emulator.NewEnforcer(cfg.Limits),
		counters: emulator.NewRequestCounters[[2]string](KindCustomers, KindCustomer,
			KindBalanceTransactions, KindBalanceTransaction, KindEvents, KindAccounts, KindOther),
	}
	for _, id := range cfg.Accounts {
		if id != "" && !strings.HasPrefix(id, "acct_") {
			return nil, fmt.Errorf("stripeemu: account %q: want \"\" or acct_…", id)
		}
		if slices.Contains(e.accountIDs, id) {
			return nil, fmt.Errorf("stripeemu: account %q listed twice", id)
		}
		e.accountIDs = append(e.accountIDs, id)
		if id != "" {
			e.accounts[id] = newAccount(id)
		}
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

// Accounts lists the configured account ids, "" for the platform.
func (e *Emulator) Accounts() []string { return slices.Clone(e.accountIDs) }

// Customers returns every customer of every account, oldest first per account.
func (e *Emulator) Customers() []Customer {
	e.mu.RLock()
	defer e.mu.RUnlock()
	var out []Customer
	for _, id := range e.accountIDs {
		a := e.accounts[id]
		if a.lazy != nil {
			for i := range a.lazy.n {
				out = append(out, a.lazy.lite(i).c.Customer)
			}
			continue
		}
		for _, c := range a.customers {
			out = append(out, c.Customer)
		}
	}
	return out
}

// CustomerTruth returns one customer as it stands.
func (e *Emulator) CustomerTruth(account, id string) (Customer, bool) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	c, err := e.read(account, id, false)
	if err != nil {
		return Customer{}, false
	}
	return c.Customer, true
}

// Truth returns every transaction of every account and customer, oldest
// first per customer: what a complete mirror must hold.
func (e *Emulator) Truth() []Txn {
	e.mu.RLock()
	defer e.mu.RUnlock()
	var out []Txn
	for _, id := range e.accountIDs {
		a := e.accounts[id]
		cs := a.customers
		if a.lazy != nil {
			cs = make([]*customer, a.lazy.n)
			for i := range cs {
				cs[i] = a.lazy.full(i)
			}
		}
		for _, c := range cs {
			for _, t := range c.txns {
				out = append(out, t.export())
			}
		}
	}
	return out
}

// TruthFor returns one customer's transactions, oldest first; nil when the
// customer does not exist.
func (e *Emulator) TruthFor(account, customer string) []Txn {
	e.mu.RLock()
	defer e.mu.RUnlock()
	c, err := e.read(account, customer, true)
	if err != nil {
		return nil
	}
	out := make([]Txn, len(c.txns))
	for i, t := range c.txns {
		out[i] = t.export()
	}
	return out
}

// Events returns the recorded events of every account, oldest first per account.
func (e *Emulator) Events() []Event {
	e.mu.RLock()
	defer e.mu.RUnlock()
	var out []Event
	for _, id := range e.accountIDs {
		for _, ev := range e.accounts[id].events {
			out = append(out, ev.Event)
		}
	}
	return out
}

// ErrNotFound reports an unknown account, customer or transaction.
var ErrNotFound = errors.New("stripeemu: not found")

// read finds a customer to read; a scaled account's is generated, with its
// transactions when full.
func (e *Emulator) read(account, customer string, full bool) (*customer, error) {
	a, ok := e.accounts[account]
	if !ok {
		return nil, fmt.Errorf("account %q: %w", account, ErrNotFound)
	}
	c, ok := a.find(customer, full)
	if !ok {
		return nil, fmt.Errorf("customer %q of account %q: %w", customer, account, ErrNotFound)
	}
	return c, nil
}

// lookup finds a customer to change: a scaled world's are read-only.
func (e *Emulator) lookup(account, customer string) (*customer, error) {
	a, ok := e.accounts[account]
	if !ok {
		return nil, fmt.Errorf("account %q: %w", account, ErrNotFound)
	}
	if a.lazy != nil {
		return nil, ErrReadOnly
	}
	c, ok := a.customerByID[customer]
	if !ok {
		return nil, fmt.Errorf("customer %q of account %q: %w", customer, account, ErrNotFound)
	}
	return c, nil
}

// now is the creation time of a runtime object: the wall clock, but never
// before floor, so per-customer order stays strict.
func now(floor int64) int64 { return max(time.Now().Unix(), floor) }

// AddTransaction creates a transaction as POST /v1/customers/{id}/balance_transactions
// would, updates the customer's balance, records the events Stripe sends
// (customer.updated, and invoice.paid, credit_note.created or
// checkout.session.completed when the type implies one) and delivers them.
func (e *Emulator) AddTransaction(account, customerID string, amount int64, typ string) (Txn, error) {
	if amount == 0 {
		return Txn{}, errors.New("stripeemu: amount must not be zero")
	}
	if typ == "" {
		typ = "adjustment"
	}
	return e.addTransaction(account, customerID, 0, func(*customer) draw { return draw{typ, amount} })
}

// AddTransactionAt is AddTransaction dated created instead of now. Stripe's
// created has whole seconds, so transactions made in bulk share one:
// created may equal the customer's newest transaction's, not precede it.
func (e *Emulator) AddTransactionAt(account, customerID string, amount int64, typ string, created time.Time) (Txn, error) {
	if amount == 0 {
		return Txn{}, errors.New("stripeemu: amount must not be zero")
	}
	if typ == "" {
		typ = "adjustment"
	}
	if created.Unix() <= 0 {
		return Txn{}, errors.New("stripeemu: created must be after 1970")
	}
	return e.addTransaction(account, customerID, created.Unix(), func(*customer) draw { return draw{typ, amount} })
}

// RandomTransaction is AddTransaction with a type and amount drawn from the
// seeded generator, as the seeded history was.
func (e *Emulator) RandomTransaction(account, customerID string) (Txn, error) {
	return e.addTransaction(account, customerID, 0, func(c *customer) draw {
		return e.gen.amountFor(false, c.Currency)
	})
}

// addTransaction appends a transaction dated at (Unix seconds), or now
// when at is 0.
func (e *Emulator) addTransaction(account, customerID string, at int64, next func(*customer) draw) (Txn, error) {
	e.mu.Lock()
	c, err := e.lookup(account, customerID)
	if err != nil {
		e.mu.Unlock()
		return Txn{}, err
	}
	var newest int64
	if n := len(c.txns); n > 0 {
		newest = c.txns[n-1].Created
	}
	created := now(newest + 1)
	if at != 0 {
		if at < newest {
			e.mu.Unlock()
			return Txn{}, fmt.Errorf("stripeemu: created %d precedes customer %s's newest transaction (%d)", at, customerID, newest)
		}
		created = at
	}
	a := e.accounts[account]
	t := e.appendTxn(a, c, next(c), created)
	evs := e.txnEvents(a, c, t, true)
	out := t.export()
	e.mu.Unlock()
	e.deliver(exportEvents(evs))
	return out, nil
}

// AddCustomer creates a customer without transactions in account and
// delivers its customer.created event.
func (e *Emulator) AddCustomer(account string) (Customer, error) {
	e.mu.Lock()
	a, ok := e.accounts[account]
	if !ok {
		e.mu.Unlock()
		return Customer{}, fmt.Errorf("account %q: %w", account, ErrNotFound)
	}
	if a.lazy != nil {
		e.mu.Unlock()
		return Customer{}, ErrReadOnly
	}
	var floor int64
	if n := len(a.customers); n > 0 {
		floor = a.customers[n-1].Created
	}
	c := e.newCustomer(a, now(floor))
	ev := e.recordEvent(a, c, "customer.created", c.Created, c.raw, nil, true)
	out := c.Customer
	e.mu.Unlock()
	e.deliver([]Event{ev.Event})
	return out, nil
}

// DeleteCustomer deletes a customer as DELETE /v1/customers/{id} does: it
// leaves the customer list, GET /v1/customers/{id} answers only
// {"id", "object": "customer", "deleted": true}, its balance transactions
// answer 404 (resource_missing), and a customer.deleted event carrying the
// customer as it stood is recorded and delivered.
func (e *Emulator) DeleteCustomer(account, id string) (Event, error) {
	e.mu.Lock()
	c, err := e.lookup(account, id)
	if err != nil {
		e.mu.Unlock()
		return Event{}, err
	}
	a := e.accounts[account]
	a.customers = slices.DeleteFunc(a.customers, func(x *customer) bool { return x == c })
	delete(a.customerByID, id)
	stub, err := json.Marshal(map[string]any{"id": id, "object": "customer", "deleted": true})
	if err != nil {
		panic(err)
	}
	a.deleted[id] = stub
	ev := e.recordEvent(a, c, "customer.deleted", now(c.Created), marshalCustomer(c, c.Balance), nil, true).Event
	e.mu.Unlock()
	e.deliver([]Event{ev})
	return ev, nil
}

// EditDescription changes a transaction's description ("" clears it) as
// POST /v1/customers/{id}/balance_transactions/{txn} would: Stripe sends no
// event for it, so neither does the emulator.
func (e *Emulator) EditDescription(account, customer, txnID, desc string) (Txn, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.lookup(account, customer)
	if err != nil {
		return Txn{}, err
	}
	t, ok := c.txnByID[txnID]
	if !ok {
		return Txn{}, fmt.Errorf("transaction %q of customer %q: %w", txnID, customer, ErrNotFound)
	}
	// Replace rather than mutate: readers may still hold the old record's Raw.
	nt := &txn{Txn: t.Txn, seq: t.seq}
	nt.Description = nil
	if desc != "" {
		nt.Description = ptr(desc)
	}
	nt.Raw = marshalTxn(&nt.Txn)
	i, _ := slices.BinarySearchFunc(c.txns, t, byKey)
	c.txns[i] = nt
	c.txnByID[txnID] = nt
	return nt.export(), nil
}

func exportEvents(evs []*event) []Event {
	out := make([]Event, len(evs))
	for i, ev := range evs {
		out[i] = ev.Event
	}
	return out
}
