package row

import (
	"encoding/json"
	"time"

	"github.com/shopspring/decimal"
)

const orbObject = "orb balance_transaction"

// Decimal(38, 12): at most 12 digits after the point and 26 before it.
const (
	orbScale      = 12
	orbIntDigits  = 26
	orbColumnType = "Decimal(38, 12)"
)

// OrbCustomer is what an Orb transaction row takes from its customer: the
// transaction itself carries neither the customer nor the currency.
type OrbCustomer struct {
	ID                 string
	ExternalCustomerID *string
	Currency           string
}

// OrbTxn is a row of orb_customer_balance_transactions.
type OrbTxn struct {
	ID                 string
	CustomerID         string
	ExternalCustomerID *string
	Action             string
	Type               string
	Amount             decimal.Decimal
	StartingBalance    decimal.Decimal
	EndingBalance      decimal.Decimal
	Currency           string
	CreatedAt          time.Time
	Description        *string
	InvoiceID          *string
	CreditNoteID       *string
	Raw                []byte
	rawStable          bool // Meta.RawStable
	Source             string
	EventID            *string
	ObservedAt         time.Time
	Version            uint64
	SyncedAt           time.Time
}

type orbWire struct {
	ID              *string         `json:"id"`
	Action          *string         `json:"action"`
	Amount          *string         `json:"amount"`
	CreatedAt       *string         `json:"created_at"`
	CreditNote      json.RawMessage `json:"credit_note"`
	Description     json.RawMessage `json:"description"`
	EndingBalance   *string         `json:"ending_balance"`
	Invoice         json.RawMessage `json:"invoice"`
	StartingBalance *string         `json:"starting_balance"`
	Type            *string         `json:"type"`
}

// NormalizeOrb turns one Orb customer balance transaction (raw JSON) of
// customer c into a row.
func NormalizeOrb(raw []byte, c OrbCustomer, m Meta) (*OrbTxn, error) {
	var w orbWire
	if err := decodeObject(orbObject, raw, &w); err != nil {
		return nil, err
	}
	id := ""
	if w.ID != nil {
		id = *w.ID
	}
	bad := func(field, reason string) error {
		return &FieldError{Object: orbObject, ID: id, Field: field, Reason: reason}
	}
	switch {
	case id == "":
		return nil, bad("id", "missing")
	case c.ID == "":
		return nil, bad("customer.id", "missing")
	case c.Currency == "":
		return nil, bad("customer.currency", "missing")
	case w.Action == nil || *w.Action == "":
		return nil, bad("action", "missing")
	case w.Type == nil || *w.Type == "":
		return nil, bad("type", "missing")
	case w.CreatedAt == nil:
		return nil, bad("created_at", "missing")
	}
	created, err := parseOrbTime(*w.CreatedAt)
	if err != nil {
		return nil, bad("created_at", "not an ISO 8601 time")
	}
	if !FitsDateTime(created) {
		return nil, bad("created_at", created.Format(time.RFC3339Nano)+" is outside "+dateTimeRange)
	}
	r := &OrbTxn{
		ID:                 id,
		CustomerID:         c.ID,
		ExternalCustomerID: c.ExternalCustomerID,
		Action:             *w.Action,
		Type:               *w.Type,
		Currency:           c.Currency,
		CreatedAt:          created,
		Raw:                raw,
		rawStable:          m.RawStable,
		Source:             m.Source,
		EventID:            m.EventID,
		ObservedAt:         m.ObservedAt.UTC(),
		Version:            Version(m.ObservedAt),
		SyncedAt:           time.Now().UTC(),
	}
	for _, f := range []struct {
		name string
		v    *string
		dst  *decimal.Decimal
	}{
		{"amount", w.Amount, &r.Amount},
		{"starting_balance", w.StartingBalance, &r.StartingBalance},
		{"ending_balance", w.EndingBalance, &r.EndingBalance},
	} {
		if f.v == nil {
			return nil, bad(f.name, "missing")
		}
		d, why := parseDecimal(*f.v)
		if why != "" {
			return nil, bad(f.name, why)
		}
		*f.dst = d
	}
	if err := readOptionals(bad,
		optional{"description", w.Description, &r.Description, nullableString},
		optional{"invoice", w.Invoice, &r.InvoiceID, expandableID},
		optional{"credit_note", w.CreditNote, &r.CreditNoteID, expandableID},
	); err != nil {
		return nil, err
	}
	return r, nil
}

// parseDecimal reads Orb's decimal string exactly, refusing what
// Decimal(38, 12) cannot hold rather than rounding it.
func parseDecimal(s string) (decimal.Decimal, string) {
	d, err := decimal.NewFromString(s)
	if err != nil || s == "" {
		return decimal.Decimal{}, "not a decimal string"
	}
	if -d.Exponent() > orbScale && !d.Equal(d.Truncate(orbScale)) {
		return decimal.Decimal{}, "more than 12 decimal places do not fit " + orbColumnType
	}
	if len(d.Truncate(0).Abs().String()) > orbIntDigits {
		return decimal.Decimal{}, "more than 26 integer digits do not fit " + orbColumnType
	}
	return d, ""
}

func parseOrbTime(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	_, err := time.Parse(time.RFC3339Nano, s)
	return time.Time{}, err
}

// Values returns the row in OrbTxnTable's column order.
func (r *OrbTxn) Values() []any {
	return []any{&r.ID, &r.CustomerID, r.ExternalCustomerID, &r.Action, &r.Type, &r.Amount, &r.StartingBalance,
		&r.EndingBalance, &r.Currency, &r.CreatedAt, r.Description, r.InvoiceID, r.CreditNoteID,
		rawValue(r.Raw, r.rawStable), &r.Source, r.EventID, &r.ObservedAt, &r.Version, &r.SyncedAt}
}
