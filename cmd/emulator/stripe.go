package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"

	"github.com/syncd/syncd/internal/stripeapi"
	"github.com/syncd/syncd/internal/stripeemu"
)

func newStripe(o options, mux *http.ServeMux) (emulator, error) {
	cfg := stripeemu.Config{
		Seed: o.seed, Customers: o.customers, Accounts: o.accounts, HeavyCustomers: o.heavy,
		End: o.end, Livemode: o.livemode, Latency: o.latency, Rate429: o.rate429, Rate500: o.rate500,
		WebhookURL: o.webhookURL, WebhookSecret: o.webhookSecret, ThinEvents: o.thinEvents,
		Limits: o.limitsFor(stripeapi.ModeLimits(o.livemode)), LimitScope: o.scope,
	}
	if o.scale.Customers > 0 {
		cfg.Scale, cfg.Customers, cfg.Accounts, cfg.HeavyCustomers = o.scale, 0, nil, nil
	}
	emu, err := stripeemu.New(cfg)
	if err != nil {
		return nil, err
	}
	c := &stripeControl{emu: emu, rng: rand.New(rand.NewPCG(uint64(o.seed), 0xc0de))}
	mux.HandleFunc("POST /_emu/mutate", c.mutate)
	mux.HandleFunc("POST /_emu/add-customer", c.addCustomer)
	mux.HandleFunc("POST /_emu/edit-description", c.editDescription)
	mux.HandleFunc("GET /_emu/truth/summary", c.summary)
	mux.HandleFunc("GET /_emu/truth", c.truth)
	mux.HandleFunc("GET /_emu/world", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, emu.World()) })
	return emu, nil
}

// stripeControl serves the Stripe emulator's /_emu/ routes. Its rng picks
// which customers change; the emulator's own seeded generator draws the rest.
type stripeControl struct {
	emu *stripeemu.Emulator
	mu  sync.Mutex
	rng *rand.Rand
}

// candidates lists the customers of account (every account when nil).
func (c *stripeControl) candidates(account *string, withTxns bool) []stripeemu.Customer {
	var cs []stripeemu.Customer
	for _, x := range c.emu.Customers() {
		if (account == nil || x.Account == *account) && (!withTxns || x.Transactions > 0) {
			cs = append(cs, x)
		}
	}
	return cs
}

func pickOne[T any](c *stripeControl, xs []T) T {
	c.mu.Lock()
	defer c.mu.Unlock()
	return xs[c.rng.IntN(len(xs))]
}

func optionalAccount(r *http.Request) *string {
	if !r.Form.Has("account") {
		return nil
	}
	a := accountParam(r.Form.Get("account"))
	return &a
}

// mutate handles POST /_emu/mutate?n=20[&account=acct_…|platform]: n random
// transactions on random customers, each emitting its webhooks.
func (c *stripeControl) mutate(w http.ResponseWriter, r *http.Request) {
	r.ParseForm()
	n := 1
	if s := r.Form.Get("n"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 || v > 100000 {
			http.Error(w, "n: want 1–100000", http.StatusBadRequest)
			return
		}
		n = v
	}
	cs := c.candidates(optionalAccount(r), false)
	if len(cs) == 0 {
		http.Error(w, "no customers", http.StatusNotFound)
		return
	}
	out := make([]json.RawMessage, 0, n)
	for range n {
		cus := pickOne(c, cs)
		t, err := c.emu.RandomTransaction(cus.Account, cus.ID)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		out = append(out, t.Raw)
	}
	writeJSON(w, out)
}

// addCustomer handles POST /_emu/add-customer[?account=…].
func (c *stripeControl) addCustomer(w http.ResponseWriter, r *http.Request) {
	r.ParseForm()
	cus, err := c.emu.AddCustomer(accountParam(r.Form.Get("account")))
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, cus)
}

// editDescription handles POST /_emu/edit-description with account,
// customer, txn and description (form or query). Without txn it edits a
// random transaction. Stripe sends no webhook for this, nor does the emulator.
func (c *stripeControl) editDescription(w http.ResponseWriter, r *http.Request) {
	r.ParseForm()
	account, cus, id := accountParam(r.Form.Get("account")), r.Form.Get("customer"), r.Form.Get("txn")
	desc := r.Form.Get("description")
	if !r.Form.Has("description") {
		desc = "Edited by the emulator"
	}
	if id == "" {
		acct := optionalAccount(r)
		if cus != "" {
			acct = &account
		}
		var txns []stripeemu.Txn
		if cus != "" {
			txns = c.emu.TruthFor(account, cus)
		} else if cs := c.candidates(acct, true); len(cs) > 0 {
			pick := pickOne(c, cs)
			txns = c.emu.TruthFor(pick.Account, pick.ID)
		}
		if len(txns) == 0 {
			http.Error(w, "no transaction to edit", http.StatusNotFound)
			return
		}
		t := pickOne(c, txns)
		account, cus, id = t.Account, t.Customer, t.ID
	}
	t, err := c.emu.EditDescription(account, cus, id, desc)
	if err != nil {
		writeErr(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(t.Raw)
}

type accountSummary struct {
	Customers    int              `json:"customers"`
	Transactions int              `json:"transactions"`
	Balances     map[string]int64 `json:"balances"` // per currency, minor units
}

// summary handles GET /_emu/truth/summary: totals overall and per account
// ("platform" for the key's own), plus request and delivery counters.
func (c *stripeControl) summary(w http.ResponseWriter, r *http.Request) {
	per := map[string]*accountSummary{}
	var total accountSummary
	for _, cus := range c.emu.Customers() {
		name := cus.Account
		if name == "" {
			name = "platform"
		}
		s := per[name]
		if s == nil {
			s = &accountSummary{Balances: map[string]int64{}}
			per[name] = s
		}
		s.Customers++
		s.Transactions += cus.Transactions
		s.Balances[cus.Currency] += cus.Balance
		total.Customers++
		total.Transactions += cus.Transactions
	}
	writeJSON(w, map[string]any{
		"customers": total.Customers, "transactions": total.Transactions,
		"events": len(c.emu.Events()), "accounts": per,
		"requests": c.emu.Requests(), "deliveries": c.emu.DeliveryStats(),
	})
}

// truth handles GET /_emu/truth?account=…&customer=…: the customer's
// transactions, oldest first, as the API serves them.
func (c *stripeControl) truth(w http.ResponseWriter, r *http.Request) {
	r.ParseForm()
	account, cus := accountParam(r.Form.Get("account")), r.Form.Get("customer")
	if _, ok := c.emu.CustomerTruth(account, cus); !ok {
		http.Error(w, fmt.Sprintf("no customer %q in account %q", cus, account), http.StatusNotFound)
		return
	}
	txns := c.emu.TruthFor(account, cus)
	out := make([]json.RawMessage, len(txns))
	for i, t := range txns {
		out[i] = t.Raw
	}
	writeJSON(w, out)
}

func writeErr(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	if errors.Is(err, stripeemu.ErrNotFound) {
		code = http.StatusNotFound
	}
	http.Error(w, err.Error(), code)
}
