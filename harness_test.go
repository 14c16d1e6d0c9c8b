package bifrost

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	"github.com/bifrost-proxy/bifrost/pool"
)

// The integration tests run real Caddy in this process: every test loads
// its own config through caddy.Load, with the admin endpoint on
// 127.0.0.1:2999 and sites on :9080, like caddytest. Tests of this package
// therefore never run in parallel with each other.
const (
	testAdmin = "127.0.0.1:2999"
	testSite  = "http://127.0.0.1:9080"
)

// TestMain runs the package's tests with Caddy's config and data
// directories (and HOME, for anything else a test starts, such as
// chromium) in a temporary directory, so that the Caddy the tests run
// never writes the user's autosave.json or certificate storage.
func TestMain(m *testing.M) {
	os.Exit(runInTempHome(m))
}

// runInTempHome points HOME and the XDG directories at a new temporary
// directory, runs the tests and removes the directory. Caddy computes its
// autosave path and default storage when its package initializes, before
// TestMain, so those two are set again from the new directories.
func runInTempHome(m *testing.M) int {
	dir, err := os.MkdirTemp("", "bifrost-test-home-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "temporary home:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	keepGoCaches()
	for k, sub := range map[string]string{
		"HOME":            "",
		"XDG_CONFIG_HOME": ".config",
		"XDG_DATA_HOME":   ".local/share",
		"XDG_CACHE_HOME":  ".cache",
	} {
		if err := os.Setenv(k, filepath.Join(dir, sub)); err != nil {
			fmt.Fprintln(os.Stderr, "temporary home:", err)
			return 1
		}
	}
	caddy.ConfigAutosavePath = filepath.Join(caddy.AppConfigDir(), "autosave.json")
	caddy.DefaultStorage.Path = caddy.AppDataDir()
	testHome = dir

	code := m.Run()
	_ = caddy.Stop()
	return code
}

// keepGoCaches pins the go command's module and build caches to where
// they are before HOME moves, so that a test that builds Caddy (the fleet's
// process test) uses them rather than downloading every module again into
// the temporary home. The go command's own defaults are followed: GOPATH is
// $HOME/go, the build cache is under the user's cache directory.
func keepGoCaches() {
	if os.Getenv("GOPATH") == "" {
		if home, err := os.UserHomeDir(); err == nil {
			_ = os.Setenv("GOPATH", filepath.Join(home, "go"))
		}
	}
	if os.Getenv("GOMODCACHE") == "" {
		gopath := filepath.SplitList(os.Getenv("GOPATH"))
		if len(gopath) > 0 && gopath[0] != "" {
			_ = os.Setenv("GOMODCACHE", filepath.Join(gopath[0], "pkg", "mod"))
		}
	}
	if os.Getenv("GOCACHE") == "" {
		if cache, err := os.UserCacheDir(); err == nil {
			_ = os.Setenv("GOCACHE", filepath.Join(cache, "go-build"))
		}
	}
}

// testHome is the temporary directory the tests use as HOME.
var testHome string

// loadCaddyfile adapts a Caddyfile and runs it, with the global options
// the tests need prepended.
func loadCaddyfile(t *testing.T, body string) {
	t.Helper()
	cfg := fmt.Sprintf(`{
	admin %s
	http_port 9080
	https_port 9443
	auto_https off
	skip_install_trust
	grace_period 1ns
}
`, testAdmin) + body
	adapter := caddyconfig.GetAdapter("caddyfile")
	js, warnings, err := adapter.Adapt([]byte(cfg), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapting Caddyfile: %v\n%s", err, cfg)
	}
	for _, w := range warnings {
		if !strings.Contains(w.Message, "not formatted") {
			t.Logf("adapt warning: %s", w.String())
		}
	}
	loadJSON(t, js)
}

// loadJSON runs a JSON config.
func loadJSON(t testing.TB, js []byte) {
	t.Helper()
	if err := caddy.Load(js, true); err != nil {
		t.Fatalf("loading config: %v\n%s", err, js)
	}
	t.Cleanup(func() {
		// an empty config stops the servers and cleans up the modules,
		// so that the next test starts from nothing
		_ = caddy.Load([]byte(fmt.Sprintf(`{"admin":{"listen":%q}}`, testAdmin)), true)
	})
}

// loadHandler loads a Caddyfile body like loadCaddyfile and returns the
// bifrost handler it provisioned, for tests that look at a handler's
// workers.
func loadHandler(t *testing.T, body string) *Handler {
	t.Helper()
	loadCaddyfile(t, body)
	return runningHandler(t)
}

// runningHandler returns the first bifrost handler of the running config,
// found as Caddy's HTTP app holds it: in its servers' routes, subroutes
// included.
func runningHandler(tb testing.TB) *Handler {
	tb.Helper()
	app, err := caddy.ActiveContext().App("http")
	if err != nil {
		tb.Fatal(err)
	}
	var find func(rl caddyhttp.RouteList) *Handler
	find = func(rl caddyhttp.RouteList) *Handler {
		for _, rt := range rl {
			for _, mh := range rt.Handlers {
				switch mh := mh.(type) {
				case *Handler:
					return mh
				case *caddyhttp.Subroute:
					if h := find(mh.Routes); h != nil {
						return h
					}
				}
			}
		}
		return nil
	}
	for _, srv := range app.(*caddyhttp.App).Servers {
		if h := find(srv.Routes); h != nil {
			return h
		}
	}
	tb.Fatal("no bifrost handler in the running config")
	return nil
}

// workerAt returns h's worker for the upstream dial.
func workerAt(t *testing.T, h *Handler, dial string) *worker {
	t.Helper()
	for _, wk := range h.workers {
		if wk.Upstream == dial {
			return wk
		}
	}
	t.Fatalf("no worker for %s", dial)
	return nil
}

// backend is a real HTTP server on 127.0.0.1 whose behaviour a test sets
// and changes, and which counts what it received.
type backend struct {
	t       *testing.T
	ln      net.Listener
	srv     *http.Server
	addr    string
	handler atomic.Pointer[http.HandlerFunc]
	health  atomic.Pointer[http.HandlerFunc] // nil: /health answers 200
	hits    atomic.Int64
	conns   atomic.Int64 // connections accepted

	mu     sync.Mutex
	bodies [][]byte
	ids    map[string]int
}

// newBackend starts a backend answering 200 with its address until told
// otherwise.
func newBackend(t *testing.T) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{t: t, ln: ln, addr: ln.Addr().String(), ids: map[string]int{}}
	b.set(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "ok from %s", b.addr)
	})
	b.srv = &http.Server{Handler: http.HandlerFunc(b.serve), ReadHeaderTimeout: 5 * time.Second,
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				b.conns.Add(1)
			}
		}}
	go func() { _ = b.srv.Serve(ln) }()
	t.Cleanup(b.close)
	return b
}

func (b *backend) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/health" {
		if h := b.health.Load(); h != nil {
			(*h)(w, r)
			return
		}
		w.WriteHeader(http.StatusOK)
		return
	}
	b.hits.Add(1)
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	b.mu.Lock()
	b.bodies = append(b.bodies, body)
	if id := r.Header.Get("X-Request-Id"); id != "" {
		b.ids[id]++
	}
	b.mu.Unlock()
	(*b.handler.Load())(w, r)
}

// set changes how the backend answers requests (not /health).
func (b *backend) set(h http.HandlerFunc) { b.handler.Store(&h) }

// setHealth changes how the backend answers /health.
func (b *backend) setHealth(h http.HandlerFunc) { b.health.Store(&h) }

// close stops the backend: its port refuses connections from now on.
func (b *backend) close() { _ = b.srv.Close() }

// lastBody returns the body of the last request received.
func (b *backend) lastBody() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.bodies) == 0 {
		return nil
	}
	return b.bodies[len(b.bodies)-1]
}

// executions returns how many times the request with this id arrived.
func (b *backend) executions(id string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ids[id]
}

// reset makes the backend read the request, then reset the connection
// without answering.
func reset(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(err)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// hang makes the backend never answer until the request is cancelled.
func hang(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }

// status returns a handler answering code with body.
func status(code int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(code)
		_, _ = io.WriteString(w, body)
	}
}

// deadAddr returns an address whose port refuses connections.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// client is the test's HTTP client: no connection reuse surprises, a
// timeout so that a hang fails the test instead of blocking it.
var client = &http.Client{
	Timeout:   15 * time.Second,
	Transport: &http.Transport{MaxIdleConnsPerHost: 16, DisableCompression: true},
}

// do sends a request and returns its status and body.
func do(t *testing.T, method, url string, body []byte, hdr ...string) (int, string, http.Header) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	return doStream(t, method, url, rd, hdr...)
}

// doStream is do with a body read as the request is sent: a reader other
// than a bytes or strings reader has no length, so the client streams it
// chunked.
func doStream(t *testing.T, method, url string, body io.Reader, hdr ...string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// get is do for a GET of the test site.
func get(t *testing.T, path string) (int, string) {
	t.Helper()
	code, body, _ := do(t, http.MethodGet, testSite+path, nil)
	return code, body
}

// startLoad starts n clients that each send GETs of the test site's root
// in a loop, waiting pause before each, until the returned stop is called
// (or the test ends). stop waits for the clients and returns how many
// requests they sent and how many failed: an error or a status other than
// 200. It may be called more than once.
func startLoad(t testing.TB, n int, pause time.Duration) (stop func() (sent, failed int64)) {
	return startLoadWith(t, n, pause, false)
}

// startLoadWith is startLoad whose clients, when resend is set, send a
// GET again once if their connection to Caddy failed before an answer (a
// reset or EOF), as a browser does: Caddy's own listener handover on a
// reload resets a few connections, whatever the handler.
func startLoadWith(t testing.TB, n int, pause time.Duration, resend bool) (stop func() (sent, failed int64)) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	var s, f atomic.Int64
	for range n {
		wg.Go(func() {
			for {
				if pause > 0 {
					select {
					case <-done:
						return
					case <-time.After(pause):
					}
				} else {
					select {
					case <-done:
						return
					default:
					}
				}
				resp, err := client.Get(testSite + "/")
				if err != nil && resend {
					resp, err = client.Get(testSite + "/")
				}
				s.Add(1)
				if err != nil {
					f.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					f.Add(1)
				}
			}
		})
	}
	stop = sync.OnceValues(func() (int64, int64) {
		close(done)
		wg.Wait()
		return s.Load(), f.Load()
	})
	t.Cleanup(func() { stop() })
	return stop
}

// load runs startLoad's clients, with no pause, for d.
func load(t testing.TB, n int, d time.Duration) (sent, failed int64) {
	stop := startLoad(t, n, 0)
	time.Sleep(d)
	return stop()
}

// adminJSON queries the admin API and decodes its JSON answer.
func adminJSON(t *testing.T, method, path string, out any) int {
	t.Helper()
	code, body, hdr := do(t, method, "http://"+testAdmin+path, nil)
	if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("%s %s: content type %q, body %s", method, path, ct, body)
	}
	if out != nil {
		if err := json.Unmarshal([]byte(body), out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, body)
		}
	}
	return code
}

// workerOf returns the shared state of a worker of the running config.
func workerOf(t *testing.T, poolName, dial string) *pool.Worker {
	t.Helper()
	ws, err := lookupWorker(pool.WorkerID(poolName, dial))
	if err != nil {
		t.Fatalf("worker %s/%s: %v", poolName, dial, err)
	}
	return ws
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// withTimeout returns a context for a request the test may cancel.
func withTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// A config loaded by the tests is autosaved into the run's temporary
// home, not the user's ~/.config/caddy, and Caddy's storage is there too.
func TestCaddyWritesOnlyToTempHome(t *testing.T) {
	loadCaddyfile(t, `:9080 {
	respond "ok"
}
`)
	inside := func(p string) bool {
		rel, err := filepath.Rel(testHome, p)
		return err == nil && !strings.HasPrefix(rel, "..")
	}
	if !inside(caddy.ConfigAutosavePath) {
		t.Errorf("autosave path %s is outside the test home %s", caddy.ConfigAutosavePath, testHome)
	}
	if _, err := os.Stat(caddy.ConfigAutosavePath); err != nil {
		t.Errorf("no autosave in the test home: %v", err)
	}
	if !inside(caddy.DefaultStorage.Path) {
		t.Errorf("default storage %s is outside the test home %s", caddy.DefaultStorage.Path, testHome)
	}
}
