package row

import (
	"testing"
	"time"
)

// The normalisers read untrusted API responses and webhook bodies: any input
// gives a row or an error, never a panic, and a row is never zero-valued.
func FuzzNormalizeStripe(f *testing.F) {
	f.Add(readFixture(f, "stripe_documented.json"))
	f.Add(readFixture(f, "stripe_expanded.json"))
	f.Add([]byte(`{"id":"x","customer":{"id":""}}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		r, err := NormalizeStripe(raw, Meta{ObservedAt: time.Unix(1, 0)})
		if err != nil {
			if r != nil {
				t.Fatal("row with error")
			}
			return
		}
		if r.ID == "" || r.Customer == "" || r.Type == "" || len(r.Currency) != 3 || len(r.MetadataKeys) != len(r.MetadataValues) {
			t.Fatalf("accepted an incomplete row: %+v", r)
		}
		if !FitsDateTime(r.Created) {
			t.Fatalf("accepted a created DateTime cannot hold: %v", r.Created)
		}
	})
}

func FuzzNormalizeOrb(f *testing.F) {
	raw, _ := orbTxn(f)
	f.Add(raw, "USD")
	f.Add([]byte(`{"id":"a","action":"x","type":"increment","amount":"1e-12","starting_balance":"0","ending_balance":"0","created_at":"2024-03-27T15:42:29.551"}`), "JPY")
	f.Fuzz(func(t *testing.T, raw []byte, currency string) {
		r, err := NormalizeOrb(raw, OrbCustomer{ID: "c", Currency: currency}, Meta{ObservedAt: time.Unix(1, 0)})
		if err != nil {
			return
		}
		if r.ID == "" || r.Action == "" || r.Type == "" {
			t.Fatalf("accepted an incomplete row: %+v", r)
		}
		if !FitsDateTime(r.CreatedAt) {
			t.Fatalf("accepted a created_at DateTime cannot hold: %v", r.CreatedAt)
		}
		if r.Amount.Exponent() < -12 && !r.Amount.Equal(r.Amount.Truncate(12)) {
			t.Fatalf("accepted an amount Decimal(38,12) cannot hold: %s", r.Amount)
		}
	})
}
