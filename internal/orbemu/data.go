package orbemu

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"github.com/syncd/syncd/internal/emulator"
)

type generator struct {
	rng  *rand.Rand
	used map[string]bool
}

func newGenerator(seed int64) *generator {
	return &generator{rng: rand.New(rand.NewPCG(uint64(seed), 0x0cb)), used: map[string]bool{}}
}

const idChars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// id returns a fresh Orb-style id: 16 alphanumerics, unique in the world.
func (g *generator) id() string {
	for {
		var b [16]byte
		for i := range b {
			b[i] = idChars[g.rng.IntN(len(idChars))]
		}
		if s := string(b[:]); !g.used[s] {
			g.used[s] = true
			return s
		}
	}
}

// currencies, with the decimals Orb shows for each.
var currencies = []struct {
	code   string
	prec   int32
	weight int
}{{"USD", 2, 50}, {"EUR", 2, 25}, {"JPY", 0, 15}, {"KWD", 3, 10}}

func (g *generator) currency() (string, int32) {
	n := g.rng.IntN(100)
	for _, c := range currencies {
		if n < c.weight {
			return c.code, c.prec
		}
		n -= c.weight
	}
	return "USD", 2
}

// txnCount is skewed: most customers have 0–3 transactions, a few dozens.
func (g *generator) txnCount() int {
	switch n := g.rng.IntN(100); {
	case n < 35:
		return 0
	case n < 60:
		return 1
	case n < 80:
		return 2
	case n < 95:
		return 3
	default:
		return 4 + g.rng.IntN(27)
	}
}

type weighted struct {
	action string
	weight int
}

var (
	incrementActions = []weighted{{"manual_adjustment", 35}, {"credit_note_applied", 20},
		{"prorated_refund", 15}, {"external_payment", 15}, {"return_from_voiding", 15}}
	decrementActions = []weighted{{"applied_to_invoice", 55}, {"manual_adjustment", 15},
		{"revert_prorated_refund", 10}, {"credit_note_voided", 10}, {"overpayment_refund", 10}}
)

func (g *generator) pick(ws []weighted) string {
	return emulator.Pick(g.rng, ws, func(w weighted) int { return w.weight }).action
}

// amount draws a positive amount: mostly at the currency's precision, some
// with up to 12 decimals, some as small as Decimal(38, 12) can hold.
func (g *generator) amount(prec int32) decimal.Decimal {
	switch n := g.rng.IntN(100); {
	case n < 5:
		return decimal.New(int64(1+g.rng.IntN(9)), -12)
	case n < 15:
		return decimal.New(1+g.rng.Int64N(5_000_000_000_000), -12)
	case n < 25:
		return decimal.New(int64(1+g.rng.IntN(100)), 0)
	default:
		return decimal.New(1+g.rng.Int64N(500_000), -2).Mul(decimal.New(1, 2-prec)).Truncate(prec).Add(decimal.New(1, -prec))
	}
}

type draw struct {
	action, typ string
	amount      decimal.Decimal
	amountText  string // as given; empty means formatted from amount
}

// drawTxn picks a transaction that keeps the balance from going negative, as
// a customer's credit balance in Orb does.
func (g *generator) drawTxn(balance decimal.Decimal, prec int32) draw {
	d := draw{amount: g.amount(prec)}
	if balance.GreaterThanOrEqual(d.amount) && g.rng.IntN(100) < 45 {
		d.typ, d.action = "decrement", g.pick(decrementActions)
	} else {
		d.typ, d.action = "increment", g.pick(incrementActions)
	}
	return d
}

var (
	names        = []string{"Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark Industries", "Wayne Enterprises", "Tyrell", "Cyberdyne", "Soylent"}
	descriptions = []string{"An optional description", "Goodwill credit", "Migration from legacy billing", "Promotional credit Q3", "Ünïcödé — crédit 💳", ""}
)

// generate fills the world: Customers ordinary customers, then one per HeavyTxns entry.
func (e *Emulator) generate() {
	g := e.gen
	end := e.cfg.End.UTC().Truncate(time.Second)
	start := end.AddDate(-2, 0, 0)
	counts := make([]int, 0, e.cfg.Customers+len(e.cfg.HeavyTxns))
	for range e.cfg.Customers {
		counts = append(counts, g.txnCount())
	}
	counts = append(counts, e.cfg.HeavyTxns...)
	// Customers are created in order, so the list's newest-first order is
	// also the reverse of creation.
	created := make([]time.Time, len(counts))
	for i := range created {
		created[i] = start.Add(time.Duration(g.rng.Int64N(int64(end.Sub(start)/2)/int64(time.Second))) * time.Second)
	}
	slices.SortFunc(created, func(a, b time.Time) int { return a.Compare(b) })
	for i, n := range counts {
		c := e.newCustomer(created[i])
		times := make([]time.Time, n)
		span := int64(end.Sub(created[i]) / time.Second)
		for j := range times {
			times[j] = created[i].Add(time.Duration(1+g.rng.Int64N(span)) * time.Second)
		}
		slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
		for j, at := range times {
			if j > 0 && !at.After(times[j-1]) {
				at = times[j-1].Add(time.Second)
				times[j] = at
			}
			e.appendTxn(c, g.drawTxn(c.balance, c.prec), at)
		}
	}
}

func (e *Emulator) newCustomer(created time.Time) *customer {
	g := e.gen
	currency, prec := g.currency()
	c := &customer{prec: prec, txnIdx: map[string]int{}}
	c.ID = g.id()
	name := names[g.rng.IntN(len(names))]
	if g.rng.IntN(100) >= 20 {
		ext := fmt.Sprintf("%s-%d", strings.ToLower(strings.Fields(name)[0]), len(e.customers)+1)
		c.ExternalCustomerID = &ext
	}
	c.Name = fmt.Sprintf("%s %d", name, len(e.customers)+1)
	c.Email = fmt.Sprintf("billing+%d@%s.example", len(e.customers)+1, strings.ToLower(strings.Fields(name)[0]))
	c.Currency = currency
	c.CreatedAt = created
	c.Metadata = map[string]string{}
	if g.rng.IntN(100) < 30 {
		c.Metadata["plan"] = []string{"free", "pro", "enterprise"}[g.rng.IntN(3)]
	}
	c.balance = decimal.Zero
	c.Balance = formatDecimal(c.balance, prec)
	c.Raw = marshalCustomer(c)
	e.custIdx[c.ID] = len(e.customers)
	e.customers = append(e.customers, c)
	return c
}

// appendTxn records d as the customer's newest transaction at time at.
func (e *Emulator) appendTxn(c *customer, d draw, at time.Time) *Txn {
	g := e.gen
	ending := c.balance.Add(d.amount)
	if d.typ == "decrement" {
		ending = c.balance.Sub(d.amount)
	}
	amount := d.amountText
	if amount == "" {
		amount = formatDecimal(d.amount, c.prec)
	}
	t := &Txn{
		CustomerID:         c.ID,
		ExternalCustomerID: c.ExternalCustomerID,
		Currency:           c.Currency,
		ID:                 g.id(),
		Action:             d.action,
		Type:               d.typ,
		Amount:             amount,
		StartingBalance:    c.Balance,
		EndingBalance:      formatDecimal(ending, c.prec),
		CreatedAt:          at.UTC(),
	}
	switch d.action {
	case "applied_to_invoice", "prorated_refund", "revert_prorated_refund", "return_from_voiding":
		t.InvoiceID = ptr(g.id())
	case "credit_note_applied":
		t.InvoiceID, t.CreditNoteID = ptr(g.id()), ptr(g.id())
	case "credit_note_voided":
		t.CreditNoteID = ptr(g.id())
	case "manual_adjustment":
		if desc := descriptions[g.rng.IntN(len(descriptions))]; desc != "" {
			t.Description = &desc
		}
	}
	t.Raw = marshalTxn(t)
	c.txnIdx[t.ID] = len(c.txns)
	c.txns = append(c.txns, t)
	c.balance = ending
	c.Balance = t.EndingBalance
	c.Raw = marshalCustomer(c)
	return t
}

// formatDecimal writes d with at least prec and at most 12 decimals, as Orb
// writes "11.00" in USD and "0.000000000001" when it must.
func formatDecimal(d decimal.Decimal, prec int32) string {
	s := d.StringFixed(12)
	whole, frac, _ := strings.Cut(s, ".")
	frac = strings.TrimRight(frac, "0")
	for int32(len(frac)) < prec {
		frac += "0"
	}
	if frac == "" {
		return whole
	}
	return whole + "." + frac
}

func ptr[T any](v T) *T { return &v }

// orbTime is how Orb writes created_at on objects: "2022-05-01T07:01:31+00:00".
const orbTime = "2006-01-02T15:04:05-07:00"

type idRef struct {
	ID string `json:"id"`
}

func ref(id *string) *idRef {
	if id == nil {
		return nil
	}
	return &idRef{ID: *id}
}

// marshalTxn writes the fields in the order of Orb's documented example.
func marshalTxn(t *Txn) []byte {
	b, err := json.Marshal(struct {
		ID              string  `json:"id"`
		Action          string  `json:"action"`
		Amount          string  `json:"amount"`
		CreatedAt       string  `json:"created_at"`
		CreditNote      *idRef  `json:"credit_note"`
		Description     *string `json:"description"`
		EndingBalance   string  `json:"ending_balance"`
		Invoice         *idRef  `json:"invoice"`
		StartingBalance string  `json:"starting_balance"`
		Type            string  `json:"type"`
	}{t.ID, t.Action, t.Amount, t.CreatedAt.Format(orbTime), ref(t.CreditNoteID), t.Description,
		t.EndingBalance, ref(t.InvoiceID), t.StartingBalance, t.Type})
	if err != nil {
		panic(err) // only strings and pointers to them: cannot fail
	}
	return b
}

func marshalCustomer(c *customer) []byte {
	b, err := json.Marshal(struct {
		ID                 string            `json:"id"`
		ExternalCustomerID *string           `json:"external_customer_id"`
		Name               string            `json:"name"`
		Email              string            `json:"email"`
		Currency           string            `json:"currency"`
		Balance            string            `json:"balance"`
		CreatedAt          string            `json:"created_at"`
		Timezone           string            `json:"timezone"`
		Metadata           map[string]string `json:"metadata"`
	}{c.ID, c.ExternalCustomerID, c.Name, c.Email, c.Currency, c.Balance,
		c.CreatedAt.Format(orbTime), "Etc/UTC", c.Metadata})
	if err != nil {
		panic(err)
	}
	return b
}
