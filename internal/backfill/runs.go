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

// latestRun returns the newest run of (provider, account), or nil.
func latestRun(ctx context.Context, conn driver.Conn, provider, account string) (*run, error) {
	rows, err := conn.Query(ctx, `SELECT run_id, full, customer_cursor, finished, started_at
		FROM backfill_runs FINAL WHERE provider = ? AND account_id = ?`, provider, account)
	if err != nil {
		return nil, fmt.Errorf("read backfill_runs: %w", err)
	}
	defer rows.Close()
	if !rows.Next() {
		return nil, rows.Err()
	}
	r := &run{Provider: provider, Account: account}
	var full, finished uint8
	if err := rows.Scan(&r.ID, &full, &r.Cursor, &finished, &r.StartedAt); err != nil {
		return nil, fmt.Errorf("read backfill_runs: %w", err)
	}
	r.Full, r.Finished = full == 1, finished == 1
	return r, nil
}

// doneCustomers returns the customers run has finished.
func doneCustomers(ctx context.Context, conn driver.Conn, r *run) (map[string]bool, error) {
	rows, err := conn.Query(ctx, `SELECT DISTINCT customer FROM backfill_customers
		WHERE provider = ? AND account_id = ? AND run_id = ?`, r.Provider, r.Account, r.ID)
	if err != nil {
		return nil, fmt.Errorf("read backfill_customers: %w", err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			return nil, fmt.Errorf("read backfill_customers: %w", err)
		}
		out[c] = true
	}
	return out, rows.Err()
}
