package orbemu

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"sync/atomic"
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
// anew, as Orb does on a retry. Tests use it to duplicate and reorder.
func (e *Emulator) Deliver(ev Event) { e.deliver(ev) }

func (e *Emulator) deliver(ev Event) {
	if e.cfg.WebhookURL == "" {
		return
	}
	e.deliveries.pending.Add(1)
	if e.cfg.WebhookSync {
		e.send(ev)
		return
	}
	go func() {
		e.sem <- struct{}{}
		defer func() { <-e.sem }()
		e.send(ev)
	}()
}

// send POSTs ev until it is answered 2xx or the attempts run out, backing
// off between tries (much faster than Orb does).
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
	req, err := http.NewRequestWithContext(e.closing, http.MethodPost, e.cfg.WebhookURL, bytes.NewReader(ev.Raw))
	if err != nil {
		return false
	}
	ts, sig := orbsig.Sign(ev.Raw, e.cfg.WebhookSecret, time.Now())
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Orb-Webhooks/1.0")
	req.Header.Set(orbsig.TimestampHeader, ts)
	req.Header.Set(orbsig.SignatureHeader, sig)
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
