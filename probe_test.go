package bifrost

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bifrost-proxy/bifrost/pool"
)

// probeSeen is one request a probeServer received.
type probeSeen struct {
	method, path, query, host, body string
	header                          http.Header
}

// probeServer is a real HTTP server on 127.0.0.1 standing in for a health
// endpoint on its own port (health_port) or a checking service
// (health_upstream): it records every request and answers with answer.
type probeServer struct {
	addr string
	port int

	mu     sync.Mutex
	seen   []probeSeen
	answer func(w http.ResponseWriter, r *http.Request)
}

func newProbeServer(t *testing.T) *probeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ps := &probeServer{addr: ln.Addr().String(), port: ln.Addr().(*net.TCPAddr).Port}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		ps.mu.Lock()
		ps.seen = append(ps.seen, probeSeen{method: r.Method, path: r.URL.Path, query: r.URL.RawQuery,
			host: r.Host, body: string(b), header: r.Header.Clone()})
		answer := ps.answer
		ps.mu.Unlock()
		if answer != nil {
			answer(w, r)
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ps
}

// requests returns what the server received so far.
func (ps *probeServer) requests() []probeSeen {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return append([]probeSeen(nil), ps.seen...)
}

// setAnswer changes how the server answers.
func (ps *probeServer) setAnswer(f func(w http.ResponseWriter, r *http.Request)) {
	ps.mu.Lock()
	ps.answer = f
	ps.mu.Unlock()
}

// reverse_proxy's health_port, health_method, health_headers (with
// placeholders, Host included) and health_request_body shape the probe
// that Bifrost sends, and the verdict of the probe on that port is the
// one that counts: a worker whose health port fails is isolated while its
// own port still answers.
func TestProbeUsesPortMethodHeadersAndBody(t *testing.T) {
	t.Setenv("BIFROST_PROBE_TOKEN", "s3cret")
	a, b := newBackend(t), newBackend(t)
	hp := newProbeServer(t)
	loadCaddyfile(t, fmt.Sprintf(`:9080 {
	bifrost %s %s {
		name probes
		health_uri /hc?deep=1
		health_port %d
		health_method POST
		health_request_body `+"`"+`{"check": "{http.reverse_proxy.active.target_upstream}"}`+"`"+`
		health_headers {
			X-Token {env.BIFROST_PROBE_TOKEN}
			X-Target {http.reverse_proxy.active.target_upstream}
			Host probe.internal
		}
		health_interval 100ms
		health_fails 2
		health_passes 1
	}
}
`, a.addr, b.addr, hp.port))

	eventually(t, 10*time.Second, "probes of both workers", func() bool {
		targets := map[string]bool{}
		for _, s := range hp.requests() {
			targets[s.header.Get("X-Target")] = true
		}
		return targets[a.addr] && targets[b.addr]
	})
	for _, s := range hp.requests() {
		target := s.header.Get("X-Target")
		if s.method != http.MethodPost || s.path != "/hc" || s.query != "deep=1" || s.host != "probe.internal" ||
			s.header.Get("X-Token") != "s3cret" || s.body != `{"check": "`+target+`"}` {
			t.Fatalf("probe = %+v; want POST /hc?deep=1, Host probe.internal, X-Token s3cret, body naming %s", s, target)
		}
	}
	if a.hits.Load() != 0 || b.hits.Load() != 0 {
		t.Fatalf("probes reached the workers' own ports: %d, %d", a.hits.Load(), b.hits.Load())
	}

	// the health port says a is down: a is isolated, though its own port
	// answers, and b serves everything
	hp.setAnswer(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Target") == a.addr {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	poolName := "probes"
	eventually(t, 10*time.Second, "a isolated by its failing health port", func() bool {
		return workerOf(t, poolName, a.addr).Health.Isolated()
	})
	if workerOf(t, poolName, b.addr).Health.Isolated() {
		t.Fatal("b isolated, but its probes pass")
	}
	for range 10 {
		if code, body := get(t, "/"); code != http.StatusOK || !strings.Contains(body, b.addr) {
			t.Fatalf("GET / = %d %q; want 200 from %s", code, body, b.addr)
		}
	}
}

// health_upstream sends every probe to a checking service instead of the
// worker, naming the worker in the target_upstream placeholder; the
// service's verdict isolates the worker it names.
func TestProbeUsesHealthUpstream(t *testing.T) {
	a, b := newBackend(t), newBackend(t)
	checker := newProbeServer(t)
	loadCaddyfile(t, fmt.Sprintf(`:9080 {
	bifrost %s %s {
		name probes
		health {
			uri /check
			upstream %s
			header X-Target {http.reverse_proxy.active.target_upstream}
			interval 100ms
			fails 2
			passes 1
		}
	}
}
`, a.addr, b.addr, checker.addr))
	eventually(t, 10*time.Second, "the checker asked about both workers", func() bool {
		targets := map[string]bool{}
		for _, s := range checker.requests() {
			if s.method == http.MethodGet && s.path == "/check" && s.host == checker.addr {
				targets[s.header.Get("X-Target")] = true
			}
		}
		return targets[a.addr] && targets[b.addr]
	})
	checker.setAnswer(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Target") == b.addr {
			w.WriteHeader(http.StatusInternalServerError)
		}
	})
	poolName := "probes"
	eventually(t, 10*time.Second, "b isolated by the checker", func() bool {
		return workerOf(t, poolName, b.addr).Health.Isolated()
	})
	if a.hits.Load() != 0 || b.hits.Load() != 0 {
		t.Fatalf("probes reached the workers: %d, %d", a.hits.Load(), b.hits.Load())
	}
}

// Without health_follow_redirects a redirect is the probe's answer; with
// it, the probe follows the redirect on the same worker.
func TestProbeFollowRedirects(t *testing.T) {
	for _, follow := range []bool{false, true} {
		t.Run(fmt.Sprintf("follow=%v", follow), func(t *testing.T) {
			hp := newProbeServer(t)
			hp.setAnswer(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/hc" {
					http.Redirect(w, r, "/ok", http.StatusFound)
				}
			})
			opt := ""
			if follow {
				opt = "health_follow_redirects"
			}
			loadCaddyfile(t, fmt.Sprintf(`:9080 {
	bifrost %s {
		health_uri /hc
		health_interval 100ms
		%s
	}
}
`, hp.addr, opt))
			count := func(path string) int {
				n := 0
				for _, s := range hp.requests() {
					if s.path == path {
						n++
					}
				}
				return n
			}
			eventually(t, 10*time.Second, "three probes", func() bool { return count("/hc") >= 3 })
			if got := count("/ok"); (got > 0) != follow {
				t.Fatalf("follow_redirects %v: %d requests followed the redirect", follow, got)
			}
		})
	}
}

// A probe timeout above the probe interval, which reverse_proxy accepts
// (Caddy's own health check tests use 10ms and 100ms), is accepted and
// probes run: a worker whose probes fail is isolated.
func TestProbeTimeoutAboveInterval(t *testing.T) {
	a, b := newBackend(t), newBackend(t)
	b.setHealth(status(http.StatusServiceUnavailable, "down"))
	loadCaddyfile(t, siteConfig([]string{a.addr, b.addr}, `
		name slowprobe
		health_uri /health
		health_interval 10ms
		health_timeout 100ms`))
	eventually(t, 10*time.Second, "the failing worker isolated by its probes", func() bool {
		return workerOf(t, "slowprobe", b.addr).Health.Isolated()
	})
	if workerOf(t, "slowprobe", a.addr).Health.Isolated() {
		t.Fatal("the healthy worker was isolated")
	}
}

// Two sites share a pool, one with probes and one without. The pool's
// probe state belongs to the pool: provisioning the site without probes,
// as on every reload, must not erase what the other site's probes found.
// (It did: each provision of a config without probes reset the shared
// workers' probe state, so a sick worker read healthy after each reload
// until its probes failed again.)
func TestSiteWithoutProbesKeepsSharedProbeState(t *testing.T) {
	a, b := newBackend(t), newBackend(t)
	a.setHealth(status(http.StatusInternalServerError, "sick"))
	site := func(port int, block string) string {
		return fmt.Sprintf(":%d {\n\tbifrost %s %s {\n\t\tname twosites\n%s\n\t}\n}\n", port, a.addr, b.addr, block)
	}
	cfg := site(9080, `
		health {
			uri /health
			interval 50ms
			fails 3
		}`) + site(9081, "")
	loadCaddyfile(t, cfg)
	eventually(t, 5*time.Second, "the probes found the worker unhealthy", func() bool {
		return !pool.ViewOf(workerOf(t, "twosites", a.addr), time.Now()).ProbeHealthy
	})
	for round := range 2 {
		// a reload: both sites are provisioned again, the site without
		// probes too
		loadCaddyfile(t, cfg+fmt.Sprintf("# reload %d\n", round))
		// read at once: after a reset, three failed probes (150 ms)
		// would be needed to find the worker unhealthy again
		if v := pool.ViewOf(workerOf(t, "twosites", a.addr), time.Now()); v.ProbeHealthy {
			t.Fatalf("reload %d: the probed worker reads probe-healthy (%q, %d fails): the site without probes reset it", round, v.State(), v.ProbeFails)
		}
	}
	// with the probed site gone, nothing probes the worker any more: what
	// the probes found is forgotten
	loadCaddyfile(t, site(9081, ""))
	if v := pool.ViewOf(workerOf(t, "twosites", a.addr), time.Now()); !v.ProbeHealthy {
		t.Fatalf("without any probes the worker still reads %q", v.State())
	}
}
