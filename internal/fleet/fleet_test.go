package fleet

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

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

// migrated is the test's database, migrated, and a connection to it.
func migrated(t *testing.T) (string, driver.Conn) {
	t.Helper()
	dsn := chtest.DSN(t)
	conn, err := sink.Open(context.Background(), dsn, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := sink.Migrate(context.Background(), conn); err != nil {
		t.Fatal(err)
	}
	return dsn, conn
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
	dsn, _ := migrated(t)
	ctx := context.Background()
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

// While a serve member has a backlog of refreshes, the backfill members of
// its pool spend BackfillWeight of a serve member's share (refreshes
// first); once it has caught up, every member has an equal share again.
// OnShare reports each change.
func TestBackloggedServeGetsTheLargerShare(t *testing.T) {
	_, conn := migrated(t)
	ctx := context.Background()
	// A pool of its own, so other tests' members do not count.
	pool := "share-" + t.Name()
	var backlog atomic.Int64
	var reported atomic.Value
	reported.Store(1.0)
	serve := New(Options{Conn: conn, ID: "serve", Role: RoleServe, Pool: pool, Heartbeat: 200 * time.Millisecond, TTL: 2 * time.Second,
		Backlog: func() int { return int(backlog.Load()) }})
	bf := New(Options{Conn: conn, ID: "backfill", Role: RoleBackfill, Pool: pool, Heartbeat: 200 * time.Millisecond, TTL: 2 * time.Second,
		OnShare: func(f float64) { reported.Store(f) }})
	for _, m := range []*Member{serve, bf} {
		if err := m.Join(ctx); err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { m.Run(rctx); close(done) }()
		defer func() { cancel(); <-done }()
	}
	waitShare := func(m *Member, want float64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for math.Abs(m.Share()-want) > 1e-9 {
			if time.Now().After(deadline) {
				t.Fatalf("%s has a share of %v, want %v", m.ID(), m.Share(), want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitShare(serve, 0.5)
	waitShare(bf, 0.5)

	backlog.Store(40)
	waitShare(serve, 1/(1+BackfillWeight))
	waitShare(bf, BackfillWeight/(1+BackfillWeight))
	if got := reported.Load().(float64); math.Abs(got-BackfillWeight/(1+BackfillWeight)) > 1e-9 {
		t.Errorf("OnShare last reported %v, want %v", got, BackfillWeight/(1+BackfillWeight))
	}

	backlog.Store(0)
	waitShare(serve, 0.5)
	waitShare(bf, 0.5)
}

func TestShareOf(t *testing.T) {
	for _, c := range []struct {
		role        string
		live, serve int
		backlogged  bool
		want        float64
	}{
		{RoleServe, 1, 1, true, 1},
		{RoleBackfill, 1, 0, false, 1},
		{RoleServe, 3, 3, true, 1.0 / 3},
		{RoleBackfill, 3, 2, false, 1.0 / 3},
		{RoleServe, 3, 2, true, 1 / (2 + BackfillWeight)},
		{RoleBackfill, 3, 2, true, BackfillWeight / (2 + BackfillWeight)},
		{RoleBackfill, 0, 0, false, 1},
	} {
		if got := shareOf(c.role, c.live, c.serve, c.backlogged); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("shareOf(%s, %d live, %d serve, backlogged %v) = %v, want %v", c.role, c.live, c.serve, c.backlogged, got, c.want)
		}
	}
}
