package backfill

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/maphash"
	"io"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/syncd/syncd/internal/metrics"
	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/internal/sink"
)

// VerifyOptions describe one reconciliation of the warehouse against Stripe.
type VerifyOptions struct {
	Source      *StripeSource
	Conn        driver.Conn
	Metrics     *metrics.Metrics
	Logger      *zap.Logger
	Accounts    []string
	AllAccounts bool
	Customers   []string
	Concurrency int
}

// Drift is how one customer's mirror differs from the API.
type Drift struct {
	Account, Customer string
	// Unknown says why the API has no counterpart at all for the rows held
	// (UnknownCustomer, UnknownAccount; all of them are then Extra), and is
	// "" when the API knows the customer.
	Unknown    string
	Missing    []string   // listed by the API, not held
	Extra      []string   // held, not listed by the API
	Mismatched []Mismatch // held with other values than the API's
	// Balances are decimals in the currency's unit as the provider counts
	// it: Stripe's minor units, Orb's decimal strings.
	BalanceHeld decimal.Decimal // the newest held transaction's ending_balance
	BalanceAPI  decimal.Decimal // the customer's balance
}

// Why the API has no counterpart for a customer's rows (Drift.Unknown).
const (
	UnknownCustomer = "customer unknown to the API (404)"
	UnknownAccount  = "account not listed by the API"
)

// Mismatch is a transaction whose newest observation in the warehouse is
// not the API's object: the mirrored columns that differ, in the table's
// order.
type Mismatch struct {
	ID      string
	Columns []string
}

func (m Mismatch) String() string { return m.ID + " (" + strings.Join(m.Columns, ", ") + ")" }

// Deleted is a customer the API reports deleted while the warehouse holds
// its rows, which stay: reported, but not drift.
type Deleted struct {
	Account, Customer string
	Held              int // transactions held
}

// BalanceDiffers reports whether the held balance is not the API's.
func (d Drift) BalanceDiffers() bool { return !d.BalanceHeld.Equal(d.BalanceAPI) }

// Report is the outcome of a verification.
type Report struct {
	Customers    int // customers the API has
	Transactions int // listed by the API
	Drifts       []Drift
	Deleted      []Deleted
}

// Clean reports whether no drift was found.
func (r *Report) Clean() bool { return len(r.Drifts) == 0 }

// WriteTo prints the drift report: a line per drifting customer naming
// what differs, then a line per deleted customer, then a total.
func (r *Report) WriteTo(w io.Writer) (int64, error) {
	var n int64
	p := func(format string, args ...any) {
		k, _ := fmt.Fprintf(w, format, args...)
		n += int64(k)
	}
	var missing, extra, mismatched, balances, unknown int
	for _, d := range r.Drifts {
		missing += len(d.Missing)
		extra += len(d.Extra)
		mismatched += len(d.Mismatched)
		if d.BalanceDiffers() {
			balances++
		}
		if d.Unknown != "" {
			unknown++
		}
	}
	for _, d := range r.Drifts {
		p("%s %s:", accountLabel(d.Account), d.Customer)
		if d.Unknown != "" {
			p(" %s;", d.Unknown)
		}
		if len(d.Missing) > 0 {
			p(" %d missing %v", len(d.Missing), first(d.Missing))
		}
		if len(d.Extra) > 0 {
			p(" %d extra %v", len(d.Extra), first(d.Extra))
		}
		if len(d.Mismatched) > 0 {
			p(" %d mismatched %v", len(d.Mismatched), first(d.Mismatched))
		}
		if d.BalanceDiffers() {
			p(" balance held %s, API %s", d.BalanceHeld, d.BalanceAPI)
		}
		p("\n")
	}
	for _, d := range r.Deleted {
		p("%s %s: deleted in the API; %d transactions held (not drift)\n", accountLabel(d.Account), d.Customer, d.Held)
	}
	deleted := ""
	if len(r.Deleted) > 0 {
		deleted = fmt.Sprintf("; %d deleted customers listed above", len(r.Deleted))
	}
	if r.Clean() {
		p("verify: no drift: %d customers, %d transactions match the API%s\n", r.Customers, r.Transactions, deleted)
	} else {
		p("verify: DRIFT in %d customers (%d of %d the API has, %d unknown to it): %d missing, %d extra, %d mismatched transactions, %d balances differ%s\n",
			len(r.Drifts), len(r.Drifts)-unknown, r.Customers, unknown, missing, extra, mismatched, balances, deleted)
	}
	return n, nil
}

func accountLabel(a string) string {
	if a == "" {
		return "platform"
	}
	return a
}

func first[T any](items []T) []T {
	if len(items) > 5 {
		return items[:5]
	}
	return items
}

// Verify compares, for every customer of the chosen accounts (or
// o.Customers), the newest held observation of each transaction with the
// API's object, every mirrored column, through the normaliser the writers
// use; and the newest held ending_balance with the customer's balance.
// Held rows of customers the API does not list are drift, unless the API
// reports the customer deleted; with AllAccounts, so are rows of accounts
// it does not list.
func Verify(ctx context.Context, o VerifyOptions) (*Report, error) {
	v := newVerifier(o.Source, stripeMirrorTable, o.Conn, o.Metrics, o.Logger, o.Customers, o.Concurrency)
	accounts := []string{""}
	switch {
	case o.AllAccounts:
		acc, err := o.Source.Accounts(ctx)
		if err != nil {
			return nil, err
		}
		accounts = append(accounts, acc...)
	case len(o.Accounts) > 0:
		accounts = o.Accounts
	}
	for _, a := range accounts {
		if err := v.account(ctx, a); err != nil {
			return nil, err
		}
	}
	if o.AllAccounts && len(o.Customers) == 0 {
		if err := v.unlistedAccounts(ctx, accounts); err != nil {
			return nil, err
		}
	}
	return v.report(), nil
}

// verifiable is a source verify reconciles against.
type verifiable interface {
	Lister
	RateLimit() float64
	// customerState reads a customer: its balance as the provider counts
	// it, or that it is deleted. NotFound(err) means the API does not know
	// the customer.
	customerState(ctx context.Context, account, customer string) (balance decimal.Decimal, deleted bool, err error)
}

func (s *StripeSource) customerState(ctx context.Context, account, customer string) (decimal.Decimal, bool, error) {
	body, err := s.GetCustomer(ctx, account, customer)
	if err != nil {
		return decimal.Decimal{}, false, err
	}
	var c struct {
		Balance int64 `json:"balance"`
		Deleted bool  `json:"deleted"`
	}
	if err := json.Unmarshal(body, &c); err != nil {
		return decimal.Decimal{}, false, fmt.Errorf("decode customer %s: %w", customer, err)
	}
	return decimal.NewFromInt(c.Balance), c.Deleted, nil
}

// mirrorTable names what verify reads of a provider's mirror table.
type mirrorTable struct {
	sink.Table
	account         string // "" when the provider has no accounts
	customer, id    string
	ending, created string
	idx             map[string]int // column → position in Table.Columns
	columns         string         // the mirrored columns, quoted for a SELECT
}

var (
	stripeMirrorTable = newMirrorTable(row.StripeTxnTable, "account_id", "customer", "id", "ending_balance", "created")
	orbMirrorTable    = newMirrorTable(row.OrbTxnTable, "", "customer_id", "id", "ending_balance", "created_at")
)

func newMirrorTable(t sink.Table, account, customer, id, ending, created string) *mirrorTable {
	m := &mirrorTable{Table: t, account: account, customer: customer, id: id, ending: ending, created: created,
		idx: map[string]int{}}
	var cols []string
	for i, c := range t.Columns {
		m.idx[c] = i
		if row.Mirrored(c) {
			cols = append(cols, "`"+c+"`")
		}
	}
	m.columns = strings.Join(cols, ", ")
	for _, c := range []string{customer, id, ending, created} {
		if _, ok := m.idx[c]; !ok {
			panic("backfill: table " + t.Name + " has no column " + c)
		}
	}
	return m
}

// verifier reconciles one provider's mirror customer by customer, as the
// API lists them: what it holds at once is a hash of each of an account's
// customers, the held rows of two batches of heldBatch customers, and the
// API pages of the customers being checked.
type verifier struct {
	src     verifiable
	t       *mirrorTable
	conn    driver.Conn
	m       *metrics.Metrics
	log     *zap.Logger
	chosen  []string // only these customers; every customer when empty
	workers int

	mu  sync.Mutex
	rep Report
}

func newVerifier(src verifiable, t *mirrorTable, conn driver.Conn, m *metrics.Metrics, log *zap.Logger, chosen []string, concurrency int) *verifier {
	if log == nil {
		log = zap.NewNop()
	}
	if m == nil {
		m = metrics.New()
	}
	if concurrency <= 0 {
		concurrency = DefaultConcurrency(src.RateLimit())
	}
	return &verifier{src: src, t: t, conn: conn, m: m, log: log, chosen: chosen, workers: concurrency}
}

// account verifies every customer of account the API lists (or the chosen
// ones), as the listing goes, then the customers of account whose rows are
// held although the API did not list them.
func (v *verifier) account(ctx context.Context, account string) error {
	check := func(ctx context.Context, j heldCustomer) error {
		if err := v.customer(ctx, account, j.customer, j.held); err != nil {
			return fmt.Errorf("verify customer %s of %s: %w", j.customer, accountName(account), err)
		}
		return nil
	}
	if len(v.chosen) > 0 {
		return eachCustomer(ctx, v.workers, v.batches(account, v.chosen), check)
	}
	// The listed customers, as hashes: 8 bytes each, so that an account
	// of millions is remembered in tens of MiB at most.
	seed := maphash.MakeSeed()
	var listed []uint64
	cursor, last := "", false
	err := eachCustomer(ctx, v.workers, v.feed(account, func(ctx context.Context) ([]string, bool, error) {
		if last {
			return nil, true, nil
		}
		ids, next, err := v.src.CustomerPage(ctx, account, cursor)
		if err != nil {
			return nil, false, fmt.Errorf("list customers of %s: %w", accountName(account), err)
		}
		for _, c := range ids {
			listed = append(listed, maphash.String(seed, c))
		}
		cursor, last = next, next == ""
		return ids, false, nil
	}), check)
	if err != nil {
		return err
	}
	// Deleted customers, customers unknown to the API, and customers
	// created since the listing.
	slices.Sort(listed)
	var unlisted []string
	err = v.distinct(ctx, v.t.customer, v.t.account, account, func(c string) {
		if _, ok := slices.BinarySearch(listed, maphash.String(seed, c)); !ok {
			unlisted = append(unlisted, c)
		}
	})
	if err != nil {
		return err
	}
	return eachCustomer(ctx, v.workers, v.batches(account, unlisted), check)
}

// unlistedAccounts reports the rows held for accounts the API did not list:
// every customer of them is drift.
func (v *verifier) unlistedAccounts(ctx context.Context, listed []string) error {
	var accounts []string
	if err := v.distinct(ctx, v.t.account, "", "", func(a string) {
		if !slices.Contains(listed, a) {
			accounts = append(accounts, a)
		}
	}); err != nil {
		return err
	}
	for _, a := range accounts {
		var customers []string
		if err := v.distinct(ctx, v.t.customer, v.t.account, a, func(c string) { customers = append(customers, c) }); err != nil {
			return err
		}
		err := eachCustomer(ctx, v.workers, v.batches(a, customers), func(ctx context.Context, j heldCustomer) error {
			return v.unknown(ctx, &Drift{Account: a, Customer: j.customer, Unknown: UnknownAccount}, j.held)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// distinct calls fn with each distinct value of column held, of the rows
// whose column where equals value (all rows when where is "").
func (v *verifier) distinct(ctx context.Context, column, where, value string, fn func(string)) error {
	q := "SELECT DISTINCT " + column + " FROM " + v.t.Name
	var args []any
	if where != "" {
		q += " WHERE " + where + " = ?"
		args = append(args, value)
	}
	rows, err := v.conn.Query(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("read the held values of %s: %w", column, err)
	}
	defer rows.Close()
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return fmt.Errorf("read the held values of %s: %w", column, err)
		}
		fn(s)
	}
	return rows.Err()
}

// heldCustomer is a customer to verify and the newest observation of each
// transaction held for it, by id.
type heldCustomer struct {
	customer string
	held     map[string][]any
}

// heldBatch is how many customers' rows one query reads: one query per
// customer would cost ClickHouse more than the API calls it checks.
const heldBatch = 100

// batches feeds eachCustomer the customers, heldBatch at a time.
func (v *verifier) batches(account string, customers []string) func(context.Context, func(heldCustomer) bool) error {
	return v.feed(account, func(context.Context) ([]string, bool, error) {
		chunk := customers[:min(heldBatch, len(customers))]
		customers = customers[len(chunk):]
		return chunk, len(chunk) == 0, nil
	})
}

// feed feeds eachCustomer the customers next returns, batch after batch
// until it says done, each with its held rows: one query per batch, made
// while the customers of the batch before are verified.
func (v *verifier) feed(account string, next func(context.Context) (customers []string, done bool, err error)) func(context.Context, func(heldCustomer) bool) error {
	type batch struct {
		customers []string
		held      map[string]map[string][]any
		err       error
	}
	return func(ctx context.Context, send func(heldCustomer) bool) error {
		ctx, cancel := context.WithCancel(ctx)
		batches := make(chan batch, 1)
		defer func() {
			cancel()
			for range batches { // the reader has stopped once it is closed
			}
		}()
		go func() {
			defer close(batches)
			for {
				var b batch
				var done bool
				b.customers, done, b.err = next(ctx)
				if done && b.err == nil {
					return
				}
				if b.err == nil && len(b.customers) > 0 {
					b.held, b.err = v.held(ctx, account, b.customers)
				}
				select {
				case batches <- b:
				case <-ctx.Done():
					return
				}
				if b.err != nil {
					return
				}
			}
		}()
		for b := range batches {
			if b.err != nil {
				return b.err
			}
			for _, c := range b.customers {
				if !send(heldCustomer{customer: c, held: b.held[c]}) {
					return nil
				}
			}
		}
		return nil
	}
}

// customer verifies one customer of account, whose held rows are held.
func (v *verifier) customer(ctx context.Context, account, customer string, held map[string][]any) error {
	d := &Drift{Account: account, Customer: customer}
	seen := map[string]bool{}
	table, idCol := v.t.Table, v.t.idx[v.t.id]
	newest, listErr := v.src.Transactions(ctx, account, customer, "", func(p Page) error {
		for _, raw := range p.Items {
			vals, err := v.src.Row(raw, row.Meta{AccountID: account, CustomerID: customer})
			if err != nil {
				return err
			}
			id, _ := plainString(vals[idCol])
			seen[id] = true
			h, ok := held[id]
			if !ok {
				d.Missing = append(d.Missing, id)
				continue
			}
			if cols := row.DiffMirrored(table, vals, h); len(cols) > 0 {
				d.Mismatched = append(d.Mismatched, Mismatch{ID: id, Columns: cols})
			}
		}
		return nil
	})
	if listErr != nil && !NotFound(listErr) {
		return listErr
	}
	v.m.BackfillCustomer.WithLabelValues(v.src.Provider()).Inc()
	balance, deleted, err := v.src.customerState(ctx, account, customer)
	switch {
	case NotFound(err):
		// Not in this account (a chosen customer is looked for in every
		// one), or never was: drift when rows are held.
		return v.unknown(ctx, &Drift{Account: account, Customer: customer, Unknown: UnknownCustomer}, held)
	case err != nil:
		return err
	case deleted:
		v.log.Info("customer deleted in the API; its rows stay", zap.String("account", account),
			zap.String("customer", customer), zap.Int("held", len(held)))
		v.mu.Lock()
		v.rep.Deleted = append(v.rep.Deleted, Deleted{Account: account, Customer: customer, Held: len(held)})
		v.mu.Unlock()
		return nil
	case listErr != nil:
		return listErr // the customer exists, yet its transactions are not found
	}
	d.BalanceAPI = balance
	d.BalanceHeld = v.heldBalance(held, newest)
	for id := range held {
		if !seen[id] {
			d.Extra = append(d.Extra, id)
		}
	}
	if d.Extra, err = v.notSuperseded(ctx, account, customer, d.Extra); err != nil {
		return err
	}
	sort.Strings(d.Missing)
	sort.Slice(d.Mismatched, func(i, j int) bool { return d.Mismatched[i].ID < d.Mismatched[j].ID })
	v.mu.Lock()
	defer v.mu.Unlock()
	v.rep.Customers++
	v.rep.Transactions += len(seen)
	if len(d.Missing)+len(d.Extra)+len(d.Mismatched) > 0 || d.BalanceDiffers() {
		v.rep.Drifts = append(v.rep.Drifts, *d)
	}
	return nil
}

// unknown records d, a customer whose held rows have no counterpart in the
// API, unless every one of them was observed since under another customer.
func (v *verifier) unknown(ctx context.Context, d *Drift, held map[string][]any) error {
	var ids []string
	for id := range held {
		ids = append(ids, id)
	}
	ids, err := v.notSuperseded(ctx, d.Account, d.Customer, ids)
	if err != nil || len(ids) == 0 {
		return err
	}
	d.Extra = ids
	v.mu.Lock()
	defer v.mu.Unlock()
	v.rep.Drifts = append(v.rep.Drifts, *d)
	return nil
}

// heldBalance is the ending balance of the newest held transaction: the
// API's newest, when held, else the newest held by (created, id).
func (v *verifier) heldBalance(held map[string][]any, apiNewest string) decimal.Decimal {
	end, created := v.t.idx[v.t.ending], v.t.idx[v.t.created]
	h, ok := held[apiNewest]
	if !ok {
		var newestID string
		for id, vals := range held {
			if h == nil || newer(vals[created], h[created], id, newestID) {
				h, newestID = vals, id
			}
		}
	}
	if h == nil {
		return decimal.Decimal{}
	}
	switch b := h[end].(type) {
	case int64:
		return decimal.NewFromInt(b)
	case decimal.Decimal:
		return b
	}
	return decimal.Decimal{}
}

// newer orders two held transactions by created (a and b, times as held),
// then id.
func newer(a, b any, idA, idB string) bool {
	ta, _ := a.(interface{ Unix() int64 })
	tb, _ := b.(interface{ Unix() int64 })
	if ta == nil || tb == nil || ta.Unix() == tb.Unix() {
		return idA > idB
	}
	return ta.Unix() > tb.Unix()
}

// held reads the newest observation of each transaction held for each of
// customers (of account), by customer and id, in the table's column order
// (syncd's own columns nil).
func (v *verifier) held(ctx context.Context, account string, customers []string) (map[string]map[string][]any, error) {
	where, args := v.t.customer+" IN ("+sqlStrings(customers)+")", []any(nil)
	if v.t.account != "" {
		where, args = v.t.account+" = ? AND "+where, []any{account}
	}
	rows, err := v.conn.Query(ctx, "SELECT "+v.t.columns+" FROM "+v.t.Name+" WHERE "+where+
		" ORDER BY "+v.t.customer+", "+v.t.id+", _version DESC LIMIT 1 BY "+v.t.customer+", "+v.t.id, args...)
	if err != nil {
		return nil, fmt.Errorf("read the held transactions of %d customers: %w", len(customers), err)
	}
	defer rows.Close()
	types := rows.ColumnTypes()
	at := make([]int, len(types))
	for i, ct := range types {
		at[i] = v.t.idx[ct.Name()]
	}
	idCol, customerCol := v.t.idx[v.t.id], v.t.idx[v.t.customer]
	out := map[string]map[string][]any{}
	for rows.Next() {
		dest := make([]any, len(types))
		for i, ct := range types {
			dest[i] = reflect.New(ct.ScanType()).Interface()
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("read the held transactions of %d customers: %w", len(customers), err)
		}
		vals := make([]any, len(v.t.Columns))
		for i, d := range dest {
			vals[at[i]] = reflect.ValueOf(d).Elem().Interface()
		}
		c, _ := vals[customerCol].(string)
		id, _ := vals[idCol].(string)
		if out[c] == nil {
			out[c] = map[string][]any{}
		}
		out[c][id] = vals
	}
	return out, rows.Err()
}

// notSuperseded returns, sorted, the ids among ids whose newest observation
// is the customer's: a transaction observed since under another customer or
// account (the mirror corrected) is not this customer's drift.
func (v *verifier) notSuperseded(ctx context.Context, account, customer string, ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	accountCol := "''"
	if v.t.account != "" {
		accountCol = v.t.account
	}
	var out []string
	for chunk := range slices.Chunk(ids, 1000) {
		rows, err := v.conn.Query(ctx, "SELECT "+v.t.id+", "+accountCol+", "+v.t.customer+" FROM "+v.t.Name+
			" WHERE "+v.t.id+" IN ("+sqlStrings(chunk)+") ORDER BY "+v.t.id+", _version DESC LIMIT 1 BY "+v.t.id)
		if err != nil {
			return nil, fmt.Errorf("read the newest observations of %d transactions: %w", len(chunk), err)
		}
		for rows.Next() {
			var id, a, c string
			if err := rows.Scan(&id, &a, &c); err != nil {
				rows.Close()
				return nil, fmt.Errorf("read the newest observations of %d transactions: %w", len(chunk), err)
			}
			if a == account && c == customer {
				out = append(out, id)
			}
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, err
		}
	}
	sort.Strings(out)
	return out, nil
}

func (v *verifier) report() *Report {
	v.mu.Lock()
	defer v.mu.Unlock()
	rep := v.rep
	byKey := func(a1, c1, a2, c2 string) bool {
		if a1 != a2 {
			return a1 < a2
		}
		return c1 < c2
	}
	sort.Slice(rep.Drifts, func(i, j int) bool {
		return byKey(rep.Drifts[i].Account, rep.Drifts[i].Customer, rep.Drifts[j].Account, rep.Drifts[j].Customer)
	})
	sort.Slice(rep.Deleted, func(i, j int) bool {
		return byKey(rep.Deleted[i].Account, rep.Deleted[i].Customer, rep.Deleted[j].Account, rep.Deleted[j].Customer)
	})
	return &rep
}

// plainString is a String column's value as Values gives it (a *string)
// or as it is read back (a string).
func plainString(v any) (string, bool) {
	switch s := v.(type) {
	case string:
		return s, true
	case *string:
		if s != nil {
			return *s, true
		}
	}
	return "", false
}

// eachCustomer calls check for every job feed sends, n at a time, as feed
// sends them. The first error, of feed or of a check, cancels the calls
// not yet made and is returned.
func eachCustomer[J any](ctx context.Context, n int, feed func(ctx context.Context, send func(J) bool) error,
	check func(ctx context.Context, job J) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	jobs := make(chan J)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for j := range jobs {
				if ctx.Err() != nil {
					continue
				}
				if err := check(ctx, j); err != nil {
					cancel(err)
				}
			}
		})
	}
	err := feed(ctx, func(j J) bool {
		select {
		case jobs <- j:
			return true
		case <-ctx.Done():
			return false
		}
	})
	if err != nil {
		cancel(err)
	}
	close(jobs)
	wg.Wait()
	return context.Cause(ctx)
}
