package row

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// A created or created_at outside DateTime's range is a field error, never a
// row (clickhouse-go would store it modulo 2^32); the range's own ends are
// rows.
func TestNormalizersRefuseTimesOutsideDateTime(t *testing.T) {
	doc := string(readFixture(t, "stripe_documented.json"))
	const from = `"created": 1680216086`
	if !strings.Contains(doc, from) {
		t.Fatalf("fixture lacks %q", from)
	}
	for _, tt := range []struct {
		created string
		want    time.Time // zero: refused
	}{
		{"-1", time.Time{}},
		{"0", time.Unix(0, 0)},
		{"4294967295", time.Date(2106, 2, 7, 6, 28, 15, 0, time.UTC)},
		{"4294967296", time.Time{}},
		{"-4294967296", time.Time{}},
		{"999999999999999999", time.Time{}},
	} {
		raw := []byte(strings.Replace(doc, from, `"created": `+tt.created, 1))
		for name, normalize := range map[string]func([]byte, Meta) (*StripeTxn, error){
			"NormalizeStripe": NormalizeStripe, "normalizeStripeSlow": normalizeStripeSlow,
		} {
			got, err := normalize(raw, Meta{ObservedAt: observed})
			checkDateTime(t, name+" created "+tt.created, "created", tt.want, err, func() time.Time { return got.Created })
		}
	}

	orbRaw, c := orbTxn(t)
	const orbFrom = `"created_at": "2022-05-01T07:01:31+00:00"`
	if !strings.Contains(string(orbRaw), orbFrom) {
		t.Fatalf("fixture lacks %q", orbFrom)
	}
	for _, tt := range []struct {
		createdAt string
		want      time.Time
	}{
		{"1900-01-01T00:00:00Z", time.Time{}},
		{"1969-12-31T23:59:59Z", time.Time{}},
		{"1969-12-31T23:59:59.999Z", time.Time{}},
		{"1970-01-01T00:30:00+01:00", time.Time{}}, // 1969-12-31T23:30:00Z
		{"1970-01-01T00:00:00Z", time.Unix(0, 0)},
		{"1970-01-01T00:00:00", time.Unix(0, 0)},
		{"2106-02-07T06:28:15Z", time.Unix(4294967295, 0)},
		{"2106-02-07T06:28:15.999999Z", time.Unix(4294967295, 999999000)},
		{"2106-02-07T06:28:16Z", time.Time{}},
		{"2106-02-07T06:28:16", time.Time{}},
		{"2106-02-07T05:28:16-01:00", time.Time{}}, // 06:28:16Z
		{"2200-01-01T00:00:00Z", time.Time{}},
		{"9999-12-31T23:59:59Z", time.Time{}},
	} {
		raw := []byte(strings.Replace(string(orbRaw), orbFrom, `"created_at": "`+tt.createdAt+`"`, 1))
		got, err := NormalizeOrb(raw, c, Meta{ObservedAt: observed})
		checkDateTime(t, "NormalizeOrb created_at "+tt.createdAt, "created_at", tt.want, err, func() time.Time { return got.CreatedAt })
	}
}

// checkDateTime fails unless err refuses field as out of range (want zero)
// or the row's time is want.
func checkDateTime(t *testing.T, what, field string, want time.Time, err error, got func() time.Time) {
	t.Helper()
	if want.IsZero() {
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != field || !strings.Contains(err.Error(), "outside ClickHouse's DateTime range") {
			t.Errorf("%s: got %v; want a FieldError on %s saying it is outside DateTime's range", what, err, field)
		}
		return
	}
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return
	}
	if g := got(); !g.Equal(want) {
		t.Errorf("%s: %v, want %v", what, g, want)
	}
}

func TestFitsDateTime(t *testing.T) {
	for _, tt := range []struct {
		t    time.Time
		want bool
	}{
		{time.Unix(-1, 0), false},
		{time.Unix(0, 0), true},
		{time.Unix(1<<32-1, 999999999), true},
		{time.Unix(1<<32, 0), false},
		{time.Time{}, false},
	} {
		if got := FitsDateTime(tt.t); got != tt.want {
			t.Errorf("FitsDateTime(%v) = %v, want %v", tt.t.UTC(), got, tt.want)
		}
	}
}
