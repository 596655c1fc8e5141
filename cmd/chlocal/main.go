// Command chlocal runs a private ClickHouse server for local use (make demo):
// it prints the server's DSN on stdout and stops the server on SIGTERM/SIGINT.
// SYNCD_TEST_CLICKHOUSE=chdb runs the ClickHouse 26.7 engine instead of the
// installed clickhouse-server; --install-chdb installs that engine.
//
//	go run ./cmd/chlocal --dir .tmp/clickhouse [--database syncd]
//	go run ./cmd/chlocal --install-chdb
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/syncd/syncd/internal/chserver"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "chlocal:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("chlocal", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", ".tmp/clickhouse", "directory for the server's config, data and logs (reused if it exists)")
	database := fs.String("database", "syncd", "database named in the printed DSN (not created)")
	install := fs.Bool("install-chdb", false, "install the ClickHouse 26.7 engine ("+chserver.ChDBPackage+") with npm and cc if it is missing, print its folder, and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if *install {
		dir, err := chserver.InstallChDB(ctx, os.Getenv, stderr)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, dir)
		return nil
	}

	startCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	// Detach: this process is the server's owner and stops it itself.
	s := &chserver.Server{Dir: *dir, Detach: true}
	if err := s.Start(startCtx); err != nil {
		return err
	}
	fmt.Fprintln(stdout, s.DSN(*database))
	fmt.Fprintf(stderr, "chlocal: ClickHouse running in %s (http port %d); stop with Ctrl-C\n", s.Dir, s.HTTPPort)
	<-ctx.Done()
	if err := s.Stop(); err != nil {
		return err
	}
	fmt.Fprintln(stderr, "chlocal: stopped")
	return nil
}
