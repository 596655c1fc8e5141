package sink

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/syncd/syncd/schema"
)

// Open connects to the ClickHouse server and database named by dsn. With
// create set it first creates the database when it is missing.
func Open(ctx context.Context, dsn string, create bool) (driver.Conn, error) {
	return OpenCluster(ctx, dsn, Cluster{}, create)
}

// Cluster is the ClickHouse cluster syncd's tables are replicated on, and
// what an acknowledged write must have reached there.
type Cluster struct {
	// Name is the cluster's name in the servers' remote_servers; "" means
	// one server, and the rest is unused.
	Name string
	// InsertQuorum is the replicas of a shard an INSERT must be written to
	// before it succeeds (insert_quorum), so before a webhook's 200; 0
	// chooses a majority of the fewest replicas any shard has (2 of 2 or
	// of 3; 1, no quorum, with a single replica per shard).
	InsertQuorum int
}

// quorumTimeout is how long a quorum INSERT waits for its replicas
// (insert_quorum_timeout; ClickHouse's own default is ten minutes): past it
// the INSERT fails, the webhook has answered 503 long before, and the sink
// retries it.
const quorumTimeout = 10 * time.Second

// OpenCluster is Open for a database replicated on cl (Open itself when
// cl.Name is empty). The connection's settings are the cluster's durability
// promise, docs/operations.md "Running on a cluster": insert_quorum (see
// Cluster.InsertQuorum), insert_distributed_sync=1 so that an INSERT into a
// Distributed table returns once every shard has written its rows, and
// insert_deduplicate=0: a replicated table drops an inserted block identical
// to one of its last hundred, and syncd relies on ReplacingMergeTree and
// never on that (a retried INSERT's second copy is folded like any repeated
// observation), so no acknowledged row can be lost to deduplication.
func OpenCluster(ctx context.Context, dsn string, cl Cluster, create bool) (driver.Conn, error) {
	opts, err := clickhouse.ParseDSN(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse --clickhouse-dsn: %w", err)
	}
	if opts.DialTimeout == 0 || opts.DialTimeout > 10*time.Second {
		opts.DialTimeout = 5 * time.Second
	}
	if create && opts.Auth.Database != "" && opts.Auth.Database != "default" {
		bootstrap := *opts
		bootstrap.Auth.Database = "default"
		conn, err := clickhouse.Open(&bootstrap)
		if err != nil {
			return nil, fmt.Errorf("connect to clickhouse at %v: %w", opts.Addr, err)
		}
		layout := schema.Layout{Cluster: cl.Name, Database: opts.Auth.Database}
		err = conn.Exec(ctx, layout.CreateDatabase())
		conn.Close()
		if err != nil {
			return nil, fmt.Errorf("create database %s: %w", opts.Auth.Database, err)
		}
	}
	conn, err := clickhouse.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("connect to clickhouse at %v: %w", opts.Addr, err)
	}
	if err := conn.Ping(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("connect to clickhouse at %v database %q: %w", opts.Addr, opts.Auth.Database, err)
	}
	settings := clickhouse.Settings{}
	// A modern server may take INSERTs asynchronously (async_insert, on by
	// default in recent releases or by a profile): the INSERT then returns
	// before its rows are in a part, or only after a flush timer. syncd's
	// 200 means committed, and its sink batches already, so it asks for
	// synchronous INSERTs wherever the setting exists (21.11 and later;
	// 18.16 refuses settings it does not know, so none is sent there).
	if v, err := conn.ServerVersion(); err == nil && atLeast(v, 21, 11) {
		settings["async_insert"] = 0
	}
	if cl.Name != "" {
		shape, err := clusterShape(ctx, conn, cl.Name)
		if err != nil {
			conn.Close()
			return nil, err
		}
		quorum := cl.InsertQuorum
		if quorum == 0 {
			quorum = shape.minReplicas/2 + 1
		}
		if quorum > shape.minReplicas {
			conn.Close()
			return nil, fmt.Errorf("--clickhouse-insert-quorum %d: cluster %s has a shard of %d replicas, and no INSERT could reach %d", quorum, cl.Name, shape.minReplicas, quorum)
		}
		if quorum > 1 {
			settings["insert_quorum"] = quorum
			settings["insert_quorum_timeout"] = int(quorumTimeout / time.Millisecond)
		}
		settings["insert_distributed_sync"] = 1
		settings["insert_deduplicate"] = 0
	}
	// A setting the DSN gives is the operator's and wins.
	changed := false
	for k, v := range settings {
		if opts.Settings == nil {
			opts.Settings = clickhouse.Settings{}
		}
		if _, set := opts.Settings[k]; !set {
			opts.Settings[k] = v
			changed = true
		}
	}
	if changed {
		conn.Close()
		if conn, err = clickhouse.Open(opts); err != nil {
			return nil, fmt.Errorf("connect to clickhouse at %v: %w", opts.Addr, err)
		}
	}
	return conn, nil
}

// shape is what syncd needs to know of a cluster's layout.
type shape struct {
	shards      int
	minReplicas int // of the shard with the fewest
}

// clusterShape reads the cluster's layout from the server's
// system.clusters; a name the server does not know is an error.
func clusterShape(ctx context.Context, conn driver.Conn, cluster string) (shape, error) {
	var shards, minReplicas uint64
	err := conn.QueryRow(ctx, `SELECT count(), min(n) FROM (
		SELECT shard_num, count() AS n FROM system.clusters WHERE cluster = ? GROUP BY shard_num)`, cluster).Scan(&shards, &minReplicas)
	if err != nil {
		return shape{}, fmt.Errorf("read cluster %s from system.clusters: %w", cluster, err)
	}
	if shards == 0 {
		return shape{}, fmt.Errorf("--clickhouse-cluster %s: the server has no such cluster in its remote_servers (system.clusters)", cluster)
	}
	return shape{int(shards), int(minReplicas)}, nil
}

// atLeast reports whether server v is release major.minor or later.
func atLeast(v *driver.ServerVersion, major, minor uint64) bool {
	return v.Version.Major > major || v.Version.Major == major && v.Version.Minor >= minor
}

// Migrate applies every embedded migration that is not yet recorded in
// schema_migrations, in order, and returns the versions it applied.
// Migrations are idempotent, so two processes migrating at once both succeed.
func Migrate(ctx context.Context, conn driver.Conn) ([]uint32, error) {
	return MigrateCluster(ctx, conn, "")
}

// MigrateCluster is Migrate on every server of cluster ("" is conn's server
// alone), in conn's database: each statement rewritten by schema.Layout,
// with Distributed tables when the cluster has more than one shard.
func MigrateCluster(ctx context.Context, conn driver.Conn, cluster string) ([]uint32, error) {
	migrations, err := schema.Migrations()
	if err != nil {
		return nil, err
	}
	layout, err := layoutOf(ctx, conn, cluster)
	if err != nil {
		return nil, err
	}
	if err := applyOnce(ctx, conn, layout, schema.Migration{Name: "ledger", Statements: []string{schema.MigrationsTable}}); err != nil {
		return nil, fmt.Errorf("create schema_migrations: %w", err)
	}
	applied, err := appliedVersions(ctx, conn)
	if err != nil {
		return nil, err
	}
	var done []uint32
	for _, m := range migrations {
		if applied[m.Version] {
			continue
		}
		if err := apply(ctx, conn, layout, m); err != nil {
			return done, err
		}
		if err := record(ctx, conn, m); err != nil {
			return done, fmt.Errorf("record migration %d: %w", m.Version, err)
		}
		done = append(done, m.Version)
	}
	return done, nil
}

// record writes m into schema_migrations. On a cluster a second migrator's
// quorum INSERT can find the first one's still waiting for its replicas
// (UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE: before ClickHouse 20.x a table
// takes one at a time); it is tried again after a moment.
func record(ctx context.Context, conn driver.Conn, m schema.Migration) error {
	return retry(ctx, []int32{quorumBusy}, func() error {
		b, err := conn.PrepareBatch(ctx, "INSERT INTO schema_migrations (version, name, applied_at)")
		if err != nil {
			return err
		}
		if err := b.Append(m.Version, m.Name, time.Now().UTC()); err != nil {
			_ = b.Abort()
			return err
		}
		return b.Send()
	})
}

// Concurrent migrators can get in each other's way inside one idempotent
// migration: one drops a view (0004 recreates them) just as the other
// creates a view that reads it, and 18.16 checks a view's tables when it is
// created. Such a failure names a table that is missing or already there; the
// whole migration is then applied again, a few times, from its first
// statement.
const migrationAttempts = 10

// raceCodes are the ClickHouse error codes a concurrent migrator can cause:
// UNKNOWN_TABLE and TABLE_ALREADY_EXISTS, and on a cluster before ClickHouse
// 20.x UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE (a table takes one quorum
// INSERT at a time, and two migrators both insert 0003's currency
// exponents).
var raceCodes = []int32{60, 57, quorumBusy}

// quorumBusy is UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE.
const quorumBusy = 286

func apply(ctx context.Context, conn driver.Conn, layout schema.Layout, m schema.Migration) error {
	return retry(ctx, raceCodes, func() error { return applyOnce(ctx, conn, layout, m) })
}

// retry calls f until it succeeds, fails with an error whose code is not
// one of codes, or has failed migrationAttempts times.
func retry(ctx context.Context, codes []int32, f func() error) error {
	for attempt := 1; ; attempt++ {
		err := f()
		var ex *clickhouse.Exception
		if err == nil || attempt == migrationAttempts || !errors.As(err, &ex) || !slices.Contains(codes, ex.Code) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(attempt) * 50 * time.Millisecond):
		}
	}
}

func applyOnce(ctx context.Context, conn driver.Conn, layout schema.Layout, m schema.Migration) error {
	for i, stmt := range m.Statements {
		stmts, err := layout.Rewrite(stmt)
		if err != nil {
			return fmt.Errorf("migration %04d_%s statement %d: %w", m.Version, m.Name, i+1, err)
		}
		for _, s := range stmts {
			if err := conn.Exec(ctx, s); err != nil {
				return fmt.Errorf("migration %04d_%s statement %d: %w", m.Version, m.Name, i+1, err)
			}
		}
	}
	return nil
}

// layoutOf is the schema.Layout of conn's database on cluster.
func layoutOf(ctx context.Context, conn driver.Conn, cluster string) (schema.Layout, error) {
	if cluster == "" {
		return schema.Layout{}, nil
	}
	var db string
	if err := conn.QueryRow(ctx, "SELECT currentDatabase()").Scan(&db); err != nil {
		return schema.Layout{}, fmt.Errorf("read the current database: %w", err)
	}
	sh, err := clusterShape(ctx, conn, cluster)
	if err != nil {
		return schema.Layout{}, err
	}
	return schema.Layout{Cluster: cluster, Database: db, Sharded: sh.shards > 1}, nil
}

func appliedVersions(ctx context.Context, conn driver.Conn) (map[uint32]bool, error) {
	rows, err := conn.Query(ctx, "SELECT DISTINCT version FROM schema_migrations")
	if err != nil {
		return nil, fmt.Errorf("read schema_migrations: %w", err)
	}
	defer rows.Close()
	out := map[uint32]bool{}
	for rows.Next() {
		var v uint32
		if err := rows.Scan(&v); err != nil {
			return nil, fmt.Errorf("read schema_migrations: %w", err)
		}
		out[v] = true
	}
	return out, rows.Err()
}

// SchemaCurrent returns nil when every embedded migration is applied, and
// otherwise an error naming what is missing (readiness uses it).
func SchemaCurrent(ctx context.Context, conn driver.Conn) error {
	migrations, err := schema.Migrations()
	if err != nil {
		return err
	}
	applied, err := appliedVersions(ctx, conn)
	if err != nil {
		return err
	}
	var missing []int
	for _, m := range migrations {
		if !applied[m.Version] {
			missing = append(missing, int(m.Version))
		}
	}
	if len(missing) > 0 {
		sort.Ints(missing)
		return fmt.Errorf("schema is not current: migrations %v not applied (run syncd migrate)", missing)
	}
	return nil
}
