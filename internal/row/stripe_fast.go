package row

import (
	"bytes"
	"encoding/json"
	"unicode/utf8"
)

// decodeStripeFast is NormalizeStripe's fast path: it fills w from raw in
// one pass over the bytes, as json.Unmarshal of bytes.TrimSpace(raw) into a
// stripeWire would, and reports whether it did. It is written for the
// objects Stripe sends, and says no (leaving w untouched) to anything it
// cannot be sure to read exactly as encoding/json does, so the caller falls
// back to decodeObject, which also words the errors. It says no to:
//
//   - malformed JSON anywhere, nesting deeper than maxSkipDepth;
//   - a key that is not an exact field name yet might match one the way
//     encoding/json matches names (case-insensitively, with Unicode
//     folding): any other key with an upper-case or non-ASCII byte; keys
//     with escapes; a field given twice; metadata keys with escapes or
//     invalid UTF-8;
//   - a decoded string (id, object, currency, type, metadata) with an
//     escape or invalid UTF-8;
//   - amount, created or ending_balance other than an integer of at most
//     18 digits (encoding/json rejects 1.5 and 1e3 for an int64);
//   - a value of the wrong JSON type, and metadata values other than
//     strings or null.
//
// The json.RawMessage fields are sub-slices of raw, which encoding/json
// would have copied: NormalizeStripe only reads them.
func decodeStripeFast(raw []byte, w *stripeWire) bool {
	d := stripeDecoder{jsonReader: jsonReader{b: bytes.TrimSpace(raw)}}
	if !d.object(d.field) || d.ws() != len(d.b) {
		return false
	}
	*w = d.w
	return true
}

// stripeDecoder is decodeStripeFast's state.
type stripeDecoder struct {
	jsonReader
	w    stripeWire
	seen int            // the fields read so far, as bits
	vals *stripeScalars // where w's pointers point
}

// stripeScalars holds the values stripeWire's pointers point to: one
// allocation instead of eight.
type stripeScalars struct {
	id, object, currency, typ      string
	amount, created, endingBalance int64
	livemode                       bool
}

// field reads the value of one top-level key. A field given twice makes it
// decline (encoding/json: the last one wins).
func (d *stripeDecoder) field(key []byte) bool {
	if d.vals == nil {
		d.vals = new(stripeScalars)
	}
	w, v := &d.w, d.vals
	switch string(key) {
	case "id":
		return d.once(0) && scalar(d, &w.ID, &v.id, d.str)
	case "object":
		return d.once(1) && scalar(d, &w.Object, &v.object, d.str)
	case "currency":
		return d.once(2) && scalar(d, &w.Currency, &v.currency, d.str)
	case "type":
		return d.once(3) && scalar(d, &w.Type, &v.typ, d.str)
	case "amount":
		return d.once(4) && scalar(d, &w.Amount, &v.amount, d.int)
	case "created":
		return d.once(5) && scalar(d, &w.Created, &v.created, d.int)
	case "ending_balance":
		return d.once(6) && scalar(d, &w.EndingBalance, &v.endingBalance, d.int)
	case "livemode":
		return d.once(7) && scalar(d, &w.Livemode, &v.livemode, d.bool)
	case "checkout_session":
		return d.once(8) && d.raw(&w.CheckoutSession)
	case "credit_note":
		return d.once(9) && d.raw(&w.CreditNote)
	case "customer":
		return d.once(10) && d.raw(&w.Customer)
	case "customer_account":
		return d.once(11) && d.raw(&w.CustomerAccount)
	case "description":
		return d.once(12) && d.raw(&w.Description)
	case "invoice":
		return d.once(13) && d.raw(&w.Invoice)
	case "metadata":
		if !d.once(14) {
			return false
		}
		if d.null() {
			return true // encoding/json leaves the map nil
		}
		w.Metadata = map[string]string{}
		return d.object(d.metadataEntry)
	}
	for _, c := range key {
		if 'A' <= c && c <= 'Z' || c >= utf8.RuneSelf || c == '\\' {
			return false // it might name a field: encoding/json folds case
		}
	}
	return d.skip(0)
}

// once marks field bit n read, and says no if it already was.
func (d *stripeDecoder) once(n uint) bool {
	if d.seen&(1<<n) != 0 {
		return false
	}
	d.seen |= 1 << n
	return true
}

// raw keeps a value as it is, null included, as a json.RawMessage does.
func (d *stripeDecoder) raw(dst *json.RawMessage) bool {
	start := d.ws()
	ok := d.skip(0)
	*dst = d.b[start:d.i]
	return ok
}

// scalar reads a value with read into *slot and points *dst at it; a null
// leaves *dst nil, as encoding/json leaves a pointer.
func scalar[T any](d *stripeDecoder, dst **T, slot *T, read func() (T, bool)) bool {
	if d.null() {
		return true
	}
	val, ok := read()
	*slot, *dst = val, slot
	return ok
}

// metadataEntry reads one metadata value: encoding/json stores a null as "".
func (d *stripeDecoder) metadataEntry(key []byte) bool {
	if bytes.IndexByte(key, '\\') >= 0 || !utf8.Valid(key) {
		return false
	}
	val := ""
	if !d.null() {
		var ok bool
		if val, ok = d.str(); !ok {
			return false
		}
	}
	d.w.Metadata[string(key)] = val
	return true
}

// jsonReader reads JSON from b[i:], checking it as encoding/json's scanner
// does. Its methods skip whitespace before what they read, but for
// skipString and skipNumber, which start at b[i].
type jsonReader struct {
	b []byte
	i int
}

// maxSkipDepth bounds the nesting of values skipped or kept raw; deeper
// ones are left to encoding/json (whose own limit is 10000).
const maxSkipDepth = 100

// ws skips whitespace and returns the offset of what follows.
func (d *jsonReader) ws() int {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return d.i
		}
	}
	return d.i
}

// next consumes c if it comes next.
func (d *jsonReader) next(c byte) bool {
	if d.ws(); d.i < len(d.b) && d.b[d.i] == c {
		d.i++
		return true
	}
	return false
}

func (d *jsonReader) literal(lit string) bool {
	if d.ws(); len(d.b)-d.i >= len(lit) && string(d.b[d.i:d.i+len(lit)]) == lit {
		d.i += len(lit)
		return true
	}
	return false
}

func (d *jsonReader) null() bool { return d.literal("null") }

func (d *jsonReader) bool() (bool, bool) {
	switch {
	case d.literal("true"):
		return true, true
	case d.literal("false"):
		return false, true
	}
	return false, false
}

// object reads an object, calling field for each key (unquoted, not
// unescaped) with d after the colon; field reads the value.
func (d *jsonReader) object(field func(key []byte) bool) bool {
	if !d.next('{') {
		return false
	}
	if d.next('}') {
		return true
	}
	for {
		start := d.ws()
		if !d.skipString() {
			return false
		}
		if key := d.b[start+1 : d.i-1]; !d.next(':') || !field(key) {
			return false
		}
		switch {
		case d.next(','):
		case d.next('}'):
			return true
		default:
			return false
		}
	}
}

// str reads a string that needs no unescaping, as a string.
func (d *jsonReader) str() (string, bool) {
	start := d.ws()
	if !d.skipString() {
		return "", false
	}
	s := d.b[start+1 : d.i-1]
	if bytes.IndexByte(s, '\\') >= 0 || !utf8.Valid(s) {
		return "", false
	}
	if string(s) == stripeObject {
		return stripeObject, true // nearly every row's object, not copied
	}
	return string(s), true
}

// int reads an integer of at most 18 digits, so one an int64 holds.
func (d *jsonReader) int() (int64, bool) {
	neg := d.next('-')
	start := d.i
	var n int64
	for d.i < len(d.b) && '0' <= d.b[d.i] && d.b[d.i] <= '9' {
		n = n*10 + int64(d.b[d.i]-'0')
		d.i++
	}
	digits := d.i - start
	switch {
	case digits == 0 || digits > 18 || digits > 1 && d.b[start] == '0':
		return 0, false
	case d.i < len(d.b) && (d.b[d.i] == '.' || d.b[d.i] == 'e' || d.b[d.i] == 'E'):
		return 0, false
	case neg:
		return -n, true
	}
	return n, true
}

// skipString skips a string starting at d.i, checking its escapes and that
// it has no control characters. Other bytes, even invalid UTF-8, are valid.
func (d *jsonReader) skipString() bool {
	if d.i >= len(d.b) || d.b[d.i] != '"' {
		return false
	}
	for d.i++; d.i < len(d.b); d.i++ {
		switch c := d.b[d.i]; {
		case c == '"':
			d.i++
			return true
		case c < 0x20:
			return false
		case c == '\\':
			d.i++
			if d.i >= len(d.b) {
				return false
			}
			switch d.b[d.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if d.i+4 >= len(d.b) {
					return false
				}
				for _, h := range d.b[d.i+1 : d.i+5] {
					if !('0' <= h && h <= '9' || 'a' <= h && h <= 'f' || 'A' <= h && h <= 'F') {
						return false
					}
				}
				d.i += 4
			default:
				return false
			}
		}
	}
	return false
}

// skip skips one value of any type, checking it.
func (d *jsonReader) skip(depth int) bool {
	if d.ws(); d.i >= len(d.b) || depth > maxSkipDepth {
		return false
	}
	switch d.b[d.i] {
	case '"':
		return d.skipString()
	case '{':
		return d.object(func([]byte) bool { return d.skip(depth + 1) })
	case '[':
		d.i++
		if d.next(']') {
			return true
		}
		for {
			if !d.skip(depth + 1) {
				return false
			}
			switch {
			case d.next(','):
			case d.next(']'):
				return true
			default:
				return false
			}
		}
	case 't':
		return d.literal("true")
	case 'f':
		return d.literal("false")
	case 'n':
		return d.null()
	}
	return d.skipNumber()
}

// skipNumber skips a number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (d *jsonReader) skipNumber() bool {
	digits := func() int {
		start := d.i
		for d.i < len(d.b) && '0' <= d.b[d.i] && d.b[d.i] <= '9' {
			d.i++
		}
		return d.i - start
	}
	if d.i < len(d.b) && d.b[d.i] == '-' {
		d.i++
	}
	start := d.i
	if n := digits(); n == 0 || n > 1 && d.b[start] == '0' {
		return false
	}
	if d.i < len(d.b) && d.b[d.i] == '.' {
		d.i++
		if digits() == 0 {
			return false
		}
	}
	if d.i < len(d.b) && (d.b[d.i] == 'e' || d.b[d.i] == 'E') {
		d.i++
		if d.i < len(d.b) && (d.b[d.i] == '+' || d.b[d.i] == '-') {
			d.i++
		}
		if digits() == 0 {
			return false
		}
	}
	return true
}
