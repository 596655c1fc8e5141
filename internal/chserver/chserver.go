// Package chserver runs a private ClickHouse server in a directory of its own,
// on free loopback ports: for tests, and for a local demo.
package chserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Server is a ClickHouse server process whose configuration, data and logs
// live in Dir.
type Server struct {
	// Dir holds the configuration, the data (Dir/data) and the logs (Dir/log).
	Dir string
	// TCPPort (native protocol) and HTTPPort listen on 127.0.0.1. Zero means
	// a free port is chosen by Start.
	TCPPort, HTTPPort int
	// Engine is the ClickHouse to run; empty means the one EnvEngine names
	// in this process's environment (EngineServer when it is unset).
	Engine Engine
	// Detach lets the server outlive this process. Without it, on Linux, the
	// server is killed when this process dies, so a crashed test binary
	// leaves no orphan behind.
	Detach bool
	// InterserverPort, if set, is the port replicas fetch parts from each
	// other on (interserver_http_port); a replicated server needs one.
	InterserverPort int
	// ExtraConfig is XML put inside the configuration's root element as it
	// is: remote_servers, zookeeper, macros and the like (StartCluster).
	ExtraConfig string

	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
	err    error         // cmd.Wait's result, set before exited is closed
	logf   *os.File
}

// installHint is what to do when no server binary can be found.
const installHint = "install it with `apt-get install -y clickhouse-server` (Debian/Ubuntu), " +
	"or put a `clickhouse` binary from https://clickhouse.com/docs/install on PATH"

// stopGrace is how long Stop waits after SIGTERM before it kills the server.
const stopGrace = 10 * time.Second

// readyTimeout bounds the wait for a starting server when ctx has no earlier deadline.
const readyTimeout = time.Minute

// Start launches a private server in dir (created if missing; its data is
// reused if it exists) on free loopback ports, waits until it answers on both
// ports, and returns it. ctx bounds the wait, not the server's life: call Stop.
func Start(ctx context.Context, dir string) (*Server, error) {
	s := &Server{Dir: dir}
	if err := s.Start(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Start launches the server described by s and waits until it is ready.
// Ports left at zero are chosen now and stored in s.
func (s *Server) Start(ctx context.Context) error {
	if s.cmd != nil {
		return errors.New("clickhouse server: already started")
	}
	if s.Dir == "" {
		return errors.New("clickhouse server: no directory given")
	}
	dir, err := filepath.Abs(s.Dir)
	if err != nil {
		return fmt.Errorf("clickhouse server: %w", err)
	}
	s.Dir = dir
	if s.Engine == "" {
		if s.Engine, err = EngineFromEnv(os.Getenv); err != nil {
			return fmt.Errorf("clickhouse server: %w", err)
		}
	}
	var bin string
	var args []string
	switch s.Engine {
	case EngineServer:
		bin, args, err = FindBinary()
	case EngineChDB:
		bin, err = findChDB(os.Getenv)
	default:
		err = fmt.Errorf("unknown engine %q", s.Engine)
	}
	if err != nil {
		return err
	}
	// A free port found now may be taken before the server binds it; when
	// the ports are ours to choose, try again with others.
	pick := s.TCPPort == 0 && s.HTTPPort == 0
	for attempt := 1; ; attempt++ {
		if pick {
			if s.TCPPort, s.HTTPPort, err = freePorts(); err != nil {
				return fmt.Errorf("clickhouse server: find free ports: %w", err)
			}
		}
		err = s.launch(ctx, bin, args)
		if err == nil {
			return nil
		}
		if !pick || attempt == 3 || ctx.Err() != nil || !strings.Contains(err.Error(), "already in use") {
			return err
		}
	}
}

// launch writes the configuration, starts bin and waits until it answers.
func (s *Server) launch(ctx context.Context, bin string, args []string) error {
	for _, d := range []string{"data", "tmp", "log", "user_files", "format_schemas"} {
		if err := os.MkdirAll(filepath.Join(s.Dir, d), 0o755); err != nil {
			return fmt.Errorf("clickhouse server: %w", err)
		}
	}
	if s.Engine == EngineChDB {
		args = append(slices.Clip(args), s.chdbArgs()...)
	} else {
		config := filepath.Join(s.Dir, "config.xml")
		if err := os.WriteFile(config, []byte(s.config()), 0o644); err != nil {
			return fmt.Errorf("clickhouse server: write config: %w", err)
		}
		if err := os.WriteFile(filepath.Join(s.Dir, "users.xml"), []byte(usersConfig), 0o644); err != nil {
			return fmt.Errorf("clickhouse server: write users config: %w", err)
		}
		args = append(slices.Clip(args), "--config-file="+config)
	}
	logf, err := os.OpenFile(filepath.Join(s.Dir, "log", "stderr.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("clickhouse server: %w", err)
	}

	cmd := exec.Command(bin, args...)
	cmd.Dir = s.Dir
	if s.Engine == EngineChDB {
		// clickhouse-local reads ./config.xml when it finds one: not the
		// 18.16 server's, should this directory have held one.
		cmd.Dir = filepath.Join(s.Dir, "data")
	}
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = sysProcAttr(s.Detach)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("clickhouse server: start %s: %w", bin, err)
	}
	s.cmd, s.logf, s.exited, s.err = cmd, logf, make(chan struct{}), nil
	go func(exited chan struct{}) {
		s.err = cmd.Wait()
		close(exited)
	}(s.exited)

	if err := s.waitReady(ctx); err != nil {
		s.Stop()
		return fmt.Errorf("clickhouse server in %s (%s, tcp %d, http %d): %w%s",
			s.Dir, bin, s.TCPPort, s.HTTPPort, err, s.logTail())
	}
	return nil
}

// waitReady polls until the server accepts native connections and answers
// SELECT 1 over HTTP, or the server exits, or the wait times out.
func (s *Server) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	// No keep-alive: an idle connection would delay the server's shutdown.
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var last error
	for {
		if last = s.ping(ctx, client); last == nil {
			return nil
		}
		select {
		case <-s.exited:
			return fmt.Errorf("exited before it was ready: %v", s.err)
		case <-ctx.Done():
			return fmt.Errorf("not ready: %w (last: %v)", ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *Server) ping(ctx context.Context, client *http.Client) error {
	d := net.Dialer{Timeout: time.Second}
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(s.TCPPort)))
	if err != nil {
		return err
	}
	c.Close()
	base := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(s.HTTPPort))
	for _, q := range []struct{ path, want string }{
		{"/ping", "Ok.\n"},
		{"/?query=SELECT%201", "1\n"},
	} {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+q.path, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK || string(body) != q.want {
			return fmt.Errorf("GET %s: %s: %q", q.path, resp.Status, body)
		}
	}
	return nil
}

// query runs q over HTTP and returns the server's error, if any.
func (s *Server) query(ctx context.Context, client *http.Client, q string) error {
	base := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(s.HTTPPort)) + "/"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base, strings.NewReader(q))
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", q, resp.Status, bytes.TrimSpace(body))
	}
	return nil
}

// DSN returns the clickhouse-go v2 DSN of database on s.
func (s *Server) DSN(database string) string {
	return fmt.Sprintf("clickhouse://127.0.0.1:%d/%s", s.TCPPort, database)
}

// Stop sends SIGTERM and waits for the server to exit, killing it when it
// has not exited after 10s. Stopping a stopped server does nothing.
func (s *Server) Stop() error {
	if s.cmd == nil {
		return nil
	}
	defer func() {
		s.logf.Close()
		s.cmd, s.logf = nil, nil
	}()
	select {
	case <-s.exited:
		return nil // it had already exited; launch reports why
	default:
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop clickhouse server: %w", err)
	}
	select {
	case <-s.exited:
		return nil
	case <-time.After(stopGrace):
	}
	s.cmd.Process.Kill()
	<-s.exited
	return fmt.Errorf("stop clickhouse server in %s: killed after %s without exiting on SIGTERM", s.Dir, stopGrace)
}

// Exited reports whether the server process has exited on its own, and
// how (cmd.Wait's error, which names a signal).
func (s *Server) Exited() (bool, error) {
	if s.cmd == nil {
		return false, nil
	}
	select {
	case <-s.exited:
		return true, s.err
	default:
		return false, nil
	}
}

// LogTail is the end of the server's logs, for an error message.
func (s *Server) LogTail() string { return s.logTail() }

// Restart stops the server and starts it again on the same ports and data
// directory, and waits until it is ready.
func (s *Server) Restart(ctx context.Context) error {
	if err := s.Stop(); err != nil {
		return err
	}
	return s.Start(ctx)
}

// FindBinary finds a ClickHouse server: Debian's /usr/sbin/clickhouse-server,
// clickhouse-server on PATH, or the single `clickhouse` binary on PATH. args
// come before the server's own flags.
func FindBinary() (path string, args []string, err error) {
	return findBinary(os.Stat, exec.LookPath)
}

func findBinary(stat func(string) (os.FileInfo, error), lookPath func(string) (string, error)) (string, []string, error) {
	const debian = "/usr/sbin/clickhouse-server"
	if fi, err := stat(debian); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
		return debian, nil, nil
	}
	if p, err := lookPath("clickhouse-server"); err == nil {
		return p, nil, nil
	}
	if p, err := lookPath("clickhouse"); err == nil {
		return p, []string{"server"}, nil
	}
	return "", nil, fmt.Errorf("clickhouse-server not found (looked for /usr/sbin/clickhouse-server, "+
		"and clickhouse-server or clickhouse on PATH): %s", installHint)
}

// freePorts asks the kernel for two free loopback ports.
func freePorts() (tcp, http int, err error) {
	var ports [2]int
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, 0, err
		}
		defer l.Close() // held until both are chosen, so they differ
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports[0], ports[1], nil
}

// logTail returns the end of the server's logs, for an error message.
func (s *Server) logTail() string {
	var b strings.Builder
	for _, name := range []string{"stderr.log", "clickhouse-server.err.log"} {
		data, err := os.ReadFile(filepath.Join(s.Dir, "log", name))
		if err != nil || len(bytes.TrimSpace(data)) == 0 {
			continue
		}
		if len(data) > 2000 {
			data = data[len(data)-2000:]
		}
		fmt.Fprintf(&b, "\n--- %s ---\n%s", name, bytes.TrimSpace(data))
	}
	return b.String()
}

func (s *Server) config() string {
	p := func(elem ...string) string { return xmlEscape(filepath.Join(append([]string{s.Dir}, elem...)...)) }
	// path and tmp_path must end in a slash.
	return fmt.Sprintf(`<?xml version="1.0"?>
<!-- Written by syncd's chserver on every start; edits are overwritten. -->
<yandex>
    <logger>
        <level>warning</level>
        <log>%s</log>
        <errorlog>%s</errorlog>
        <size>10M</size>
        <count>2</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>%d</tcp_port>
    <http_port>%d</http_port>
    <path>%s/</path>
    <tmp_path>%s/</tmp_path>
    <user_files_path>%s/</user_files_path>
    <format_schema_path>%s/</format_schema_path>
    <mark_cache_size>268435456</mark_cache_size>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
    <users_config>%s</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mlock_executable>false</mlock_executable>
    <!-- Seconds a stopping server waits for open connections: keep Stop quick. -->
    <shutdown_wait_unfinished>1</shutdown_wait_unfinished>
%s</yandex>
`, p("log", "clickhouse-server.log"), p("log", "clickhouse-server.err.log"),
		s.TCPPort, s.HTTPPort, p("data"), p("tmp"), p("user_files"), p("format_schemas"), p("users.xml"), s.extraConfig())
}

// extraConfig is the interserver port's settings and ExtraConfig.
func (s *Server) extraConfig() string {
	var b strings.Builder
	if s.InterserverPort != 0 {
		fmt.Fprintf(&b, "    <interserver_http_host>127.0.0.1</interserver_http_host>\n    <interserver_http_port>%d</interserver_http_port>\n", s.InterserverPort)
	}
	b.WriteString(s.ExtraConfig)
	return b.String()
}

func xmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

const usersConfig = `<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
            <!-- An idle native connection notices a stopping server only this
                 often (seconds); the default of 10 holds Stop up as long. -->
            <poll_interval>1</poll_interval>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>::/0</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
`
