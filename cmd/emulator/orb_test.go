package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/orbsig"
)

func TestOrbProvider(t *testing.T) {
	const secret = "whsec_orb_demo"
	var verified atomic.Int64
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body json.RawMessage
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil ||
			orbsig.Verify(body, r.Header, []string{secret}, 0, time.Now()) != nil {
			w.WriteHeader(400)
			return
		}
		verified.Add(1)
	}))
	defer hook.Close()
	base := start(t, "--provider", "orb", "--customers", "20", "--seed", "4",
		"--webhook-url", hook.URL, "--webhook-secret", secret)

	type summary struct{ Customers, Transactions, Events int }
	var before, after summary
	do(t, "GET", base+"/_emu/truth/summary", &before)
	if before.Customers != 20 {
		t.Fatalf("summary %+v", before)
	}
	var made []struct{ ID, Amount, Type string }
	do(t, "POST", base+"/_emu/mutate?n=5", &made)
	do(t, "GET", base+"/_emu/truth/summary", &after)
	if len(made) != 5 || after.Transactions != before.Transactions+5 || after.Events != before.Events+5 {
		t.Fatalf("after 5 mutations: %+v (before %+v), made %+v", after, before, made)
	}
	var page struct {
		Data       []struct{ ID string }
		Pagination struct {
			HasMore bool `json:"has_more"`
		} `json:"pagination_metadata"`
	}
	do(t, "GET", base+"/v1/customers?limit=5", &page)
	if len(page.Data) != 5 || !page.Pagination.HasMore {
		t.Errorf("GET /v1/customers through the command: %+v", page)
	}
	deadline := time.Now().Add(10 * time.Second)
	for verified.Load() < 5 {
		if time.Now().After(deadline) {
			t.Fatalf("%d verified webhooks for 5 mutations", verified.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
