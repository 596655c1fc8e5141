package backfill

import (
	"context"
	"fmt"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/syncd/syncd/internal/metrics"
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

// VerifyOrb is Verify for Orb: every customer (or o.Customers), every
// mirrored column, the newest held ending_balance against the customer's
// balance, and the held rows of customers Orb does not list. Orb answers
// {"id", "deleted": true} for a customer while it deletes it, and 404
// once it has: only the first is told apart from a customer Orb never had.
func VerifyOrb(ctx context.Context, o OrbVerifyOptions) (*Report, error) {
	v := newVerifier(o.Source, orbMirrorTable, o.Conn, o.Metrics, o.Logger, o.Customers, o.Concurrency)
	if err := v.account(ctx, ""); err != nil {
		return nil, err
	}
	return v.report(), nil
}

func (s *OrbSource) customerState(ctx context.Context, _, customer string) (decimal.Decimal, bool, error) {
	c, err := s.Customer(ctx, customer)
	if err != nil {
		return decimal.Decimal{}, false, err
	}
	if c.Deleted || c.Balance == "" {
		return decimal.Decimal{}, c.Deleted, nil
	}
	b, err := decimal.NewFromString(c.Balance)
	if err != nil {
		return decimal.Decimal{}, false, fmt.Errorf("customer %s: balance %q is not a decimal", customer, c.Balance)
	}
	return b, false, nil
}
