package main

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/syncd/syncd/internal/chserver"
	"github.com/syncd/syncd/internal/chtest"
	"github.com/syncd/syncd/internal/sink"
	"github.com/syncd/syncd/internal/stripeemu"
)

// onCluster is the flag that puts syncd on the test cluster.
var onCluster = []string{"--clickhouse-cluster", chtest.ClusterName}

// clusterMigrated migrates a fresh database on c with the binary, from
// every server at once, checks a further run has nothing to do, and
// returns the database's DSN on each server and a connection to each.
func clusterMigrated(t *testing.T, bin string, c *chserver.Cluster) ([]string, []driver.Conn) {
	t.Helper()
	dsns := chtest.ClusterDSNs(t, c)
	var wg sync.WaitGroup
	outs, errs := make([]string, len(dsns)), make([]error, len(dsns))
	for i, dsn := range dsns {
		wg.Go(func() {
			out, err := exec.Command(bin, append([]string{"migrate", "--clickhouse-dsn", dsn}, onCluster...)...).CombinedOutput()
			outs[i], errs[i] = string(out), err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("migrate through server %d: %v\n%s", i+1, err, outs[i])
		}
	}
	out, err := exec.Command(bin, append([]string{"migrate", "--clickhouse-dsn", dsns[len(dsns)-1]}, onCluster...)...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "nothing to apply") {
		t.Fatalf("migrate again: %v\n%s", err, out)
	}
	var conns []driver.Conn
	for _, dsn := range dsns {
		conn, err := sink.OpenCluster(context.Background(), dsn, sink.Cluster{Name: chtest.ClusterName}, false)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		if err := sink.SchemaCurrent(context.Background(), conn); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
	}
	return dsns, conns
}

// On each test topology: migrate from two processes at once, a backfill
// through one server, verify through the other, webhooks into a serve
// process killed with SIGKILL mid-stream and restarted on the other server,
// and every acknowledged event and the refresh it triggered found through
// either server; verify then finds no drift through either.
func TestClusterEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds syncd and starts ClickHouse clusters")
	}
	bin := buildSyncd(t)
	for _, top := range []chtest.Topology{chtest.OneShardTwoReplicas, chtest.TwoShardsOneReplica} {
		t.Run(top.String(), func(t *testing.T) {
			dsns, conns := clusterMigrated(t, bin, chtest.Cluster(t, top))
			emu, api := emulator(t, stripeemu.Config{Seed: 5, Customers: 16, Latency: 10 * time.Millisecond}, nil)
			cli := func(dsn string, args ...string) (string, int) {
				return stripeCLI(t, dsn, api)(append(args, onCluster...)...)
			}
			if out, code := cli(dsns[0], "backfill", "--progress", "none"); code != 0 {
				t.Fatalf("backfill through server 1: exit %d\n%s", code, out)
			}
			if out, code := cli(dsns[1], "verify"); code != 0 || !strings.Contains(out, "verify: no drift") {
				t.Fatalf("verify through server 2 after the backfill: exit %d\n%s", code, out)
			}

			args := func(dsn string) []string {
				return serveArgs(dsn, append([]string{"--stripe-api-key", testAPIKey, "--stripe-api-url", api,
					"--stripe-webhook-secret", testSecret, "--rate-limit", "50"}, onCluster...)...)
			}
			evs := mutate(t, emu, emu.Customers(), -99)
			p := startProcess(t, bin, args(dsns[0]))
			p.ready(t)
			var mu sync.Mutex
			addr := p.web
			target := func() string { mu.Lock(); defer mu.Unlock(); return addr }
			kill, killed := killAt(p, len(evs)/4, nil)
			first := stream(evs, 40, target, kill)
			<-killed
			p2 := startProcess(t, bin, args(dsns[1]))
			p2.ready(t)
			mu.Lock()
			addr = p2.web
			mu.Unlock()
			var retry []stripeemu.Event
			acked := 0
			for _, s := range first {
				if s.code == 200 {
					acked++
				} else {
					retry = append(retry, s.ev)
				}
			}
			if acked == 0 || len(retry) == 0 {
				t.Fatalf("%d of %d acknowledged before the kill: the kill was not mid-stream", acked, len(first))
			}
			second := stream(retry, 100, target, nil)
			for _, s := range second {
				if s.code != 200 {
					t.Errorf("retry of %s after restart: %d", s.ev.ID, s.code)
				}
			}
			for i, conn := range conns {
				customers := acknowledged(t, emu, conn, append(first, second...))
				t.Logf("server %d: %d events, %d acknowledged before SIGKILL, %d retried; %d customers converged",
					i+1, len(evs), acked, len(retry), len(customers))
			}
			for i, dsn := range dsns {
				if out, code := cli(dsn, "verify"); code != 0 || !strings.Contains(out, "verify: no drift") {
					t.Errorf("verify through server %d after the webhooks: exit %d\n%s", i+1, code, out)
				}
			}
		})
	}
}

// One of two replicas stops while webhooks stream in. With the default
// quorum (2 of 2) the webhooks are answered 503 until it is back, and none
// answered 200 is lost; with a quorum of 1 they are answered 200 and the
// replica catches up when it returns. Either way every acknowledged event
// and its refresh are on both replicas in the end.
func TestClusterReplicaStops(t *testing.T) {
	if testing.Short() {
		t.Skip("builds syncd and starts a ClickHouse cluster")
	}
	bin := buildSyncd(t)
	c := chtest.PrivateCluster(t, chtest.OneShardTwoReplicas)
	for _, quorum := range []int{0, 1} {
		t.Run(fmt.Sprintf("quorum %d", quorum), func(t *testing.T) {
			dsns, conns := clusterMigrated(t, bin, c)
			emu, api := emulator(t, stripeemu.Config{Seed: 7, Customers: 24, Latency: 10 * time.Millisecond}, nil)
			p := startProcess(t, bin, serveArgs(dsns[0], append([]string{"--stripe-api-key", testAPIKey, "--stripe-api-url", api,
				"--stripe-webhook-secret", testSecret, "--rate-limit", "50",
				"--clickhouse-insert-quorum", fmt.Sprint(quorum)}, onCluster...)...))
			p.ready(t)
			target := func() string { return p.web }
			customers := emu.Customers()
			third := len(customers) / 3
			before := stream(mutate(t, emu, customers[:third], -7), 40, target, nil)
			if err := c.Servers[1].Stop(); err != nil {
				t.Fatal(err)
			}
			during := stream(mutate(t, emu, customers[third:2*third], -7), 40, target, nil)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := c.Servers[1].Start(ctx); err != nil {
				t.Fatal(err)
			}
			after := stream(mutate(t, emu, customers[2*third:], -7), 40, target, nil)

			codes := func(ss []sent) map[int]int {
				m := map[int]int{}
				for _, s := range ss {
					m[s.code]++
				}
				return m
			}
			t.Logf("answers before the stop %v, while stopped %v, after %v", codes(before), codes(during), codes(after))
			if n := codes(before)[200]; n != len(before) {
				t.Errorf("%d of %d webhooks answered 200 with both replicas up", n, len(before))
			}
			if quorum == 1 {
				if n := codes(during)[200]; n != len(during) {
					t.Errorf("quorum 1: %d of %d webhooks answered 200 with a replica stopped, want all", n, len(during))
				}
			} else if n := codes(during)[503]; n != len(during) {
				t.Errorf("quorum of both replicas: %d of %d webhooks answered 503 with one stopped, want all", n, len(during))
			}
			var retry []stripeemu.Event
			for _, s := range append(append(during, before...), after...) {
				if s.code != 200 {
					retry = append(retry, s.ev)
				}
			}
			// Stripe retries what was refused; the replica is back.
			deadline := time.Now().Add(time.Minute)
			var retried []sent
			for len(retry) > 0 {
				if time.Now().After(deadline) {
					t.Fatalf("%d webhooks still refused a minute after the replica returned", len(retry))
				}
				var again []stripeemu.Event
				for _, s := range stream(retry, 100, target, nil) {
					if s.code == 200 {
						retried = append(retried, s)
					} else {
						again = append(again, s.ev)
					}
				}
				retry = again
				time.Sleep(200 * time.Millisecond)
			}
			all := append(append(append(before, during...), after...), retried...)
			for _, conn := range conns {
				acknowledged(t, emu, conn, all)
			}
		})
	}
}
