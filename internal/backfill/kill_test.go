package backfill

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/stripeemu"
)

// TestKillNineResumes runs the syncd binary's backfill, kills it with
// SIGKILL once a quarter of the customers are checkpointed (it lands
// mid-way: more finish while the poll runs), and reruns it:
// the rerun exits 0, verify finds no drift, the warehouse equals the
// emulator's truth, and no customer finished before the kill is read again.
func TestKillNineResumes(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds and runs the syncd binary")
	}
	bin := filepath.Join(t.TempDir(), "syncd")
	_, here, _, _ := runtime.Caller(0)
	build := exec.Command("go", "build", "-o", bin, "./cmd/syncd")
	build.Dir = filepath.Join(filepath.Dir(here), "..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/syncd: %v\n%s", err, out)
	}
	w := newWarehouse(t, 10000)
	const customers = 450
	e, url := newEmulator(t, stripeemu.Config{Seed: 21, Customers: customers, Latency: 50 * time.Millisecond})
	// The first run is held to 150 requests/s so that the kill lands
	// mid-way; the rerun and verify need no brake.
	args := func(cmd, rateLimit string) []string {
		return []string{cmd, "--clickhouse-dsn", w.dsn, "--stripe-api-url", url, "--stripe-api-key", testKey,
			"--rate-limit", rateLimit, "--log-level", "warn"}
	}
	var out bytes.Buffer
	first := exec.Command(bin, append(args("backfill", "150"), "--progress", "none")...)
	first.Stdout, first.Stderr = &out, &out
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- first.Wait() }()
	waitFor(t, 20*time.Second, "a quarter of the customers checkpointed", func() bool {
		select {
		case err := <-exited:
			t.Fatalf("backfill ended before the kill (%v):\n%s", err, out.String())
		default:
		}
		return len(doneIn(t, w)) >= customers/4
	})
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-exited
	done := doneIn(t, w)
	if len(done) >= customers {
		t.Fatalf("every customer was done before the kill: nothing left to resume")
	}
	e.ResetCounters()

	rerun := exec.Command(bin, append(args("backfill", "5000"), "--progress", "none")...)
	got, err := rerun.CombinedOutput()
	if err != nil {
		t.Fatalf("rerun after kill -9: %v\n%s", err, got)
	}
	t.Logf("killed with %d of %d customers checkpointed; rerun: %s", len(done), customers, bytes.TrimSpace(got))
	var reread []string
	for c := range done {
		if n := e.CustomerListCalls("", c); n > 0 {
			reread = append(reread, c)
		}
	}
	if len(reread) > 0 {
		t.Errorf("the rerun read %d customers finished before the kill again, e.g. %v", len(reread), firstFew(reread))
	}
	if !strings.Contains(string(got), "finished before the restart") {
		t.Errorf("the rerun's summary does not say it resumed: %s", got)
	}

	verify := exec.Command(bin, args("verify", "5000")...)
	rep, err := verify.CombinedOutput()
	if err != nil {
		t.Fatalf("verify after the rerun: %v\n%s", err, rep)
	}
	if !strings.Contains(string(rep), "no drift") {
		t.Fatalf("verify: %s", rep)
	}
	assertMirrors(t, w.conn, e.Truth())
}
