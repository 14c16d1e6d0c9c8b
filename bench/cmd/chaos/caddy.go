package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// procSet tracks every subprocess the suite started, so that all of them
// are killed on every exit path: normal end, error and SIGINT.
type procSet struct {
	mu    sync.Mutex
	procs map[*exec.Cmd]struct{}
}

func newProcSet() *procSet { return &procSet{procs: map[*exec.Cmd]struct{}{}} }

func (ps *procSet) add(c *exec.Cmd) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.procs[c] = struct{}{}
}

func (ps *procSet) remove(c *exec.Cmd) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	delete(ps.procs, c)
}

// killAll kills every tracked process that is still running, each by its
// own id.
func (ps *procSet) killAll() {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for c := range ps.procs {
		if c.Process != nil {
			_ = c.Process.Kill()
		}
		delete(ps.procs, c)
	}
}

// buildCaddy builds ./cmd/caddy of the module at root into dir, once per
// run of the suite.
func buildCaddy(ctx context.Context, root, dir string) (string, error) {
	bin := filepath.Join(dir, "caddy")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/caddy")
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building caddy: %w", err)
	}
	return bin, nil
}

// moduleRoot returns the directory of the main module (where go.mod is).
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("finding the module root: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside a Go module: run from the repository")
	}
	return filepath.Dir(gomod), nil
}

// freePort returns a port that was free on 127.0.0.1 a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// caddyProc is one running `caddy run`.
type caddyProc struct {
	cmd        *exec.Cmd
	procs      *procSet
	dir        string
	port       int
	admin      int
	debugLog   string // the upstream-roundtrip log, "" if not kept
	stderrPath string
	done       chan struct{}
	waitErr    error
}

// proxyURL is the URL clients send their requests to.
func (c *caddyProc) proxyURL() string { return fmt.Sprintf("http://127.0.0.1:%d/", c.port) }

// adminURL is the base URL of the admin API.
func (c *caddyProc) adminURL() string { return fmt.Sprintf("http://127.0.0.1:%d", c.admin) }

// startCaddy writes caddyfile into dir and runs the binary on it. Its
// stderr goes to dir/caddy.stderr; HOME and XDG dirs point into dir so
// that nothing outside dir is written.
func startCaddy(ctx context.Context, procs *procSet, bin, dir string, cf caddyConfig) (*caddyProc, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(cf.render()), 0o644); err != nil {
		return nil, err
	}
	stderrPath := filepath.Join(dir, "caddy.stderr")
	stderr, err := os.Create(stderrPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "run", "--config", path, "--adapter", "caddyfile")
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = stderr, stderr
	cmd.Env = append(os.Environ(),
		"HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "data"), "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		stderr.Close()
		return nil, fmt.Errorf("starting caddy: %w", err)
	}
	procs.add(cmd)
	c := &caddyProc{cmd: cmd, procs: procs, dir: dir, port: cf.Port, admin: cf.Admin, debugLog: cf.DebugLog, stderrPath: stderrPath, done: make(chan struct{})}
	go func() {
		c.waitErr = cmd.Wait()
		stderr.Close()
		procs.remove(cmd)
		close(c.done)
	}()
	if err := c.waitReady(ctx, 30*time.Second); err != nil {
		c.stop()
		return nil, fmt.Errorf("%w (see %s)", err, stderrPath)
	}
	return c, nil
}

// waitReady waits until the proxy answers a GET with 200.
func (c *caddyProc) waitReady(ctx context.Context, limit time.Duration) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(limit)
	for {
		select {
		case <-c.done:
			return fmt.Errorf("caddy exited: %v", c.waitErr)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if resp, err := client.Get(c.proxyURL()); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("caddy not ready after %s", limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends Caddy: SIGINT for a graceful stop, SIGKILL if it has not
// exited after 5 s.
func (c *caddyProc) stop() {
	select {
	case <-c.done:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// caddyConfig is everything a Caddyfile of the suite depends on.
type caddyConfig struct {
	Port, Admin int
	// Dir holds Caddy's storage.
	Dir string
	// DebugLog, when set, is the file that receives reverse_proxy's and
	// Bifrost's debug logs (one "upstream roundtrip" line per try).
	DebugLog string
	// DebugAll makes DebugLog Caddy's default log, with every logger's
	// debug lines, not only reverse_proxy's and Bifrost's: the proxies of
	// Bifrost's dynamic workers are provisioned in a context of their
	// own, so they log through Caddy's default logger, which only the
	// default log receives.
	DebugAll bool
	// Global is more global options (lines one tab deep inside the
	// global block), such as the bifrost app's; nil for none.
	Global []string
	// Site is the body of the site block: the proxy directive.
	Site string
}

// render writes the Caddyfile: loopback only, no HTTPS, no persisted
// config, a short grace period, storage inside Dir, then Global.
func (cf caddyConfig) render() string {
	var b strings.Builder
	fmt.Fprintf(&b, "{\n\tadmin 127.0.0.1:%d\n\tauto_https off\n\tpersist_config off\n\tgrace_period 1s\n", cf.Admin)
	fmt.Fprintf(&b, "\tdefault_bind 127.0.0.1\n\tstorage file_system %s\n", quote(filepath.Join(cf.Dir, "storage")))
	for _, line := range cf.Global {
		b.WriteString("\t" + line + "\n")
	}
	if cf.DebugLog != "" {
		name := "tries"
		if cf.DebugAll {
			name = "default"
		}
		fmt.Fprintf(&b, "\tlog %s {\n\t\toutput file %s {\n\t\t\troll_disabled\n\t\t}\n", name, quote(cf.DebugLog))
		b.WriteString("\t\tformat json\n\t\tlevel DEBUG\n")
		if !cf.DebugAll {
			b.WriteString("\t\tinclude http.handlers.reverse_proxy http.handlers.bifrost\n")
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n\n")
	fmt.Fprintf(&b, "http://127.0.0.1:%d {\n", cf.Port)
	for _, line := range strings.Split(strings.TrimRight(cf.Site, "\n"), "\n") {
		b.WriteString("\t" + line + "\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// quote makes a Caddyfile token of s.
func quote(s string) string {
	if strings.ContainsAny(s, " \t\"{}") {
		return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"`
	}
	return s
}
