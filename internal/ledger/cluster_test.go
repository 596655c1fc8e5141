package ledger_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/syncd/syncd/internal/chtest"
	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/internal/sink"
)

// The views, every docs/queries.md query and every dashboard query answer
// on a cluster — 1 shard × 2 replicas, and 2 shards × 1 replica behind
// Distributed tables — as on one server, asked of either server of the
// cluster, with the same rows written the same way (through the first).
func TestQueriesOnClusters(t *testing.T) {
	w := build(t)
	customer := w.busiestCustomer(t)
	victim, orbVictim := w.chainBreaks(customer)
	loadInto := func(conn driver.Conn) {
		w.writeTo(t, conn)
		write(t, conn, row.StripeTxnTable, stripeRows(victim)...)
		write(t, conn, row.OrbTxnTable, orbRows(orbVictim)...)
	}
	single := migrated(t)
	loadInto(single)
	dbs := []database{{label: "one server", conn: single}}
	for _, top := range []chtest.Topology{chtest.OneShardTwoReplicas, chtest.TwoShardsOneReplica} {
		c := chtest.Cluster(t, top)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		var conns []driver.Conn
		for i, dsn := range chtest.ClusterDSNs(t, c) {
			conn, err := sink.OpenCluster(ctx, dsn, sink.Cluster{Name: chtest.ClusterName}, i == 0)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { conn.Close() })
			conns = append(conns, conn)
		}
		if _, err := sink.MigrateCluster(ctx, conns[0], chtest.ClusterName); err != nil {
			t.Fatalf("%s: %v", top, err)
		}
		cancel()
		loadInto(conns[0])
		for i, conn := range conns {
			dbs = append(dbs, database{label: top.String() + " server " + string(rune('1'+i)), conn: conn})
		}
	}
	var statements []statement
	for _, st := range schemaStatements() {
		// A sharded cluster also holds the replicated tables under the
		// Distributed ones, columns alike: the names syncd and analysts
		// use are compared.
		st.sql = strings.Replace(st.sql, "WHERE database = currentDatabase()",
			"WHERE database = currentDatabase() AND NOT endsWith(table, '_local')", 1)
		statements = append(statements, st)
	}
	compareAnswers(t, append(statements, readStatements(t, docQueries(t), customer)...), dbs, nil)
}
