package backfill

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"go.uber.org/zap"

	"github.com/syncd/syncd/internal/row"
)

// relatedPaths are the API paths of the objects a thin trigger event may
// refer to instead of a customer; each names its customer.
var relatedPaths = map[string]string{
	"invoice":          "/v1/invoices/",
	"credit_note":      "/v1/credit_notes/",
	"checkout.session": "/v1/checkout/sessions/",
}

// RelatedCustomer reads the object a thin event refers to (an invoice, a
// credit note or a checkout session) and returns the customer it names, ""
// when it names none (a guest checkout).
func (s *StripeSource) RelatedCustomer(ctx context.Context, account, objectType, id string) (string, error) {
	prefix, ok := relatedPaths[objectType]
	if !ok {
		return "", fmt.Errorf("thin event related object of type %q: syncd does not read its customer", objectType)
	}
	body, _, err := s.get(ctx, objectType, account, prefix+url.PathEscape(id))
	if err != nil {
		return "", err
	}
	var obj struct {
		Customer json.RawMessage `json:"customer"`
	}
	if err := json.Unmarshal(body, &obj); err != nil {
		return "", fmt.Errorf("read %s %s: %w", objectType, id, err)
	}
	return customerRef(obj.Customer), nil
}

// customerRef is the id of a customer field: an id, an expanded customer,
// or null.
func customerRef(raw json.RawMessage) string {
	var id string
	if json.Unmarshal(raw, &id) == nil {
		return id
	}
	var obj struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(raw, &obj) == nil {
		return obj.ID
	}
	return ""
}

// relatedKey is one object that thin events referred to.
type relatedKey struct{ account, objectType, id string }

func (k relatedKey) String() string { return k.account + "/" + k.objectType + "/" + k.id }

// MarkRelated asks for the customer of a thin event's related object to be
// read and refreshed. ev is the event's intake row: once the customer is
// known, the row is written again with it (a newer _version of the same
// event), which is what makes the refresh owed after a restart; until then
// the row, with no customer, is what recovery finds. Marks for one object
// coalesce. It never blocks.
func (r *Refresher) MarkRelated(ev row.StripeEvent, objectType, id string) {
	k := relatedKey{ev.AccountID, objectType, id}
	if !r.owns(k.String()) {
		return // the owner finds the event in ClickHouse
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	waiting, known := r.related[k]
	for _, w := range waiting {
		if w.ID == ev.ID {
			return // found again by a sweep while waiting
		}
	}
	r.related[k] = append(waiting, ev)
	if !known {
		r.relatedReady = append(r.relatedReady, k)
		r.signal()
	}
}

// resolve reads k's customer, gives up its place to read the API
// (release), records the customer on every event that referred to k, and
// marks the customer dirty. A failure leaves k to be retried.
func (r *Refresher) resolve(ctx context.Context, k relatedKey, release func()) error {
	r.mu.Lock()
	evs := r.related[k]
	r.mu.Unlock()
	customer, err := r.o.Source.RelatedCustomer(ctx, k.account, k.objectType, k.id)
	release()
	if NotFound(err) {
		customer, err = "", nil
	}
	if err != nil {
		return err
	}
	log := r.o.Logger.With(zap.String("account", k.account), zap.String("object_type", k.objectType), zap.String("object", k.id))
	if customer == "" {
		// Nothing to refresh. The events keep customer '', so a restart
		// within the owed window reads the object once more.
		log.Info("thin event's related object names no customer; nothing to refresh")
		r.dropRelated(k, len(evs))
		return nil
	}
	rows := make([][]any, len(evs))
	now := time.Now()
	for i, ev := range evs {
		ev.Customer = customer
		ev.ResolvedAt = now
		rows[i] = ev.Values()
	}
	ack, err := r.o.Sink.Write(ctx, row.StripeEventTable, rows...)
	if err != nil {
		return err
	}
	if err := ack.Wait(ctx); err != nil {
		return err
	}
	r.dropRelated(k, len(evs))
	log.Debug("thin event's customer read", zap.String("customer", customer), zap.Int("events", len(evs)))
	r.MarkDirty(k.account, customer, evs[len(evs)-1].ID)
	return nil
}

// dropRelated forgets the first n events of k, those just resolved; events
// that arrived meanwhile keep k queued.
func (r *Refresher) dropRelated(k relatedKey, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rest := r.related[k][n:]
	if len(rest) == 0 {
		delete(r.related, k)
		return
	}
	r.related[k] = rest
	r.relatedReady = append(r.relatedReady, k)
	r.signal()
}

// unresolvedThinEvents returns the thin trigger events received in the
// last window whose related object's customer was never recorded: the
// newest version of their intake row still has customer ”.
func unresolvedThinEvents(ctx context.Context, conn driver.Conn, window time.Duration, types []string) ([]row.StripeEvent, error) {
	secs := int64(window / time.Second)
	thin := make([]string, len(types))
	for i, t := range types {
		thin[i] = "v1." + t
	}
	rows, err := conn.Query(ctx, fmt.Sprintf(`SELECT id, type, account_id, livemode, created, api_version, payload, received_at
		FROM stripe_events FINAL
		WHERE customer = '' AND type IN (%s) AND created >= now() - %d AND received_at >= now() - %d`,
		sqlStrings(thin), max(2*secs, int64(2*time.Hour/time.Second)), secs))
	if err != nil {
		return nil, fmt.Errorf("find thin events whose customer is unknown: %w", err)
	}
	defer rows.Close()
	var out []row.StripeEvent
	for rows.Next() {
		var ev row.StripeEvent
		var livemode uint8
		var payload string
		if err := rows.Scan(&ev.ID, &ev.Type, &ev.AccountID, &livemode, &ev.Created, &ev.APIVersion, &payload, &ev.ReceivedAt); err != nil {
			return nil, fmt.Errorf("find thin events whose customer is unknown: %w", err)
		}
		ev.Livemode, ev.Payload = livemode == 1, []byte(payload)
		out = append(out, ev)
	}
	return out, rows.Err()
}

// thinRelated is the related object of a stored thin event.
func thinRelated(payload []byte) (objectType, id string, ok bool) {
	var ev struct {
		RelatedObject *struct {
			ID   string `json:"id"`
			Type string `json:"type"`
		} `json:"related_object"`
	}
	if json.Unmarshal(payload, &ev) != nil || ev.RelatedObject == nil || ev.RelatedObject.ID == "" {
		return "", "", false
	}
	if _, known := relatedPaths[ev.RelatedObject.Type]; !known {
		return "", "", false
	}
	return ev.RelatedObject.Type, ev.RelatedObject.ID, true
}
