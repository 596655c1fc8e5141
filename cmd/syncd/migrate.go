package main

import (
	"context"
	"fmt"

	"go.uber.org/zap"

	"github.com/syncd/syncd/internal/config"
	"github.com/syncd/syncd/internal/sink"
)

func runMigrate(ctx context.Context, cfg *config.Config, log *zap.Logger, e env) error {
	conn, err := sink.OpenCluster(ctx, cfg.ClickHouseDSN, clusterOf(cfg), true)
	if err != nil {
		return err
	}
	defer conn.Close()
	applied, err := sink.MigrateCluster(ctx, conn, cfg.ClickHouseCluster)
	for _, v := range applied {
		log.Info("migration applied", zap.Uint32("version", v))
	}
	if err != nil {
		return err
	}
	if len(applied) == 0 {
		fmt.Fprintln(e.stdout, "schema is current; nothing to apply")
	} else {
		fmt.Fprintf(e.stdout, "applied %d migrations; schema is current\n", len(applied))
	}
	return nil
}

// clusterOf is the ClickHouse cluster cfg names, if any.
func clusterOf(cfg *config.Config) sink.Cluster {
	return sink.Cluster{Name: cfg.ClickHouseCluster, InsertQuorum: cfg.ClickHouseInsertQuorum}
}
