package row

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func ptr(s string) *string { return &s }

func strp(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}

var observed = time.Date(2026, 11, 23, 3, 0, 0, 123, time.UTC)

func TestNormalizeStripeDocumentedExamples(t *testing.T) {
	meta := Meta{AccountID: "acct_1", Source: SourceWebhook, EventID: ptr("evt_1"), ObservedAt: observed}
	tests := []struct {
		file string
		want StripeTxn
	}{
		{"stripe_documented.json", StripeTxn{
			ID: "cbtxn_1MrU9qLkdIwHu7ixhdjxGBgI", Customer: "cus_NcjdgdwZyI9Rj7", Amount: -500, Currency: "usd",
			Created: time.Unix(1680216086, 0).UTC(), Type: "adjustment", EndingBalance: -500,
			MetadataKeys: []string{}, MetadataValues: []string{},
		}},
		{"stripe_expanded.json", StripeTxn{
			ID: "cbtxn_1NxExpandedCustomer000001", Livemode: true, Customer: "cus_NcjdgdwZyI9Rj7",
			CustomerAccount: ptr("acct_1CustomerAccount01"), Amount: 1250, Currency: "eur",
			Created: time.Unix(1700000000, 0).UTC(), Type: "applied_to_invoice", Description: ptr("Applied to invoice"),
			EndingBalance: 750, Invoice: ptr("in_1NxInvoice000000001"), CreditNote: ptr("cn_1NxCreditNote0000001"),
			MetadataKeys: []string{"channel", "order_id"}, MetadataValues: []string{"support", "6735"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			raw := readFixture(t, tt.file)
			got, err := NormalizeStripe(raw, meta)
			if err != nil {
				t.Fatal(err)
			}
			w := tt.want
			if got.ID != w.ID || got.Livemode != w.Livemode || got.Customer != w.Customer || got.Amount != w.Amount ||
				got.Currency != w.Currency || !got.Created.Equal(w.Created) || got.Type != w.Type ||
				got.EndingBalance != w.EndingBalance {
				t.Errorf("scalars: got %+v", got)
			}
			for name, pair := range map[string][2]*string{
				"customer_account": {got.CustomerAccount, w.CustomerAccount},
				"description":      {got.Description, w.Description},
				"invoice":          {got.Invoice, w.Invoice},
				"credit_note":      {got.CreditNote, w.CreditNote},
				"checkout_session": {got.CheckoutSession, w.CheckoutSession},
			} {
				if strp(pair[0]) != strp(pair[1]) {
					t.Errorf("%s = %s, want %s", name, strp(pair[0]), strp(pair[1]))
				}
			}
			if strings.Join(got.MetadataKeys, ",") != strings.Join(w.MetadataKeys, ",") ||
				strings.Join(got.MetadataValues, ",") != strings.Join(w.MetadataValues, ",") {
				t.Errorf("metadata = %v %v", got.MetadataKeys, got.MetadataValues)
			}
			if string(got.Raw) != string(raw) {
				t.Error("_raw is not the bytes as received")
			}
			if got.AccountID != "acct_1" || got.Source != SourceWebhook || strp(got.EventID) != "evt_1" ||
				!got.ObservedAt.Equal(observed) || got.Version != uint64(observed.UnixNano()) {
				t.Errorf("meta columns: %+v", got)
			}
			if n := len(got.Values()); n != len(StripeTxnTable.Columns) {
				t.Errorf("Values has %d entries for %d columns", n, len(StripeTxnTable.Columns))
			}
		})
	}
}

// Every documented type, and one Stripe may add tomorrow, is kept as sent.
func TestNormalizeStripeKeepsEveryType(t *testing.T) {
	for _, typ := range []string{
		"adjustment", "applied_to_invoice", "credit_note", "initial", "invoice_overpaid", "invoice_too_large",
		"invoice_too_small", "migration", "unapplied_from_invoice", "unspent_receiver_credit",
		"checkout_session_subscription_payment", "checkout_session_subscription_payment_canceled",
		"a_type_invented_next_year",
	} {
		raw := strings.Replace(string(readFixture(t, "stripe_documented.json")), `"adjustment"`, `"`+typ+`"`, 1)
		got, err := NormalizeStripe([]byte(raw), Meta{ObservedAt: observed})
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		if got.Type != typ {
			t.Errorf("type = %q, want %q", got.Type, typ)
		}
	}
}

func TestNormalizeStripeExpandableIDs(t *testing.T) {
	tests := []struct {
		name, value string
		want        *string
	}{
		{"string", `"cs_123"`, ptr("cs_123")},
		{"null", `null`, nil},
		{"expanded", `{"id":"cs_123","object":"checkout.session","amount_total":100}`, ptr("cs_123")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw := strings.Replace(string(readFixture(t, "stripe_documented.json")), `"checkout_session": null`, `"checkout_session": `+tt.value, 1)
			got, err := NormalizeStripe([]byte(raw), Meta{ObservedAt: observed})
			if err != nil {
				t.Fatal(err)
			}
			if strp(got.CheckoutSession) != strp(tt.want) {
				t.Errorf("checkout_session = %s, want %s", strp(got.CheckoutSession), strp(tt.want))
			}
		})
	}
	// Absent optional references are NULL, not "".
	var m map[string]any
	_ = json.Unmarshal(readFixture(t, "stripe_documented.json"), &m)
	for _, k := range []string{"invoice", "credit_note", "checkout_session", "customer_account", "description", "metadata"} {
		delete(m, k)
	}
	raw, _ := json.Marshal(m)
	got, err := NormalizeStripe(raw, Meta{ObservedAt: observed})
	if err != nil {
		t.Fatal(err)
	}
	if got.Invoice != nil || got.CreditNote != nil || got.CheckoutSession != nil || got.CustomerAccount != nil || got.Description != nil {
		t.Errorf("absent references should be NULL: %+v", got)
	}
	if len(got.MetadataKeys) != 0 {
		t.Errorf("absent metadata should be empty")
	}
}

func TestNormalizeStripeRejectsMalformed(t *testing.T) {
	tests := []struct {
		name, from, to, field string
	}{
		{"no id", `"id": "cbtxn_1MrU9qLkdIwHu7ixhdjxGBgI",`, ``, "id"},
		{"amount as string", `"amount": -500`, `"amount": "-500"`, "amount"},
		{"amount missing", `"amount": -500,`, ``, "amount"},
		{"fractional amount", `"amount": -500`, `"amount": -5.5`, "amount"},
		{"customer missing", `"customer": "cus_NcjdgdwZyI9Rj7",`, ``, "customer"},
		{"customer null", `"customer": "cus_NcjdgdwZyI9Rj7"`, `"customer": null`, "customer"},
		{"customer object without id", `"customer": "cus_NcjdgdwZyI9Rj7"`, `"customer": {"object":"customer"}`, "customer"},
		{"invoice a number", `"invoice": null`, `"invoice": 7`, "invoice"},
		{"created missing", `"created": 1680216086,`, ``, "created"},
		{"currency", `"currency": "usd"`, `"currency": "dollars"`, "currency"},
		{"wrong object", `"object": "customer_balance_transaction"`, `"object": "invoice"`, "object"},
		{"metadata not strings", `"metadata": {}`, `"metadata": {"a": 1}`, "metadata"},
		{"description a number", `"description": null`, `"description": 5`, "description"},
		{"livemode missing", `"livemode": false,`, ``, "livemode"},
		{"truncated", `"type": "adjustment"`, `"type": "adj`, "(object)"},
	}
	doc := string(readFixture(t, "stripe_documented.json"))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(doc, tt.from) {
				t.Fatalf("fixture lacks %q", tt.from)
			}
			got, err := NormalizeStripe([]byte(strings.Replace(doc, tt.from, tt.to, 1)), Meta{ObservedAt: observed})
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("want a FieldError, got row %+v, err %v", got, err)
			}
			if got != nil {
				t.Error("a malformed object must not give a row")
			}
			if !strings.HasPrefix(fe.Field, tt.field) {
				t.Errorf("error names field %q, want %q (%v)", fe.Field, tt.field, err)
			}
		})
	}
	for _, raw := range []string{"", "null", "[]", `"x"`, "{"} {
		if _, err := NormalizeStripe([]byte(raw), Meta{}); err == nil {
			t.Errorf("%q: want an error", raw)
		}
	}
}

func orbTxn(t testing.TB) ([]byte, OrbCustomer) {
	t.Helper()
	var env struct {
		Customer struct {
			ID                 string  `json:"id"`
			ExternalCustomerID *string `json:"external_customer_id"`
			Currency           string  `json:"currency"`
		} `json:"customer"`
		Properties struct {
			BalanceTransaction json.RawMessage `json:"balance_transaction"`
		} `json:"properties"`
	}
	if err := json.Unmarshal(readFixture(t, "orb_event.json"), &env); err != nil {
		t.Fatal(err)
	}
	return env.Properties.BalanceTransaction, OrbCustomer{ID: env.Customer.ID, ExternalCustomerID: env.Customer.ExternalCustomerID, Currency: env.Customer.Currency}
}

func TestNormalizeOrbDocumentedExample(t *testing.T) {
	raw, c := orbTxn(t)
	got, err := NormalizeOrb(raw, c, Meta{Source: SourceWebhook, EventID: ptr("V8Zd7WAQyvFDVGAS"), ObservedAt: observed})
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != "cgZa3SXcsPTVyC4Y" || got.CustomerID != "XuxCbt7x9L82yyeF" || strp(got.ExternalCustomerID) != "acme-42" ||
		got.Action != "applied_to_invoice" || got.Type != "decrement" || got.Currency != "USD" ||
		!got.CreatedAt.Equal(time.Date(2022, 5, 1, 7, 1, 31, 0, time.UTC)) || strp(got.Description) != "An optional description" ||
		strp(got.InvoiceID) != "gXcsPTVyC4YZa3Sc" || got.CreditNoteID != nil {
		t.Errorf("got %+v", got)
	}
	for name, pair := range map[string][2]string{
		"amount":           {got.Amount.String(), "11"},
		"starting_balance": {got.StartingBalance.String(), "33"},
		"ending_balance":   {got.EndingBalance.String(), "22"},
	} {
		if pair[0] != pair[1] {
			t.Errorf("%s = %s, want %s", name, pair[0], pair[1])
		}
	}
	if n := len(got.Values()); n != len(OrbTxnTable.Columns) {
		t.Errorf("Values has %d entries for %d columns", n, len(OrbTxnTable.Columns))
	}
}

func TestNormalizeOrbDecimals(t *testing.T) {
	raw, c := orbTxn(t)
	for _, tt := range []struct {
		in      string
		want    string
		invalid bool
	}{
		{"0.000000000001", "0.000000000001", false},
		{"123456789012345.5", "123456789012345.5", false},
		{"-42.10", "-42.1", false},
		{"11.00", "11", false},
		{"1.0000000000000", "1", false}, // trailing zero beyond scale 12 is exact
		{"0.0000000000001", "", true},   // would round
		{"123456789012345678901234567", "", true},
		{"", "", true},
		{"eleven", "", true},
		{"1e3", "1000", false},
	} {
		doc := strings.Replace(string(raw), `"amount": "11.00"`, `"amount": "`+tt.in+`"`, 1)
		got, err := NormalizeOrb([]byte(doc), c, Meta{ObservedAt: observed})
		if tt.invalid {
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != "amount" {
				t.Errorf("%q: want a FieldError on amount, got %v", tt.in, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tt.in, err)
			continue
		}
		if !got.Amount.Equal(decimal.RequireFromString(tt.want)) {
			t.Errorf("%q: amount = %s, want %s", tt.in, got.Amount, tt.want)
		}
	}
}

func TestNormalizeOrbRejectsMalformed(t *testing.T) {
	raw, c := orbTxn(t)
	doc := string(raw)
	for _, tt := range []struct{ from, to, field string }{
		{`"id": "cgZa3SXcsPTVyC4Y",`, ``, "id"},
		{`"action": "applied_to_invoice",`, ``, "action"},
		{`"amount": "11.00"`, `"amount": 11`, "amount"},
		{`"created_at": "2022-05-01T07:01:31+00:00"`, `"created_at": "yesterday"`, "created_at"},
		{`"invoice": {"id": "gXcsPTVyC4YZa3Sc"}`, `"invoice": {}`, "invoice"},
		{`"ending_balance": "22.00",`, ``, "ending_balance"},
		{`"type": "decrement"`, `"type": ""`, "type"},
	} {
		if !strings.Contains(doc, tt.from) {
			t.Fatalf("fixture lacks %q", tt.from)
		}
		_, err := NormalizeOrb([]byte(strings.Replace(doc, tt.from, tt.to, 1)), c, Meta{})
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tt.field {
			t.Errorf("%s: want FieldError on %s, got %v", tt.to, tt.field, err)
		}
	}
	if _, err := NormalizeOrb(raw, OrbCustomer{ID: "c"}, Meta{}); err == nil {
		t.Error("a customer without currency must be refused")
	}
}

func TestVersionOrdersObservations(t *testing.T) {
	a, b := time.Unix(100, 5), time.Unix(100, 6)
	if Version(a) >= Version(b) {
		t.Error("a later observation must have a larger version")
	}
	if Version(time.Time{}) != 0 {
		t.Error("zero time gives version 0")
	}
}

// A row's _raw is a copy of the object's bytes, so a caller may reuse its
// buffer once the row is made (a webhook body is pooled), unless
// Meta.RawStable said the bytes are never written again: then the row
// refers to them and spares the copy.
func TestValuesAndTheRawBuffer(t *testing.T) {
	orbRaw := []byte(`{"id":"o-1","action":"manual_adjustment","amount":"1.5","created_at":"2024-03-27T15:42:29","credit_note":null,
"description":null,"ending_balance":"1.5","invoice":null,"starting_balance":"0","type":"increment"}`)
	for _, tc := range []struct {
		name string
		raw  []byte
		make func(raw []byte, m Meta) ([]any, error)
		cols []string
	}{
		{"stripe", readFixture(t, "stripe_documented.json"), func(raw []byte, m Meta) ([]any, error) {
			r, err := NormalizeStripe(raw, m)
			if err != nil {
				return nil, err
			}
			return r.Values(), nil
		}, StripeTxnTable.Columns},
		{"orb", orbRaw, func(raw []byte, m Meta) ([]any, error) {
			r, err := NormalizeOrb(raw, OrbCustomer{ID: "c1", Currency: "USD"}, m)
			if err != nil {
				return nil, err
			}
			return r.Values(), nil
		}, OrbTxnTable.Columns},
	} {
		for _, stable := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/RawStable=%v", tc.name, stable), func(t *testing.T) {
				buf := bytes.Clone(tc.raw)
				vals, err := tc.make(buf, Meta{Source: SourceBackfill, ObservedAt: time.Unix(1700000000, 0), RawStable: stable})
				if err != nil {
					t.Fatal(err)
				}
				raw := vals[slices.Index(tc.cols, "_raw")].(string)
				if raw != string(tc.raw) {
					t.Fatalf("_raw %q; want the object's bytes", raw)
				}
				copy(buf, bytes.Repeat([]byte{'#'}, len(buf))) // the caller reuses its buffer
				if aliased := raw != string(tc.raw); aliased != stable {
					t.Errorf("after the buffer is reused _raw reads %.20q…; RawStable=%v wants it to refer to the buffer: %v", raw, stable, stable)
				}
			})
		}
	}
}
