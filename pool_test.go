package bifrost

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/pool"
)

// Two sites that name the same pool share it: the pool's one loop
// escalates a breaker that keeps opening to isolation whichever site's
// handler has the worker, and the isolation monitor knows the workers of
// both. (Were each handler to drain the pool's breaker changes itself, a
// change could be taken by the handler without the worker and its
// escalation skipped; a monitor that knew only the newest handler's
// workers could not isolate the other site's at all.)
func TestSharedPoolEscalatesEverySitesWorkers(t *testing.T) {
	goodA, goodB := newBackend(t), newBackend(t)
	var deadA, deadB []string
	for range 2 {
		deadA = append(deadA, deadAddr(t))
		deadB = append(deadB, deadAddr(t))
	}
	block := `
		name shared
		lb_policy round_robin
		breaker {
			failures 1
			timeout 1m
		}
		isolation {
			breaker_trips 1
			max_percent 100
			base_time 1m
		}`
	site := func(port int, ups []string) string {
		return fmt.Sprintf(":%d {\n\tbifrost %s {\n%s\n\t}\n}\n", port, strings.Join(ups, " "), block)
	}
	loadCaddyfile(t, site(9080, append([]string{goodA.addr}, deadA...))+site(9081, append([]string{goodB.addr}, deadB...)))

	for range 12 {
		for _, port := range []int{9080, 9081} {
			if code, body, _ := do(t, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/", port), nil); code != http.StatusOK {
				t.Fatalf("site :%d answered %d %q", port, code, body)
			}
		}
	}
	for _, dead := range append(deadA, deadB...) {
		eventually(t, 5*time.Second, "worker "+dead+" isolated after its breaker opened", func() bool {
			return workerOf(t, "shared", dead).Health.Isolated()
		})
	}
	for _, good := range []string{goodA.addr, goodB.addr} {
		if workerOf(t, "shared", good).Health.Isolated() {
			t.Errorf("healthy worker %s isolated", good)
		}
	}
}

// A reload that keeps a worker keeps what selection and hang detection
// know of it: its latency estimate and its requests in flight, like its
// breaker and isolation state. (Trackers rebuilt on every reload would
// hide a request hanging across the reload from hang detection and forget
// the slow worker's cost.)
func TestReloadKeepsSelectionState(t *testing.T) {
	slow := newBackend(t)
	release := make(chan struct{})
	defer close(release)
	slow.set(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hang" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
		_, _ = w.Write([]byte("slow"))
	})
	cfg := siteConfig([]string{slow.addr}, `
		name keep`)
	h1 := loadHandler(t, cfg)
	for range 10 {
		get(t, "/")
	}
	// one request waits on the slow worker across the reload
	hung := make(chan struct{})
	go func() {
		defer close(hung)
		req, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1:9080/hang", nil)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	eventually(t, 5*time.Second, "the hanging request reached the slow worker", func() bool {
		return workerAt(t, h1, slow.addr).tracker.InFlight() == 1
	})
	before, ok := workerAt(t, h1, slow.addr).tracker.Estimate(time.Now())
	if !ok {
		t.Fatal("no latency estimate for the slow worker after 5 answers")
	}

	h2 := loadHandler(t, cfg)
	if h2 == h1 {
		t.Fatal("the config was not reloaded")
	}
	tr := workerAt(t, h2, slow.addr).tracker
	if n := tr.InFlight(); n != 1 {
		t.Errorf("after the reload the slow worker has %d requests in flight, want the 1 that hangs", n)
	}
	if after, ok := tr.Estimate(time.Now()); !ok || after < before/2 {
		t.Errorf("after the reload the slow worker's latency estimate is %v (known %v), was %v", after, ok, before)
	}
	if h2.p2c == nil || h2.p2c.Trackers().Get(slow.addr) != tr {
		t.Error("the default policy does not read the worker's surviving tracker")
	}
}

// A reload that leaves the breaker block as it was keeps each breaker,
// and so its exact state: an open breaker stays open, with the same
// opening and retry time and its trips in a row. A reload that changes
// the breaker block gives each worker a new breaker, closed: that is not
// counted as a trip and never isolates a worker, and an isolation in
// force stays (it belongs to the pool, not to the breaker).
func TestReloadBreakerSettings(t *testing.T) {
	good := newBackend(t)
	dead := deadAddr(t)
	cfg := func(timeout, policy string) string {
		return siteConfig([]string{good.addr, dead}, `
			name rebreak
			lb_policy `+policy+`
			breaker {
				failures 1
				timeout `+timeout+`
			}`)
	}
	loadCaddyfile(t, cfg("1m", "round_robin"))
	for range 6 {
		get(t, "/")
	}
	ws := workerOf(t, "rebreak", dead)
	if st := ws.Breaker.State(); st != breaker.StateOpen {
		t.Fatalf("dead worker's breaker is %s, want open", st)
	}
	eventually(t, 5*time.Second, "the pool counted the opening", func() bool { return ws.Trips.Load() == 1 })
	opened, retry, lifetime := ws.Breaker.OpenedAt(), ws.Breaker.RetryAt(), ws.Breaker.Trips()

	// another part of the config changes: the breaker is kept as it is
	loadCaddyfile(t, cfg("1m", "first"))
	if ws2 := workerOf(t, "rebreak", dead); ws2 != ws {
		t.Fatal("the reload made a new state for a kept worker")
	}
	if st := ws.Breaker.State(); st != breaker.StateOpen {
		t.Fatalf("after a reload with the same breaker settings the breaker is %s, want still open", st)
	}
	if !ws.Breaker.OpenedAt().Equal(opened) || !ws.Breaker.RetryAt().Equal(retry) || ws.Breaker.Trips() != lifetime {
		t.Errorf("after the reload: opened %v, retry %v, trips %d; want %v, %v, %d kept",
			ws.Breaker.OpenedAt(), ws.Breaker.RetryAt(), ws.Breaker.Trips(), opened, retry, lifetime)
	}
	if got := ws.Trips.Load(); got != 1 {
		t.Errorf("trips in a row went from 1 to %d across the reload", got)
	}

	// the breaker block changes, with the worker isolated by an operator:
	// a new breaker, closed; no trip, and the isolation stays
	code, body, _ := do(t, http.MethodPost, "http://"+testAdmin+"/bifrost/workers/"+ws.ID+"/isolate",
		[]byte(`{"duration":"1h","reason":"maintenance"}`), "Content-Type", "application/json")
	if code != http.StatusOK {
		t.Fatalf("isolate: %d %s", code, body)
	}
	loadCaddyfile(t, cfg("30s", "first"))
	if st := ws.Breaker.State(); st != breaker.StateClosed {
		t.Fatalf("after a reload with new breaker settings the breaker is %s, want a new one, closed", st)
	}
	if got := ws.Breaker.Settings().Timeout; got != 30*time.Second {
		t.Errorf("breaker timeout = %v after the reload, want 30s", got)
	}
	if got := ws.Breaker.Trips(); got != lifetime {
		t.Errorf("breaker openings = %d after the reload, want %d: the reload is no trip", got, lifetime)
	}
	eventually(t, 5*time.Second, "the pool saw the breaker closed", func() bool { return ws.Trips.Load() == 0 })
	if !ws.Health.Isolated() {
		t.Error("the operator's isolation did not survive the reload")
	}
}

// A reload that drops the health block forgets what the probes found: a
// worker whose probes failed is not left "unhealthy" by a config that no
// longer probes it.
func TestReloadWithoutProbesForgetsProbeState(t *testing.T) {
	a, b := newBackend(t), newBackend(t)
	a.setHealth(status(http.StatusInternalServerError, "sick"))
	probed := siteConfig([]string{a.addr, b.addr}, `
		name noprobes
		health {
			uri /health
			interval 50ms
			fails 1
		}`)
	loadCaddyfile(t, probed)
	eventually(t, 5*time.Second, "the probes found the worker unhealthy", func() bool {
		return !pool.ViewOf(workerOf(t, "noprobes", a.addr), time.Now()).ProbeHealthy
	})

	loadCaddyfile(t, siteConfig([]string{a.addr, b.addr}, `
		name noprobes`))
	v := pool.ViewOf(workerOf(t, "noprobes", a.addr), time.Now())
	if !v.ProbeHealthy || v.State() == "unhealthy" {
		t.Fatalf("after a reload without probes the worker reads %q (probe healthy %v)", v.State(), v.ProbeHealthy)
	}
}
