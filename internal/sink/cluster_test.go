package sink_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/syncd/syncd/internal/chserver"
	"github.com/syncd/syncd/internal/chtest"
	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/internal/sink"
	"github.com/syncd/syncd/schema"
)

// openCluster opens dsn as syncd does on the test cluster, closed when the
// test ends.
func openCluster(t testing.TB, dsn string, quorum int, create bool) driver.Conn {
	t.Helper()
	conn, err := sink.OpenCluster(context.Background(), dsn, sink.Cluster{Name: chtest.ClusterName, InsertQuorum: quorum}, create)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// migratedCluster creates and migrates a fresh database on c and returns a
// connection to it on each server.
func migratedCluster(t testing.TB, c *chserver.Cluster, quorum int) []driver.Conn {
	t.Helper()
	var conns []driver.Conn
	for i, dsn := range chtest.ClusterDSNs(t, c) {
		conns = append(conns, openCluster(t, dsn, quorum, i == 0))
		if i == 0 {
			if _, err := sink.MigrateCluster(context.Background(), conns[0], chtest.ClusterName); err != nil {
				t.Fatal(err)
			}
		}
	}
	return conns
}

// Migrating a cluster from two servers at once, and again, leaves every
// server with the whole schema, replicated (and on several shards,
// Distributed over the replicated tables), and one ledger they agree on.
func TestMigrateCluster(t *testing.T) {
	migrations, err := schema.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	for _, top := range []chtest.Topology{chtest.OneShardTwoReplicas, chtest.TwoShardsOneReplica} {
		t.Run(top.String(), func(t *testing.T) {
			c := chtest.Cluster(t, top)
			t.Cleanup(func() {
				if t.Failed() {
					for _, s := range c.Servers {
						t.Log(s.LogTail())
					}
				}
			})
			dsns := chtest.ClusterDSNs(t, c)
			ctx := context.Background()
			conns := make([]driver.Conn, len(dsns))
			var wg sync.WaitGroup
			errs := make([]error, len(dsns))
			for i, dsn := range dsns {
				conns[i] = openClusterCreate(t, dsn)
				wg.Go(func() { _, errs[i] = sink.MigrateCluster(ctx, conns[i], chtest.ClusterName) })
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatalf("migrating from %d servers at once: %v", len(dsns), err)
			}
			again, err := sink.MigrateCluster(ctx, conns[1], chtest.ClusterName)
			if err != nil || len(again) != 0 {
				t.Fatalf("second migrate applied %v (err %v), want nothing", again, err)
			}
			for i, conn := range conns {
				if err := sink.SchemaCurrent(ctx, conn); err != nil {
					t.Errorf("server %d: %v", i, err)
				}
				var versions uint64
				if err := conn.QueryRow(ctx, "SELECT uniqExact(version) FROM schema_migrations").Scan(&versions); err != nil || versions != uint64(len(migrations)) {
					t.Errorf("server %d: schema_migrations holds %d versions (err %v), want %d", i, versions, err, len(migrations))
				}
				engines := tableEngines(t, conn)
				for table := range schema.GlobalTables {
					if !strings.HasPrefix(engines[table], "Replicated") {
						t.Errorf("server %d: %s is %q, want replicated on every server", i, table, engines[table])
					}
				}
				for view := range schema.ShardLocalViews {
					if top.Shards > 1 && (engines[view] != "Distributed" || engines[view+schema.LocalSuffix] != "View") {
						t.Errorf("server %d: %s is %q over %q, want a Distributed table over a View", i, view, engines[view], engines[view+schema.LocalSuffix])
					}
				}
				for table := range schema.ShardKeys {
					local, dist := engines[table], ""
					if top.Shards > 1 {
						local, dist = engines[table+schema.LocalSuffix], engines[table]
						if dist != "Distributed" {
							t.Errorf("server %d: %s is %q, want Distributed", i, table, dist)
						}
					}
					if !strings.HasPrefix(local, "Replicated") || !strings.HasSuffix(local, "MergeTree") {
						t.Errorf("server %d: the replicated table of %s is %q", i, table, local)
					}
				}
				for _, view := range []string{"balance_ledger", "customer_balances", "daily_balance_movements", "stripe_deleted_customers"} {
					if engines[view] != "View" && (top.Shards == 1 || !schema.ShardLocalViews[view]) {
						t.Errorf("server %d: %s is %q, want a View", i, view, engines[view])
					}
				}
			}
			// The replicas' state is where the documentation says.
			var paths []string
			rows, err := conns[0].Query(ctx, "SELECT zookeeper_path FROM system.replicas WHERE database = currentDatabase() ORDER BY table")
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var p string
				if err := rows.Scan(&p); err != nil {
					t.Fatal(err)
				}
				paths = append(paths, p)
			}
			rows.Close()
			if len(paths) != len(schema.ShardKeys)+len(schema.GlobalTables) || !strings.HasPrefix(paths[0], "/clickhouse/tables/") {
				t.Errorf("replicas' ZooKeeper paths: %q", paths)
			}
		})
	}
}

func openClusterCreate(t testing.TB, dsn string) driver.Conn {
	t.Helper()
	return openCluster(t, dsn, 0, true)
}

func tableEngines(t testing.TB, conn driver.Conn) map[string]string {
	t.Helper()
	rows, err := conn.Query(context.Background(), "SELECT name, engine FROM system.tables WHERE database = currentDatabase()")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var name, engine string
		if err := rows.Scan(&name, &engine); err != nil {
			t.Fatal(err)
		}
		out[name] = engine
	}
	return out
}

// An identical block inserted twice (a retry of an INSERT whose answer was
// lost) is kept twice on a replicated table, not deduplicated:
// ReplacingMergeTree folds the copies, and no acknowledged row can be
// dropped as a duplicate of another.
func TestClusterKeepsRetriedBlocks(t *testing.T) {
	conns := migratedCluster(t, chtest.Cluster(t, chtest.OneShardTwoReplicas), 0)
	s := sink.New(conns[0], sink.Options{})
	defer s.Close(context.Background())
	r := stripeRow(t, "cbtxn_retried", 100, time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)).Values()
	write(t, s, row.StripeTxnTable, r)
	write(t, s, row.StripeTxnTable, r)
	for i, conn := range conns {
		if n := count(t, conn, "stripe_customer_balance_transactions"); n != 2 {
			t.Errorf("server %d holds %d copies of the block inserted twice, want 2 (insert_deduplicate=0)", i, n)
		}
		if n := count(t, conn, "stripe_customer_balance_transactions FINAL"); n != 1 {
			t.Errorf("server %d: FINAL shows %d rows, want 1", i, n)
		}
	}
}

func count(t testing.TB, conn driver.Conn, from string) uint64 {
	t.Helper()
	var n uint64
	if err := conn.QueryRow(context.Background(), "SELECT count() FROM "+from).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// With the default quorum on two replicas, an acknowledged write is on both
// before its Ack; with one replica stopped, writes are refused at once (a
// webhook answers 503) and the waiting one commits when it is back. With a
// quorum of 1, writes go on with a replica stopped, and it catches up.
func TestClusterQuorum(t *testing.T) {
	c := chtest.PrivateCluster(t, chtest.OneShardTwoReplicas)
	t.Cleanup(func() {
		if t.Failed() {
			for _, s := range c.Servers {
				t.Log(s.LogTail())
			}
		}
	})
	conns := migratedCluster(t, c, 0)
	ctx := context.Background()
	s := sink.New(conns[0], sink.Options{MaxBackoff: 500 * time.Millisecond})
	defer s.Close(ctx)
	rows := func(prefix string, n int) [][]any {
		var out [][]any
		for i := range n {
			out = append(out, stripeRow(t, fmt.Sprintf("cbtxn_%s_%d", prefix, i), int64(i), time.Now()).Values())
		}
		return out
	}
	write(t, s, row.StripeTxnTable, rows("both", 50)...)
	// No wait: the quorum put them on the second replica before the Ack.
	if n := count(t, conns[1], "stripe_customer_balance_transactions"); n != 50 {
		t.Fatalf("the second replica holds %d of 50 acknowledged rows", n)
	}

	if err := c.Servers[1].Stop(); err != nil {
		t.Fatal(err)
	}
	ack, err := s.TryWrite(row.StripeTxnTable, rows("waiting", 10)...)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-ack.Unreachable():
	case <-ack.Done():
		t.Fatalf("a write was acknowledged (err %v) with one of two replicas stopped and a quorum of 2", ack.Err())
	case <-time.After(20 * time.Second):
		t.Fatal("20s after a replica stopped, the sink has not said ClickHouse cannot take writes")
	}
	if _, err := s.TryWrite(row.StripeTxnTable, rows("refused", 1)...); !errors.Is(err, sink.ErrUnavailable) {
		t.Fatalf("TryWrite with a replica down: %v, want ErrUnavailable", err)
	}
	if err := c.Servers[1].Start(ctx); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := ack.Wait(wctx); err != nil {
		t.Fatalf("the waiting write after the replica returned: %v", err)
	}
	for i, conn := range conns {
		if n := count(t, conn, "stripe_customer_balance_transactions FINAL"); n != 60 {
			t.Errorf("server %d holds %d of 60 rows", i, n)
		}
	}

	// A quorum of 1: the sink on the first replica keeps going alone.
	one := sink.New(openCluster(t, c.Servers[0].DSN(currentDatabase(t, conns[0])), 1, false), sink.Options{})
	defer one.Close(ctx)
	if err := c.Servers[1].Stop(); err != nil {
		t.Fatal(err)
	}
	write(t, one, row.StripeTxnTable, rows("alone", 20)...)
	if err := c.Servers[1].Start(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for count(t, conns[1], "stripe_customer_balance_transactions FINAL") != 80 {
		if time.Now().After(deadline) {
			t.Fatalf("the returned replica holds %d of 80 rows after 30s", count(t, conns[1], "stripe_customer_balance_transactions FINAL"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func currentDatabase(t testing.TB, conn driver.Conn) string {
	t.Helper()
	var db string
	if err := conn.QueryRow(context.Background(), "SELECT currentDatabase()").Scan(&db); err != nil {
		t.Fatal(err)
	}
	return db
}
