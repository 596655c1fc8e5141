package row

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"
)

const stripeObject = "customer_balance_transaction"

// StripeTxn is a row of stripe_customer_balance_transactions.
type StripeTxn struct {
	AccountID       string
	ID              string
	Livemode        bool
	Customer        string
	CustomerAccount *string
	Amount          int64
	Currency        string
	Created         time.Time
	Type            string
	Description     *string
	EndingBalance   int64
	Invoice         *string
	CreditNote      *string
	CheckoutSession *string
	MetadataKeys    []string
	MetadataValues  []string
	Raw             []byte
	rawStable       bool // Meta.RawStable
	Source          string
	EventID         *string
	ObservedAt      time.Time
	Version         uint64
	SyncedAt        time.Time
}

// stripeWire is the API's shape; pointers tell absent from zero.
type stripeWire struct {
	ID              *string           `json:"id"`
	Object          *string           `json:"object"`
	Amount          *int64            `json:"amount"`
	CheckoutSession json.RawMessage   `json:"checkout_session"`
	Created         *int64            `json:"created"`
	CreditNote      json.RawMessage   `json:"credit_note"`
	Currency        *string           `json:"currency"`
	Customer        json.RawMessage   `json:"customer"`
	CustomerAccount json.RawMessage   `json:"customer_account"`
	Description     json.RawMessage   `json:"description"`
	EndingBalance   *int64            `json:"ending_balance"`
	Invoice         json.RawMessage   `json:"invoice"`
	Livemode        *bool             `json:"livemode"`
	Metadata        map[string]string `json:"metadata"`
	Type            *string           `json:"type"`
}

// NormalizeStripe turns one customer_balance_transaction, as raw JSON from
// the API or a webhook, into a row. raw is kept as received in _raw.
func NormalizeStripe(raw []byte, m Meta) (*StripeTxn, error) {
	var w stripeWire
	if decodeStripeFast(raw, &w) {
		return stripeRow(&w, raw, m)
	}
	return normalizeStripeSlow(raw, m)
}

// normalizeStripeSlow is NormalizeStripe without the fast path: for what
// the fast path declines, and to test the fast path against.
func normalizeStripeSlow(raw []byte, m Meta) (*StripeTxn, error) {
	var w stripeWire
	if err := decodeObject(stripeObject, raw, &w); err != nil {
		return nil, err
	}
	return stripeRow(&w, raw, m)
}

// stripeRow checks a decoded object and makes its row.
func stripeRow(w *stripeWire, raw []byte, m Meta) (*StripeTxn, error) {
	id := ""
	if w.ID != nil {
		id = *w.ID
	}
	bad := func(field, reason string) error {
		return &FieldError{Object: stripeObject, ID: id, Field: field, Reason: reason}
	}
	switch {
	case id == "":
		return nil, bad("id", "missing")
	case w.Object != nil && *w.Object != stripeObject:
		return nil, bad("object", "is "+*w.Object+", want "+stripeObject)
	case w.Amount == nil:
		return nil, bad("amount", "missing")
	case w.Currency == nil || len(*w.Currency) != 3:
		return nil, bad("currency", "missing or not a three-letter code")
	case w.Created == nil:
		return nil, bad("created", "missing")
	case !unixFitsDateTime(*w.Created):
		return nil, bad("created", strconv.FormatInt(*w.Created, 10)+" is outside "+dateTimeRange)
	case w.EndingBalance == nil:
		return nil, bad("ending_balance", "missing")
	case w.Type == nil || *w.Type == "":
		return nil, bad("type", "missing")
	case w.Livemode == nil:
		return nil, bad("livemode", "missing")
	}
	r := &StripeTxn{
		AccountID:     m.AccountID,
		ID:            id,
		Livemode:      *w.Livemode,
		Amount:        *w.Amount,
		Currency:      strings.ToLower(*w.Currency),
		Created:       time.Unix(*w.Created, 0).UTC(),
		Type:          *w.Type,
		EndingBalance: *w.EndingBalance,
		Raw:           raw,
		rawStable:     m.RawStable,
		Source:        m.Source,
		EventID:       m.EventID,
		ObservedAt:    m.ObservedAt.UTC(),
		Version:       Version(m.ObservedAt),
		SyncedAt:      time.Now().UTC(),
	}
	customer, why := expandableID(w.Customer)
	if customer == nil {
		if why == "" {
			why = "missing"
		}
		return nil, bad("customer", why)
	}
	r.Customer = *customer
	if err := readOptionals(bad,
		optional{"customer_account", w.CustomerAccount, &r.CustomerAccount, nullableString},
		optional{"description", w.Description, &r.Description, nullableString},
		optional{"invoice", w.Invoice, &r.Invoice, expandableID},
		optional{"credit_note", w.CreditNote, &r.CreditNote, expandableID},
		optional{"checkout_session", w.CheckoutSession, &r.CheckoutSession, expandableID},
	); err != nil {
		return nil, err
	}
	r.MetadataKeys, r.MetadataValues = sortedMetadata(w.Metadata)
	return r, nil
}

// Values returns the row in StripeTxnTable's column order. Scalars are
// given as pointers into r (the driver reads either), which spares boxing
// each one on the heap: r must not change while the row is queued. _raw is
// a copy of Raw unless Meta.RawStable said Raw is never written again.
func (r *StripeTxn) Values() []any {
	return []any{&r.AccountID, &r.ID, boolByte(r.Livemode), &r.Customer, r.CustomerAccount, &r.Amount, &r.Currency,
		&r.Created, &r.Type, r.Description, &r.EndingBalance, r.Invoice, r.CreditNote, r.CheckoutSession,
		r.MetadataKeys, r.MetadataValues, rawValue(r.Raw, r.rawStable), &r.Source, r.EventID, &r.ObservedAt, &r.Version, &r.SyncedAt}
}
