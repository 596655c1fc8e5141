package backfill

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// snapshot is the progress of a run at one instant.
type snapshot struct {
	done, total int64 // customers; total is -1 until enumeration is over
	rows        int64
	reqPerSec   float64
	utilisation float64 // of the rate limit, 0–1; -1 without a limit
	elapsed     time.Duration
	eta         time.Duration // -1 when unknown
}

func (r *runner) snapshot(prevReq int64, prevAt time.Time) (snapshot, int64) {
	now := time.Now()
	s := snapshot{done: r.customers.Load() + r.resumed.Load(), total: -1, rows: r.rows.Load(),
		elapsed: now.Sub(r.start), utilisation: -1, eta: -1}
	if r.enumerated.Load() {
		s.total = r.total.Load()
	}
	var req int64
	if st, ok := r.src.(statser); ok {
		req, _ = st.Stats()
		if dt := now.Sub(prevAt).Seconds(); dt > 0 {
			s.reqPerSec = float64(req-prevReq) / dt
		}
		if l := st.RateLimit(); l > 0 {
			s.utilisation = s.reqPerSec / l
		}
	}
	if read := r.customers.Load(); s.total >= 0 && read > 0 {
		left := s.total - s.done
		s.eta = time.Duration(float64(s.elapsed) / float64(read) * float64(left))
	}
	return s, req
}

func (s snapshot) line() string {
	var b strings.Builder
	if s.total >= 0 {
		fmt.Fprintf(&b, "customers %d/%d", s.done, s.total)
	} else {
		fmt.Fprintf(&b, "customers %d/…", s.done)
	}
	fmt.Fprintf(&b, "  rows %d  %.1f req/s", s.rows, s.reqPerSec)
	if s.utilisation >= 0 {
		fmt.Fprintf(&b, " (%.0f%% of the rate limit)", 100*s.utilisation)
	}
	fmt.Fprintf(&b, "  elapsed %s", clock(s.elapsed))
	if s.eta >= 0 {
		fmt.Fprintf(&b, "  ETA %s", clock(s.eta))
	}
	return b.String()
}

func clock(d time.Duration) string {
	d = d.Round(time.Second)
	h, m, sec := int(d.Hours()), int(d.Minutes())%60, int(d.Seconds())%60
	if h > 0 {
		return fmt.Sprintf("%d:%02d:%02d", h, m, sec)
	}
	return fmt.Sprintf("%d:%02d", m, sec)
}

// progress reports until the returned stop is called: a live line
// rewritten in place, or a structured log line every ProgressEvery.
func (r *runner) progress() (stop func()) {
	mode := r.o.ProgressMode
	if mode == "none" || (mode == "line" && r.o.Progress == nil) {
		return func() {}
	}
	every := r.o.ProgressEvery
	if mode == "line" {
		every = 500 * time.Millisecond
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		_, prevReq := r.snapshot(0, r.start)
		prevAt := time.Now()
		width := 0
		for {
			select {
			case <-done:
				if mode == "line" && width > 0 {
					fmt.Fprintln(r.o.Progress)
				}
				return
			case <-t.C:
			}
			s, req := r.snapshot(prevReq, prevAt)
			prevReq, prevAt = req, time.Now()
			if mode == "line" {
				l := s.line()
				pad := max(0, width-len(l))
				width = len(l)
				fmt.Fprintf(r.o.Progress, "\r%s%s", l, strings.Repeat(" ", pad))
				continue
			}
			fields := []zap.Field{zap.Int64("customers_done", s.done), zap.Int64("rows", s.rows),
				zap.Float64("requests_per_second", s.reqPerSec), zap.Duration("elapsed", s.elapsed)}
			if s.total >= 0 {
				fields = append(fields, zap.Int64("customers_total", s.total))
			}
			if s.utilisation >= 0 {
				fields = append(fields, zap.Float64("rate_limit_utilisation", s.utilisation))
			}
			if s.eta >= 0 {
				fields = append(fields, zap.Duration("eta", s.eta))
			}
			r.o.Logger.Info("backfill progress", fields...)
		}
	}()
	return func() { close(done); wg.Wait() }
}
