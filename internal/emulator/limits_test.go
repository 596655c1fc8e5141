package emulator

import (
	"testing"

	"github.com/syncd/syncd/internal/ratelimit"
)

// Each limit refuses with its own reason, a refused request spends no
// token, and accounts are budgets of their own.
func TestEnforcerRefusesByReason(t *testing.T) {
	e := NewEnforcer(ratelimit.Limits{Global: 5, Endpoint: 3, Concurrency: 4})
	var held []func()
	admit := func(account, endpoint, want string) {
		t.Helper()
		release, reason, _ := e.Admit(account, endpoint)
		if reason != want {
			t.Fatalf("%s %s: reason %q, want %q", account, endpoint, reason, want)
		}
		if release != nil {
			held = append(held, release)
		}
	}
	admit("", "a", "")
	admit("", "a", "")
	admit("", "a", "")
	admit("", "a", ratelimit.EndpointRate) // a's three per second are spent
	admit("", "b", "")
	admit("", "b", ratelimit.GlobalConcurrency) // four in flight
	held[0]()
	held[0]() // releasing twice frees one slot
	admit("", "b", "")
	held[1]()
	admit("", "c", ratelimit.GlobalRate) // five per second in all
	for _, r := range held {
		r()
	}
	admit("acct_2", "a", "") // another budget
	got := e.Refused()
	if got[ratelimit.EndpointRate] != 1 || got[ratelimit.GlobalConcurrency] != 1 || got[ratelimit.GlobalRate] != 1 {
		t.Errorf("refused %v", got)
	}
	e.ResetRefused()
	if len(e.Refused()) != 0 {
		t.Errorf("after reset: %v", e.Refused())
	}
	var none *Enforcer = NewEnforcer(ratelimit.Limits{})
	if release, reason, _ := none.Admit("", "a"); reason != "" || release == nil {
		t.Errorf("no limits: %q", reason)
	}
}
