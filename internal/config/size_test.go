package config

import (
	"errors"
	"strings"
	"testing"
)

// TestMemoryBudgets: the byte budgets have their defaults per command, take
// sizes with units from a flag or its variable, and refuse anything else.
func TestMemoryBudgets(t *testing.T) {
	c, err := parse(t, CmdServe, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.QueueBytes != 64<<20 || c.WebhookBodyBytes != 32<<20 {
		t.Errorf("serve defaults: --queue-bytes %d, --webhook-body-bytes %d", c.QueueBytes, c.WebhookBodyBytes)
	}
	c, err = parse(t, CmdBackfill, []string{"--stripe-api-key", "sk_test_x"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.QueueBytes != 256<<20 {
		t.Errorf("backfill default --queue-bytes %d", c.QueueBytes)
	}

	for in, want := range map[string]int64{
		"1048576": 1 << 20, "64MiB": 64 << 20, "64Mi": 64 << 20, "2GiB": 2 << 30, "512KiB": 512 << 10,
		"100MB": 100e6, "1 GB": 1e9, "7B": 7,
	} {
		c, err := parse(t, CmdServe, []string{"--queue-bytes", in}, map[string]string{"SYNCD_WEBHOOK_BODY_BYTES": in})
		if err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		if c.QueueBytes != want || c.WebhookBodyBytes != want {
			t.Errorf("%q: flag %d, variable %d, want %d", in, c.QueueBytes, c.WebhookBodyBytes, want)
		}
	}
	for _, in := range []string{"", "-1", "64 MiB of it", "1.5GiB", "64m", "1e9", "99999999999GiB"} {
		_, err := parse(t, CmdServe, []string{"--queue-bytes=" + in}, nil)
		var ue *UsageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), "queue-bytes") {
			t.Errorf("--queue-bytes=%q: %v, want a usage error naming the flag", in, err)
		}
	}
	if _, err := parse(t, CmdMigrate, []string{"--queue-bytes=1MiB"}, nil); err == nil {
		t.Error("migrate takes no --queue-bytes")
	}
}
