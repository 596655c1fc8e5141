// Command emulator serves a seeded, stateful imitation of a provider's API
// (Stripe today) plus a control API under /_emu/ for demos and manual tests.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/syncd/syncd/internal/ratelimit"
	"github.com/syncd/syncd/internal/stripeemu"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "emulator:", err)
		os.Exit(1)
	}
}

// options are the flags every provider understands.
type options struct {
	listen        string
	seed          int64
	customers     int
	accounts      []string // "" is the platform account
	heavy         []int
	end           time.Time
	livemode      bool
	latency       time.Duration
	rate429       float64
	rate500       float64
	webhookURL    string
	webhookSecret string
	thinEvents    bool
	scale         stripeemu.Scale
	limitsOff     bool
	limits        ratelimit.Limits // overrides of the documented limits: 0 keeps one
	scope         ratelimit.Scope
}

// limitsFor are the limits the emulator enforces: the provider's
// documented ones (def) with the flags' overrides, or none.
func (o options) limitsFor(def ratelimit.Limits) ratelimit.Limits {
	if o.limitsOff {
		return ratelimit.Limits{}
	}
	if o.limits.Global > 0 {
		def.Global = o.limits.Global
	}
	if o.limits.Endpoint > 0 {
		def.Endpoint = o.limits.Endpoint
	}
	if o.limits.Concurrency > 0 {
		def.Concurrency = o.limits.Concurrency
	}
	return def
}

// emulator is what the command needs from a provider's emulator.
type emulator interface {
	http.Handler
	SetFaults(rate429, rate500 float64)
	SetLatency(time.Duration)
	Close() error
}

// A provider builds its emulator and registers its own control routes under
// /_emu/ on mux. Adding a provider (orb) is one file and one line here.
type provider func(o options, mux *http.ServeMux) (emulator, error)

var providers = map[string]provider{
	"stripe": newStripe,
	"orb":    newOrb,
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("emulator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	name := fs.String("provider", "stripe", "which API to emulate: stripe or orb")
	fs.StringVar(&o.listen, "listen", "127.0.0.1:12112", "address to serve on (port 0 picks one)")
	fs.Int64Var(&o.seed, "seed", 1, "seed of the generated data")
	fs.IntVar(&o.customers, "customers", 200, "generated customers per account")
	accounts := fs.String("accounts", "platform", `comma-separated accounts: "platform" and/or acct_… ids`)
	heavy := fs.String("heavy", "", "comma-separated transaction counts of extra heavy customers, e.g. 5000")
	end := fs.String("end", "now", `newest generated timestamp: "now", RFC 3339, or "fixed" (a constant, for identical data every run)`)
	fs.IntVar(&o.scale.Customers, "scale-customers", 0, "stripe: generate this many customers in all, compactly and read-only, over the platform and --scale-accounts connected accounts (skewed); replaces --customers, --accounts and --heavy")
	fs.IntVar(&o.scale.Accounts, "scale-accounts", 0, "stripe: connected accounts of a --scale-customers world")
	fs.BoolVar(&o.livemode, "livemode", false, "generate live-mode objects")
	fs.DurationVar(&o.latency, "latency", 0, "delay added to every API request")
	fs.Float64Var(&o.rate429, "rate-429", 0, "fraction of API requests answered 429")
	fs.Float64Var(&o.rate500, "rate-500", 0, "fraction of API requests answered 500")
	limits := fs.String("limits", "documented", "rate limits enforced per account: documented (the provider's for --livemode: Stripe 100/s live, 25/s test, 25/s per endpoint; Orb 100/s live, 50/s test; and 20 requests in flight), or off")
	fs.Float64Var(&o.limits.Global, "rate-limit", 0, "requests per second per account (0: documented)")
	fs.Float64Var(&o.limits.Endpoint, "endpoint-rate-limit", 0, "stripe: requests per second to each endpoint per account (0: documented)")
	fs.IntVar(&o.limits.Concurrency, "max-concurrent-requests", 0, "requests in flight per account (0: 20)")
	scope := fs.String("rate-limit-scope", "platform", "stripe: whose budget a Connect account's requests spend: platform or account")
	fs.StringVar(&o.webhookURL, "webhook-url", "", "where mutations POST signed webhooks; empty sends none")
	fs.BoolVar(&o.thinEvents, "thin-events", false, "stripe: POST thin events (v2.core.event notifications) instead of snapshot events")
	fs.StringVar(&o.webhookSecret, "webhook-secret", getenv("EMULATOR_WEBHOOK_SECRET"),
		"signing secret (whsec_…); default $EMULATOR_WEBHOOK_SECRET")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	switch *limits {
	case "documented":
	case "off":
		o.limitsOff = true
	default:
		return fmt.Errorf("--limits %q: want documented or off", *limits)
	}
	if o.limits.Global < 0 || o.limits.Endpoint < 0 || o.limits.Concurrency < 0 {
		return errors.New("--rate-limit, --endpoint-rate-limit and --max-concurrent-requests must be positive")
	}
	o.scope = ratelimit.Scope(*scope)
	if o.scope != ratelimit.ScopePlatform && o.scope != ratelimit.ScopeAccount {
		return fmt.Errorf("--rate-limit-scope %q: want platform or account", *scope)
	}
	newEmu, ok := providers[*name]
	if !ok {
		return fmt.Errorf("unknown --provider %q", *name)
	}
	for _, a := range strings.Split(*accounts, ",") {
		o.accounts = append(o.accounts, accountParam(strings.TrimSpace(a)))
	}
	for _, h := range strings.Split(*heavy, ",") {
		if h = strings.TrimSpace(h); h == "" {
			continue
		}
		n, err := strconv.Atoi(h)
		if err != nil || n < 0 {
			return fmt.Errorf("--heavy %q: want non-negative counts", *heavy)
		}
		o.heavy = append(o.heavy, n)
	}
	switch *end {
	case "now":
		o.end = time.Now().UTC().Truncate(time.Second)
	case "fixed":
	default:
		t, err := time.Parse(time.RFC3339, *end)
		if err != nil {
			return fmt.Errorf("--end: %w", err)
		}
		o.end = t
	}

	mux := http.NewServeMux()
	emu, err := newEmu(o, mux)
	if err != nil {
		return err
	}
	defer emu.Close()
	mux.Handle("/", emu)
	mux.HandleFunc("GET /_emu/healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("POST /_emu/faults", faults(emu))

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(stdout, "%s emulator listening on http://%s\n", *name, ln.Addr())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(shutdown)
}

// accountParam maps the control API's and flags' "platform" to "".
func accountParam(s string) string {
	if s == "platform" {
		return ""
	}
	return s
}

// faults handles POST /_emu/faults?rate_429=0.1&rate_500=0&latency=50ms.
// Both rates are set on every call (a missing one means 0); the latency
// changes only when given.
func faults(emu emulator) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		var rates [2]float64
		for i, k := range []string{"rate_429", "rate_500"} {
			if s := q.Get(k); s != "" {
				v, err := strconv.ParseFloat(s, 64)
				if err != nil || v < 0 || v > 1 {
					http.Error(w, k+": want a fraction between 0 and 1", http.StatusBadRequest)
					return
				}
				rates[i] = v
			}
		}
		if s := q.Get("latency"); s != "" {
			d, err := time.ParseDuration(s)
			if err != nil {
				http.Error(w, "latency: "+err.Error(), http.StatusBadRequest)
				return
			}
			emu.SetLatency(d)
		}
		emu.SetFaults(rates[0], rates[1])
		writeJSON(w, map[string]float64{"rate_429": rates[0], "rate_500": rates[1]})
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
