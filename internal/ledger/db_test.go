package ledger_test

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"

	"github.com/syncd/syncd/internal/chtest"
	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/internal/sink"
)

func TestMain(m *testing.M) { chtest.Main(m) }

// migrated returns a connection to a fresh database holding the whole schema.
func migrated(t *testing.T) driver.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := sink.Open(ctx, chtest.DSN(t), false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := sink.Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}
	return conn
}

// write sends rows through the sink, as syncd does, and waits until they
// are committed.
func write(t *testing.T, conn driver.Conn, table sink.Table, rows ...[]any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := sink.New(conn, sink.Options{BatchRows: 100000})
	ack, err := s.Write(ctx, table, rows...)
	if err != nil {
		t.Fatal(err)
	}
	if err := ack.Wait(ctx); err != nil {
		t.Fatalf("write %d rows to %s: %v", len(rows), table.Name, err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func stripeRows(rs ...*row.StripeTxn) [][]any {
	out := make([][]any, len(rs))
	for i, r := range rs {
		out[i] = r.Values()
	}
	return out
}

func orbRows(rs ...*row.OrbTxn) [][]any {
	out := make([][]any, len(rs))
	for i, r := range rs {
		out[i] = r.Values()
	}
	return out
}

// result is a query's answer as text, one convention for every type, so
// answers computed in Go compare with ==.
type result struct {
	Columns []string
	Rows    [][]string
}

func (r result) String() string {
	var b strings.Builder
	b.WriteString(strings.Join(r.Columns, " | "))
	for _, row := range r.Rows {
		b.WriteString("\n" + strings.Join(row, " | "))
	}
	return b.String()
}

func query(t *testing.T, conn driver.Conn, sql string) result {
	t.Helper()
	r, _ := queryTypes(t, conn, sql)
	return r
}

// queryTypes is query that also returns each column's ClickHouse type.
func queryTypes(t *testing.T, conn driver.Conn, sql string) (result, []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rows, err := conn.Query(ctx, sql)
	if err != nil {
		t.Fatalf("%v\n%s", err, sql)
	}
	defer rows.Close()
	var out result
	out.Columns = rows.Columns()
	types := rows.ColumnTypes()
	names := make([]string, len(types))
	for i, ct := range types {
		names[i] = ct.DatabaseTypeName()
	}
	for rows.Next() {
		dst := make([]any, len(types))
		for i, ct := range types {
			dst[i] = reflect.New(ct.ScanType()).Interface()
		}
		if err := rows.Scan(dst...); err != nil {
			t.Fatalf("scan: %v\n%s", err, sql)
		}
		cells := make([]string, len(dst))
		for i, d := range dst {
			cells[i] = cell(reflect.ValueOf(d).Elem().Interface(), types[i].DatabaseTypeName())
		}
		out.Rows = append(out.Rows, cells)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%v\n%s", err, sql)
	}
	return out, names
}

// cell renders a value the way the expectations write it.
func cell(v any, dbType string) string {
	if rv := reflect.ValueOf(v); rv.Kind() == reflect.Pointer {
		if rv.IsNil() {
			return "NULL"
		}
		v = rv.Elem().Interface()
	}
	switch x := v.(type) {
	case decimal.Decimal:
		return dec(x)
	case time.Time:
		if dbType == "Date" {
			return day(x)
		}
		return ts(x)
	}
	return fmt.Sprint(v)
}

func dec(d decimal.Decimal) string { return d.String() }
func day(t time.Time) string       { return t.UTC().Format("2006-01-02") }
func ts(t time.Time) string        { return t.UTC().Format("2006-01-02 15:04:05") }

func nullable(s *string) string {
	if s == nil {
		return "NULL"
	}
	return *s
}
