package orbapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

const apiKey = "orb_test_secret_key_123"

type seen struct {
	path, query, auth string
}

func server(t *testing.T, handler func(w http.ResponseWriter, r *http.Request)) (*Client, *[]seen) {
	t.Helper()
	var reqs []seen
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqs = append(reqs, seen{r.URL.EscapedPath(), r.URL.RawQuery, r.Header.Get("Authorization")})
		handler(w, r)
	}))
	t.Cleanup(srv.Close)
	return &Client{BaseURL: srv.URL + "/", APIKey: apiKey, HTTP: srv.Client()}, &reqs
}

func TestListBalanceTransactionsWalksPages(t *testing.T) {
	pages := map[string]string{
		"":   `{"data":[{"id":"t3","amount":"0.000000000001"},{"id":"t2"}],"pagination_metadata":{"has_more":true,"next_cursor":"c1"}}`,
		"c1": `{"data":[{"id":"t1", "amount": "11.00"}],"pagination_metadata":{"has_more":false,"next_cursor":null}}`,
	}
	c, reqs := server(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, pages[r.URL.Query().Get("cursor")])
	})
	var ids []string
	var raws []string
	cursor := ""
	for {
		p, err := c.ListBalanceTransactions(context.Background(), "cus/1", cursor, 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, raw := range p.Data {
			var v struct{ ID string }
			if err := json.Unmarshal(raw, &v); err != nil {
				t.Fatal(err)
			}
			ids = append(ids, v.ID)
			raws = append(raws, string(raw))
		}
		if !p.HasMore {
			break
		}
		cursor = p.NextCursor
	}
	if got := strings.Join(ids, ","); got != "t3,t2,t1" {
		t.Errorf("ids = %s", got)
	}
	if raws[2] != `{"id":"t1", "amount": "11.00"}` {
		t.Errorf("raw JSON not kept as received: %s", raws[2])
	}
	want := []seen{
		{"/v1/customers/cus%2F1/balance_transactions", "limit=100", "Bearer " + apiKey},
		{"/v1/customers/cus%2F1/balance_transactions", "cursor=c1&limit=100", "Bearer " + apiKey},
	}
	if fmt.Sprint(*reqs) != fmt.Sprint(want) {
		t.Errorf("requests = %v, want %v", *reqs, want)
	}
}

func TestListCustomersClampsLimit(t *testing.T) {
	c, reqs := server(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"data":[],"pagination_metadata":{"has_more":false,"next_cursor":null}}`)
	})
	for _, limit := range []int{0, 500} {
		if _, err := c.ListCustomers(context.Background(), "", limit); err != nil {
			t.Fatal(err)
		}
	}
	if (*reqs)[0].query != "limit=1" || (*reqs)[1].query != "limit=100" || (*reqs)[0].path != "/v1/customers" {
		t.Errorf("requests = %v", *reqs)
	}
}

func TestGetCustomer(t *testing.T) {
	body := `{"id":"XuxCbt7x9L82yyeF","external_customer_id":null,"currency":"KWD","balance":"-1.250","name":"Acme","created_at":"2024-01-02T03:04:05+00:00","metadata":{"a":"b"}}`
	c, _ := server(t, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, body) })
	cust, raw, err := c.GetCustomer(context.Background(), "XuxCbt7x9L82yyeF")
	if err != nil {
		t.Fatal(err)
	}
	if cust.ID != "XuxCbt7x9L82yyeF" || cust.ExternalCustomerID != nil || cust.Currency != "KWD" || cust.Balance != "-1.250" || cust.Metadata["a"] != "b" {
		t.Errorf("customer = %+v", cust)
	}
	if string(raw) != body {
		t.Errorf("raw = %s", raw)
	}
}

func TestErrors(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name       string
		status     int
		retryAfter string
		body       string
		want       APIError
		temporary  bool
	}{
		{"rate limited", 429, "2", `{"type":"https://docs.withorb.com/reference/error-responses#429-too-many-requests","status":429,"title":"Too many requests","detail":"slow down"}`,
			APIError{Status: 429, Type: "https://docs.withorb.com/reference/error-responses#429-too-many-requests", Title: "Too many requests", Detail: "slow down", RetryAfter: 2 * time.Second}, true},
		{"server error, not JSON", 502, "", `<html>bad gateway</html>`, APIError{Status: 502, Title: "Bad Gateway"}, true},
		{"unauthorized", 401, "", `{"type":"https://docs.withorb.com/reference/error-responses#401-authentication-error","status":401,"title":"Authentication error","detail":"bad key"}`,
			APIError{Status: 401, Type: "https://docs.withorb.com/reference/error-responses#401-authentication-error", Title: "Authentication error", Detail: "bad key"}, false},
		{"not found, Retry-After as a date", 404, now.Add(time.Hour).UTC().Format(http.TimeFormat), `{"status":404,"title":"Not found"}`,
			APIError{Status: 404, Title: "Not found", RetryAfter: time.Hour}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := server(t, func(w http.ResponseWriter, r *http.Request) {
				if tt.retryAfter != "" {
					w.Header().Set("Retry-After", tt.retryAfter)
				}
				w.WriteHeader(tt.status)
				fmt.Fprint(w, tt.body)
			})
			_, err := c.ListBalanceTransactions(context.Background(), "c1", "", 100)
			var apiErr *APIError
			if !errors.As(err, &apiErr) {
				t.Fatalf("err = %v, want *APIError", err)
			}
			got := *apiErr
			if d := got.RetryAfter - tt.want.RetryAfter; d < -2*time.Second || d > 2*time.Second {
				t.Errorf("RetryAfter = %v, want %v", got.RetryAfter, tt.want.RetryAfter)
			}
			got.RetryAfter = tt.want.RetryAfter
			if got != tt.want {
				t.Errorf("error = %+v, want %+v", got, tt.want)
			}
			if apiErr.Temporary() != tt.temporary {
				t.Errorf("Temporary() = %v", apiErr.Temporary())
			}
			if strings.Contains(err.Error(), apiKey) {
				t.Errorf("error leaks the API key: %v", err)
			}
		})
	}
}

func TestDoHook(t *testing.T) {
	c, reqs := server(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"data":[],"pagination_metadata":{"has_more":false,"next_cursor":null}}`)
	})
	hooked := 0
	c.Do = func(r *http.Request) (*http.Response, error) {
		hooked++
		return c.HTTP.Do(r)
	}
	if _, err := c.ListCustomers(context.Background(), "", 10); err != nil {
		t.Fatal(err)
	}
	if hooked != 1 || len(*reqs) != 1 {
		t.Errorf("hook calls = %d, requests = %d", hooked, len(*reqs))
	}
}

func TestDecodePageRejects(t *testing.T) {
	for _, body := range []string{
		``,
		`[]`,
		`{"pagination_metadata":{"has_more":false}}`,
		`{"data":[]}`,
		`{"data":[],"pagination_metadata":{"has_more":true,"next_cursor":null}}`,
		`{"data":[1],"pagination_metadata":{"has_more":false}}`,
		`{"data":{},"pagination_metadata":{"has_more":false}}`,
	} {
		if _, err := decodePage([]byte(body)); err == nil {
			t.Errorf("decodePage(%s) accepted", body)
		}
	}
}

func FuzzDecodePage(f *testing.F) {
	f.Add([]byte(`{"data":[{"id":"a"}],"pagination_metadata":{"has_more":true,"next_cursor":"x"}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		p, err := decodePage(body)
		if err != nil {
			return
		}
		if p.HasMore && p.NextCursor == "" {
			t.Fatal("has_more without a cursor accepted")
		}
		for _, raw := range p.Data {
			if !json.Valid(raw) {
				t.Fatalf("invalid element JSON kept: %q", raw)
			}
		}
	})
}
