package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"

	"github.com/shopspring/decimal"

	"github.com/syncd/syncd/internal/orbapi"
	"github.com/syncd/syncd/internal/orbemu"
	"github.com/syncd/syncd/internal/ratelimit"
)

// orbLimits are Orb's documented limits in live or test mode.
func orbLimits(live bool) ratelimit.Limits {
	l := orbapi.DefaultLimits()
	if live {
		l.Global = orbapi.LiveRate
	}
	return l
}

func newOrb(o options, mux *http.ServeMux) (emulator, error) {
	if len(o.accounts) > 1 || (len(o.accounts) == 1 && o.accounts[0] != "") {
		return nil, errors.New("orb has no accounts: leave --accounts at platform")
	}
	emu, err := orbemu.New(orbemu.Config{
		Seed: o.seed, Customers: o.customers, HeavyTxns: o.heavy, End: o.end,
		Latency: o.latency, Rate429: o.rate429, Rate500: o.rate500,
		WebhookURL: o.webhookURL, WebhookSecret: o.webhookSecret, Limits: o.limitsFor(orbLimits(o.livemode)),
	})
	if err != nil {
		return nil, err
	}
	c := &orbControl{emu: emu, rng: rand.New(rand.NewPCG(uint64(o.seed), 0x0eb))}
	mux.HandleFunc("POST /_emu/mutate", c.mutate)
	mux.HandleFunc("GET /_emu/truth/summary", c.summary)
	mux.HandleFunc("GET /_emu/truth", c.truth)
	return emu, nil
}

// orbControl serves the Orb emulator's /_emu/ routes. Its rng draws the
// customers, actions and amounts of mutations.
type orbControl struct {
	emu *orbemu.Emulator
	mu  sync.Mutex
	rng *rand.Rand
}

// orbActions are the actions mutations draw from, as Orb names them.
var orbActions = []string{"manual_adjustment", "applied_to_invoice", "credit_note_applied", "return_from_voiding"}

// mutate handles POST /_emu/mutate?n=20[&customer=…]: n transactions on
// random customers (or the one named), each emitting its signed
// customer.balance_transaction_created webhook.
func (c *orbControl) mutate(w http.ResponseWriter, r *http.Request) {
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
	var ids []string
	if id := r.Form.Get("customer"); id != "" {
		ids = []string{id}
	} else {
		for _, cus := range c.emu.Customers() {
			ids = append(ids, cus.ID)
		}
	}
	if len(ids) == 0 {
		http.Error(w, "no customers", http.StatusNotFound)
		return
	}
	out := make([]json.RawMessage, 0, n)
	for range n {
		id, action, typ, amount := c.draw(ids)
		t, err := c.emu.AddTransaction(id, action, typ, amount)
		if err != nil {
			code := http.StatusInternalServerError
			if errors.Is(err, orbemu.ErrNotFound) {
				code = http.StatusNotFound
			}
			http.Error(w, err.Error(), code)
			return
		}
		out = append(out, t.Raw)
	}
	writeJSON(w, out)
}

// draw picks a customer, an action, a direction and an amount of 0.01 to
// 500.00, now and then with sub-cent digits as Orb allows.
func (c *orbControl) draw(ids []string) (id, action, typ, amount string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id = ids[c.rng.IntN(len(ids))]
	action = orbActions[c.rng.IntN(len(orbActions))]
	typ = "increment"
	if c.rng.IntN(2) == 0 {
		typ = "decrement"
	}
	places := int32(2)
	if c.rng.IntN(10) == 0 {
		places = 12
	}
	units := 1 + c.rng.Int64N(50000)
	amt := decimal.New(units, -2)
	if places == 12 {
		amt = amt.Add(decimal.New(1+c.rng.Int64N(999999999), -12))
	}
	return id, action, typ, amt.StringFixed(places)
}

// summary handles GET /_emu/truth/summary: customers, transactions, the
// balance per currency, events, and request and delivery counters.
func (c *orbControl) summary(w http.ResponseWriter, r *http.Request) {
	balances := map[string]decimal.Decimal{}
	transactions := 0
	customers := c.emu.Customers()
	for _, cus := range customers {
		transactions += len(c.emu.TruthFor(cus.ID))
		if b, err := decimal.NewFromString(cus.Balance); err == nil {
			balances[cus.Currency] = balances[cus.Currency].Add(b)
		}
	}
	writeJSON(w, map[string]any{
		"customers": len(customers), "transactions": transactions, "balances": balances,
		"events": len(c.emu.Events()), "requests": c.emu.Requests(), "deliveries": c.emu.DeliveryStats(),
	})
}

// truth handles GET /_emu/truth?customer=…: the customer's transactions,
// oldest first, as the API serves them.
func (c *orbControl) truth(w http.ResponseWriter, r *http.Request) {
	r.ParseForm()
	id := r.Form.Get("customer")
	if _, ok := c.emu.CustomerTruth(id); !ok {
		http.Error(w, fmt.Sprintf("no customer %q", id), http.StatusNotFound)
		return
	}
	txns := c.emu.TruthFor(id)
	out := make([]json.RawMessage, len(txns))
	for i, t := range txns {
		out[i] = t.Raw
	}
	writeJSON(w, out)
}
