// Package redisserver runs a throwaway redis-server for the benchmarks: on
// a free port of 127.0.0.1, with its files in a directory of the caller's,
// no persistence, and its log in that directory.
package redisserver

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ready is what redis-server logs once it takes connections.
const ready = "Ready to accept connections"

// Server is a running redis-server.
type Server struct {
	// Addr is its address, 127.0.0.1:port.
	Addr string
	// Cmd is its process, for callers that track their children.
	Cmd *exec.Cmd
	// drained is closed once its log has been read to the end, that is
	// once it has exited.
	drained chan struct{}
}

// Start runs bin (redis-server) in dir and waits, at most 10 s, until it
// takes connections. Its log is dir/redis.log. The kernel kills it if the
// caller dies without calling Stop (on Linux).
func Start(ctx context.Context, bin, dir string) (*Server, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "redis.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "no")
	cmd.Stderr = logFile
	out, err := cmd.StdoutPipe()
	if err != nil {
		logFile.Close()
		return nil, err
	}
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting redis-server: %w", err)
	}
	s := &Server{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Cmd: cmd, drained: make(chan struct{})}
	isReady := make(chan struct{})
	go func() {
		defer close(s.drained)
		defer logFile.Close()
		// the log is copied whole (redis-server blocks if nobody reads
		// it), and scanned for the ready line
		log := io.TeeReader(out, logFile)
		sc := bufio.NewScanner(log)
		for sc.Scan() {
			if strings.Contains(sc.Text(), ready) {
				close(isReady)
				break
			}
		}
		_, _ = io.Copy(io.Discard, log)
	}()
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	select {
	case <-isReady:
		return s, nil
	case <-s.drained:
		err = fmt.Errorf("redis-server exited before it was ready (see %s)", logPath)
	case <-timeout.C:
		err = fmt.Errorf("redis-server not ready after 10s (see %s)", logPath)
	case <-ctx.Done():
		err = ctx.Err()
	}
	s.Stop()
	return nil, err
}

// URL is the server's URL, database 0.
func (s *Server) URL() string { return "redis://" + s.Addr + "/0" }

// Stop kills the server (it keeps nothing) and waits for it.
func (s *Server) Stop() {
	_ = s.Cmd.Process.Kill()
	<-s.drained
	_ = s.Cmd.Wait()
}

// freePort returns a port of 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
