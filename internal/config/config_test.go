package config

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/ratelimit"
)

var now = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

func parse(t *testing.T, cmd string, args []string, env map[string]string) (*Config, error) {
	t.Helper()
	return Parse(cmd, args, func(k string) string { return env[k] }, io.Discard, now)
}

func TestPrecedenceFlagOverEnvOverDefault(t *testing.T) {
	c, err := parse(t, CmdServe, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != ":8080" || c.AdminListen != ":9090" || c.ClickHouseDSN != "clickhouse://127.0.0.1:9000/syncd" || c.WebhookTolerance != 5*time.Minute {
		t.Errorf("defaults: %+v", c)
	}
	env := map[string]string{"SYNCD_LISTEN": ":1", "SYNCD_STRIPE_API_KEY": "sk_test_env", "SYNCD_STRIPE_WEBHOOK_SECRET": "whsec_a,whsec_b"}
	c, err = parse(t, CmdServe, []string{"--listen", ":2"}, env)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != ":2" || c.StripeAPIKey != "sk_test_env" || strings.Join(c.StripeWebhookSecrets, " ") != "whsec_a whsec_b" {
		t.Errorf("got listen %q key %q secrets %v", c.Listen, c.StripeAPIKey, c.StripeWebhookSecrets)
	}
	// A repeated flag replaces the environment's list rather than adding to it.
	c, err = parse(t, CmdServe, []string{"--stripe-webhook-secret", "whsec_c", "--stripe-webhook-secret", "whsec_d"}, env)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.StripeWebhookSecrets, " ") != "whsec_c whsec_d" {
		t.Errorf("secrets = %v", c.StripeWebhookSecrets)
	}
}

func TestSecretFiles(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	secrets := filepath.Join(dir, "secrets")
	os.WriteFile(key, []byte("sk_live_fromfile\n"), 0o600)
	os.WriteFile(secrets, []byte("whsec_one\nwhsec_two\n"), 0o600)
	c, err := parse(t, CmdServe, []string{"--stripe-api-key-file", key, "--stripe-webhook-secret-file", secrets}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.StripeAPIKey != "sk_live_fromfile" || len(c.StripeWebhookSecrets) != 2 {
		t.Errorf("key %q secrets %v", c.StripeAPIKey, c.StripeWebhookSecrets)
	}
	if l := c.Limits(Stripe); l.Global != 100 || l.Endpoint != 25 || l.Concurrency != 20 {
		t.Errorf("live key limits = %+v, want Stripe's live limits (100/s, 25/s per endpoint) and 20 in flight", l)
	}
	_, err = parse(t, CmdServe, []string{"--stripe-api-key-file", filepath.Join(dir, "missing")}, nil)
	var ue *UsageError
	if !errors.As(err, &ue) {
		t.Errorf("missing secret file: want a usage error, got %v", err)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tt := range []struct {
		cmd  string
		args []string
		want string
	}{
		{CmdBackfill, []string{"--provider", "paypal", "--stripe-api-key", "sk_test_x"}, "--provider"},
		{CmdBackfill, nil, "--stripe-api-key"},
		{CmdBackfill, []string{"--stripe-api-key", "sk_test_x", "--since", "yesterday"}, "--since"},
		{CmdBackfill, []string{"--stripe-api-key", "sk_test_x", "--since", "36h", "--full"}, "cannot be combined"},
		{CmdBackfill, []string{"--stripe-api-key", "sk_test_x", "--stripe-accounts", "bogus"}, "acct_"},
		{CmdServe, []string{"--stripe-webhook-secret", "whsec_x"}, "--stripe-api-key is required"},
		{CmdServe, []string{"--stripe-api-key", "sk_test_x", "--stripe-webhook-secret", "nope"}, "whsec_"},
		{CmdServe, []string{"--log-format", "xml"}, "--log-format"},
		{CmdServe, []string{"--rate-limit-scope", "everyone"}, "--rate-limit-scope"},
		{CmdServe, []string{"--endpoint-rate-limit", "-1"}, "--endpoint-rate-limit"},
		{CmdServe, []string{"--no-such-flag"}, "no-such-flag"},
		{CmdMigrate, []string{"extra"}, "unexpected argument"},
		{CmdMigrate, []string{"--clickhouse-insert-quorum", "2"}, "needs --clickhouse-cluster"},
		{CmdServe, []string{"--clickhouse-cluster", "prod", "--clickhouse-insert-quorum", "-1"}, "--clickhouse-insert-quorum"},
		{"frobnicate", nil, "unknown command"},
	} {
		_, err := parse(t, tt.cmd, tt.args, nil)
		var ue *UsageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s %v: got %v, want a usage error mentioning %q", tt.cmd, tt.args, err, tt.want)
		}
	}
	if _, err := parse(t, CmdServe, []string{"--help"}, nil); !errors.Is(err, ErrHelp) {
		t.Errorf("--help: %v", err)
	}
	// A bad value from the environment names the variable.
	_, err := parse(t, CmdServe, nil, map[string]string{"SYNCD_WEBHOOK_TOLERANCE": "soon"})
	if err == nil || !strings.Contains(err.Error(), "SYNCD_WEBHOOK_TOLERANCE") {
		t.Errorf("bad env: %v", err)
	}
}

func TestBackfillSettings(t *testing.T) {
	c, err := parse(t, CmdBackfill, []string{"--stripe-api-key", "rk_test_x", "--customer", "cus_1,cus_2", "--customer", "cus_3",
		"--since", "36h", "--stripe-accounts", "acct_1,all", "--rate-limit", "12.5"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Customers) != 3 || !c.Since.Equal(now.Add(-36*time.Hour)) || !c.StripeAllAccounts ||
		len(c.StripeAccounts) != 1 || c.RateLimitFor(Stripe) != 12.5 {
		t.Errorf("got %+v", c)
	}
	c, _ = parse(t, CmdBackfill, []string{"--stripe-api-key", "sk_test_x", "--since", "2026-11-20T00:00:00Z"}, nil)
	if c.Since != time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC) || c.RateLimitFor(Stripe) != 25 || c.RateLimitFor(Orb) != 50 ||
		c.Limits(Stripe).Endpoint != 25 || c.Limits(Orb).Endpoint != 0 || c.RateLimitScope != "platform" {
		t.Errorf("since %v limits %+v %+v scope %q", c.Since, c.Limits(Stripe), c.Limits(Orb), c.RateLimitScope)
	}
	// Each limit is a setting, for accounts whose limits Stripe raised.
	c, err = parse(t, CmdVerify, []string{"--stripe-api-key", "sk_live_x", "--rate-limit", "300", "--endpoint-rate-limit", "60",
		"--max-concurrent-requests", "8"}, map[string]string{"SYNCD_RATE_LIMIT_SCOPE": "account"})
	if err != nil {
		t.Fatal(err)
	}
	if l := c.Limits(Stripe); l != (ratelimit.Limits{Global: 300, Endpoint: 60, Concurrency: 8}) || c.RateLimitScope != "account" {
		t.Errorf("limits %+v scope %q", l, c.RateLimitScope)
	}
	if _, err := ParseSince("2030-01-01T00:00:00Z", now); err == nil {
		t.Error("a future --since must be refused")
	}
}

func TestRedact(t *testing.T) {
	c := &Config{StripeAPIKey: "sk_live_supersecret", StripeWebhookSecrets: []string{"whsec_abcdefgh"}}
	got := c.Redact("auth with sk_live_supersecret and whsec_abcdefgh failed")
	if strings.Contains(got, "supersecret") || strings.Contains(got, "abcdefgh") {
		t.Errorf("not redacted: %s", got)
	}
}

// A secret and its -file form, from any mix of flags and variables, are a
// usage error naming both; either one alone works.
func TestSecretAndItsFileTogether(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key")
	secretsFile := filepath.Join(dir, "secrets")
	os.WriteFile(keyFile, []byte("sk_test_fromfile\n"), 0o600)
	os.WriteFile(secretsFile, []byte("whsec_file1\nwhsec_file2\n"), 0o600)
	for _, tt := range []struct {
		name string
		args []string
		env  map[string]string
		// conflict names the two sources in the error; "" means it parses.
		conflict    [2]string
		key         string
		whsecs      string
		orbSecrets  string
		fromDSNFile bool
	}{
		{name: "flag and file flag",
			args:     []string{"--stripe-api-key", "sk_test_flag", "--stripe-api-key-file", keyFile},
			conflict: [2]string{"--stripe-api-key", "--stripe-api-key-file"}},
		{name: "env and file env",
			env:      map[string]string{"SYNCD_STRIPE_API_KEY": "sk_test_env", "SYNCD_STRIPE_API_KEY_FILE": keyFile},
			conflict: [2]string{"SYNCD_STRIPE_API_KEY", "SYNCD_STRIPE_API_KEY_FILE"}},
		{name: "flag and file env",
			args:     []string{"--stripe-api-key", "sk_test_flag"},
			env:      map[string]string{"SYNCD_STRIPE_API_KEY_FILE": keyFile},
			conflict: [2]string{"--stripe-api-key", "SYNCD_STRIPE_API_KEY_FILE"}},
		{name: "env and file flag",
			args:     []string{"--stripe-api-key-file", keyFile},
			env:      map[string]string{"SYNCD_STRIPE_API_KEY": "sk_test_env"},
			conflict: [2]string{"SYNCD_STRIPE_API_KEY", "--stripe-api-key-file"}},
		{name: "dsn and dsn file",
			args:     []string{"--clickhouse-dsn-file", keyFile},
			env:      map[string]string{"SYNCD_CLICKHOUSE_DSN": "clickhouse://h:9000/db"},
			conflict: [2]string{"SYNCD_CLICKHOUSE_DSN", "--clickhouse-dsn-file"}},
		{name: "webhook secret list flag and file flag",
			args: []string{"--stripe-api-key", "sk_test_flag", "--stripe-webhook-secret", "whsec_a,whsec_b",
				"--stripe-webhook-secret-file", secretsFile},
			conflict: [2]string{"--stripe-webhook-secret", "--stripe-webhook-secret-file"}},
		{name: "webhook secret list env and file flag",
			args:     []string{"--stripe-api-key", "sk_test_flag", "--stripe-webhook-secret-file", secretsFile},
			env:      map[string]string{"SYNCD_STRIPE_WEBHOOK_SECRET": "whsec_a"},
			conflict: [2]string{"SYNCD_STRIPE_WEBHOOK_SECRET", "--stripe-webhook-secret-file"}},
		{name: "orb webhook secret flag and file env",
			args:     []string{"--orb-webhook-secret", "whsec_a"},
			env:      map[string]string{"SYNCD_ORB_WEBHOOK_SECRET_FILE": secretsFile},
			conflict: [2]string{"--orb-webhook-secret", "SYNCD_ORB_WEBHOOK_SECRET_FILE"}},

		{name: "flag only", args: []string{"--stripe-api-key", "sk_test_flag"}, key: "sk_test_flag"},
		{name: "env only", env: map[string]string{"SYNCD_STRIPE_API_KEY": "sk_test_env"}, key: "sk_test_env"},
		{name: "file flag only", args: []string{"--stripe-api-key-file", keyFile}, key: "sk_test_fromfile"},
		{name: "file env only", env: map[string]string{"SYNCD_STRIPE_API_KEY_FILE": keyFile}, key: "sk_test_fromfile"},
		{name: "flag wins over env for the same form",
			args: []string{"--stripe-api-key", "sk_test_flag"}, env: map[string]string{"SYNCD_STRIPE_API_KEY": "sk_test_env"},
			key: "sk_test_flag"},
		{name: "file flag wins over file env",
			args: []string{"--stripe-api-key-file", keyFile}, env: map[string]string{"SYNCD_STRIPE_API_KEY_FILE": "/nonexistent"},
			key: "sk_test_fromfile"},
		{name: "webhook secret list only",
			args: []string{"--stripe-api-key", "sk_test_flag", "--stripe-webhook-secret", "whsec_a,whsec_b"},
			key:  "sk_test_flag", whsecs: "whsec_a whsec_b"},
		{name: "webhook secret file only",
			args: []string{"--stripe-api-key", "sk_test_flag", "--stripe-webhook-secret-file", secretsFile},
			key:  "sk_test_flag", whsecs: "whsec_file1 whsec_file2"},
		{name: "webhook secret list flag wins over its env",
			args: []string{"--stripe-api-key", "sk_test_flag", "--stripe-webhook-secret", "whsec_a"},
			env:  map[string]string{"SYNCD_STRIPE_WEBHOOK_SECRET": "whsec_env"},
			key:  "sk_test_flag", whsecs: "whsec_a"},
		{name: "a value for one secret and a file for another",
			args: []string{"--stripe-api-key", "sk_test_flag", "--orb-webhook-secret-file", secretsFile},
			key:  "sk_test_flag", orbSecrets: "whsec_file1 whsec_file2"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parse(t, CmdServe, tt.args, tt.env)
			if tt.conflict[0] != "" {
				var ue *UsageError
				if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.conflict[0]+" and "+tt.conflict[1]) {
					t.Fatalf("got %v; want a usage error naming %s and %s", err, tt.conflict[0], tt.conflict[1])
				}
				if strings.Contains(err.Error(), "sk_test_") || strings.Contains(err.Error(), "whsec_") {
					t.Errorf("the error quotes a secret: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.StripeAPIKey != tt.key || strings.Join(c.StripeWebhookSecrets, " ") != tt.whsecs ||
				strings.Join(c.OrbWebhookSecrets, " ") != tt.orbSecrets {
				t.Errorf("key %q, stripe secrets %v, orb secrets %v; want %q, %q, %q",
					c.StripeAPIKey, c.StripeWebhookSecrets, c.OrbWebhookSecrets, tt.key, tt.whsecs, tt.orbSecrets)
			}
		})
	}
}

// --help states the precedence rule, and each -file flag names its value.
func TestHelpStatesPrecedence(t *testing.T) {
	for _, cmd := range []string{CmdServe, CmdBackfill, CmdVerify, CmdMigrate} {
		var out strings.Builder
		if _, err := Parse(cmd, []string{"--help"}, func(string) string { return "" }, &out, now); !errors.Is(err, ErrHelp) {
			t.Fatalf("%s --help: %v", cmd, err)
		}
		help := out.String()
		for _, want := range []string{"wins over its variable", "usage error (exit 2)",
			"read --clickhouse-dsn from this file (for secrets mounted from Kubernetes); not together with --clickhouse-dsn"} {
			if !strings.Contains(help, want) {
				t.Errorf("%s --help lacks %q:\n%s", cmd, want, help)
			}
		}
	}
}

func TestPprofIsOffByDefault(t *testing.T) {
	for _, tt := range []struct {
		args []string
		env  map[string]string
		want bool
	}{
		{nil, nil, false},
		{[]string{"--pprof"}, nil, true},
		{nil, map[string]string{"SYNCD_PPROF": "true"}, true},
		{[]string{"--pprof=false"}, map[string]string{"SYNCD_PPROF": "true"}, false},
	} {
		c, err := parse(t, CmdServe, tt.args, tt.env)
		if err != nil {
			t.Fatal(err)
		}
		if c.Pprof != tt.want {
			t.Errorf("args %v env %v: Pprof = %v, want %v", tt.args, tt.env, c.Pprof, tt.want)
		}
	}
}

// Every command takes the cluster and its quorum, from flags or the
// environment, and none is set by default.
func TestClusterSettings(t *testing.T) {
	for _, cmd := range []string{CmdMigrate, CmdServe, CmdBackfill, CmdVerify} {
		c, err := parse(t, cmd, nil, map[string]string{"SYNCD_STRIPE_API_KEY": "sk_test_x"})
		if err != nil {
			t.Fatal(err)
		}
		if c.ClickHouseCluster != "" || c.ClickHouseInsertQuorum != 0 {
			t.Errorf("%s: defaults cluster %q quorum %d", cmd, c.ClickHouseCluster, c.ClickHouseInsertQuorum)
		}
		c, err = parse(t, cmd, []string{"--clickhouse-insert-quorum", "3"},
			map[string]string{"SYNCD_STRIPE_API_KEY": "sk_test_x", "SYNCD_CLICKHOUSE_CLUSTER": "prod", "SYNCD_CLICKHOUSE_INSERT_QUORUM": "1"})
		if err != nil {
			t.Fatal(err)
		}
		if c.ClickHouseCluster != "prod" || c.ClickHouseInsertQuorum != 3 {
			t.Errorf("%s: cluster %q quorum %d, want prod and the flag's 3", cmd, c.ClickHouseCluster, c.ClickHouseInsertQuorum)
		}
	}
}
