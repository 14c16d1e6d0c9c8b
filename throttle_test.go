package bifrost

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// perUserLimit answers 429 with Retry-After: 30 to the user "abuser" and
// 200 to everyone else, as a per-user rate limit does.
func perUserLimit(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-User") == "abuser" {
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusTooManyRequests)
		return
	}
	_, _ = w.Write([]byte("ok"))
}

// One client over its rate limit, answered 429 + Retry-After: 30 by every
// backend, throttles no worker: the other clients keep being served, and
// that client gets the upstream's 429 with its Retry-After after a single
// try. Were each 429 retried on the other worker and held against both,
// both would be throttled for 30 s, and the pool, in panic mode, would
// answer the other clients with 502s.
func TestOneClientsRateLimitThrottlesNoWorker(t *testing.T) {
	a, b := newBackend(t), newBackend(t)
	a.set(perUserLimit)
	b.set(perUserLimit)
	h := loadHandler(t, siteConfig([]string{a.addr, b.addr}, `
		name peruser
		lb_policy round_robin`))

	stop := startLoad(t, 3, 5*time.Millisecond)
	for i := range 15 {
		id := fmt.Sprintf("abuser-%d", i)
		code, _, hdr := do(t, http.MethodGet, testSite+"/", nil, "X-User", "abuser", "X-Request-Id", id)
		if code != http.StatusTooManyRequests || hdr.Get("Retry-After") != "30" {
			t.Errorf("abuser request %d: got %d, Retry-After %q; want the upstream's 429 with Retry-After 30", i, code, hdr.Get("Retry-After"))
		}
		if n := a.executions(id) + b.executions(id); n != 1 {
			t.Errorf("abuser request %d reached the upstreams %d times, want 1", i, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if sent, failed := stop(); failed != 0 || sent == 0 {
		t.Fatalf("other clients: %d served, %d not", sent-failed, failed)
	}
	for _, wk := range h.workers {
		if snap := wk.Health.Snapshot(time.Now()); snap.Throttled || snap.Isolated {
			t.Fatalf("%s taken out by one client's 429s: %+v", wk.ID, snap)
		}
	}
}

// A worker that answers 429 to everyone is throttled after a short streak
// of them to more than one client, and the following requests go to the
// other worker.
func TestWorkerThrottlingEveryoneIsThrottled(t *testing.T) {
	limited, other := newBackend(t), newBackend(t)
	limited.set(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusTooManyRequests)
	})
	h := loadHandler(t, siteConfig([]string{limited.addr, other.addr}, `
		name everyone
		lb_policy round_robin`))
	wk := workerAt(t, h, limited.addr)
	seen := 0
	clients := []*http.Client{clientFrom(t, "127.0.0.2"), clientFrom(t, "127.0.0.3")}
	for i := range 20 {
		// round robin gives the limited worker every other request:
		// each client sends two in a row
		code := getFrom(t, clients[i/2%2], "/")
		if code == http.StatusTooManyRequests {
			seen++
		}
	}
	if seen != throttleStreak {
		t.Errorf("clients got %d 429s, want %d (the streak that shows the worker throttles everyone)", seen, throttleStreak)
	}
	if !wk.Health.Snapshot(time.Now()).Throttled {
		t.Fatal("the worker answering 429 to everyone is not throttled")
	}
	if n := limited.hits.Load(); n != throttleStreak {
		t.Errorf("the throttled worker got %d requests, want %d", n, throttleStreak)
	}
}

// With `retry { on 429 }`, a 429 is the worker's state, as before: it is
// retried on another worker, and throttles its worker at once.
func TestRetryOn429IsTheWorkersState(t *testing.T) {
	limited, other := newBackend(t), newBackend(t)
	limited.set(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusTooManyRequests)
	})
	h := loadHandler(t, siteConfig([]string{limited.addr, other.addr}, `
		name on429
		lb_policy first
		retry {
			on connect_failure 5xx 429
		}`))
	for i := range 5 {
		if code, _ := get(t, "/"); code != http.StatusOK {
			t.Fatalf("request %d: got %d, want the other worker's 200", i, code)
		}
	}
	if n := limited.hits.Load(); n != 1 {
		t.Fatalf("the limited worker got %d requests, want 1 (throttled by the first 429)", n)
	}
	if !workerAt(t, h, limited.addr).Health.Snapshot(time.Now()).Throttled {
		t.Fatal("not throttled")
	}
}
