package sink

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// rowsByKey compares rows by their first value, an int.
func rowsByKey(a, b []any) int { return cmp.Compare(a[0].(int), b[0].(int)) }

// runs makes n rows as a backfill batch's partition holds them: pages of up
// to 100 rows from four customers in turn, each customer's rows in
// descending order across its pages, and one row in 50 with the key of the
// row before it (a repeated observation). Each row's second value is its
// queue position.
func runs(rng *rand.Rand, n int) [][]any {
	rows := make([][]any, 0, n)
	next := []int{1e6, 2e6, 3e6, 4e6} // each customer's next key, counting down
	for c := 0; len(rows) < n; c = (c + 1) % len(next) {
		for range 1 + rng.IntN(100) {
			if len(rows) == n {
				break
			}
			rows = append(rows, []any{next[c], len(rows)})
			if rng.IntN(50) != 0 {
				next[c] -= 1 + rng.IntN(3)
			}
		}
	}
	return rows
}

// sortStable orders rows as a stable sort does: by key, and rows of one key
// in the order they were queued.
func TestSortStable(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 2, 3, 50, 1000, 6000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			rows := runs(rng, n)
			want := slices.Clone(rows)
			slices.SortStableFunc(want, rowsByKey)
			sortStable(rows, rowsByKey)
			for i := range rows {
				if rows[i][0] != want[i][0] || rows[i][1] != want[i][1] {
					t.Fatalf("row %d is (key %v, queued %v); a stable sort puts (key %v, queued %v) there",
						i, rows[i][0], rows[i][1], want[i][0], want[i][1])
				}
			}
		})
	}
}

// BenchmarkSortStable: 6,000 rows as a partition of a backfill batch holds
// them (runs).
//
//	go test ./internal/sink -run '^$' -bench SortStable
func BenchmarkSortStable(b *testing.B) {
	src := runs(rand.New(rand.NewPCG(3, 4)), 6000)
	rows := make([][]any, len(src))
	for _, tc := range []struct {
		name string
		sort func([][]any, func(a, b []any) int)
	}{{"as-they-come", slices.SortStableFunc[[][]any]}, {"runs-reversed", sortStable}} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				copy(rows, src)
				tc.sort(rows, rowsByKey)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(src)), "ns/row")
		})
	}
}
