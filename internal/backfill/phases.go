package backfill

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// A sweep lists every account's customers twice when the source tells a
// customer's balance in its list (Stripe does): first it reads only the
// customers whose balance is non-zero, so that analysts' balances are
// right early, then every customer the first phase did not read. Each
// phase goes round-robin over the accounts, a page of customers each in
// turn, so that one huge account does not hold the others back.
type phase int

const (
	phaseBalances phase = 1 // customers whose balance is non-zero
	phaseRest     phase = 2 // every customer the sweep has not read
)

// Run cursors (backfill_runs.customer_cursor) name their phase:
// "balances:<id>" while the first lists, "rest:<id>" after it; a bare id
// (Orb's, or a run of an earlier syncd) is the second phase's.
const (
	balancesPrefix = "balances:"
	restPrefix     = "rest:"
)

func parseCursor(s string) (phase, string) {
	if id, ok := strings.CutPrefix(s, balancesPrefix); ok {
		return phaseBalances, id
	}
	if id, ok := strings.CutPrefix(s, restPrefix); ok {
		return phaseRest, id
	}
	if s == "" {
		return phaseBalances, ""
	}
	return phaseRest, s
}

func formatCursor(p phase, id string) string {
	if p == phaseBalances {
		return balancesPrefix + id
	}
	return restPrefix + id
}

// balanceLister is a source whose customer list tells each customer's
// balance.
type balanceLister interface {
	// CustomerBalancePage is CustomerPage, telling for each customer
	// whether its balance is non-zero.
	CustomerBalancePage(ctx context.Context, account, cursor string) (ids []string, nonzero []bool, next string, err error)
	// forget drops what the listing remembered of a customer that will
	// not be read.
	forget(account, customer string)
}

// CustomerBalancePage implements balanceLister.
func (s *StripeSource) CustomerBalancePage(ctx context.Context, account, cursor string) ([]string, []bool, string, error) {
	p, err := s.ListCustomers(ctx, account, cursor)
	if err != nil {
		return nil, nil, "", err
	}
	ids := make([]string, 0, len(p.Items))
	nonzero := make([]bool, 0, len(p.Items))
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, it := range p.Items {
		var c struct {
			listed
			Balance int64 `json:"balance"`
		}
		if err := json.Unmarshal(it, &c); err != nil || c.ID == "" {
			return nil, nil, "", fmt.Errorf("list customers of %s: an item has no id", accountName(account))
		}
		ids = append(ids, c.ID)
		nonzero = append(nonzero, c.Balance != 0)
		if c.Created > 0 {
			s.created[[2]string{account, c.ID}] = c.Created
		}
	}
	next := ""
	if p.HasMore && len(ids) > 0 {
		next = ids[len(ids)-1]
	}
	return ids, nonzero, next, nil
}

func (s *StripeSource) forget(account, customer string) {
	s.mu.Lock()
	delete(s.created, [2]string{account, customer})
	s.mu.Unlock()
}

// listPage lists one page of st's customers in phase ph and sends the
// customers to read. It reports whether the account has more pages.
func (r *runner) listPage(st *acctState, ph phase, send func(job) bool) (more bool, err error) {
	bl, _ := r.src.(balanceLister)
	var (
		ids     []string
		nonzero []bool
		next    string
	)
	for {
		if bl != nil {
			ids, nonzero, next, err = bl.CustomerBalancePage(r.ctx, st.id, st.listCursor)
		} else {
			ids, next, err = r.src.CustomerPage(r.ctx, st.id, st.listCursor)
		}
		if err != nil && st.listCursor != "" && st.listCursor == st.resumeCursor && r.ctx.Err() == nil {
			// The checkpointed customer may be gone: list from the
			// start; done customers are skipped anyway.
			r.o.Logger.Warn("cannot resume the customer listing at the checkpoint; listing from the start",
				zap.String("account", st.id), zap.Error(err))
			st.listCursor, st.resumeCursor = "", ""
			continue
		}
		break
	}
	if err != nil {
		if r.ctx.Err() != nil {
			return false, nil
		}
		return false, fmt.Errorf("list customers of %s: %w", accountName(st.id), err)
	}
	st.listCursor = next
	pg := &pageState{}
	switch {
	case next == "" && ph == phaseBalances:
		pg.cursor = formatCursor(phaseRest, "")
	case len(ids) > 0:
		pg.cursor = formatCursor(ph, ids[len(ids)-1])
	}
	// The customers to read: in the first phase those with a balance;
	// never one on its way through this run, nor one it has finished.
	read := make([]string, 0, len(ids))
	st.mu.Lock()
	for i, c := range ids {
		if (ph == phaseBalances && !nonzero[i]) || st.inflight[c] {
			continue
		}
		read = append(read, c)
	}
	st.mu.Unlock()
	if len(read) > 0 && (st.resumed || ph == phaseRest) {
		if read, err = r.notDone(st, read); err != nil {
			return false, err
		}
	}
	if bl != nil && len(read) < len(ids) {
		keep := map[string]bool{}
		for _, c := range read {
			keep[c] = true
		}
		for _, c := range ids {
			if !keep[c] {
				bl.forget(st.id, c)
			}
		}
	}
	var since map[string]string
	if !r.o.Full && !st.run.Full && len(read) > 0 {
		if since, err = cursors(r.ctx, r.o.Conn, r.src.Provider(), st.id, read); err != nil {
			return false, err
		}
	}
	st.mu.Lock()
	st.pages = append(st.pages, pg)
	pg.pending = len(read)
	for _, c := range read {
		st.inflight[c] = true
	}
	st.mu.Unlock()
	r.total.Add(int64(len(read)))
	if ph == phaseBalances {
		r.phaseMu.Lock()
		r.balancesPending += len(read)
		r.phaseMu.Unlock()
	}
	for _, c := range read {
		if !send(job{acct: st, customer: c, since: since[c], page: pg, phase: ph}) {
			return false, nil
		}
	}
	st.mu.Lock()
	pg.complete = true
	st.mu.Unlock()
	r.advance(st)
	return next != "", nil
}

// notDone returns the customers of cs that st's run has not finished.
func (r *runner) notDone(st *acctState, cs []string) ([]string, error) {
	rows, err := r.o.Conn.Query(r.ctx, `SELECT DISTINCT customer FROM backfill_customers
		WHERE provider = ? AND account_id = ? AND run_id = ? AND customer IN (`+sqlStrings(cs)+`)`,
		st.run.Provider, st.run.Account, st.run.ID)
	if err != nil {
		return nil, fmt.Errorf("read backfill_customers: %w", err)
	}
	defer rows.Close()
	done := map[string]bool{}
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			return nil, fmt.Errorf("read backfill_customers: %w", err)
		}
		done[c] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read backfill_customers: %w", err)
	}
	out := cs[:0]
	for _, c := range cs {
		if !done[c] {
			out = append(out, c)
		}
	}
	return out, nil
}

// sweep lists every account's customers, phase by phase, and sends the
// customers to read. The accounts take turns, a page each, on a few
// listers at once: listing one page after another would starve the
// workers in the first phase, where a page may hold few customers to read.
func (r *runner) sweep(states []*acctState, send func(job) bool) error {
	_, twoPhases := r.src.(balanceLister)
	for _, ph := range []phase{phaseBalances, phaseRest} {
		if ph == phaseBalances && !twoPhases {
			continue
		}
		var active []*acctState
		for _, st := range states {
			if st.phase > ph {
				continue
			}
			if st.phase < ph {
				st.phase, st.listCursor = ph, ""
			}
			active = append(active, st)
		}
		if err := r.roundRobin(active, ph, send); err != nil || r.ctx.Err() != nil {
			return err
		}
		if ph == phaseBalances {
			r.phaseMu.Lock()
			r.balancesListed = true
			r.phaseMu.Unlock()
			r.balancesRead(0)
		}
	}
	return nil
}

// roundRobin lists the accounts' pages in phase ph, each account's in
// order, the accounts in turn, listers at once.
func (r *runner) roundRobin(accounts []*acctState, ph phase, send func(job) bool) error {
	if len(accounts) == 0 {
		return nil
	}
	turns := make(chan *acctState, len(accounts))
	for _, st := range accounts {
		turns <- st
	}
	var (
		mu       sync.Mutex
		left     = len(accounts)
		firstErr error
		wg       sync.WaitGroup
	)
	stop := make(chan struct{})
	end := func(err error) { // once every account is listed, or on the first error
		if err != nil && firstErr == nil {
			firstErr = err
		}
		select {
		case <-stop:
		default:
			close(stop)
		}
	}
	for range min(len(accounts), listers(r.o.Concurrency)) {
		wg.Go(func() {
			for {
				var st *acctState
				select {
				case st = <-turns:
				case <-stop:
					return
				}
				more, err := r.listPage(st, ph, send)
				mu.Lock()
				switch {
				case err != nil || r.ctx.Err() != nil:
					end(err)
				case more:
					turns <- st // room: each account is in turns at most once
				default:
					if left--; left == 0 {
						end(nil)
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return firstErr
}

// listers is how many accounts list at once for concurrency workers.
func listers(concurrency int) int { return min(16, max(1, concurrency/4)) }

// sinceFrom is where a --since catch-up reads events from: since, on the
// hour before it (within the Events API's window), so that a rerun within
// the hour asks for the same window, and so is the same run: a superset
// of the changes since since.
func sinceFrom(since time.Time) time.Time {
	if from := since.Truncate(time.Hour); time.Since(from) <= EventsWindow {
		return from
	}
	return since
}

// sinceRunID names the runs of --since catch-ups from from in
// backfill_customers, where they checkpoint their customers: each run's
// id is it and when the run began.
func sinceRunID(from time.Time) string { return "since-" + from.UTC().Format("20060102T150405Z") }

// sinceRun returns the unfinished catch-up of account named prefix to
// resume (resumed), or a new run's id. A finished one has the row of the
// customer "" (written when it ended), and is never resumed.
func (r *runner) sinceRun(account, prefix string) (id string, resumed bool, err error) {
	rows, err := r.o.Conn.Query(r.ctx, `SELECT run_id FROM backfill_customers
		WHERE provider = ? AND account_id = ? AND run_id LIKE ?
		GROUP BY run_id HAVING countIf(customer = '') = 0 ORDER BY max(done_at) DESC LIMIT 1`,
		r.src.Provider(), account, prefix+"/%")
	if err != nil {
		return "", false, fmt.Errorf("read backfill_customers: %w", err)
	}
	defer rows.Close()
	if rows.Next() {
		if err := rows.Scan(&id); err != nil {
			return "", false, fmt.Errorf("read backfill_customers: %w", err)
		}
		r.o.Logger.Info("resuming an interrupted --since catch-up", zap.String("account", account), zap.String("run", id))
		return id, true, nil
	}
	if err := rows.Err(); err != nil {
		return "", false, fmt.Errorf("read backfill_customers: %w", err)
	}
	return prefix + "/" + r.start.UTC().Format("20060102T150405.000Z"), false, nil
}

// balancesRead counts n customers of the first phase checkpointed, and
// says so once every one of them is.
func (r *runner) balancesRead(n int) {
	r.phaseMu.Lock()
	r.balancesPending -= n
	r.balancesDone += n
	end := r.balancesListed && r.balancesPending == 0 && !r.balancesEnded
	if end {
		r.balancesEnded = true
	}
	done := r.balancesDone
	r.phaseMu.Unlock()
	if !end {
		return
	}
	took := time.Since(r.start)
	r.o.Metrics.BackfillBalances.WithLabelValues(r.src.Provider()).Set(took.Seconds())
	r.o.Logger.Info("every customer with a non-zero balance is read; reading the rest",
		zap.String("provider", r.src.Provider()), zap.Int("customers", done), zap.Duration("took", took))
	r.notef("customers with a non-zero balance: all %d read in %s; reading the rest\n", done, took.Round(time.Millisecond))
}
