// Command syncd mirrors customer balance transactions from Stripe and Orb
// into ClickHouse. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/syncd/syncd/internal/config"
	"github.com/syncd/syncd/internal/version"
)

// env carries what a command reads from its surroundings, so tests can run
// the whole program in-process.
type env struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	now            func() time.Time
}

type command struct {
	summary string
	run     func(ctx context.Context, cfg *config.Config, log *zap.Logger, e env) error
}

// commands is the table of subcommands; version takes no configuration.
var commands = map[string]command{
	config.CmdMigrate:  {"apply schema migrations (idempotent; creates the database)", runMigrate},
	config.CmdBackfill: {"page the source API into ClickHouse; resumable, incremental by default", runBackfill},
	config.CmdVerify:   {"compare ClickHouse with the source API and print the drift", runVerify},
	config.CmdServe:    {"receive webhooks, refresh dirty customers, write to ClickHouse; drains on SIGTERM", runServe},
}

// exitError carries a process exit code other than 1.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

func exitCode(err error, stderr io.Writer) int {
	if err == nil || errors.Is(err, config.ErrHelp) {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintln(stderr, "syncd:", ee.err)
		}
		return ee.code
	}
	fmt.Fprintln(stderr, "syncd:", err)
	var ue *config.UsageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return &exitError{code: 2}
		}
		return nil
	}
	name, rest := args[0], args[1:]
	if name == "version" {
		fmt.Fprintln(stdout, version.String())
		return nil
	}
	cmd, ok := commands[name]
	if !ok {
		usage(stderr)
		return &config.UsageError{Err: fmt.Errorf("unknown command %q", name)}
	}
	e := env{stdout: stdout, stderr: stderr, getenv: getenv, now: time.Now}
	cfg, err := config.Parse(name, rest, getenv, stderr, e.now())
	if err != nil {
		return err
	}
	log, err := newLogger(cfg, stderr)
	if err != nil {
		return &config.UsageError{Err: err}
	}
	defer func() { _ = log.Sync() }()
	return cmd.run(ctx, cfg, log, e)
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: syncd <command> [flags]   (every command takes --help)")
	fmt.Fprintln(w, "\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-9s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(w, "  %-9s %s\n", "version", "print version, commit and Go version")
	fmt.Fprintln(w, "\nEvery flag has an environment variable: --clickhouse-dsn is SYNCD_CLICKHOUSE_DSN;")
	fmt.Fprintln(w, "a flag wins over its variable. A secret and its -file form (--clickhouse-dsn-file)")
	fmt.Fprintln(w, "given together, as flags or variables, are a usage error (exit 2).")
}

func newLogger(cfg *config.Config, stderr io.Writer) (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(cfg.LogLevel)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	var enc zapcore.Encoder
	if cfg.LogFormat == "console" {
		ec := zap.NewDevelopmentEncoderConfig()
		ec.EncodeTime = zapcore.ISO8601TimeEncoder
		enc = zapcore.NewConsoleEncoder(ec)
	} else {
		ec := zap.NewProductionEncoderConfig()
		ec.EncodeTime = zapcore.RFC3339NanoTimeEncoder
		enc = zapcore.NewJSONEncoder(ec)
	}
	core := zapcore.NewCore(enc, zapcore.AddSync(stderr), level)
	return zap.New(core).With(zap.String("command", cfg.Command)), nil
}
