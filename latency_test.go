package bifrost

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bifrost-proxy/bifrost/pool"
)

// With the default selection policy, a backend that answers 300 ms slower
// than its peers gets under 5% of the requests once its latency is known.
func TestSlowBackendGetsLittleTraffic(t *testing.T) {
	slow, b, c := newBackend(t), newBackend(t), newBackend(t)
	slow.set(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(300 * time.Millisecond)
		fmt.Fprint(w, "slow")
	})
	loadCaddyfile(t, siteConfig([]string{slow.addr, b.addr, c.addr}, `name slow300`))
	load(t, 4, 500*time.Millisecond) // warm-up: the policy learns the latencies
	before := slow.hits.Load()
	sent, failed := load(t, 4, 2*time.Second)
	share := float64(slow.hits.Load()-before) / float64(sent)
	if failed != 0 || share >= 0.05 {
		t.Fatalf("slow backend got %.1f%% of %d requests (%d failed); want under 5%%", 100*share, sent, failed)
	}
}

// A backend that never answers gets no new requests within a second, its
// stuck requests are answered through a hedge, and the hedge losers are
// cancelled (the backend sees the cancellation).
func TestHungBackendIsHedgedAround(t *testing.T) {
	hung, b, c := newBackend(t), newBackend(t), newBackend(t)
	var cancelled atomic.Int64
	hung.set(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
		cancelled.Add(1)
	})
	loadCaddyfile(t, siteConfig([]string{hung.addr, b.addr, c.addr}, `
		name hung
		lb_policy round_robin
		retry {
			hedge 50ms
		}`))

	// round robin sends every third request to the hung worker at first
	start := time.Now()
	for i := range 30 {
		code, body := get(t, "/")
		if code != http.StatusOK || body == "" {
			t.Fatalf("request %d: %d %q", i, code, body)
		}
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("30 requests took %s: the hung worker's requests were not hedged", d)
	}
	if hung.hits.Load() == 0 {
		t.Fatal("the hung worker was never tried")
	}
	eventually(t, 2*time.Second, "the hung worker to see its hedged requests cancelled", func() bool {
		return cancelled.Load() == hung.hits.Load()
	})
	var stats pool.StatsView
	adminJSON(t, http.MethodGet, "/bifrost/stats", &stats)
	if stats.ByKind["timeout"] != 0 || stats.ByKind["canceled"] != 0 {
		t.Errorf("hedge losers counted against a worker: %v", stats.ByKind)
	}
}

// With the default policy and hedging, a hung backend stops getting new
// requests within a second. (On a loaded 2-core machine a healthy worker's
// latency can spike past the hung one's decaying estimate, so a stray pick
// is tolerated: at most 3% of the requests of the second second, against
// a third without steering. 0.5% failed twice on a clean tree while four
// test runs shared the machine's two cores.)
func TestHungBackendStopsGettingRequests(t *testing.T) {
	hung, b, c := newBackend(t), newBackend(t), newBackend(t)
	hung.set(hang)
	loadCaddyfile(t, siteConfig([]string{hung.addr, b.addr, c.addr}, `
		name hangp2c
		retry {
			hedge 20ms
		}`))
	sent, failed := load(t, 4, time.Second)
	if failed != 0 {
		t.Fatalf("%d of %d requests failed", failed, sent)
	}
	before := hung.hits.Load()
	sent, failed = load(t, 4, time.Second)
	if failed != 0 || float64(hung.hits.Load()-before) > 0.03*float64(sent) {
		t.Fatalf("after a second of load the hung worker still got %d of %d new requests (%d failed)",
			hung.hits.Load()-before, sent, failed)
	}
}

// Without hedging, a worker whose requests wait unanswered while its peers
// answer, and that then leaves a suspicion probe unanswered, is isolated
// as a timeout soon after the hang threshold, before any timeout fires;
// its stuck requests move to other workers.
func TestHungBackendIsIsolated(t *testing.T) {
	hung, b, c := newBackend(t), newBackend(t), newBackend(t)
	hung.set(hang)
	loadCaddyfile(t, siteConfig([]string{hung.addr, b.addr, c.addr}, `
		name hangiso
		lb_policy round_robin
		retry {
			per_try_timeout 1500ms
		}
		isolation {
			hang_threshold 300ms
			hang_requests 2
		}`))
	sent, failed := load(t, 6, 2*time.Second)
	if failed != 0 {
		t.Fatalf("%d of %d requests failed", failed, sent)
	}
	ws := workerOf(t, "hangiso", hung.addr)
	if !ws.Health.Isolated() {
		t.Fatalf("hung worker not isolated: %+v", ws.Health.Snapshot(time.Now()))
	}
	if r := ws.Health.Snapshot(time.Now()).IsolationReason; len(r) < len(reasonHang) || r[:len(reasonHang)] != string(reasonHang) {
		t.Fatalf("isolation reason %q", r)
	}
	// six clients can have at most six requests stuck on it, plus the
	// suspicion probe (HEAD /) that found it hanging
	if hits := hung.hits.Load(); hits > 7 {
		t.Fatalf("hung worker got %d requests; want it out after a few stuck ones and one suspicion probe", hits)
	}
}

// A try whose worker's breaker refuses it (half-open, its one probe slot
// taken) never reaches that worker: another worker takes its place at once,
// in a try alone and in a race of hedged tries (without waiting for the
// hedge delay).
func TestRefusedTryIsReplaced(t *testing.T) {
	for name, retry := range map[string]string{
		"alone":  "",
		"racing": "retry {\n\t\t\thedge 5s\n\t\t}",
	} {
		t.Run(name, func(t *testing.T) { testRefusedTryIsReplaced(t, retry) })
	}
}

func testRefusedTryIsReplaced(t *testing.T, retry string) {
	a, b := newBackend(t), newBackend(t)
	a.set(status(http.StatusBadGateway, "bad"))
	loadCaddyfile(t, siteConfig([]string{a.addr, b.addr}, `
		name refused
		lb_policy first
		breaker {
			failures 1
			successes 1
			timeout 200ms
		}
		`+retry))
	// one failure opens a's breaker; the request is retried on b
	if code, body := get(t, "/"); code != http.StatusOK || body != "ok from "+b.addr {
		t.Fatalf("first request: %d %q", code, body)
	}
	wk := workerOf(t, "refused", a.addr)
	eventually(t, 2*time.Second, "a's breaker to be ready for a probe", wk.Breaker.Ready)

	// the next request is a's half-open probe, and a holds it
	release := make(chan struct{})
	a.set(func(w http.ResponseWriter, r *http.Request) {
		<-release
		fmt.Fprint(w, "probe answered")
	})
	hits := a.hits.Load()
	probe := make(chan string, 1)
	go func() {
		_, body := get(t, "/")
		probe <- body
	}()
	eventually(t, 2*time.Second, "the probe to reach a", func() bool { return a.hits.Load() == hits+1 })

	// a is still the policy's first choice, but its breaker refuses
	start := time.Now()
	code, body := get(t, "/")
	if code != http.StatusOK || body != "ok from "+b.addr {
		t.Fatalf("request during the probe: %d %q, want b's answer", code, body)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("request during the probe took %s: the refused try was not replaced at once", d)
	}
	if n := a.hits.Load(); n != hits+1 {
		t.Fatalf("a saw %d requests after the probe, want none", n-hits-1)
	}
	close(release)
	if body := <-probe; body != "probe answered" {
		t.Fatalf("probe answered %q", body)
	}
}

// A client that takes its time to send a request body does not make the
// worker look slow: the try starts once the body is buffered.
func TestSlowUploadIsNotTheWorkersLatency(t *testing.T) {
	bk := newBackend(t)
	h := loadHandler(t, siteConfig([]string{bk.addr}, "\t\tname upload"))
	if len(h.workers) != 1 {
		t.Fatalf("%d workers, want 1", len(h.workers))
	}

	pr, pw := io.Pipe()
	go func() {
		_, _ = pw.Write([]byte("first half, "))
		time.Sleep(400 * time.Millisecond)
		_, _ = pw.Write([]byte("second half"))
		pw.Close()
	}()
	if code, _, _ := doStream(t, http.MethodPost, testSite+"/", pr); code != http.StatusOK { // chunked: no length
		t.Fatalf("got %d", code)
	}
	est, ok := h.workers[0].tracker.Estimate(time.Now())
	if !ok {
		t.Fatal("the worker's tracker saw no answer")
	}
	if est > 200*time.Millisecond {
		t.Errorf("worker latency estimate %v after a 400ms upload to a backend that answers at once; want the backend's own time", est)
	}
}

// The default policy's choice, which the handler makes over its workers
// directly, is the choice the policy's Select makes: never a worker that
// is unavailable, never the dearer of two.
func TestDirectChoiceIsThePolicys(t *testing.T) {
	h := loadHandler(t, siteConfig([]string{deadAddr(t), deadAddr(t), deadAddr(t)}, "\t\tname direct"))
	if len(h.workers) != 3 {
		t.Fatalf("%d workers, want 3", len(h.workers))
	}
	if !h.directP2C {
		t.Fatal("the default policy's choice is not made over the workers")
	}
	slow, tripped, fast := h.workers[0], h.workers[1], h.workers[2]
	now := time.Now()
	for _, wk := range []*worker{slow, fast} {
		lat := time.Millisecond
		if wk == slow {
			lat = 300 * time.Millisecond
		}
		wk.tracker.Done(wk.tracker.Start(now), now, lat, false)
	}
	tripped.Breaker.Trip()
	defer tripped.Breaker.Reset()

	r := httptest.NewRequest(http.MethodGet, "/", nil)
	for _, direct := range []bool{true, false} {
		h.directP2C = direct
		for range 200 {
			if got := h.chooseIn(h.set.Load(), r, httptest.NewRecorder(), now); got != fast {
				t.Fatalf("direct=%v: chose %s; want %s, the only cheap available worker", direct, got.ID, fast.ID)
			}
		}
	}
	h.directP2C = true
}

// A first try that answers after its hedge was sent still wins the race:
// the hedge (here to a hung worker) is cancelled, and the answer is the
// first try's. With two workers in round robin, half the requests try the
// slow worker first (the hedge goes to the hung one, and loses), the other
// half the hung one first (the slow worker's hedge wins).
func TestFirstTryWinsAfterItsHedgeWasSent(t *testing.T) {
	slow, hung := newBackend(t), newBackend(t)
	slow.set(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(150 * time.Millisecond)
		_, _ = io.WriteString(w, "slow")
	})
	var cancelled atomic.Int64
	hung.set(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
		cancelled.Add(1)
	})
	loadCaddyfile(t, siteConfig([]string{slow.addr, hung.addr}, `
		name firstwins
		lb_policy round_robin
		retry {
			hedge 30ms
		}`))
	for i := range 6 {
		code, body := get(t, "/")
		if code != http.StatusOK || body != "slow" {
			t.Fatalf("request %d: %d %q, want the slow worker's answer", i, code, body)
		}
	}
	if slow.hits.Load() != 6 || hung.hits.Load() != 6 {
		t.Fatalf("hits: slow %d, hung %d; want every request on both (a first try and a hedge each)", slow.hits.Load(), hung.hits.Load())
	}
	eventually(t, 2*time.Second, "every try on the hung worker to be cancelled", func() bool {
		return cancelled.Load() == 6
	})
}
