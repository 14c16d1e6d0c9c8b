// Package fleettest runs a real redis-server for tests: on a free port,
// in the test's temp dir, without persistence. A test that needs one is
// skipped, saying why, when redis-server is missing, and fails instead
// when BIFROST_REQUIRE_REDIS=1 (CI sets it).
package fleettest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is a redis-server of one test: on a free port, in the
// test's temp dir, without persistence.
type Server struct {
	t    testing.TB
	port int
	args []string
	cmd  *exec.Cmd
	// ready is the line of the server's log that says it serves; empty:
	// "Ready to accept connections".
	ready string
}

// redisPath is where the tests find redis-server.
const redisPath = "/usr/bin/redis-server"

// Need skips the test when redis-server is missing, saying why,
// or fails it when BIFROST_REQUIRE_REDIS=1 (CI sets it).
func Need(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(redisPath); err != nil {
		if os.Getenv("BIFROST_REQUIRE_REDIS") == "1" {
			t.Fatalf("redis-server is required (BIFROST_REQUIRE_REDIS=1) and missing: %v", err)
		}
		t.Skipf("skipped: %s is missing (apt-get install redis-server); set BIFROST_REQUIRE_REDIS=1 to fail instead", redisPath)
	}
}

// Start starts a redis-server with extra arguments (e.g.
// "--requirepass", "pw") and stops it when the test ends.
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	Need(t)
	port := freePort(t)
	s := &Server{t: t, port: port, args: append([]string{
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", t.TempDir(),
		"--save", "", "--appendonly", "no",
	}, extra...)}
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// freePort returns a port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// StartSentinel starts a Sentinel (redis-server in sentinel mode) that
// monitors master under the name masterName, with masterPassword when
// the master requires one, and stops it when the test ends. The
// sentinel answers for the master once it returns.
func StartSentinel(t testing.TB, master *Server, masterName, masterPassword string) *Server {
	t.Helper()
	Need(t)
	port := freePort(t)
	dir := t.TempDir()
	conf := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor %s 127.0.0.1 %d 1\n", port, dir, masterName, master.Port())
	if masterPassword != "" {
		conf += fmt.Sprintf("sentinel auth-pass %s %s\n", masterName, masterPassword)
	}
	path := filepath.Join(dir, "sentinel.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &Server{t: t, port: port, args: []string{path, "--sentinel"}, ready: "+monitor master"}
	s.Start()
	t.Cleanup(s.Stop)
	c := redis.NewSentinelClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port)})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		addr, err := c.GetMasterAddrByName(ctx, masterName).Result()
		cancel()
		if err == nil && len(addr) == 2 && addr[1] == strconv.Itoa(master.Port()) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sentinel does not know master %s within 10s: %v %v", masterName, addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// StartCluster starts a redis-server in cluster mode as a cluster of one
// node holding every slot, and stops it when the test ends. The cluster
// is ready (cluster_state:ok) once it returns.
func StartCluster(t testing.TB, extra ...string) *Server {
	t.Helper()
	dir := t.TempDir()
	s := Start(t, append([]string{"--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(dir, "nodes.conf")}, extra...)...)
	c := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", s.port)})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", "0", "16383").Err(); err != nil {
		t.Fatalf("cluster: adding the slots: %v", err)
	}
	for {
		info, err := c.ClusterInfo(ctx).Result()
		if err == nil && strings.Contains(info, "cluster_state:ok") {
			return s
		}
		if ctx.Err() != nil {
			t.Fatalf("the cluster is not ok within 10s: %v %s", err, info)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Start runs the server (again) on its port and waits until it answers.
func (s *Server) Start() {
	s.t.Helper()
	s.cmd = exec.Command(redisPath, s.args...)
	out, err := s.cmd.StdoutPipe()
	if err != nil {
		s.t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	marker := s.ready
	if marker == "" {
		marker = "Ready to accept connections"
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), marker) {
				close(ready)
				break
			}
		}
		for sc.Scan() {
		}
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		s.t.Fatal("redis-server did not start within 10s")
	}
}

// Stop kills the server.
func (s *Server) Stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}

// Signal sends sig to the server (SIGSTOP, SIGCONT).
func (s *Server) Signal(sig syscall.Signal) {
	s.t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.t.Fatal(err)
	}
}

// URL returns the server's URL, with a password when pw is set.
func (s *Server) URL(pw string) string {
	if pw != "" {
		return fmt.Sprintf("redis://:%s@127.0.0.1:%d/0", pw, s.port)
	}
	return fmt.Sprintf("redis://127.0.0.1:%d/0", s.port)
}

// Client returns a plain client of the server.
func (s *Server) Client(pw string) *redis.Client {
	s.t.Helper()
	opt, err := redis.ParseURL(s.URL(pw))
	if err != nil {
		s.t.Fatal(err)
	}
	c := redis.NewClient(opt)
	s.t.Cleanup(func() { _ = c.Close() })
	return c
}

// Port returns the server's port.
func (s *Server) Port() int { return s.port }
