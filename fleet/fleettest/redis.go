// Package fleettest runs a real redis-server for tests: on a free port,
// in the test's temp dir, without persistence. A test that needs one is
// skipped, saying why, when redis-server is missing, and fails instead
// when BIFROST_REQUIRE_REDIS=1 (CI sets it).
package fleettest

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
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
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	s := &Server{t: t, port: port, args: append([]string{
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", t.TempDir(),
		"--save", "", "--appendonly", "no",
	}, extra...)}
	s.Start()
	t.Cleanup(s.Stop)
	return s
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
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "Ready to accept connections") {
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
