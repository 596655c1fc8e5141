package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/chtest"
	"github.com/syncd/syncd/internal/stripeemu"
)

// benchTarget is a database for a benchmark: its DSN and the flags that
// put syncd on its cluster, if any.
type benchTarget struct {
	name  string
	dsn   string
	flags []string
}

// benchTargets migrates a fresh database on one server and one on the
// 1 shard × 2 replicas cluster (default quorum: both replicas), so that a
// benchmark measures both in the same run.
func benchTargets(b *testing.B) []benchTarget {
	b.Helper()
	targets := []benchTarget{
		{name: "one-server", dsn: chtest.DSN(b)},
		{name: chtest.OneShardTwoReplicas.String(), dsn: chtest.ClusterDSNs(b, chtest.Cluster(b, chtest.OneShardTwoReplicas))[0], flags: onCluster},
	}
	for _, tg := range targets {
		args := append([]string{"migrate", "--clickhouse-dsn", tg.dsn}, tg.flags...)
		if err := run(context.Background(), args, func(string) string { return "" }, io.Discard, io.Discard); err != nil {
			b.Fatalf("%s: migrate: %v", tg.name, err)
		}
	}
	return targets
}

// BenchmarkClusterWebhooks: signed Stripe object events POSTed by 32
// concurrent clients to `syncd serve` (in this process) on one server and
// on 1 shard × 2 replicas, where each 200 waits for a quorum INSERT on
// both replicas. Reports acknowledged events/s.
//
//	go test ./cmd/syncd -run '^$' -bench ClusterWebhooks -benchtime 2000x
func BenchmarkClusterWebhooks(b *testing.B) {
	for _, tg := range benchTargets(b) {
		b.Run(tg.name, func(b *testing.B) {
			in := serveInProcess(b, serveArgs(tg.dsn, append([]string{"--stripe-api-key", testAPIKey,
				"--stripe-api-url", "http://127.0.0.1:1", "--stripe-webhook-secret", testSecret}, tg.flags...)...))
			in.ready(b)
			var evs []objectEvent
			for _, ev := range objectEvents(fmt.Sprintf("bench%d", time.Now().UnixNano()), b.N) {
				if !ev.orb {
					evs = append(evs, ev)
				}
			}
			client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 32}}
			var next, refused atomic.Int64
			b.ResetTimer()
			var wg sync.WaitGroup
			for range 32 {
				wg.Go(func() {
					for i := next.Add(1) - 1; i < int64(len(evs)); i = next.Add(1) - 1 {
						if deliver(client, in.web, evs[i].body) != 200 {
							refused.Add(1)
						}
					}
				})
			}
			wg.Wait()
			b.ReportMetric(float64(len(evs))/b.Elapsed().Seconds(), "events/s")
			if n := refused.Load(); n > 0 {
				b.Fatalf("%d of %d webhooks not answered 200", n, len(evs))
			}
		})
	}
}

// BenchmarkClusterBackfill: `syncd backfill --full` (in this process) of an
// emulator without latency or rate limit, into one server and into 1 shard ×
// 2 replicas with the default quorum. Reports transactions/s.
//
//	go test ./cmd/syncd -run '^$' -bench ClusterBackfill -benchtime 2x
func BenchmarkClusterBackfill(b *testing.B) {
	emu, api := emulator(b, stripeemu.Config{Seed: 3, Customers: 2, HeavyCustomers: []int{40000, 40000}}, nil)
	rows := len(emu.Truth())
	for _, tg := range benchTargets(b) {
		b.Run(tg.name, func(b *testing.B) {
			args := append([]string{"backfill", "--full", "--progress", "none", "--clickhouse-dsn", tg.dsn,
				"--stripe-api-key", testAPIKey, "--stripe-api-url", api, "--rate-limit", "100000", "--endpoint-rate-limit", "100000",
				"--max-concurrent-requests", "1000", "--log-level", "error"}, tg.flags...)
			for b.Loop() {
				if err := run(context.Background(), args, func(string) string { return "" }, io.Discard, io.Discard); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(rows*b.N)/b.Elapsed().Seconds(), "txns/s")
		})
	}
}
