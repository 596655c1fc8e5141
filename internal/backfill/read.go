package backfill

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/internal/sink"
)

// readResult is one customer read: the rows queued in the sink (committed
// once every ack resolves) and the cursor to record after that.
type readResult struct {
	newest    string
	rows      int
	malformed int
	acks      []*sink.Ack
}

// wait blocks until every row of the read is committed.
func (r *readResult) wait(ctx context.Context) error {
	for _, a := range r.acks {
		if err := a.Wait(ctx); err != nil {
			return err
		}
	}
	return nil
}

// readCustomer lists customer's transactions newer than sinceID (all when
// "") and queues them in sk. A cursor the API no longer knows falls back to
// a full read. Objects the normaliser refuses are logged and counted, never
// written.
// eventID, when set, is the event a refresh answers, written as each row's
// _event_id.
func readCustomer(ctx context.Context, src Lister, sk *sink.Sink, log *zap.Logger,
	account, customer, sinceID, source string, eventID *string) (*readResult, error) {
	res := &readResult{}
	table := src.Table()
	fn := func(p Page) error {
		rows := make([][]any, 0, len(p.Items))
		for _, raw := range p.Items {
			vals, err := src.Row(raw, row.Meta{AccountID: account, CustomerID: customer, Source: source, ObservedAt: p.ObservedAt,
				RawStable: true, EventID: eventID})
			if err != nil {
				res.malformed++
				log.Error("source object refused by the normaliser; not written",
					zap.String("account", account), zap.String("customer", customer), zap.Error(err))
				continue
			}
			rows = append(rows, vals)
		}
		if len(rows) == 0 {
			return nil
		}
		ack, err := sk.Write(ctx, table, rows...)
		if err != nil {
			return fmt.Errorf("queue %d rows of %s: %w", len(rows), customer, err)
		}
		res.rows += len(rows)
		res.acks = append(res.acks, ack)
		return nil
	}
	newest, err := src.Transactions(ctx, account, customer, sinceID, fn)
	if errors.Is(err, ErrCursorGone) {
		log.Warn("incremental cursor unknown to the API; reading the customer in full",
			zap.String("account", account), zap.String("customer", customer), zap.String("cursor", sinceID))
		newest, err = src.Transactions(ctx, account, customer, "", fn)
	}
	if err != nil {
		return res, err
	}
	res.newest = newest
	return res, nil
}
