package bifrost

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/pool"
)

// A backend whose /health turns 503 is isolated after `fails` probes and
// reinstated after `passes`, with the probes' own recovery ending the
// isolation at once.
func TestProbesIsolateAndReinstate(t *testing.T) {
	a, b, c := newBackend(t), newBackend(t), newBackend(t)
	loadCaddyfile(t, siteConfig([]string{a.addr, b.addr, c.addr}, `
		name probes
		health {
			uri /health
			interval 100ms
			passes 2
			fails 2
		}`))
	ws := workerOf(t, "probes", a.addr)
	a.setHealth(status(http.StatusServiceUnavailable, "down"))
	eventually(t, 3*time.Second, "isolation after failed probes", func() bool { return ws.Health.Isolated() })
	snap := ws.Health.Snapshot(time.Now())
	if snap.ProbeFails < 2 {
		t.Errorf("isolated after %d failed probes, want at least 2", snap.ProbeFails)
	}
	// the statistics and the metrics tell the same story
	var stats pool.StatsView
	adminJSON(t, http.MethodGet, "/bifrost/stats", &stats)
	metric := scrape(t)["caddy_bifrost_errors_total,kind=health_check_failed,pool=probes,severity=medium,worker="+ws.ID]
	if n := stats.ByKind["health_check_failed"]; n != 1 || metric != 1 {
		t.Errorf("health_check_failed: stats %d, metric %v, want 1 and 1", n, metric)
	}
	before := a.hits.Load()
	for range 50 {
		if code, _ := get(t, "/"); code != http.StatusOK {
			t.Fatalf("got %d while a worker is isolated", code)
		}
	}
	if a.hits.Load() != before {
		t.Fatalf("isolated worker got %d requests", a.hits.Load()-before)
	}

	a.setHealth(status(http.StatusOK, "ok"))
	eventually(t, 3*time.Second, "reinstatement after passing probes", func() bool { return !ws.Health.Isolated() })
	if s := ws.Health.Snapshot(time.Now()); s.ProbePasses < 2 {
		t.Errorf("reinstated after %d passing probes, want at least 2", s.ProbePasses)
	}
	eventually(t, 3*time.Second, "traffic on the reinstated worker", func() bool {
		get(t, "/")
		return a.hits.Load() > before
	})
}

// A worker whose probes pass while its real traffic fails stays out:
// passive evidence wins over a probe that lies, and each failed
// reinstatement keeps it out longer.
func TestLyingProbeDoesNotReinstate(t *testing.T) {
	liar, b, c := newBackend(t), newBackend(t), newBackend(t)
	liar.set(status(http.StatusInternalServerError, "broken"))
	loadCaddyfile(t, siteConfig([]string{liar.addr, b.addr, c.addr}, `
		name liar
		lb_policy round_robin
		breaker {
			failures 3
			timeout 100ms
		}
		health {
			uri /health
			interval 100ms
		}
		isolation {
			base_time 300ms
			max_time 10s
			breaker_trips 2
		}`))
	ws := workerOf(t, "liar", liar.addr)

	deadline := time.Now().Add(3 * time.Second)
	total := 0
	for time.Now().Before(deadline) {
		code, body := get(t, "/")
		if code != http.StatusOK || body == "broken" {
			t.Fatalf("client saw %d %q", code, body)
		}
		total++
	}
	snap := ws.Health.Snapshot(time.Now())
	if snap.Ejections < 2 {
		t.Fatalf("liar was ejected %d times in 3s, want it re-ejected after failed reinstatements", snap.Ejections)
	}
	if share := float64(liar.hits.Load()) / float64(total); share > 0.05 {
		t.Fatalf("liar got %.1f%% of %d requests although its traffic always fails", 100*share, total)
	}
}

// When every worker fails and then recovers, the first request after the
// recovery succeeds (panic mode tries the least-bad worker).
func TestWholePoolRecoversAtOnce(t *testing.T) {
	bs := []*backend{newBackend(t), newBackend(t), newBackend(t)}
	addrs := make([]string, len(bs))
	for i, b := range bs {
		b.set(status(http.StatusBadGateway, "down"))
		addrs[i] = b.addr
	}
	loadCaddyfile(t, siteConfig(addrs, `
		name whole
		breaker {
			timeout 1m
		}`))
	for range 40 {
		if code, _ := get(t, "/"); code == http.StatusOK {
			t.Fatal("a request succeeded while every backend fails")
		}
	}
	for _, b := range bs {
		if st := workerOf(t, "whole", b.addr).Breaker.State(); st != breaker.StateOpen {
			t.Fatalf("breaker of %s is %s, want open", b.addr, st)
		}
		b.set(status(http.StatusOK, "back"))
	}
	for i := range 20 {
		if code, body := get(t, "/"); code != http.StatusOK || body != "back" {
			t.Fatalf("request %d after recovery: %d %q", i, code, body)
		}
	}
}

// Failures in panic mode, when every worker is out, do not add to the
// workers' failure shares: they tell nothing about one worker against
// another, and the shares would keep the workers avoided, some more than
// others, once the pool is back.
func TestPanicModeFailuresAreNotHeldAgainstWorkers(t *testing.T) {
	bs := []*backend{newBackend(t), newBackend(t), newBackend(t)}
	addrs := make([]string, len(bs))
	for i, b := range bs {
		b.set(status(http.StatusBadGateway, "down"))
		addrs[i] = b.addr
	}
	h := loadHandler(t, siteConfig(addrs, `
		name panicshare
		breaker {
			timeout 1m
		}`))
	// until every breaker is open, each failure counts
	eventually(t, 3*time.Second, "every breaker open", func() bool {
		get(t, "/")
		for _, wk := range h.workers {
			if wk.Breaker.State() != breaker.StateOpen {
				return false
			}
		}
		return true
	})
	before := make([]float64, len(h.workers))
	now := time.Now()
	for i, wk := range h.workers {
		before[i] = wk.tracker.FailureShare(now)
	}
	for range 30 {
		get(t, "/") // panic mode: one try each, every one a 502
	}
	now = time.Now()
	for i, wk := range h.workers {
		if got := wk.tracker.FailureShare(now); got > before[i] {
			t.Errorf("worker %s: failure share %g after panic-mode failures, was %g", wk.Upstream, got, before[i])
		}
	}
}

// A backend failing 30% of its requests is isolated by success-rate
// outlier detection while its peers are healthy.
func TestSuccessRateOutlierIsIsolated(t *testing.T) {
	flaky, b, c := newBackend(t), newBackend(t), newBackend(t)
	var n atomic.Int64
	flaky.set(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%10 < 3 { // 3 requests in 10
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, "ok")
	})
	loadCaddyfile(t, siteConfig([]string{flaky.addr, b.addr, c.addr}, `
		name outlier
		lb_policy round_robin
		breaker {
			failures 1000
		}
		isolation {
			success_rate 30
			outlier_interval 500ms
		}`))
	ws := workerOf(t, "outlier", flaky.addr)
	deadline := time.Now().Add(5 * time.Second)
	for !ws.Health.Isolated() {
		if time.Now().After(deadline) {
			t.Fatalf("flaky worker not isolated: %+v", ws.Health.Snapshot(time.Now()))
		}
		if code, _ := get(t, "/"); code != http.StatusOK {
			t.Fatalf("client saw %d", code)
		}
	}
	if r := ws.Health.Snapshot(time.Now()).IsolationReason; r == "" || r[:len("success_rate_outlier")] != "success_rate_outlier" {
		t.Fatalf("isolation reason %q", r)
	}
	for _, peer := range []string{b.addr, c.addr} {
		if workerOf(t, "outlier", peer).Health.Isolated() {
			t.Fatalf("healthy peer %s isolated", peer)
		}
	}
}

// A reinstated worker's share of traffic ramps up over slow_start.
func TestSlowStart(t *testing.T) {
	a, b := newBackend(t), newBackend(t)
	loadCaddyfile(t, siteConfig([]string{a.addr, b.addr}, `
		name slow
		lb_policy round_robin
		isolation {
			slow_start 3s
		}`))
	if code := adminJSON(t, http.MethodPost, "/bifrost/workers/"+pool.WorkerID("slow", a.addr)+"/isolate", nil); code != http.StatusOK {
		t.Fatalf("isolate: %d", code)
	}
	if code := adminJSON(t, http.MethodPost, "/bifrost/workers/"+pool.WorkerID("slow", a.addr)+"/restore", nil); code != http.StatusOK {
		t.Fatalf("restore: %d", code)
	}
	share := func(n int) float64 {
		before := a.hits.Load()
		for range n {
			get(t, "/")
		}
		return float64(a.hits.Load()-before) / float64(n)
	}
	early := share(200)
	time.Sleep(3 * time.Second)
	late := share(200)
	if early >= 0.35 || late < 0.4 {
		t.Fatalf("share right after restore %.2f, after slow_start %.2f: want a ramp from well below to about 0.5", early, late)
	}
}

// A config reload keeps worker state: an isolated worker stays isolated,
// an open breaker stays open, and a worker removed from the config is
// released.
func TestReloadKeepsWorkerState(t *testing.T) {
	a, b, c := newBackend(t), newBackend(t), newBackend(t)
	dead := deadAddr(t)
	cfg := func(ups ...string) string {
		return siteConfig(ups, `
			name reload
			lb_policy round_robin
			breaker {
				failures 2
				timeout 1m
			}`)
	}
	loadCaddyfile(t, cfg(a.addr, b.addr, c.addr, dead))
	for range 20 {
		get(t, "/")
	}
	if st := workerOf(t, "reload", dead).Breaker.State(); st != breaker.StateOpen {
		t.Fatalf("dead worker's breaker is %s", st)
	}
	if code := adminJSON(t, http.MethodPost, "/bifrost/workers/"+pool.WorkerID("reload", a.addr)+"/isolate?duration=1m", nil); code != http.StatusOK {
		t.Fatalf("isolate: %d", code)
	}

	// reload through the admin API, dropping worker c
	js, err := adapt(`{
	admin ` + testAdmin + `
	http_port 9080
	auto_https off
	grace_period 1ns
}
` + cfg(a.addr, b.addr, dead))
	if err != nil {
		t.Fatal(err)
	}
	code, body, _ := do(t, http.MethodPost, "http://"+testAdmin+"/load", js, "Content-Type", "application/json")
	if code != http.StatusOK {
		t.Fatalf("reload: %d %s", code, body)
	}

	if !workerOf(t, "reload", a.addr).Health.Isolated() {
		t.Error("isolated worker came back after a reload")
	}
	if st := workerOf(t, "reload", dead).Breaker.State(); st != breaker.StateOpen {
		t.Errorf("open breaker is %s after a reload", st)
	}
	if _, err := lookupWorker(pool.WorkerID("reload", c.addr)); err == nil {
		t.Error("the removed worker's state is still held")
	}
	// for the 3 s after the reload, the isolated worker gets nothing
	beforeA := a.hits.Load()
	sent, failed := load(t, 2, 3*time.Second)
	if failed != 0 {
		t.Fatalf("%d of %d requests failed after the reload", failed, sent)
	}
	if n := a.hits.Load() - beforeA; n != 0 {
		t.Errorf("the isolated worker got %d of %d requests in the 3 s after the reload", n, sent)
	}
}

// A worker that comes back from isolation is restarted: it gets a freshly
// provisioned proxy (new transport and connection pool) and serves
// through it.
func TestRestartOnReinstatement(t *testing.T) {
	a, b, c := newBackend(t), newBackend(t), newBackend(t)
	h := loadHandler(t, siteConfig([]string{a.addr, b.addr, c.addr}, `
		name restart
		lb_policy round_robin
		health {
			uri /health
			interval 50ms
			passes 1
			fails 1
		}`))
	wk := workerAt(t, h, a.addr)
	first := wk.proxy.Load()
	a.setHealth(status(http.StatusServiceUnavailable, ""))
	eventually(t, 3*time.Second, "isolation", func() bool { return wk.Health.Isolated() })
	a.setHealth(status(http.StatusOK, ""))
	eventually(t, 3*time.Second, "a restarted proxy", func() bool { return wk.proxy.Load() != first })
	before := a.hits.Load()
	eventually(t, 3*time.Second, "traffic through the restarted worker", func() bool {
		get(t, "/")
		return a.hits.Load() > before
	})
	if got := scrape(t)["caddy_bifrost_recovery_actions_total,action=restart_worker,pool=restart,worker="+wk.ID]; got != 1 {
		t.Errorf("restart_worker recovery actions = %v, want 1", got)
	}
}

// A worker that health checks reinstate starts with a clean selection
// cost: the failure share that its failures built up is forgotten, so the
// default policy sends it traffic at once rather than once the share has
// decayed. (Round robin keeps sending it requests while it fails, to build
// the share up; the trackers are fed whatever the policy.)
func TestReinstatedWorkerStartsClean(t *testing.T) {
	a, b, c := newBackend(t), newBackend(t), newBackend(t)
	loadWithEventLog(t, siteConfig([]string{a.addr, b.addr, c.addr}, `
		name clean
		lb_policy round_robin
		health {
			uri /health
			interval 50ms
			passes 1
			fails 1
		}`))
	h := runningHandler(t)
	wk := workerAt(t, h, a.addr)
	a.set(status(http.StatusBadGateway, "bad"))
	for range 12 {
		get(t, "/")
	}
	if got := wk.tracker.FailureShare(time.Now()); got < 0.1 {
		t.Fatalf("failure share after 4 failures = %g, want more than 0.1", got)
	}
	a.setHealth(status(http.StatusServiceUnavailable, ""))
	// On a busy machine the probes can run late: wait for the events, with
	// a deadline that only guards against a hang.
	waitEvent(t, pool.EventWorkerIsolated, wk.ID)
	restarts := func() int {
		wk.mu.Lock()
		defer wk.mu.Unlock()
		return wk.restarts
	}
	restartsBefore := restarts()
	a.set(status(http.StatusOK, "a"))
	a.setHealth(status(http.StatusOK, ""))
	waitEvent(t, pool.EventWorkerRestored, wk.ID)
	// the event is emitted just before the handler forgives and restarts
	// the worker: wait for the restart, which follows the forgiving
	eventually(t, time.Minute, "the restart after reinstatement", func() bool { return restarts() > restartsBefore })
	if got := wk.tracker.FailureShare(time.Now()); got != 0 {
		t.Fatalf("failure share after reinstatement = %g, want 0", got)
	}
	if wk.tracker.Avoided(time.Now()) {
		t.Fatal("the reinstated worker is still avoided after its failures")
	}
}

// Workers that come back together, as after an outage, are restarted
// together: each restart provisions a new proxy through the config's
// context, whose module maps have no lock. Run with -race: before the
// restarts were serialized, three of them at once raced on those maps.
func TestSimultaneousRestartsDoNotRace(t *testing.T) {
	bs := []*backend{newBackend(t), newBackend(t), newBackend(t), newBackend(t)}
	addrs := make([]string, len(bs))
	for i, b := range bs {
		addrs[i] = b.addr
	}
	h := loadHandler(t, siteConfig(addrs, `
		name together
		lb_policy round_robin
		isolation {
			max_percent 100
		}`))
	for round := range 3 {
		firsts := make(map[*worker]*reverseproxy.Handler)
		for _, wk := range h.workers[:3] {
			firsts[wk] = wk.proxy.Load()
			// the same expiry for all three: one tick restores them
			if _, ok := h.pool.Monitor.IsolateFor(wk.Health, 300*time.Millisecond, "test"); !ok {
				t.Fatalf("round %d: isolating %s refused", round, wk.ID)
			}
		}
		eventually(t, 5*time.Second, "three restarted proxies", func() bool {
			for wk, first := range firsts {
				if wk.proxy.Load() == first {
					return false
				}
			}
			return true
		})
	}
	for i := range 8 {
		if code, _ := get(t, "/"); code != http.StatusOK {
			t.Fatalf("request %d after the restarts: %d", i, code)
		}
	}
}

// isolation { max_percent 0 } turns automatic isolation off, as its
// documentation says, rather than standing for unset (the default 50). A
// worker whose probes fail is marked probe-unhealthy and stays in
// rotation.
func TestMaxPercentZeroIsolatesNothing(t *testing.T) {
	a, b, c := newBackend(t), newBackend(t), newBackend(t)
	c.setHealth(status(http.StatusServiceUnavailable, ""))
	h := loadHandler(t, siteConfig([]string{a.addr, b.addr, c.addr}, `
		name noiso
		health {
			uri /health
			interval 50ms
			fails 1
		}
		isolation {
			max_percent 0
		}`))
	wk := workerAt(t, h, c.addr)
	eventually(t, 3*time.Second, "the failing probes to mark the worker unhealthy", func() bool { return !wk.Health.Snapshot(time.Now()).ProbeHealthy })
	time.Sleep(300 * time.Millisecond) // a few more probes and ticks
	if wk.Health.Isolated() {
		t.Fatalf("worker isolated with max_percent 0: %s", wk.Health.Snapshot(time.Now()).IsolationReason)
	}
}
