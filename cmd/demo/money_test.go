package main

import (
	"testing"

	"github.com/shopspring/decimal"
)

// Balances print with the currency's minor-unit digits, never fewer than
// the amount has, whatever text the ClickHouse release would give.
func TestMoney(t *testing.T) {
	for _, c := range []struct{ amount, currency, want string }{
		{"12.500000000000", "usd", "12.50"},
		{"-3", "usd", "-3.00"},
		{"1234.000000000000", "jpy", "1234"},
		{"0.125000000000", "kwd", "0.125"},
		{"1.000001000000", "eur", "1.000001"},
		{"0", "eur", "0.00"},
	} {
		if got := money(decimal.RequireFromString(c.amount), c.currency); got != c.want {
			t.Errorf("money(%s, %s) = %s, want %s", c.amount, c.currency, got, c.want)
		}
	}
}
