package chserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"
)

// Cluster is a ZooKeeper and Shards × Replicas ClickHouse servers that know
// each other as the cluster Name: remote_servers, the {shard} and {replica}
// macros, and ON CLUSTER DDL (distributed_ddl) configured, as a production
// cluster of ReplicatedMergeTree tables has them.
type Cluster struct {
	Name     string
	Shards   int
	Replicas int
	ZK       *ZooKeeper
	// Servers in shard order, the replicas of one shard together:
	// Servers[shard*Replicas+replica].
	Servers []*Server
}

// DDLPath is the ZooKeeper node the cluster's ON CLUSTER queries queue in.
const DDLPath = "/clickhouse/task_queue/ddl"

// StartCluster starts a private cluster named name in dir: a ZooKeeper and
// shards × replicas servers of EngineServer (the only engine that takes a
// configuration file) on free loopback ports. On error nothing is left
// running.
func StartCluster(ctx context.Context, dir, name string, shards, replicas int) (*Cluster, error) {
	if shards < 1 || replicas < 1 {
		return nil, fmt.Errorf("cluster: %d shards × %d replicas", shards, replicas)
	}
	c := &Cluster{Name: name, Shards: shards, Replicas: replicas,
		ZK: &ZooKeeper{Dir: filepath.Join(dir, "zookeeper")}}
	if err := c.ZK.Start(ctx); err != nil {
		return nil, err
	}
	n := shards * replicas
	ports, err := freePortList(3 * n)
	if err != nil {
		c.Stop()
		return nil, fmt.Errorf("cluster: find free ports: %w", err)
	}
	for i := range n {
		c.Servers = append(c.Servers, &Server{
			Dir:    filepath.Join(dir, fmt.Sprintf("s%dr%d", i/replicas+1, i%replicas+1)),
			Engine: EngineServer, TCPPort: ports[3*i], HTTPPort: ports[3*i+1], InterserverPort: ports[3*i+2],
		})
	}
	for i, s := range c.Servers {
		s.ExtraConfig = c.config(i)
	}
	// Concurrently: each server takes seconds to start.
	errs := make(chan error, n)
	for _, s := range c.Servers {
		go func() { errs <- s.Start(ctx) }()
	}
	var all []error
	for range n {
		all = append(all, <-errs)
	}
	if err := errors.Join(all...); err != nil {
		c.Stop()
		return nil, err
	}
	if err := c.warmUp(ctx); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// warmUp waits until every server sees the ON CLUSTER queue in ZooKeeper,
// then runs one ON CLUSTER query from each, restarting a server that
// crashes on it. ClickHouse 18.16 crashes (a null pointer in its ZooKeeper
// client) on an ON CLUSTER query sent before the queue's node exists, which
// the first server's DDL worker creates a moment after it is ready: every
// such query the tests sent right after start crashed a server; after the
// wait, none did.
func (c *Cluster) warmUp(ctx context.Context) error {
	const attempts = 5
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	// First until each server sees the DDL queue, which the first
	// server's DDL worker to start creates.
	for _, s := range c.Servers {
		for {
			err := s.query(ctx, client, "SELECT 1 FROM system.zookeeper WHERE path = '"+DDLPath+"' LIMIT 0")
			if err == nil {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("cluster %s: the DDL queue: %w", c.Name, err)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	for i, s := range c.Servers {
		var err error
		for attempt := 1; attempt <= attempts; attempt++ {
			if err = s.query(ctx, client, "CREATE DATABASE IF NOT EXISTS default ON CLUSTER "+c.Name); err == nil {
				break
			}
			time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
			for _, s := range c.Servers {
				if gone, _ := s.Exited(); gone {
					_ = s.Stop()
					if err := s.Start(ctx); err != nil {
						return err
					}
				}
			}
		}
		if err != nil {
			return fmt.Errorf("cluster %s: an ON CLUSTER query from server %d: %w", c.Name, i, err)
		}
	}
	return nil
}

// config is server i's part of the configuration: the cluster, ZooKeeper,
// its macros and the DDL queue.
func (c *Cluster) config(i int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "    <remote_servers>\n        <%s>\n", c.Name)
	for sh := range c.Shards {
		// internal_replication: an INSERT through a Distributed table goes
		// to one replica of each shard, and replication does the rest.
		b.WriteString("            <shard>\n                <internal_replication>true</internal_replication>\n")
		for r := range c.Replicas {
			fmt.Fprintf(&b, "                <replica><host>127.0.0.1</host><port>%d</port></replica>\n",
				c.Servers[sh*c.Replicas+r].TCPPort)
		}
		b.WriteString("            </shard>\n")
	}
	fmt.Fprintf(&b, "        </%s>\n    </remote_servers>\n", c.Name)
	// A short session: a server that dies is seen gone within seconds.
	fmt.Fprintf(&b, "    <zookeeper>\n        <node><host>127.0.0.1</host><port>%d</port></node>\n"+
		"        <session_timeout_ms>4000</session_timeout_ms>\n    </zookeeper>\n", c.ZK.Port)
	fmt.Fprintf(&b, "    <macros>\n        <cluster>%s</cluster>\n        <shard>%d</shard>\n        <replica>s%dr%d</replica>\n    </macros>\n",
		c.Name, i/c.Replicas+1, i/c.Replicas+1, i%c.Replicas+1)
	fmt.Fprintf(&b, "    <distributed_ddl>\n        <path>%s</path>\n    </distributed_ddl>\n", DDLPath)
	return b.String()
}

// Stop stops every server, then ZooKeeper, and returns what failed.
func (c *Cluster) Stop() error {
	var errs []error
	for _, s := range c.Servers {
		errs = append(errs, s.Stop())
	}
	return errors.Join(append(errs, c.ZK.Stop())...)
}

// Exited reports the first process of the cluster that has exited on its
// own, or "" when all run.
func (c *Cluster) Exited() string {
	for _, s := range c.Servers {
		if gone, why := s.Exited(); gone {
			return fmt.Sprintf("clickhouse server in %s exited (%v)%s", s.Dir, why, s.LogTail())
		}
	}
	return ""
}

// freePortList asks the kernel for n distinct free loopback ports.
func freePortList(n int) ([]int, error) {
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close() // held until all are chosen, so they differ
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}
