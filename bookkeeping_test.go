package bifrost

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"runtime/metrics"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/bifrost-proxy/bifrost/recovery"
)

// benchHandler runs a config with n workers and returns its handler.
func benchHandler(b *testing.B, n int) *Handler {
	b.Helper()
	ups := make([]string, n)
	for i := range ups {
		ups[i] = fmt.Sprintf(`{"dial":"127.0.0.1:%d"}`, 20000+i)
	}
	cfg := `{"admin":{"listen":"` + testAdmin + `"},"apps":{"http":{"servers":{"s":{"listen":["127.0.0.1:9080"],
		"routes":[{"handle":[{"handler":"bifrost","name":"bench","upstreams":[` + strings.Join(ups, ",") + `]}]}]}}}}}`
	if err := caddy.Load([]byte(cfg), true); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = caddy.Load([]byte(`{"admin":{"listen":"`+testAdmin+`"}}`), true) })
	return runningHandler(b)
}

// BenchmarkBookkeeping measures Bifrost's per-request work around a
// successful try, without the proxying itself: selection among the
// workers, breaker Allow and done, the latency tracker, classification,
// and recording (health, monitor, metrics).
func BenchmarkBookkeeping(b *testing.B) {
	for _, c := range []struct {
		n        int
		parallel bool
	}{{3, false}, {300, false}, {3, true}} {
		n, parallel := c.n, c.parallel
		name := fmt.Sprintf("workers=%d", n)
		if parallel {
			name += "/parallel"
		}
		b.Run(name, func(b *testing.B) {
			h := benchHandler(b, n)
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			w := httptest.NewRecorder()
			tw := &tryWriter{method: http.MethodGet}
			body := noBody
			b.ReportAllocs()
			b.ResetTimer()
			if parallel {
				b.RunParallel(func(pb *testing.PB) {
					tw := &tryWriter{method: http.MethodGet}
					for pb.Next() {
						bookkeep(b, h, r, w, tw, body)
					}
				})
				return
			}
			for b.Loop() {
				bookkeep(b, h, r, w, tw, body)
			}
		})
	}
}

// BenchmarkChoose compares the default policy's choice made over the
// workers directly (as the handler does) with the same choice made through
// the policy's Select, which finds trackers by address and workers by
// upstream, on both CPUs at once as under real traffic.
func BenchmarkChoose(b *testing.B) {
	for _, n := range []int{3, 300} {
		h := benchHandler(b, n)
		if !h.directP2C {
			b.Fatal("the default policy's choice is not made directly")
		}
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		for _, direct := range []bool{true, false} {
			name := fmt.Sprintf("workers=%d/select", n)
			if direct {
				name = fmt.Sprintf("workers=%d/direct", n)
			}
			b.Run(name, func(b *testing.B) {
				h.directP2C = direct
				defer func() { h.directP2C = true }()
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					w := httptest.NewRecorder()
					for pb.Next() {
						if h.chooseIn(h.set.Load(), r, w, time.Now()) == nil {
							b.Error("no worker chosen")
							return
						}
					}
				})
			})
		}
	}
}

// bookkeep is one request's bookkeeping around a successful try.
func bookkeep(b *testing.B, h *Handler, r *http.Request, w http.ResponseWriter, tw *tryWriter, body *requestBody) {
	rs := requestState{r: r, body: body}
	wk, _ := h.pick(r, w, &rs, time.Now())
	pass, err := wk.Breaker.Allow()
	if err != nil {
		b.Error(err)
		return
	}
	now := time.Now()
	tok := wk.tracker.Start(now)
	wk.Health.BeginRequest()
	cls := h.classifier.Classify(recovery.Attempt{Status: http.StatusOK, Dialed: true, Wrote: true}, now)
	pass.Done(breakerOutcome(cls)) // with the response headers
	wk.tracker.Done(tok, now, 0, false)
	wk.Health.EndRequest()
	h.record(tryResult{wk: wk, tw: tw, cls: cls, latency: time.Millisecond, end: time.Now(), number: 1}, false)
}

// goroutinesCreated returns how many goroutines this process has started.
func goroutinesCreated() uint64 {
	s := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

// BenchmarkProxy compares a GET through plain reverse_proxy and through
// bifrost, in-process, against three real backends on loopback. It is a
// profiling aid (go test -bench Proxy -cpuprofile) and the guard of the
// request path's cost: it reports allocs/op, B/op and goroutines/op (the
// client's, the server's and the handler's, the same for both) beside
// each other; the side-by-side happy-path throughput comes from the chaos
// suite's alternating runs.
func BenchmarkProxy(b *testing.B) {
	t := &testing.T{}
	backs := []*backend{newBackend(t), newBackend(t), newBackend(t)}
	defer func() {
		for _, bk := range backs {
			bk.close()
		}
	}()
	addrs := make([]string, len(backs))
	for i, bk := range backs {
		addrs[i] = bk.addr
	}
	for _, c := range []struct{ name, directive, block string }{
		{"reverse_proxy", "reverse_proxy", ""},
		{"bifrost", "bifrost", ""},
		// hedging on, with a delay no healthy GET reaches: what arming
		// a hedge costs when none is sent
		{"bifrost_hedge", "bifrost", " {\n\t\tretry {\n\t\t\thedge 5s\n\t\t}\n\t}"},
	} {
		b.Run(c.name, func(b *testing.B) {
			cfg := fmt.Sprintf("{\n\tadmin %s\n\thttp_port 9080\n\tauto_https off\n}\n:9080 {\n\t%s %s%s\n}\n", testAdmin, c.directive, strings.Join(addrs, " "), c.block)
			js, err := adapt(cfg)
			if err != nil {
				b.Fatal(err)
			}
			if err := caddy.Load(js, true); err != nil {
				b.Fatal(err)
			}
			conns := func() (n int64) {
				for _, bk := range backs {
					n += bk.conns.Load()
				}
				return n
			}
			b.ReportAllocs()
			b.ResetTimer()
			before, started := conns(), goroutinesCreated()
			defer func() {
				b.ReportMetric(float64(conns()-before)/float64(b.N), "conns/op")
				b.ReportMetric(float64(goroutinesCreated()-started)/float64(b.N), "goroutines/op")
			}()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := client.Get(testSite + "/")
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		})
	}
}

// TestGETCostsAtMostFourAllocationsMore holds the happy path's cost per
// request (issue 27): a GET through bifrost with its defaults, and with
// hedging on while no hedge is sent, allocates at most 4 objects and 2 KiB
// more than the same GET through plain reverse_proxy, in the same process
// against the same three backends, and starts no goroutine more. Each is
// measured three times, in turns, and keeps its least; what the client
// and the server allocate is the same on every side. Allocation and
// goroutine counts do not depend on the machine's speed, so this is no
// timed test; under the race detector they do differ, and .ci/run runs it
// without.
func TestGETCostsAtMostFourAllocationsMore(t *testing.T) {
	if raceDetector {
		t.Skip("allocation counts differ under the race detector (sync.Pool drops items at random); .ci/run runs this test without -race")
	}
	backs := []*backend{newBackend(t), newBackend(t), newBackend(t)}
	addrs := make([]string, len(backs))
	for i, bk := range backs {
		addrs[i] = bk.addr
	}
	const requests = 1000
	type cost struct{ objects, bytes, goroutines float64 }
	perGET := func(site string) cost {
		cfg := fmt.Sprintf("{\n\tadmin %s\n\thttp_port 9080\n\tauto_https off\n}\n:9080 {\n\t%s\n}\n", testAdmin, site)
		js, err := adapt(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := caddy.Load(js, true); err != nil {
			t.Fatal(err)
		}
		get := func() {
			resp, err := client.Get(testSite + "/")
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("%s: status %d", site, resp.StatusCode)
			}
		}
		for range 200 { // connections, pools and the selection warmed up
			get()
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		started := goroutinesCreated()
		for range requests {
			get()
		}
		goroutines := goroutinesCreated() - started
		runtime.ReadMemStats(&after)
		return cost{float64(after.Mallocs-before.Mallocs) / requests, float64(after.TotalAlloc-before.TotalAlloc) / requests, float64(goroutines) / requests}
	}
	upstreams := strings.Join(addrs, " ")
	sites := []struct{ name, site string }{
		{"reverse_proxy", "reverse_proxy " + upstreams},
		{"bifrost", "bifrost " + upstreams},
		// a delay no GET here reaches: the hedge is armed, never sent
		{"bifrost with hedging", "bifrost " + upstreams + " {\n\t\tretry {\n\t\t\thedge 5s\n\t\t}\n\t}"},
	}
	least := map[string]cost{}
	for range 3 {
		for _, s := range sites {
			c := perGET(s.site)
			if l, ok := least[s.name]; !ok || c.objects < l.objects {
				least[s.name] = c
			}
		}
	}
	rp := least["reverse_proxy"]
	for _, s := range sites[1:] {
		c := least[s.name]
		t.Logf("per GET: reverse_proxy %.1f objects, %.0f B, %.3f goroutines; %s %.1f objects, %.0f B, %.3f goroutines",
			rp.objects, rp.bytes, rp.goroutines, s.name, c.objects, c.bytes, c.goroutines)
		if extra := c.objects - rp.objects; extra > 4.5 {
			t.Errorf("a GET through %s allocates %.1f objects more than through reverse_proxy, want at most 4", s.name, extra)
		}
		if extra := c.bytes - rp.bytes; extra > 2048 {
			t.Errorf("a GET through %s allocates %.0f bytes more than through reverse_proxy, want at most 2048", s.name, extra)
		}
		if extra := c.goroutines - rp.goroutines; extra > 0.5 {
			t.Errorf("a GET through %s starts %.2f goroutines more than through reverse_proxy, want none", s.name, extra)
		}
	}
}
