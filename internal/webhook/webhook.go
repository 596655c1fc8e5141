// Package webhook receives provider webhooks over HTTP: it verifies each
// delivery, makes it durable through the sink, and only then answers 200.
//
// Durable means the event's row in the intake log (stripe_events,
// orb_events) has committed: the 200 waits for that insert only. A
// transaction row derived from an object event is queued in the same
// request (a full queue still answers 503) but committed by the sink in the
// background; one lost to a crash is derived again from the intake log by
// Recover before the next process serves.
//
// Memory is bounded in bytes: the bodies held at once by the routes sharing
// a Budget (read, verified, decoded, waiting for their commit) never exceed
// it, and a request that would is answered 503 at once. A request is never
// held past its AckTimeout: a body still arriving is cut off, a commit not
// yet acknowledged is answered 503, and while the sink knows ClickHouse is
// unreachable the 503 comes at once.
package webhook

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/syncd/syncd/internal/metrics"
	"github.com/syncd/syncd/internal/sink"
)

// MaxBodyBytes is the largest body a webhook route reads; larger ones get 413.
const MaxBodyBytes = 1 << 20

// DefaultAckTimeout bounds a request from its headers to its answer: reading
// the body and waiting for ClickHouse to commit its rows. Past it the answer
// is 503 (400 for a body still arriving) and the provider retries. Orb
// gives an endpoint 5 s to answer; this leaves a second for the network and
// proxies in between.
const DefaultAckTimeout = 4 * time.Second

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
	// Bodies caps the bytes of request bodies held at once; share one
	// between routes to cap them together. nil: a Budget of
	// DefaultBodyBytes for this route alone.
	Bodies *Budget
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
	if c.Bodies == nil {
		c.Bodies = NewBudget(DefaultBodyBytes)
	}
	c.Logger = c.Logger.With(zap.String("provider", provider))
	return &route{provider: provider, Common: c, accept: accept}
}

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
	if r.ContentLength > MaxBodyBytes {
		return rt.refuse(w, tooLarge)
	}
	deadline := start.Add(rt.AckTimeout)
	body, rej := rt.readBody(w, r, deadline)
	defer body.free()
	if rej != nil {
		// Close the connection after the answer rather than read the rest
		// of a body that is late, too large or over the budget.
		w.Header().Set("Connection", "close")
		return rt.refuse(w, rej)
	}

	d, err := rt.accept(r.Header, body.buf, start)
	if err != nil {
		rej, ok := errors.AsType[*rejection](err)
		if !ok {
			rej = badRequest(err.Error())
		}
		return rt.refuse(w, rej)
	}
	rt.Metrics.Events.WithLabelValues(rt.provider, d.typeLabel).Inc()
	log := rt.Logger.With(zap.String("event_id", d.id), zap.String("type", d.typ), zap.String("account", d.account))

	if err := rt.commit(r.Context(), deadline, d.writes); err != nil {
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
// the deadline passes, the sink finds ClickHouse unreachable, or the client
// goes away. Derived rows are queued first, so a full queue refuses the
// event before its intake row is written, and their commit is not waited
// for: the sink commits them in the background (Close drains them), and
// Recover makes them again from the intake log after a crash.
func (rt *route) commit(ctx context.Context, deadline time.Time, writes []write) error {
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
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	for _, ack := range acks {
		select {
		case <-ack.Done():
		case <-ack.Unreachable():
			// Fail fast, without waiting for a retry to succeed: the row
			// stays queued and may still commit, which the provider's
			// retry makes harmless. Committed already is still a 200.
			select {
			case <-ack.Done():
			default:
				return sink.ErrUnavailable
			}
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := ack.Err(); err != nil {
			return err
		}
	}
	return nil
}

// tooLarge refuses a body over MaxBodyBytes.
var tooLarge = &rejection{http.StatusRequestEntityTooLarge, metrics.OutcomeTooLarge, "body over 1 MiB"}

// overBudget refuses a body the Budget has no room for.
var overBudget = &rejection{http.StatusServiceUnavailable, metrics.OutcomeUnavailable,
	"too many request bodies in memory; retry later"}

// firstChunk is the most a body's buffer holds before it first grows: a
// typical event is read whole into a buffer of its Content-Length. A larger
// body grows its buffer by doubling, taking each step from the Budget
// before allocating it, up to exactly its Content-Length (or MaxBodyBytes),
// never beyond.
const firstChunk = 16 << 10

// body is a request body held against a Budget.
type body struct {
	buf    []byte
	held   int64 // bytes taken from budget: buf's capacity
	budget *Budget
	small  bool // declared at most smallBody: may use the reserve
}

// free gives the body's bytes back to the budget. Nothing may use buf
// after: rows copy what they keep.
func (b *body) free() {
	b.budget.give(b.held)
	b.buf, b.held = nil, 0
}

// grow takes the bytes for a buffer of size from the budget.
func (b *body) grow(size int64) bool {
	if !b.budget.take(size-b.held, b.small) {
		return false
	}
	b.held = size
	return true
}

// readBody reads r's body within the route's Budget and by deadline. Bytes
// are taken from the budget as the buffer grows, before it is allocated: a
// client that opens many connections and trickles bodies holds only what it
// has sent, and is refused once the budget is spent.
func (rt *route) readBody(w http.ResponseWriter, r *http.Request, deadline time.Time) (*body, *rejection) {
	// Small by its declared length: a body sent without one, or a
	// large one in its first bytes, may not use the reserve.
	b := &body{budget: rt.Bodies, small: r.ContentLength >= 0 && r.ContentLength <= smallBody}
	// The deadline stays for the rest of the request: nothing more is read
	// (net/http's watch for the client going away ends the request's
	// context at it, when the commit's wait ends anyway).
	_ = http.NewResponseController(w).SetReadDeadline(deadline)
	src := http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	limit := int64(MaxBodyBytes)
	if r.ContentLength >= 0 {
		limit = r.ContentLength
	}
	if limit == 0 {
		return b, nil
	}
	for {
		if len(b.buf) == cap(b.buf) {
			if int64(len(b.buf)) == limit {
				// Full: a declared length is all net/http reads; without
				// one, a byte more is over the limit.
				if r.ContentLength >= 0 || atEOF(src) {
					return b, nil
				}
				return b, tooLarge
			}
			size := min(max(2*int64(cap(b.buf)), firstChunk), limit)
			if !b.grow(size) {
				return b, overBudget
			}
			next := make([]byte, len(b.buf), size)
			copy(next, b.buf)
			b.buf = next
		}
		n, err := src.Read(b.buf[len(b.buf):cap(b.buf)])
		b.buf = b.buf[:len(b.buf)+n]
		switch {
		case err == io.EOF:
			return b, nil
		case err != nil:
			if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
				return b, tooLarge
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return b, badRequest("body not received in time")
			}
			return b, badRequest("could not read the body")
		}
	}
}

// atEOF reads one byte more from a body that filled MaxBodyBytes: true when
// there was none.
func atEOF(r io.Reader) bool {
	var one [1]byte
	for {
		n, err := r.Read(one[:])
		if n > 0 {
			return false
		}
		if err != nil {
			return err == io.EOF
		}
	}
}

// DefaultBodyBytes is the default Budget for request bodies.
const DefaultBodyBytes = 32 << 20

// smallBody is the largest declared Content-Length that may use a Budget's
// reserve.
const smallBody = 64 << 10

// Budget caps the bytes of request bodies held at once. An eighth of it is
// kept for bodies declared (Content-Length) at most 64 KiB, the size
// providers send: clients holding large bodies open, or sending them
// slowly, cannot spend it, so a signed event still gets through while they
// are refused. It is safe for concurrent use.
type Budget struct {
	max, reserve int64
	used         atomic.Int64
}

// NewBudget returns a Budget of n bytes, at least 2 MiB.
func NewBudget(n int64) *Budget {
	n = max(n, 2*MaxBodyBytes)
	return &Budget{max: n, reserve: n / 8}
}

// take reserves n more bytes for a body; false when that would exceed the
// budget (or, unless the body is small, its part outside the reserve).
func (b *Budget) take(n int64, small bool) bool {
	limit := b.max
	if !small {
		limit -= b.reserve
	}
	for {
		cur := b.used.Load()
		if cur+n > limit {
			return false
		}
		if b.used.CompareAndSwap(cur, cur+n) {
			return true
		}
	}
}

func (b *Budget) give(n int64) {
	if n != 0 {
		b.used.Add(-n)
	}
}

// Used reports the bytes held now.
func (b *Budget) Used() int64 { return b.used.Load() }

func (rt *route) refuse(w http.ResponseWriter, rej *rejection) string {
	rt.Logger.Info("webhook refused", zap.Int("status", rej.status),
		zap.String("outcome", rej.outcome), zap.String("reason", rej.reason))
	http.Error(w, rej.reason, rej.status)
	return rej.outcome
}
