package stripeemu

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"sync/atomic"
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

type deliveries struct {
	attempts, delivered, failed, pending atomic.Int64
}

// DeliveryStats reports webhook deliveries so far.
func (e *Emulator) DeliveryStats() DeliveryStats {
	d := &e.deliveries
	return DeliveryStats{Attempts: d.attempts.Load(), Delivered: d.delivered.Load(),
		Failed: d.failed.Load(), Pending: d.pending.Load()}
}

// Deliver POSTs ev to the webhook URL again (or for the first time), signed
// anew, as Stripe does on a retry. Tests use it to duplicate and reorder.
func (e *Emulator) Deliver(ev Event) {
	e.deliver([]Event{ev})
}

func (e *Emulator) deliver(evs []Event) {
	if e.cfg.WebhookURL == "" {
		return
	}
	for _, ev := range evs {
		e.deliveries.pending.Add(1)
		if e.cfg.WebhookSync {
			e.send(ev)
			continue
		}
		go func() {
			e.sem <- struct{}{}
			defer func() { <-e.sem }()
			e.send(ev)
		}()
	}
}

// send POSTs ev until it is answered 2xx or the attempts run out, backing off
// between tries as Stripe does (much faster than Stripe's hours).
func (e *Emulator) send(ev Event) {
	defer e.deliveries.pending.Add(-1)
	backoff := e.cfg.WebhookBackoff
	for attempt := 0; attempt < e.cfg.WebhookAttempts; attempt++ {
		if attempt > 0 {
			select {
			case <-e.closing.Done():
				e.deliveries.failed.Add(1)
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
		}
		if e.post(ev) {
			e.deliveries.delivered.Add(1)
			return
		}
	}
	e.deliveries.failed.Add(1)
}

func (e *Emulator) post(ev Event) bool {
	e.deliveries.attempts.Add(1)
	signed := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{
		Payload: ev.Raw, Secret: e.cfg.WebhookSecret, Timestamp: time.Now(),
	})
	req, err := http.NewRequestWithContext(e.closing, http.MethodPost, e.cfg.WebhookURL, bytes.NewReader(ev.Raw))
	if err != nil {
		return false
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	req.Header.Set("User-Agent", "Stripe/1.0 (+https://stripe.com/docs/webhooks)")
	req.Header.Set("Stripe-Signature", signed.Header)
	resp, err := e.cfg.HTTPClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode >= 200 && resp.StatusCode < 300
}

// WaitDeliveries blocks until no webhook delivery is pending or ctx is done.
func (e *Emulator) WaitDeliveries(ctx context.Context) error {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for e.deliveries.pending.Load() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// Flush waits for every pending webhook delivery to finish.
func (e *Emulator) Flush() { _ = e.WaitDeliveries(context.Background()) }

// Close abandons pending retries and waits for in-flight deliveries.
func (e *Emulator) Close() error {
	e.stop()
	e.Flush()
	return nil
}
