package chtest

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/chserver"
)

// ClusterName is the name the test clusters have in their remote_servers.
const ClusterName = "syncd_test"

// Topology is a cluster's shape.
type Topology struct{ Shards, Replicas int }

// The topologies the cluster tests run on: replicas of one shard, and
// shards of one replica each behind Distributed tables.
var (
	OneShardTwoReplicas = Topology{Shards: 1, Replicas: 2}
	TwoShardsOneReplica = Topology{Shards: 2, Replicas: 1}
)

func (t Topology) String() string { return fmt.Sprintf("%dshard×%dreplica", t.Shards, t.Replicas) }

// The clusters shared by the tests of one test binary, one per topology,
// started on first use and stopped by Main.
var clusters struct {
	mu   sync.Mutex
	live map[Topology]*sharedCluster
}

type sharedCluster struct {
	c   *chserver.Cluster
	dir string
	err error
}

// Cluster returns the cluster of topology top shared by the test binary
// (stopped by Main): a ZooKeeper and Debian's ClickHouse server
// (EngineServer, whatever chserver.EnvEngine says: only it takes a cluster's
// configuration). Tests that stop its servers must use PrivateCluster.
// Cluster tests start several processes, so they skip under -short (CI's
// first pass runs without it); without ZooKeeper or a server the test is
// skipped, or fails when CI=true.
func Cluster(t testing.TB, top Topology) *chserver.Cluster {
	t.Helper()
	skipShort(t)
	clusters.mu.Lock()
	defer clusters.mu.Unlock()
	if clusters.live == nil {
		clusters.live = map[Topology]*sharedCluster{}
	}
	sc := clusters.live[top]
	if sc == nil {
		sc = &sharedCluster{}
		clusters.live[top] = sc
		sc.dir, sc.err = os.MkdirTemp("", "syncd-chtest-cluster-")
		if sc.err == nil {
			sc.c, sc.err = startCluster(sc.dir, top)
		}
	} else if sc.c != nil {
		if why := sc.c.Exited(); why != "" {
			t.Fatalf("chtest: the shared %s cluster lost a server: %s", top, why)
		}
	}
	if sc.err != nil {
		unavailable(t, os.Getenv, sc.err)
		return nil
	}
	return sc.c
}

// PrivateCluster starts a cluster of the test's own, stopped when the test
// ends: for tests that stop and start its servers. Same rules as Cluster.
func PrivateCluster(t testing.TB, top Topology) *chserver.Cluster {
	t.Helper()
	skipShort(t)
	c, err := startCluster(t.TempDir(), top)
	if err != nil {
		unavailable(t, os.Getenv, err)
		return nil
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
	})
	return c
}

func skipShort(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("chtest: a ClickHouse cluster test; skipped under -short (make test runs it)")
	}
}

func startCluster(dir string, top Topology) (*chserver.Cluster, error) {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	return chserver.StartCluster(ctx, dir, ClusterName, top.Shards, top.Replicas)
}

// ClusterDSNs returns, for each server of c in order, a DSN of one fresh,
// uniquely named database, not yet created: `syncd migrate` with the
// cluster creates it on every server. It is dropped on the cluster when the
// test ends, unless the test failed.
func ClusterDSNs(t testing.TB, c *chserver.Cluster) []string {
	t.Helper()
	db := fmt.Sprintf("syncd_test_%d_%s", dbSeq.Add(1), randHex(4))
	var out []string
	for _, s := range c.Servers {
		out = append(out, s.DSN(db))
	}
	admin := Conn(t, c.Servers[0].DSN("default"))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("chtest: kept database %s on the cluster for inspection", db)
			return
		}
		if c.Exited() != "" {
			return
		}
		// Bounded: ON CLUSTER waits for every server, and a test may
		// end with one stopped.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+db+" ON CLUSTER "+ClusterName); err != nil {
			t.Logf("chtest: drop database %s on the cluster: %v", db, err)
		}
	})
	return out
}

// stopClusters stops the shared clusters (Main).
func stopClusters() {
	clusters.mu.Lock()
	defer clusters.mu.Unlock()
	for top, sc := range clusters.live {
		if sc.c != nil {
			if err := sc.c.Stop(); err != nil {
				fmt.Fprintf(os.Stderr, "chtest: stop the %s cluster: %v\n", top, err)
			}
		}
		if sc.dir != "" {
			os.RemoveAll(sc.dir)
		}
		delete(clusters.live, top)
	}
}
