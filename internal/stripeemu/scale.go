package stripeemu

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
)

// Scale describes a large world generated compactly: each account is a
// customer count and a seed, and a customer and its transactions are drawn
// from their own seeds whenever a request needs them, so a million
// customers cost a few bytes of memory each (the accounts) instead of
// their objects. Such a world is read-only: it serves the API's reads, and
// its mutations (AddTransaction, AddCustomer, DeleteCustomer,
// EditDescription) answer ErrReadOnly.
type Scale struct {
	// Customers in all, over the platform and Accounts connected accounts,
	// skewed: the account of rank r (in a seeded order) has a share
	// proportional to 1/r, so a few accounts hold most of them.
	Customers int
	Accounts  int // connected accounts (acct_…) besides the platform
}

// ErrReadOnly reports a mutation of a world generated from a Scale.
var ErrReadOnly = errors.New("stripeemu: a scaled world is read-only")

// lazyAccount is a scaled account: customer i of n is generated from seed
// and i on demand. Customers are created in index order, spread over the
// seeded history, so the index is the list order.
type lazyAccount struct {
	id       string
	seed     uint64
	n        int
	start    int64 // customer 0's created
	span     int64 // customer i is created at start + i*span/n
	end      int64
	livemode bool

	mu    sync.Mutex
	cache map[int]*customer // customers generated with their transactions, recently used
	order []int             // cache keys, oldest first
	held  int               // transactions in cache
}

// Bounds of the cache of generated customers: a heavy customer's pages are
// read one after another, so a few hundred customers suffice.
const (
	lazyCacheCustomers = 256
	lazyCacheTxns      = 100_000
)

// customer id: "cus_" + the index in 5 base-62 digits + 9 seeded
// characters (14 in all, as Stripe's). Transaction id: "cbtxn_" + its
// index in 4 digits + 20 seeded characters.
const (
	lazyCustomerDigits = 5
	lazyTxnDigits      = 4
)

func base62(v, width int) string {
	b := make([]byte, width)
	for i := width - 1; i >= 0; i-- {
		b[i] = idChars[v%len(idChars)]
		v /= len(idChars)
	}
	return string(b)
}

func unbase62(s string) (int, bool) {
	v := 0
	for i := range len(s) {
		d := -1
		switch ch := s[i]; {
		case ch >= '0' && ch <= '9':
			d = int(ch - '0')
		case ch >= 'A' && ch <= 'Z':
			d = int(ch-'A') + 10
		case ch >= 'a' && ch <= 'z':
			d = int(ch-'a') + 36
		default:
			return 0, false
		}
		v = v*len(idChars) + d
	}
	return v, true
}

// generateScaled fills e with the accounts of cfg.Scale. Called once from
// New, before e is shared.
func (e *Emulator) generateScaled() {
	sc, end, g := e.cfg.Scale, e.cfg.End.Unix(), e.gen
	ids := []string{""}
	seen := map[string]bool{}
	for len(ids) < sc.Accounts+1 {
		if id := g.id("acct_", 16); !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	// Shares by rank 1/r over a seeded order of the accounts; the
	// remainder of the rounding goes to the largest ones.
	rank := g.rng.Perm(len(ids))
	var total float64
	for r := range ids {
		total += 1 / float64(r+1)
	}
	counts := make([]int, len(ids))
	left := sc.Customers
	for k := range ids {
		counts[k] = int(float64(sc.Customers) / float64(rank[k]+1) / total)
		left -= counts[k]
	}
	for r := 0; left > 0; r = (r + 1) % len(ids) {
		counts[slices.Index(rank, r)]++
		left--
	}
	e.accountIDs = ids
	for k, id := range ids {
		a := newAccount(id)
		a.created = end - history - 86400*int64(1+g.rng.IntN(365))
		a.seq = g.next()
		a.raw = marshalAccount(a, e.cfg.Livemode)
		// The newest customer is two days old: every customer's history
		// has a second for each of its transactions.
		a.lazy = &lazyAccount{id: id, seed: g.rng.Uint64(), n: counts[k], start: end - history,
			span: history - 2*86400, end: end, livemode: e.cfg.Livemode, cache: map[int]*customer{}}
		e.accounts[id] = a
	}
}

func (l *lazyAccount) created(i int) int64 { return l.start + int64(i)*l.span/int64(max(l.n, 1)) }

func (l *lazyAccount) key(i int) (int64, int64) { return l.created(i), int64(i) }

// index finds the customer an id names.
func (l *lazyAccount) index(id string) (int, bool) {
	if len(id) != len("cus_")+lazyCustomerDigits+9 || id[:4] != "cus_" {
		return 0, false
	}
	i, ok := unbase62(id[4 : 4+lazyCustomerDigits])
	if !ok || i >= l.n {
		return 0, false
	}
	return i, l.idOf(i) == id
}

// idOf is customer i's id: the first draws of its seed, as lite draws them.
func (l *lazyAccount) idOf(i int) string {
	g := &generator{rng: rand.New(rand.NewPCG(l.seed, uint64(i)))}
	return "cus_" + base62(i, lazyCustomerDigits) + g.id("", 9)
}

// lazyTxnCount draws a customer's transactions: most have none, a few
// thousands.
func lazyTxnCount(rng *rand.Rand) int {
	switch u := rng.Float64(); {
	case u < 0.80:
		return 0
	case u < 0.95:
		return 1 + rng.IntN(3)
	case u < 0.99:
		return 4 + rng.IntN(27)
	case u < 0.999:
		return 30 + rng.IntN(270)
	default:
		return 300 + rng.IntN(2700)
	}
}

// lazyDraw is a customer's own randomness: its fields and, per
// transaction, a seed of its own, so a transaction is drawn without
// drawing those before it.
type lazyDraw struct {
	c     *customer
	seed  uint64
	count int
}

// lite generates customer i without its transactions, its balance included.
func (l *lazyAccount) lite(i int) lazyDraw {
	rng := rand.New(rand.NewPCG(l.seed, uint64(i)))
	g := &generator{rng: rng}
	c := &customer{Customer: Customer{Account: l.id,
		ID:       "cus_" + base62(i, lazyCustomerDigits) + g.id("", 9),
		Currency: g.currency(), Created: l.created(i), Livemode: l.livemode}, seq: int64(i)}
	n := 1 + rng.IntN(99999)
	c.Email = fmt.Sprintf("customer%05d@example.com", n)
	c.name = fmt.Sprintf("Customer %05d", n)
	if rng.IntN(4) == 0 {
		c.metadata = map[string]string{"crm_id": fmt.Sprint(rng.IntN(1e6))}
	}
	d := lazyDraw{c: c, seed: rng.Uint64(), count: lazyTxnCount(rng)}
	for j := range d.count {
		c.Balance += d.draw(j).amount
	}
	c.Transactions = d.count
	c.raw = marshalCustomer(c, c.Balance)
	return d
}

func (d lazyDraw) rng(j int) *rand.Rand { return rand.New(rand.NewPCG(d.seed, uint64(j))) }

// draw is transaction j's type and amount: the first draws of its seed.
func (d lazyDraw) draw(j int) draw {
	return (&generator{rng: d.rng(j)}).amountFor(j == 0, d.c.Currency)
}

// full generates customer i with its transactions, or takes it from the
// cache.
func (l *lazyAccount) full(i int) *customer {
	l.mu.Lock()
	c, ok := l.cache[i]
	l.mu.Unlock()
	if ok {
		return c
	}
	d := l.lite(i)
	c = d.c
	c.txnByID = make(map[string]*txn, d.count)
	c.txns = make([]*txn, d.count)
	first := c.Created + 60
	slot := (l.end - first) / int64(d.count+1)
	var balance int64
	for j := range d.count {
		rng := d.rng(j)
		g := &generator{rng: rng}
		dr := g.amountFor(j == 0, c.Currency)
		balance += dr.amount
		t := &txn{Txn: Txn{Account: l.id, Customer: c.ID, Amount: dr.amount, Currency: c.Currency,
			Created: first + int64(j)*slot + rng.Int64N(max(slot, 1)), Type: dr.typ,
			EndingBalance: balance, Livemode: l.livemode}, seq: int64(j)}
		t.ID = "cbtxn_" + base62(j, lazyTxnDigits) + g.id("", 20)
		g.fillTxn(&t.Txn)
		t.Raw = marshalTxn(&t.Txn)
		c.txns[j] = t
		c.txnByID[t.ID] = t
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.cache[i]; !ok {
		l.cache[i] = c
		l.order = append(l.order, i)
		l.held += d.count
		for len(l.order) > 1 && (len(l.order) > lazyCacheCustomers || l.held > lazyCacheTxns) {
			old := l.order[0]
			l.order = l.order[1:]
			l.held -= len(l.cache[old].txns)
			delete(l.cache, old)
		}
	}
	return c
}

// customerPage serves GET /v1/customers of a scaled account.
func (l *lazyAccount) customerPage(lq listQuery) ([][]byte, bool, *apiError) {
	ck, aerr := resolveCursors(lq, "customer", func(id string) (int64, int64, bool) {
		i, ok := l.index(id)
		if !ok {
			return 0, 0, false
		}
		c, s := l.key(i)
		return c, s, true
	})
	if aerr != nil {
		return nil, false, aerr
	}
	from, to, more := pageRange(l.n, l.key, lq, ck)
	out := make([][]byte, 0, to-from)
	for i := to - 1; i >= from; i-- {
		out = append(out, l.lite(i).c.raw)
	}
	return out, more, nil
}

// customerByID finds a scaled account's customer: with its transactions
// when full.
func (l *lazyAccount) customerByID(id string, full bool) (*customer, bool) {
	i, ok := l.index(id)
	if !ok {
		return nil, false
	}
	if full {
		return l.full(i), true
	}
	return l.lite(i).c, true
}

// lazyNeeded counts the requests that read a scaled account in full: its
// customer list pages, and for each customer its transaction list pages
// (one even without any).
func (l *lazyAccount) needed() (customers, txns, requests int64) {
	requests = int64(max(1, int(math.Ceil(float64(l.n)/100))))
	for i := range l.n {
		d := l.lite(i)
		txns += int64(d.count)
		requests += int64(max(1, (d.count+99)/100))
	}
	return int64(l.n), txns, requests
}

// World is the size of the generated world and the fewest API requests
// that read all of it: every account's customer list pages, and every
// customer's balance transaction pages (one for a customer without any).
type World struct {
	Accounts     int64 `json:"accounts"`
	Customers    int64 `json:"customers"`
	Transactions int64 `json:"transactions"`
	Requests     int64 `json:"requests"`
	// ListRequests are those of Requests that list accounts and
	// customers; the rest read balance transactions, one endpoint.
	ListRequests int64 `json:"list_requests"`
}

// World measures the world as it stands.
func (e *Emulator) World() World {
	e.mu.RLock()
	defer e.mu.RUnlock()
	w := World{Accounts: int64(len(e.accountIDs)), Requests: 1, ListRequests: 1} // the account list
	for _, id := range e.accountIDs {
		a := e.accounts[id]
		if a.lazy != nil {
			c, t, r := a.lazy.needed()
			w.Customers += c
			w.Transactions += t
			w.Requests += r
			w.ListRequests += int64(max(1, int(math.Ceil(float64(c)/100))))
			continue
		}
		w.Customers += int64(len(a.customers))
		w.Requests += int64(max(1, (len(a.customers)+99)/100))
		w.ListRequests += int64(max(1, (len(a.customers)+99)/100))
		for _, c := range a.customers {
			w.Transactions += int64(len(c.txns))
			w.Requests += int64(max(1, (len(c.txns)+99)/100))
		}
	}
	return w
}
