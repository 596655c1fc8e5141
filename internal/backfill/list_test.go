package backfill

import (
	"bytes"
	"encoding/json"
	"testing"
)

func TestSplitList(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		body  string
		items []string
		more  bool
		bad   bool
	}{
		{body: `{"object":"list","data":[{"id":"a","x":{"y":[1,"]}"]}},{"id":"b"}],"has_more":true,"url":"/v1/x"}`,
			items: []string{`{"id":"a","x":{"y":[1,"]}"]}}`, `{"id":"b"}`}, more: true},
		{body: ` { "data" : [ ] , "has_more" : false } `, items: []string{}},
		{body: `{"has_more":null,"data":null}`},
		{body: `{"DATA":[1, "a\"]"],"Has_More":true}`, items: []string{`1`, `"a\"]"`}, more: true},
		{body: `{"data":[{"id":"a"}],"data":[]}`, items: []string{}},
		{body: `{}`},
		{body: `{"data":[{"id":"a"}`, bad: true},
		{body: `{"data":[{"id":"a"}],"has_more":"yes"}`, bad: true},
		{body: `{"data":[,]}`, bad: true},
		{body: `{"data":[1]} x`, bad: true},
		{body: `[]`, bad: true},
		{body: ``, bad: true},
	} {
		items, more, err := splitList([]byte(tc.body))
		if tc.bad {
			if err == nil {
				t.Errorf("%s: no error", tc.body)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.body, err)
			continue
		}
		var got []string
		if items != nil {
			got = []string{}
		}
		for _, it := range items {
			got = append(got, string(it))
		}
		if more != tc.more || len(got) != len(tc.items) || (got == nil) != (tc.items == nil) {
			t.Errorf("%s: got %q, %v; want %q, %v", tc.body, got, more, tc.items, tc.more)
			continue
		}
		for i := range got {
			if got[i] != tc.items[i] {
				t.Errorf("%s: item %d is %s, want %s", tc.body, i, got[i], tc.items[i])
			}
		}
	}
}

// FuzzSplitList: whatever encoding/json decodes as a list, splitList reads
// the same way.
func FuzzSplitList(f *testing.F) {
	f.Add([]byte(`{"object":"list","data":[{"id":"cbtxn_1","metadata":{}},{"id":"cbtxn_2"}],"has_more":true,"url":"/v1/customers/cus_1/balance_transactions"}`))
	f.Add([]byte(`{"data":[],"has_more":false}`))
	f.Add([]byte(`{"d\u0061ta":["a\\\"b",[1,2],null],"has_more":false}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var want struct {
			Data    []json.RawMessage `json:"data"`
			HasMore bool              `json:"has_more"`
		}
		if json.Unmarshal(body, &want) != nil {
			return
		}
		items, more, err := splitList(body)
		if err != nil {
			t.Fatalf("encoding/json reads %q, splitList: %v", body, err)
		}
		if more != want.HasMore || len(items) != len(want.Data) {
			t.Fatalf("%q: %d items, has_more %v; encoding/json: %d, %v", body, len(items), more, len(want.Data), want.HasMore)
		}
		for i := range items {
			if !bytes.Equal(items[i], want.Data[i]) {
				t.Fatalf("%q: item %d is %s; encoding/json: %s", body, i, items[i], want.Data[i])
			}
		}
	})
}
