package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"go.uber.org/zap"

	"github.com/syncd/syncd/internal/backfill"
	"github.com/syncd/syncd/internal/config"
	"github.com/syncd/syncd/internal/fleet"
	"github.com/syncd/syncd/internal/metrics"
	"github.com/syncd/syncd/internal/ratelimit"
	"github.com/syncd/syncd/internal/sink"
)

// runBackfill pages the source API into ClickHouse; exit 1 unless every
// customer it set out to read is committed and checkpointed.
func runBackfill(ctx context.Context, cfg *config.Config, log *zap.Logger, e env) error {
	conn, err := openCurrent(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	m := metrics.New()
	sk := sink.New(conn, backfill.SinkOptions(sink.Options{BatchRows: cfg.BatchRows, FlushInterval: cfg.FlushInterval,
		QueueRows: cfg.QueueRows, QueueBytes: cfg.QueueBytes, Metrics: m, Logger: log}))
	mode := cfg.Progress
	if mode == "auto" {
		mode = "log"
		if isTerminal(e.stdout) {
			mode = "line"
		}
	}
	var src backfill.Lister = stripeSource(cfg, m, log)
	accounts, allAccounts := cfg.StripeAccounts, cfg.StripeAllAccounts
	if cfg.Provider == config.Orb {
		src, accounts, allAccounts = orbSource(cfg, m, log), nil, false
	}
	leave, err := joinFleet(ctx, conn, cfg.Provider, src.(sharer), log)
	if err != nil {
		return err
	}
	defer leave()
	sum, err := backfill.Run(ctx, backfill.Options{
		Source:       src,
		Conn:         conn,
		Sink:         sk,
		Metrics:      m,
		Logger:       log,
		Accounts:     accounts,
		AllAccounts:  allAccounts,
		Customers:    cfg.Customers,
		Since:        cfg.Since,
		Full:         cfg.Full,
		Concurrency:  cfg.Concurrency,
		Progress:     e.stdout,
		ProgressMode: mode,
	})
	// Rows already queued are committed even when the run failed, so the
	// checkpoints written so far stay true; bounded, as a second signal
	// should not wait on a ClickHouse that is down.
	closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if cerr := sk.Close(closeCtx); cerr != nil && err == nil {
		err = cerr
	}
	fmt.Fprintln(e.stdout, sum)
	log.Info("backfill finished", zap.String("mode", sum.Mode), zap.Int("customers", sum.Customers),
		zap.Int("resumed", sum.Resumed), zap.Int("deleted", sum.Deleted), zap.Int64("rows", sum.Rows), zap.Int64("requests", sum.Requests),
		zap.Int64("retries", sum.Retries), zap.Duration("duration", sum.Duration), zap.Bool("ok", err == nil))
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		return errors.New("backfill interrupted; finished customers are checkpointed: run it again to resume")
	}
	return fmt.Errorf("backfill incomplete: %w", err)
}

// sharer is a source whose rate limit can be split with other processes.
type sharer interface{ SetShare(f float64) }

// joinFleet makes this command a member of the processes spending pool's
// API budget (internal/fleet), with its share of it, until leave is
// called. It fails only when ctx ends; a ClickHouse that cannot take the
// heartbeat leaves the whole limit to this process, with a warning.
func joinFleet(ctx context.Context, conn driver.Conn, pool string, src sharer, log *zap.Logger) (leave func(), err error) {
	member := fleet.New(fleet.Options{Conn: conn, Role: fleet.RoleBackfill, Pool: pool, Logger: log.Named("fleet"),
		OnShare: src.SetShare})
	if err := member.Join(ctx); err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		log.Warn("could not join the fleet; the whole rate limit is spent as if alone", zap.Error(err))
	}
	src.SetShare(member.Share())
	fleetCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	var done sync.WaitGroup
	done.Go(func() { member.Run(fleetCtx) })
	return func() { stop(); done.Wait() }, nil
}

// openCurrent connects to ClickHouse and checks that the schema is migrated.
func openCurrent(ctx context.Context, cfg *config.Config) (driver.Conn, error) {
	conn, err := sink.OpenCluster(ctx, cfg.ClickHouseDSN, clusterOf(cfg), false)
	if err != nil {
		return nil, err
	}
	if err := sink.SchemaCurrent(ctx, conn); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

func stripeSource(cfg *config.Config, m *metrics.Metrics, log *zap.Logger) *backfill.StripeSource {
	return backfill.NewStripeSource(sourceOptions(cfg, config.Stripe, m, log))
}

func orbSource(cfg *config.Config, m *metrics.Metrics, log *zap.Logger) *backfill.OrbSource {
	return backfill.NewOrbSource(sourceOptions(cfg, config.Orb, m, log))
}

// sourceOptions are provider's key, URL and limits as configured.
func sourceOptions(cfg *config.Config, provider string, m *metrics.Metrics, log *zap.Logger) backfill.SourceOptions {
	l := cfg.Limits(provider)
	o := backfill.SourceOptions{APIKey: cfg.StripeAPIKey, URL: cfg.StripeAPIURL, RateLimit: l.Global, EndpointRateLimit: l.Endpoint,
		MaxConcurrent: l.Concurrency, Scope: ratelimit.Scope(cfg.RateLimitScope), Metrics: m, Logger: log}
	if provider == config.Orb {
		o.APIKey, o.URL = cfg.OrbAPIKey, cfg.OrbAPIURL
	}
	return o
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
