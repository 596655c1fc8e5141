package stripeemu

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"slices"
	"testing"
)

// walkCustomers lists every customer of account, newest first.
func walkCustomers(t *testing.T, e *Emulator, account string) []json.RawMessage {
	t.Helper()
	var out []json.RawMessage
	for cursor := ""; ; {
		path := "/v1/customers?limit=100"
		if cursor != "" {
			path += "&starting_after=" + cursor
		}
		p := getPage(t, e, account, path)
		out = append(out, p.Data...)
		if !p.HasMore {
			return out
		}
		cursor = ids(t, p.Data)[len(p.Data)-1]
	}
}

// TestScaledWorldIsCompact generates a million customers over 2,000
// connected accounts: the world costs far less memory than its objects
// would (a customer object alone is ~400 bytes of JSON), and is the same
// world for the same seed.
func TestScaledWorldIsCompact(t *testing.T) {
	if testing.Short() {
		t.Skip("generates a million customers")
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	e := newEmu(t, Config{Seed: 7, Scale: Scale{Customers: 1_000_000, Accounts: 2000}})
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 16<<20 {
		t.Errorf("a million-customer world holds %d MiB of heap; want under 16 MiB", grew>>20)
	}
	accts := e.Accounts()
	if len(accts) != 2001 || accts[0] != "" {
		t.Fatalf("accounts: %d, first %q; want the platform and 2000 connected ones", len(accts), accts[0])
	}
	var sizes []int
	total := 0
	for _, a := range accts {
		n := e.accounts[a].lazy.n
		sizes = append(sizes, n)
		total += n
	}
	slices.Sort(sizes)
	if total != 1_000_000 {
		t.Errorf("%d customers in all, want 1000000", total)
	}
	if sizes[len(sizes)-1] < 50_000 || sizes[len(sizes)/2] > 1000 {
		t.Errorf("account sizes not skewed: median %d, largest %d", sizes[len(sizes)/2], sizes[len(sizes)-1])
	}
	again := newEmu(t, Config{Seed: 7, Scale: Scale{Customers: 1_000_000, Accounts: 2000}})
	a := accts[len(accts)/2]
	if x, y := walkCustomers(t, e, a), walkCustomers(t, again, a); fmt.Sprint(ids(t, x)) != fmt.Sprint(ids(t, y)) {
		t.Errorf("the same seed generated other customers for %s", a)
	}
}

// TestScaledWorldServesConsistentObjects lists a scaled world's customers
// through the API and reads each one's transactions: the list pages walk
// every customer once, newest first; each transaction list pages in full
// and both ways; ending balances chain to the customer's balance; a
// customer and a transaction read alone are the listed objects; ids are
// unique; and mutations are refused.
func TestScaledWorldServesConsistentObjects(t *testing.T) {
	e := newEmu(t, Config{Seed: 3, Scale: Scale{Customers: 3000, Accounts: 3}})
	seen := map[string]bool{}
	withTxns, txns := 0, 0
	for _, a := range e.Accounts() {
		listed := walkCustomers(t, e, a)
		if len(listed) != e.accounts[a].lazy.n {
			t.Fatalf("%q lists %d customers, want %d", a, len(listed), e.accounts[a].lazy.n)
		}
		var prev int64 = 1 << 62
		for _, raw := range listed {
			var c struct {
				ID      string
				Created int64
				Balance int64
			}
			if err := json.Unmarshal(raw, &c); err != nil {
				t.Fatal(err)
			}
			if seen[c.ID] {
				t.Fatalf("customer %s listed twice", c.ID)
			}
			seen[c.ID] = true
			if c.Created > prev {
				t.Fatalf("%s listed out of order", c.ID)
			}
			prev = c.Created
			if code, body := get(t, e, a, "/v1/customers/"+c.ID); code != 200 || string(body) != string(raw) {
				t.Fatalf("GET customer %s: %d %s, want the listed %s", c.ID, code, body, raw)
			}
			truth := e.TruthFor(a, c.ID)
			var page []json.RawMessage
			for cursor := ""; ; {
				path := "/v1/customers/" + c.ID + "/balance_transactions?limit=100"
				if cursor != "" {
					path += "&starting_after=" + cursor
				}
				p := getPage(t, e, a, path)
				page = append(page, p.Data...)
				if !p.HasMore {
					break
				}
				cursor = ids(t, p.Data)[len(p.Data)-1]
			}
			if len(page) != len(truth) {
				t.Fatalf("%s lists %d transactions, truth has %d", c.ID, len(page), len(truth))
			}
			var balance int64
			for i, tr := range truth {
				balance += tr.Amount
				if tr.EndingBalance != balance || seen[tr.ID] {
					t.Fatalf("%s: transaction %s ends at %d, want %d (or its id is not unique)", c.ID, tr.ID, tr.EndingBalance, balance)
				}
				seen[tr.ID] = true
				if i > 0 && tr.Created <= truth[i-1].Created {
					t.Fatalf("%s: transactions not in time order", c.ID)
				}
				if string(page[len(page)-1-i]) != string(tr.Raw) {
					t.Fatalf("%s: listed transaction %d is not the truth's", c.ID, i)
				}
			}
			if balance != c.Balance {
				t.Fatalf("%s: balance %d, transactions sum to %d", c.ID, c.Balance, balance)
			}
			if len(truth) > 0 {
				withTxns++
				txns += len(truth)
				last := truth[len(truth)-1]
				if code, body := get(t, e, a, "/v1/customers/"+c.ID+"/balance_transactions/"+last.ID); code != 200 || string(body) != string(last.Raw) {
					t.Fatalf("GET transaction %s: %d %s", last.ID, code, body)
				}
				if len(truth) > 1 {
					p := getPage(t, e, a, "/v1/customers/"+c.ID+"/balance_transactions?limit=100&ending_before="+truth[0].ID)
					if got := ids(t, p.Data); len(got) == 0 || got[len(got)-1] != truth[1].ID {
						t.Fatalf("%s: ending_before the oldest starts at %v, want %s", c.ID, got, truth[1].ID)
					}
				}
			}
		}
	}
	w := e.World()
	if w.Customers != 3000 || w.Transactions != int64(txns) || w.Accounts != 4 {
		t.Errorf("World() = %+v; the API served 3000 customers and %d transactions in 4 accounts", w, txns)
	}
	if withTxns == 0 || withTxns > 1500 {
		t.Errorf("%d of 3000 customers have transactions; want most without", withTxns)
	}
	if code, _ := get(t, e, "", "/v1/customers/cus_zzzzzzzzzzzzzz"); code != http.StatusNotFound {
		t.Errorf("an unknown customer answered %d, want 404", code)
	}
	first := e.Customers()[0]
	if _, err := e.AddTransaction(first.Account, first.ID, 100, ""); !errors.Is(err, ErrReadOnly) {
		t.Errorf("AddTransaction on a scaled world: %v, want ErrReadOnly", err)
	}
	if _, err := e.AddCustomer(first.Account); !errors.Is(err, ErrReadOnly) {
		t.Errorf("AddCustomer on a scaled world: %v, want ErrReadOnly", err)
	}
}
