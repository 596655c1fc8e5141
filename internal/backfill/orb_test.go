package backfill

import (
	"context"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/syncd/syncd/internal/metrics"
	"github.com/syncd/syncd/internal/orbemu"
	"github.com/syncd/syncd/internal/row"
)

const orbTestKey = "orb_test_key_0123456789"

func newOrbEmulator(t testing.TB, cfg orbemu.Config) (*orbemu.Emulator, string) {
	t.Helper()
	cfg.APIKey = orbTestKey
	e, err := orbemu.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(e)
	t.Cleanup(func() { srv.Close(); _ = e.Close() })
	return e, srv.URL
}

func newOrbSource(t testing.TB, url string, m *metrics.Metrics, limit float64) *OrbSource {
	return NewOrbSource(OrbOptions{APIKey: orbTestKey, URL: url, RateLimit: limit, Retry: fastRetry,
		Metrics: m, Logger: testLogger(t)})
}

// orbIDs lists a customer's transaction ids through src, newest first.
func orbIDs(t *testing.T, src *OrbSource, customer, since string) (ids []string, newest string) {
	t.Helper()
	newest, err := src.Transactions(context.Background(), "", customer, since, func(p Page) error {
		for _, raw := range p.Items {
			id, err := itemID(raw)
			if err != nil {
				return err
			}
			ids = append(ids, id)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ids, newest
}

func TestOrbSourcePagesThroughThrottling(t *testing.T) {
	t.Parallel()
	emu, url := newOrbEmulator(t, orbemu.Config{Seed: 6, Customers: 230, HeavyTxns: []int{345}, Rate429: 0.2, Rate500: 0.05, RetryAfter: 10 * time.Millisecond})
	m := metrics.New()
	src := newOrbSource(t, url, m, 0)
	ctx := context.Background()

	var listed []string
	for cursor := ""; ; {
		ids, next, err := src.CustomerPage(ctx, "", cursor)
		if err != nil {
			t.Fatal(err)
		}
		listed = append(listed, ids...)
		if next == "" {
			break
		}
		cursor = next
	}
	var want []string
	for _, c := range emu.Customers() {
		want = append(want, c.ID)
	}
	slices.Reverse(want) // the API lists newest first
	if !slices.Equal(listed, want) {
		t.Fatalf("listed %d customers, want the emulator's %d in API order", len(listed), len(want))
	}

	heavy := want[0] // HeavyTxns customers are generated last
	truth := emu.TruthFor(heavy)
	if len(truth) != 345 {
		t.Fatalf("heavy customer has %d transactions", len(truth))
	}
	var all []string
	for _, tx := range slices.Backward(truth) {
		all = append(all, tx.ID)
	}
	ids, newest := orbIDs(t, src, heavy, "")
	if !slices.Equal(ids, all) || newest != all[0] {
		t.Fatalf("full read: %d ids (newest %s), want %d (newest %s)", len(ids), newest, len(all), all[0])
	}
	// Incremental: everything newer than the id held, across pages, then stop.
	ids, newest = orbIDs(t, src, heavy, all[150])
	if !slices.Equal(ids, all[:150]) || newest != all[0] {
		t.Errorf("incremental read from #150: %d ids, newest %s", len(ids), newest)
	}
	emu.ResetCounters()
	ids, newest = orbIDs(t, src, heavy, all[0])
	if len(ids) != 0 || newest != all[0] {
		t.Errorf("nothing new: got %d ids, newest %s", len(ids), newest)
	}
	if n := emu.CustomerListCalls(heavy); n != 1 {
		t.Errorf("nothing new cost %d list pages, want 1", n)
	}

	requests, retries := src.Stats()
	if retries == 0 || requests <= retries {
		t.Errorf("stats: %d requests, %d retries; want retries through the injected faults", requests, retries)
	}
	if n := counterValue(m.SourceRequests.WithLabelValues("orb", "customers", "429")) +
		counterValue(m.SourceRequests.WithLabelValues("orb", "balance_transactions", "429")); n == 0 {
		t.Error(`no syncd_source_requests_total{provider="orb",code="429"} counted`)
	}
	if n := counterValue(m.SourceRequests.WithLabelValues("orb", "balance_transactions", "200")); n == 0 {
		t.Error(`no syncd_source_requests_total{provider="orb",endpoint="balance_transactions",code="200"} counted`)
	}
}

// TestOrbSourceResumesAtACustomerID: a new process resumes the listing at
// the checkpointed customer id, although Orb's cursors are opaque.
func TestOrbSourceResumesAtACustomerID(t *testing.T) {
	t.Parallel()
	emu, url := newOrbEmulator(t, orbemu.Config{Seed: 7, Customers: 250})
	var want []string
	for _, c := range emu.Customers() {
		want = append(want, c.ID)
	}
	slices.Reverse(want)
	for _, at := range []int{0, 57, 99, 199, 249} {
		src := newOrbSource(t, url, nil, 0)
		var listed []string
		for cursor := want[at]; ; {
			ids, next, err := src.CustomerPage(context.Background(), "", cursor)
			if err != nil {
				t.Fatal(err)
			}
			listed = append(listed, ids...)
			if next == "" {
				break
			}
			cursor = next
		}
		if !slices.Equal(listed, want[at+1:]) {
			t.Errorf("resumed after #%d: %d customers, want %d", at, len(listed), len(want)-at-1)
		}
	}
	src := newOrbSource(t, url, nil, 0)
	if _, _, err := src.CustomerPage(context.Background(), "", "cus_gone"); err == nil {
		t.Error("resuming after an unknown customer succeeded")
	}
}

func TestOrbSourceFetchesACustomerNotListed(t *testing.T) {
	t.Parallel()
	emu, url := newOrbEmulator(t, orbemu.Config{Seed: 8, Customers: 5, HeavyTxns: []int{3}})
	src := newOrbSource(t, url, nil, 0)
	cus := emu.Customers()[5]
	var rows [][]any
	_, err := src.Transactions(context.Background(), "", cus.ID, "", func(p Page) error {
		for _, raw := range p.Items {
			vals, err := src.Row(raw, rowMeta(cus.ID))
			if err != nil {
				return err
			}
			rows = append(rows, vals)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 3 || *rows[0][1].(*string) != cus.ID || *rows[0][8].(*string) != cus.Currency {
		t.Fatalf("rows %v; want 3 of %s in %s", rows, cus.ID, cus.Currency)
	}
	if _, err := src.Transactions(context.Background(), "", "cus_missing", "", func(Page) error { return nil }); !NotFound(err) {
		t.Errorf("unknown customer: %v, want a not-found RequestError", err)
	}
}

func rowMeta(customer string) row.Meta {
	return row.Meta{CustomerID: customer, Source: row.SourceBackfill, ObservedAt: time.Now()}
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}
