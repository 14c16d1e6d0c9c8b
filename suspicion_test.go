package bifrost

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// timedLoad runs n clients sending GETs of the test site's root for d,
// and returns how many they sent, how many failed (an error or a status
// other than 200) and the longest wait of one.
func timedLoad(t *testing.T, n int, d time.Duration) (sent, failed int64, longest time.Duration) {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	var s, f atomic.Int64
	end := time.Now().Add(d)
	for range n {
		wg.Go(func() {
			for time.Now().Before(end) {
				start := time.Now()
				resp, err := client.Get(testSite + "/")
				took := time.Since(start)
				s.Add(1)
				mu.Lock()
				longest = max(longest, took)
				mu.Unlock()
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
	wg.Wait()
	return s.Load(), f.Load(), longest
}

// counting wraps a handler, counting the requests it gets by method.
type counting struct {
	heads, others atomic.Int64
	next          http.HandlerFunc
}

func (c *counting) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodHead {
		c.heads.Add(1)
	} else {
		c.others.Add(1)
	}
	c.next(w, r)
}

// A hung backend (it reads requests and never answers) is found by a
// suspicion probe: no waiting request waits much longer than the hang
// threshold plus the probe's timeout, none fails, and the worker is
// isolated as hanging. With default settings, with a health block (whose
// probe the suspicion probe sends) and with least_conn, which sends the
// hung worker a single request and then avoids it, so that only one
// request ever waits there.
func TestSuspicionProbeFindsAHungBackend(t *testing.T) {
	for _, tc := range []struct {
		name, block string
		threshold   time.Duration
		health      bool
	}{
		{name: "defaults", threshold: defaultHangThreshold},
		{name: "probes", threshold: time.Second, health: true, block: `
		health {
			uri /health
			interval 1m
		}
		isolation {
			hang_threshold 1s
		}`},
		{name: "least_conn", threshold: time.Second, block: `
		lb_policy least_conn
		isolation {
			hang_threshold 1s
		}`},
		// a health upstream is another service: the suspicion probe
		// asks the worker itself (HEAD /)
		{name: "health_upstream", threshold: time.Second, block: `
		health {
			uri /health
			upstream UPSTREAM
			interval 1m
		}
		isolation {
			hang_threshold 1s
		}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hung, b, c := newBackend(t), newBackend(t), newBackend(t)
			tc.block = strings.ReplaceAll(tc.block, "UPSTREAM", newBackend(t).addr)
			probe := &counting{next: hang}
			hung.set(probe.serve)
			// /health hangs too; a periodic probe every minute cannot
			// isolate the worker in the test's time (three must fail)
			var healthProbes atomic.Int64
			hung.setHealth(func(w http.ResponseWriter, r *http.Request) {
				healthProbes.Add(1)
				hang(w, r)
			})
			poolName := "hung" + strings.ReplaceAll(tc.name, "_", "")
			h := loadHandler(t, siteConfig([]string{hung.addr, b.addr, c.addr}, "\n\t\tname "+poolName+tc.block))
			sent, failed, longest := timedLoad(t, 4, tc.threshold+1500*time.Millisecond)
			if failed != 0 {
				t.Fatalf("%d of %d requests failed", failed, sent)
			}
			if probe.others.Load() == 0 {
				t.Fatal("no request reached the hung backend; the test needs some waiting there")
			}
			wk := workerAt(t, h, hung.addr)
			snap := wk.Health.Snapshot(time.Now())
			if !snap.Isolated || !strings.HasPrefix(snap.IsolationReason, string(reasonHang)) {
				t.Fatalf("hung worker: isolated %v, reason %q", snap.Isolated, snap.IsolationReason)
			}
			if tc.health {
				if probe.heads.Load() != 0 || healthProbes.Load() < 1 {
					t.Fatalf("the suspicion probe was %d HEAD / and %d /health; want the health probe", probe.heads.Load(), healthProbes.Load())
				}
			} else if probe.heads.Load() != 1 {
				t.Fatalf("%d suspicion probes (HEAD /) reached the hung backend; want 1", probe.heads.Load())
			}
			// the target is the threshold + 0.5 s; the ceiling here
			// is generous, for a busy machine: without the probe the
			// requests would wait for the client's 15 s timeout
			if ceiling := tc.threshold + h.suspicionTimeout() + 1500*time.Millisecond; longest > ceiling {
				t.Fatalf("a request waited %s; want at most %s", longest, ceiling)
			}
			t.Logf("longest wait %s (threshold %s, probe timeout %s)", longest.Round(time.Millisecond), tc.threshold, h.suspicionTimeout())
		})
	}
}

// slowEndpoint answers /slow after d and everything else at once; it
// counts the /slow requests by their X-Request-Id.
func slowEndpoint(d time.Duration) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
		_, _ = w.Write([]byte("ok"))
	}
}

// The slow endpoint: concurrent slow GETs, with a burst of
// ordinary traffic beside them, on workers that then answer nothing else
// but answer their suspicion probes. No worker
// is isolated and each slow GET is executed exactly once, to its end.
// With a verdict from silence alone, the workers holding slow GETs were
// isolated and the GETs run two or three times.
func TestSlowEndpointIsNotAHang(t *testing.T) {
	const slow = 3 * time.Second
	backends := []*backend{newBackend(t), newBackend(t), newBackend(t)}
	probes := make([]*counting, len(backends))
	addrs := make([]string, len(backends))
	for i, be := range backends {
		probes[i] = &counting{next: slowEndpoint(slow)}
		be.set(probes[i].serve)
		addrs[i] = be.addr
	}
	h := loadHandler(t, siteConfig(addrs, `
		name slowok
		isolation {
			hang_threshold 1s
		}`))
	var wg sync.WaitGroup
	var longest atomic.Int64
	codes := make([]int, 9)
	for i := range 9 {
		wg.Go(func() {
			start := time.Now()
			codes[i], _, _ = do(t, http.MethodGet, testSite+"/slow", nil, "X-Request-Id", fmt.Sprint("slow-", i))
			for took := int64(time.Since(start)); ; {
				cur := longest.Load()
				if took <= cur || longest.CompareAndSwap(cur, took) {
					break
				}
			}
		})
	}
	// a burst of 60 ordinary requests while the slow ones run; then the
	// workers answer nothing else, and selection would steer new
	// requests away from their aged ones
	eventually(t, 5*time.Second, "the slow GETs to start", func() bool {
		n := int64(0)
		for _, p := range probes {
			n += p.others.Load()
		}
		return n >= 9
	})
	var burst sync.WaitGroup
	var failed atomic.Int64
	for range 6 {
		burst.Go(func() {
			for range 10 {
				if code, _ := get(t, "/"); code != http.StatusOK {
					failed.Add(1)
				}
			}
		})
	}
	burst.Wait()
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of 60 ordinary requests failed", failed.Load())
	}
	var heads int64
	for i, be := range backends {
		heads += probes[i].heads.Load()
		if snap := workerAt(t, h, be.addr).Health.Snapshot(time.Now()); snap.Isolated {
			t.Fatalf("%s isolated: %s", be.addr, snap.IsolationReason)
		}
	}
	for i := range 9 {
		id := fmt.Sprint("slow-", i)
		n := 0
		for _, be := range backends {
			n += be.executions(id)
		}
		if n != 1 || codes[i] != http.StatusOK {
			t.Errorf("slow GET %d: status %d, executed %d times; want 200, once", i, codes[i], n)
		}
	}
	if heads == 0 {
		t.Fatal("no suspicion probe was sent; the test needs the slow GETs to make their workers suspect")
	}
	if ceiling := slow + 1500*time.Millisecond; time.Duration(longest.Load()) > ceiling {
		t.Fatalf("a slow GET took %s; want at most %s", time.Duration(longest.Load()), ceiling)
	}
	t.Logf("longest slow GET %s, %d suspicion probes", time.Duration(longest.Load()).Round(time.Millisecond), heads)
}

// A worker that serves only long polls, while its peer serves every
// other request, answers nothing else for as long as its polls last: it
// is suspected, answers its suspicion probes, and its polls are neither
// moved nor is it isolated. Suspicion probes go out at most once per hang
// threshold.
func TestLongPolledWorkerWithoutOtherTraffic(t *testing.T) {
	const poll = 3 * time.Second
	polled, other := newBackend(t), newBackend(t)
	probe := &counting{next: longPoll(poll)}
	polled.set(probe.serve)
	other.set(longPoll(poll))
	h := loadHandler(t, siteConfig([]string{polled.addr, other.addr}, `
		name pollonly
		lb_policy header X-Pin
		isolation {
			hang_threshold 1s
		}`))
	// the header policy hashes the header's value onto an upstream: find
	// a value for each
	pin := map[string]string{}
	for i := 0; len(pin) < 2 && i < 100; i++ {
		v := fmt.Sprint("v", i)
		if code, _, _ := do(t, http.MethodGet, testSite+"/", nil, "X-Pin", v, "X-Request-Id", "pin-"+v); code != http.StatusOK {
			t.Fatalf("status %d", code)
		}
		for _, be := range []*backend{polled, other} {
			if _, ok := pin[be.addr]; !ok && be.executions("pin-"+v) > 0 {
				pin[be.addr] = v
			}
		}
	}
	if len(pin) < 2 {
		t.Skip("no header value found for each upstream")
	}
	before := probe.others.Load()
	// ordinary traffic, on the other worker only
	done := make(chan struct{})
	var ordinary sync.WaitGroup
	var ordFailed atomic.Int64
	ordinary.Go(func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if code, _, _ := do(t, http.MethodGet, testSite+"/", nil, "X-Pin", pin[other.addr]); code != http.StatusOK {
				ordFailed.Add(1)
			}
		}
	})
	var wg sync.WaitGroup
	codes := make([]int, 4)
	for i := range codes {
		wg.Go(func() {
			codes[i], _, _ = do(t, http.MethodGet, testSite+"/poll", nil, "X-Pin", pin[polled.addr], "X-Request-Id", fmt.Sprint("poll-", i))
		})
	}
	wg.Wait()
	close(done)
	ordinary.Wait()
	if ordFailed.Load() != 0 {
		t.Fatalf("%d ordinary requests failed", ordFailed.Load())
	}
	for i, code := range codes {
		id := fmt.Sprint("poll-", i)
		if code != http.StatusOK || polled.executions(id) != 1 || other.executions(id) != 0 {
			t.Errorf("poll %d: status %d, executed %d times on its worker and %d on the other; want 200, once, on its worker",
				i, code, polled.executions(id), other.executions(id))
		}
	}
	if got := probe.others.Load() - before; got != int64(len(codes)) {
		t.Errorf("the polled worker got %d requests besides its polls and probes", got-int64(len(codes)))
	}
	if snap := workerAt(t, h, polled.addr).Health.Snapshot(time.Now()); snap.Isolated {
		t.Fatalf("the polled worker was isolated: %s", snap.IsolationReason)
	}
	heads := probe.heads.Load()
	if heads == 0 {
		t.Fatal("no suspicion probe reached the polled worker; the test needs it suspected")
	}
	// polls of 3 s and a threshold of 1 s: probes at about 1 s and 2 s
	// after the polls began, and at most one more at their end
	if heads > 3 {
		t.Fatalf("%d suspicion probes in %s with a hang threshold of 1s; want at most one per threshold", heads, poll)
	}
}
