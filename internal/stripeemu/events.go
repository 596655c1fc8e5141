package stripeemu

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/stripe/stripe-go/v82/webhook"
)

type wireEvent struct {
	ID              string          `json:"id"`
	Object          string          `json:"object"`
	Account         string          `json:"account,omitempty"`
	APIVersion      string          `json:"api_version"`
	Created         int64           `json:"created"`
	Data            wireEventData   `json:"data"`
	Livemode        bool            `json:"livemode"`
	PendingWebhooks int             `json:"pending_webhooks"`
	Request         wireEventSource `json:"request"`
	Type            string          `json:"type"`
}

type wireEventData struct {
	Object             json.RawMessage `json:"object"`
	PreviousAttributes map[string]any  `json:"previous_attributes,omitempty"`
}

// wireThinEvent is a thin event as an event destination delivers it.
type wireThinEvent struct {
	ID            string          `json:"id"`
	Object        string          `json:"object"`
	Type          string          `json:"type"`
	Livemode      bool            `json:"livemode"`
	Created       string          `json:"created"`
	Context       *string         `json:"context"`
	RelatedObject wireRelatedObj  `json:"related_object"`
	SnapshotEvent string          `json:"snapshot_event"`
	Reason        json.RawMessage `json:"reason"`
}

type wireRelatedObj struct {
	ID   string `json:"id"`
	Type string `json:"type"`
	URL  string `json:"url"`
}

// objectURLs are the API paths of the objects events carry.
var objectURLs = map[string]string{
	"customer":         "/v1/customers/",
	"invoice":          "/v1/invoices/",
	"credit_note":      "/v1/credit_notes/",
	"checkout.session": "/v1/checkout/sessions/",
}

// thinEvent is ev as a thin event about object (its id and type).
func thinEvent(ev *event, livemode bool, head objectHead) []byte {
	w := wireThinEvent{
		ID: ev.ThinID, Object: "v2.core.event", Type: "v1." + ev.Type,
		Livemode: livemode, Created: time.Unix(ev.Created, 0).UTC().Format("2006-01-02T15:04:05.000Z"),
		RelatedObject: wireRelatedObj{ID: head.ID, Type: head.Object, URL: objectURLs[head.Object] + head.ID},
		SnapshotEvent: ev.ID, Reason: json.RawMessage("null"),
	}
	if ev.Account != "" {
		w.Context = &ev.Account
	}
	raw, err := json.Marshal(w)
	if err != nil {
		panic(err)
	}
	return raw
}

type objectHead struct {
	ID     string `json:"id"`
	Object string `json:"object"`
}

type wireEventSource struct {
	ID             *string `json:"id"`
	IdempotencyKey *string `json:"idempotency_key"`
}

// recordEvent stores an event in a's list, keeping it ordered by (created, seq).
// fromAPI says whether an API request caused it (Stripe then fills request.id).
func (e *Emulator) recordEvent(a *account, c *customer, typ string, created int64, object []byte, prev map[string]any, fromAPI bool) *event {
	ev := &event{Event: Event{ID: e.gen.id("evt_", 24), Account: a.id, Type: typ,
		Customer: c.ID, Created: created}, seq: e.gen.next()}
	w := wireEvent{
		ID: ev.ID, Object: "event", Account: a.id, APIVersion: APIVersion, Created: created, Type: typ,
		Data:     wireEventData{Object: object, PreviousAttributes: prev},
		Livemode: e.cfg.Livemode,
	}
	if e.cfg.WebhookURL != "" {
		w.PendingWebhooks = 1
	}
	if fromAPI {
		w.Request.ID = ptr(e.gen.id("req_", 14))
	}
	raw, err := json.Marshal(w)
	if err != nil {
		panic(err)
	}
	ev.Raw = raw
	var head objectHead
	if err := json.Unmarshal(object, &head); err != nil {
		panic(err)
	}
	// Stripe's thin event ids differ from the snapshot event's; this one is
	// derived from it, so the seeded sequence stays as it was.
	ev.ThinID = "evt_65" + strings.TrimPrefix(ev.ID, "evt_")
	ev.Thin = thinEvent(ev, e.cfg.Livemode, head)
	if head.Object != "customer" {
		a.objects[head.ID] = object
	}
	// Usually the newest; a runtime mutation may be older than a neighbour's.
	i := sort.Search(len(a.events), func(i int) bool { return a.events[i].Created > created })
	a.events = append(a.events, nil)
	copy(a.events[i+1:], a.events[i:])
	a.events[i] = ev
	a.eventByID[ev.ID] = ev
	return ev
}

// txnEvents records the events Stripe sends when t changed c's balance:
// always customer.updated, and the invoice or credit note event behind it.
func (e *Emulator) txnEvents(a *account, c *customer, t *txn, fromAPI bool) []*event {
	var evs []*event
	switch {
	case t.CreditNote != nil:
		obj, _ := json.Marshal(map[string]any{"id": *t.CreditNote, "object": "credit_note",
			"customer": c.ID, "invoice": t.Invoice, "currency": c.Currency, "amount": -t.Amount,
			"created": t.Created, "livemode": t.Livemode, "status": "issued"})
		evs = append(evs, e.recordEvent(a, c, "credit_note.created", t.Created, obj, nil, fromAPI))
	case t.Invoice != nil:
		obj, _ := json.Marshal(map[string]any{"id": *t.Invoice, "object": "invoice",
			"customer": c.ID, "currency": c.Currency, "status": "paid", "amount_paid": 0,
			"created": t.Created, "livemode": t.Livemode})
		evs = append(evs, e.recordEvent(a, c, "invoice.paid", t.Created, obj, nil, fromAPI))
	case t.CheckoutSession != nil:
		obj, _ := json.Marshal(map[string]any{"id": *t.CheckoutSession, "object": "checkout.session",
			"customer": c.ID, "currency": c.Currency, "status": "complete", "mode": "subscription",
			"created": t.Created, "livemode": t.Livemode})
		evs = append(evs, e.recordEvent(a, c, "checkout.session.completed", t.Created, obj, nil, fromAPI))
	}
	prev := map[string]any{"balance": t.EndingBalance - t.Amount}
	evs = append(evs, e.recordEvent(a, c, "customer.updated", t.Created,
		marshalCustomer(c, t.EndingBalance), prev, fromAPI))
	return evs
}

// DeliveryStats counts webhook deliveries.
type DeliveryStats struct {
	Attempts  int64 `json:"attempts"`  // POSTs sent
	Delivered int64 `json:"delivered"` // events answered 2xx
	Failed    int64 `json:"failed"`    // events given up after every retry
	Pending   int64 `json:"pending"`   // events queued or being retried
}

// DeliveryStats reports webhook deliveries so far.
func (e *Emulator) DeliveryStats() DeliveryStats { return DeliveryStats(e.webhooks.Stats()) }

// Deliver POSTs ev to the webhook URL again (or for the first time), signed
// anew, as Stripe does on a retry. Tests use it to duplicate and reorder.
func (e *Emulator) Deliver(ev Event) {
	e.deliver([]Event{ev})
}

// deliver queues evs for delivery, each retried with backoff as Stripe does
// (much faster than Stripe's hours).
func (e *Emulator) deliver(evs []Event) {
	for _, ev := range evs {
		if e.cfg.ThinEvents {
			e.webhooks.Enqueue(ev.Thin)
		} else {
			e.webhooks.Enqueue(ev.Raw)
		}
	}
}

// webhookHeader signs each delivery attempt anew, as Stripe does.
func (e *Emulator) webhookHeader(h http.Header, body []byte) {
	signed := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{
		Payload: body, Secret: e.cfg.WebhookSecret, Timestamp: time.Now(),
	})
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("User-Agent", "Stripe/1.0 (+https://stripe.com/docs/webhooks)")
	h.Set("Stripe-Signature", signed.Header)
}

// WaitDeliveries blocks until no webhook delivery is pending or ctx is done.
func (e *Emulator) WaitDeliveries(ctx context.Context) error { return e.webhooks.Wait(ctx) }

// Flush waits for every pending webhook delivery to finish.
func (e *Emulator) Flush() { _ = e.WaitDeliveries(context.Background()) }

// Close abandons pending retries and waits for in-flight deliveries.
func (e *Emulator) Close() error {
	e.webhooks.Close()
	return nil
}
