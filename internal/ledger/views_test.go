package ledger_test

import (
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/syncd/syncd/internal/ledger"
	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/schema"
)

var created = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

func stripeTxn(id, currency string, amount, ending int64) *row.StripeTxn {
	at := created.Add(time.Hour)
	return &row.StripeTxn{
		ID: id, Customer: "cus_" + id, Amount: amount, Currency: currency, Created: created,
		Type: "adjustment", EndingBalance: ending, Raw: []byte("{}"), Source: row.SourceBackfill,
		ObservedAt: at, Version: row.Version(at), SyncedAt: at,
	}
}

func orbTxn(id, currency, typ, amount, start, end string) *row.OrbTxn {
	at := created.Add(time.Hour)
	return &row.OrbTxn{
		ID: id, CustomerID: "c_" + id, Action: "manual_adjustment", Type: typ,
		Amount: decimal.RequireFromString(amount), StartingBalance: decimal.RequireFromString(start),
		EndingBalance: decimal.RequireFromString(end), Currency: currency, CreatedAt: created,
		Raw: []byte("{}"), Source: row.SourceBackfill, ObservedAt: at, Version: row.Version(at), SyncedAt: at,
	}
}

const ledgerColumns = `provider, account_id, customer, transaction_id, created, currency, kind,
	credit_delta, credit_balance_before, credit_balance_after, invoice_id, credit_note_id, description, synced_at`

func entryCells(e ledger.Entry) []string {
	return []string{e.Provider, e.AccountID, e.Customer, e.TransactionID, ts(e.Created), e.Currency, e.Kind,
		dec(e.CreditDelta), dec(e.CreditBalanceBefore), dec(e.CreditBalanceAfter),
		nullable(e.InvoiceID), nullable(e.CreditNoteID), nullable(e.Description), ts(e.SyncedAt)}
}

// A credit shows as a positive credit_delta in the currency's major unit,
// whatever the provider's own sign and unit.
func TestCreditDeltaSignAndUnits(t *testing.T) {
	conn := migrated(t)
	cases := []struct {
		stripe      *row.StripeTxn
		orb         *row.OrbTxn
		delta, bal  string // what the ledger must show, for both providers
		description string
	}{
		{stripeTxn("usd_credit", "usd", -1234, -5000), orbTxn("usd_credit", "USD", "increment", "12.34", "37.66", "50"), "12.34", "50", "usd credit of 12.34"},
		{stripeTxn("usd_debit", "usd", 1234, 766), orbTxn("usd_debit", "USD", "decrement", "12.34", "4.68", "-7.66"), "-12.34", "-7.66", "usd debit of 12.34"},
		{stripeTxn("jpy_credit", "jpy", -1234, -1234), orbTxn("jpy_credit", "JPY", "increment", "1234", "0", "1234"), "1234", "1234", "jpy credit of 1234 yen (zero-decimal)"},
		{stripeTxn("jpy_debit", "jpy", 500, 300), orbTxn("jpy_debit", "JPY", "decrement", "500", "200", "-300"), "-500", "-300", "jpy debit"},
		{stripeTxn("kwd_credit", "kwd", -1234, -2000), orbTxn("kwd_credit", "KWD", "increment", "1.234", "0.766", "2"), "1.234", "2", "kwd credit of 1.234 dinar (three-decimal)"},
		{stripeTxn("kwd_debit", "kwd", 1, -1999), orbTxn("kwd_debit", "KWD", "decrement", "0.001", "2", "1.999"), "-0.001", "1.999", "kwd debit of one fils"},
		{stripeTxn("eur_upper", "EUR", -1, -1), orbTxn("eur_odd", "EUR", "increment", "0.000000000001", "0", "0.000000000001"), "0.01", "0.01", "unlisted currency: two decimals"},
	}
	cases[len(cases)-1].delta = "" // differs per provider; checked below
	var srows []*row.StripeTxn
	var orows []*row.OrbTxn
	want := map[string][2]string{}
	for _, c := range cases {
		srows, orows = append(srows, c.stripe), append(orows, c.orb)
		if c.delta != "" {
			want["stripe/"+c.stripe.ID] = [2]string{c.delta, c.bal}
			want["orb/"+c.orb.ID] = [2]string{c.delta, c.bal}
		}
	}
	want["stripe/eur_upper"] = [2]string{"0.01", "0.01"}
	want["orb/eur_odd"] = [2]string{"0.000000000001", "0.000000000001"}
	write(t, conn, row.StripeTxnTable, stripeRows(srows...)...)
	write(t, conn, row.OrbTxnTable, orbRows(orows...)...)

	got := query(t, conn, "SELECT "+ledgerColumns+" FROM balance_ledger ORDER BY provider, transaction_id")
	byKey := map[string][]string{}
	for _, r := range got.Rows {
		byKey[r[0]+"/"+r[3]] = r
	}
	if len(byKey) != len(want) {
		t.Fatalf("balance_ledger has %d rows, want %d:\n%s", len(got.Rows), len(want), got)
	}
	for key, w := range want {
		r := byKey[key]
		if r == nil {
			t.Errorf("%s: missing from balance_ledger", key)
			continue
		}
		if r[7] != w[0] || r[9] != w[1] {
			t.Errorf("%s: credit_delta %s, credit_balance_after %s; want %s, %s", key, r[7], r[9], w[0], w[1])
		}
	}
	// The Go statement of the conventions agrees with the view, column by column.
	var goRows [][]string
	for _, r := range srows {
		goRows = append(goRows, entryCells(ledger.FromStripe(r)))
	}
	for _, r := range orows {
		goRows = append(goRows, entryCells(ledger.FromOrb(r)))
	}
	sort.Slice(goRows, func(i, j int) bool {
		return goRows[i][0]+"\x00"+goRows[i][3] < goRows[j][0]+"\x00"+goRows[j][3]
	})
	if fmt.Sprint(goRows) != fmt.Sprint(got.Rows) {
		t.Errorf("balance_ledger:\n%s\nledger.FromStripe/FromOrb:\n%v", got, goRows)
	}
	for _, r := range got.Rows {
		if r[5] != "usd" && r[5] != "jpy" && r[5] != "kwd" && r[5] != "eur" {
			t.Errorf("%s: currency %q is not lowercase", r[3], r[5])
		}
	}
}

// Whatever order observations arrive in, the views show only the newest one
// of each transaction, including a field the newest one cleared.
func TestViewsShowOnlyTheNewestObservation(t *testing.T) {
	conn := migrated(t)
	desc := "typo in the first version"
	newerAt := created.Add(2 * time.Hour)

	oldS := stripeTxn("twice", "usd", -1000, -1000)
	oldS.Description = &desc
	newS := *oldS
	newS.Amount, newS.EndingBalance, newS.Description, newS.Type = -2500, -2500, nil, "credit_note"
	newS.ObservedAt, newS.Version, newS.SyncedAt = newerAt, row.Version(newerAt), newerAt

	oldO := orbTxn("twice", "USD", "increment", "10", "0", "10")
	oldO.Description = &desc
	newO := *oldO
	newO.Amount, newO.EndingBalance, newO.Description = decimal.RequireFromString("25"), decimal.RequireFromString("25"), nil
	newO.ObservedAt, newO.Version, newO.SyncedAt = newerAt, row.Version(newerAt), newerAt

	// Newer first, in separate inserts (separate parts, so no merge has
	// folded them), then the older one again after it.
	write(t, conn, row.StripeTxnTable, stripeRows(&newS)...)
	write(t, conn, row.StripeTxnTable, stripeRows(oldS)...)
	write(t, conn, row.OrbTxnTable, orbRows(oldO)...)
	write(t, conn, row.OrbTxnTable, orbRows(&newO)...)
	write(t, conn, row.OrbTxnTable, orbRows(oldO)...)

	got := query(t, conn, "SELECT "+ledgerColumns+" FROM balance_ledger ORDER BY provider")
	want := [][]string{entryCells(ledger.FromOrb(&newO)), entryCells(ledger.FromStripe(&newS))}
	if fmt.Sprint(got.Rows) != fmt.Sprint(want) {
		t.Errorf("balance_ledger:\n%s\nwant the newer observations:\n%v", got, want)
	}
	if got := query(t, conn, "SELECT provider, credit_balance, transactions FROM customer_balances ORDER BY provider"); fmt.Sprint(got.Rows) != "[[orb 25 1] [stripe 25 1]]" {
		t.Errorf("customer_balances:\n%s", got)
	}
	if got := query(t, conn, "SELECT provider, kind, transactions, credits, debits, net FROM daily_balance_movements ORDER BY provider"); fmt.Sprint(got.Rows) != "[[orb manual_adjustment 1 25 0 25] [stripe credit_note 1 25 0 25]]" {
		t.Errorf("daily_balance_movements:\n%s", got)
	}
}

// The exponents shipped in the migration are ledger.Exponents, and applying
// the migration's statements again changes nothing the views show.
func TestCurrencyExponentsAndReapply(t *testing.T) {
	conn := migrated(t)
	write(t, conn, row.StripeTxnTable, stripeRows(stripeTxn("k", "kwd", -1500, -1500))...)
	migrations, err := schema.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range migrations {
		if m.Version != 3 {
			continue
		}
		for _, stmt := range m.Statements {
			if err := conn.Exec(t.Context(), stmt); err != nil {
				t.Fatalf("reapply: %v\n%s", err, stmt)
			}
		}
	}
	got := query(t, conn, "SELECT currency, exponent FROM currency_exponents FINAL ORDER BY currency")
	var want [][]string
	for c, e := range ledger.Exponents {
		want = append(want, []string{c, fmt.Sprint(e)})
	}
	sort.Slice(want, func(i, j int) bool { return want[i][0] < want[j][0] })
	if fmt.Sprint(got.Rows) != fmt.Sprint(want) {
		t.Errorf("currency_exponents:\n%s\nwant %v", got, want)
	}
	if got := query(t, conn, "SELECT currency, credit_delta FROM balance_ledger"); fmt.Sprint(got.Rows) != "[[kwd 1.5]]" {
		t.Errorf("after reapplying, balance_ledger:\n%s", got)
	}
}
