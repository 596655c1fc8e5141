package chtest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/syncd/syncd/internal/chserver"
)

func TestMain(m *testing.M) { Main(m) }

func TestDSNGivesAFreshDatabase(t *testing.T) {
	a, b := DSN(t), DSN(t)
	if a == b {
		t.Fatalf("two calls gave the same DSN %s", a)
	}
	ctx := context.Background()
	conn := Conn(t, a)
	var db string
	if err := conn.QueryRow(ctx, "SELECT currentDatabase()").Scan(&db); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(db, "syncd_test_") || !strings.HasSuffix(a, "/"+db) {
		t.Errorf("connected to database %q through %s", db, a)
	}
	if err := conn.Exec(ctx, "CREATE TABLE t (n UInt64) ENGINE = MergeTree ORDER BY n"); err != nil {
		t.Fatal(err)
	}
	insert(t, conn, 1, 2, 3)
	if got := sum(t, conn); got != 6 {
		t.Errorf("sum = %d, want 6", got)
	}
}

func TestPrivateRestartKeepsData(t *testing.T) {
	s := Private(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn := Conn(t, s.DSN("default"))
	if err := conn.Exec(ctx, "CREATE TABLE default.t (n UInt64) ENGINE = MergeTree ORDER BY n"); err != nil {
		t.Fatal(err)
	}
	insert(t, conn, 10, 20)

	// The connection stays open across the restart, as a daemon's pool would.
	start := time.Now()
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("Restart with an open connection took %s", d)
	}
	if got := sum(t, Conn(t, s.DSN("default"))); got != 30 {
		t.Errorf("after Restart, sum = %d, want 30", got)
	}

	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := conn.Ping(ctx); err == nil {
		t.Error("Ping succeeded after Stop")
	}
}

func TestNoServer(t *testing.T) {
	cause := errors.New("clickhouse-server not found: install it")
	missing := func() (*chserver.Server, error) { return nil, cause }
	for _, c := range []struct {
		ci        string
		wantFatal bool
	}{{"true", true}, {"", false}, {"false", false}} {
		t.Run("CI="+c.ci, func(t *testing.T) {
			env := map[string]string{"CI": c.ci}
			rec := &recorder{TB: t}
			got := dsn(rec, func(k string) string { return env[k] }, missing)
			if got != "" {
				t.Errorf("dsn = %q without a server", got)
			}
			if rec.fatal != c.wantFatal || rec.skip == c.wantFatal {
				t.Errorf("fatal=%v skip=%v, want fatal=%v", rec.fatal, rec.skip, c.wantFatal)
			}
			if !strings.Contains(rec.msg, cause.Error()) || !strings.Contains(rec.msg, EnvDSN) {
				t.Errorf("message does not say why and what to do: %s", rec.msg)
			}
		})
	}
}

// recorder is a testing.TB that notes how the test would have ended.
type recorder struct {
	testing.TB
	fatal, skip bool
	msg         string
}

func (r *recorder) Helper()           {}
func (r *recorder) Fatal(args ...any) { r.fatal, r.msg = true, fmt.Sprint(args...) }
func (r *recorder) Skip(args ...any)  { r.skip, r.msg = true, fmt.Sprint(args...) }

func insert(t *testing.T, conn driver.Conn, ns ...uint64) {
	t.Helper()
	ctx := context.Background()
	batch, err := conn.PrepareBatch(ctx, "INSERT INTO t (n)")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		if err := batch.Append(n); err != nil {
			t.Fatal(err)
		}
	}
	if err := batch.Send(); err != nil {
		t.Fatal(err)
	}
}

func sum(t *testing.T, conn driver.Conn) uint64 {
	t.Helper()
	var n uint64
	if err := conn.QueryRow(context.Background(), "SELECT sum(n) FROM t").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// PrivateEngine runs the engine the test names, not the one the
// environment names.
func TestPrivateEngineRunsTheEngineNamed(t *testing.T) {
	t.Setenv(chserver.EnvEngine, string(chserver.EngineServer))
	s := PrivateEngine(t, chserver.EngineChDB)
	if s.Engine != chserver.EngineChDB {
		t.Errorf("server engine %q, want %q", s.Engine, chserver.EngineChDB)
	}
	var v string
	if err := Conn(t, s.DSN("default")).QueryRow(context.Background(), "SELECT version()").Scan(&v); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(v, "26.") {
		t.Errorf("engine %s answers as ClickHouse %s, want 26.x", chserver.EngineChDB, v)
	}
}
