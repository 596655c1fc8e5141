package backfill

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/internal/sink"
)

// The checkpoint tables of schema/0002_checkpoints.sql.
var (
	cursorTable = tableOf("sync_cursors",
		"provider", "account_id", "customer", "newest_id", "updated_at", "_version")
	refreshTable = tableOf("stripe_refreshes",
		"account_id", "customer", "refreshed_through", "_version")
)

func cursorRow(provider, account, customer, newest string, now time.Time) []any {
	return []any{provider, account, customer, newest, now.UTC(), row.Version(now)}
}

func refreshRow(account, customer string, through, now time.Time) []any {
	return []any{account, customer, through.UTC(), row.Version(now)}
}

// cursors returns the newest transaction id held per customer of
// (provider, account); with customers set, only theirs.
func cursors(ctx context.Context, conn driver.Conn, provider, account string, customers []string) (map[string]string, error) {
	q := `SELECT customer, argMax(newest_id, _version) FROM sync_cursors
		WHERE provider = ? AND account_id = ?`
	args := []any{provider, account}
	if len(customers) > 0 {
		q += ` AND customer IN (` + sqlStrings(customers) + `)`
	}
	rows, err := conn.Query(ctx, q+` GROUP BY customer`, args...)
	if err != nil {
		return nil, fmt.Errorf("read sync_cursors: %w", err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var c, id string
		if err := rows.Scan(&c, &id); err != nil {
			return nil, fmt.Errorf("read sync_cursors: %w", err)
		}
		out[c] = id
	}
	return out, rows.Err()
}

// owedRefresh is a refresh that acknowledged events still owe: the newest
// of those events and when it arrived.
type owedRefresh struct {
	account, customer, eventID string
	received                   time.Time
}

// owedRefreshes returns the (account, customer) pairs named by trigger
// events received in the last window whose newest event arrived after the
// customer's last recorded refresh (or that were never refreshed). recent
// narrows the events read to those created in the last two hours, which
// the sort key (created, id) makes cheap to find: for a look at the last
// seconds, where a retried old event can wait for the next full look.
func owedRefreshes(ctx context.Context, conn driver.Conn, window time.Duration, recent bool) ([]owedRefresh, error) {
	secs := int64(window / time.Second)
	created := 2 * secs
	if recent {
		created = int64(2 * time.Hour / time.Second)
	}
	rows, err := conn.Query(ctx, fmt.Sprintf(`SELECT account_id, customer, last_event, last_received FROM (
			SELECT account_id, customer, max(received_at) AS last_received, argMax(id, (received_at, id)) AS last_event
			FROM stripe_events
			WHERE customer != '' AND created >= now() - %d AND received_at >= now() - %d
			GROUP BY account_id, customer
		) AS received ANY LEFT JOIN (
			SELECT account_id, customer, max(refreshed_through) AS through
			FROM stripe_refreshes
			GROUP BY account_id, customer
		) AS refreshed USING (account_id, customer)
		WHERE last_received > through`, created, secs))
	if err != nil {
		return nil, fmt.Errorf("find refreshes owed by acknowledged events: %w", err)
	}
	defer rows.Close()
	var out []owedRefresh
	for rows.Next() {
		var o owedRefresh
		if err := rows.Scan(&o.account, &o.customer, &o.eventID, &o.received); err != nil {
			return nil, fmt.Errorf("find refreshes owed by acknowledged events: %w", err)
		}
		out = append(out, o)
	}
	return out, rows.Err()
}

func tableOf(name string, columns ...string) sink.Table {
	return sink.Table{Name: name, Columns: columns}
}

var sqlEscaper = strings.NewReplacer(`\`, `\\`, `'`, `\'`)

// sqlStrings renders ss as a list of ClickHouse string literals: 18.16 does
// not take an array parameter for IN.
func sqlStrings(ss []string) string {
	var b strings.Builder
	for i, s := range ss {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('\'')
		b.WriteString(sqlEscaper.Replace(s))
		b.WriteByte('\'')
	}
	return b.String()
}
