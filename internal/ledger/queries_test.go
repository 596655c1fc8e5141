package ledger_test

import (
	"cmp"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"

	"github.com/syncd/syncd/internal/ledger"
	"github.com/syncd/syncd/internal/orbemu"
	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/internal/sink"
	"github.com/syncd/syncd/internal/stripeemu"
)

// docQueries reads every `<!-- query: name -->` block of docs/queries.md.
func docQueries(t *testing.T) map[string]string {
	t.Helper()
	doc, err := os.ReadFile("../../docs/queries.md")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("(?s)<!-- query: ([a-z0-9_]+) -->\\s*```sql\\n(.*?)```")
	out := map[string]string{}
	for _, m := range re.FindAllStringSubmatch(string(doc), -1) {
		if _, dup := out[m[1]]; dup {
			t.Fatalf("docs/queries.md: query %s appears twice", m[1])
		}
		out[m[1]] = m[2]
	}
	return out
}

// world is emulator data loaded into ClickHouse, and the ledger entries Go
// derives from the same rows.
type world struct {
	conn     driver.Conn
	stripe   *stripeemu.Emulator
	orb      *orbemu.Emulator
	srows    map[string]*row.StripeTxn // newest observation, by id
	orows    map[string]*row.OrbTxn
	entries  []ledger.Entry
	deleted  map[[2]string]bool // Stripe (account, customer) named by customer.deleted events
	syncedAt time.Time
	inserts  []insert // every row, as writeTo sends them
}

// insert is rows for one table, sent in one write.
type insert struct {
	table sink.Table
	rows  [][]any
}

// load builds a world and writes it into a fresh migrated database.
func load(t *testing.T) *world {
	t.Helper()
	w := build(t)
	w.conn = migrated(t)
	w.writeTo(t, w.conn)
	return w
}

// writeTo writes the world's rows, the same each time, into conn's database.
func (w *world) writeTo(t *testing.T, conn driver.Conn) {
	t.Helper()
	for _, in := range w.inserts {
		write(t, conn, in.table, in.rows...)
	}
}

// build makes the world's rows, one emulator history per provider, without
// writing them anywhere.
func build(t *testing.T) *world {
	t.Helper()
	// Histories end now, so "today" and "last month" hold transactions.
	end := time.Now().UTC().Truncate(time.Second)
	se, err := stripeemu.New(stripeemu.Config{Seed: 11, Customers: 150, Accounts: []string{"", "acct_1LedgerTest"}, End: end})
	if err != nil {
		t.Fatal(err)
	}
	oe, err := orbemu.New(orbemu.Config{Seed: 11, Customers: 300, HeavyTxns: []int{200}, End: end})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { se.Close(); oe.Close() })
	// Seeded histories are sparse near their end: shortly after midnight
	// UTC "today" may hold none, so the day-bounded queries get two of their
	// own (adjustments, which raise no invoice or credit note), made now.
	for _, c := range se.Customers()[:2] {
		if _, err := se.AddTransactionAt(c.Account, c.ID, -100, "adjustment", end); err != nil {
			t.Fatal(err)
		}
	}
	w := &world{stripe: se, orb: oe, srows: map[string]*row.StripeTxn{}, orows: map[string]*row.OrbTxn{},
		syncedAt: end.Add(-time.Minute)}
	observed := end.Add(-time.Hour)
	stale := observed.Add(-time.Hour)

	var srows, stalerows [][]any
	for i, tx := range se.Truth() {
		r, err := row.NormalizeStripe(tx.Raw, row.Meta{AccountID: tx.Account, Source: row.SourceBackfill, ObservedAt: observed})
		if err != nil {
			t.Fatal(err)
		}
		r.SyncedAt = w.syncedAt
		w.srows[r.ID] = r
		srows = append(srows, r.Values())
		if i%7 == 0 { // an older observation with other values, arriving later
			old := *r
			old.Amount, old.EndingBalance, old.Type = r.Amount+1, r.EndingBalance+1, "superseded"
			old.ObservedAt, old.Version, old.SyncedAt = stale, row.Version(stale), end
			stalerows = append(stalerows, old.Values())
		}
	}
	customers := map[string]row.OrbCustomer{}
	for _, c := range oe.Customers() {
		customers[c.ID] = row.OrbCustomer{ID: c.ID, ExternalCustomerID: c.ExternalCustomerID, Currency: c.Currency}
	}
	var orows, staleorows [][]any
	for i, tx := range oe.Truth() {
		r, err := row.NormalizeOrb(tx.Raw, customers[tx.CustomerID], row.Meta{Source: row.SourceBackfill, ObservedAt: observed})
		if err != nil {
			t.Fatal(err)
		}
		r.SyncedAt = w.syncedAt
		w.orows[r.ID] = r
		orows = append(orows, r.Values())
		if i%7 == 0 {
			old := *r
			old.Amount, old.Action = r.Amount.Add(decimal.NewFromInt(1)), "superseded"
			old.ObservedAt, old.Version, old.SyncedAt = stale, row.Version(stale), end
			staleorows = append(staleorows, old.Values())
		}
	}
	w.inserts = []insert{
		{row.StripeTxnTable, srows}, {row.StripeTxnTable, stalerows},
		{row.OrbTxnTable, orows}, {row.OrbTxnTable, staleorows},
		{row.StripeEventTable, w.deletions(end)},
	}
	for _, r := range w.srows {
		w.entries = append(w.entries, ledger.FromStripe(r))
	}
	for _, r := range w.orows {
		w.entries = append(w.entries, ledger.FromOrb(r))
	}
	t.Logf("built %d Stripe and %d Orb transactions, %d + %d superseded observations",
		len(srows), len(orows), len(stalerows), len(staleorows))
	return w
}

// deletions are intake rows of customer.deleted events, as syncd serve
// stores them, for customers with credit in each account (and one it owes),
// one deleted twice (a snapshot event and then its thin form), and a
// customer.updated event that deletes nothing.
func (w *world) deletions(end time.Time) [][]any {
	w.deleted = map[[2]string]bool{}
	var out [][]any
	event := func(id, typ string, c stripeemu.Customer, at time.Time) {
		ev := row.StripeEvent{ID: id, Type: typ, AccountID: c.Account, Created: at, Customer: c.ID,
			Payload: []byte(`{"id":"` + id + `"}`), ReceivedAt: at.Add(time.Second)}
		out = append(out, ev.Values())
	}
	picked := map[string]int{}
	for i, c := range w.stripe.Customers() {
		at := end.Add(-time.Duration(i) * time.Minute)
		switch {
		case c.Transactions == 0:
		case c.Balance < 0 && picked[c.Account+"credit"] < 2, c.Balance > 0 && picked[c.Account+"owed"] < 1:
			kind := "credit"
			if c.Balance > 0 {
				kind = "owed"
			}
			picked[c.Account+kind]++
			w.deleted[[2]string{c.Account, c.ID}] = true
			event(fmt.Sprintf("evt_deleted%03d", i), "customer.deleted", c, at)
			if len(w.deleted) == 1 {
				event(fmt.Sprintf("evt_thin_deleted%03d", i), "v1.customer.deleted", c, at.Add(time.Second))
			}
		case picked["updated"] == 0:
			picked["updated"]++
			event(fmt.Sprintf("evt_updated%03d", i), "customer.updated", c, at)
		}
	}
	return out
}

// balanceKey is customer_balances' grouping.
type balanceKey struct{ provider, account, customer, currency string }

func keyOf(e ledger.Entry) balanceKey {
	return balanceKey{e.Provider, e.AccountID, e.Customer, e.Currency}
}

func newer(a, b ledger.Entry) bool {
	if !a.Created.Equal(b.Created) {
		return a.Created.After(b.Created)
	}
	return a.TransactionID > b.TransactionID
}

// balances is customer_balances computed in Go: the newest entry per key.
func balances(entries []ledger.Entry) map[balanceKey]ledger.Entry {
	out := map[balanceKey]ledger.Entry{}
	for _, e := range entries {
		if cur, ok := out[keyOf(e)]; !ok || newer(e, cur) {
			out[keyOf(e)] = e
		}
	}
	return out
}

// sums accumulates credits, debits and their net.
type sums struct {
	n                    int
	credits, debits, net decimal.Decimal
}

func (s *sums) add(d decimal.Decimal) {
	s.n++
	s.net = s.net.Add(d)
	if d.IsPositive() {
		s.credits = s.credits.Add(d)
	} else {
		s.debits = s.debits.Sub(d)
	}
}

func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func join(parts ...string) string { return strings.Join(parts, "\x00") }

func split(key string) []string { return strings.Split(key, "\x00") }

// expected computes each docs/queries.md answer from the Go entries.
func (w *world) expected(name string, now time.Time, customer string) [][]string {
	today := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	var out [][]string
	switch name {
	case "outstanding_credit_by_currency":
		type acc struct {
			credit, owed decimal.Decimal
			n            int
		}
		per := map[string]*acc{}
		for _, e := range balances(w.entries) {
			a := per[e.Currency]
			if a == nil {
				a = &acc{}
				per[e.Currency] = a
			}
			switch b := e.CreditBalanceAfter; {
			case b.IsPositive():
				a.credit, a.n = a.credit.Add(b), a.n+1
			case b.IsNegative():
				a.owed = a.owed.Sub(b)
			}
		}
		for _, c := range sortedKeys(per) {
			out = append(out, []string{c, dec(per[c].credit), fmt.Sprint(per[c].n), dec(per[c].owed)})
		}
	case "balances_changed_today":
		var recent []ledger.Entry
		for _, e := range w.entries {
			if !e.Created.Before(today) {
				recent = append(recent, e)
			}
		}
		per := map[string]*sums{}
		for _, e := range recent {
			k := join(e.Provider, e.AccountID, e.Customer, e.Currency)
			if per[k] == nil {
				per[k] = &sums{}
			}
			per[k].add(e.CreditDelta)
		}
		last := balances(recent)
		for _, k := range sortedKeys(per) {
			p := split(k)
			out = append(out, append(p, fmt.Sprint(per[k].n), dec(per[k].net),
				dec(last[balanceKey{p[0], p[1], p[2], p[3]}].CreditBalanceAfter)))
		}
	case "credit_applied_to_invoices_last_month":
		from, to := today.AddDate(0, 0, 1-today.Day()).AddDate(0, -1, 0), today.AddDate(0, 0, 1-today.Day())
		type acc struct {
			n                   int
			invoices, customers map[string]bool
			applied             decimal.Decimal
		}
		per := map[string]*acc{}
		for _, e := range w.entries {
			if e.Kind != "applied_to_invoice" || e.Created.Before(from) || !e.Created.Before(to) {
				continue
			}
			k := join(e.Provider, e.Currency)
			a := per[k]
			if a == nil {
				a = &acc{invoices: map[string]bool{}, customers: map[string]bool{}}
				per[k] = a
			}
			a.n++
			if e.InvoiceID != nil {
				a.invoices[*e.InvoiceID] = true
			}
			a.customers[e.Customer] = true
			a.applied = a.applied.Sub(e.CreditDelta)
		}
		for _, k := range sortedKeys(per) {
			a := per[k]
			out = append(out, append(split(k), fmt.Sprint(a.n), fmt.Sprint(len(a.invoices)), fmt.Sprint(len(a.customers)), dec(a.applied)))
		}
	case "manual_adjustments_by_description":
		per := map[string]*sums{}
		for _, e := range w.entries {
			if e.Kind != "adjustment" && e.Kind != "manual_adjustment" {
				continue
			}
			reason := "(no description)"
			if e.Description != nil {
				reason = *e.Description
			}
			k := join(e.Provider, e.Currency, reason)
			if per[k] == nil {
				per[k] = &sums{}
			}
			per[k].add(e.CreditDelta)
		}
		keys := sortedKeys(per)
		slices.SortStableFunc(keys, func(a, b string) int {
			pa, pb := split(a), split(b)
			return cmp.Or(cmp.Compare(pa[0], pb[0]), cmp.Compare(pa[1], pb[1]), cmp.Compare(per[b].n, per[a].n), cmp.Compare(pa[2], pb[2]))
		})
		for _, k := range keys {
			out = append(out, append(split(k), fmt.Sprint(per[k].n), dec(per[k].credits), dec(per[k].debits)))
		}
	case "customer_balance_history":
		var hist []ledger.Entry
		for _, e := range w.entries {
			if e.Customer == customer {
				hist = append(hist, e)
			}
		}
		slices.SortFunc(hist, func(a, b ledger.Entry) int {
			return cmp.Or(a.Created.Compare(b.Created), cmp.Compare(a.TransactionID, b.TransactionID))
		})
		for _, e := range hist {
			out = append(out, []string{ts(e.Created), e.Provider, e.Currency, e.TransactionID, e.Kind,
				dec(e.CreditDelta), dec(e.CreditBalanceAfter), nullable(e.InvoiceID), nullable(e.CreditNoteID), nullable(e.Description)})
		}
	case "outstanding_credit_without_deleted_customers":
		type acc struct {
			credit, deletedCredit decimal.Decimal
			n, deleted            int
		}
		per := map[string]*acc{}
		for _, e := range balances(w.entries) {
			a := per[e.Currency]
			if a == nil {
				a = &acc{}
				per[e.Currency] = a
			}
			gone := e.Provider == "stripe" && w.deleted[[2]string{e.AccountID, e.Customer}]
			b := e.CreditBalanceAfter
			switch {
			case gone && b.IsPositive():
				a.deletedCredit = a.deletedCredit.Add(b)
			case b.IsPositive():
				a.credit, a.n = a.credit.Add(b), a.n+1
			}
			if gone {
				a.deleted++
			}
		}
		for _, c := range sortedKeys(per) {
			a := per[c]
			out = append(out, []string{c, dec(a.credit), fmt.Sprint(a.n), dec(a.deletedCredit), fmt.Sprint(a.deleted)})
		}
	case "chain_breaks":
		return nil // emulator chains are whole
	case "top_customers_by_credit":
		per := map[string][]ledger.Entry{}
		for _, e := range balances(w.entries) {
			if e.CreditBalanceAfter.IsPositive() {
				per[e.Currency] = append(per[e.Currency], e)
			}
		}
		for _, c := range sortedKeys(per) {
			top := per[c]
			slices.SortFunc(top, func(a, b ledger.Entry) int {
				return cmp.Or(b.CreditBalanceAfter.Cmp(a.CreditBalanceAfter), cmp.Compare(a.Provider, b.Provider),
					cmp.Compare(a.AccountID, b.AccountID), cmp.Compare(a.Customer, b.Customer))
			})
			for _, e := range top[:min(10, len(top))] {
				last := w.lastCreated(keyOf(e))
				out = append(out, []string{c, e.Provider, e.AccountID, e.Customer, dec(e.CreditBalanceAfter), ts(last)})
			}
		}
	case "daily_net_movement":
		per := map[string]*sums{}
		for _, e := range w.entries {
			if e.Created.Before(today.AddDate(0, 0, -30)) {
				continue
			}
			k := join(day(e.Created), e.Currency)
			if per[k] == nil {
				per[k] = &sums{}
			}
			per[k].add(e.CreditDelta)
		}
		for _, k := range sortedKeys(per) {
			s := per[k]
			out = append(out, append(split(k), fmt.Sprint(s.n), dec(s.credits), dec(s.debits), dec(s.net)))
		}
	case "transactions_per_kind":
		type acc struct {
			n           int
			first, last string
		}
		per := map[string]*acc{}
		for _, e := range w.entries {
			k, d := join(e.Provider, e.Kind), day(e.Created)
			a := per[k]
			if a == nil {
				a = &acc{first: d, last: d}
				per[k] = a
			}
			a.n++
			a.first, a.last = min(a.first, d), max(a.last, d)
		}
		keys := sortedKeys(per)
		slices.SortStableFunc(keys, func(a, b string) int {
			pa, pb := split(a), split(b)
			return cmp.Or(cmp.Compare(pa[0], pb[0]), cmp.Compare(per[b].n, per[a].n), cmp.Compare(pa[1], pb[1]))
		})
		for _, k := range keys {
			out = append(out, append(split(k), fmt.Sprint(per[k].n), per[k].first, per[k].last))
		}
	default:
		panic("no expectation for query " + name)
	}
	return out
}

func (w *world) lastCreated(k balanceKey) time.Time {
	var last time.Time
	for _, e := range w.entries {
		if keyOf(e) == k && e.Created.After(last) {
			last = e.Created
		}
	}
	return last
}

// Every query in docs/queries.md runs on emulator data and gives the answer
// Go computes from the same transactions; the chain check finds no break,
// then exactly the breaks the test introduces. The Grafana dashboard's
// queries run on the same data.
func TestQueriesOnEmulatorData(t *testing.T) {
	queries := docQueries(t)
	if len(queries) < 10 {
		t.Fatalf("docs/queries.md has %d queries, want at least 10", len(queries))
	}
	w := load(t)
	customer := w.busiestCustomer(t)

	for _, name := range sortedKeys(queries) {
		t.Run(name, func(t *testing.T) {
			sql := strings.ReplaceAll(queries[name], "{customer:String}", "'"+customer+"'")
			now := time.Now().UTC()
			got := query(t, w.conn, sql)
			if name == "sync_freshness" {
				checkFreshness(t, w, got, now)
				return
			}
			want := w.expected(name, now, customer)
			if fmt.Sprint(got.Rows) != fmt.Sprint(want) {
				t.Errorf("%d rows:\n%s\nwant %d rows:\n%s", len(got.Rows), got, len(want), result{got.Columns, want})
			}
			if name != "chain_breaks" && len(got.Rows) == 0 {
				t.Errorf("no rows: the data does not exercise this query")
			}
		})
	}

	t.Run("customer_balances matches the emulators' customers", func(t *testing.T) {
		want := map[string]string{}
		for _, c := range w.stripe.Customers() {
			if c.Transactions > 0 {
				want[join("stripe", c.Account, c.ID, c.Currency)] = dec(decimal.New(-c.Balance, -ledger.Exponent(c.Currency)))
			}
		}
		for _, c := range w.orb.Customers() {
			if len(w.orb.TruthFor(c.ID)) > 0 {
				want[join("orb", "", c.ID, strings.ToLower(c.Currency))] = dec(decimal.RequireFromString(c.Balance))
			}
		}
		got := query(t, w.conn, "SELECT provider, account_id, customer, currency, credit_balance FROM customer_balances")
		if len(got.Rows) != len(want) {
			t.Errorf("customer_balances has %d rows, the emulators have %d customers with transactions", len(got.Rows), len(want))
		}
		for _, r := range got.Rows {
			if b, ok := want[join(r[:4]...)]; !ok || b != r[4] {
				t.Errorf("%v: credit_balance %s, emulator says %q", r[:4], r[4], b)
			}
		}
	})

	t.Run("grafana dashboard queries", func(t *testing.T) { checkDashboardQueries(t, w) })

	t.Run("chain_breaks finds the breaks introduced", func(t *testing.T) {
		victim, orbVictim := w.chainBreaks(customer)
		write(t, w.conn, row.StripeTxnTable, stripeRows(victim)...)
		write(t, w.conn, row.OrbTxnTable, orbRows(orbVictim)...)

		got := query(t, w.conn, queries["chain_breaks"])
		var ids []string
		for _, r := range got.Rows {
			ids = append(ids, r[5]+" "+r[len(r)-1])
		}
		want := []string{
			orbVictim.ID + " after is not before + delta",
			victim.ID + " does not start where the previous transaction ended",
		}
		if fmt.Sprint(ids) != fmt.Sprint(want) {
			t.Errorf("chain_breaks:\n%s\nwant exactly %v", got, want)
		}
	})
}

// busiestCustomer is the Stripe customer of the connected account with the
// most transactions: the one the history query reads.
func (w *world) busiestCustomer(t *testing.T) string {
	t.Helper()
	counts := map[string]int{}
	for _, r := range w.srows {
		if r.AccountID != "" {
			counts[r.Customer]++
		}
	}
	customer := ""
	for _, c := range sortedKeys(counts) {
		if counts[c] > counts[customer] {
			customer = c
		}
	}
	if counts[customer] < 3 {
		t.Fatalf("busiest customer %q has %d transactions", customer, counts[customer])
	}
	return customer
}

// chainBreaks returns two rows that break a chain of balances, not yet
// written: a newer observation of one Stripe transaction in the middle of
// customer's chain, its amount edited but not its ending_balance, and one of
// an Orb transaction whose amount no longer explains its balances.
func (w *world) chainBreaks(customer string) (*row.StripeTxn, *row.OrbTxn) {
	hist := w.stripe.TruthFor("acct_1LedgerTest", customer)
	victim := *w.srows[hist[len(hist)/2].ID]
	at := victim.ObservedAt.Add(time.Minute)
	victim.Amount += 100
	victim.ObservedAt, victim.Version = at, row.Version(at)

	orbVictim := *w.orows[sortedKeys(w.orows)[0]]
	orbVictim.Amount = orbVictim.Amount.Add(decimal.RequireFromString("0.5"))
	orbVictim.ObservedAt, orbVictim.Version = at, row.Version(at)
	return &victim, &orbVictim
}

func checkFreshness(t *testing.T, w *world, got result, now time.Time) {
	t.Helper()
	counts, newest := map[string]int{}, map[string]time.Time{}
	for _, e := range w.entries {
		counts[e.Provider]++
		if e.Created.After(newest[e.Provider]) {
			newest[e.Provider] = e.Created
		}
	}
	if len(got.Rows) != 2 {
		t.Fatalf("want one row per provider:\n%s", got)
	}
	for _, r := range got.Rows {
		p := r[0]
		if r[1] != fmt.Sprint(counts[p]) || r[2] != ts(w.syncedAt) || r[4] != ts(newest[p]) {
			t.Errorf("%s: got %v, want %d transactions, last synced %s, newest %s", p, r, counts[p], ts(w.syncedAt), ts(newest[p]))
		}
		lag := now.Sub(w.syncedAt).Seconds()
		var secs float64
		fmt.Sscan(r[3], &secs)
		if secs < lag-5 || secs > lag+60 {
			t.Errorf("%s: seconds_since_last_sync %s, want about %.0f", p, r[3], lag)
		}
	}
}
