package backfill

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/syncd/syncd/internal/orbemu"
	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/internal/stripeemu"
)

// tamperValue returns another value of a column, in the form Values gives
// it.
func tamperValue(t *testing.T, v any) any {
	t.Helper()
	switch x := v.(type) {
	case *string:
		s := "tampered"
		if x != nil {
			s = *x + "x"
		}
		return &s
	case *int64:
		n := *x + 1
		return &n
	case uint8:
		return 1 - x
	case *time.Time:
		at := x.Add(-time.Hour)
		return &at
	case *decimal.Decimal:
		d := x.Add(decimal.New(1, -2))
		return &d
	case []string:
		out := slices.Clone(x)
		out[0] += "x"
		return out
	}
	t.Fatalf("no tampering for %T", v)
	return nil
}

// waitGone deletes the rows of transaction id from table and waits for the
// mutation.
func waitGone(t *testing.T, w *warehouse, table, id string) {
	t.Helper()
	ctx := context.Background()
	if err := w.conn.Exec(ctx, "ALTER TABLE "+table+" DELETE WHERE id = ?", id); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the mutation to remove "+id, func() bool {
		var n uint64
		_ = w.conn.QueryRow(ctx, "SELECT count() FROM "+table+" WHERE id = ?", id).Scan(&n)
		return n == 0
	})
}

// The Orb verify compares every mirrored column too: a newer observation
// with any one of them changed is drift naming it (or, for id and
// customer_id, the transaction or customer it now names), until a full
// backfill observes the transaction again.
func TestVerifyOrbFindsEveryTamperedColumn(t *testing.T) {
	t.Parallel()
	w := newWarehouse(t, 1000)
	emu, url := newOrbEmulator(t, orbemu.Config{Seed: 71, Customers: 12})
	src := newOrbSource(t, url, w.m, 0)
	ctx := context.Background()
	run := func(full bool) {
		t.Helper()
		if sum, err := Run(ctx, Options{Source: src, Conn: w.conn, Sink: w.sink, Metrics: w.m, Logger: testLogger(t), Full: full}); err != nil {
			t.Fatalf("backfill: %v (%s)", err, sum)
		}
	}
	verify := func() *Report {
		t.Helper()
		rep, err := VerifyOrb(ctx, OrbVerifyOptions{Source: src, Conn: w.conn, Metrics: w.m, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	run(false)
	if rep := verify(); !rep.Clean() {
		t.Fatalf("verify after the backfill: %+v", rep.Drifts)
	}
	// The transaction with the most optional fields set (a NULL one
	// changes to a value).
	var victim orbemu.Txn
	set := func(tx orbemu.Txn) int {
		n := 0
		for _, p := range []*string{tx.ExternalCustomerID, tx.Description, tx.InvoiceID, tx.CreditNoteID} {
			if p != nil {
				n++
			}
		}
		return n
	}
	for _, tx := range emu.Truth() {
		if victim.ID == "" || set(tx) > set(victim) {
			victim = tx
		}
	}
	for _, col := range row.MirroredColumns(row.OrbTxnTable) {
		t.Run(col, func(t *testing.T) {
			vals, err := src.Row(victim.Raw, rowMeta(victim.CustomerID))
			if err != nil {
				t.Fatal(err)
			}
			i := slices.Index(row.OrbTxnTable.Columns, col)
			vals[i] = tamperValue(t, vals[i])
			ack, err := w.sink.Write(ctx, row.OrbTxnTable, vals)
			if err != nil {
				t.Fatal(err)
			}
			if err := ack.Wait(ctx); err != nil {
				t.Fatal(err)
			}
			var want string
			switch col {
			case "id":
				want = fmt.Sprintf("%s: 1 extra [%sx]", victim.CustomerID, victim.ID)
			case "customer_id":
				want = fmt.Sprintf("%sx: %s; 1 extra [%s]", victim.CustomerID, UnknownCustomer, victim.ID)
			default:
				want = fmt.Sprintf("%s (%s)", victim.ID, col)
			}
			var out strings.Builder
			rep := verify()
			_, _ = rep.WriteTo(&out)
			if rep.Clean() || !strings.Contains(out.String(), want) {
				t.Fatalf("verify after changing %s: want drift saying %q:\n%s", col, want, out.String())
			}
			run(true)
			if col == "id" {
				if rep := verify(); rep.Clean() {
					t.Error("verify after --full no longer reports the transaction Orb never had")
				}
				waitGone(t, w, row.OrbTxnTable.Name, victim.ID+"x")
			}
			if rep := verify(); !rep.Clean() {
				t.Fatalf("verify after a full backfill: %+v", rep.Drifts)
			}
		})
	}
}

// A customer Orb reports deleted keeps its rows, and is listed, not drift;
// rows of a customer Orb never had are drift.
func TestVerifyOrbDeletedAndUnknownCustomers(t *testing.T) {
	t.Parallel()
	w := newWarehouse(t, 1000)
	emu, url := newOrbEmulator(t, orbemu.Config{Seed: 72, Customers: 10})
	src := newOrbSource(t, url, w.m, 0)
	ctx := context.Background()
	if sum, err := Run(ctx, Options{Source: src, Conn: w.conn, Sink: w.sink, Metrics: w.m, Logger: testLogger(t)}); err != nil {
		t.Fatalf("backfill: %v (%s)", err, sum)
	}
	var gone orbemu.Customer
	for _, c := range emu.Customers() {
		if n := len(emu.TruthFor(c.ID)); n > 0 {
			gone = c
			break
		}
	}
	held := len(emu.TruthFor(gone.ID))
	if err := emu.DeleteCustomer(gone.ID); err != nil {
		t.Fatal(err)
	}
	rep, err := VerifyOrb(ctx, OrbVerifyOptions{Source: src, Conn: w.conn, Metrics: w.m, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Clean() || fmt.Sprint(rep.Deleted) != fmt.Sprintf("[{ %s %d}]", gone.ID, held) {
		t.Fatalf("verify with %s deleted: drifts %+v, deleted %+v; want no drift and it listed with %d rows", gone.ID, rep.Drifts, rep.Deleted, held)
	}

	// A row of a customer Orb never had.
	other := emu.Truth()[0]
	vals, err := src.Row(other.Raw, rowMeta(other.CustomerID))
	if err != nil {
		t.Fatal(err)
	}
	vals[slices.Index(row.OrbTxnTable.Columns, "id")] = "phantom_txn"
	vals[slices.Index(row.OrbTxnTable.Columns, "customer_id")] = "never_existed"
	ack, err := w.sink.Write(ctx, row.OrbTxnTable, vals)
	if err != nil {
		t.Fatal(err)
	}
	if err := ack.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err = VerifyOrb(ctx, OrbVerifyOptions{Source: src, Conn: w.conn, Metrics: w.m, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Drifts) != 1 || rep.Drifts[0].Customer != "never_existed" || rep.Drifts[0].Unknown != UnknownCustomer ||
		fmt.Sprint(rep.Drifts[0].Extra) != "[phantom_txn]" || len(rep.Deleted) != 1 {
		t.Fatalf("verify with a row of a customer Orb never had: drifts %+v, deleted %+v", rep.Drifts, rep.Deleted)
	}
}

// A customer deleted between a sweep's listing of it and the reading of
// its transactions is a 404: the run counts it (Summary, metric), logs it,
// checkpoints it and succeeds, for Stripe and for Orb.
func TestBackfillSkipsCustomersDeletedMidRun(t *testing.T) {
	t.Parallel()
	// afterList wraps h: once the first customer list page is served,
	// remove runs.
	afterList := func(h http.Handler, remove func()) http.Handler {
		var once sync.Once
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h.ServeHTTP(w, r)
			if r.Method == http.MethodGet && r.URL.Path == "/v1/customers" {
				once.Do(remove)
			}
		})
	}
	t.Run("stripe", func(t *testing.T) {
		w := newWarehouse(t, 1000)
		emu, err := stripeemu.New(stripeemu.Config{Seed: 73, Customers: 10})
		if err != nil {
			t.Fatal(err)
		}
		var victim stripeemu.Customer
		for _, c := range emu.Customers() {
			if c.Transactions > 0 {
				victim = c
			}
		}
		srv := httptest.NewServer(afterList(emu, func() {
			if _, err := emu.DeleteCustomer("", victim.ID); err != nil {
				t.Error(err)
			}
		}))
		t.Cleanup(func() { srv.Close(); _ = emu.Close() })
		sum, err := backfill(t, context.Background(), w, newSource(t, srv.URL, w.m, 0), Options{})
		if err != nil || sum.Deleted != 1 || sum.Customers != 10 || !strings.Contains(sum.String(), "1 deleted while the run read them") {
			t.Fatalf("backfill: %v, %+v; want success with 1 of 10 customers deleted", err, sum)
		}
		if got := counterValue(w.m.BackfillDeleted.WithLabelValues("stripe")); got != 1 {
			t.Errorf("syncd_backfill_deleted_customers_total{provider=stripe} = %v, want 1", got)
		}
		if done := doneIn(t, w); !done[victim.ID] || len(done) != 10 {
			t.Errorf("%d customers checkpointed (the deleted one: %v), want all 10", len(done), done[victim.ID])
		}
	})
	t.Run("orb", func(t *testing.T) {
		w := newWarehouse(t, 1000)
		emu, err := orbemu.New(orbemu.Config{Seed: 74, Customers: 10, APIKey: orbTestKey})
		if err != nil {
			t.Fatal(err)
		}
		victim := emu.Customers()[3].ID
		srv := httptest.NewServer(afterList(emu, func() {
			if err := emu.DeleteCustomer(victim); err != nil {
				t.Error(err)
			}
		}))
		t.Cleanup(func() { srv.Close(); _ = emu.Close() })
		sum, err := Run(context.Background(), Options{Source: newOrbSource(t, srv.URL, w.m, 0), Conn: w.conn, Sink: w.sink,
			Metrics: w.m, Logger: testLogger(t)})
		if err != nil || sum.Deleted != 1 || sum.Customers != 10 {
			t.Fatalf("backfill: %v, %+v; want success with 1 of 10 customers deleted", err, sum)
		}
		if got := counterValue(w.m.BackfillDeleted.WithLabelValues("orb")); got != 1 {
			t.Errorf("syncd_backfill_deleted_customers_total{provider=orb} = %v, want 1", got)
		}
	})
}
