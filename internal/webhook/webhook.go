// Package webhook receives provider webhooks over HTTP: it verifies each
// delivery, makes it durable through the sink, and only then answers 200.
//
// Durable means the event's row in the intake log (stripe_events,
// orb_events) has committed: the 200 waits for that insert only. A
// transaction row derived from an object event is queued in the same
// request (a full queue still answers 503) but committed by the sink in the
// background; one lost to a crash is derived again from the intake log by
// Recover before the next process serves.
package webhook

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/syncd/syncd/internal/metrics"
	"github.com/syncd/syncd/internal/sink"
)

// MaxBodyBytes is the largest body a webhook route reads; larger ones get 413.
const MaxBodyBytes = 1 << 20

// DefaultAckTimeout is how long a request waits for ClickHouse to commit its
// rows before it answers 503 and lets the provider retry.
const DefaultAckTimeout = 10 * time.Second

// Writer queues rows for ClickHouse without blocking; *sink.Sink is one.
type Writer interface {
	TryWrite(t sink.Table, rows ...[]any) (*sink.Ack, error)
}

// Dirtier is told which customer to re-read once an event naming it is
// durable. It must not block.
type Dirtier interface {
	// MarkDirty is told the event's id too: the refresh's rows name it.
	MarkDirty(account, customer, eventID string)
}

// Common is what every webhook route shares.
type Common struct {
	Sink Writer // required
	// Background takes the rows derived from an event (an object event's
	// transaction row), which the 200 does not wait for; nil: Sink. A sink
	// that lingers to make fewer, larger inserts suits it: those rows are
	// off the request's path.
	Background Writer
	Metrics    *metrics.Metrics // nil: a private registry
	Logger     *zap.Logger      // nil: no logs
	AckTimeout time.Duration    // 0: DefaultAckTimeout
}

// delivery is what a provider makes of one verified request: the rows to
// queue, and what to do once the 200 is certain.
type delivery struct {
	id, typ, account string // for logs
	typeLabel        string // syncd_events_total's type
	ignored          bool   // stored in the intake log only
	writes           []write
	afterCommit      func()
}

type write struct {
	table sink.Table
	row   []any
	// derived rows (an object event's transaction) can be made again from
	// the intake row: queued before the answer, not waited for.
	derived bool
}

// rejection is a request refused before anything was written. reason is
// sent to the client and logged, so it never quotes the body or a secret.
type rejection struct {
	status  int
	outcome string
	reason  string
}

func (r *rejection) Error() string { return r.reason }

func badSignature(reason string) *rejection {
	return &rejection{http.StatusBadRequest, metrics.OutcomeBadSig, reason}
}

func badRequest(reason string) *rejection {
	return &rejection{http.StatusBadRequest, metrics.OutcomeBadRequest, reason}
}

// acceptFunc verifies and decodes one request body. It returns a
// *rejection for anything the client got wrong.
type acceptFunc func(header http.Header, body []byte, now time.Time) (*delivery, error)

// route is the provider-independent skeleton of a webhook route: method,
// size limit, durable write, acknowledgement wait, status code, metrics.
type route struct {
	provider string
	Common
	accept acceptFunc
}

func newRoute(provider string, c Common, accept acceptFunc) *route {
	if c.Metrics == nil {
		c.Metrics = metrics.New()
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.AckTimeout <= 0 {
		c.AckTimeout = DefaultAckTimeout
	}
	if c.Background == nil {
		c.Background = c.Sink
	}
	c.Logger = c.Logger.With(zap.String("provider", provider))
	return &route{provider: provider, Common: c, accept: accept}
}

var bodies = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func (rt *route) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	outcome := rt.serve(w, r, start)
	rt.Metrics.WebhookRequests.WithLabelValues(rt.provider, outcome).Inc()
	rt.Metrics.WebhookAck.Observe(time.Since(start).Seconds())
}

func (rt *route) serve(w http.ResponseWriter, r *http.Request, start time.Time) string {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return rt.refuse(w, &rejection{http.StatusMethodNotAllowed, metrics.OutcomeMethod, "use POST"})
	}
	tooLarge := &rejection{http.StatusRequestEntityTooLarge, metrics.OutcomeTooLarge, "body over 1 MiB"}
	if r.ContentLength > MaxBodyBytes {
		return rt.refuse(w, tooLarge)
	}
	buf := bodies.Get().(*bytes.Buffer)
	buf.Reset()
	defer func() {
		if buf.Cap() <= 64<<10 {
			bodies.Put(buf)
		}
	}()
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, MaxBodyBytes)); err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return rt.refuse(w, tooLarge)
		}
		return rt.refuse(w, badRequest("could not read the body"))
	}

	d, err := rt.accept(r.Header, buf.Bytes(), start)
	if err != nil {
		rej, ok := errors.AsType[*rejection](err)
		if !ok {
			rej = badRequest(err.Error())
		}
		return rt.refuse(w, rej)
	}
	rt.Metrics.Events.WithLabelValues(rt.provider, d.typeLabel).Inc()
	log := rt.Logger.With(zap.String("event_id", d.id), zap.String("type", d.typ), zap.String("account", d.account))

	if err := rt.commit(r.Context(), d.writes); err != nil {
		log.Warn("webhook not durable; answered 503 so the provider retries",
			zap.String("outcome", metrics.OutcomeUnavailable), zap.Error(err))
		http.Error(w, "not stored; retry later", http.StatusServiceUnavailable)
		return metrics.OutcomeUnavailable
	}
	if d.afterCommit != nil {
		d.afterCommit()
	}
	outcome := metrics.OutcomeOK
	if d.ignored {
		outcome = metrics.OutcomeIgnored
	}
	if ce := log.Check(zap.DebugLevel, "webhook stored"); ce != nil {
		ce.Write(zap.String("outcome", outcome), zap.Duration("took", time.Since(start)))
	}
	w.WriteHeader(http.StatusOK)
	return outcome
}

// commit queues every write and waits until the intake row is committed,
// the ack timeout passes, or the client goes away. Derived rows are queued
// first, so a full queue refuses the event before its intake row is
// written, and their commit is not waited for: the sink commits them in the
// background (Close drains them), and Recover makes them again from the
// intake log after a crash.
func (rt *route) commit(ctx context.Context, writes []write) error {
	var stack [2]*sink.Ack
	acks := stack[:0]
	for _, wr := range writes {
		to := rt.Sink
		if wr.derived {
			to = rt.Background
		}
		ack, err := to.TryWrite(wr.table, wr.row)
		if err != nil {
			// Rows already queued may still commit: harmless, the retry
			// writes them again and ReplacingMergeTree keeps one.
			return err
		}
		if !wr.derived {
			acks = append(acks, ack)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, rt.AckTimeout)
	defer cancel()
	for _, ack := range acks {
		if err := ack.Wait(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (rt *route) refuse(w http.ResponseWriter, rej *rejection) string {
	rt.Logger.Info("webhook refused", zap.Int("status", rej.status),
		zap.String("outcome", rej.outcome), zap.String("reason", rej.reason))
	http.Error(w, rej.reason, rej.status)
	return rej.outcome
}
