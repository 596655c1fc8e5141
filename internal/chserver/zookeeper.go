package chserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ZooKeeper is a standalone ZooKeeper server, Debian's package `zookeeper`
// run in the foreground with its configuration and data in Dir, listening
// on 127.0.0.1:Port: the coordination a replicated ClickHouse needs.
type ZooKeeper struct {
	Dir  string
	Port int // zero: a free port is chosen by Start

	cmd    *exec.Cmd
	exited chan struct{}
	err    error
	logf   *os.File
}

// zookeeperJar is where Debian's zookeeper package puts the server; its
// manifest's Class-Path names every jar it needs.
const zookeeperJar = "/usr/share/java/zookeeper.jar"

// ZooKeeperInstallHint is what to do when no ZooKeeper can be found.
const ZooKeeperInstallHint = "install it with `apt-get install -y zookeeper` (Debian/Ubuntu; scripts/ensure-clickhouse does)"

// FindZooKeeper returns the java binary and the server jar, or an error
// saying what to install.
func FindZooKeeper() (java, jar string, err error) {
	if _, err := os.Stat(zookeeperJar); err != nil {
		return "", "", fmt.Errorf("zookeeper not found (%s is missing): %s", zookeeperJar, ZooKeeperInstallHint)
	}
	java, err = exec.LookPath("java")
	if err != nil {
		return "", "", fmt.Errorf("zookeeper needs java, which is not on PATH: %s", ZooKeeperInstallHint)
	}
	return java, zookeeperJar, nil
}

// Start writes the configuration, starts the server and waits until it
// answers the srvr command.
func (z *ZooKeeper) Start(ctx context.Context) error {
	if z.cmd != nil {
		return errors.New("zookeeper: already started")
	}
	java, jar, err := FindZooKeeper()
	if err != nil {
		return err
	}
	if z.Dir, err = filepath.Abs(z.Dir); err != nil {
		return fmt.Errorf("zookeeper: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(z.Dir, "data"), 0o755); err != nil {
		return fmt.Errorf("zookeeper: %w", err)
	}
	if z.Port == 0 {
		if z.Port, _, err = freePorts(); err != nil {
			return fmt.Errorf("zookeeper: find a free port: %w", err)
		}
	}
	// A short tick keeps session timeouts, and so a stopped replica's
	// detection, in seconds; the admin HTTP server would take port 8080.
	cfg := fmt.Sprintf("tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir=%s\nclientPort=%d\n"+
		"clientPortAddress=127.0.0.1\nmaxClientCnxns=0\nadmin.enableServer=false\n4lw.commands.whitelist=srvr\n",
		filepath.Join(z.Dir, "data"), z.Port)
	cfgPath := filepath.Join(z.Dir, "zoo.cfg")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return fmt.Errorf("zookeeper: %w", err)
	}
	logf, err := os.OpenFile(filepath.Join(z.Dir, "zookeeper.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("zookeeper: %w", err)
	}
	cmd := exec.Command(java, "-Xmx256m", "-XX:+UseSerialGC", "-cp", jar,
		"org.apache.zookeeper.server.ZooKeeperServerMain", cfgPath)
	cmd.Dir, cmd.Stdout, cmd.Stderr = z.Dir, logf, logf
	cmd.SysProcAttr = sysProcAttr(false)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("zookeeper: start %s: %w", java, err)
	}
	z.cmd, z.logf, z.exited = cmd, logf, make(chan struct{})
	go func(exited chan struct{}) {
		z.err = cmd.Wait()
		close(exited)
	}(z.exited)

	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for {
		last := z.ping(ctx)
		if last == nil {
			return nil
		}
		select {
		case <-z.exited:
			err = fmt.Errorf("exited before it was ready: %v", z.err)
		case <-ctx.Done():
			err = fmt.Errorf("not ready: %w (last: %v)", ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
			continue
		}
		z.Stop()
		return fmt.Errorf("zookeeper in %s (port %d): %w%s", z.Dir, z.Port, err, z.logTail())
	}
}

// ping asks the server for its status; a standalone server that answers is
// serving.
func (z *ZooKeeper) ping(ctx context.Context) error {
	d := net.Dialer{Timeout: time.Second}
	c, err := d.DialContext(ctx, "tcp", z.Addr())
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("srvr")); err != nil {
		return err
	}
	var buf bytes.Buffer
	_, err = buf.ReadFrom(c)
	if !strings.Contains(buf.String(), "Mode: standalone") {
		return fmt.Errorf("srvr answered %q (%v)", buf.String(), err)
	}
	return nil
}

// Addr is host:port of the client port.
func (z *ZooKeeper) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(z.Port)) }

// Stop terminates the server and waits for it. Stopping a stopped server
// does nothing.
func (z *ZooKeeper) Stop() error {
	if z.cmd == nil {
		return nil
	}
	defer func() {
		z.logf.Close()
		z.cmd, z.logf = nil, nil
	}()
	select {
	case <-z.exited:
		return nil
	default:
	}
	if err := z.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop zookeeper: %w", err)
	}
	select {
	case <-z.exited:
		return nil
	case <-time.After(stopGrace):
	}
	z.cmd.Process.Kill()
	<-z.exited
	return fmt.Errorf("stop zookeeper in %s: killed after %s without exiting on SIGTERM", z.Dir, stopGrace)
}

func (z *ZooKeeper) logTail() string {
	data, err := os.ReadFile(filepath.Join(z.Dir, "zookeeper.log"))
	if err != nil || len(bytes.TrimSpace(data)) == 0 {
		return ""
	}
	if len(data) > 2000 {
		data = data[len(data)-2000:]
	}
	return "\n--- zookeeper.log ---\n" + string(bytes.TrimSpace(data))
}
