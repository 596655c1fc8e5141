// Package row turns the providers' raw JSON objects into the normalised rows
// of syncd's ClickHouse tables. One normaliser per provider, shared by the
// webhook, refresh and backfill paths, so a field is parsed one way only.
package row

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/syncd/syncd/internal/sink"
)

// Sources: which path observed a row.
const (
	SourceWebhook  = "webhook"
	SourceRefresh  = "refresh"
	SourceBackfill = "backfill"
)

// Meta is what syncd knows about an observation besides the object itself.
type Meta struct {
	AccountID string // Stripe Connect account; "" for the key's own account
	// CustomerID is the customer the object was listed under. Orb's
	// transaction does not name its customer; Stripe's does, and ignores it.
	CustomerID string
	Source     string
	EventID    *string
	ObservedAt time.Time // when the source produced this state
	// RawStable says raw is never written again (a list page's own body),
	// so the row's _raw may refer to it instead of copying it. A webhook
	// body in a pooled buffer is not.
	RawStable bool
}

// Version orders observations of one object: a later observation has a
// larger version, so ReplacingMergeTree keeps it.
func Version(observedAt time.Time) uint64 {
	if observedAt.Before(time.Unix(0, 0)) {
		return 0
	}
	return uint64(observedAt.UnixNano())
}

// FieldError is a malformed object: it names the field and never yields a row.
type FieldError struct {
	Object string
	ID     string
	Field  string
	Reason string
}

func (e *FieldError) Error() string {
	if e.ID != "" {
		return fmt.Sprintf("%s %s: field %s: %s", e.Object, e.ID, e.Field, e.Reason)
	}
	return fmt.Sprintf("%s: field %s: %s", e.Object, e.Field, e.Reason)
}

// decodeObject unmarshals raw into wire, turning type errors into a
// FieldError that names the field.
func decodeObject(object string, raw []byte, wire any) error {
	trimmed := bytes.TrimSpace(raw)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return &FieldError{Object: object, Field: "(object)", Reason: "not a JSON object"}
	}
	err := json.Unmarshal(trimmed, wire)
	var te *json.UnmarshalTypeError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &te):
		return &FieldError{Object: object, Field: te.Field, Reason: "want " + te.Type.String() + ", got JSON " + te.Value}
	default:
		return &FieldError{Object: object, Field: "(object)", Reason: "malformed JSON: " + err.Error()}
	}
}

// expandableID reads a Stripe/Orb reference that may be absent, null, an id
// string, or an expanded object carrying an id.
func expandableID(raw json.RawMessage) (*string, string) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, ""
	}
	switch raw[0] {
	case '"':
		s, ok := plainString(raw)
		if !ok {
			return nil, "malformed string"
		}
		if s == "" {
			return nil, "empty id"
		}
		return &s, ""
	case '{':
		var obj struct {
			ID *string `json:"id"`
		}
		if err := json.Unmarshal(raw, &obj); err != nil {
			return nil, "malformed object"
		}
		if obj.ID == nil || *obj.ID == "" {
			return nil, "expanded object has no id"
		}
		return obj.ID, ""
	}
	return nil, "want an id, an object with an id, or null"
}

// optional is one optional reference or string of an object: where it is
// read from, how, and where the result goes.
type optional struct {
	name string
	raw  json.RawMessage
	dst  **string
	read func(json.RawMessage) (*string, string)
}

// readOptionals reads each field, or returns bad's error for the first that
// is malformed.
func readOptionals(bad func(field, reason string) error, fields ...optional) error {
	for _, f := range fields {
		v, why := f.read(f.raw)
		if why != "" {
			return bad(f.name, why)
		}
		*f.dst = v
	}
	return nil
}

// nullableString reads an optional string that may be absent or null.
func nullableString(raw json.RawMessage) (*string, string) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, ""
	}
	s, ok := plainString(raw)
	if !ok {
		return nil, "want a string or null"
	}
	return &s, ""
}

// plainString decodes a JSON string. Ids and most descriptions need no
// unescaping: those are copied as they are, without a second pass of
// encoding/json over bytes the object's decode has already checked.
func plainString(raw json.RawMessage) (string, bool) {
	if len(raw) >= 2 && raw[0] == '"' && raw[len(raw)-1] == '"' {
		in, plain := raw[1:len(raw)-1], true
		for _, c := range in {
			if c < 0x20 || c == '\\' || c == '"' {
				plain = false
				break
			}
		}
		if plain && utf8.Valid(in) {
			return string(in), true
		}
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false
	}
	return s, true
}

// sortedMetadata returns metadata as parallel key/value arrays, keys sorted.
func sortedMetadata(m map[string]string) (keys, values []string) {
	keys = make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	values = make([]string, len(keys))
	for i, k := range keys {
		values[i] = m[k]
	}
	return keys, values
}

// Table definitions: the column lists every INSERT names. They match
// schema/0001_base.sql.
var (
	StripeTxnTable = mergeTree(sink.Table{Name: "stripe_customer_balance_transactions", Columns: []string{
		"account_id", "id", "livemode", "customer", "customer_account", "amount", "currency", "created",
		"type", "description", "ending_balance", "invoice", "credit_note", "checkout_session",
		"metadata.key", "metadata.value", "_raw", "_source", "_event_id", "_observed_at", "_version", "_synced_at",
	}}, "created", "account_id", "customer", "created", "id")
	OrbTxnTable = mergeTree(sink.Table{Name: "orb_customer_balance_transactions", Columns: []string{
		"id", "customer_id", "external_customer_id", "action", "type", "amount", "starting_balance",
		"ending_balance", "currency", "created_at", "description", "invoice_id", "credit_note_id",
		"_raw", "_source", "_event_id", "_observed_at", "_version", "_synced_at",
	}}, "created_at", "customer_id", "created_at", "id")
	StripeEventTable = sink.Table{Name: "stripe_events", Columns: []string{
		"id", "type", "account_id", "livemode", "created", "api_version", "customer", "payload", "received_at", "_version",
	}}
	OrbEventTable = sink.Table{Name: "orb_events", Columns: []string{
		"id", "type", "created", "customer_id", "payload", "received_at", "_version",
	}}
)

// mergeTree describes the layout of a table PARTITION BY toYYYYMM(month)
// ORDER BY (orderBy...) to the sink (Table.Partition and Table.Order), so
// that a backfill can send one INSERT per partition, sorted. The month
// column is a DateTime('UTC'), so its months are UTC's on any server.
// TestTableLayoutsMatchTheServer (internal/sink) checks both against
// ClickHouse.
func mergeTree(t sink.Table, month string, orderBy ...string) sink.Table {
	col := func(name string) int {
		i := slices.Index(t.Columns, name)
		if i < 0 {
			panic("row: table " + t.Name + " has no column " + name)
		}
		return i
	}
	m := col(month)
	t.Partition = func(r []any) int64 {
		at, _ := deref(r[m]).(time.Time)
		y, mon, _ := at.UTC().Date()
		return int64(y)*100 + int64(mon)
	}
	order := make([]int, len(orderBy))
	for i, name := range orderBy {
		order[i] = col(name)
	}
	t.Order = func(a, b []any) int {
		for _, i := range order {
			if c := compareValues(a[i], b[i]); c != 0 {
				return c
			}
		}
		return 0
	}
	return t
}

// compareValues orders two values of one column as ClickHouse does:
// strings byte by byte, DateTimes by the second.
func compareValues(a, b any) int {
	a, b = deref(a), deref(b)
	switch a := a.(type) {
	case string:
		if b, ok := b.(string); ok {
			return strings.Compare(a, b)
		}
	case time.Time:
		if b, ok := b.(time.Time); ok {
			return cmp.Compare(a.Unix(), b.Unix())
		}
	}
	return 0
}

// StripeEvent is one row of the Stripe intake log.
type StripeEvent struct {
	ID         string
	Type       string
	AccountID  string
	Livemode   bool
	Created    time.Time
	APIVersion string
	Customer   string // the customer a trigger event names; "" when none
	Payload    []byte
	ReceivedAt time.Time
	// ResolvedAt is when the customer of a thin event's related object was
	// read; zero for a row written at intake. The row written then
	// supersedes the intake row (its _version is ResolvedAt's).
	ResolvedAt time.Time
}

// Values returns the row in StripeEventTable's column order.
func (e *StripeEvent) Values() []any {
	version := e.ReceivedAt
	if !e.ResolvedAt.IsZero() {
		version = e.ResolvedAt
	}
	return []any{e.ID, e.Type, e.AccountID, boolByte(e.Livemode), e.Created.UTC(), e.APIVersion, e.Customer,
		string(e.Payload), e.ReceivedAt.UTC(), Version(version)}
}

// OrbEvent is one row of the Orb intake log.
type OrbEvent struct {
	ID         string
	Type       string
	Created    time.Time
	CustomerID string
	Payload    []byte
	ReceivedAt time.Time
}

// Values returns the row in OrbEventTable's column order.
func (e *OrbEvent) Values() []any {
	return []any{e.ID, e.Type, e.Created.UTC(), e.CustomerID, string(e.Payload), e.ReceivedAt.UTC(), Version(e.ReceivedAt)}
}

// rawValue is raw as the _raw value: raw itself when stable, else a copy.
func rawValue(raw []byte, stable bool) string {
	if stable {
		return unsafe.String(unsafe.SliceData(raw), len(raw))
	}
	return string(raw)
}

// deref is a row value as the column holds it: Values gives scalars as
// pointers.
func deref(v any) any {
	switch v := v.(type) {
	case *string:
		if v != nil {
			return *v
		}
	case *time.Time:
		if v != nil {
			return *v
		}
	}
	return v
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}
