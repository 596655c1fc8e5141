package webhook

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/syncd/syncd/internal/metrics"
	"github.com/syncd/syncd/internal/orbsig"
	"github.com/syncd/syncd/internal/row"
)

const providerOrb = "orb"

// OrbTxnCreated is the Orb event that carries a new balance transaction.
const OrbTxnCreated = "customer.balance_transaction_created"

// OrbOptions configure the Orb route.
type OrbOptions struct {
	Common
	// Secrets are the endpoint's signing secrets; a delivery signed with
	// any of them is accepted (rotation keeps two live at once).
	Secrets []string
	// Tolerance bounds the signed timestamp's age and its skew into the
	// future; 0 means 5 minutes.
	Tolerance time.Duration
}

// Orb returns the handler of POST /webhooks/orb. Unlike Stripe's, Orb's
// event carries the transaction itself, so it becomes a row in the same
// request; there is nothing to refresh.
func Orb(opts OrbOptions) http.Handler {
	a := &orbAccepter{secrets: opts.Secrets, tolerance: opts.Tolerance}
	return newRoute(providerOrb, opts.Common, a.accept)
}

type orbAccepter struct {
	secrets   []string
	tolerance time.Duration
}

// orbEnvelope is the part of an Orb event syncd reads; the transaction
// stays raw for the normaliser.
type orbEnvelope struct {
	ID         string          `json:"id"`
	Type       string          `json:"type"`
	CreatedAt  string          `json:"created_at"`
	Customer   json.RawMessage `json:"customer"`
	Properties struct {
		BalanceTransaction json.RawMessage `json:"balance_transaction"`
	} `json:"properties"`
}

// orbCustomer is what a transaction row takes from the envelope's customer.
type orbCustomer struct {
	ID                 string  `json:"id"`
	ExternalCustomerID *string `json:"external_customer_id"`
	Currency           *string `json:"currency"`
}

func (a *orbAccepter) accept(header http.Header, body []byte, now time.Time) (*delivery, error) {
	if err := orbsig.Verify(body, header, a.secrets, a.tolerance, now); err != nil {
		return nil, badSignature(orbSigReason(err))
	}
	return a.decode(body, now)
}

// decode turns a verified body received at now into its rows; Recover
// runs it again on orb_events' payloads.
func (a *orbAccepter) decode(body []byte, now time.Time) (*delivery, error) {
	var ev orbEnvelope
	if err := json.Unmarshal(body, &ev); err != nil {
		return nil, badRequest("malformed event JSON")
	}
	switch {
	case ev.ID == "":
		return nil, badRequest("event has no id")
	case ev.Type == "":
		return nil, badRequest("event has no type")
	}
	created, err := parseOrbEventTime(ev.CreatedAt)
	if err != nil {
		return nil, badRequest("event has no valid created_at")
	}
	var cust orbCustomer
	if raw := bytes.TrimSpace(ev.Customer); len(raw) > 0 && string(raw) != "null" {
		if raw[0] != '{' || json.Unmarshal(raw, &cust) != nil {
			return nil, badRequest("event's customer is not an object")
		}
	}

	d := &delivery{id: ev.ID, typ: ev.Type, typeLabel: metrics.EventType(providerOrb, ev.Type), writes: make([]write, 0, 2)}
	if ev.Type == OrbTxnCreated {
		currency := ""
		if cust.Currency != nil {
			currency = *cust.Currency
		}
		id := ev.ID
		txn, err := row.NormalizeOrb(ev.Properties.BalanceTransaction,
			row.OrbCustomer{ID: cust.ID, ExternalCustomerID: cust.ExternalCustomerID, Currency: currency},
			row.Meta{Source: row.SourceWebhook, EventID: &id, ObservedAt: created})
		if err != nil {
			return nil, badRequest(err.Error())
		}
		txn.SyncedAt = now.UTC()
		d.writes = append(d.writes, write{table: row.OrbTxnTable, row: txn.Values(), derived: true})
	} else {
		d.ignored = true
	}
	intake := row.OrbEvent{ID: ev.ID, Type: ev.Type, Created: created, CustomerID: cust.ID, Payload: body, ReceivedAt: now}
	d.writes = append(d.writes, write{table: row.OrbEventTable, row: intake.Values()})
	return d, nil
}

// parseOrbEventTime reads an event's created_at: ISO 8601 with a zone, or
// zone-less UTC as in X-Orb-Timestamp.
func parseOrbEventTime(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t, err = time.Parse("2006-01-02T15:04:05.999999999", s)
	}
	if err == nil && (t.Year() < 1970 || t.Year() > 2105) {
		err = errors.New("created_at outside what DateTime holds")
	}
	return t.UTC(), err
}

// orbSigReason says why a signature was refused; orbsig's errors never
// quote a secret or a signature.
func orbSigReason(err error) string {
	return strings.TrimPrefix(err.Error(), "orbsig: ")
}
