package row

import (
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"github.com/syncd/syncd/internal/sink"
)

// Mirrored reports whether a column of a mirror table holds a field of the
// source object, rather than one of syncd's own (_raw, _version, …).
func Mirrored(column string) bool { return !strings.HasPrefix(column, "_") }

// MirroredColumns returns t's mirrored columns, in t's order.
func MirroredColumns(t sink.Table) []string {
	var out []string
	for _, c := range t.Columns {
		if Mirrored(c) {
			out = append(out, c)
		}
	}
	return out
}

// DiffMirrored returns, in t's order, the mirrored columns in which rows a
// and b differ. Both are in t.Columns' order, as Values returns a row or as
// one is read back from ClickHouse (pointers or values, nil for NULL), and
// are compared as the columns hold them: DateTimes to the second, decimals
// by value, an empty array like none. The columns that are not mirrored are
// not read.
func DiffMirrored(t sink.Table, a, b []any) []string {
	var out []string
	for i, c := range t.Columns {
		if Mirrored(c) && !sameValue(a[i], b[i]) {
			out = append(out, c)
		}
	}
	return out
}

// sameValue reports whether a and b are one value of a column.
func sameValue(a, b any) bool {
	a, b = plain(a), plain(b)
	switch x := a.(type) {
	case time.Time:
		y, ok := b.(time.Time)
		return ok && x.Unix() == y.Unix()
	case decimal.Decimal:
		y, ok := b.(decimal.Decimal)
		return ok && x.Equal(y)
	case []string:
		y, ok := b.([]string)
		return ok && slices.Equal(x, y)
	}
	return reflect.DeepEqual(a, b)
}

// plain is v without pointers: nil for a nil pointer.
func plain(v any) any {
	rv := reflect.ValueOf(v)
	for rv.Kind() == reflect.Pointer {
		if rv.IsNil() {
			return nil
		}
		rv = rv.Elem()
	}
	if !rv.IsValid() {
		return nil
	}
	return rv.Interface()
}
