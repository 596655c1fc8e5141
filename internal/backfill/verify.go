package backfill

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/syncd/syncd/internal/metrics"
	"github.com/syncd/syncd/internal/row"
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
	Missing           []string // listed by the API, not held
	Extra             []string // held, not listed by the API
	Mismatched        []string // held with other values than the API's
	// Balances are decimals in the currency's unit as the provider counts
	// it: Stripe's minor units, Orb's decimal strings.
	BalanceHeld decimal.Decimal // the newest held transaction's ending_balance
	BalanceAPI  decimal.Decimal // the customer's balance
}

// BalanceDiffers reports whether the held balance is not the API's.
func (d Drift) BalanceDiffers() bool { return !d.BalanceHeld.Equal(d.BalanceAPI) }

// Report is the outcome of a verification.
type Report struct {
	Customers    int
	Transactions int // listed by the API
	Drifts       []Drift
}

// Clean reports whether no drift was found.
func (r *Report) Clean() bool { return len(r.Drifts) == 0 }

// WriteTo prints the drift report.
func (r *Report) WriteTo(w io.Writer) (int64, error) {
	var n int64
	p := func(format string, args ...any) {
		k, _ := fmt.Fprintf(w, format, args...)
		n += int64(k)
	}
	var missing, extra, mismatched, balances int
	for _, d := range r.Drifts {
		missing += len(d.Missing)
		extra += len(d.Extra)
		mismatched += len(d.Mismatched)
		if d.BalanceDiffers() {
			balances++
		}
	}
	for _, d := range r.Drifts {
		p("%s %s:", accountLabel(d.Account), d.Customer)
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
	if r.Clean() {
		p("verify: no drift: %d customers, %d transactions match the API\n", r.Customers, r.Transactions)
	} else {
		p("verify: DRIFT in %d of %d customers: %d missing, %d extra, %d mismatched transactions, %d balances differ\n",
			len(r.Drifts), r.Customers, missing, extra, mismatched, balances)
	}
	return n, nil
}

func accountLabel(a string) string {
	if a == "" {
		return "platform"
	}
	return a
}

func first(ids []string) []string {
	if len(ids) > 5 {
		return ids[:5]
	}
	return ids
}

// heldTxn is the latest held version of one transaction.
type heldTxn struct {
	endingBalance, amount int64
	description           string
	currency, typ         string
}

// Verify compares, for every customer (or o.Customers), the transactions
// held in ClickHouse with those the API lists, and the newest held
// ending_balance with the customer's balance.
func Verify(ctx context.Context, o VerifyOptions) (*Report, error) {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Metrics == nil {
		o.Metrics = metrics.New()
	}
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency(o.Source.RateLimit())
	}
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
	rep := &Report{}
	for _, a := range accounts {
		if err := verifyAccount(ctx, o, a, rep); err != nil {
			return nil, err
		}
	}
	sort.Slice(rep.Drifts, func(i, j int) bool {
		if rep.Drifts[i].Account != rep.Drifts[j].Account {
			return rep.Drifts[i].Account < rep.Drifts[j].Account
		}
		return rep.Drifts[i].Customer < rep.Drifts[j].Customer
	})
	return rep, nil
}

func verifyAccount(ctx context.Context, o VerifyOptions, account string, rep *Report) error {
	customers := o.Customers
	if len(customers) == 0 {
		for cursor := ""; ; {
			ids, next, err := o.Source.CustomerPage(ctx, account, cursor)
			if err != nil {
				return fmt.Errorf("list customers of %s: %w", accountName(account), err)
			}
			customers = append(customers, ids...)
			if next == "" {
				break
			}
			cursor = next
		}
	}
	held, err := heldTxns(ctx, o.Conn, account, o.Customers)
	if err != nil {
		return err
	}

	var mu sync.Mutex
	return eachCustomer(ctx, o.Concurrency, customers, func(ctx context.Context, c string) error {
		d, listed, found, err := verifyCustomer(ctx, o, account, c, held[c])
		if err != nil {
			return fmt.Errorf("verify customer %s of %s: %w", c, accountName(account), err)
		}
		o.Metrics.BackfillCustomer.WithLabelValues("stripe").Inc()
		mu.Lock()
		defer mu.Unlock()
		if found {
			rep.Customers++
			rep.Transactions += listed
		}
		if d != nil {
			rep.Drifts = append(rep.Drifts, *d)
		}
		return nil
	})
}

// eachCustomer calls check for every customer, n at a time. The first
// error cancels the calls not yet made and is returned.
func eachCustomer(ctx context.Context, n int, customers []string, check func(ctx context.Context, customer string) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	jobs := make(chan string)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for c := range jobs {
				if err := check(ctx, c); err != nil {
					cancel(err)
				}
			}
		})
	}
	for _, c := range customers {
		select {
		case jobs <- c:
		case <-ctx.Done():
		}
	}
	close(jobs)
	wg.Wait()
	return context.Cause(ctx)
}

func heldTxns(ctx context.Context, conn driver.Conn, account string, customers []string) (map[string]map[string]heldTxn, error) {
	q := `SELECT customer, id, argMax(ending_balance, _version), argMax(amount, _version),
		argMax(ifNull(description, ''), _version), argMax(currency, _version), argMax(type, _version)
		FROM stripe_customer_balance_transactions WHERE account_id = ?`
	if len(customers) > 0 {
		q += ` AND customer IN (` + sqlStrings(customers) + `)`
	}
	return readHeld(ctx, conn, "held transactions", q+` GROUP BY customer, id`, []any{account},
		func(h *heldTxn) []any { return []any{&h.endingBalance, &h.amount, &h.description, &h.currency, &h.typ} })
}

// readHeld runs q, whose columns are a customer, a transaction id and then
// what fields returns pointers to, and groups the rows by customer and id.
func readHeld[T any](ctx context.Context, conn driver.Conn, what, q string, args []any, fields func(*T) []any) (map[string]map[string]T, error) {
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	defer rows.Close()
	out := map[string]map[string]T{}
	for rows.Next() {
		var c, id string
		var h T
		if err := rows.Scan(append([]any{&c, &id}, fields(&h)...)...); err != nil {
			return nil, fmt.Errorf("read %s: %w", what, err)
		}
		if out[c] == nil {
			out[c] = map[string]T{}
		}
		out[c][id] = h
	}
	return out, rows.Err()
}

// verifyCustomer returns the customer's drift (nil when none), how many
// transactions the API listed, and whether the customer exists.
func verifyCustomer(ctx context.Context, o VerifyOptions, account, customer string, held map[string]heldTxn) (*Drift, int, bool, error) {
	var listedIDs []string
	var mismatched []string
	seen := map[string]bool{}
	_, err := o.Source.Transactions(ctx, account, customer, "", func(p Page) error {
		for _, raw := range p.Items {
			t, err := row.NormalizeStripe(raw, row.Meta{AccountID: account})
			if err != nil {
				return err
			}
			listedIDs = append(listedIDs, t.ID)
			seen[t.ID] = true
			h, ok := held[t.ID]
			if !ok {
				continue
			}
			desc := ""
			if t.Description != nil {
				desc = *t.Description
			}
			if h.amount != t.Amount || h.endingBalance != t.EndingBalance || h.description != desc ||
				h.currency != t.Currency || h.typ != t.Type {
				mismatched = append(mismatched, t.ID)
			}
		}
		return nil
	})
	if NotFound(err) && len(o.Customers) > 0 && len(held) == 0 {
		return nil, 0, false, nil // a chosen customer of another account
	}
	if err != nil {
		return nil, 0, false, err
	}
	body, err := o.Source.GetCustomer(ctx, account, customer)
	if err != nil {
		return nil, 0, false, err
	}
	var cus struct {
		Balance int64 `json:"balance"`
	}
	if err := json.Unmarshal(body, &cus); err != nil {
		return nil, 0, false, fmt.Errorf("decode customer: %w", err)
	}
	d := &Drift{Account: account, Customer: customer, Mismatched: mismatched, BalanceAPI: decimal.NewFromInt(cus.Balance)}
	for _, id := range listedIDs { // newest first: the first held is the newest held
		if h, ok := held[id]; ok {
			d.BalanceHeld = decimal.NewFromInt(h.endingBalance)
			break
		}
	}
	for _, id := range listedIDs {
		if _, ok := held[id]; !ok {
			d.Missing = append(d.Missing, id)
		}
	}
	for id := range held {
		if !seen[id] {
			d.Extra = append(d.Extra, id)
		}
	}
	sort.Strings(d.Extra)
	if len(d.Missing)+len(d.Extra)+len(d.Mismatched) == 0 && !d.BalanceDiffers() {
		return nil, len(listedIDs), true, nil
	}
	return d, len(listedIDs), true, nil
}
