package main

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/syncd/syncd/internal/backfill"
	"github.com/syncd/syncd/internal/config"
	"github.com/syncd/syncd/internal/metrics"
)

// runVerify prints the drift between ClickHouse and the source API; exit 1
// when there is any.
func runVerify(ctx context.Context, cfg *config.Config, log *zap.Logger, e env) error {
	conn, err := openCurrent(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	m := metrics.New()
	var src sharer
	if cfg.Provider == config.Orb {
		src = orbSource(cfg, m, log)
	} else {
		src = stripeSource(cfg, m, log)
	}
	// verify spends the same API budget as serve and backfill.
	leave, err := joinFleet(ctx, conn, cfg.Provider, src, log)
	if err != nil {
		return err
	}
	defer leave()
	var rep *backfill.Report
	if cfg.Provider == config.Orb {
		rep, err = backfill.VerifyOrb(ctx, backfill.OrbVerifyOptions{
			Source:      src.(*backfill.OrbSource),
			Conn:        conn,
			Metrics:     m,
			Logger:      log,
			Customers:   cfg.Customers,
			Concurrency: cfg.Concurrency,
		})
	} else {
		rep, err = backfill.Verify(ctx, backfill.VerifyOptions{
			Source:      src.(*backfill.StripeSource),
			Conn:        conn,
			Metrics:     m,
			Logger:      log,
			Accounts:    cfg.StripeAccounts,
			AllAccounts: cfg.StripeAllAccounts,
			Customers:   cfg.Customers,
			Concurrency: cfg.Concurrency,
		})
	}
	if err != nil {
		return fmt.Errorf("verify could not finish: %w", err)
	}
	if _, err := rep.WriteTo(e.stdout); err != nil {
		return err
	}
	if !rep.Clean() {
		return &exitError{code: 1, err: errors.New("drift found (see the report above)")}
	}
	return nil
}
