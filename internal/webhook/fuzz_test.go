package webhook

import (
	"bytes"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	stripewebhook "github.com/stripe/stripe-go/v82/webhook"

	"github.com/syncd/syncd/internal/sink"
)

// refusingSink takes nothing, so the fuzzer exercises every path up to the
// durable write without a database.
type refusingSink struct{}

func (refusingSink) TryWrite(sink.Table, ...[]any) (*sink.Ack, error) { return nil, sink.ErrQueueFull }

type noDirt struct{}

func (noDirt) MarkDirty(string, string) {}

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
