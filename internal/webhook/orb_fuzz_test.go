package webhook

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/orbsig"
	"github.com/syncd/syncd/internal/row"
)

const orbFuzzSecret = "whsec_orbfuzz"

// TestOrbKnownVector accepts a delivery signed by an HMAC computed here,
// independently of orbsig, with the timestamp form Orb sends.
func TestOrbKnownVector(t *testing.T) {
	const stamp = "2024-03-27T15:42:29.551"
	body := []byte(`{"id":"evt_vec","created_at":"2024-03-27T15:42:29.551Z","type":"customer.balance_transaction_created",` +
		`"customer":{"id":"cus_v","external_customer_id":null,"currency":"EUR"},` +
		`"properties":{"balance_transaction":{"id":"txn_v","action":"applied_to_invoice","amount":"-3.10",` +
		`"created_at":"2024-03-27T15:42:29+00:00","credit_note":null,"description":null,"ending_balance":"0.00",` +
		`"invoice":{"id":"inv_v"},"starting_balance":"3.10","type":"decrement"}}}`)
	mac := hmac.New(sha256.New, []byte(orbFuzzSecret))
	mac.Write([]byte("v1:" + stamp + ":"))
	mac.Write(body)
	h := http.Header{}
	h.Set(orbsig.TimestampHeader, stamp)
	h.Set(orbsig.SignatureHeader, "v1="+hex.EncodeToString(mac.Sum(nil)))
	now := time.Date(2024, 3, 27, 15, 44, 0, 0, time.UTC)

	a := &orbAccepter{secrets: []string{"whsec_other", orbFuzzSecret}}
	d, err := a.accept(h, body, now)
	if err != nil {
		t.Fatalf("refused: %v", err)
	}
	if d.id != "evt_vec" || len(d.writes) != 2 || d.writes[0].table.Name != row.OrbTxnTable.Name || d.writes[1].table.Name != row.OrbEventTable.Name {
		t.Fatalf("delivery %+v", d)
	}
	if cur := *d.writes[0].row[8].(*string); cur != "EUR" {
		t.Errorf("currency %v, want the customer's EUR", cur)
	}
	if _, err := a.accept(h, append(body[:len(body):len(body)], ' '), now); err == nil {
		t.Error("accepted a tampered body")
	}
	if _, err := a.accept(h, body, now.Add(10*time.Minute)); err == nil {
		t.Error("accepted a stale timestamp")
	}
	if _, err := (&orbAccepter{secrets: []string{"whsec_other"}}).accept(h, body, now); err == nil {
		t.Error("accepted a wrong secret")
	}
}

// FuzzOrbHandler feeds the Orb route arbitrary headers and bodies. With
// sign set the body carries a valid signature, so decoding and the
// normaliser are reached, not only the signature check. Nothing may panic,
// a refusal is always 400 and never quotes the secret, an accepted
// delivery has rows shaped like their tables, and a full queue gives 503.
func FuzzOrbHandler(f *testing.F) {
	// Seeds: testdata/fuzz/FuzzOrbHandler.
	ac := &orbAccepter{secrets: []string{orbFuzzSecret}}
	rt := newRoute(providerOrb, Common{Sink: refusingSink{}, AckTimeout: time.Second}, ac.accept)
	f.Fuzz(func(t *testing.T, sign bool, stamp, signature string, body []byte) {
		now := time.Now()
		h := http.Header{}
		if sign {
			stamp, signature = orbsig.Sign(body, orbFuzzSecret, now)
		}
		h.Set(orbsig.TimestampHeader, stamp)
		h.Set(orbsig.SignatureHeader, signature)
		d, err := ac.accept(h, body, now)
		switch {
		case err != nil:
			rej, ok := errors.AsType[*rejection](err)
			if !ok || rej.status != http.StatusBadRequest {
				t.Fatalf("accept refused with %v, want a 400 rejection", err)
			}
			if bytes.Contains([]byte(rej.reason), []byte(orbFuzzSecret)) {
				t.Fatalf("reason %q quotes the secret", rej.reason)
			}
		case !sign:
			t.Fatalf("accepted a body that was not signed with the secret: %q %q", stamp, signature)
		default:
			if len(d.writes) == 0 || d.id == "" || d.typ == "" {
				t.Fatalf("accepted delivery without rows, id or type: %+v", d)
			}
			for _, w := range d.writes {
				if len(w.row) != len(w.table.Columns) {
					t.Fatalf("%s row has %d values for %d columns", w.table.Name, len(w.row), len(w.table.Columns))
				}
			}
		}

		req := httptest.NewRequest(http.MethodPost, "/webhooks/orb", bytes.NewReader(body))
		req.Header = h
		rec := httptest.NewRecorder()
		rt.ServeHTTP(rec, req)
		want := http.StatusBadRequest
		switch {
		case len(body) > MaxBodyBytes:
			want = http.StatusRequestEntityTooLarge
		case err == nil:
			want = http.StatusServiceUnavailable
		}
		if rec.Code != want {
			t.Fatalf("status %d, want %d", rec.Code, want)
		}
	})
}
