package stripeemu

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/syncd/syncd/internal/emulator"
)

// APIVersion is the version the emulator claims to speak; stripe-go v82 pins it.
const APIVersion = "2025-08-27.basil"

// Types are every customer_balance_transaction type Stripe documents.
var Types = []string{
	"adjustment", "applied_to_invoice", "credit_note", "initial",
	"invoice_overpaid", "invoice_too_large", "invoice_too_small",
	"unspent_receiver_credit", "unapplied_from_invoice",
	"checkout_session_subscription_payment",
	"checkout_session_subscription_payment_canceled", "migration",
}

// Txn is one customer balance transaction as the oracle knows it.
type Txn struct {
	Account         string // "" for the platform account
	ID              string
	Customer        string
	Amount          int64
	Currency        string
	Created         int64
	Type            string
	Description     *string
	EndingBalance   int64
	Invoice         *string
	CreditNote      *string
	CheckoutSession *string
	Metadata        map[string]string
	Livemode        bool
	Raw             []byte // the JSON object exactly as the API serves it
}

// Customer is one customer as the oracle knows it.
type Customer struct {
	Account      string
	ID           string
	Balance      int64 // the newest transaction's ending_balance, 0 without any
	Currency     string
	Created      int64
	Email        string
	Livemode     bool
	Transactions int
}

// Event is a Stripe event the emulator recorded.
type Event struct {
	ID       string
	Account  string
	Type     string
	Customer string
	Created  int64
	Raw      []byte // the event JSON as served by /v1/events and POSTed to the webhook
	// Thin is the same change as a thin event (object "v2.core.event", type
	// "v1."+Type, id ThinID), POSTed instead of Raw when Config.ThinEvents
	// is set.
	Thin   []byte
	ThinID string
}

// AsThin returns ev as its thin event: Raw and ID are Thin's and ThinID.
func (ev Event) AsThin() Event {
	ev.Raw, ev.ID = ev.Thin, ev.ThinID
	return ev
}

// Internal records: the exported value plus the sequence number that orders
// objects sharing a second. Raw slices are never mutated once published, so
// readers may keep them after releasing the lock.
type txn struct {
	Txn
	seq int64
}

type customer struct {
	Customer
	seq      int64
	name     string
	metadata map[string]string
	raw      []byte
	txns     []*txn // ascending (created, seq)
	txnByID  map[string]*txn
}

type event struct {
	Event
	seq int64
}

type account struct {
	id           string
	created      int64
	seq          int64
	raw          []byte
	customers    []*customer // ascending (created, seq)
	customerByID map[string]*customer
	events       []*event // ascending (created, seq)
	eventByID    map[string]*event
	objects      map[string][]byte // invoices, credit notes, checkout sessions by id: as last sent in an event
	deleted      map[string][]byte // deleted customers by id: what GET /v1/customers/{id} answers
	lazy         *lazyAccount      // a scaled account's customers, generated on demand; nil otherwise
}

func (t *txn) key() (int64, int64)      { return t.Created, t.seq }
func (t *txn) rawJSON() []byte          { return t.Raw }
func (c *customer) key() (int64, int64) { return c.Created, c.seq }
func (c *customer) rawJSON() []byte     { return c.raw }
func (e *event) key() (int64, int64)    { return e.Created, e.seq }
func (e *event) rawJSON() []byte        { return e.Raw }
func (a *account) key() (int64, int64)  { return a.created, a.seq }
func (a *account) rawJSON() []byte      { return a.raw }

// find looks a customer up by id; a scaled account's is generated, with
// its transactions when full.
func (a *account) find(id string, full bool) (*customer, bool) {
	if a.lazy != nil {
		return a.lazy.customerByID(id, full)
	}
	c, ok := a.customerByID[id]
	return c, ok
}

func newAccount(id string) *account {
	return &account{id: id, customerByID: map[string]*customer{}, eventByID: map[string]*event{}, objects: map[string][]byte{},
		deleted: map[string][]byte{}}
}

type wireTxn struct {
	ID              string            `json:"id"`
	Object          string            `json:"object"`
	Amount          int64             `json:"amount"`
	CheckoutSession *string           `json:"checkout_session"`
	Created         int64             `json:"created"`
	CreditNote      *string           `json:"credit_note"`
	Currency        string            `json:"currency"`
	Customer        string            `json:"customer"`
	CustomerAccount *string           `json:"customer_account"`
	Description     *string           `json:"description"`
	EndingBalance   int64             `json:"ending_balance"`
	Invoice         *string           `json:"invoice"`
	Livemode        bool              `json:"livemode"`
	Metadata        map[string]string `json:"metadata"`
	Type            string            `json:"type"`
}

func marshalTxn(t *Txn) []byte {
	md := t.Metadata
	if md == nil {
		md = map[string]string{}
	}
	b, err := json.Marshal(wireTxn{
		ID: t.ID, Object: "customer_balance_transaction", Amount: t.Amount,
		CheckoutSession: t.CheckoutSession, Created: t.Created, CreditNote: t.CreditNote,
		Currency: t.Currency, Customer: t.Customer, Description: t.Description,
		EndingBalance: t.EndingBalance, Invoice: t.Invoice, Livemode: t.Livemode,
		Metadata: md, Type: t.Type,
	})
	if err != nil {
		panic(err) // only strings and integers: cannot fail
	}
	return b
}

type wireCustomer struct {
	ID               string            `json:"id"`
	Object           string            `json:"object"`
	Address          *string           `json:"address"`
	Balance          int64             `json:"balance"`
	Created          int64             `json:"created"`
	Currency         string            `json:"currency"`
	DefaultSource    *string           `json:"default_source"`
	Delinquent       bool              `json:"delinquent"`
	Description      *string           `json:"description"`
	Email            string            `json:"email"`
	InvoicePrefix    string            `json:"invoice_prefix"`
	Livemode         bool              `json:"livemode"`
	Metadata         map[string]string `json:"metadata"`
	Name             string            `json:"name"`
	Phone            *string           `json:"phone"`
	PreferredLocales []string          `json:"preferred_locales"`
	Shipping         *string           `json:"shipping"`
	TaxExempt        string            `json:"tax_exempt"`
	TestClock        *string           `json:"test_clock"`
}

// marshalCustomer renders c as it stands with the given balance, so events can
// carry a snapshot of an earlier state.
func marshalCustomer(c *customer, balance int64) []byte {
	md := c.metadata
	if md == nil {
		md = map[string]string{}
	}
	b, err := json.Marshal(wireCustomer{
		ID: c.ID, Object: "customer", Balance: balance, Created: c.Created,
		Currency: c.Currency, Email: c.Email, InvoicePrefix: invoicePrefix(c.ID),
		Livemode: c.Livemode, Metadata: md, Name: c.name,
		PreferredLocales: []string{}, TaxExempt: "none",
	})
	if err != nil {
		panic(err)
	}
	return b
}

func invoicePrefix(id string) string {
	p := []byte(id[len(id)-8:])
	for i, ch := range p {
		if ch >= 'a' && ch <= 'z' {
			p[i] = ch - 'a' + 'A'
		}
	}
	return string(p)
}

func marshalAccount(a *account, livemode bool) []byte {
	b, err := json.Marshal(map[string]any{
		"id": a.id, "object": "account", "type": "standard", "charges_enabled": true,
		"payouts_enabled": true, "details_submitted": true, "country": "US",
		"default_currency": "usd", "created": a.created, "email": nil,
		"metadata": map[string]string{}, "livemode": livemode,
	})
	if err != nil {
		panic(err)
	}
	return b
}

// generator holds the seeded randomness. Every use happens under the
// emulator's write lock, so a seed and a sequence of calls give one outcome.
type generator struct {
	rng *rand.Rand
	seq int64
}

func (g *generator) next() int64 { g.seq++; return g.seq }

const idChars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

func (g *generator) id(prefix string, n int) string {
	b := make([]byte, len(prefix)+n)
	copy(b, prefix)
	for i := len(prefix); i < len(b); i++ {
		b[i] = idChars[g.rng.IntN(len(idChars))]
	}
	return string(b)
}

func (g *generator) currency() string {
	switch u := g.rng.IntN(100); {
	case u < 55:
		return "usd"
	case u < 80:
		return "eur"
	case u < 92:
		return "jpy"
	default:
		return "kwd"
	}
}

// txnCount draws a skewed count: most customers have 0–3 transactions, a few
// hundreds or thousands.
func (g *generator) txnCount() int {
	switch u := g.rng.Float64(); {
	case u < 0.35:
		return 0
	case u < 0.85:
		return 1 + g.rng.IntN(3)
	case u < 0.97:
		return 4 + g.rng.IntN(27)
	case u < 0.995:
		return 30 + g.rng.IntN(270)
	default:
		return 300 + g.rng.IntN(1700)
	}
}

type typeWeight struct {
	typ    string
	weight int
}

var typeWeights = []typeWeight{
	{"adjustment", 30}, {"applied_to_invoice", 25}, {"credit_note", 10},
	{"invoice_overpaid", 5}, {"invoice_too_large", 2}, {"invoice_too_small", 5},
	{"unspent_receiver_credit", 2}, {"unapplied_from_invoice", 5},
	{"checkout_session_subscription_payment", 5},
	{"checkout_session_subscription_payment_canceled", 2}, {"migration", 2},
}

func (g *generator) txnType(first bool) string {
	if first && g.rng.IntN(10) < 3 {
		return "initial"
	}
	return emulator.Pick(g.rng, typeWeights, func(w typeWeight) int { return w.weight }).typ
}

// amount draws a non-zero amount in minor units with the sign the type implies.
func (g *generator) amount(typ, currency string) int64 {
	a := 1 + g.rng.Int64N(50000)
	if currency == "kwd" {
		a *= 10
	}
	switch typ {
	case "applied_to_invoice", "invoice_too_large", "invoice_too_small",
		"checkout_session_subscription_payment_canceled":
		return a
	case "credit_note", "invoice_overpaid", "unspent_receiver_credit",
		"unapplied_from_invoice", "checkout_session_subscription_payment", "migration":
		return -a
	}
	if g.rng.IntN(2) == 0 {
		return -a
	}
	return a
}

var descriptions = []string{
	"Credit for service interruption", "Goodwill credit", "Promotional credit",
	"Refund as account credit", "Correction of previous adjustment",
	"Annual plan prorated credit", "Überweisung — Gutschrift", "Crédit « fidélité »",
}

// fillTxn sets the fields that depend only on randomness and the type.
func (g *generator) fillTxn(t *Txn) {
	switch t.Type {
	case "applied_to_invoice", "invoice_overpaid", "invoice_too_large",
		"invoice_too_small", "unapplied_from_invoice":
		t.Invoice = ptr(g.id("in_", 24))
	case "credit_note":
		t.Invoice = ptr(g.id("in_", 24))
		t.CreditNote = ptr(g.id("cn_", 24))
	case "checkout_session_subscription_payment", "checkout_session_subscription_payment_canceled":
		mode := "cs_test_"
		if t.Livemode {
			mode = "cs_live_"
		}
		t.CheckoutSession = ptr(g.id(mode, 58))
	}
	if t.Type == "adjustment" || t.Type == "migration" || g.rng.IntN(5) == 0 {
		if g.rng.IntN(10) < 6 {
			t.Description = ptr(descriptions[g.rng.IntN(len(descriptions))])
		}
	}
	if g.rng.IntN(5) == 0 {
		t.Metadata = map[string]string{"order_id": fmt.Sprint(1000 + g.rng.IntN(90000))}
		if g.rng.IntN(3) == 0 {
			t.Metadata["source"] = "support"
		}
	}
}

func ptr[T any](v T) *T { return &v }

// DefaultEnd anchors generated timestamps when Config.End is zero, so a seed
// yields the same data on every day it runs.
var DefaultEnd = time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)

const (
	history      = 2 * 365 * 24 * 3600 // seconds of seeded history
	eventHistory = 30 * 24 * 3600      // Stripe keeps events for 30 days
)

// generate fills e with seeded customers, transactions and recent events.
// Called once from New, before e is shared.
func (e *Emulator) generate() {
	if e.cfg.Scale.Customers > 0 {
		e.generateScaled()
		return
	}
	end := e.cfg.End.Unix()
	g := e.gen
	for i, id := range e.accountIDs {
		a := e.accounts[id]
		a.created = end - history - 86400*int64(1+g.rng.IntN(365))
		a.seq = g.next()
		a.raw = marshalAccount(a, e.cfg.Livemode)
		for range e.cfg.Customers {
			e.genCustomer(a, g.txnCount(), end-g.rng.Int64N(history), end)
		}
		if i == 0 {
			for _, n := range e.cfg.HeavyCustomers {
				e.genCustomer(a, n, end-history/2-g.rng.Int64N(history/2), end)
			}
		}
		slices.SortFunc(a.customers, byKey)
		slices.SortFunc(a.events, byKey)
	}
}

func byKey[T interface{ key() (int64, int64) }](x, y T) int {
	xc, xs := x.key()
	yc, ys := y.key()
	if xc != yc {
		return cmpInt(xc, yc)
	}
	return cmpInt(xs, ys)
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (e *Emulator) newCustomer(a *account, created int64) *customer {
	g := e.gen
	c := &customer{
		Customer: Customer{Account: a.id, ID: g.id("cus_", 14), Currency: g.currency(),
			Created: created, Livemode: e.cfg.Livemode},
		seq:     g.next(),
		txnByID: map[string]*txn{},
	}
	n := 1 + g.rng.IntN(99999)
	c.Email = fmt.Sprintf("customer%05d@example.com", n)
	c.name = fmt.Sprintf("Customer %05d", n)
	if g.rng.IntN(4) == 0 {
		c.metadata = map[string]string{"crm_id": fmt.Sprint(g.rng.IntN(1e6))}
	}
	c.raw = marshalCustomer(c, 0)
	a.customers = append(a.customers, c)
	a.customerByID[c.ID] = c
	return c
}

func (e *Emulator) genCustomer(a *account, n int, created, end int64) {
	g := e.gen
	c := e.newCustomer(a, created)
	if created >= end-eventHistory {
		e.recordEvent(a, c, "customer.created", created, marshalCustomer(c, 0), nil, false)
	}
	times := make([]int64, n)
	span := max(end-created-60, 1)
	for i := range times {
		times[i] = created + 60 + g.rng.Int64N(span)
	}
	slices.Sort(times)
	for i := 1; i < n; i++ {
		times[i] = max(times[i], times[i-1]+1)
	}
	for i, at := range times {
		t := e.appendTxn(a, c, g.amountFor(i == 0, c.Currency), at)
		if at >= end-eventHistory {
			e.txnEvents(a, c, t, false)
		}
	}
}

type draw struct {
	typ    string
	amount int64
}

func (g *generator) amountFor(first bool, currency string) draw {
	typ := g.txnType(first)
	return draw{typ, g.amount(typ, currency)}
}

// appendTxn adds a transaction at created (which must be after the
// customer's newest one), updating the chain and the customer's balance.
func (e *Emulator) appendTxn(a *account, c *customer, d draw, created int64) *txn {
	t := &txn{Txn: Txn{
		Account: a.id, ID: e.gen.id("cbtxn_", 24), Customer: c.ID, Amount: d.amount,
		Currency: c.Currency, Created: created, Type: d.typ,
		EndingBalance: c.Balance + d.amount, Livemode: e.cfg.Livemode,
	}, seq: e.gen.next()}
	e.gen.fillTxn(&t.Txn)
	t.Raw = marshalTxn(&t.Txn)
	c.txns = append(c.txns, t)
	c.txnByID[t.ID] = t
	c.Balance = t.EndingBalance
	c.Transactions = len(c.txns)
	c.raw = marshalCustomer(c, c.Balance)
	return t
}

// export copies t so callers never share its maps or pointers.
func (t *txn) export() Txn {
	out := t.Txn
	if t.Description != nil {
		out.Description = ptr(*t.Description)
	}
	if t.Metadata != nil {
		out.Metadata = make(map[string]string, len(t.Metadata))
		for k, v := range t.Metadata {
			out.Metadata[k] = v
		}
	}
	return out
}
