package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// redisReady is what redis-server logs once it takes connections.
const redisReady = "Ready to accept connections"

// redisServer is a redis-server the suite runs as the store of the happy
// path's fleet variant.
type redisServer struct {
	cmd   *exec.Cmd
	procs *procSet
	addr  string
	// drained is closed once the server's log has been read to its end,
	// that is, once it has exited.
	drained chan struct{}
}

// startRedis runs bin (redis-server) on a free port of 127.0.0.1 with its
// files in dir and no persistence, and waits until it takes connections.
// Its log goes to dir/redis.log.
func startRedis(ctx context.Context, procs *procSet, bin, dir string) (*redisServer, error) {
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
	procs.add(cmd)
	r := &redisServer{cmd: cmd, procs: procs, addr: fmt.Sprintf("127.0.0.1:%d", port), drained: make(chan struct{})}
	ready := make(chan struct{})
	go func() {
		defer close(r.drained)
		defer logFile.Close()
		// the log is copied whole (redis-server blocks if nobody reads
		// it), and scanned for the ready line
		log := io.TeeReader(out, logFile)
		sc := bufio.NewScanner(log)
		for sc.Scan() {
			if strings.Contains(sc.Text(), redisReady) {
				close(ready)
				break
			}
		}
		_, _ = io.Copy(io.Discard, log)
	}()
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	select {
	case <-ready:
		return r, nil
	case <-r.drained:
		err = fmt.Errorf("redis-server exited before it was ready (see %s)", logPath)
	case <-timeout.C:
		err = fmt.Errorf("redis-server not ready after 10s (see %s)", logPath)
	case <-ctx.Done():
		err = ctx.Err()
	}
	r.stop()
	return nil, err
}

// url is the server's URL for the fleet option, database 0.
func (r *redisServer) url() string { return "redis://" + r.addr + "/0" }

// stop kills the server (it keeps nothing) and waits for it.
func (r *redisServer) stop() {
	_ = r.cmd.Process.Kill()
	<-r.drained
	_ = r.cmd.Wait()
	r.procs.remove(r.cmd)
}
