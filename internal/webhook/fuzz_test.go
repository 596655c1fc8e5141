package webhook

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	stripewebhook "github.com/stripe/stripe-go/v82/webhook"

	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/internal/sink"
)

// refusingSink takes nothing, so the fuzzer exercises every path up to the
// durable write without a database.
type refusingSink struct{}

func (refusingSink) TryWrite(sink.Table, ...[]any) (*sink.Ack, error) { return nil, sink.ErrQueueFull }

type noDirt struct{}

func (noDirt) MarkDirty(string, string, string) {}

const fuzzSecret = "whsec_fuzz"

// FuzzStripeHandler feeds the route arbitrary headers and bodies. With sign
// set the body carries a valid signature, so decoding and routing are
// reached, not only the signature check. Nothing may panic, a refusal is
// always 400, and a verified event is refused with 503 by a full queue.
func FuzzStripeHandler(f *testing.F) {
	// Seeds: testdata/fuzz/FuzzStripeHandler.
	ac := newStripeAccepter(StripeOptions{Secrets: []string{fuzzSecret}, TriggerTypes: []string{"customer.updated", "invoice.paid"}, Dirty: noDirt{}})
	rt := newRoute(providerStripe, Common{Sink: refusingSink{}, AckTimeout: time.Second}, ac.accept)
	f.Fuzz(func(t *testing.T, sign bool, header, method string, body []byte) {
		now := time.Now()
		if sign {
			header = stripewebhook.GenerateTestSignedPayload(&stripewebhook.UnsignedPayload{
				Payload: body, Secret: fuzzSecret, Timestamp: now}).Header
		}
		h := http.Header{}
		h.Set(StripeSignatureHeader, header)
		d, err := ac.accept(h, body, now)
		switch {
		case err != nil:
			rej, ok := errors.AsType[*rejection](err)
			if !ok || rej.status != http.StatusBadRequest {
				t.Fatalf("accept refused with %v, want a 400 rejection", err)
			}
			if bytes.Contains([]byte(rej.reason), []byte(fuzzSecret)) {
				t.Fatalf("reason %q quotes the secret", rej.reason)
			}
		case !sign:
			t.Fatalf("accepted a body that was not signed with the secret: %q", header)
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

		req := httptest.NewRequest(http.MethodPost, "/webhooks/stripe", bytes.NewReader(body))
		if method == "GET" {
			req.Method = method
		}
		req.Header = h
		rec := httptest.NewRecorder()
		rt.ServeHTTP(rec, req)
		want := http.StatusBadRequest
		switch {
		case req.Method != http.MethodPost:
			want = http.StatusMethodNotAllowed
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

// FuzzStripeSignatureHeader feeds verifyStripe arbitrary Stripe-Signature
// headers for a fixed body; $VALID in a header is replaced by a valid
// signature made offset seconds from now, and $NOW by now.
// Nothing may panic; a header is accepted only with exactly one t=, within
// the tolerance on both sides, and a v1= that signs the body at that time.
func FuzzStripeSignatureHeader(f *testing.F) {
	// Seeds: testdata/fuzz/FuzzStripeSignatureHeader.
	body := []byte(`{"id":"evt_1","object":"event","type":"customer.updated","created":1700000000,"data":{"object":{"id":"cus_1","object":"customer"}}}`)
	const tolerance = 5 * time.Minute
	f.Fuzz(func(t *testing.T, header string, offset int64) {
		// stripe-go checks staleness against the clock, so now is the clock.
		now := time.Now()
		at := now.Add(time.Duration(offset%7200) * time.Second)
		valid := stripewebhook.GenerateTestSignedPayload(&stripewebhook.UnsignedPayload{Payload: body, Secret: fuzzSecret, Timestamp: at}).Header
		header = strings.ReplaceAll(header, "$VALID", valid)
		header = strings.ReplaceAll(header, "$NOW", strconv.FormatInt(now.Unix(), 10))
		err := verifyStripe(body, header, []string{fuzzSecret}, tolerance, now)
		if err != nil {
			return
		}
		signedAt, ok := signedTimestamp(header)
		if !ok {
			t.Fatalf("accepted %q without exactly one integer t=", header)
		}
		if d := signedAt.Sub(now); d > tolerance || d < -tolerance {
			t.Fatalf("accepted %q signed %s from now", header, d)
		}
		if strings.Count(","+header, ",t=") != 1 {
			t.Fatalf("accepted %q with %d t= parts", header, strings.Count(","+header, ",t="))
		}
		want := stripewebhook.ComputeSignature(signedAt, body, fuzzSecret)
		if !strings.Contains(header, "v1="+hex.EncodeToString(want)) {
			t.Fatalf("accepted %q, which holds no signature of the body at its t=", header)
		}
	})
}

// FuzzStripeThinEvent decodes arbitrary bodies as thin events: nothing may
// panic, a refusal is a 400, and an accepted event has its row in the
// intake log's shape and hands on the body it was given.
func FuzzStripeThinEvent(f *testing.F) {
	// Seeds: testdata/fuzz/FuzzStripeThinEvent.
	rel := &relatedLog{}
	ac := newStripeAccepter(StripeOptions{Secrets: []string{fuzzSecret}, TriggerTypes: []string{"customer.updated", "invoice.paid", "credit_note.created"},
		Dirty: noDirt{}, Related: rel})
	f.Fuzz(func(t *testing.T, body []byte) {
		d, err := ac.decodeThin(body, time.Now())
		if err != nil {
			if rej, ok := errors.AsType[*rejection](err); !ok || rej.status != http.StatusBadRequest {
				t.Fatalf("refused with %v, want a 400 rejection", err)
			}
			return
		}
		if d.id == "" || d.typ == "" || len(d.writes) != 1 {
			t.Fatalf("accepted delivery without id, type or its one row: %+v", d)
		}
		w := d.writes[0]
		if w.table.Name != "stripe_events" || len(w.row) != len(w.table.Columns) {
			t.Fatalf("%s row has %d values for %d columns", w.table.Name, len(w.row), len(w.table.Columns))
		}
		if created := w.row[4].(time.Time); !row.FitsDateTime(created) {
			t.Fatalf("created %v is outside DateTime", created)
		}
		if d.afterCommit != nil {
			rel.payload = nil
			d.afterCommit()
			if rel.payload != nil && !bytes.Equal(rel.payload, body) {
				t.Fatalf("related mark carries %q, not the body", rel.payload)
			}
		}
	})
}

// relatedLog keeps the last MarkRelated's payload.
type relatedLog struct{ payload []byte }

func (r *relatedLog) MarkRelated(ev row.StripeEvent, _, _ string) { r.payload = ev.Payload }
