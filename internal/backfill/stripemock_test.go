package backfill

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/metrics"
	"github.com/syncd/syncd/internal/row"
)

// startStripeMock runs the stripe-mock binary (the official OpenAPI spec and
// fixtures) on a free port. It is skipped when the binary is missing, unless
// CI=true.
func startStripeMock(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("stripe-mock")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("stripe-mock is not on PATH (go install github.com/stripe/stripe-mock@v0.203.0)")
		}
		t.Skip("stripe-mock is not on PATH; go install github.com/stripe/stripe-mock@v0.203.0")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(bin, "-http-addr", addr)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
			return "http://" + addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("stripe-mock did not listen on %s: %s", addr, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The requests the source sends are valid against Stripe's OpenAPI spec
// (stripe-mock refuses unknown parameters), and the official fixture of a
// customer balance transaction normalises into a correct row.
func TestStripeMockConformance(t *testing.T) {
	t.Parallel()
	base := startStripeMock(t)
	m := metrics.New()
	src := NewStripeSource(StripeOptions{APIKey: "sk_test_123", URL: base, Metrics: m, Retry: Retry{Attempts: 1}})
	ctx := context.Background()

	// stripe-mock validates: an unknown parameter is a 400, so the calls
	// below passing means the parameters are the API's.
	if _, err := src.list(ctx, "customers", "", "/v1/customers", map[string][]string{"bogus": {"1"}}); err == nil {
		t.Fatal("stripe-mock accepted an unknown parameter: the conformance test proves nothing")
	}

	for _, account := range []string{"", "acct_1Conformance"} {
		t.Run(fmt.Sprintf("account=%q", account), func(t *testing.T) {
			ids, _, err := src.CustomerPage(ctx, account, "")
			if err != nil || len(ids) == 0 {
				t.Fatalf("list customers: %v %v", ids, err)
			}
			if _, err := src.ListCustomers(ctx, account, ids[0]); err != nil {
				t.Fatalf("list customers starting_after: %v", err)
			}
			src.mu.Lock()
			created := src.created[[2]string{account, ids[0]}]
			src.mu.Unlock()
			if created <= 0 {
				t.Errorf("the customer fixture has no created: a heavy customer cannot be read in time slices")
			}
			// One time slice of a heavy customer (readSlices).
			slice := url.Values{"limit": {"100"}, "created[gte]": {"1700000000"}, "created[lt]": {"1700086400"}, "starting_after": {"cbtxn_Older"}}
			if _, err := src.txnPage(ctx, account, "cus_Conformance", slice); err != nil {
				t.Fatalf("list balance transactions in a time slice: %v", err)
			}
			cus, err := src.GetCustomer(ctx, account, "cus_Conformance")
			if err != nil {
				t.Fatal(err)
			}
			var c struct {
				Object  string `json:"object"`
				Balance *int64 `json:"balance"`
			}
			if err := json.Unmarshal(cus, &c); err != nil || c.Object != "customer" || c.Balance == nil {
				t.Fatalf("customer fixture: %s (%v)", cus, err)
			}
			for _, cursors := range [][2]string{{"", ""}, {"cbtxn_Older", ""}, {"", "cbtxn_Newer"}} {
				p, err := src.ListTransactions(ctx, account, "cus_Conformance", cursors[0], cursors[1])
				if err != nil {
					t.Fatalf("list balance transactions %v: %v", cursors, err)
				}
				if len(p.Items) == 0 {
					t.Fatal("no fixture transaction listed")
				}
				observed := time.Now().UTC().Truncate(time.Second)
				r, err := row.NormalizeStripe(p.Items[0], row.Meta{AccountID: account, Source: row.SourceBackfill, ObservedAt: observed})
				if err != nil {
					t.Fatalf("the official fixture does not normalise: %v\n%s", err, p.Items[0])
				}
				if !strings.HasPrefix(r.ID, "cbtxn_") || r.Customer != "cus_Conformance" || r.AccountID != account ||
					len(r.Currency) != 3 || r.Created.IsZero() || r.Type == "" || r.Source != row.SourceBackfill ||
					!r.ObservedAt.Equal(observed) || len(r.MetadataKeys) != len(r.MetadataValues) || string(r.Raw) != string(p.Items[0]) {
					t.Errorf("fixture row is wrong: %+v", r)
				}
			}
			if _, err := src.ChangedCustomers(ctx, account, time.Now().Add(-time.Hour)); err != nil {
				t.Fatalf("list events with created[gte] and types[]: %v", err)
			}
		})
	}
	accts, err := src.Accounts(ctx)
	if err != nil || len(accts) == 0 || !strings.HasPrefix(accts[0], "acct_") {
		t.Fatalf("list accounts: %v %v", accts, err)
	}
	req, _ := src.Stats()
	if got := counterSum(t, m, "syncd_source_requests_total", "200"); got != float64(req)-1 {
		t.Errorf("syncd_source_requests_total{code=200} = %v; want %d", got, req-1)
	}
}

func counterSum(t *testing.T, m *metrics.Metrics, name, code string) float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, mt := range mf.GetMetric() {
			for _, l := range mt.GetLabel() {
				if l.GetName() == "code" && l.GetValue() == code {
					sum += mt.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}
