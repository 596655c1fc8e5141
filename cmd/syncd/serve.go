package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"go.uber.org/zap"

	"github.com/syncd/syncd/internal/backfill"
	"github.com/syncd/syncd/internal/config"
	"github.com/syncd/syncd/internal/fleet"
	"github.com/syncd/syncd/internal/metrics"
	"github.com/syncd/syncd/internal/row"
	"github.com/syncd/syncd/internal/sink"
	"github.com/syncd/syncd/internal/webhook"
)

// intake is what the Stripe route tells about durable trigger events.
type intake interface {
	webhook.Dirtier
	webhook.RelatedResolver
}

// webhookRoutes is the public listener's route table.
func webhookRoutes(cfg *config.Config, common webhook.Common, dirty intake) http.Handler {
	mux := http.NewServeMux()
	if len(cfg.StripeWebhookSecrets) > 0 {
		mux.Handle("/webhooks/stripe", webhook.Stripe(webhook.StripeOptions{
			Common:       common,
			Secrets:      cfg.StripeWebhookSecrets,
			Tolerance:    cfg.WebhookTolerance,
			TriggerTypes: backfill.TriggerTypes,
			Dirty:        dirty,
			Related:      dirty,
		}))
	}
	if len(cfg.OrbWebhookSecrets) > 0 {
		mux.Handle("/webhooks/orb", webhook.Orb(webhook.OrbOptions{
			Common:    common,
			Secrets:   cfg.OrbWebhookSecrets,
			Tolerance: cfg.WebhookTolerance,
		}))
	}
	return mux
}

// adminRoutes is the admin listener's route table; pprof is served here
// only, and only with --pprof: /debug/pprof/cmdline shows the command line,
// secrets given as flags included.
func adminRoutes(m *metrics.Metrics, ready *readiness, withPprof bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("GET /readyz", ready)
	mux.Handle("GET /metrics", m.Handler())
	if withPprof {
		p := http.NewServeMux()
		p.HandleFunc("/debug/pprof/", pprof.Index)
		p.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		p.HandleFunc("/debug/pprof/profile", pprof.Profile)
		p.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		p.HandleFunc("/debug/pprof/trace", pprof.Trace)
		mux.Handle("/debug/pprof/", boundProfiles(p))
	}
	return mux
}

// maxProfile is the longest CPU profile, trace or delta profile the admin
// port takes (?seconds=).
const maxProfile = time.Minute

// boundProfiles answers 400 to a profile asked for longer than maxProfile.
// The server's WriteTimeout does not bound one: net/http/pprof extends the
// connection's write deadline by the seconds asked for.
func boundProfiles(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/debug/pprof/symbol" { // its POST body is not a form
			if v := r.FormValue("seconds"); v != "" {
				if sec, err := strconv.ParseFloat(v, 64); err == nil && !(sec <= maxProfile.Seconds()) {
					http.Error(w, fmt.Sprintf("seconds=%s: at most %.0f on this server", v, maxProfile.Seconds()), http.StatusBadRequest)
					return
				}
			}
		}
		h.ServeHTTP(w, r)
	})
}

// adminServer serves the admin routes. WriteTimeout bounds every answer;
// net/http/pprof adds a profile's seconds (at most maxProfile) to it.
func adminServer(cfg *config.Config, m *metrics.Metrics, ready *readiness, log *zap.Logger) *http.Server {
	return &http.Server{
		Handler:           adminRoutes(m, ready, cfg.Pprof),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          zap.NewStdLog(log.Named("admin")),
	}
}

// runServe receives webhooks until ctx ends, then drains: it stops
// accepting, lets in-flight requests finish, stops the refresher and
// flushes the sink, all within --shutdown-timeout.
func runServe(ctx context.Context, cfg *config.Config, log *zap.Logger, e env) error {
	m := metrics.New()
	stripeOn, orbOn := len(cfg.StripeWebhookSecrets) > 0, len(cfg.OrbWebhookSecrets) > 0
	log.Info("sources",
		zap.Bool("stripe_webhooks", stripeOn), zap.Int("stripe_webhook_secrets", len(cfg.StripeWebhookSecrets)),
		zap.Bool("stripe_refresh", stripeOn), zap.String("stripe_api_url", cfg.StripeAPIURL),
		zap.Bool("orb_webhooks", orbOn), zap.Int("orb_webhook_secrets", len(cfg.OrbWebhookSecrets)))
	if !stripeOn {
		log.Warn("no --stripe-webhook-secret: POST /webhooks/stripe is not served")
	}
	if !orbOn {
		log.Info("no --orb-webhook-secret: POST /webhooks/orb is not served")
	}

	webLn, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	adminLn, err := net.Listen("tcp", cfg.AdminListen)
	if err != nil {
		webLn.Close()
		return fmt.Errorf("--admin-listen: %w", err)
	}

	var (
		store = &store{scope: newRefreshScope(cfg), m: m, log: log.Named("refresh")}
		ready = &readiness{store: store}
	)
	common := webhook.Common{Sink: store, Background: background{store}, Metrics: m, Logger: log.Named("webhook"),
		Bodies: webhook.NewBudget(cfg.WebhookBodyBytes)}
	web := &http.Server{
		Handler:           webhookRoutes(cfg, common, store),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// Providers send a few headers; net/http's default (1 MiB) would
		// let each connection hold a megabyte before any budget applies.
		MaxHeaderBytes: maxHeaderBytes,
		ErrorLog:       zap.NewStdLog(log.Named("http")),
	}
	admin := adminServer(cfg, m, ready, log)
	serveErr := make(chan error, 2)
	go func() { serveErr <- web.Serve(webLn) }()
	go func() { serveErr <- admin.Serve(adminLn) }()
	log.Info("serving", zap.String("listen", webLn.Addr().String()), zap.String("admin_listen", adminLn.Addr().String()),
		zap.Bool("pprof", cfg.Pprof))

	// ClickHouse may be down at start: keep trying rather than crash, and
	// answer 503 (readiness false) meanwhile.
	var (
		refresherDone = make(chan struct{})
		stopRefresher context.CancelFunc
	)
	close(refresherDone)
	connected, connectDone := make(chan struct{}), make(chan struct{})
	var made *backend // set before connectDone closes: what the drain closes
	go func() {
		defer close(connectDone)
		conn, err := connect(ctx, cfg.ClickHouseDSN, clusterOf(cfg), log)
		if err != nil {
			return // ctx ended
		}
		sk := sink.New(conn, sink.Options{
			BatchRows: cfg.BatchRows, FlushInterval: cfg.FlushInterval, QueueRows: cfg.QueueRows, QueueBytes: cfg.QueueBytes,
			Metrics: m, Logger: log.Named("sink"),
		})
		// Transaction rows of object events, which the 200 does not wait
		// for, go through a sink of their own that lingers: fewer, larger
		// inserts into the wide transaction tables leave ClickHouse to the
		// intake-log inserts the requests wait for.
		bg := sink.New(conn, sink.Options{
			BatchRows: cfg.BatchRows, FlushInterval: max(cfg.FlushInterval, backgroundLinger), QueueRows: cfg.QueueRows,
			QueueBytes: cfg.QueueBytes, Metrics: m, Logger: log.Named("sink"),
		})
		b := &backend{conn: conn, sink: sk, background: bg}
		if stripeOn {
			src := stripeSource(cfg, m, log.Named("stripe"))
			// The processes sharing this database split the API budget and
			// the customers between them (internal/fleet).
			var refresher *backfill.Refresher
			b.member = fleet.New(fleet.Options{Conn: conn, Role: fleet.RoleServe, Pool: config.Stripe, Logger: log.Named("fleet"),
				OnChange: func(live []string) {
					m.FleetMembers.Set(float64(len(live)))
					refresher.Rebalance()
				},
				OnShare: src.SetShare,
				Backlog: func() int { return refresher.Backlog() },
			})
			m.FleetMembers.Set(1)
			refresher = backfill.NewRefresher(backfill.RefresherOptions{
				Source: src, Sink: sk, Conn: conn, Metrics: m, Logger: log.Named("refresh"), Workers: cfg.RefreshWorkers,
				Owner: scopedOwner{scope: store.scope, owner: b.member},
			})
			b.refresher = refresher
		}
		made = b
		// Transaction rows of acknowledged object events that a crash lost
		// are made again from the intake log before any webhook is taken:
		// until then the routes answer 503 and /readyz is false.
		store.recovering.Store(true)
		if err := recoverTxnRows(ctx, conn, bg, log.Named("recover")); err != nil {
			return // ctx ended
		}
		store.recovering.Store(false)
		store.b.Store(b)
		close(connected)
	}()

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-serveErr:
		runErr = fmt.Errorf("http server: %w", runErr)
	case <-connected:
		b := store.b.Load()
		var rctx context.Context
		rctx, stopRefresher = context.WithCancel(context.WithoutCancel(ctx))
		refresherDone = make(chan struct{})
		var workers sync.WaitGroup
		// Transaction rows that another process acknowledged and lost
		// (it died, or could not drain) are found and written again by
		// whichever processes are alive.
		workers.Go(func() {
			webhook.KeepRecovering(rctx, webhook.RecoverOptions{Conn: b.conn, Sink: b.background, Logger: log.Named("recover")},
				recoverEvery, m)
		})
		if b.refresher != nil {
			workers.Go(func() {
				// Joining waits until the other processes have seen this
				// one, so its first requests are within its share.
				if err := b.member.Join(rctx); err != nil && rctx.Err() == nil {
					log.Warn("could not join the fleet yet; refreshing as if alone until a heartbeat succeeds", zap.Error(err))
				}
				// The member leaves once the refresher has stopped, in-flight
				// refreshes included: until then its share is still spent.
				mctx, leave := context.WithCancel(context.WithoutCancel(rctx))
				var fleetDone sync.WaitGroup
				fleetDone.Go(func() { b.member.Run(mctx) })
				if err := b.refresher.Run(rctx); err != nil {
					log.Error("refresher stopped", zap.Error(err))
				}
				leave()
				fleetDone.Wait()
			})
		}
		go func() { workers.Wait(); close(refresherDone) }()
		select {
		case <-ctx.Done():
		case runErr = <-serveErr:
			runErr = fmt.Errorf("http server: %w", runErr)
		}
	}

	// Drain, in the order that loses nothing: no new requests, in-flight
	// requests answered, refreshes finished, rows flushed.
	log.Info("draining", zap.Duration("within", cfg.ShutdownTimeout))
	ready.draining.Store(true)
	drain, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	if err := web.Shutdown(drain); err != nil {
		runErr = errors.Join(runErr, fmt.Errorf("stop webhook listener: %w", err))
	}
	if stopRefresher != nil {
		stopRefresher()
	}
	select {
	case <-refresherDone:
	case <-drain.Done():
		runErr = errors.Join(runErr, errors.New("refresher did not stop within --shutdown-timeout"))
	}
	<-connectDone
	if b := made; b != nil {
		for _, sk := range []*sink.Sink{b.sink, b.background} {
			if err := sk.Close(drain); err != nil {
				runErr = errors.Join(runErr, err)
			}
		}
		b.conn.Close()
	}
	_ = admin.Shutdown(drain)
	if runErr != nil {
		return runErr
	}
	log.Info("drained; bye")
	return nil
}

// connect opens ClickHouse, retrying with backoff until it answers or ctx
// ends.
func connect(ctx context.Context, dsn string, cl sink.Cluster, log *zap.Logger) (driver.Conn, error) {
	wait := 500 * time.Millisecond
	for attempt := 1; ; attempt++ {
		conn, err := sink.OpenCluster(ctx, dsn, cl, false)
		if err == nil {
			if attempt > 1 {
				log.Info("clickhouse reachable", zap.Int("attempts", attempt))
			}
			return conn, nil
		}
		log.Warn("clickhouse unreachable; retrying", zap.Int("attempt", attempt), zap.Duration("retry_in", wait), zap.Error(err))
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 10*time.Second)
	}
}

// recoverTxnRows runs webhook.Recover until it succeeds or ctx ends,
// retrying while ClickHouse fails (or its schema is not there yet).
func recoverTxnRows(ctx context.Context, conn driver.Conn, sk *sink.Sink, log *zap.Logger) error {
	wait := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		_, err := webhook.Recover(ctx, webhook.RecoverOptions{Conn: conn, Sink: sk, Logger: log})
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.Warn("cannot replay transaction rows from the intake log yet; webhooks wait",
			zap.Int("attempt", attempt), zap.Duration("retry_in", wait), zap.Error(err))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// maxHeaderBytes bounds the request headers of the webhook listener.
const maxHeaderBytes = 64 << 10

// backgroundLinger is how long the background sink lets transaction rows
// of object events gather before an insert (at least; --flush-interval
// when longer). It bounds how far those rows trail their 200 when idle.
const backgroundLinger = 200 * time.Millisecond

// recoverEvery is how often every serve process looks in the intake log
// for acknowledged object events whose transaction rows are missing: with
// the look's 20 s settle time, a row a dead process lost is back within
// about 35 s.
const recoverEvery = 15 * time.Second

// backend is what exists once ClickHouse has been reached.
type backend struct {
	conn       driver.Conn
	sink       *sink.Sink
	background *sink.Sink          // rows derived from acknowledged events
	refresher  *backfill.Refresher // nil when Stripe is off
	member     *fleet.Member       // with the refresher
}

// store stands in for the sink and the refresher until ClickHouse has been
// reached and lost transaction rows recovered: until then every write is
// refused, so webhooks answer 503. It hands the refresher only the trigger
// events of the accounts in scope.
type store struct {
	b          atomic.Pointer[backend]
	recovering atomic.Bool

	scope  refreshScope
	m      *metrics.Metrics
	log    *zap.Logger
	warned sync.Map // accounts out of scope already logged at warn level
}

// refreshScope is the accounts whose trigger events serve refreshes:
// --stripe-accounts, read as backfill reads it — every account with all,
// the listed acct_… ids, or else the key's own account ("") only.
type refreshScope struct {
	all      bool
	accounts map[string]bool
}

func newRefreshScope(cfg *config.Config) refreshScope {
	if cfg.StripeAllAccounts {
		return refreshScope{all: true}
	}
	sc := refreshScope{accounts: map[string]bool{}}
	for _, a := range cfg.StripeAccounts {
		sc.accounts[a] = true
	}
	if len(sc.accounts) == 0 {
		sc.accounts[""] = true
	}
	return sc
}

func (sc refreshScope) includes(account string) bool { return sc.all || sc.accounts[account] }

// scopedOwner is owner restricted to the accounts in scope. The refresher
// also finds work in the intake log, which holds every stored event: what
// --stripe-accounts leaves out is not this process's, nor any other's.
type scopedOwner struct {
	scope refreshScope
	owner backfill.Owner
}

// Owns takes the account from the key, "account/…" ("" for the key's own).
func (o scopedOwner) Owns(key string) bool {
	account, _, _ := strings.Cut(key, "/")
	return o.scope.includes(account) && o.owner.Owns(key)
}

// inScope says whether the trigger event eventID of account is refreshed;
// one that is not stays stored, and is counted and logged.
func (s *store) inScope(account, eventID string) bool {
	if s.scope.includes(account) {
		return true
	}
	s.m.RefreshSkipped.Inc()
	fields := []zap.Field{zap.String("account", account), zap.String("event", eventID)}
	if _, seen := s.warned.LoadOrStore(account, true); !seen {
		s.log.Warn("trigger events of an account outside --stripe-accounts are stored, not refreshed", fields...)
	} else {
		s.log.Debug("trigger event stored, not refreshed: account outside --stripe-accounts", fields...)
	}
	return false
}

var (
	errNotConnected = errors.New("clickhouse not reached yet")
	errRecovering   = errors.New("replaying transaction rows from the intake log")
)

// notServing says why b is not there yet.
func (s *store) notServing() error {
	if s.recovering.Load() {
		return errRecovering
	}
	return errNotConnected
}

func (s *store) TryWrite(t sink.Table, rows ...[]any) (*sink.Ack, error) {
	b := s.b.Load()
	if b == nil {
		return nil, s.notServing()
	}
	return b.sink.TryWrite(t, rows...)
}

// background is the store's writer of derived rows.
type background struct{ s *store }

func (bg background) TryWrite(t sink.Table, rows ...[]any) (*sink.Ack, error) {
	b := bg.s.b.Load()
	if b == nil {
		return nil, bg.s.notServing()
	}
	return b.background.TryWrite(t, rows...)
}

func (s *store) MarkDirty(account, customer, eventID string) {
	// A write committed, so the backend exists.
	if b := s.b.Load(); b != nil && b.refresher != nil && s.inScope(account, eventID) {
		b.refresher.MarkDirty(account, customer, eventID)
	}
}

func (s *store) MarkRelated(ev row.StripeEvent, objectType, id string) {
	if b := s.b.Load(); b != nil && b.refresher != nil && s.inScope(ev.AccountID, ev.ID) {
		b.refresher.MarkRelated(ev, objectType, id)
	}
}

// readiness answers /readyz: 200 only while ClickHouse answers and its
// schema is current. The check is cached for a second so that probes do
// not load the server.
type readiness struct {
	store    *store
	draining atomic.Bool

	mu      sync.Mutex
	checked time.Time
	err     error
}

const readyCacheFor = time.Second

func (rd *readiness) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := rd.check(r.Context()); err != nil {
		http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
}

func (rd *readiness) check(ctx context.Context) error {
	if rd.draining.Load() {
		return errors.New("shutting down")
	}
	b := rd.store.b.Load()
	if b == nil {
		return rd.store.notServing()
	}
	rd.mu.Lock()
	defer rd.mu.Unlock()
	if time.Since(rd.checked) < readyCacheFor {
		return rd.err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	rd.err = b.conn.Ping(ctx)
	if rd.err == nil {
		rd.err = sink.SchemaCurrent(ctx, b.conn)
	}
	rd.checked = time.Now()
	return rd.err
}
