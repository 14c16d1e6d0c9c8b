package bifrost

import (
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// longPoll answers /poll after d (a long poll), anything else at once.
func longPoll(d time.Duration) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/poll" {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
		_, _ = w.Write([]byte("ok"))
	}
}

// Long polls are slow by nature: a worker holding several of them beyond
// the hang threshold, while it answers its other requests, is not hung.
// Were hang detection to ignore the worker's own answers, one of the two
// workers would be isolated in each round (and for longer in the next).
func TestLongPollsDoNotIsolateAnAnsweringWorker(t *testing.T) {
	a, b := newBackend(t), newBackend(t)
	a.set(longPoll(1500 * time.Millisecond))
	b.set(longPoll(1500 * time.Millisecond))
	h := loadHandler(t, siteConfig([]string{a.addr, b.addr}, `
		name longpoll
		lb_policy round_robin
		isolation {
			hang_threshold 400ms
			hang_requests 3
		}`))
	for round := range 2 {
		var polls sync.WaitGroup
		var pollFailed atomic.Int64
		for range 12 { // six per worker
			polls.Add(1)
			go func() {
				defer polls.Done()
				resp, err := client.Get(testSite + "/poll")
				if err != nil {
					pollFailed.Add(1)
					return
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					pollFailed.Add(1)
				}
			}()
		}
		done := make(chan struct{})
		go func() { polls.Wait(); close(done) }()
		maxStuck := 0
	short:
		for {
			select {
			case <-done:
				break short
			case <-time.After(20 * time.Millisecond):
			}
			if code, _ := get(t, "/"); code != http.StatusOK {
				t.Fatalf("round %d: a short request got %d", round, code)
			}
			for _, wk := range h.workers {
				maxStuck = max(maxStuck, wk.tracker.Stuck(time.Now(), h.hangAfter))
			}
		}
		if pollFailed.Load() != 0 {
			t.Fatalf("round %d: %d long polls failed", round, pollFailed.Load())
		}
		if maxStuck < h.hangCount {
			t.Fatalf("round %d: at most %d requests were past the hang threshold on a worker; the test needs %d", round, maxStuck, h.hangCount)
		}
		for _, wk := range h.workers {
			if snap := wk.Health.Snapshot(time.Now()); snap.Isolated {
				t.Fatalf("round %d: %s isolated: %s", round, wk.ID, snap.IsolationReason)
			}
		}
	}
}

// A backend that served for a while and then stops answering is still
// isolated as hanging within about the hang threshold: its last answer
// ages like its stuck requests.
func TestBackendThatStopsAnsweringIsIsolated(t *testing.T) {
	hung, b, c := newBackend(t), newBackend(t), newBackend(t)
	h := loadHandler(t, siteConfig([]string{hung.addr, b.addr, c.addr}, `
		name stops
		lb_policy round_robin
		retry {
			per_try_timeout 2s
		}
		isolation {
			hang_threshold 500ms
			hang_requests 2
		}`))
	wk := workerAt(t, h, hung.addr)
	startLoad(t, 4, 10*time.Millisecond)
	eventually(t, 3*time.Second, "the worker to answer", func() bool { return !wk.Health.LastSuccess().IsZero() })
	hung.set(hang)
	from := time.Now()
	eventually(t, 5*time.Second, "the hanging worker's isolation", func() bool { return wk.Health.Isolated() })
	reason := wk.Health.Snapshot(time.Now()).IsolationReason
	if len(reason) < len(reasonHang) || reason[:len(reasonHang)] != string(reasonHang) {
		t.Fatalf("isolation reason %q", reason)
	}
	t.Logf("isolated %s after it stopped answering (threshold 500ms)", time.Since(from).Round(10*time.Millisecond))
}
