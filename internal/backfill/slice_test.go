package backfill

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/stripeemu"
)

// urls records the URL of every request sent.
type urls struct {
	base http.RoundTripper
	mu   sync.Mutex
	sent []*url.URL
}

func (r *urls) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.sent = append(r.sent, req.URL)
	r.mu.Unlock()
	return r.base.RoundTrip(req)
}

// A heavy customer is read in time slices at once, cut at seconds that
// 100 transactions share, with page breaks inside those seconds: the
// warehouse holds every transaction once (rows written = the truth, FINAL
// equals it), the cursor is the newest transaction, and a rerun reads one
// page and nothing new.
func TestHeavyCustomerReadInSlices(t *testing.T) {
	t.Parallel()
	w := newWarehouse(t, 20000)
	// 20 ms per request at 1,000/s: slices sized 20, then held to a quarter
	// of the ~29 pages left.
	emu, base := newEmulator(t, stripeemu.Config{Seed: 31, Customers: 20, Latency: 20 * time.Millisecond})
	heavy, err := emu.AddCustomer("")
	if err != nil {
		t.Fatal(err)
	}
	// 3,000 transactions, 100 to a second, from the second the customer
	// was created: every second a slice can start at is shared by 100.
	const perSecond, n = 100, 3000
	for i := range n {
		at := time.Unix(heavy.Created, 0).Add(time.Duration(i/perSecond) * time.Second)
		if _, err := emu.AddTransactionAt("", heavy.ID, int64(i+1), "adjustment", at); err != nil {
			t.Fatal(err)
		}
	}
	perSec := map[int64]int{}
	for _, tx := range emu.TruthFor("", heavy.ID) {
		perSec[tx.Created]++
	}

	rec := &urls{base: http.DefaultTransport}
	src := NewStripeSource(StripeOptions{APIKey: testKey, URL: base, RateLimit: 1000, Retry: fastRetry, Metrics: w.m, Logger: testLogger(t),
		HTTPClient: &http.Client{Transport: rec}})
	sum := mustBackfill(t, w, src, Options{Concurrency: 4})
	truth := emu.Truth()
	if sum.Rows != int64(len(truth)) {
		t.Errorf("wrote %d rows for %d transactions: slices overlapped or missed some", sum.Rows, len(truth))
	}
	assertMirrors(t, w.conn, truth)

	var cuts []int64
	for _, u := range rec.sent {
		if !strings.Contains(u.Path, heavy.ID) {
			continue
		}
		if v := u.Query()["created[lt]"]; len(v) == 1 {
			lt, err := strconv.ParseInt(v[0], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			cuts = append(cuts, lt)
		}
	}
	if len(cuts) == 0 {
		t.Fatal("the heavy customer was not read in slices")
	}
	for _, c := range cuts {
		if perSec[c] != perSecond {
			t.Errorf("a slice ends at %d, a second with %d transactions; want every cut inside the dense run", c, perSec[c])
		}
	}

	cs, err := cursors(context.Background(), w.conn, "stripe", "", []string{heavy.ID})
	if err != nil {
		t.Fatal(err)
	}
	all := emu.TruthFor("", heavy.ID)
	if newest := all[len(all)-1].ID; cs[heavy.ID] != newest {
		t.Errorf("cursor of the heavy customer is %q, want its newest transaction %s", cs[heavy.ID], newest)
	}
	emu.ResetCounters()
	if sum := mustBackfill(t, w, src, Options{Concurrency: 4}); sum.Rows != 0 || emu.CustomerListCalls("", heavy.ID) != 1 {
		t.Errorf("rerun: %d rows, %d list calls of the heavy customer; want 0 and 1", sum.Rows, emu.CustomerListCalls("", heavy.ID))
	}
	assertNoDrift(t, w, src, VerifyOptions{})
}
