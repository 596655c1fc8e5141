package chserver

import (
	"strings"
	"testing"
)

// Each server's part of the configuration names the cluster's servers by
// shard, and gives it its own shard and replica macros.
func TestClusterConfig(t *testing.T) {
	c := &Cluster{Name: "two", Shards: 2, Replicas: 2, ZK: &ZooKeeper{Port: 2181}}
	for i := range 4 {
		c.Servers = append(c.Servers, &Server{TCPPort: 9001 + i})
	}
	for i, want := range []struct{ shard, replica string }{{"1", "s1r1"}, {"1", "s1r2"}, {"2", "s2r1"}, {"2", "s2r2"}} {
		cfg := c.config(i)
		for _, frag := range []string{
			"<shard>" + want.shard + "</shard>", "<replica>" + want.replica + "</replica>",
			"<port>2181</port>", "<path>" + DDLPath + "</path>", "<two>",
		} {
			if !strings.Contains(cfg, frag) {
				t.Errorf("server %d: no %s in\n%s", i, frag, cfg)
			}
		}
		shards := strings.Split(cfg, "<shard>\n")
		if len(shards) != 3 || !strings.Contains(shards[1], "9001") || !strings.Contains(shards[1], "9002") ||
			!strings.Contains(shards[2], "9003") || !strings.Contains(shards[2], "9004") {
			t.Errorf("server %d: remote_servers does not group servers by shard:\n%s", i, cfg)
		}
	}
}
