// Package fleet tells a syncd process which others share its database: each
// writes a heartbeat to ClickHouse and reads the live set, so the source
// APIs' budget and the work found in the intake log can be split by it.
package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"math"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"go.uber.org/zap"
)

// Defaults.
const (
	DefaultHeartbeat = 2 * time.Second
	DefaultTTL       = 10 * time.Second
)

// Options configure a Member.
type Options struct {
	Conn driver.Conn // required
	// ID names this process; empty: hostname, pid and a random suffix, so a
	// restarted pod is a new member.
	ID string
	// Role is "serve" or "backfill". Every member of a pool gets the same
	// share of its budget, except while a serve member has a backlog
	// (Share); only serve members own keys (they refresh).
	Role string
	// Pool is the budget the member spends: "stripe" or "orb".
	Pool string
	// Heartbeat is how often the heartbeat is written and the live set
	// read [2s]; TTL is how long a member without a heartbeat counts as
	// alive [10s], which must exceed a few heartbeats.
	Heartbeat, TTL time.Duration
	Logger         *zap.Logger
	// OnChange, when set, is called with the new live set (sorted, this
	// member included) whenever it changes, from Run's goroutine.
	OnChange func(live []string)
	// Backlog, for a serve member, counts the customers it has owed a
	// refresh for longer than a few seconds; it is written with each
	// heartbeat. Nil: none.
	Backlog func() int
	// OnShare, when set, is called with this member's new share of the
	// pool's budget (Share) whenever it changes, from Run's goroutine.
	OnShare func(share float64)
}

// BackfillWeight is what a backfill or verify member's share weighs, a
// serve member's being 1, while some serve member of the pool has a
// backlog: webhook-triggered refreshes first, as the issue of a month-start
// invoice wave during a weekly sweep asks, yet never zero, so a steady
// stream of triggers cannot stop a backfill for good.
const BackfillWeight = 0.25

// Member is this process's place in the fleet. Until the first heartbeat
// has been read back, and whenever ClickHouse cannot be read, it keeps the
// last live set it knew (at first: itself alone).
type Member struct {
	o Options

	mu     sync.Mutex
	live   []string // the pool's live members, sorted
	owners []string // those of them whose role is serve
	share  float64  // of the pool's budget, in (0, 1]
}

// New returns the member described by o; Join and Run make it one.
func New(o Options) *Member {
	if o.ID == "" {
		o.ID = defaultID()
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = DefaultHeartbeat
	}
	if o.TTL <= 0 {
		o.TTL = DefaultTTL
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	m := &Member{o: o, live: []string{o.ID}, share: 1}
	if o.Role == RoleServe {
		m.owners = []string{o.ID}
	}
	return m
}

// Roles.
const (
	RoleServe    = "serve"
	RoleBackfill = "backfill"
)

func defaultID() string {
	host, _ := os.Hostname()
	b := make([]byte, 3)
	rand.Read(b)
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b))
}

// ID is this member's name.
func (m *Member) ID() string { return m.o.ID }

// Join writes the first heartbeat and reads the live set; when others are
// alive it then waits two heartbeats more, so that every one of them has
// read this one before the caller spends a share of the budget computed
// without it.
func (m *Member) Join(ctx context.Context) error {
	if err := m.beat(ctx, false); err != nil {
		return err
	}
	if err := m.poll(ctx); err != nil {
		return err
	}
	if m.Size() == 1 {
		return nil
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(2 * m.o.Heartbeat):
	}
	return m.poll(ctx)
}

// Run beats and reads the live set every Heartbeat until ctx ends, then
// writes that this member is gone, so the others take its share at once.
func (m *Member) Run(ctx context.Context) {
	t := time.NewTicker(m.o.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			leave, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			if err := m.beat(leave, true); err != nil {
				m.o.Logger.Warn("could not record leaving the fleet; the others notice after the heartbeat TTL",
					zap.Duration("ttl", m.o.TTL), zap.Error(err))
			}
			cancel()
			return
		case <-t.C:
			err := m.beat(ctx, false)
			if err == nil {
				err = m.poll(ctx)
			}
			if err != nil && ctx.Err() == nil {
				m.o.Logger.Debug("fleet heartbeat failed; keeping the last live set", zap.Error(err))
			}
		}
	}
}

// beat records a heartbeat, by ClickHouse's clock so members' clocks need
// not agree.
func (m *Member) beat(ctx context.Context, gone bool) error {
	g := 0
	if gone {
		g = 1
	}
	backlog := 0
	if m.o.Backlog != nil && !gone {
		backlog = min(max(m.o.Backlog(), 0), math.MaxUint32)
	}
	err := m.o.Conn.Exec(ctx, fmt.Sprintf(
		"INSERT INTO syncd_members (member, role, pool, heartbeat, gone, backlog, _version) SELECT %s, %s, %s, now(), %d, %d, %d",
		quote(m.o.ID), quote(m.o.Role), quote(m.o.Pool), g, backlog, time.Now().UnixNano()))
	if err != nil {
		return fmt.Errorf("fleet heartbeat: %w", err)
	}
	return nil
}

// poll reads the live set and reports a change.
func (m *Member) poll(ctx context.Context) error {
	rows, err := m.o.Conn.Query(ctx, fmt.Sprintf(
		"SELECT member, role, backlog FROM syncd_members FINAL WHERE gone = 0 AND heartbeat >= now() - %d AND pool = %s ORDER BY member",
		int64(m.o.TTL/time.Second), quote(m.o.Pool)))
	if err != nil {
		return fmt.Errorf("fleet members: %w", err)
	}
	defer rows.Close()
	var (
		live, owners []string
		backlogged   bool
	)
	for rows.Next() {
		var (
			id, role string
			backlog  uint32
		)
		if err := rows.Scan(&id, &role, &backlog); err != nil {
			return fmt.Errorf("fleet members: %w", err)
		}
		live = append(live, id)
		if role == RoleServe {
			owners = append(owners, id)
			backlogged = backlogged || backlog > 0
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("fleet members: %w", err)
	}
	if !slices.Contains(live, m.o.ID) { // our heartbeat is not visible yet
		live = append(live, m.o.ID)
		slices.Sort(live)
		if m.o.Role == RoleServe {
			owners = append(owners, m.o.ID)
			slices.Sort(owners)
		}
	}
	share := shareOf(m.o.Role, len(live), len(owners), backlogged)
	m.mu.Lock()
	changed, reshared := !slices.Equal(live, m.live), share != m.share
	m.live, m.owners, m.share = live, owners, share
	m.mu.Unlock()
	if changed {
		m.o.Logger.Info("fleet changed", zap.Strings("live", live))
		if m.o.OnChange != nil {
			m.o.OnChange(slices.Clone(live))
		}
	}
	if reshared {
		m.o.Logger.Info("fleet budget share changed", zap.Float64("share", share), zap.Bool("refreshes_backlogged", backlogged))
		if m.o.OnShare != nil {
			m.o.OnShare(share)
		}
	}
	return nil
}

// shareOf is the share of the pool's budget of a member of role, among
// live members of which serve are serve members: equal shares, but while a
// serve member has a backlog the others weigh BackfillWeight each.
func shareOf(role string, live, serve int, backlogged bool) float64 {
	if live <= 0 {
		return 1
	}
	if !backlogged || serve == live {
		return 1 / float64(live)
	}
	total := float64(serve) + BackfillWeight*float64(live-serve)
	if role == RoleServe {
		return 1 / total
	}
	return BackfillWeight / total
}

// Share is this member's share of the pool's budget, in (0, 1]: 1/Size()
// while no serve member has a backlog.
func (m *Member) Share() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.share
}

// Size is the number of live members of the pool, this one included: the
// number of shares its budget is split into.
func (m *Member) Size() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.live)
}

// Live is the live set, sorted.
func (m *Member) Live() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.live)
}

// Owns reports whether key belongs to this member: of the live serve
// members, the one with the highest hash of (member, key) owns it
// (rendezvous hashing), so a member's death or arrival moves only its own
// keys.
func (m *Member) Owns(key string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return Owner(m.owners, key) == m.o.ID
}

// Owner is the member of live that owns key.
func Owner(live []string, key string) string {
	var best string
	var top uint64
	for _, id := range live {
		h := fnv.New64a()
		h.Write([]byte(id))
		h.Write([]byte{0})
		h.Write([]byte(key))
		if s := h.Sum64(); best == "" || s > top {
			best, top = id, s
		}
	}
	return best
}

// quote renders s as a ClickHouse string literal.
func quote(s string) string {
	out := make([]byte, 0, len(s)+2)
	out = append(out, '\'')
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' || s[i] == '\\' {
			out = append(out, '\\')
		}
		out = append(out, s[i])
	}
	return string(append(out, '\''))
}
