package row

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/syncd/syncd/internal/sink"
)

// DiffMirrored names exactly the mirrored column that changed, for every
// mirrored column of both tables, and ignores syncd's own columns and what
// ClickHouse does not keep (sub-second times, a decimal's trailing zeros,
// nil against an empty array).
func TestDiffMirroredNamesEachColumn(t *testing.T) {
	s, err := NormalizeStripe(readFixture(t, "stripe_expanded.json"), Meta{ObservedAt: observed})
	if err != nil {
		t.Fatal(err)
	}
	orbRaw, c := orbTxn(t)
	o, err := NormalizeOrb(orbRaw, c, Meta{ObservedAt: observed})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name   string
		values func() []any
		table  sink.Table
	}{
		{"stripe", s.Values, StripeTxnTable},
		{"orb", o.Values, OrbTxnTable},
	} {
		table := tt.table
		base := tt.values()
		if d := DiffMirrored(table, base, tt.values()); d != nil {
			t.Errorf("%s: a row differs from itself in %v", tt.name, d)
		}
		// As read back from ClickHouse: values, not pointers; whole seconds;
		// Decimal(38, 12)'s scale; syncd's own columns anything.
		back := make([]any, len(base))
		for i, v := range base {
			back[i] = plain(v)
			switch x := back[i].(type) {
			case time.Time:
				back[i] = x.Truncate(time.Second)
			case decimal.Decimal:
				back[i] = decimal.RequireFromString(x.StringFixed(12))
			case []string:
				if len(x) == 0 {
					back[i] = []string{}
				}
			}
			if !Mirrored(table.Columns[i]) {
				back[i] = "other"
			}
		}
		if d := DiffMirrored(table, base, back); d != nil {
			t.Errorf("%s: a row differs from itself read back in %v", tt.name, d)
		}
		for i, col := range table.Columns {
			if !Mirrored(col) {
				continue
			}
			changed := slices.Clone(back)
			changed[i] = tamper(t, changed[i])
			if d := DiffMirrored(table, base, changed); len(d) != 1 || d[0] != col {
				t.Errorf("%s: %s changed from %v to %v: DiffMirrored says %v", tt.name, col, back[i], changed[i], d)
			}
		}
	}
}

// tamper returns another value of v's column.
func tamper(t *testing.T, v any) any {
	switch x := v.(type) {
	case nil:
		return "set"
	case string:
		return x + "x"
	case int64:
		return x + 1
	case uint8:
		return 1 - x
	case time.Time:
		return x.Add(time.Second)
	case decimal.Decimal:
		return x.Add(decimal.New(1, -12))
	case []string:
		return append(slices.Clone(x), "x")
	}
	t.Fatalf("no tampering for %T", v)
	return nil
}

func ExampleDiffMirrored() {
	a, _ := NormalizeStripe([]byte(`{"id":"cbtxn_1","object":"customer_balance_transaction","amount":-500,
		"created":1700000000,"currency":"usd","customer":"cus_1","ending_balance":-500,"livemode":false,
		"type":"adjustment","invoice":null,"metadata":{"k":"v"}}`), Meta{})
	b := *a
	b.Invoice, b.MetadataValues = new(string), []string{"w"}
	fmt.Println(DiffMirrored(StripeTxnTable, a.Values(), b.Values()))
	// Output: [invoice metadata.value]
}
