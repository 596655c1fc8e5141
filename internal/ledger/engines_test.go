package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/syncd/syncd/internal/chserver"
	"github.com/syncd/syncd/internal/chtest"
	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/internal/sink"
	"github.com/syncd/syncd/schema"
)

// beforeFix0003 turns schema/0003_analyst_views.sql's statements back into
// the text first released, whose join operands have no alias (which
// ClickHouse 20.x and later refuse): the correction added two aliases and
// nothing else.
func beforeFix0003(t *testing.T, fixed []string) []string {
	t.Helper()
	unalias := strings.NewReplacer(
		") AS stripe_latest\nANY LEFT JOIN", ")\nANY LEFT JOIN",
		" FINAL) AS exponents USING currency", " FINAL) USING currency")
	out, changed := make([]string, len(fixed)), 0
	for i, stmt := range fixed {
		if out[i] = unalias.Replace(stmt); out[i] != stmt {
			changed++
		}
	}
	if changed != 1 {
		t.Fatalf("0003 no longer has the one aliased join this test undoes (%d statements changed)", changed)
	}
	return out
}

// The schema, every view, every docs/queries.md query and every Grafana
// dashboard query, on both ClickHouse engines the project supports —
// Debian's clickhouse-server 18.16 and the 26.7 engine (chDB) — whatever
// SYNCD_TEST_CLICKHOUSE says. On each engine the migrations are applied to
// two databases: one from scratch, and one that holds the previous schema
// (migrations 1–3 with 0003 as first released) and its data, upgraded by
// sink.Migrate as a user upgrading syncd would. Then the same rows are read
// through every statement on the four databases, and every answer — column
// names, column types and each cell — must be the same. The only column
// exempt is seconds_since_last_sync, which depends on when the query ran.
func TestSchemaOnBothEngines(t *testing.T) {
	// Both servers first: a missing engine ends the test before any work.
	engines := []chserver.Engine{chserver.EngineServer, chserver.EngineChDB}
	servers := make([]*chserver.Server, len(engines))
	for i, engine := range engines {
		servers[i] = chtest.PrivateEngine(t, engine)
	}
	queries := docQueries(t)
	w := build(t)
	customer := w.busiestCustomer(t)
	victim, orbVictim := w.chainBreaks(customer)
	loadInto := func(conn driver.Conn) {
		w.writeTo(t, conn)
		// Two chain breaks, so chain_breaks answers with rows.
		write(t, conn, row.StripeTxnTable, stripeRows(victim)...)
		write(t, conn, row.OrbTxnTable, orbRows(orbVictim)...)
	}

	var dbs []database
	// Answers of the pre-fix views where the server still accepts them
	// (18.16), read before the upgrade: the aliased views mean the same.
	var before []database
	for i, engine := range engines {
		s := servers[i]
		fresh := createDatabase(t, s, "fresh")
		version := serverVersion(t, fresh)
		name := fmt.Sprintf("%s %d.%d.%d", engine, version.Version.Major, version.Version.Minor, version.Version.Patch)
		t.Logf("%s: %s", engine, name)
		if engine == chserver.EngineChDB && version.Version.Major < 20 {
			t.Fatalf("engine %s runs ClickHouse %s: this test needs a modern one there", engine, name)
		}

		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		applied, err := sink.Migrate(ctx, fresh)
		cancel()
		if err != nil {
			t.Fatalf("%s: migrations from scratch: %v", name, err)
		}
		if all := allVersions(t); fmt.Sprint(applied) != fmt.Sprint(all) {
			t.Errorf("%s: from scratch, Migrate applied %v, want %v", name, applied, all)
		}
		loadInto(fresh)
		dbs = append(dbs, database{label: name + " from scratch", conn: fresh})

		upgraded := createDatabase(t, s, "upgraded")
		applyPreviousSchema(t, upgraded, version.Version.Major)
		loadInto(upgraded)
		if version.Version.Major < 20 {
			b := database{label: name + " previous schema, before the upgrade", conn: upgraded, saved: map[string]answer{}}
			for _, v := range schemaStatements() {
				if v.schema {
					b.saved[v.name] = b.answerOf(t, v)
				}
			}
			before = append(before, b)
		} else {
			// The upgrade this test makes is the one users need: on a
			// modern server the views of the previous schema do not work.
			checkPreviousViewsFail(t, name, upgraded)
		}
		ctx, cancel = context.WithTimeout(context.Background(), 2*time.Minute)
		applied, err = sink.Migrate(ctx, upgraded)
		cancel()
		if err != nil {
			t.Fatalf("%s: upgrade from the previous schema: %v", name, err)
		}
		if want := allVersions(t)[3:]; fmt.Sprint(applied) != fmt.Sprint(want) {
			t.Errorf("%s: upgrading, Migrate applied %v, want %v", name, applied, want)
		}
		if err := sink.SchemaCurrent(context.Background(), upgraded); err != nil {
			t.Errorf("%s: after the upgrade: %v", name, err)
		}
		dbs = append(dbs, database{label: name + " upgraded", conn: upgraded})
	}

	compareAnswers(t, append(schemaStatements(), readStatements(t, queries, customer)...), dbs, before)
}

// readStatements are every docs/queries.md query (for customer) and every
// Grafana dashboard query.
func readStatements(t *testing.T, queries map[string]string, customer string) []statement {
	t.Helper()
	var statements []statement
	for _, name := range sortedKeys(queries) {
		statements = append(statements, statement{name: "docs/queries.md " + name,
			sql: strings.ReplaceAll(queries[name], "{customer:String}", "'"+customer+"'")})
	}
	d := readDashboard(t)
	panels := panelSQL(d)
	for _, title := range sortedKeys(panels) {
		statements = append(statements, statement{name: "dashboard panel " + title, sql: expandMacros(panels[title])})
	}
	for _, v := range d.Templating.List {
		if s, ok := v.Query.(string); ok && v.Type == "query" {
			statements = append(statements, statement{name: "dashboard variable " + v.Name, sql: expandMacros(s)})
		}
	}
	return statements
}

// compareAnswers runs each statement on every database and fails where an
// answer differs from the first database's, or the first has no rows.
// before, the databases read before an upgrade, answer the schema
// statements only.
func compareAnswers(t *testing.T, statements []statement, dbs, before []database) {
	t.Helper()
	for _, st := range statements {
		t.Run(st.name, func(t *testing.T) {
			ref := dbs[0]
			var want *answer
			t.Run(ref.label, func(t *testing.T) {
				a := ref.answerOf(t, st)
				if len(a.rows.Rows) == 0 {
					t.Errorf("no rows: the data does not exercise this statement:\n%s", st.sql)
				}
				want = &a
			})
			if want == nil {
				return
			}
			others := dbs[1:]
			if st.schema {
				others = append(others, before...)
			}
			for _, db := range others {
				t.Run(db.label, func(t *testing.T) {
					if diff := want.diff(db.answerOf(t, st)); diff != "" {
						t.Errorf("answers unlike %s's: %s\n%s", ref.label, diff, st.sql)
					}
				})
			}
		})
	}
}

// statement is SQL every database must answer the same way.
type statement struct {
	name, sql string
	schema    bool // also read on the previous schema, before the upgrade
}

// schemaStatements read every table's and view's columns and types, and
// each view whole, in a total order. The previous schema is compared on the
// objects it has: those later migrations create are left out of its
// columns.
func schemaStatements() []statement {
	columns := "SELECT table, name, type FROM system.columns WHERE database = currentDatabase()"
	return []statement{
		{"schema columns", columns + " ORDER BY table, name", false},
		{"schema columns of the previous schema's objects", columns + " AND table NOT IN (" + addedSincePrevious() + ") ORDER BY table, name", true},
		{"view balance_ledger", "SELECT * FROM balance_ledger ORDER BY provider, account_id, customer, transaction_id", true},
		{"view customer_balances", "SELECT * FROM customer_balances ORDER BY provider, account_id, customer, currency", true},
		{"view daily_balance_movements", "SELECT * FROM daily_balance_movements ORDER BY day, provider, currency, kind", true},
		{"table currency_exponents", "SELECT currency, exponent FROM currency_exponents FINAL ORDER BY currency", true},
		{"view stripe_deleted_customers", "SELECT * FROM stripe_deleted_customers ORDER BY account_id, customer", false},
	}
}

// addedSincePrevious lists, quoted for IN, the tables and views that
// migrations after the previous schema's (1–3) create.
func addedSincePrevious() string {
	ms, err := schema.Migrations()
	if err != nil {
		panic(err)
	}
	created := regexp.MustCompile(`(?i)^\s*CREATE\s+(?:MATERIALIZED\s+)?(?:TABLE|VIEW)\s+IF\s+NOT\s+EXISTS\s+(\w+)`)
	before := map[string]bool{}
	var added []string
	for _, m := range ms {
		for _, stmt := range m.Statements {
			c := created.FindStringSubmatch(stmt)
			switch {
			case c == nil:
			case m.Version <= 3:
				before[c[1]] = true
			case !before[c[1]] && !slices.Contains(added, c[1]):
				added = append(added, c[1])
			}
		}
	}
	if len(added) == 0 {
		return "''"
	}
	return "'" + strings.Join(added, "', '") + "'"
}

// answer is a statement's result: names, types and cells.
type answer struct {
	rows  result
	types []string
}

// timeDependent are the columns whose value depends on when the query ran:
// they must be a whole number of seconds, and are not compared.
var timeDependent = map[string]bool{"seconds_since_last_sync": true}

func (db database) answerOf(t *testing.T, st statement) answer {
	t.Helper()
	if a, ok := db.saved[st.name]; ok {
		return a
	}
	r, types := queryTypes(t, db.conn, st.sql)
	for i, c := range r.Columns {
		if !timeDependent[c] {
			continue
		}
		for _, cells := range r.Rows {
			if _, err := strconv.ParseInt(cells[i], 10, 64); err != nil {
				t.Errorf("%s: %s is %q, want a number of seconds", db.label, c, cells[i])
			}
			cells[i] = "(depends on the time)"
		}
	}
	return answer{r, types}
}

// diff describes how got differs from a, or is empty.
func (a answer) diff(got answer) string {
	if fmt.Sprint(a.rows.Columns) != fmt.Sprint(got.rows.Columns) {
		return fmt.Sprintf("columns %v, then %v", a.rows.Columns, got.rows.Columns)
	}
	if fmt.Sprint(a.types) != fmt.Sprint(got.types) {
		return fmt.Sprintf("column types %v, then %v", a.types, got.types)
	}
	if len(a.rows.Rows) != len(got.rows.Rows) {
		return fmt.Sprintf("%d rows, then %d", len(a.rows.Rows), len(got.rows.Rows))
	}
	for i := range a.rows.Rows {
		if fmt.Sprint(a.rows.Rows[i]) != fmt.Sprint(got.rows.Rows[i]) {
			return fmt.Sprintf("row %d of %d (columns %s):\n  %s\nthen\n  %s", i+1, len(a.rows.Rows),
				strings.Join(a.rows.Columns, " | "), strings.Join(a.rows.Rows[i], " | "), strings.Join(got.rows.Rows[i], " | "))
		}
	}
	return ""
}

// database is one of the databases the test compares.
type database struct {
	label string
	conn  driver.Conn
	saved map[string]answer // answers read earlier, by statement name
}

// createDatabase creates database name on s and connects to it.
func createDatabase(t *testing.T, s *chserver.Server, name string) driver.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := sink.Open(ctx, s.DSN(name), true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func serverVersion(t *testing.T, conn driver.Conn) driver.ServerVersion {
	t.Helper()
	v, err := conn.ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	return *v
}

func allVersions(t *testing.T) []uint32 {
	t.Helper()
	ms, err := schema.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	var out []uint32
	for _, m := range ms {
		out = append(out, m.Version)
	}
	return out
}

// migrationsTable is sink.Migrate's schema_migrations, as it creates it.
const migrationsTable = `CREATE TABLE IF NOT EXISTS schema_migrations (
    version UInt32,
    name String,
    applied_at DateTime('UTC')
) ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version`

// applyPreviousSchema makes conn's database what syncd's migrations 1–3
// made before 0003 was corrected, recorded in schema_migrations as
// sink.Migrate records them. A server of 20.x or later refuses the pre-fix
// 0003 unless joined_subquery_requires_alias is off (18.16 does not know the
// setting): that is a user who created the views on an old server and then
// upgraded ClickHouse.
func applyPreviousSchema(t *testing.T, conn driver.Conn, major uint64) {
	t.Helper()
	ms, err := schema.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	previous := []schema.Migration{ms[0], ms[1], {Version: 3, Name: "analyst_views", Statements: beforeFix0003(t, ms[2].Statements)}}
	if ms[0].Version != 1 || ms[1].Version != 2 || ms[2].Version != 3 || ms[2].Name != previous[2].Name {
		t.Fatalf("migrations 1–3 are %d_%s, %d_%s, %d_%s", ms[0].Version, ms[0].Name, ms[1].Version, ms[1].Name, ms[2].Version, ms[2].Name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if major >= 20 {
		ctx = clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"joined_subquery_requires_alias": 0}))
	}
	if err := conn.Exec(ctx, migrationsTable); err != nil {
		t.Fatal(err)
	}
	for _, m := range previous {
		for i, stmt := range m.Statements {
			if err := conn.Exec(ctx, stmt); err != nil {
				t.Fatalf("previous schema, migration %04d_%s statement %d: %v", m.Version, m.Name, i+1, err)
			}
		}
		b, err := conn.PrepareBatch(ctx, "INSERT INTO schema_migrations (version, name, applied_at)")
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Append(m.Version, m.Name, time.Now().UTC()); err != nil {
			t.Fatal(err)
		}
		if err := b.Send(); err != nil {
			t.Fatal(err)
		}
	}
}

// checkPreviousViewsFail checks that the pre-fix views fail on a modern
// server, queried without joined_subquery_requires_alias = 0: the state of
// the database the upgrade must repair.
func checkPreviousViewsFail(t *testing.T, name string, conn driver.Conn) {
	t.Helper()
	for _, v := range []string{"balance_ledger", "customer_balances", "daily_balance_movements"} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		rows, err := conn.Query(ctx, "SELECT count() FROM "+v)
		if err == nil {
			for rows.Next() {
			}
			err = rows.Err()
			rows.Close()
		}
		cancel()
		var ex *clickhouse.Exception
		if !errors.As(err, &ex) || ex.Code != 206 {
			t.Errorf("%s: the previous schema's %s answered %v, want code 206 (joined_subquery_requires_alias): "+
				"the test no longer reproduces the state the upgrade repairs", name, v, err)
		}
	}
}
