package webhook

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"go.uber.org/zap"

	"github.com/syncd/syncd/internal/metrics"
	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/internal/sink"
)

// A 200 waits for the intake row only; an object event's transaction row is
// committed by the sink in the background. A crash can lose transaction
// rows that were queued but not committed, never an intake row that was
// acknowledged. Recover makes those rows again from the intake log:
//
//   - T is the newest _synced_at of a _source='webhook' row in the
//     transaction table. A webhook row's _synced_at is its request's
//     arrival time (= the intake row's received_at), and the sink commits
//     a table's rows in the order they were queued, so every row queued
//     more than Margin before T is committed (Margin covers the time a
//     request can take between arrival and queueing: the body read, at
//     most the listener's 30 s ReadTimeout, and scheduling).
//   - Every intake row received at T − Margin or later is decoded again by
//     the route's own code (the signature is not checked again: only
//     verified bodies are stored) and its transaction row written again.
//     Rows already there are written identically (same _version, same
//     _synced_at): ReplacingMergeTree keeps one.
//   - The intake rows are read in slices of at most SliceSpan of
//     received_at, in order, and queued in that order; within a slice the
//     order is free. A crash during recovery therefore leaves T at most one
//     slice past the oldest row not yet replayed, which SliceSpan < Margin
//     keeps inside the next start's window.
//
// The window never reaches back further than Window (Stripe retries for
// three days; an older gap is a job for `syncd backfill --since`).

// Recovery defaults.
const (
	DefaultRecoverWindow = 72 * time.Hour
	DefaultRecoverMargin = 5 * time.Minute
	recoverSliceSpan     = 4 * time.Minute // < DefaultRecoverMargin
	recoverBatchRows     = 1000
)

// BlockingWriter queues rows, waiting while the queue is full; *sink.Sink
// is one.
type BlockingWriter interface {
	Write(ctx context.Context, t sink.Table, rows ...[]any) (*sink.Ack, error)
}

// RecoverOptions configure Recover.
type RecoverOptions struct {
	Conn   driver.Conn    // reads the intake logs and the watermark
	Sink   BlockingWriter // writes the transaction rows again
	Logger *zap.Logger    // nil: no logs
	// Window bounds how far back the intake log is read [72h].
	Window time.Duration
	// Margin is read before the newest committed webhook row [5m]; it
	// must exceed the slice span (4 minutes).
	Margin time.Duration
}

// Replayed is what Recover did for one provider.
type Replayed struct {
	Provider  string
	Watermark time.Time // newest committed webhook row's _synced_at; zero when none
	Since     time.Time // intake rows received at or after this were read
	Events    int       // object-event intake rows read
	Rows      int       // transaction rows written again
	Skipped   int       // payloads the current code no longer accepts
}

// replaySpec is one provider's intake log and transaction table.
type replaySpec struct {
	provider string
	intake   string
	txn      sink.Table
	// objects narrows the intake log to rows that may carry a transaction,
	// on columns other than payload.
	objects string
	decode  func(body []byte, receivedAt time.Time) (*delivery, error)
}

func replaySpecs() []replaySpec {
	stripe := &stripeAccepter{triggers: map[string]bool{}}
	orb := &orbAccepter{}
	return []replaySpec{
		// A Stripe trigger event names its customer; an object event does
		// not (its data.object.object decides, so type cannot narrow it).
		{providerStripe, row.StripeEventTable.Name, row.StripeTxnTable, "customer = ''", stripe.decode},
		{providerOrb, row.OrbEventTable.Name, row.OrbTxnTable, "type = '" + OrbTxnCreated + "'", orb.decode},
	}
}

// Recover writes again the transaction rows of object events whose intake
// rows may have outlived them (see above), for Stripe and Orb, and waits
// until they are committed. Run it before the process serves: a webhook
// row committed meanwhile would move the watermark past rows not yet
// replayed. Rerunning it is harmless.
func Recover(ctx context.Context, o RecoverOptions) ([]Replayed, error) {
	if o.Window <= 0 {
		o.Window = DefaultRecoverWindow
	}
	if o.Margin <= 0 {
		o.Margin = DefaultRecoverMargin
	}
	if o.Margin <= recoverSliceSpan {
		return nil, fmt.Errorf("recover: margin %s must exceed the slice span %s", o.Margin, recoverSliceSpan)
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	var out []Replayed
	for _, spec := range replaySpecs() {
		start := time.Now()
		r, err := replay(ctx, o, spec)
		if err != nil {
			return out, fmt.Errorf("recover %s transaction rows from %s: %w", spec.provider, spec.intake, err)
		}
		out = append(out, r)
		fields := []zap.Field{zap.String("provider", spec.provider), zap.Time("since", r.Since),
			zap.Int("events", r.Events), zap.Int("rows", r.Rows), zap.Int("skipped", r.Skipped), zap.Duration("took", time.Since(start))}
		if !r.Watermark.IsZero() {
			fields = append(fields, zap.Time("watermark", r.Watermark))
		}
		o.Logger.Info("transaction rows replayed from the intake log", fields...)
	}
	return out, nil
}

func replay(ctx context.Context, o RecoverOptions, spec replaySpec) (Replayed, error) {
	r := Replayed{Provider: spec.provider}
	now := time.Now()
	var (
		n      uint64
		newest uint32
	)
	if err := o.Conn.QueryRow(ctx, fmt.Sprintf(
		"SELECT count(), toUnixTimestamp(max(_synced_at)) FROM %s WHERE _source = '%s'", spec.txn.Name, row.SourceWebhook)).
		Scan(&n, &newest); err != nil {
		return r, fmt.Errorf("newest webhook row: %w", err)
	}
	r.Since = now.Add(-o.Window).Truncate(time.Second)
	if n > 0 {
		r.Watermark = time.Unix(int64(newest), 0).UTC()
		if s := r.Watermark.Add(-o.Margin); s.After(r.Since) {
			r.Since = s
		}
	}
	r.Since = r.Since.UTC()

	slices, err := planSlices(ctx, o.Conn, spec, r.Since)
	if err != nil {
		return r, err
	}
	var (
		acks  []*sink.Ack
		batch = make([][]any, 0, recoverBatchRows)
	)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		ack, err := o.Sink.Write(ctx, spec.txn, batch...)
		if err != nil {
			return err
		}
		acks = append(acks, ack)
		batch = make([][]any, 0, recoverBatchRows)
		return nil
	}
	for _, sl := range slices {
		err := readSlice(ctx, o.Conn, spec, r.Since, sl, func(payload []byte, receivedAt time.Time) error {
			r.Events++
			d, err := spec.decode(payload, receivedAt)
			if err != nil {
				r.Skipped++
				o.Logger.Warn("intake row no longer decodes; not replayed", zap.String("provider", spec.provider), zap.Error(err))
				return nil
			}
			for _, w := range d.writes {
				if w.derived && w.table.Name == spec.txn.Name {
					batch = append(batch, w.row)
					r.Rows++
				}
			}
			if len(batch) >= recoverBatchRows {
				return flush()
			}
			return nil
		})
		if err != nil {
			return r, err
		}
		// Queue each slice before reading the next: the sink commits in
		// queue order, which is what keeps a crash mid-recovery safe.
		if err := flush(); err != nil {
			return r, err
		}
	}
	for _, a := range acks {
		if err := a.Wait(ctx); err != nil {
			return r, err
		}
	}
	return r, nil
}

// slice is a span of received_at to read in one query, with the created
// range of its rows so the query prunes on the sort key (created, id).
type slice struct {
	from, to               time.Time // [from, to)
	minCreated, maxCreated time.Time
	rows                   uint64
}

// planSlices finds, from narrow columns only, the minutes since since that
// hold candidate rows, and groups consecutive ones into slices spanning at
// most recoverSliceSpan.
func planSlices(ctx context.Context, conn driver.Conn, spec replaySpec, since time.Time) ([]slice, error) {
	rows, err := conn.Query(ctx, fmt.Sprintf(`SELECT toUnixTimestamp(toStartOfMinute(received_at)) AS m, count(),
		toUnixTimestamp(min(created)), toUnixTimestamp(max(created))
		FROM %s WHERE received_at >= toDateTime(%d) AND %s
		GROUP BY m ORDER BY m`, spec.intake, since.Unix(), spec.objects))
	if err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	defer rows.Close()
	var out []slice
	for rows.Next() {
		var (
			m, lo, hi uint32
			n         uint64
		)
		if err := rows.Scan(&m, &n, &lo, &hi); err != nil {
			return nil, fmt.Errorf("plan: %w", err)
		}
		minute := time.Unix(int64(m), 0).UTC()
		end := minute.Add(time.Minute)
		minC, maxC := time.Unix(int64(lo), 0).UTC(), time.Unix(int64(hi), 0).UTC()
		if k := len(out) - 1; k >= 0 && end.Sub(out[k].from) <= recoverSliceSpan {
			s := &out[k]
			s.to, s.rows = end, s.rows+n
			if minC.Before(s.minCreated) {
				s.minCreated = minC
			}
			if maxC.After(s.maxCreated) {
				s.maxCreated = maxC
			}
			continue
		}
		out = append(out, slice{from: minute, to: end, minCreated: minC, maxCreated: maxC, rows: n})
	}
	return out, rows.Err()
}

// readSlice streams the payloads of one slice to fn.
func readSlice(ctx context.Context, conn driver.Conn, spec replaySpec, since time.Time, sl slice, fn func(payload []byte, receivedAt time.Time) error) error {
	from := sl.from
	if since.After(from) {
		from = since
	}
	rows, err := conn.Query(ctx, fmt.Sprintf(`SELECT toUnixTimestamp(received_at), payload FROM %s
		WHERE created >= toDateTime(%d) AND created <= toDateTime(%d)
		AND received_at >= toDateTime(%d) AND received_at < toDateTime(%d) AND %s`,
		spec.intake, sl.minCreated.Unix(), sl.maxCreated.Unix(), from.Unix(), sl.to.Unix(), spec.objects))
	if err != nil {
		return fmt.Errorf("read %s: %w", spec.intake, err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			at      uint32
			payload string
		)
		if err := rows.Scan(&at, &payload); err != nil {
			return fmt.Errorf("read %s: %w", spec.intake, err)
		}
		if err := fn([]byte(payload), time.Unix(int64(at), 0).UTC()); err != nil {
			return err
		}
	}
	return rows.Err()
}

// Missing-row replay defaults (KeepRecovering).
const (
	// missingSettle: a live process commits an object event's transaction
	// row within moments of its 200 (the background sink lingers a few
	// seconds); events younger than this are left to it.
	missingSettle = 20 * time.Second
	// missingOverlap: each look reaches this far before the last one's
	// end, so an intake row committed late (up to the ack timeout after its
	// received_at) is still seen.
	missingOverlap = 2 * time.Minute
)

// ReplayMissing writes again the transaction rows of object events
// received in [from, to) that the transaction table does not hold: what a
// process that acknowledged them and then died, was scaled away or could
// not drain left behind. Only missing rows are read and written (by the
// event id every webhook row carries in _event_id), so every serve process
// can run it: two writing the same row write it identically.
func ReplayMissing(ctx context.Context, o RecoverOptions, from, to time.Time, m *metrics.Metrics) ([]Replayed, error) {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	var out []Replayed
	for _, spec := range replaySpecs() {
		r := Replayed{Provider: spec.provider, Since: from}
		rows, err := o.Conn.Query(ctx, fmt.Sprintf(`SELECT toUnixTimestamp(received_at), payload FROM %s
			WHERE received_at >= toDateTime(%d) AND received_at < toDateTime(%d)
			AND created >= toDateTime(%d) AND %s
			AND id NOT IN (SELECT assumeNotNull(_event_id) FROM %s
				WHERE _source = '%s' AND _synced_at >= toDateTime(%d) AND _synced_at < toDateTime(%d) AND isNotNull(_event_id))`,
			spec.intake, from.Unix(), to.Unix(), from.Add(-DefaultRecoverWindow).Unix(), spec.objects,
			spec.txn.Name, row.SourceWebhook, from.Unix(), to.Unix()))
		if err != nil {
			return out, fmt.Errorf("find missing %s transaction rows: %w", spec.provider, err)
		}
		var batch [][]any
		for rows.Next() {
			var (
				at      uint32
				payload string
			)
			if err := rows.Scan(&at, &payload); err != nil {
				rows.Close()
				return out, fmt.Errorf("find missing %s transaction rows: %w", spec.provider, err)
			}
			r.Events++
			d, err := spec.decode([]byte(payload), time.Unix(int64(at), 0).UTC())
			if err != nil {
				r.Skipped++
				continue
			}
			for _, w := range d.writes {
				if w.derived && w.table.Name == spec.txn.Name {
					batch = append(batch, w.row)
				}
			}
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return out, fmt.Errorf("find missing %s transaction rows: %w", spec.provider, err)
		}
		if len(batch) > 0 {
			ack, err := o.Sink.Write(ctx, spec.txn, batch...)
			if err == nil {
				err = ack.Wait(ctx)
			}
			if err != nil {
				return out, fmt.Errorf("write missing %s transaction rows: %w", spec.provider, err)
			}
			r.Rows = len(batch)
			if m != nil {
				m.RecoveredRows.WithLabelValues(spec.provider).Add(float64(len(batch)))
			}
			o.Logger.Warn("acknowledged events' transaction rows were missing; written again from the intake log",
				zap.String("provider", spec.provider), zap.Int("rows", r.Rows), zap.Time("from", from), zap.Time("to", to))
		}
		out = append(out, r)
	}
	return out, nil
}

// KeepRecovering runs ReplayMissing every interval until ctx ends, over the
// events received since it started (Recover covers what came before), each
// look reaching back over the last; a failed look (ClickHouse away) is
// repeated over a window that grows until one succeeds.
func KeepRecovering(ctx context.Context, o RecoverOptions, interval time.Duration, m *metrics.Metrics) {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	from := time.Now().Add(-missingOverlap)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		to := time.Now().Add(-missingSettle).Truncate(time.Second)
		if !to.After(from) {
			continue
		}
		if _, err := ReplayMissing(ctx, o, from, to, m); err != nil {
			if ctx.Err() == nil {
				o.Logger.Debug("cannot look for missing transaction rows yet; will look again", zap.Error(err))
			}
			continue
		}
		if next := to.Add(-missingOverlap); next.After(from) {
			from = next
		}
	}
}
