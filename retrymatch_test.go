package bifrost

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// retry { match path /idempotent/* } retries only the requests it
// matches, whatever their method; elsewhere it retries nothing, not even
// the default idempotent methods.
func TestRetryMatchScopesRetries(t *testing.T) {
	bad, good := newBackend(t), newBackend(t)
	bad.set(status(http.StatusServiceUnavailable, "bad"))
	loadCaddyfile(t, fmt.Sprintf(`:9080 {
	bifrost %s %s {
		name match
		lb_policy first
		breaker {
			failures 1000
		}
		retry {
			match path /idempotent/*
		}
	}
}
`, bad.addr, good.addr))

	cases := []struct {
		method, path string
		retried      bool
	}{
		{http.MethodGet, "/idempotent/a", true},
		{http.MethodPost, "/idempotent/b", true}, // matched: the user said it is safe
		{http.MethodGet, "/other", false},        // GET, but outside the match
		{http.MethodPost, "/other", false},
	}
	for i, tc := range cases {
		id := fmt.Sprintf("req-%d", i)
		code, body, _ := do(t, tc.method, testSite+tc.path, []byte("payload"), "X-Request-Id", id)
		if tc.retried {
			if code != http.StatusOK || !strings.Contains(body, good.addr) || good.executions(id) != 1 {
				t.Fatalf("%s %s: got %d %q (second worker saw it %d times); want it retried on %s",
					tc.method, tc.path, code, body, good.executions(id), good.addr)
			}
			if got := string(good.lastBody()); got != "payload" {
				t.Fatalf("%s %s: retried with body %q", tc.method, tc.path, got)
			}
		} else if code != http.StatusServiceUnavailable || good.executions(id) != 0 {
			t.Fatalf("%s %s: got %d %q (second worker saw it %d times); want the first worker's 503, not retried",
				tc.method, tc.path, code, body, good.executions(id))
		}
		if n := bad.executions(id); n != 1 {
			t.Fatalf("%s %s: first worker saw it %d times, want 1", tc.method, tc.path, n)
		}
	}
}

// reverse_proxy's lb_retry_match maps onto retry.match, expressions on
// the failed try's response included: {rp.status_code} sees the status of
// the failure, {rp.is_transport_error} a failure without a response.
func TestLBRetryMatchExpressions(t *testing.T) {
	bad, good := newBackend(t), newBackend(t)
	bad.set(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/503":
			w.WriteHeader(http.StatusServiceUnavailable)
		case "/reset":
			reset(w, r)
		default:
			w.WriteHeader(http.StatusInternalServerError)
		}
	})
	loadCaddyfile(t, fmt.Sprintf(`:9080 {
	bifrost %s %s {
		name lbmatch
		lb_policy first
		max_fails 1000
		lb_retries 1
		lb_retry_match {
			expression `+"`{rp.status_code} == 503`"+`
		}
		lb_retry_match {
			method POST
			expression `+"`{rp.is_transport_error} == true`"+`
		}
	}
}
`, bad.addr, good.addr))

	cases := []struct {
		method, path string
		want         int
	}{
		{http.MethodPost, "/503", http.StatusOK},                 // the status matches, whatever the method
		{http.MethodGet, "/500", http.StatusInternalServerError}, // a failure no set matches
		{http.MethodPost, "/reset", http.StatusOK},               // a transport error on a POST, as matched
		{http.MethodPut, "/reset", http.StatusBadGateway},        // a transport error on a PUT: not matched
	}
	for i, tc := range cases {
		id := fmt.Sprintf("lb-%d", i)
		code, body, _ := do(t, tc.method, testSite+tc.path, []byte("payload"), "X-Request-Id", id)
		if code != tc.want {
			t.Fatalf("%s %s: got %d %q, want %d", tc.method, tc.path, code, body, tc.want)
		}
		if want := map[bool]int{true: 1, false: 0}[tc.want == http.StatusOK]; good.executions(id) != want {
			t.Fatalf("%s %s: second worker saw it %d times, want %d", tc.method, tc.path, good.executions(id), want)
		}
	}
}

// A status expression sees only the status of the try that failed: after
// a matched 503 is retried, a reset on the other worker has no status, and
// the POST is not sent a third time on the strength of the earlier 503:
// the client gets the held 503.
func TestRetryMatchStatusIsThisTrysOnly(t *testing.T) {
	busy, resetter := newBackend(t), newBackend(t)
	busy.set(status(http.StatusServiceUnavailable, "busy"))
	resetter.set(reset)
	loadCaddyfile(t, fmt.Sprintf(`:9080 {
	bifrost %s %s {
		name stale
		lb_policy first
		breaker {
			failures 1000
		}
		retry {
			match `+"`{rp.status_code} == 503`"+`
		}
	}
}
`, busy.addr, resetter.addr))
	code, body, _ := do(t, http.MethodPost, testSite+"/", []byte("payload"), "X-Request-Id", "stale-1")
	if busy.executions("stale-1") != 1 || resetter.executions("stale-1") != 1 || code != http.StatusServiceUnavailable {
		t.Fatalf("got %d %q after tries busy %d, resetter %d; want one try each (the 503 retried, the reset not) and the held 503",
			code, body, busy.executions("stale-1"), resetter.executions("stale-1"))
	}
}

// A retry match that looks at the response retries a response it
// matches even when it is no failure, as reverse_proxy's retry_match
// does: a 200 that asks for a retry in a header goes to the next worker,
// and the client gets that worker's answer.
func TestRetryMatchOnResponseHeader(t *testing.T) {
	bad, good := newBackend(t), newBackend(t)
	bad.set(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream-Retry", "true")
		_, _ = w.Write([]byte("bad"))
	})
	good.set(status(http.StatusOK, "good"))
	loadCaddyfile(t, siteConfig([]string{bad.addr, good.addr}, `
		name rmheader
		lb_policy first
		lb_retry_match {
			expression `+"`{rp.header.X-Upstream-Retry} == \"true\"`"+`
		}`))
	code, body := get(t, "/")
	if code != http.StatusOK || body != "good" {
		t.Fatalf("got %d %q; want the second worker's answer", code, body)
	}
	if bad.hits.Load() != 1 || good.hits.Load() != 1 {
		t.Fatalf("tries: bad %d, good %d; want one each", bad.hits.Load(), good.hits.Load())
	}
}
