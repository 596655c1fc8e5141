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
		err = conn.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+quoteIdent(opts.Auth.Database))
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
	// A modern server may take INSERTs asynchronously (async_insert, on by
	// default in recent releases or by a profile): the INSERT then returns
	// before its rows are in a part, or only after a flush timer. syncd's
	// 200 means committed, and its sink batches already, so it asks for
	// synchronous INSERTs wherever the setting exists (21.11 and later;
	// 18.16 refuses settings it does not know, so none is sent there).
	if v, err := conn.ServerVersion(); err == nil && atLeast(v, 21, 11) {
		if opts.Settings == nil {
			opts.Settings = clickhouse.Settings{}
		}
		if _, set := opts.Settings["async_insert"]; !set {
			opts.Settings["async_insert"] = 0
			conn.Close()
			if conn, err = clickhouse.Open(opts); err != nil {
				return nil, fmt.Errorf("connect to clickhouse at %v: %w", opts.Addr, err)
			}
		}
	}
	return conn, nil
}

// atLeast reports whether server v is release major.minor or later.
func atLeast(v *driver.ServerVersion, major, minor uint64) bool {
	return v.Version.Major > major || v.Version.Major == major && v.Version.Minor >= minor
}

func quoteIdent(s string) string {
	return "`" + s + "`"
}

const migrationsTable = `CREATE TABLE IF NOT EXISTS schema_migrations (
    version UInt32,
    name String,
    applied_at DateTime('UTC')
) ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version`

// Migrate applies every embedded migration that is not yet recorded in
// schema_migrations, in order, and returns the versions it applied.
// Migrations are idempotent, so two processes migrating at once both succeed.
func Migrate(ctx context.Context, conn driver.Conn) ([]uint32, error) {
	migrations, err := schema.Migrations()
	if err != nil {
		return nil, err
	}
	if err := conn.Exec(ctx, migrationsTable); err != nil {
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
		if err := apply(ctx, conn, m); err != nil {
			return done, err
		}
		b, err := conn.PrepareBatch(ctx, "INSERT INTO schema_migrations (version, name, applied_at)")
		if err != nil {
			return done, fmt.Errorf("record migration %d: %w", m.Version, err)
		}
		if err := b.Append(m.Version, m.Name, time.Now().UTC()); err != nil {
			return done, fmt.Errorf("record migration %d: %w", m.Version, err)
		}
		if err := b.Send(); err != nil {
			return done, fmt.Errorf("record migration %d: %w", m.Version, err)
		}
		done = append(done, m.Version)
	}
	return done, nil
}

// Concurrent migrators can get in each other's way inside one idempotent
// migration: one drops a view (0004 recreates them) just as the other
// creates a view that reads it, and 18.16 checks a view's tables when it is
// created. Such a failure names a table that is missing or already there; the
// whole migration is then applied again, a few times, from its first
// statement.
const migrationAttempts = 5

// raceCodes are the ClickHouse error codes a concurrent migrator can cause:
// UNKNOWN_TABLE and TABLE_ALREADY_EXISTS.
var raceCodes = []int32{60, 57}

func apply(ctx context.Context, conn driver.Conn, m schema.Migration) error {
	for attempt := 1; ; attempt++ {
		err := applyOnce(ctx, conn, m)
		var ex *clickhouse.Exception
		if err == nil || attempt == migrationAttempts || !errors.As(err, &ex) || !slices.Contains(raceCodes, ex.Code) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(attempt) * 20 * time.Millisecond):
		}
	}
}

func applyOnce(ctx context.Context, conn driver.Conn, m schema.Migration) error {
	for i, stmt := range m.Statements {
		if err := conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("migration %04d_%s statement %d: %w", m.Version, m.Name, i+1, err)
		}
	}
	return nil
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
