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

// buildCaddy builds ./cmd/caddy into a temp dir.
func buildCaddy(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "caddy")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/caddy")
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

// view returns the worker's view on the instance.
func (in *instance) view(upstream string) pool.WorkerView {
	var v pool.WorkerView
	_ = in.adminGet("/bifrost/workers/"+pool.WorkerID("shared", upstream), &v)
	return v
}

// connected reports whether the instance's fleet is connected.
func (in *instance) connected() bool {
	var v FleetView
	return in.adminGet("/bifrost/fleet", &v) == nil && v.Connected
}

// siteURL is the instance's site.
func (in *instance) siteURL() string { return fmt.Sprintf("http://127.0.0.1:%d/", in.site) }

// getStatus sends a GET to url with c and returns its status, 0 when it
// failed.
func getStatus(c *http.Client, url string) int {
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// underLoad sends requests to every instance from one goroutine each
// until the returned function is called, which returns how many were
// sent and how many did not end in a 200.
func underLoad(ins []*instance) (stop func() (sent, failed int64)) {
	var nSent, nFailed atomic.Int64
	done := make(chan struct{})
	var wg sync.WaitGroup
	for _, in := range ins {
		url := in.siteURL()
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Timeout: 15 * time.Second}
			for {
				select {
				case <-done:
					return
				default:
				}
				nSent.Add(1)
				if getStatus(c, url) != http.StatusOK {
					nFailed.Add(1)
				}
			}
		}()
	}
	return func() (int64, int64) {
		close(done)
		wg.Wait()
		return nSent.Load(), nFailed.Load()
	}
}

// TestFleetProcesses runs three Caddy processes sharing one Redis, each
// step on what the previous ones left:
//
//   - an isolation on one is seen on the others within 2 s;
//   - an operator's isolation on one applies on all;
//   - a throttle (429 with Retry-After) on one is honoured by the
//     others: they send the worker nothing;
//   - an operator's restore on one applies on the others with their
//     pub/sub connections killed and unable to subscribe again: by the
//     full read;
//   - Redis stopped (SIGSTOP) for 10 s under load on all three costs no
//     failed request;
//   - Redis restarted empty is refilled with the instances' verdicts;
//   - an instance restarted (SIGTERM, then start) keeps the isolation
//     from its first request, with Redis and without it (storage
//     alone).
func TestFleetProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short: builds Caddy and runs three processes")
	}
	// each instance is an ACL user of its own, so that one can lose the
	// channel (below)
	var users []string
	for i := 1; i <= 3; i++ {
		users = append(users, "--user", fmt.Sprintf("i%d", i), "on", fmt.Sprintf(">pw-%d", i), "~*", "&*", "+@all")
	}
	srv := fleettest.Start(t, users...)
	bin := buildCaddy(t)
	bad, good1, good2, limited := newBackend(t), newBackend(t), newBackend(t), newBackend(t)
	ups := []string{bad.addr, good1.addr, good2.addr, limited.addr}
	var ins []*instance
	for i := 1; i <= 3; i++ {
		url := fmt.Sprintf("redis://i%d:pw-%d@127.0.0.1:%d/0", i, i, srv.Port())
		ins = append(ins, startInstance(t, bin, fmt.Sprintf("i%d", i), url, ups))
	}
	for _, in := range ins {
		eventually(t, 10*time.Second, in.name+" connected", in.connected)
	}

	// the bad backend answers 502, which isolates it; only i1 gets
	// traffic
	bad.set(status(http.StatusBadGateway, "bad"))
	site1 := ins[0].siteURL()
	eventually(t, 5*time.Second, "i1 isolates the bad backend", func() bool {
		_ = getStatus(http.DefaultClient, site1)
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

	// the limited backend answers 429 with Retry-After: 30 to everyone:
	// i1, asked by two clients, throttles it, and i2 and i3 send it
	// nothing from then on
	limited.set(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusTooManyRequests)
	})
	clients := []*http.Client{clientFrom(t, "127.0.0.2"), clientFrom(t, "127.0.0.3")}
	for i := 0; !ins[0].view(limited.addr).Throttled; i++ {
		if i > 200 {
			t.Fatal("i1 did not throttle the backend answering 429 to everyone")
		}
		_ = getStatus(clients[i/2%2], site1) // two in a row from each: round robin gives it every other one
	}
	for _, in := range ins[1:] {
		eventually(t, 2*time.Second, in.name+" honours i1's throttle", func() bool { return in.view(limited.addr).Throttled })
	}
	hits := limited.hits.Load()
	for range 10 {
		for _, in := range ins[1:] {
			if code := getStatus(http.DefaultClient, in.siteURL()); code != http.StatusOK {
				t.Errorf("request to %s: %d", in.name, code)
			}
		}
	}
	if n := limited.hits.Load() - hits; n != 0 {
		t.Errorf("i2 and i3 sent %d requests to the backend i1 saw throttling", n)
	}
	limited.set(status(http.StatusOK, "limited no more"))

	// i1 and i2 lose the channel: their pub/sub connections killed
	// (CLIENT KILL TYPE pubsub), and their users no longer allowed to
	// subscribe again. An operator's restore on i3 reaches them all the
	// same, by the full read. Then the channel is theirs again.
	cl := srv.Client("")
	for _, user := range []string{"i1", "i2"} {
		if err := cl.Do(t.Context(), "ACL", "SETUSER", user, "resetchannels").Err(); err != nil {
			t.Fatal(err)
		}
	}
	_ = cl.Do(t.Context(), "CLIENT", "KILL", "TYPE", "pubsub").Err() // resetchannels may have killed them already
	if err := ins[2].adminPost("/bifrost/workers/" + pool.WorkerID("shared", good1.addr) + "/restore"); err != nil {
		t.Fatal(err)
	}
	for _, in := range ins[:2] {
		eventually(t, 5*time.Second, in.name+" carries out i3's restore", func() bool { return in.isolation(good1.addr) == "" })
	}
	for _, user := range []string{"i1", "i2"} {
		if err := cl.Do(t.Context(), "ACL", "SETUSER", user, "allchannels").Err(); err != nil {
			t.Fatal(err)
		}
	}
	for _, in := range ins {
		eventually(t, 10*time.Second, in.name+" connected again", in.connected)
	}

	// Redis hangs for 10 s under load on all three: no request fails
	stopLoad := underLoad(ins)
	srv.Signal(syscall.SIGSTOP)
	time.Sleep(10 * time.Second) // the outage itself, not an assertion
	srv.Signal(syscall.SIGCONT)
	for _, in := range ins {
		eventually(t, 10*time.Second, in.name+" reconnected", in.connected)
	}
	sent, failed := stopLoad()
	if failed != 0 || sent == 0 {
		t.Errorf("%d of %d requests failed while Redis hung", failed, sent)
	}
	t.Logf("%d requests while Redis hung and after, %d failed", sent, failed)

	// Redis restarted empty: refilled with i1's isolation, which the
	// others keep applying
	srv.Stop()
	srv.Start()
	field := "shared|" + bad.addr + "|i1"
	refilled := func() bool {
		return strings.Contains(cl.HGet(t.Context(), "bifrost:fleet:verdicts", field).Val(), `"kind":"isolated"`)
	}
	for deadline := time.Now().Add(10 * time.Second); !refilled(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the store not refilled with i1's isolation of the bad backend within 10s; it holds %v; i1 says %q",
				cl.HGetAll(t.Context(), "bifrost:fleet:verdicts").Val(), ins[0].isolation(bad.addr))
		}
	}
	for _, in := range ins {
		eventually(t, 10*time.Second, in.name+" reconnected after the restart", in.connected)
	}
	if r := ins[1].isolation(bad.addr); !strings.Contains(r, "[fleet: i1]") {
		t.Errorf("i2 after Redis restarted: bad backend's isolation %q, want i1's", r)
	}

	// i3 restarted, and then i2 restarted while Redis is down: the bad
	// backend stays out from their first request
	restart := func(in *instance) {
		t.Helper()
		in.stop()
		hits := bad.hits.Load()
		in.start()
		if r := in.isolation(bad.addr); r == "" {
			t.Errorf("bad backend not isolated on %s right after its restart", in.name)
		}
		for range 10 {
			if code := getStatus(http.DefaultClient, in.siteURL()); code != http.StatusOK {
				t.Errorf("request to restarted %s: %d", in.name, code)
			}
		}
		if n := bad.hits.Load() - hits; n != 0 {
			t.Errorf("restarted %s sent %d requests to the isolated backend", in.name, n)
		}
	}
	restart(ins[2])
	srv.Stop()
	restart(ins[1])
	if ins[1].connected() {
		t.Error("i2 says it is connected with Redis stopped")
	}
}
