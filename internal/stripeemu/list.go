package stripeemu

import (
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
)

type listable interface {
	key() (int64, int64)
	rawJSON() []byte
}

// listQuery is a parsed Stripe list request.
type listQuery struct {
	limit         int
	startingAfter string
	endingBefore  string
	minCreated    int64 // inclusive
	maxCreated    int64 // inclusive
}

// parseList reads limit, cursors and created[…] the way Stripe validates them.
func parseList(q url.Values) (listQuery, *apiError) {
	lq := listQuery{limit: 10, minCreated: -1 << 62, maxCreated: 1 << 62}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			return lq, invalidParam("limit", "Invalid integer: "+s)
		}
		if n < 1 {
			return lq, invalidParam("limit", "This value must be greater than or equal to 1.")
		}
		if n > 100 {
			return lq, invalidParam("limit", "This value must be less than or equal to 100.")
		}
		lq.limit = n
	}
	lq.startingAfter = q.Get("starting_after")
	lq.endingBefore = q.Get("ending_before")
	if lq.startingAfter != "" && lq.endingBefore != "" {
		return lq, invalidParam("starting_after",
			"You may only specify one of these parameters: ending_before, starting_after.")
	}
	for k, vs := range q {
		if k != "created" && !strings.HasPrefix(k, "created[") {
			continue
		}
		n, err := strconv.ParseInt(vs[0], 10, 64)
		if err != nil {
			return lq, invalidParam(k, "Invalid integer: "+vs[0])
		}
		switch k {
		case "created":
			lq.minCreated, lq.maxCreated = max(lq.minCreated, n), min(lq.maxCreated, n)
		case "created[gte]":
			lq.minCreated = max(lq.minCreated, n)
		case "created[gt]":
			lq.minCreated = max(lq.minCreated, n+1)
		case "created[lte]":
			lq.maxCreated = min(lq.maxCreated, n)
		case "created[lt]":
			lq.maxCreated = min(lq.maxCreated, n-1)
		default:
			return lq, invalidParam(k, "Received unknown parameter: "+k)
		}
	}
	return lq, nil
}

// cursorKeys are the (created, seq) keys of the cursors, found by lookup.
type cursorKeys struct {
	after, before       bool
	afterKey, beforeKey [2]int64
}

// resolveCursors locates lq's cursors by key through lookup. An unknown
// cursor is Stripe's resource_missing on that parameter, naming kind.
func resolveCursors(lq listQuery, kind string, lookup func(id string) (created, seq int64, ok bool)) (cursorKeys, *apiError) {
	var ck cursorKeys
	for _, cur := range []struct {
		id, param string
		set       *bool
		key       *[2]int64
	}{
		{lq.startingAfter, "starting_after", &ck.after, &ck.afterKey},
		{lq.endingBefore, "ending_before", &ck.before, &ck.beforeKey},
	} {
		if cur.id == "" {
			continue
		}
		c, s, ok := lookup(cur.id)
		if !ok {
			return cursorKeys{}, badCursor(kind, cur.id, cur.param)
		}
		*cur.set, *cur.key = true, [2]int64{c, s}
	}
	return ck, nil
}

// page selects one newest-first page from items, which are ascending by
// (created, seq). A cursor is located by its key, so it need not be in items
// itself (a filtered event list still pages from an event of another type).
func page[T listable](items []T, lq listQuery, ck cursorKeys) (out [][]byte, hasMore bool) {
	from, to, hasMore := pageRange(len(items), func(i int) (int64, int64) { return items[i].key() }, lq, ck)
	if from >= to {
		return nil, false
	}
	sel := items[from:to]
	out = make([][]byte, len(sel))
	for i, it := range sel {
		out[len(sel)-1-i] = it.rawJSON()
	}
	return out, hasMore
}

// pageRange is page over n items ascending by keyAt: the page is
// items[from:to], served newest first.
func pageRange(n int, keyAt func(int) (int64, int64), lq listQuery, ck cursorKeys) (from, to int, hasMore bool) {
	created := func(i int) int64 { c, _ := keyAt(i); return c }
	less := func(i int, k [2]int64) bool { c, s := keyAt(i); return c < k[0] || (c == k[0] && s < k[1]) }
	greater := func(i int, k [2]int64) bool { c, s := keyAt(i); return k[0] < c || (k[0] == c && k[1] < s) }
	lo := sort.Search(n, func(i int) bool { return created(i) >= lq.minCreated })
	hi := sort.Search(n, func(i int) bool { return created(i) > lq.maxCreated })
	if ck.after { // strictly older than the cursor
		hi = min(hi, sort.Search(n, func(i int) bool { return !less(i, ck.afterKey) }))
	}
	if ck.before { // strictly newer than the cursor
		lo = max(lo, sort.Search(n, func(i int) bool { return greater(i, ck.beforeKey) }))
	}
	if lo >= hi {
		return 0, 0, false
	}
	if ck.before {
		end := min(lo+lq.limit, hi)
		return lo, end, end < hi
	}
	start := max(hi-lq.limit, lo)
	return start, hi, start > lo
}

// appendList writes a Stripe list object around pre-marshalled items.
func appendList(buf []byte, data [][]byte, hasMore bool, path string) []byte {
	buf = append(buf, `{"object":"list","data":[`...)
	for i, d := range data {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, d...)
	}
	buf = append(buf, `],"has_more":`...)
	buf = strconv.AppendBool(buf, hasMore)
	buf = append(buf, `,"url":`...)
	buf = strconv.AppendQuote(buf, path)
	return append(buf, '}')
}

// typeFilter reads /v1/events' type (with * wildcards) and types[] filters.
func typeFilter(q url.Values) func(string) bool {
	var types []string
	for k, vs := range q {
		if k == "types" || strings.HasPrefix(k, "types[") {
			types = append(types, vs...)
		}
	}
	pattern := q.Get("type")
	if len(types) == 0 && pattern == "" {
		return nil
	}
	return func(t string) bool {
		if len(types) > 0 && !slices.Contains(types, t) {
			return false
		}
		return pattern == "" || wildcardMatch(pattern, t)
	}
}

func wildcardMatch(pattern, s string) bool {
	prefix, rest, found := strings.Cut(pattern, "*")
	if !found {
		return pattern == s
	}
	return strings.HasPrefix(s, prefix) && strings.HasSuffix(s[len(prefix):], rest)
}
