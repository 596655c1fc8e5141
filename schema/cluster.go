package schema

import (
	"fmt"
	"regexp"
	"strings"
)

// Layout is where the schema is created: one server (the zero value), or
// every server of a ClickHouse cluster. The migrations are written once, for
// one server; Rewrite makes a cluster's statements from them.
type Layout struct {
	// Cluster is the name in the servers' remote_servers; "" is one server.
	Cluster string
	// Database is the database the tables go in. On a cluster every name is
	// written with it: ON CLUSTER DDL runs on each server in the database
	// of that server's session, not the migrator's.
	Database string
	// Sharded puts a Distributed table named for each table over the
	// replicated one, which is then named with LocalSuffix: for clusters
	// of more than one shard, where a query must see every shard.
	Sharded bool
}

// LocalSuffix ends the name of a sharded cluster's replicated tables; the
// table's own name is the Distributed table over them, so syncd and
// analysts read and write the same names on every layout.
const LocalSuffix = "_local"

// ShardKeys is the sharding key of every table's Distributed table. Rows that
// ReplacingMergeTree must fold together (one ORDER BY key) and rows that
// FINAL or argMax compare must be on one shard, since neither merges
// across shards: each key is a hash of columns of the table's ORDER BY, and
// a mirror table is sharded by customer, so that each customer's
// transactions, and its balance, live on one shard.
var ShardKeys = map[string]string{
	MigrationsTableName:                    "version",
	"stripe_customer_balance_transactions": "cityHash64(account_id, customer)",
	"orb_customer_balance_transactions":    "cityHash64(customer_id)",
	"stripe_events":                        "cityHash64(id)",
	"orb_events":                           "cityHash64(id)",
	"sync_cursors":                         "cityHash64(provider, account_id, customer)",
	"backfill_runs":                        "cityHash64(provider, account_id)",
	"backfill_customers":                   "cityHash64(provider, account_id, run_id, customer)",
	"stripe_refreshes":                     "cityHash64(account_id, customer)",
	"syncd_members":                        "cityHash64(member)",
}

// GlobalTables are small tables every query on every shard needs whole:
// on a sharded cluster each is replicated on every server (one ZooKeeper
// path for the whole cluster) rather than sharded, and has no Distributed
// table.
var GlobalTables = map[string]bool{"currency_exponents": true}

// ShardLocalViews are the views whose every row is computed from one
// customer's rows (one shard's): on a sharded cluster each is created as a
// view of the shard's own tables, named with LocalSuffix, under a
// Distributed table of its name. A shard then computes its rows whole, and
// the server asked only gathers them: with plain views over the Distributed
// tables, ClickHouse 18.16 crashed a shard's server on queries of
// balance_ledger that read some of its columns. A view over them (daily_balance_movements,
// which sums across customers) reads the Distributed table as any query does.
var ShardLocalViews = map[string]bool{"balance_ledger": true, "customer_balances": true}

// MigrationsTableName is the migration ledger: one row per applied
// migration.
const MigrationsTableName = "schema_migrations"

// MigrationsTable creates the ledger; like every migration it is rewritten
// for a cluster, so that migrators on any of its servers share one ledger.
const MigrationsTable = `CREATE TABLE IF NOT EXISTS schema_migrations (
    version UInt32,
    name String,
    applied_at DateTime('UTC')
) ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version`

// ZooKeeperPath is where a replicated table of the cluster keeps its
// replicas' state: one path per shard, database and table. The database and
// table are written out rather than left to the {database} and {table}
// macros, which older releases do not expand in every version.
func ZooKeeperPath(database, table string) string {
	return "/clickhouse/tables/{shard}/" + database + "/" + table
}

var (
	createTable = regexp.MustCompile(`^CREATE TABLE IF NOT EXISTS (\w+) \(`)
	createView  = regexp.MustCompile(`^CREATE VIEW IF NOT EXISTS (\w+) AS\b`)
	dropTable   = regexp.MustCompile(`^DROP TABLE IF EXISTS (\w+)$`)
	insertInto  = regexp.MustCompile(`^INSERT INTO (\w+)\b`)
	engine      = regexp.MustCompile(`ENGINE = (\w*MergeTree)(?:\(([^)]*)\))?`)
	// A table read by a statement: FROM or JOIN and a name, not a subquery.
	tableRef = regexp.MustCompile(`\b(FROM|JOIN)(\s+)([A-Za-z_]\w*)\b(\.)?`)
)

// Rewrite returns the statements that do what stmt, written for one server,
// does on l: stmt itself on one server; on a cluster, every CREATE and DROP
// made ON CLUSTER, every MergeTree-family engine made Replicated (with
// ZooKeeperPath and the {replica} macro), and every table named with its
// database; sharded, each table but the GlobalTables is named with
// LocalSuffix under a Distributed table of its name, and so is each of the
// ShardLocalViews, a view of its shard's own tables. A statement
// it does not know how to rewrite is an error, so that a migration cannot
// silently stay single-server.
func (l Layout) Rewrite(stmt string) ([]string, error) {
	if l.Cluster == "" {
		return []string{stmt}, nil
	}
	if l.Database == "" {
		return nil, fmt.Errorf("cluster %s: no database to create the schema in", l.Cluster)
	}
	stmt = strings.TrimSpace(stmt)
	onCluster := " ON CLUSTER " + quote(l.Cluster)
	switch {
	case createTable.MatchString(stmt):
		name := createTable.FindStringSubmatch(stmt)[1]
		local, shard := name, "{shard}"
		switch {
		case l.Sharded && GlobalTables[name]:
			shard = "all"
		case l.Sharded:
			local = name + LocalSuffix
		}
		engines := engine.FindAllStringSubmatchIndex(stmt, -1)
		if len(engines) != 1 {
			return nil, fmt.Errorf("table %s: want one MergeTree-family engine, found %d", name, len(engines))
		}
		m := engines[0]
		args := []string{quoteString(strings.Replace(ZooKeeperPath(l.Database, local), "{shard}", shard, 1)), "'{replica}'"}
		if m[4] >= 0 && strings.TrimSpace(stmt[m[4]:m[5]]) != "" {
			args = append(args, stmt[m[4]:m[5]])
		}
		replicated := "ENGINE = Replicated" + stmt[m[2]:m[3]] + "(" + strings.Join(args, ", ") + ")"
		head := "CREATE TABLE IF NOT EXISTS " + l.name(local) + onCluster + " ("
		out := []string{head + stmt[len(createTable.FindString(stmt)):m[0]] + replicated + stmt[m[1]:]}
		if l.Sharded && !GlobalTables[name] {
			key, ok := ShardKeys[name]
			if !ok {
				return nil, fmt.Errorf("table %s has no sharding key in schema.ShardKeys", name)
			}
			out = append(out, l.distributed(name, local, key))
		}
		return out, nil
	case createView.MatchString(stmt):
		name := createView.FindStringSubmatch(stmt)[1]
		rest := stmt[len(createView.FindString(stmt)):]
		if !l.Sharded || !ShardLocalViews[name] {
			return []string{"CREATE VIEW IF NOT EXISTS " + l.name(name) + onCluster + " AS" + l.qualify(rest)}, nil
		}
		local := name + LocalSuffix
		return []string{
			"CREATE VIEW IF NOT EXISTS " + l.name(local) + onCluster + " AS" + l.qualifyLocal(rest),
			l.distributed(name, local, ""),
		}, nil
	case dropTable.MatchString(stmt):
		name := dropTable.FindStringSubmatch(stmt)[1]
		out := []string{"DROP TABLE IF EXISTS " + l.name(name) + onCluster}
		// Sharded, a table or a per-shard view is two: the Distributed
		// table and what it reads.
		if l.Sharded && (ShardLocalViews[name] || ShardKeys[name] != "") {
			out = append(out, "DROP TABLE IF EXISTS "+l.name(name+LocalSuffix)+onCluster)
		}
		return out, nil
	case insertInto.MatchString(stmt):
		// Once, not ON CLUSTER: replication (or the Distributed table)
		// takes the rows to every server that holds them.
		name := insertInto.FindStringSubmatch(stmt)[1]
		return []string{"INSERT INTO " + l.name(name) + l.qualify(stmt[len(insertInto.FindString(stmt)):])}, nil
	}
	first, _, _ := strings.Cut(stmt, "\n")
	return nil, fmt.Errorf("cluster %s: no rewrite for the statement %q", l.Cluster, first)
}

// distributed creates the Distributed table name over each server's local,
// sharding INSERTs by key ("": a table only read).
func (l Layout) distributed(name, local, key string) string {
	args := []string{quote(l.Cluster), quote(l.Database), quote(local)}
	if key != "" {
		args = append(args, key)
	}
	return "CREATE TABLE IF NOT EXISTS " + l.name(name) + " ON CLUSTER " + quote(l.Cluster) + " AS " + l.name(local) +
		" ENGINE = Distributed(" + strings.Join(args, ", ") + ")"
}

// CreateDatabase is the statement that creates the database on l.
func (l Layout) CreateDatabase() string {
	s := "CREATE DATABASE IF NOT EXISTS " + quote(l.Database)
	if l.Cluster != "" {
		s += " ON CLUSTER " + quote(l.Cluster)
	}
	return s
}

// name is table in l's database.
func (l Layout) name(table string) string { return quote(l.Database) + "." + quote(table) }

// qualify names l's database before every table a query reads.
func (l Layout) qualify(query string) string {
	return l.rename(query, func(table string) string { return table })
}

// qualifyLocal is qualify for a query of one shard's own rows: it reads the
// shard's replicated tables and local views instead of the Distributed
// tables over them.
func (l Layout) qualifyLocal(query string) string {
	return l.rename(query, func(table string) string {
		if _, sharded := ShardKeys[table]; sharded || ShardLocalViews[table] {
			return table + LocalSuffix
		}
		return table
	})
}

func (l Layout) rename(query string, local func(string) string) string {
	return tableRef.ReplaceAllStringFunc(query, func(m string) string {
		sub := tableRef.FindStringSubmatch(m)
		if sub[4] != "" { // already database.table
			return m
		}
		return sub[1] + sub[2] + l.name(local(sub[3]))
	})
}

func quote(ident string) string { return "`" + strings.ReplaceAll(ident, "`", "\\`") + "`" }

func quoteString(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}
