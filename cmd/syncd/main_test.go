package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSecretAndItsFileExit2: every command refuses a secret given both as a
// value and as a file, before it starts anything, with exit code 2 and a
// message naming both.
func TestSecretAndItsFileExit2(t *testing.T) {
	file := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(file, []byte("sk_test_fromfile\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"backfill", "--stripe-api-key", "sk_test_flag", "--stripe-api-key-file", file}, nil,
			"--stripe-api-key and --stripe-api-key-file are both given"},
		{[]string{"verify", "--provider", "orb", "--orb-api-key-file", file}, map[string]string{"SYNCD_ORB_API_KEY": "orb_env"},
			"SYNCD_ORB_API_KEY and --orb-api-key-file are both given"},
		{[]string{"migrate", "--clickhouse-dsn", "clickhouse://127.0.0.1:1/x"}, map[string]string{"SYNCD_CLICKHOUSE_DSN_FILE": file},
			"--clickhouse-dsn and SYNCD_CLICKHOUSE_DSN_FILE are both given"},
		{[]string{"serve", "--stripe-api-key", "sk_test_flag", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"},
			map[string]string{"SYNCD_STRIPE_WEBHOOK_SECRET": "whsec_env", "SYNCD_STRIPE_WEBHOOK_SECRET_FILE": file},
			"SYNCD_STRIPE_WEBHOOK_SECRET and SYNCD_STRIPE_WEBHOOK_SECRET_FILE are both given"},
	} {
		var stderr strings.Builder
		err := run(context.Background(), tc.args, func(k string) string { return tc.env[k] }, io.Discard, &stderr)
		if code := exitCode(err, &stderr); code != 2 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v with %v: exit %d, stderr %q; want 2 and %q", tc.args, tc.env, code, stderr.String(), tc.want)
		}
	}
}
