package orbemu

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/syncd/syncd/internal/orbsig"
)

// EventBalanceTransactionCreated is the one event type the emulator sends.
const EventBalanceTransactionCreated = "customer.balance_transaction_created"

// envelope is Orb's webhook body.
type envelope struct {
	ID         string          `json:"id"`
	CreatedAt  string          `json:"created_at"`
	Type       string          `json:"type"`
	Customer   json.RawMessage `json:"customer"`
	Properties struct {
		BalanceTransaction json.RawMessage `json:"balance_transaction"`
	} `json:"properties"`
}

// recordEvent builds the envelope Orb sends, carrying the customer as it
// stands after t, and keeps it for Events. Callers hold e.mu.
func (e *Emulator) recordEvent(c *customer, t *Txn) Event {
	now := time.Now().UTC()
	ev := Event{ID: e.gen.id(), Type: EventBalanceTransactionCreated, CustomerID: c.ID, CreatedAt: now}
	var env envelope
	env.ID, env.CreatedAt, env.Type = ev.ID, now.Format("2006-01-02T15:04:05.000Z"), ev.Type
	env.Customer, env.Properties.BalanceTransaction = c.Raw, t.Raw
	raw, err := json.Marshal(env)
	if err != nil {
		panic(err) // both objects were marshalled by this package
	}
	ev.Raw = raw
	e.events = append(e.events, ev)
	return ev
}

// DeliveryStats counts webhook deliveries.
type DeliveryStats struct {
	Attempts  int64 // POSTs sent
	Delivered int64 // events answered 2xx
	Failed    int64 // events given up after every retry
	Pending   int64 // events queued or being retried
}

// DeliveryStats reports webhook deliveries so far.
func (e *Emulator) DeliveryStats() DeliveryStats { return DeliveryStats(e.webhooks.Stats()) }

// Deliver POSTs ev to the webhook URL again (or for the first time), signed
// anew, as Orb does on a retry. Tests use it to duplicate and reorder.
func (e *Emulator) Deliver(ev Event) { e.deliver(ev) }

// deliver queues ev for delivery, retried with backoff (much faster than
// Orb does).
func (e *Emulator) deliver(ev Event) { e.webhooks.Enqueue(ev.Raw) }

// webhookHeader signs each delivery attempt anew, as Orb does.
func (e *Emulator) webhookHeader(h http.Header, body []byte) {
	ts, sig := orbsig.Sign(body, e.cfg.WebhookSecret, time.Now())
	h.Set("Content-Type", "application/json")
	h.Set("User-Agent", "Orb-Webhooks/1.0")
	h.Set(orbsig.TimestampHeader, ts)
	h.Set(orbsig.SignatureHeader, sig)
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
