package backfill

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/syncd/syncd/internal/row"
)

var (
	runTable = tableOf("backfill_runs",
		"provider", "account_id", "run_id", "full", "customer_cursor", "finished", "started_at", "updated_at", "_version")
	doneTable = tableOf("backfill_customers",
		"provider", "account_id", "run_id", "customer", "rows", "done_at")
)

// run is one sweep of one (provider, account).
type run struct {
	Provider  string
	Account   string
	ID        string
	Full      bool
	Cursor    string // customer-enumeration cursor: every customer up to it is done
	Finished  bool
	StartedAt time.Time
}

func (r *run) row(now time.Time) []any {
	return []any{r.Provider, r.Account, r.ID, boolByte(r.Full), r.Cursor, boolByte(r.Finished),
		r.StartedAt.UTC(), now.UTC(), row.Version(now)}
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// latestRuns returns the newest run of each account of provider that has
// one, by account: one query, however many accounts a run reads.
func latestRuns(ctx context.Context, conn driver.Conn, provider string) (map[string]*run, error) {
	rows, err := conn.Query(ctx, `SELECT account_id, run_id, full, customer_cursor, finished, started_at
		FROM backfill_runs FINAL WHERE provider = ?`, provider)
	if err != nil {
		return nil, fmt.Errorf("read backfill_runs: %w", err)
	}
	defer rows.Close()
	out := map[string]*run{}
	for rows.Next() {
		r := &run{Provider: provider}
		var full, finished uint8
		if err := rows.Scan(&r.Account, &r.ID, &full, &r.Cursor, &finished, &r.StartedAt); err != nil {
			return nil, fmt.Errorf("read backfill_runs: %w", err)
		}
		r.Full, r.Finished = full == 1, finished == 1
		out[r.Account] = r
	}
	return out, rows.Err()
}

// doneCount returns how many customers run has finished.
func doneCount(ctx context.Context, conn driver.Conn, r *run) (int64, error) {
	var n uint64
	err := conn.QueryRow(ctx, `SELECT uniqExact(customer) FROM backfill_customers
		WHERE provider = ? AND account_id = ? AND run_id = ?`, r.Provider, r.Account, r.ID).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("read backfill_customers: %w", err)
	}
	return int64(n), nil
}
