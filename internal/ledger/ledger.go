// Package ledger is the Go statement of the analyst layer's conventions
// (schema/0003_analyst_views.sql): one sign, major units, one row per
// transaction. Its tests hold the views and docs/queries.md to it.
package ledger

import (
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"github.com/syncd/syncd/internal/row"
)

// Exponents are the currencies whose minor unit is not a hundredth, as the
// currency_exponents table ships them.
var Exponents = map[string]int32{
	"bif": 0, "clp": 0, "djf": 0, "gnf": 0, "jpy": 0, "kmf": 0, "krw": 0, "mga": 0,
	"pyg": 0, "rwf": 0, "ugx": 0, "vnd": 0, "vuv": 0, "xaf": 0, "xof": 0, "xpf": 0,
	"bhd": 3, "jod": 3, "kwd": 3, "omr": 3, "tnd": 3,
}

// Exponent is the number of digits after the point in currency's minor
// unit: 2 unless listed in Exponents.
func Exponent(currency string) int32 {
	if e, ok := Exponents[strings.ToLower(currency)]; ok {
		return e
	}
	return 2
}

// Entry is one row of the balance_ledger view.
type Entry struct {
	Provider            string
	AccountID           string
	Customer            string
	TransactionID       string
	Created             time.Time
	Currency            string
	Kind                string
	CreditDelta         decimal.Decimal // credit gained; negative when used up
	CreditBalanceBefore decimal.Decimal
	CreditBalanceAfter  decimal.Decimal
	InvoiceID           *string
	CreditNoteID        *string
	Description         *string
	SyncedAt            time.Time
}

// major turns an amount in a currency's minor unit into its major unit.
func major(minor int64, currency string) decimal.Decimal {
	return decimal.New(minor, -Exponent(currency))
}

// FromStripe is the ledger entry of a Stripe transaction. Stripe's amount
// is negative for a credit to the customer, and its balance is negative
// while the customer holds credit: both flip sign.
func FromStripe(r *row.StripeTxn) Entry {
	cur := strings.ToLower(r.Currency)
	return Entry{
		Provider: "stripe", AccountID: r.AccountID, Customer: r.Customer, TransactionID: r.ID,
		Created: r.Created.UTC(), Currency: cur, Kind: r.Type,
		CreditDelta:         major(-r.Amount, cur),
		CreditBalanceBefore: major(-(r.EndingBalance - r.Amount), cur),
		CreditBalanceAfter:  major(-r.EndingBalance, cur),
		InvoiceID:           r.Invoice, CreditNoteID: r.CreditNote, Description: r.Description,
		SyncedAt: r.SyncedAt.UTC().Truncate(time.Second),
	}
}

// FromOrb is the ledger entry of an Orb transaction. Orb's amounts are
// already in major units and its balance is the credit the customer holds;
// type says whether amount was added or taken away.
func FromOrb(r *row.OrbTxn) Entry {
	var delta decimal.Decimal
	switch r.Type {
	case "increment":
		delta = r.Amount
	case "decrement":
		delta = r.Amount.Neg()
	default:
		delta = r.EndingBalance.Sub(r.StartingBalance)
	}
	return Entry{
		Provider: "orb", Customer: r.CustomerID, TransactionID: r.ID,
		Created: r.CreatedAt.UTC(), Currency: strings.ToLower(r.Currency), Kind: r.Action,
		CreditDelta: delta, CreditBalanceBefore: r.StartingBalance, CreditBalanceAfter: r.EndingBalance,
		InvoiceID: r.InvoiceID, CreditNoteID: r.CreditNoteID, Description: r.Description,
		SyncedAt: r.SyncedAt.UTC().Truncate(time.Second),
	}
}
