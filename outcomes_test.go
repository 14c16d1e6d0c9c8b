package bifrost

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/bifrost-proxy/bifrost/pool"
)

// The pool counts what its clients got apart from its tries: with one of
// three backends answering 502, every GET is answered 200 after a retry
// (failed tries, no client failure); with every backend down, every GET
// fails for its client. The status page's feed shows the same split.
func TestClientOutcomesApartFromTries(t *testing.T) {
	a, b, c := newBackend(t), newBackend(t), newBackend(t)
	a.set(status(http.StatusBadGateway, "bad"))
	loadCaddyfile(t, fmt.Sprintf(`:9080 {
	handle /bifrost* {
		bifrost_status
	}
	handle {
		bifrost %s %s %s {
			name outcomes
			lb_policy round_robin
			breaker {
				failures 1000
			}
		}
	}
}
`, a.addr, b.addr, c.addr))
	h := runningHandler(t)
	// the page counts from its sampler's first sample on
	eventually(t, 30*time.Second, "the page's first samples", func() bool {
		code, body := get(t, "/bifrost/api/state")
		return code == http.StatusOK && strings.Contains(body, `"outcomes":{"window_ms":`) && !strings.Contains(body, `"outcomes":{"window_ms":0,`)
	})
	const n = 30
	for i := range n {
		if code, _ := get(t, "/"); code != http.StatusOK {
			t.Fatalf("request %d: %d", i, code)
		}
	}
	if got := h.pool.ClientRequests.Load(); got != n {
		t.Fatalf("client requests = %d, want %d", got, n)
	}
	if got := h.pool.ClientFailures.Load(); got != 0 {
		t.Fatalf("client failures = %d with a healthy worker to retry on, want 0", got)
	}
	if a.hits.Load() == 0 {
		t.Fatal("the failing backend got no tries")
	}

	// the feed: clients 0 errors, tries failed
	var st struct {
		Pools []struct {
			Name     string `json:"name"`
			Outcomes struct {
				WindowMS       int64  `json:"window_ms"`
				ClientRequests uint64 `json:"client_requests"`
				ClientErrors   uint64 `json:"client_errors"`
				FailedTries    uint64 `json:"failed_tries"`
			} `json:"outcomes"`
		} `json:"pools"`
	}
	var last string
	t.Cleanup(func() {
		if t.Failed() {
			if i := strings.Index(last, `"outcomes":{"window`); i >= 0 {
				last = last[i:]
			}
			t.Logf("last feed: %.300s", last)
		}
	})
	eventually(t, 30*time.Second, "the feed's outcomes", func() bool {
		code, body := get(t, "/bifrost/api/state")
		last = body
		if code != http.StatusOK || json.Unmarshal([]byte(body), &st) != nil || len(st.Pools) != 1 {
			return false
		}
		o := st.Pools[0].Outcomes
		return o.WindowMS > 0 && o.ClientRequests == n && o.FailedTries > 0
	})
	if o := st.Pools[0].Outcomes; o.ClientErrors != 0 {
		t.Fatalf("feed outcomes %+v: clients saw errors", o)
	}

	b.close()
	c.close()
	before := h.pool.ClientFailures.Load()
	for range 5 {
		if code, _ := get(t, "/"); code < 500 {
			t.Fatalf("with every backend failing: %d", code)
		}
	}
	if got := h.pool.ClientFailures.Load() - before; got != 5 {
		t.Fatalf("client failures = %d after 5 failed requests, want 5", got)
	}
}

// While a dynamic pool's lookups fail, `caddy bifrost status` says so with
// the error, as GET /bifrost/stats does (dynamic_error), and says nothing
// once they succeed again.
func TestStatusCommandShowsDynamicError(t *testing.T) {
	fastDynamic(t)
	srv := newTestDNS(t)
	port, _ := loopbackBackends(t, 2)
	name := "app-cli.workers.test"
	srv.setA(name, "127.0.0.2", "127.0.0.3")
	h := loadHandler(t, fmt.Sprintf(`
:9080 {
	bifrost {
		name dynfail
		dynamic a %s %s {
			refresh 50ms
			resolvers %s
			dial_timeout 200ms
		}
	}
}`, name, port, srv.addr))
	eventually(t, 10*time.Second, "two workers", func() bool { return len(dynamicDials(h)) == 2 })
	text, err := bifrostStatus(t, "--address", testAdmin)
	if err != nil || strings.Contains(text, "lookups failing") {
		t.Fatalf("with lookups working: %v\n%s", err, text)
	}

	srv.fail.Store(true)
	eventually(t, 10*time.Second, "the failure reported", func() bool { return h.pool.DynamicErr.Load() != nil })
	text, err = bifrostStatus(t, "--address", testAdmin)
	if err != nil {
		t.Fatal(err)
	}
	var stats pool.StatsView
	adminJSON(t, http.MethodGet, "/bifrost/stats", &stats)
	msg := stats.Pools["dynfail"].DynamicError
	if msg == "" || !strings.Contains(text, "pool dynfail: upstream lookups failing (the last workers keep serving): ") {
		t.Fatalf("dynamic_error %q; the command does not show it:\n%s", msg, text)
	}
	if !strings.Contains(text, "dynfail_127.0.0.2-"+port) {
		t.Fatalf("the last workers are not listed:\n%s", text)
	}
}
