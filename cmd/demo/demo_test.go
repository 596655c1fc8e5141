package main

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/chtest"
)

func TestMain(m *testing.M) { chtest.Main(m) }

// The demo runs end to end twice in a row on one ClickHouse and reports zero
// drift both times: what `make demo` promises a newcomer.
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
		err := run(ctx, []string{"--dir", t.TempDir(), "--customers", "40",
			"--syncd", filepath.Join(bin, "syncd"), "--emulator", filepath.Join(bin, "emulator")}, getenv, &out, &out)
		cancel()
		if err != nil {
			t.Fatalf("run %d: %v\n%s", i+1, err, out.String())
		}
		report := out.String()
		for _, want := range []string{"stripe  verify: no drift", "orb     verify: no drift", "webhook events received", "five largest customer credit balances", "SIGTERM, drained, exit 0"} {
			if !strings.Contains(report, want) {
				t.Errorf("run %d: report lacks %q:\n%s", i+1, want, report)
			}
		}
	}
}
