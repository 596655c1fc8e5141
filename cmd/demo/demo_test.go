package main

import (
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/syncd/syncd/internal/chtest"
)

func TestMain(m *testing.M) { chtest.Main(m) }

// The demo runs end to end twice in a row on one ClickHouse and reports zero
// drift both times: what `make demo` promises a newcomer. The second run's
// Stripe webhooks are thin events, as a thin-event destination sends them.
func TestDemoTwiceInARow(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries and runs the whole job")
	}
	dsn := chtest.DSN(t)
	bin := t.TempDir()
	for _, pkg := range []string{"syncd", "emulator"} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(bin, pkg), "../"+pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, out)
		}
	}
	getenv := func(k string) string {
		if k == "SYNCD_CLICKHOUSE_DSN" {
			return dsn
		}
		return ""
	}
	for i := range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		var out strings.Builder
		args := []string{"--dir", t.TempDir(), "--customers", "40",
			"--syncd", filepath.Join(bin, "syncd"), "--emulator", filepath.Join(bin, "emulator")}
		format := "snapshot events"
		if i == 1 {
			args, format = append(args, "--stripe-thin-events"), "thin events"
		}
		err := run(ctx, args, getenv, &out, &out)
		cancel()
		if err != nil {
			t.Fatalf("run %d: %v\n%s", i+1, err, out.String())
		}
		report := out.String()
		for _, want := range []string{"stripe  verify: no drift", "orb     verify: no drift", "webhook events received", "five largest customer credit balances", "SIGTERM, drained, exit 0", format} {
			if !strings.Contains(report, want) {
				t.Errorf("run %d: report lacks %q:\n%s", i+1, want, report)
			}
		}
		checkBalances(t, report)
	}
}

var balanceLine = regexp.MustCompile(`^  (?:stripe|orb) +\S+ +(-?[0-9]+(?:\.[0-9]+)?) ([A-Z]{3})$`)

// checkBalances checks the report's five balances print as money does
// (the currency's digits), not as a ClickHouse release renders decimals.
func checkBalances(t *testing.T, report string) {
	t.Helper()
	_, after, _ := strings.Cut(report, "five largest customer credit balances")
	lines := strings.Split(after, "\n")[1:]
	n := 0
	for _, l := range lines {
		if l == "" {
			break
		}
		m := balanceLine.FindStringSubmatch(l)
		if m == nil {
			t.Errorf("balance line %q is not provider, customer, amount, currency", l)
			continue
		}
		if want := money(decimal.RequireFromString(m[1]), m[2]); m[1] != want {
			t.Errorf("balance line %q: amount %s, want %s", l, m[1], want)
		}
		n++
	}
	if n == 0 {
		t.Errorf("no balance lines in the report:\n%s", report)
	}
}
