package schema

import (
	"regexp"
	"slices"
	"strings"
	"testing"
)

// allStatements is the ledger's statement and every migration's.
func allStatements(t *testing.T) []string {
	t.Helper()
	ms, err := Migrations()
	if err != nil {
		t.Fatal(err)
	}
	out := []string{MigrationsTable}
	for _, m := range ms {
		out = append(out, m.Statements...)
	}
	return out
}

var (
	orderBy    = regexp.MustCompile(`(?m)^ORDER BY \(?([^)\n]*)\)?$`)
	hashedCols = regexp.MustCompile(`^(?:cityHash64\((.*)\)|(\w+))$`)
)

// Every table has a sharding key, and the key hashes columns of its ORDER
// BY only: the rows ReplacingMergeTree folds into one, and FINAL compares,
// land on one shard.
func TestShardKeysFollowOrderBy(t *testing.T) {
	seen := map[string]bool{}
	for _, stmt := range allStatements(t) {
		m := createTable.FindStringSubmatch(stmt)
		if m == nil {
			continue
		}
		table := m[1]
		seen[table] = true
		if GlobalTables[table] {
			if _, ok := ShardKeys[table]; ok {
				t.Errorf("%s is global (replicated on every shard) and has a sharding key", table)
			}
			continue
		}
		key, ok := ShardKeys[table]
		if !ok {
			t.Errorf("table %s has no entry in ShardKeys", table)
			continue
		}
		ob := orderBy.FindStringSubmatch(stmt)
		if ob == nil {
			t.Fatalf("table %s: no ORDER BY line", table)
		}
		var order []string
		for _, c := range strings.Split(ob[1], ",") {
			order = append(order, strings.TrimSpace(c))
		}
		km := hashedCols.FindStringSubmatch(key)
		if km == nil {
			t.Errorf("table %s: sharding key %q is neither a column nor cityHash64(columns)", table, key)
			continue
		}
		cols := km[1] + km[2]
		for _, c := range strings.Split(cols, ",") {
			if c = strings.TrimSpace(c); !slices.Contains(order, c) {
				t.Errorf("table %s: sharding key column %s is not in ORDER BY %v", table, c, order)
			}
		}
	}
	for table := range ShardKeys {
		if !seen[table] {
			t.Errorf("ShardKeys names %s, which no migration creates", table)
		}
	}
}

// One server's statements are the migrations' own; a cluster's are all
// rewritten, none left single-server.
func TestRewriteEveryStatement(t *testing.T) {
	stmts := allStatements(t)
	for _, st := range stmts {
		out, err := Layout{}.Rewrite(st)
		if err != nil || len(out) != 1 || out[0] != st {
			t.Fatalf("one server: Rewrite changed %q to %q (%v)", st, out, err)
		}
	}
	for _, l := range []Layout{{Cluster: "c", Database: "db"}, {Cluster: "c", Database: "db", Sharded: true}} {
		for _, st := range stmts {
			out, err := l.Rewrite(st)
			if err != nil {
				t.Fatalf("%+v: %v", l, err)
			}
			for _, s := range out {
				switch {
				case strings.HasPrefix(s, "CREATE"), strings.HasPrefix(s, "DROP"):
					if !strings.Contains(s, " ON CLUSTER `c`") {
						t.Errorf("%+v: not ON CLUSTER: %s", l, s)
					}
				case strings.HasPrefix(s, "INSERT INTO `db`."):
				default:
					t.Errorf("%+v: unexpected statement %s", l, s)
				}
				if regexp.MustCompile(`ENGINE = (Replacing|Summing|Aggregating|Collapsing)?MergeTree`).MatchString(s) {
					t.Errorf("%+v: an engine left unreplicated: %s", l, s)
				}
				for _, ref := range tableRef.FindAllStringSubmatch(s, -1) {
					t.Errorf("%+v: %s %s is not qualified with the database in %s", l, ref[1], ref[3], s)
				}
			}
		}
	}
}

func TestRewriteTable(t *testing.T) {
	in := "CREATE TABLE IF NOT EXISTS sync_cursors (\n    provider String,\n    _version UInt64\n) ENGINE = ReplacingMergeTree(_version)\nORDER BY (provider)"
	out, err := Layout{Cluster: "prod", Database: "syncd", Sharded: true}.Rewrite(in)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"CREATE TABLE IF NOT EXISTS `syncd`.`sync_cursors_local` ON CLUSTER `prod` (\n    provider String,\n    _version UInt64\n) " +
			"ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/syncd/sync_cursors_local', '{replica}', _version)\nORDER BY (provider)",
		"CREATE TABLE IF NOT EXISTS `syncd`.`sync_cursors` ON CLUSTER `prod` AS `syncd`.`sync_cursors_local` " +
			"ENGINE = Distributed(`prod`, `syncd`, `sync_cursors_local`, cityHash64(provider, account_id, customer))",
	}
	if !slices.Equal(out, want) {
		t.Errorf("Rewrite:\n got %q\nwant %q", out, want)
	}
	// A global table is replicated on every server, whatever its shard.
	out, err = Layout{Cluster: "prod", Database: "syncd", Sharded: true}.Rewrite("CREATE TABLE IF NOT EXISTS currency_exponents (\n a String\n) ENGINE = ReplacingMergeTree\nORDER BY a")
	if err != nil || len(out) != 1 || !strings.Contains(out[0], "`syncd`.`currency_exponents` ON CLUSTER `prod` (") ||
		!strings.Contains(out[0], "ReplicatedReplacingMergeTree('/clickhouse/tables/all/syncd/currency_exponents', '{replica}')") {
		t.Errorf("Rewrite of a global table: %q (%v)", out, err)
	}
	// A shard-local view reads the shard's own tables, and the global
	// ones; a Distributed table of its name gathers the shards' rows.
	out, err = Layout{Cluster: "prod", Database: "syncd", Sharded: true}.Rewrite(
		"CREATE VIEW IF NOT EXISTS customer_balances AS\nSELECT a FROM balance_ledger ANY LEFT JOIN (SELECT a FROM currency_exponents FINAL) USING a")
	want = []string{
		"CREATE VIEW IF NOT EXISTS `syncd`.`customer_balances_local` ON CLUSTER `prod` AS\nSELECT a FROM `syncd`.`balance_ledger_local` ANY LEFT JOIN (SELECT a FROM `syncd`.`currency_exponents` FINAL) USING a",
		"CREATE TABLE IF NOT EXISTS `syncd`.`customer_balances` ON CLUSTER `prod` AS `syncd`.`customer_balances_local` ENGINE = Distributed(`prod`, `syncd`, `customer_balances_local`)",
	}
	if err != nil || !slices.Equal(out, want) {
		t.Errorf("Rewrite of a shard-local view:\n got %q\nwant %q (%v)", out, want, err)
	}
	// An engine without parameters gets the replica's two.
	out, err = Layout{Cluster: "prod", Database: "syncd"}.Rewrite("CREATE TABLE IF NOT EXISTS t (\n a String\n) ENGINE = ReplacingMergeTree\nORDER BY a")
	if err != nil || !strings.Contains(out[0], "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/syncd/t', '{replica}')\n") {
		t.Errorf("Rewrite without engine parameters: %q (%v)", out, err)
	}
	if _, err := (Layout{Cluster: "prod", Database: "syncd"}).Rewrite("ALTER TABLE t ADD COLUMN x String"); err == nil {
		t.Error("Rewrite took a statement it has no rule for")
	}
}
