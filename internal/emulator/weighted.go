package emulator

import "math/rand/v2"

// Pick draws one of items, each with probability proportional to its
// weight, taking exactly one IntN from rng (so seeded worlds stay the same).
func Pick[T any](rng *rand.Rand, items []T, weight func(T) int) T {
	total := 0
	for _, it := range items {
		total += weight(it)
	}
	n := rng.IntN(total)
	for _, it := range items {
		w := weight(it)
		if n < w {
			return it
		}
		n -= w
	}
	return items[0]
}
