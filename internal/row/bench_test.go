package row

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkNormalizeStripe measures one row of a backfill page: the
// documented object (customer an id, as a list returns it) and one with
// customer and invoice expanded.
func BenchmarkNormalizeStripe(b *testing.B) {
	benchmarkNormalizeStripe(b, NormalizeStripe)
}

// BenchmarkNormalizeStripeSlow is the same without the fast path, as
// NormalizeStripe was: encoding/json only.
func BenchmarkNormalizeStripeSlow(b *testing.B) {
	benchmarkNormalizeStripe(b, normalizeStripeSlow)
}

func benchmarkNormalizeStripe(b *testing.B, normalize func([]byte, Meta) (*StripeTxn, error)) {
	meta := Meta{Source: SourceBackfill, ObservedAt: time.Unix(1700000000, 0)}
	for _, file := range stripeFixtures(b) {
		raw := readFixture(b, file)
		b.Run(file, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				if _, err := normalize(raw, meta); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkStripeValues measures turning a normalised row into the values
// the sink queues: from a webhook's pooled body (_raw copied) and from a
// list page (RawStable, as backfill reads).
func BenchmarkStripeValues(b *testing.B) {
	for _, stable := range []bool{false, true} {
		b.Run(fmt.Sprintf("RawStable=%v", stable), func(b *testing.B) {
			r, err := NormalizeStripe(readFixture(b, "stripe_documented.json"),
				Meta{Source: SourceBackfill, ObservedAt: time.Unix(1700000000, 0), RawStable: stable})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				queued = r.Values()
			}
		})
	}
}

// queued keeps BenchmarkStripeValues's rows on the heap, as the sink's
// queue does.
var queued []any
