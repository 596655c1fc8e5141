package row

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// stripeFastCases are inputs for the fast path, with whether it should take
// them (true) or leave them to encoding/json (false).
var stripeFastCases = []struct {
	name string
	raw  string
	fast bool
}{
	{"empty object", `{}`, true},
	{"spaces", " \t\r\n{ \"id\" : \"a\" , \"amount\" :\n-5 }\n ", true},
	{"unicode spaces trimmed", "\v\f\u00a0\u0085{\"id\":\"a\"}\u2028\u00a0", true},
	{"nulls", `{"id":null,"object":null,"amount":null,"created":null,"currency":null,"ending_balance":null,` +
		`"livemode":null,"metadata":null,"type":null,"customer":null,"invoice":null,"credit_note":null,` +
		`"checkout_session":null,"customer_account":null,"description":null}`, true},
	{"metadata null values and repeated keys", `{"metadata":{"a":null,"b":"x","a":"y","A":"z"}}`, true},
	{"metadata unicode", `{"metadata":{"é":"ü","":"","k":"☃"}}`, true},
	{"integers", `{"amount":-0,"created":0,"ending_balance":999999999999999999,"livemode":true}`, true},
	{"negative integers", `{"amount":-999999999999999999,"ending_balance":-1}`, true},
	{"expanded customer", `{"customer":{"id":"cus_1","object":"customer"},"invoice":[1,{"id":"in"}]}`, true},
	{"unknown keys, nested", `{"x":[1,[2.5e-3,-0.0E+1,{"a":[]}],"s\n\u00e9\/\"",true,false,null,{}],"id":"a","x_y":{"Id":1}}`, true},
	{"unknown key with invalid UTF-8", "{\"x\":\"\xff\xfe\",\"id\":\"a\"}", true},
	{"raw message with escapes", `{"description":"a\"b\u00e9\\","customer":"c\u0075s"}`, true},
	{"raw message with invalid UTF-8", "{\"description\":\"\xffa\xc3\"}", true},
	{"raw message spacing kept", `{"customer" : { "id" : "cus_1" } , "invoice":[ ]}`, true},
	{"object interned", `{"object":"customer_balance_transaction"}`, true},
	{"other object", `{"object":"invoice"}`, true},

	{"escaped id", `{"id":"a\u0062"}`, false},
	{"escaped type", `{"type":"adjust\u006dent"}`, false},
	{"escaped key", `{"\u0069d":"a"}`, false},
	{"escaped unknown key", `{"x\u0069":"a"}`, false},
	{"upper-case key", `{"ID":"a"}`, false},
	{"mixed-case key", `{"Amount":1}`, false},
	{"upper-case unknown key", `{"Foo":1}`, false},
	{"kelvin sign key", "{\"chec\u212aout_session\":null}", false},
	{"long s key", "{\"de\u017fcription\":null}", false},
	{"duplicate key", `{"id":"a","id":"b"}`, false},
	{"duplicate null key", `{"id":"a","id":null}`, false},
	{"float", `{"amount":1.5}`, false},
	{"float zero", `{"amount":1.0}`, false},
	{"exponent", `{"amount":1e3}`, false},
	{"upper exponent", `{"created":1E3}`, false},
	{"19 digits", `{"amount":1234567890123456789}`, false},
	{"int64 overflow", `{"amount":9223372036854775808}`, false},
	{"leading zero", `{"amount":01}`, false},
	{"amount a string", `{"amount":"1"}`, false},
	{"id a number", `{"id":1}`, false},
	{"livemode a number", `{"livemode":1}`, false},
	{"livemode a string", `{"livemode":"true"}`, false},
	{"metadata value a number", `{"metadata":{"a":1}}`, false},
	{"metadata value an object", `{"metadata":{"a":{}}}`, false},
	{"metadata an array", `{"metadata":[]}`, false},
	{"metadata a string", `{"metadata":"a"}`, false},
	{"metadata escaped key", `{"metadata":{"a\u00e9":"b"}}`, false},
	{"metadata escaped value", `{"metadata":{"a":"\n"}}`, false},
	{"metadata invalid UTF-8 key", "{\"metadata\":{\"\xff\":\"b\"}}", false},
	{"metadata invalid UTF-8 value", "{\"metadata\":{\"a\":\"\xff\"}}", false},
	{"invalid UTF-8 id", "{\"id\":\"\xff\"}", false},
	{"surrogate in UTF-8", "{\"id\":\"\xed\xa0\x80\"}", false},
	{"control character", "{\"x\":\"a\tb\"}", false},
	{"control character 0x1f", "{\"description\":\"\x1f\"}", false},
	{"DEL is no control character", "{\"id\":\"\x7f\",\"x\":\"\x7f\"}", true},
	{"bad escape", `{"x":"\q"}`, false},
	{"short unicode escape", `{"x":"\u12"}`, false},
	{"trailing comma", `{"id":"a",}`, false},
	{"trailing comma in array", `{"x":[1,]}`, false},
	{"missing colon", `{"id" "a"}`, false},
	{"bad literal", `{"x":tru}`, false},
	{"literal run-on", `{"x":truex}`, false},
	{"bare minus", `{"x":-}`, false},
	{"bare fraction", `{"x":.5}`, false},
	{"empty fraction", `{"x":1.}`, false},
	{"empty exponent", `{"x":1e}`, false},
	{"space after minus", `{"amount":- 1}`, false},
	{"trailing garbage", `{"id":"a"} x`, false},
	{"two objects", `{"id":"a"}{}`, false},
	{"truncated", `{"id":"a"`, false},
	{"unterminated string", `{"id":"a}`, false},
	{"array", `[]`, false},
	{"null", `null`, false},
	{"empty", ``, false},
	{"deep nesting", `{"x":` + strings.Repeat("[", 200) + strings.Repeat("]", 200) + `}`, false},
}

// checkStripeFastPath checks decodeStripeFast against encoding/json and
// reports whether it took raw.
func checkStripeFastPath(t testing.TB, raw []byte) bool {
	t.Helper()
	var got stripeWire
	if !decodeStripeFast(raw, &got) {
		if !reflect.DeepEqual(got, stripeWire{}) {
			t.Fatalf("%q: the fast path declined but wrote %+v", raw, got)
		}
		return false
	}
	var want stripeWire
	if err := json.Unmarshal(bytes.TrimSpace(raw), &want); err != nil {
		t.Fatalf("%q: the fast path took what encoding/json rejects: %v", raw, err)
	}
	// DeepEqual tells a nil map or slice from an empty one, as we must:
	// encoding/json makes a map for {} and none for null or an absent key.
	if (got.Metadata == nil) != (want.Metadata == nil) {
		t.Fatalf("%q: metadata %#v, encoding/json gives %#v", raw, got.Metadata, want.Metadata)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%q:\nfast path     %s\nencoding/json %s", raw, dumpWire(got), dumpWire(want))
	}
	return true
}

func dumpWire(w stripeWire) string {
	var b strings.Builder
	v := reflect.ValueOf(w)
	for i := range v.NumField() {
		f := v.Field(i)
		fmt.Fprintf(&b, "%s=", v.Type().Field(i).Name)
		switch {
		case f.Kind() == reflect.Pointer && !f.IsNil():
			fmt.Fprintf(&b, "&%#v ", f.Elem().Interface())
		case f.Kind() == reflect.Slice && !f.IsNil():
			fmt.Fprintf(&b, "%q ", f.Bytes())
		default:
			fmt.Fprintf(&b, "%#v ", f.Interface())
		}
	}
	return b.String()
}

// checkNormalizeStripe checks that NormalizeStripe gives the row or error
// it gave before it had a fast path.
func checkNormalizeStripe(t testing.TB, raw []byte) {
	t.Helper()
	meta := Meta{AccountID: "acct_1", Source: SourceBackfill, EventID: ptr("evt_1"), ObservedAt: observed}
	got, gotErr := NormalizeStripe(raw, meta)
	want, wantErr := normalizeStripeSlow(raw, meta)
	if !reflect.DeepEqual(gotErr, wantErr) {
		t.Fatalf("%q: error %v, want %v", raw, gotErr, wantErr)
	}
	if got != nil && want != nil {
		got.SyncedAt, want.SyncedAt = time.Time{}, time.Time{}
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%q:\nrow  %+v\nwant %+v", raw, got, want)
	}
}

// readCorpus reads the inputs of a FuzzX(f, raw []byte) seed corpus.
func readCorpus(t testing.TB, fuzzer string) [][]byte {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "fuzz", fuzzer, "*"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no corpus for %s: %v", fuzzer, err)
	}
	var inputs [][]byte
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) != 2 || lines[0] != "go test fuzz v1" ||
			!strings.HasPrefix(lines[1], "[]byte(") || !strings.HasSuffix(lines[1], ")") {
			t.Fatalf("%s: not a one-[]byte corpus file", file)
		}
		s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		inputs = append(inputs, []byte(s))
	}
	return inputs
}

// stripeFixtures are the Stripe objects in testdata.
func stripeFixtures(t testing.TB) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "stripe_*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no Stripe fixtures: %v", err)
	}
	for i, file := range files {
		files[i] = filepath.Base(file)
	}
	return files
}

// existingStripeInputs are the inputs of row_test.go's NormalizeStripe
// tests and of the seed corpora.
func existingStripeInputs(t testing.TB) [][]byte {
	var inputs [][]byte
	add := func(s string) { inputs = append(inputs, []byte(s)) }
	for _, file := range stripeFixtures(t) {
		add(string(readFixture(t, file)))
	}
	doc := string(readFixture(t, "stripe_documented.json"))
	for _, typ := range []string{"adjustment", "applied_to_invoice", "credit_note", "a_type_invented_next_year"} {
		add(strings.Replace(doc, `"adjustment"`, `"`+typ+`"`, 1))
	}
	for _, v := range []string{`"cs_123"`, `null`, `{"id":"cs_123","object":"checkout.session","amount_total":100}`} {
		add(strings.Replace(doc, `"checkout_session": null`, `"checkout_session": `+v, 1))
	}
	var m map[string]any
	_ = json.Unmarshal([]byte(doc), &m)
	for _, k := range []string{"invoice", "credit_note", "checkout_session", "customer_account", "description", "metadata"} {
		delete(m, k)
	}
	absent, _ := json.Marshal(m)
	inputs = append(inputs, absent)
	for _, r := range [][2]string{
		{`"id": "cbtxn_1MrU9qLkdIwHu7ixhdjxGBgI",`, ``},
		{`"amount": -500`, `"amount": "-500"`},
		{`"amount": -500,`, ``},
		{`"amount": -500`, `"amount": -5.5`},
		{`"customer": "cus_NcjdgdwZyI9Rj7",`, ``},
		{`"customer": "cus_NcjdgdwZyI9Rj7"`, `"customer": null`},
		{`"customer": "cus_NcjdgdwZyI9Rj7"`, `"customer": {"object":"customer"}`},
		{`"invoice": null`, `"invoice": 7`},
		{`"created": 1680216086,`, ``},
		{`"currency": "usd"`, `"currency": "dollars"`},
		{`"object": "customer_balance_transaction"`, `"object": "invoice"`},
		{`"metadata": {}`, `"metadata": {"a": 1}`},
		{`"description": null`, `"description": 5`},
		{`"livemode": false,`, ``},
		{`"type": "adjustment"`, `"type": "adj`},
	} {
		if !strings.Contains(doc, r[0]) {
			t.Fatalf("fixture lacks %q", r[0])
		}
		add(strings.Replace(doc, r[0], r[1], 1))
	}
	for _, s := range []string{"", "null", "[]", `"x"`, "{"} {
		add(s)
	}
	inputs = append(inputs, readCorpus(t, "FuzzNormalizeStripe")...)
	inputs = append(inputs, readCorpus(t, "FuzzStripeFastPath")...)
	for _, c := range stripeFastCases {
		add(c.raw)
	}
	return inputs
}

// The fast path must cover what Stripe sends, or it only adds a scan.
func TestStripeFastPathTakesFixtures(t *testing.T) {
	for _, file := range stripeFixtures(t) {
		if !checkStripeFastPath(t, readFixture(t, file)) {
			t.Errorf("%s: the fast path declined it", file)
		}
	}
	// The documented object with every field set as Stripe sets it.
	doc := string(readFixture(t, "stripe_documented.json"))
	for _, r := range [][2]string{
		{`"checkout_session": null`, `"checkout_session": "cs_1"`},
		{`"credit_note": null`, `"credit_note": {"id":"cn_1","object":"credit_note","lines":{"data":[{"amount":1.5}]}}`},
		{`"description": null`, `"description": "Refund \u2014 \"goodwill\""`},
		{`"metadata": {}`, `"metadata": {"order_id": "6735", "note": "café", "empty": ""}`},
		{`"livemode": false`, `"livemode": true`},
	} {
		doc = strings.Replace(doc, r[0], r[1], 1)
	}
	if !checkStripeFastPath(t, []byte(doc)) {
		t.Errorf("the fast path declined %s", doc)
	}
}

func TestStripeFastPathCases(t *testing.T) {
	for _, c := range stripeFastCases {
		t.Run(c.name, func(t *testing.T) {
			if got := checkStripeFastPath(t, []byte(c.raw)); got != c.fast {
				t.Errorf("%q: fast path taken = %v, want %v", c.raw, got, c.fast)
			}
		})
	}
}

// NormalizeStripe gives the rows and errors it gave without the fast path.
func TestNormalizeStripeFastPathUnchanged(t *testing.T) {
	for _, raw := range existingStripeInputs(t) {
		checkStripeFastPath(t, raw)
		checkNormalizeStripe(t, raw)
	}
}

// FuzzStripeFastPath checks the fast path against encoding/json: what it
// takes, it reads as json.Unmarshal does, and NormalizeStripe's row or
// error is the one it gives without the fast path.
func FuzzStripeFastPath(f *testing.F) {
	for _, raw := range existingStripeInputs(f) {
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		checkStripeFastPath(t, raw)
		checkNormalizeStripe(t, raw)
	})
}
