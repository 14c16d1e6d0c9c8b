package fleet

import (
	"bufio"
	"context"
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

// redisServer is a redis-server of one test: on a free port, in the
// test's temp dir, without persistence.
type redisServer struct {
	t    testing.TB
	port int
	args []string
	cmd  *exec.Cmd
}

// redisPath is where the tests find redis-server.
const redisPath = "/usr/bin/redis-server"

// needRedis skips the test when redis-server is missing, saying why,
// or fails it when BIFROST_REQUIRE_REDIS=1 (CI sets it).
func needRedis(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(redisPath); err != nil {
		if os.Getenv("BIFROST_REQUIRE_REDIS") == "1" {
			t.Fatalf("redis-server is required (BIFROST_REQUIRE_REDIS=1) and missing: %v", err)
		}
		t.Skipf("skipped: %s is missing (apt-get install redis-server); set BIFROST_REQUIRE_REDIS=1 to fail instead", redisPath)
	}
}

// startRedis starts a redis-server with extra arguments (e.g.
// "--requirepass", "pw") and stops it when the test ends.
func startRedis(t testing.TB, extra ...string) *redisServer {
	t.Helper()
	needRedis(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	s := &redisServer{t: t, port: port, args: append([]string{
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", t.TempDir(),
		"--save", "", "--appendonly", "no",
	}, extra...)}
	s.start()
	t.Cleanup(s.stop)
	return s
}

// start runs the server (again) on its port and waits until it answers.
func (s *redisServer) start() {
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

// stop kills the server.
func (s *redisServer) stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}

// signal sends sig to the server (SIGSTOP, SIGCONT).
func (s *redisServer) signal(sig syscall.Signal) {
	s.t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.t.Fatal(err)
	}
}

// url returns the server's URL, with a password when pw is set.
func (s *redisServer) url(pw string) string {
	if pw != "" {
		return fmt.Sprintf("redis://:%s@127.0.0.1:%d/0", pw, s.port)
	}
	return fmt.Sprintf("redis://127.0.0.1:%d/0", s.port)
}

// client returns a plain client of the server.
func (s *redisServer) client(pw string) *redis.Client {
	s.t.Helper()
	opt, err := redis.ParseURL(s.url(pw))
	if err != nil {
		s.t.Fatal(err)
	}
	c := redis.NewClient(opt)
	s.t.Cleanup(func() { _ = c.Close() })
	return c
}

// eventually polls cond until it holds or within has passed.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ctx returns a context for one command of a test.
func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return c
}
