package main

import (
	"context"
	"net/url"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/syncd/syncd/internal/chtest"
	"github.com/syncd/syncd/internal/sink"
	"github.com/syncd/syncd/schema"
)

// Two pods running `syncd migrate` at once against a database that does not
// exist yet: both exit 0 and the schema is current. Then a third run is a
// no-op.
func TestMigrateFromTwoProcessesAtOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the syncd binary")
	}
	bin := buildSyncd(t)
	u, err := url.Parse(chtest.DSN(t))
	if err != nil {
		t.Fatal(err)
	}
	db := strings.TrimPrefix(u.Path, "/") + "_fresh" // a database nobody created
	u.Path = "/" + db
	dsn := u.String()
	var wg sync.WaitGroup
	outs := make([]string, 2)
	errs := make([]error, 2)
	for i := range outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := exec.Command(bin, "migrate", "--clickhouse-dsn", dsn).CombinedOutput()
			outs[i], errs[i] = string(out), err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("migrate %d: %v\n%s", i+1, err, outs[i])
		}
	}
	conn, err := sink.Open(context.Background(), dsn, false)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	defer conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+db)
	if err := sink.SchemaCurrent(context.Background(), conn); err != nil {
		t.Fatal(err)
	}
	migrations, _ := schema.Migrations()
	var n uint64
	if err := conn.QueryRow(context.Background(), "SELECT uniqExact(version) FROM schema_migrations").Scan(&n); err != nil || n != uint64(len(migrations)) {
		t.Fatalf("schema_migrations holds %d versions (err %v), want %d", n, err, len(migrations))
	}
	out, err := exec.Command(bin, "migrate", "--clickhouse-dsn", dsn).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "nothing to apply") {
		t.Fatalf("third migrate: %v\n%s", err, out)
	}
}
