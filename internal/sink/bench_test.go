package sink_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/chtest"
	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/internal/sink"
)

// BenchmarkInsert compares the sink with a bare clickhouse-go
// PrepareBatch/Append/Send of the same Stripe rows, in the same run, on the
// same server. Run: make bench, or
//
//	go test -run '^$' -bench Insert -benchtime 20x ./internal/sink/
func BenchmarkInsert(b *testing.B) {
	const batch = 10000
	conn := migrated(b, chtest.DSN(b))
	rows := make([][]any, batch)
	now := time.Now()
	for i := range rows {
		rows[i] = stripeRow(b, fmt.Sprintf("cbtxn_%08d", i), int64(i), now).Values()
	}
	insert := "INSERT INTO stripe_customer_balance_transactions (" + strings.Join(row.StripeTxnTable.Columns, ", ") + ")"
	ctx := context.Background()

	b.Run("bare-driver-10k", func(b *testing.B) {
		for b.Loop() {
			pb, err := conn.PrepareBatch(ctx, insert)
			if err != nil {
				b.Fatal(err)
			}
			for _, r := range rows {
				if err := pb.Append(r...); err != nil {
					b.Fatal(err)
				}
			}
			if err := pb.Send(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(batch*b.N)/b.Elapsed().Seconds(), "rows/s")
	})

	// Writers hand the sink pages of 100 rows, as backfill does; the sink
	// batches them into inserts of 10k.
	b.Run("sink-10k", func(b *testing.B) {
		s := sink.New(conn, sink.Options{BatchRows: batch, QueueRows: 4 * batch})
		var acks []*sink.Ack
		for b.Loop() {
			for i := 0; i < batch; i += 100 {
				ack, err := s.Write(ctx, row.StripeTxnTable, rows[i:i+100]...)
				if err != nil {
					b.Fatal(err)
				}
				acks = append(acks, ack)
			}
		}
		for _, a := range acks {
			if err := a.Err(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(batch*b.N)/b.Elapsed().Seconds(), "rows/s")
		if err := s.Close(ctx); err != nil {
			b.Fatal(err)
		}
	})
}
