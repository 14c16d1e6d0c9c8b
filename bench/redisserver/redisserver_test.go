package redisserver

import (
	"bufio"
	"context"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// A started server answers PING on its address, and is gone after Stop.
func TestStartAnswersAndStopEnds(t *testing.T) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("BIFROST_REQUIRE_REDIS") != "" {
			t.Fatal("redis-server not found, and BIFROST_REQUIRE_REDIS is set")
		}
		t.Skip("redis-server not found in PATH: nothing to start")
	}
	s, err := Start(context.Background(), bin, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(s.URL(), "redis://127.0.0.1:") || !strings.HasSuffix(s.URL(), "/0") {
		t.Errorf("URL %q", s.URL())
	}
	c, err := net.DialTimeout("tcp", s.Addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if err != nil || line != "+PONG\r\n" {
		t.Fatalf("PING: %q, %v", line, err)
	}
	s.Stop()
	if c, err := net.DialTimeout("tcp", s.Addr, time.Second); err == nil {
		c.Close()
		t.Fatal("the server still takes connections after Stop")
	}
}

// A binary that is not redis-server fails Start with an error, no hang.
func TestStartReportsAServerThatNeverGetsReady(t *testing.T) {
	_, err := Start(context.Background(), "/bin/true", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "exited before it was ready") {
		t.Fatalf("error %v, want one saying it exited before it was ready", err)
	}
}
