package webhook

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/stripe/stripe-go/v82"
	"github.com/stripe/stripe-go/v82/webhook"

	"github.com/syncd/syncd/internal/metrics"
	"github.com/syncd/syncd/internal/row"
)

// StripeSignatureHeader carries Stripe's timestamp and signatures.
const StripeSignatureHeader = "Stripe-Signature"

const providerStripe = "stripe"

// stripeTxnObject is the object an event may carry that becomes a row itself.
const stripeTxnObject = "customer_balance_transaction"

// StripeOptions configure the Stripe route.
type StripeOptions struct {
	Common
	// Secrets are the endpoint's whsec_… secrets; a delivery signed with
	// any of them is accepted (rotation keeps two live at once).
	Secrets []string
	// Tolerance bounds the signed timestamp's age and its skew into the
	// future; 0 means 5 minutes.
	Tolerance time.Duration
	// TriggerTypes are the event types that mark the customer they name
	// dirty. Other types are stored in the intake log and answered 200.
	TriggerTypes []string
	// Dirty is told about each customer a durable trigger event names.
	Dirty Dirtier
	// Related is told about each durable thin trigger event whose related
	// object is not a customer (an invoice, a credit note, a checkout
	// session): it reads the customer from the object. nil: such events
	// are stored with no customer and left for the refresher's recovery.
	Related RelatedResolver
}

// RelatedResolver finds the customer of a thin event's related object and
// marks it dirty; ev is the event's intake row, to be written again with
// its customer once known, so that a restart owes the refresh.
type RelatedResolver interface {
	MarkRelated(ev row.StripeEvent, objectType, objectID string)
}

// thinObject is a thin event's "object"; snapshot events say "event".
const thinObject = "v2.core.event"

// thinPrefix starts the type of every thin event about a v1 resource.
const thinPrefix = "v1."

// ThinRelatedTypes are the related_object types of thin trigger events whose
// customer syncd reads from the object itself.
var ThinRelatedTypes = []string{"invoice", "credit_note", "checkout.session"}

// Stripe returns the handler of POST /webhooks/stripe.
func Stripe(opts StripeOptions) http.Handler {
	s := newStripeAccepter(opts)
	return newRoute(providerStripe, opts.Common, s.accept)
}

type stripeAccepter struct {
	secrets   []string
	tolerance time.Duration
	triggers  map[string]bool
	dirty     Dirtier
	related   RelatedResolver
}

func newStripeAccepter(opts StripeOptions) *stripeAccepter {
	s := &stripeAccepter{secrets: opts.Secrets, tolerance: opts.Tolerance, triggers: map[string]bool{}, dirty: opts.Dirty,
		related: opts.Related}
	if s.tolerance <= 0 {
		s.tolerance = webhook.DefaultTolerance
	}
	for _, t := range opts.TriggerTypes {
		s.triggers[t] = true
	}
	return s
}

// stripeEnvelope is the part of a snapshot event syncd reads; data.object
// stays raw. Object tells a thin event, whose created is a string.
type stripeEnvelope struct {
	ID         string  `json:"id"`
	Object     string  `json:"object"`
	Type       string  `json:"type"`
	Account    string  `json:"account"`
	Livemode   bool    `json:"livemode"`
	Created    int64   `json:"created"`
	APIVersion *string `json:"api_version"`
	Data       struct {
		Object json.RawMessage `json:"object"`
	} `json:"data"`
}

// stripeObjectHead is what routing needs from data.object.
type stripeObjectHead struct {
	Object   string          `json:"object"`
	ID       string          `json:"id"`
	Customer json.RawMessage `json:"customer"`
}

var errFutureTimestamp = errors.New("timestamp is further in the future than the tolerance")

// verifyStripe checks header against every secret with stripe-go, which
// refuses stale timestamps, and refuses future ones itself.
func verifyStripe(body []byte, header string, secrets []string, tolerance time.Duration, now time.Time) error {
	if header == "" {
		return webhook.ErrNotSigned
	}
	// One t= only: stripe-go verifies against the last one it reads, so a
	// second would let a header sign with one timestamp and pass the skew
	// check below with another.
	signedAt, ok := signedTimestamp(header)
	if !ok {
		return webhook.ErrInvalidHeader
	}
	err := webhook.ErrNoValidSignature
	for _, secret := range secrets {
		// ValidatePayload is what ConstructEventWithOptions checks, without
		// its decode into stripe.Event: the body is decoded once, below.
		err = webhook.ValidatePayloadWithTolerance(body, header, secret, tolerance)
		if !errors.Is(err, webhook.ErrNoValidSignature) {
			break // verified, or a fault of the header that no secret changes
		}
	}
	if err != nil {
		return err
	}
	if signedAt.Sub(now) > tolerance {
		return errFutureTimestamp
	}
	return nil
}

// signedTimestamp reads the one t= of a Stripe-Signature header; false
// when there is none, more than one, or it is not an integer.
func signedTimestamp(header string) (time.Time, bool) {
	var at time.Time
	found := false
	for part := range strings.SplitSeq(header, ",") {
		v, ok := strings.CutPrefix(strings.TrimSpace(part), "t=")
		if !ok {
			continue
		}
		sec, err := strconv.ParseInt(v, 10, 64)
		if found || err != nil {
			return time.Time{}, false
		}
		at, found = time.Unix(sec, 0), true
	}
	return at, found
}

func (s *stripeAccepter) accept(header http.Header, body []byte, now time.Time) (*delivery, error) {
	if err := verifyStripe(body, header.Get(StripeSignatureHeader), s.secrets, s.tolerance, now); err != nil {
		return nil, badSignature(stripeSigReason(err))
	}
	return s.decode(body, now)
}

// decode turns a verified body received at now into its rows. Recover
// runs it again on the intake log's payloads, so a replayed row equals the
// one the request queued (_synced_at is now, the arrival time).
func (s *stripeAccepter) decode(body []byte, now time.Time) (*delivery, error) {
	var ev stripeEnvelope
	err := json.Unmarshal(body, &ev)
	if ev.Object == thinObject {
		return s.decodeThin(body, now)
	}
	if err != nil {
		return nil, badRequest("malformed event JSON")
	}
	switch {
	case ev.ID == "":
		return nil, badRequest("event has no id")
	case ev.Type == "":
		return nil, badRequest("event has no type")
	case ev.Created <= 0:
		return nil, badRequest("event has no created time")
	case !row.FitsDateTime(time.Unix(ev.Created, 0)):
		return nil, badRequest("event created time is outside ClickHouse's DateTime range")
	}
	var obj stripeObjectHead
	if raw := bytes.TrimSpace(ev.Data.Object); len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &obj) != nil {
		return nil, badRequest("event has no data.object")
	}

	created := time.Unix(ev.Created, 0).UTC()
	d := &delivery{id: ev.ID, typ: ev.Type, account: ev.Account, writes: make([]write, 0, 2)}
	intake := row.StripeEvent{
		ID: ev.ID, Type: ev.Type, AccountID: ev.Account, Livemode: ev.Livemode, Created: created,
		Payload: body, ReceivedAt: now,
	}
	if ev.APIVersion != nil {
		intake.APIVersion = *ev.APIVersion
	}

	switch {
	case obj.Object == stripeTxnObject:
		id := ev.ID
		txn, err := row.NormalizeStripe(ev.Data.Object, row.Meta{
			AccountID: ev.Account, Source: row.SourceWebhook, EventID: &id, ObservedAt: created,
		})
		if err != nil {
			return nil, badRequest(err.Error())
		}
		txn.SyncedAt = now.UTC()
		d.typeLabel = stripeTxnObject
		d.writes = append(d.writes, write{table: row.StripeTxnTable, row: txn.Values(), derived: true})
	case s.triggers[ev.Type]:
		intake.Customer = stripeCustomer(&obj)
		if intake.Customer != "" && s.dirty != nil {
			account, customer := ev.Account, intake.Customer
			id := ev.ID
			d.afterCommit = func() { s.dirty.MarkDirty(account, customer, id) }
		}
	default:
		d.ignored = true
	}
	if d.typeLabel == "" {
		d.typeLabel = metrics.EventType(providerStripe, ev.Type)
	}
	d.writes = append(d.writes, write{table: row.StripeEventTable, row: intake.Values()})
	return d, nil
}

// decodeThin turns a verified thin event (object "v2.core.event") into its
// intake row. A thin event carries no object, only a reference to it: a
// trigger type (v1. and one of TriggerTypes) marks the customer dirty
// directly when the related object is a customer, and otherwise hands the
// object to Related to read its customer. Other thin types, such as
// v2.core.event_destination.ping, are stored as ignored.
func (s *stripeAccepter) decodeThin(body []byte, now time.Time) (*delivery, error) {
	var ev stripe.ThinEvent
	if err := json.Unmarshal(body, &ev); err != nil {
		return nil, badRequest("malformed thin event JSON")
	}
	switch {
	case ev.ID == "":
		return nil, badRequest("event has no id")
	case ev.Type == "":
		return nil, badRequest("event has no type")
	case ev.Created.IsZero():
		return nil, badRequest("event has no created time")
	case !row.FitsDateTime(ev.Created):
		return nil, badRequest("event created time is outside ClickHouse's DateTime range")
	}
	account := ""
	if ev.Context != nil {
		account = *ev.Context
	}
	d := &delivery{id: ev.ID, typ: ev.Type, account: account, writes: make([]write, 0, 1)}
	intake := row.StripeEvent{
		ID: ev.ID, Type: ev.Type, AccountID: account, Livemode: ev.Livemode, Created: ev.Created.UTC().Truncate(time.Second),
		Payload: body, ReceivedAt: now,
	}
	base, v1 := strings.CutPrefix(ev.Type, thinPrefix)
	rel := ev.RelatedObject
	switch {
	case !v1 || !s.triggers[base] || rel == nil || rel.ID == "":
		d.ignored = true
	case rel.Type == "customer":
		intake.Customer = rel.ID
		if s.dirty != nil {
			id := ev.ID
			d.afterCommit = func() { s.dirty.MarkDirty(account, rel.ID, id) }
		}
	case slices.Contains(ThinRelatedTypes, rel.Type):
		if s.related != nil {
			// The intake row's payload is the pooled request body: the
			// resolver keeps a copy.
			held := intake
			held.Payload = bytes.Clone(body)
			d.afterCommit = func() { s.related.MarkRelated(held, rel.Type, rel.ID) }
		}
	default:
		d.ignored = true
	}
	// Counted with the snapshot events of the same type.
	d.typeLabel = metrics.EventType(providerStripe, strings.TrimPrefix(ev.Type, thinPrefix))
	d.writes = append(d.writes, write{table: row.StripeEventTable, row: intake.Values()})
	return d, nil
}

// stripeCustomer is the customer a trigger event's object names: the object
// itself for a customer, else its customer field (an id or an expanded
// customer). "" when it names none.
func stripeCustomer(obj *stripeObjectHead) string {
	if obj.Object == "customer" {
		return obj.ID
	}
	raw := bytes.TrimSpace(obj.Customer)
	if len(raw) == 0 {
		return ""
	}
	var ref struct {
		ID string `json:"id"`
	}
	switch raw[0] {
	case '"':
		var id string
		if json.Unmarshal(raw, &id) == nil {
			return id
		}
	case '{':
		if json.Unmarshal(raw, &ref) == nil {
			return ref.ID
		}
	}
	return ""
}

// stripeSigReason says why a signature was refused, without quoting it.
func stripeSigReason(err error) string {
	switch {
	case errors.Is(err, webhook.ErrNotSigned):
		return "missing " + StripeSignatureHeader + " header"
	case errors.Is(err, webhook.ErrTooOld):
		return "signed timestamp is older than the tolerance"
	case errors.Is(err, errFutureTimestamp):
		return "signed timestamp is further in the future than the tolerance"
	case errors.Is(err, webhook.ErrInvalidHeader):
		return "malformed " + StripeSignatureHeader + " header"
	default:
		return "no signature matches a configured secret"
	}
}
