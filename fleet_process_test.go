package bifrost

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bifrost-proxy/bifrost/fleet/fleettest"
	"github.com/bifrost-proxy/bifrost/pool"
)

// Three Caddy processes of the built binary share one redis-server and
// three real backends (one Caddy per process: Caddy's state is global).

// freePort returns a port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// goToolEnv is the environment the go tool had when the test binary
// started, read before TestMain points HOME and XDG_CACHE_HOME at a temp
// dir: with them, go build finds the module and build caches (and needs
// no network).
var goToolEnv = []string{"HOME=" + os.Getenv("HOME"), "XDG_CACHE_HOME=" + os.Getenv("XDG_CACHE_HOME")}

// buildCaddy builds ./cmd/caddy into a temp dir.
func buildCaddy(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "caddy")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/caddy")
	cmd.Env = append(os.Environ(), goToolEnv...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building caddy: %v\n%s", err, out)
	}
	return bin
}

// instance is one Caddy process of the fleet.
type instance struct {
	t          *testing.T
	name       string
	bin, conf  string
	dir        string
	admin      int
	site       int
	cmd        *exec.Cmd
	stderrPath string
}

// startInstance writes the instance's Caddyfile and runs it.
func startInstance(t *testing.T, bin, name, redisURL string, upstreams []string) *instance {
	t.Helper()
	in := &instance{t: t, name: name, bin: bin, dir: t.TempDir(), admin: freePort(t), site: freePort(t)}
	in.conf = filepath.Join(in.dir, "Caddyfile")
	cfg := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	http_port %d
	auto_https off
	storage file_system %s
	bifrost {
		fleet %s {
			secret fleet-test-secret
			instance %s
		}
	}
}
:%d {
	bifrost %s {
		name shared
		lb_policy round_robin
		classify {
			status 502 http isolate_worker
		}
		retry {
			attempts 3
		}
		isolation {
			max_percent 100
			base_time 1m
		}
	}
}
`, in.admin, in.site, filepath.Join(in.dir, "storage"), redisURL, name, in.site, strings.Join(upstreams, " "))
	if err := os.WriteFile(in.conf, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	in.start()
	t.Cleanup(in.stop)
	return in
}

// start runs the process and waits until it serves.
func (in *instance) start() {
	t := in.t
	t.Helper()
	in.stderrPath = filepath.Join(in.dir, fmt.Sprintf("stderr-%d.log", time.Now().UnixNano()))
	errf, err := os.Create(in.stderrPath)
	if err != nil {
		t.Fatal(err)
	}
	defer errf.Close()
	in.cmd = exec.Command(in.bin, "run", "--config", in.conf, "--adapter", "caddyfile")
	in.cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+in.dir, "XDG_DATA_HOME="+in.dir)
	in.cmd.Stdout, in.cmd.Stderr = errf, errf
	if err := in.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/bifrost/fleet", in.admin))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(in.stderrPath)
			t.Fatalf("%s did not start within 20s:\n%s", in.name, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop ends the process with SIGTERM (Caddy stops its apps: the state
// is written) and waits for it.
func (in *instance) stop() {
	if in.cmd == nil || in.cmd.Process == nil {
		return
	}
	_ = in.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = in.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = in.cmd.Process.Kill()
		<-done
	}
	in.cmd = nil
}

// adminGet decodes an admin API answer of the instance.
func (in *instance) adminGet(path string, out any) error {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", in.admin, path))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(out)
}

// adminPost posts to the instance's admin API.
func (in *instance) adminPost(path string) error {
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d%s", in.admin, path), "application/json", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s: %d %s", path, resp.StatusCode, b)
	}
	return nil
}

// isolation returns the worker's isolation reason on the instance, ""
// when it is not isolated.
func (in *instance) isolation(upstream string) string {
	var v pool.WorkerView
	if err := in.adminGet("/bifrost/workers/"+pool.WorkerID("shared", upstream), &v); err != nil || !v.Isolated {
		return ""
	}
	return v.IsolationReason
}

// TestFleetProcesses runs three Caddy processes sharing one Redis: an
// isolation on one is seen on the others within 2 s, an operator's
// isolation on one applies on all, Redis stopped (SIGSTOP) under load
// costs no failed request, and a restarted instance keeps the isolation
// from its first request.
func TestFleetProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short: builds Caddy and runs three processes")
	}
	srv := fleettest.Start(t)
	bin := buildCaddy(t)
	bad, good1, good2 := newBackend(t), newBackend(t), newBackend(t)
	ups := []string{bad.addr, good1.addr, good2.addr}
	var ins []*instance
	for i := 1; i <= 3; i++ {
		ins = append(ins, startInstance(t, bin, fmt.Sprintf("i%d", i), srv.URL(""), ups))
	}
	for _, in := range ins {
		eventually(t, 10*time.Second, in.name+" connected", func() bool {
			var v FleetView
			return in.adminGet("/bifrost/fleet", &v) == nil && v.Connected
		})
	}

	// the bad backend answers 502, which isolates it; only i1 gets
	// traffic
	bad.set(status(http.StatusBadGateway, "bad"))
	site1 := fmt.Sprintf("http://127.0.0.1:%d/", ins[0].site)
	eventually(t, 5*time.Second, "i1 isolates the bad backend", func() bool {
		if resp, err := http.Get(site1); err == nil {
			resp.Body.Close()
		}
		return ins[0].isolation(bad.addr) != ""
	})
	isolatedAt := time.Now()
	for _, in := range ins[1:] {
		eventually(t, 2*time.Second, in.name+" sees the isolation", func() bool {
			return strings.Contains(in.isolation(bad.addr), "[fleet: i1]")
		})
	}
	t.Logf("isolation seen on i2 and i3 %v after i1's", time.Since(isolatedAt).Round(time.Millisecond))

	// an operator's isolation on i2 applies on all
	if err := ins[1].adminPost("/bifrost/workers/" + pool.WorkerID("shared", good1.addr) + "/isolate?duration=5m"); err != nil {
		t.Fatal(err)
	}
	for _, in := range []*instance{ins[0], ins[2]} {
		eventually(t, 2*time.Second, in.name+" applies i2's operator isolation", func() bool {
			return strings.Contains(in.isolation(good1.addr), "[fleet: i2]")
		})
	}

	// Redis hangs for 3 s under load on all three: no request fails
	var sent, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, in := range ins {
		url := fmt.Sprintf("http://127.0.0.1:%d/", in.site)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := http.Get(url)
				sent.Add(1)
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					failed.Add(1)
				}
			}
		}()
	}
	srv.Signal(syscall.SIGSTOP)
	time.Sleep(3 * time.Second) // the outage itself, not an assertion
	srv.Signal(syscall.SIGCONT)
	for _, in := range ins {
		eventually(t, 10*time.Second, in.name+" reconnected", func() bool {
			var v FleetView
			return in.adminGet("/bifrost/fleet", &v) == nil && v.Connected
		})
	}
	close(stop)
	wg.Wait()
	if failed.Load() != 0 || sent.Load() == 0 {
		t.Errorf("%d of %d requests failed while Redis hung", failed.Load(), sent.Load())
	}
	t.Logf("%d requests while Redis hung and after, %d failed", sent.Load(), failed.Load())

	// i3 restarted: the bad backend stays out from its first request
	ins[2].stop()
	hits := bad.hits.Load()
	ins[2].start()
	if r := ins[2].isolation(bad.addr); r == "" {
		t.Errorf("bad backend not isolated on i3 right after its restart")
	}
	for range 10 {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", ins[2].site))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("request to restarted i3: %d", resp.StatusCode)
		}
	}
	if n := bad.hits.Load() - hits; n != 0 {
		t.Errorf("restarted i3 sent %d requests to the isolated backend", n)
	}
}
