package fleet

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/chtest"
	"github.com/syncd/syncd/internal/sink"
)

func TestMain(m *testing.M) { chtest.Main(m) }

func newMember(t *testing.T, dsn, id string) *Member {
	t.Helper()
	conn, err := sink.Open(context.Background(), dsn, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return New(Options{Conn: conn, ID: id, Role: RoleServe, Pool: "stripe", Heartbeat: 200 * time.Millisecond, TTL: 2 * time.Second})
}

func waitLive(t *testing.T, m *Member, want ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Equal(m.Live(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("%s sees %v, want %v", m.ID(), m.Live(), want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Members see each other join, leave cleanly at once, and drop one that
// stopped beating (a SIGKILL) after the TTL; keys are owned by exactly one
// live member, and only a gone member's keys move.
func TestMembersJoinLeaveAndDie(t *testing.T) {
	dsn := chtest.DSN(t)
	ctx := context.Background()
	conn, err := sink.Open(ctx, dsn, false)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := sink.Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}
	a, b, c := newMember(t, dsn, "a"), newMember(t, dsn, "b"), newMember(t, dsn, "c")
	run := func(m *Member) context.CancelFunc {
		if err := m.Join(ctx); err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { m.Run(rctx); close(done) }()
		return func() { cancel(); <-done }
	}
	stopA := run(a)
	defer stopA()
	stopB := run(b)
	// c joins but never runs: it beats once, like a process killed at once.
	if err := c.Join(ctx); err != nil {
		t.Fatal(err)
	}
	waitLive(t, a, "a", "b", "c")
	waitLive(t, b, "a", "b", "c")

	keys := make([]string, 300)
	for i := range keys {
		keys[i] = fmt.Sprintf("acct_%d/cus_%d", i%7, i)
	}
	owners := func() map[string]string {
		out := map[string]string{}
		for _, k := range keys {
			n := 0
			for _, m := range []*Member{a, b} {
				if m.Owns(k) {
					out[k] = m.ID()
					n++
				}
			}
			if o := Owner([]string{"a", "b", "c"}, k); n == 0 && o != "c" && slices.Equal(a.Live(), []string{"a", "b", "c"}) {
				t.Fatalf("%s owned by nobody", k)
			}
			if n > 1 {
				t.Fatalf("%s owned by both a and b", k)
			}
		}
		return out
	}
	before := owners()
	counts := map[string]int{}
	for _, k := range keys {
		counts[Owner([]string{"a", "b", "c"}, k)]++
	}
	for _, id := range []string{"a", "b", "c"} {
		if counts[id] < 60 {
			t.Errorf("member %s owns %d of %d keys: rendezvous hashing is lopsided", id, counts[id], len(keys))
		}
	}

	// c stopped beating: dropped after the TTL; only its keys move.
	waitLive(t, a, "a", "b")
	waitLive(t, b, "a", "b")
	after := owners()
	for _, k := range keys {
		if o := before[k]; o != "" && after[k] != o {
			t.Errorf("%s moved from %s to %s though %s is alive", k, o, after[k], o)
		}
		if after[k] == "" {
			t.Errorf("%s owned by nobody after c died", k)
		}
	}

	// b leaves cleanly: a owns everything at its next read.
	stopB()
	waitLive(t, a, "a")
	for _, k := range keys {
		if !a.Owns(k) {
			t.Fatalf("a alone does not own %s", k)
		}
	}
}
