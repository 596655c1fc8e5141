package backfill

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/syncd/syncd/internal/metrics"
	"github.com/syncd/syncd/internal/row"
)

// OrbVerifyOptions describe one reconciliation of the warehouse against Orb.
type OrbVerifyOptions struct {
	Source      *OrbSource
	Conn        driver.Conn
	Metrics     *metrics.Metrics
	Logger      *zap.Logger
	Customers   []string // only these; every customer when empty
	Concurrency int
}

// orbHeld is the latest held version of one Orb transaction.
type orbHeld struct {
	amount, ending decimal.Decimal
	typ, currency  string
	created        time.Time
}

// VerifyOrb compares, for every customer (or o.Customers), the transactions
// held in ClickHouse with those Orb lists, and the newest held
// ending_balance (by created_at, then id) with the customer's balance.
func VerifyOrb(ctx context.Context, o OrbVerifyOptions) (*Report, error) {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Metrics == nil {
		o.Metrics = metrics.New()
	}
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency(o.Source.RateLimit())
	}
	customers := o.Customers
	if len(customers) == 0 {
		for cursor := ""; ; {
			ids, next, err := o.Source.CustomerPage(ctx, "", cursor)
			if err != nil {
				return nil, fmt.Errorf("list orb customers: %w", err)
			}
			customers = append(customers, ids...)
			if next == "" {
				break
			}
			cursor = next
		}
	}
	held, err := orbHeldTxns(ctx, o.Conn, o.Customers)
	if err != nil {
		return nil, err
	}

	rep := &Report{}
	var mu sync.Mutex
	err = eachCustomer(ctx, o.Concurrency, customers, func(ctx context.Context, c string) error {
		d, listed, err := verifyOrbCustomer(ctx, o.Source, c, held[c])
		if err != nil {
			return fmt.Errorf("verify orb customer %s: %w", c, err)
		}
		o.Metrics.BackfillCustomer.WithLabelValues(providerOrb).Inc()
		mu.Lock()
		defer mu.Unlock()
		rep.Customers++
		rep.Transactions += listed
		if d != nil {
			rep.Drifts = append(rep.Drifts, *d)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(rep.Drifts, func(i, j int) bool { return rep.Drifts[i].Customer < rep.Drifts[j].Customer })
	return rep, nil
}

func orbHeldTxns(ctx context.Context, conn driver.Conn, customers []string) (map[string]map[string]orbHeld, error) {
	q := `SELECT customer_id, id, argMax(amount, _version), argMax(ending_balance, _version),
		argMax(type, _version), argMax(currency, _version), argMax(created_at, _version)
		FROM orb_customer_balance_transactions`
	if len(customers) > 0 {
		q += ` WHERE customer_id IN (` + sqlStrings(customers) + `)`
	}
	return readHeld(ctx, conn, "held orb transactions", q+` GROUP BY customer_id, id`, nil,
		func(h *orbHeld) []any { return []any{&h.amount, &h.ending, &h.typ, &h.currency, &h.created} })
}

// verifyOrbCustomer returns the customer's drift (nil when none) and how
// many transactions Orb listed.
func verifyOrbCustomer(ctx context.Context, src *OrbSource, customer string, held map[string]orbHeld) (*Drift, int, error) {
	d := &Drift{Customer: customer}
	seen := map[string]bool{}
	_, err := src.Transactions(ctx, "", customer, "", func(p Page) error {
		for _, raw := range p.Items {
			t, err := src.txn(raw, row.Meta{CustomerID: customer})
			if err != nil {
				return err
			}
			seen[t.ID] = true
			h, ok := held[t.ID]
			switch {
			case !ok:
				d.Missing = append(d.Missing, t.ID)
			case !h.amount.Equal(t.Amount) || !h.ending.Equal(t.EndingBalance) || h.typ != t.Type || h.currency != t.Currency:
				d.Mismatched = append(d.Mismatched, t.ID)
			}
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	cus, err := src.Customer(ctx, customer)
	if err != nil {
		return nil, 0, err
	}
	if cus.Balance != "" {
		if d.BalanceAPI, err = decimal.NewFromString(cus.Balance); err != nil {
			return nil, 0, fmt.Errorf("customer balance %q is not a decimal", cus.Balance)
		}
	}
	var newestID string
	var newest orbHeld
	for id, h := range held {
		if !seen[id] {
			d.Extra = append(d.Extra, id)
		}
		if newestID == "" || h.created.After(newest.created) || (h.created.Equal(newest.created) && id > newestID) {
			newestID, newest = id, h
		}
	}
	d.BalanceHeld = newest.ending
	sort.Strings(d.Extra)
	if len(d.Missing)+len(d.Extra)+len(d.Mismatched) == 0 && !d.BalanceDiffers() {
		return nil, len(seen), nil
	}
	return d, len(seen), nil
}
