// Package config is syncd's one configuration struct and the only code that
// reads flags, SYNCD_* environment variables and secret files.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/syncd/syncd/internal/orbapi"
	"github.com/syncd/syncd/internal/ratelimit"
	"github.com/syncd/syncd/internal/stripeapi"
)

// Config is every setting of every command. A command's flag set registers
// only the fields it uses; the rest keep their defaults.
type Config struct {
	Command string

	ClickHouseDSN string
	// ClickHouseCluster names the cluster the tables are replicated on
	// ("": one server); ClickHouseInsertQuorum is the replicas a write
	// must reach before it is acknowledged (0: a majority).
	ClickHouseCluster      string
	ClickHouseInsertQuorum int
	LogFormat              string
	LogLevel               string

	Listen           string
	AdminListen      string
	WebhookTolerance time.Duration
	ShutdownTimeout  time.Duration
	RefreshWorkers   int
	// Pprof serves /debug/pprof/ on the admin listener. Off by default:
	// /debug/pprof/cmdline shows the command line, secrets given as flags
	// included.
	Pprof bool

	StripeAPIKey         string
	StripeAPIURL         string
	StripeWebhookSecrets []string
	// StripeAccounts lists Connect accounts; nil means the key's own account
	// only. StripeAllAccounts is set by the value "all".
	StripeAccounts    []string
	StripeAllAccounts bool

	OrbAPIKey         string
	OrbAPIURL         string
	OrbWebhookSecrets []string

	// RateLimit is requests per second to a source API per budget (an
	// account, or a Connect platform with its accounts); 0 means the
	// provider's documented limit (see Limits). EndpointRateLimit is the
	// same to each endpoint, MaxConcurrent the requests in flight per
	// budget, and RateLimitScope says whose budget a connected account's
	// requests spend.
	RateLimit         float64
	EndpointRateLimit float64
	MaxConcurrent     int
	RateLimitScope    string

	// Sink tuning.
	BatchRows     int
	FlushInterval time.Duration
	QueueRows     int
	QueueBytes    int64

	// WebhookBodyBytes caps the bytes of webhook bodies held at once
	// (serve).
	WebhookBodyBytes int64

	// backfill and verify.
	Provider    string
	Customers   []string
	Since       time.Time
	SinceRaw    string
	Full        bool
	Concurrency int
	Progress    string
}

// Provider names.
const (
	Stripe = "stripe"
	Orb    = "orb"
)

// Commands that take flags.
const (
	CmdServe    = "serve"
	CmdBackfill = "backfill"
	CmdMigrate  = "migrate"
	CmdVerify   = "verify"
)

// UsageError is a bad command line; the process exits 2.
type UsageError struct{ Err error }

// The sink's defaults for each command: serve sends each batch as soon as the
// previous insert returns (acknowledgements wait on it); backfill lets a
// batch fill for up to a second, since an insert of its rows makes a part in
// each month it spans and ClickHouse merges fewer, larger parts more cheaply.
const (
	ServeBatchRows        = 10000
	BackfillBatchRows     = 50000
	BackfillFlushInterval = time.Second
)

// Memory budgets, in bytes. serve's defaults keep what its budgets can hold
// (request bodies, and the rows of its two queues: the intake log and the
// rows derived from events), with the copies made on the way (decoding,
// the driver's column buffers), within the chart's 512 Mi limit and its
// GOMEMLIMIT of 90% of it: 32 + 2 × 64 MiB = 160 MiB. backfill's queue is
// larger: its batches are 50,000 rows of about 1 KiB, two in flight, and
// its Job's limit is 1 Gi.
const (
	ServeQueueBytes         = 64 << 20
	BackfillQueueBytes      = 256 << 20
	DefaultWebhookBodyBytes = 32 << 20
)

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// ErrHelp is returned when --help was asked for; usage has been printed.
var ErrHelp = flag.ErrHelp

// precedenceHelp ends every command's --help.
const precedenceHelp = `
Every flag can be set by an environment variable instead: --stripe-api-key
is SYNCD_STRIPE_API_KEY (SYNCD_ and the name in upper snake case). A flag on
the command line wins over its variable, which is then not read.
A secret --NAME can be read from a file instead, --NAME-file (or
SYNCD_NAME_FILE). Giving both a secret and its file, as flags or variables in
any mix, is a usage error (exit 2): syncd does not guess which one you meant.
`

// Parse fills a Config for command from args, then the environment (getenv),
// then the defaults, in that order of precedence; a secret and its -file
// form given together are a UsageError. now anchors relative --since
// durations.
func Parse(command string, args []string, getenv func(string) string, stderr io.Writer, now time.Time) (*Config, error) {
	c := &Config{Command: command}
	fs := flag.NewFlagSet("syncd "+command, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: syncd %s [flags]\n\n", command)
		fs.PrintDefaults()
		fmt.Fprint(stderr, precedenceHelp)
	}

	// secrets are the settings that may come from a file, in the order
	// their conflicts are reported.
	type secret struct {
		name string
		path *string
		set  func(string)
	}
	var secrets []secret
	secretFile := func(name string, set func(string)) {
		f := new(string)
		fs.StringVar(f, name+"-file", "", "read --"+name+" from this file (for secrets mounted from Kubernetes); not together with --"+name)
		secrets = append(secrets, secret{name, f, set})
	}

	fs.StringVar(&c.ClickHouseDSN, "clickhouse-dsn", "clickhouse://127.0.0.1:9000/syncd", "clickhouse-go v2 DSN; the path is the database")
	secretFile("clickhouse-dsn", func(v string) { c.ClickHouseDSN = v })
	fs.StringVar(&c.ClickHouseCluster, "clickhouse-cluster", "", "ClickHouse cluster (its name in remote_servers) the tables are replicated on: migrate creates them ON CLUSTER as Replicated tables (Distributed too with several shards); empty = one server")
	fs.IntVar(&c.ClickHouseInsertQuorum, "clickhouse-insert-quorum", 0, "with --clickhouse-cluster: replicas of a shard a write must reach before it is acknowledged (insert_quorum); 0 = a majority of the fewest replicas a shard has, 1 = no quorum")
	fs.StringVar(&c.LogFormat, "log-format", "json", "log format: json or console")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn, error")

	sourceFlags := func() {
		fs.StringVar(&c.StripeAPIKey, "stripe-api-key", "", "Stripe secret or restricted key (sk_live_, sk_test_, rk_…)")
		secretFile("stripe-api-key", func(v string) { c.StripeAPIKey = v })
		fs.StringVar(&c.StripeAPIURL, "stripe-api-url", "https://api.stripe.com", "Stripe API base URL")
		fs.Func("stripe-accounts", "Connect: comma-separated acct_… ids, or all — the accounts backfill and verify read and serve refreshes; empty = the key's own account", func(v string) error {
			c.StripeAccounts, c.StripeAllAccounts = nil, false
			for _, a := range splitList(v) {
				if a == "all" {
					c.StripeAllAccounts = true
					continue
				}
				if !strings.HasPrefix(a, "acct_") {
					return fmt.Errorf("%q is not an acct_… id", a)
				}
				c.StripeAccounts = append(c.StripeAccounts, a)
			}
			return nil
		})
		fs.StringVar(&c.OrbAPIKey, "orb-api-key", "", "Orb API key; the Orb source is off without a key or webhook secret")
		secretFile("orb-api-key", func(v string) { c.OrbAPIKey = v })
		fs.StringVar(&c.OrbAPIURL, "orb-api-url", "https://api.withorb.com", "Orb API base URL")
		fs.Float64Var(&c.RateLimit, "rate-limit", 0, "requests per second to a source API per account, shared by every worker of every process (default: the documented limit, 100 for Stripe live keys, 25 for test keys, 50 for Orb)")
		fs.Float64Var(&c.EndpointRateLimit, "endpoint-rate-limit", 0, "requests per second to each Stripe endpoint per account (default: the documented 25; raise it for an account whose limits Stripe raised)")
		fs.IntVar(&c.MaxConcurrent, "max-concurrent-requests", 0, "requests in flight to a source API per account, for the whole fleet (default 20)")
		fs.StringVar(&c.RateLimitScope, "rate-limit-scope", string(ratelimit.ScopePlatform), "whose budget Stripe Connect requests spend: platform (the platform's, shared by every connected account: safe) or account (each connected account its own)")
	}
	sinkFlags := func(batch int, interval time.Duration, queueBytes int64) {
		fs.IntVar(&c.BatchRows, "batch-rows", batch, "max rows per ClickHouse insert")
		fs.DurationVar(&c.FlushInterval, "flush-interval", interval, "how long a batch may wait to fill before it is sent (0: send as soon as the previous insert returns)")
		fs.IntVar(&c.QueueRows, "queue-rows", 200000, "max rows waiting for ClickHouse, per queue; beyond it writes are refused (webhooks answer 503)")
		c.QueueBytes = queueBytes
		fs.Var((*byteSize)(&c.QueueBytes), "queue-bytes", "max bytes of rows waiting for ClickHouse, per queue (serve has two), e.g. 64MiB; beyond it writes are refused (webhooks answer 503)")
	}
	providerFlags := func() {
		fs.StringVar(&c.Provider, "provider", Stripe, "source: stripe or orb")
		fs.Func("customer", "only this customer id (repeatable)", func(v string) error {
			c.Customers = append(c.Customers, splitList(v)...)
			return nil
		})
	}

	var webhookSecrets, orbSecrets listFlag
	switch command {
	case CmdServe:
		sourceFlags()
		sinkFlags(ServeBatchRows, 0, ServeQueueBytes)
		c.WebhookBodyBytes = DefaultWebhookBodyBytes
		fs.Var((*byteSize)(&c.WebhookBodyBytes), "webhook-body-bytes", "max bytes of webhook request bodies held at once (being read, or waiting for their commit), e.g. 32MiB; beyond it requests are answered 503")
		fs.StringVar(&c.Listen, "listen", ":8080", "webhook HTTP listener")
		fs.StringVar(&c.AdminListen, "admin-listen", ":9090", "admin listener: /metrics, /healthz, /readyz, and /debug/pprof/ with --pprof; bind it to loopback or the pod network, never a public ingress")
		fs.BoolVar(&c.Pprof, "pprof", false, "serve /debug/pprof/ on the admin listener (off by default: /debug/pprof/cmdline shows the command line, secrets given as flags included)")
		fs.Var(&webhookSecrets, "stripe-webhook-secret", "whsec_… (repeatable or comma-separated, for rotation)")
		secretFile("stripe-webhook-secret", webhookSecrets.add)
		fs.Var(&orbSecrets, "orb-webhook-secret", "Orb webhook secret (repeatable or comma-separated)")
		secretFile("orb-webhook-secret", orbSecrets.add)
		fs.DurationVar(&c.WebhookTolerance, "webhook-tolerance", 5*time.Minute, "max age and max future skew of a signed timestamp")
		fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 25*time.Second, "how long SIGTERM may take to drain (keep below terminationGracePeriodSeconds)")
		fs.IntVar(&c.RefreshWorkers, "refresh-workers", 0, "most customer refreshes reading the API at once; 0: as many as keep the rate limit busy (rate limit × measured request latency × 1.5 + 2)")
	case CmdBackfill:
		sourceFlags()
		sinkFlags(BackfillBatchRows, BackfillFlushInterval, BackfillQueueBytes)
		providerFlags()
		fs.StringVar(&c.SinceRaw, "since", "", "only what changed since then: RFC 3339 time or a duration such as 36h")
		fs.BoolVar(&c.Full, "full", false, "ignore checkpoints and re-read everything")
		fs.IntVar(&c.Concurrency, "concurrency", 0, "customers read at once (default: enough to saturate --rate-limit)")
		fs.StringVar(&c.Progress, "progress", "auto", "progress output: auto (a live line on a terminal), line, log, or none")
	case CmdVerify:
		sourceFlags()
		providerFlags()
		fs.IntVar(&c.Concurrency, "concurrency", 0, "customers checked at once (default: enough to saturate --rate-limit)")
	case CmdMigrate:
	default:
		return nil, &UsageError{fmt.Errorf("unknown command %q", command)}
	}

	// The command line first; the environment then fills only the flags it
	// did not give, so a flag wins over its variable (a list flag's values
	// replace the variable's rather than adding to them).
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, ErrHelp
		}
		return nil, &UsageError{err}
	}
	if fs.NArg() > 0 {
		return nil, &UsageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	givenBy := map[string]string{} // flag name → "--name" or its variable
	fs.Visit(func(f *flag.Flag) { givenBy[f.Name] = "--" + f.Name })
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if envErr != nil || givenBy[f.Name] != "" {
			return
		}
		if v := getenv(EnvName(f.Name)); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = &UsageError{fmt.Errorf("%s: %w", EnvName(f.Name), err)}
			}
			givenBy[f.Name] = EnvName(f.Name)
		}
	})
	if envErr != nil {
		return nil, envErr
	}

	// A secret comes from its value or from its file. Both given is
	// refused rather than resolved: a file that silently overrode a flag
	// (or was appended to a list of webhook secrets) hid a stale setting.
	for _, s := range secrets {
		value, file := givenBy[s.name], givenBy[s.name+"-file"]
		if value != "" && file != "" {
			return nil, &UsageError{fmt.Errorf("%s and %s are both given: set --%s or --%s-file, not both", value, file, s.name, s.name)}
		}
		if *s.path == "" {
			continue
		}
		b, err := os.ReadFile(*s.path)
		if err != nil {
			return nil, &UsageError{fmt.Errorf("%s: %w", file, err)}
		}
		s.set(strings.TrimSpace(string(b)))
	}
	c.StripeWebhookSecrets = webhookSecrets.values
	c.OrbWebhookSecrets = orbSecrets.values

	if err := c.validate(now); err != nil {
		return nil, &UsageError{err}
	}
	return c, nil
}

func (c *Config) validate(now time.Time) error {
	switch c.LogFormat {
	case "json", "console":
	default:
		return fmt.Errorf("--log-format must be json or console, not %q", c.LogFormat)
	}
	if c.RateLimit < 0 || c.EndpointRateLimit < 0 || c.MaxConcurrent < 0 {
		return fmt.Errorf("--rate-limit, --endpoint-rate-limit and --max-concurrent-requests must be positive")
	}
	switch ratelimit.Scope(c.RateLimitScope) {
	case ratelimit.ScopePlatform, ratelimit.ScopeAccount:
	case "":
		c.RateLimitScope = string(ratelimit.ScopePlatform)
	default:
		return fmt.Errorf("--rate-limit-scope must be platform or account, not %q", c.RateLimitScope)
	}
	if c.Command == CmdBackfill || c.Command == CmdVerify {
		if c.Provider != Stripe && c.Provider != Orb {
			return fmt.Errorf("--provider must be stripe or orb, not %q", c.Provider)
		}
		if c.Concurrency < 0 {
			return fmt.Errorf("--concurrency must be positive")
		}
		if c.Provider == Stripe && c.StripeAPIKey == "" {
			return fmt.Errorf("--stripe-api-key (or SYNCD_STRIPE_API_KEY, or --stripe-api-key-file) is required")
		}
		if c.Provider == Orb && c.OrbAPIKey == "" {
			return fmt.Errorf("--orb-api-key (or SYNCD_ORB_API_KEY, or --orb-api-key-file) is required")
		}
	}
	if c.SinceRaw != "" {
		t, err := ParseSince(c.SinceRaw, now)
		if err != nil {
			return err
		}
		c.Since = t
		if c.Full {
			return fmt.Errorf("--since and --full cannot be combined: --full re-reads everything")
		}
	}
	if c.Command == CmdServe {
		if len(c.StripeWebhookSecrets) > 0 && c.StripeAPIKey == "" {
			return fmt.Errorf("--stripe-api-key is required with --stripe-webhook-secret: Stripe webhooks trigger refreshes through the API")
		}
		for _, s := range c.StripeWebhookSecrets {
			if !strings.HasPrefix(s, "whsec_") {
				return fmt.Errorf("a --stripe-webhook-secret does not start with whsec_")
			}
		}
	}
	if c.BatchRows < 0 || c.QueueRows < 0 {
		return fmt.Errorf("--batch-rows and --queue-rows must be positive")
	}
	if c.ClickHouseInsertQuorum < 0 {
		return fmt.Errorf("--clickhouse-insert-quorum must be positive")
	}
	if c.ClickHouseInsertQuorum > 0 && c.ClickHouseCluster == "" {
		return fmt.Errorf("--clickhouse-insert-quorum needs --clickhouse-cluster: a quorum is of a cluster's replicas")
	}
	if c.QueueBytes < 0 || c.WebhookBodyBytes < 0 {
		return fmt.Errorf("--queue-bytes and --webhook-body-bytes must be positive")
	}
	return nil
}

// ParseSince reads an RFC 3339 time or a duration back from now.
func ParseSince(v string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(v); err == nil {
		if d <= 0 {
			return time.Time{}, fmt.Errorf("--since %s: the duration must be positive", v)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("--since %q: want an RFC 3339 time (2026-01-02T15:04:05Z) or a duration (36h)", v)
	}
	if t.After(now) {
		return time.Time{}, fmt.Errorf("--since %s is in the future", v)
	}
	return t, nil
}

// Limits are provider's limits per budget: each flag when set, else the
// provider's documented limit (Stripe's for the key's mode: sk_live_ and
// rk_live_ keys are live, any other is held to the sandbox's; Orb's for
// test mode, as an Orb key does not say its mode).
func (c *Config) Limits(provider string) ratelimit.Limits {
	l := stripeapi.DefaultLimits(c.StripeAPIKey)
	if provider == Orb {
		l = orbapi.DefaultLimits()
	}
	if c.RateLimit > 0 {
		l.Global = c.RateLimit
	}
	if c.EndpointRateLimit > 0 && provider == Stripe {
		l.Endpoint = c.EndpointRateLimit
	}
	if c.MaxConcurrent > 0 {
		l.Concurrency = c.MaxConcurrent
	}
	return l
}

// RateLimitFor is provider's global requests per second (Limits).
func (c *Config) RateLimitFor(provider string) float64 { return c.Limits(provider).Global }

// EnvName maps a flag name to its environment variable.
func EnvName(flagName string) string {
	return "SYNCD_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Redact returns s with every configured secret replaced, for error
// messages that might quote user input.
func (c *Config) Redact(s string) string {
	for _, sec := range append(append([]string{c.StripeAPIKey, c.OrbAPIKey}, c.StripeWebhookSecrets...), c.OrbWebhookSecrets...) {
		if len(sec) >= 8 {
			s = strings.ReplaceAll(s, sec, "[redacted]")
		}
	}
	return s
}

// byteSize is a flag of a number of bytes: an integer, optionally with a
// unit, KiB/MiB/GiB (or Kubernetes' Ki/Mi/Gi) or KB/MB/GB (powers of 1000).
type byteSize int64

var byteUnits = []struct {
	suffix string
	factor int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9},
	{"B", 1},
}

func (b *byteSize) String() string {
	n := int64(*b)
	for _, u := range []struct {
		suffix string
		factor int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n != 0 && n%u.factor == 0 {
			return strconv.FormatInt(n/u.factor, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

func (b *byteSize) Set(v string) error {
	num, factor := strings.TrimSpace(v), int64(1)
	for _, u := range byteUnits {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, factor = strings.TrimSpace(n), u.factor
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/factor {
		return fmt.Errorf("%q is not a size in bytes (e.g. 67108864, 64MiB, 64Mi)", v)
	}
	*b = byteSize(n * factor)
	return nil
}

// listFlag is a repeatable, comma-separated flag.
type listFlag struct {
	values []string
}

func (l *listFlag) String() string { return strconv.Itoa(len(l.values)) + " values" }

func (l *listFlag) Set(v string) error {
	l.add(v)
	return nil
}

func (l *listFlag) add(v string) {
	for _, s := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == '\n' }) {
		if s = strings.TrimSpace(s); s != "" {
			l.values = append(l.values, s)
		}
	}
}

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
