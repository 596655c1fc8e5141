// Package chtest gives tests a real ClickHouse: a fresh database on a server
// named by SYNCD_TEST_CLICKHOUSE_DSN, or on a private server it starts itself;
// and clusters (Cluster, PrivateCluster): a ZooKeeper and two private
// servers, as 1 shard × 2 replicas or 2 shards × 1 replica.
package chtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/syncd/syncd/internal/chserver"
)

// EnvDSN names the environment variable that points the tests at an existing
// server instead of a private one. Its database part is ignored: every test
// gets a database of its own.
const EnvDSN = "SYNCD_TEST_CLICKHOUSE_DSN"

// startTimeout bounds starting a server and creating a database.
const startTimeout = 90 * time.Second

// The server shared by the tests of one test binary, started on first use.
var shared struct {
	mu  sync.Mutex
	srv *chserver.Server
	dir string
	err error // why there is none; sticky, so a missing server costs one try
}

var dbSeq atomic.Int64

// Main wraps testing.M: it runs the tests, then stops the shared server and
// clusters that were started. Use as: func TestMain(m *testing.M) { chtest.Main(m) }
func Main(m *testing.M) {
	code := m.Run()
	stopClusters()
	shared.mu.Lock()
	if shared.srv != nil {
		if err := shared.srv.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "chtest:", err)
		}
		os.RemoveAll(shared.dir)
		shared.srv = nil
	}
	shared.mu.Unlock()
	os.Exit(code)
}

// DSN returns a DSN to a fresh, uniquely named, already created database on
// SYNCD_TEST_CLICKHOUSE_DSN's server if that is set, else on a private server
// shared by the test binary (stopped by Main). With no server to be had, the
// test is skipped, or fails when CI=true.
func DSN(t testing.TB) string {
	t.Helper()
	return dsn(t, os.Getenv, sharedServer)
}

func dsn(t testing.TB, getenv func(string) string, server func() (*chserver.Server, error)) string {
	t.Helper()
	base := getenv(EnvDSN)
	if base == "" {
		s, err := server()
		if err != nil {
			unavailable(t, getenv, err)
			return ""
		}
		base = s.DSN("default")
	}
	db := fmt.Sprintf("syncd_test_%d_%s", dbSeq.Add(1), randHex(4))
	admin, err := withDatabase(base, "default")
	if err != nil {
		t.Fatalf("chtest: %s: %v", EnvDSN, err)
	}
	conn, err := open(admin)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		err = conn.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+db)
		cancel()
	}
	if err != nil {
		if conn != nil {
			conn.Close()
		}
		unavailable(t, getenv, fmt.Errorf("create database %s on %s: %w", db, redact(admin), err))
		return ""
	}
	t.Cleanup(func() {
		defer conn.Close()
		if t.Failed() {
			t.Logf("chtest: kept database %s for inspection", db)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+db); err != nil {
			t.Logf("chtest: drop database %s: %v", db, err)
		}
	})
	out, err := withDatabase(base, db)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Private starts a server of the test's own, for tests that stop or restart
// it; it is stopped when the test ends. Same rule as DSN when none can be had.
// Its engine is the one chserver.EnvEngine names.
func Private(t testing.TB) *chserver.Server {
	t.Helper()
	return PrivateEngine(t, "")
}

// PrivateEngine is Private with the engine chosen by the test, whatever
// chserver.EnvEngine says ("" means what it says): for tests that compare
// engines. An engine that cannot be started skips the test, or fails it when
// CI=true, as DSN does.
func PrivateEngine(t testing.TB, engine chserver.Engine) *chserver.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	s := &chserver.Server{Dir: t.TempDir(), Engine: engine}
	err := s.Start(ctx)
	if err != nil {
		if engine != "" {
			err = fmt.Errorf("engine %s: %w", engine, err)
		}
		unavailable(t, os.Getenv, err)
		return nil
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// Conn opens a clickhouse-go v2 connection to dsn, closed when the test ends.
func Conn(t testing.TB, dsn string) driver.Conn {
	t.Helper()
	conn, err := open(dsn)
	if err != nil {
		t.Fatalf("chtest: open %s: %v", redact(dsn), err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func open(dsn string) (driver.Conn, error) {
	opts, err := clickhouse.ParseDSN(dsn)
	if err != nil {
		return nil, err
	}
	return clickhouse.Open(opts)
}

func sharedServer() (*chserver.Server, error) {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.srv != nil {
		exited, why := shared.srv.Exited()
		if !exited {
			return shared.srv, nil
		}
		// Say so loudly (the test that was using it has failed), and
		// give the tests after it a server again, on the same data.
		fmt.Fprintf(os.Stderr, "chtest: the shared ClickHouse server exited on its own (%v); restarting it%s\n", why, shared.srv.LogTail())
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		_ = shared.srv.Stop()
		if err := shared.srv.Start(ctx); err != nil {
			shared.srv, shared.err = nil, err
			return nil, err
		}
		return shared.srv, nil
	}
	if shared.err != nil {
		return nil, shared.err
	}
	dir, err := os.MkdirTemp("", "syncd-chtest-")
	if err != nil {
		shared.err = err
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	s, err := chserver.Start(ctx, dir)
	if err != nil {
		os.RemoveAll(dir)
		shared.err = err
		return nil, err
	}
	shared.srv, shared.dir = s, dir
	return s, nil
}

// unavailable ends a test that cannot have its ClickHouse.
func unavailable(t testing.TB, getenv func(string) string, err error) {
	t.Helper()
	if fatal, msg := verdict(getenv, err); fatal {
		t.Fatal(msg)
	} else {
		t.Skip(msg)
	}
}

// verdict decides how a test without ClickHouse ends: in CI (CI=true) a
// missing server is a failure, never a quiet skip.
func verdict(getenv func(string) string, err error) (fatal bool, msg string) {
	if getenv("CI") == "true" {
		return true, fmt.Sprintf("chtest: CI=true and no ClickHouse for this test: %v "+
			"(or set %s to a running server's DSN)", err, EnvDSN)
	}
	return false, fmt.Sprintf("chtest: skipped, no ClickHouse: %v (or set %s; with CI=true this fails)", err, EnvDSN)
}

// withDatabase returns dsn with its database (the path) replaced.
func withDatabase(dsn, database string) (string, error) {
	u, err := url.Parse(dsn)
	if err != nil {
		return "", errors.New("DSN is not a URL") // url's error would echo a password
	}
	u.Path = "/" + database
	return u.String(), nil
}

// redact hides a DSN's password in messages.
func redact(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return "(unparsable DSN)"
	}
	return u.Redacted()
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
