package bifrost

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/pool"
	"github.com/bifrost-proxy/bifrost/recovery"
)

// siteConfig returns a Caddyfile site on the test port proxying to the
// given upstreams with the given bifrost block lines.
func siteConfig(upstreams []string, block string) string {
	return fmt.Sprintf(":9080 {\n\tbifrost %s {\n%s\n\t}\n}\n", strings.Join(upstreams, " "), block)
}

// A closed port among three workers: no GET fails, and its breaker opens
// after `failures` failures.
func TestDownWorkerIsInvisibleAndTripsBreaker(t *testing.T) {
	a, b := newBackend(t), newBackend(t)
	dead := deadAddr(t)
	loadCaddyfile(t, siteConfig([]string{a.addr, b.addr, dead}, `
		name down
		lb_policy round_robin
		breaker {
			failures 3
			timeout 1m
		}`))

	for i := range 200 {
		code, body := get(t, "/")
		if code != http.StatusOK || !strings.HasPrefix(body, "ok from") {
			t.Fatalf("request %d: got %d %q", i, code, body)
		}
	}
	ws := workerOf(t, "down", dead)
	if st := ws.Breaker.State(); st != breaker.StateOpen {
		t.Fatalf("breaker of the dead worker is %s, want open", st)
	}
	if c := ws.Breaker.Counts(); c.TotalFailures != 0 && c.TotalFailures < 3 {
		t.Fatalf("counts %+v", c)
	}
	if got := ws.Health.Snapshot(time.Now()).Failures; got != 3 {
		t.Errorf("dead worker failures = %d, want exactly 3 (then its breaker keeps it out)", got)
	}
	if a.hits.Load()+b.hits.Load() != 200 {
		t.Errorf("healthy workers served %d requests, want 200", a.hits.Load()+b.hits.Load())
	}
}

// A 502 is held back and replaced by another worker's answer; with a
// single attempt it passes through untouched.
func TestFailureStatusIsHeldBackOnlyWhileRetryPossible(t *testing.T) {
	bad, good := newBackend(t), newBackend(t)
	bad.set(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Bad", "leaked")
		w.Header().Set("Content-Length", "13")
		w.WriteHeader(http.StatusBadGateway)
		_, _ = w.Write([]byte("bad-gw-body!!"))
	})

	// a header set before bifrost runs must outlive every try that is
	// held back and retried
	before := func(ups []string, block string) string {
		return strings.Replace(siteConfig(ups, block), ":9080 {\n", ":9080 {\n\theader X-Before kept\n", 1)
	}

	t.Run("retried", func(t *testing.T) {
		loadCaddyfile(t, before([]string{bad.addr, good.addr}, `
			name held
			lb_policy first
			breaker {
				failures 1000
			}`))
		for i := range 20 {
			code, body, hdr := do(t, http.MethodGet, testSite+"/", nil)
			if code != http.StatusOK || strings.Contains(body, "bad-gw") {
				t.Fatalf("request %d: got %d %q", i, code, body)
			}
			if hdr.Get("X-Bad") != "" || len(hdr.Values("Content-Length")) > 1 {
				t.Fatalf("request %d: headers of the retried try leaked: %v", i, hdr)
			}
			if hdr.Get("X-Before") != "kept" {
				t.Fatalf("request %d: a header set before bifrost was lost: %v", i, hdr)
			}
		}
		if bad.hits.Load() == 0 {
			t.Fatal("the failing worker was never tried")
		}
	})

	t.Run("held, then replayed", func(t *testing.T) {
		loadCaddyfile(t, before([]string{bad.addr, deadAddr(t)}, `
			name replayed
			lb_policy first
			breaker {
				failures 1000
			}
			retry {
				attempts 2
			}`))
		// the first try's 502 is held back; the second try cannot
		// connect, so the held response is what the client gets
		code, body, hdr := do(t, http.MethodGet, testSite+"/", nil)
		if code != http.StatusBadGateway || body != "bad-gw-body!!" || hdr.Get("X-Bad") != "leaked" || hdr.Get("X-Before") != "kept" {
			t.Fatalf("got %d %q %v, want the held 502 with its headers and X-Before", code, body, hdr)
		}
	})

	t.Run("single attempt", func(t *testing.T) {
		loadCaddyfile(t, siteConfig([]string{bad.addr, good.addr}, `
			name held1
			lb_policy first
			retry {
				attempts 1
			}`))
		code, body, hdr := do(t, http.MethodGet, testSite+"/", nil)
		if code != http.StatusBadGateway || body != "bad-gw-body!!" || hdr.Get("X-Bad") != "leaked" {
			t.Fatalf("got %d %q %v, want the upstream's own 502", code, body, hdr)
		}
	})
}

// A POST whose upstream read it and then reset is not retried; a POST
// whose dial was refused is, because it never left.
func TestPostRetriedOnlyWhenItNeverLeft(t *testing.T) {
	resetter, good := newBackend(t), newBackend(t)
	resetter.set(reset)

	t.Run("reset after read", func(t *testing.T) {
		loadCaddyfile(t, siteConfig([]string{resetter.addr, good.addr}, `
			name post
			lb_policy first`))
		code, _, _ := do(t, http.MethodPost, testSite+"/", []byte("payload"), "X-Request-Id", "post-1")
		if code != http.StatusBadGateway {
			t.Fatalf("got %d, want 502", code)
		}
		if n := resetter.executions("post-1"); n != 1 {
			t.Fatalf("resetting worker saw the POST %d times, want 1", n)
		}
		if n := good.executions("post-1"); n != 0 {
			t.Fatalf("POST was executed again on another worker (%d times)", n)
		}
	})

	t.Run("dial refused", func(t *testing.T) {
		dead := deadAddr(t)
		loadCaddyfile(t, siteConfig([]string{dead, good.addr}, `
			name post2
			lb_policy first`))
		code, body, _ := do(t, http.MethodPost, testSite+"/", []byte("payload"), "X-Request-Id", "post-2")
		if code != http.StatusOK {
			t.Fatalf("got %d %q, want 200 from the second worker", code, body)
		}
		if n := good.executions("post-2"); n != 1 {
			t.Fatalf("second worker saw the POST %d times, want 1", n)
		}
		if got := string(good.lastBody()); got != "payload" {
			t.Fatalf("second worker got body %q", got)
		}
	})
}

// The body of a PUT is replayed byte for byte after a 503; a body over
// max_body is streamed once and not retried.
func TestBodyReplay(t *testing.T) {
	first, second := newBackend(t), newBackend(t)
	first.set(status(http.StatusServiceUnavailable, "busy"))
	loadCaddyfile(t, siteConfig([]string{first.addr, second.addr}, `
		name replay
		lb_policy first
		breaker {
			failures 1000
		}
		retry {
			methods PUT
			max_body 16KiB
		}`))

	body := make([]byte, 10<<10)
	_, _ = rand.Read(body)
	code, _, _ := do(t, http.MethodPut, testSite+"/", body)
	if code != http.StatusOK {
		t.Fatalf("got %d, want 200", code)
	}
	if !bytes.Equal(first.lastBody(), body) || !bytes.Equal(second.lastBody(), body) {
		t.Fatalf("bodies differ: first %d bytes, second %d bytes, sent %d", len(first.lastBody()), len(second.lastBody()), len(body))
	}

	big := make([]byte, 20<<10)
	_, _ = rand.Read(big)
	before := second.hits.Load()
	code, resp, _ := do(t, http.MethodPut, testSite+"/", big)
	if code != http.StatusServiceUnavailable || resp != "busy" {
		t.Fatalf("got %d %q, want the first worker's 503 (a large body is not replayed)", code, resp)
	}
	if !bytes.Equal(first.lastBody(), big) {
		t.Fatalf("first worker got %d bytes, want %d", len(first.lastBody()), len(big))
	}
	if second.hits.Load() != before {
		t.Fatal("a body over max_body was sent twice")
	}
}

// With every worker down the client gets what reverse_proxy would
// answer, the last try's 502, which handle_errors can catch; a fallback
// block answers instead when set.
func TestAllWorkersDown(t *testing.T) {
	d1, d2 := deadAddr(t), deadAddr(t)

	t.Run("502 like reverse_proxy", func(t *testing.T) {
		loadCaddyfile(t, siteConfig([]string{d1, d2}, `name alldown`))
		for i := range 3 { // fresh, then with the breakers counting
			code, _, _ := do(t, http.MethodGet, testSite+"/", nil)
			if code != http.StatusBadGateway {
				t.Fatalf("request %d: got %d, want 502", i, code)
			}
		}
	})

	t.Run("handle_errors", func(t *testing.T) {
		loadCaddyfile(t, fmt.Sprintf(`:9080 {
	bifrost %s %s {
		name alldown2
	}
	handle_errors {
		respond "degraded {err.status_code} {http.bifrost.error_kind}" 503
	}
}`, d1, d2))
		code, body := get(t, "/")
		if code != http.StatusServiceUnavailable || body != "degraded 502 connection" {
			t.Fatalf("got %d %q", code, body)
		}
	})

	t.Run("fallback", func(t *testing.T) {
		loadCaddyfile(t, siteConfig([]string{d1, d2}, `
			name alldown3
			fallback {
				status 200
				body "cached page"
				header X-Degraded yes
			}`))
		code, body, hdr := do(t, http.MethodGet, testSite+"/", nil)
		if code != http.StatusOK || body != "cached page" || hdr.Get("X-Degraded") != "yes" {
			t.Fatalf("got %d %q %v", code, body, hdr)
		}
	})
}

// With `retry { on ... 429 }`, a 429 with Retry-After throttles that
// worker: the client never sees it, and the worker gets no traffic until
// the time has passed. (By default a 429 goes to its client: see
// throttle_test.go.)
func TestThrottledWorker(t *testing.T) {
	limited, other := newBackend(t), newBackend(t)
	limited.set(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "2")
		w.WriteHeader(http.StatusTooManyRequests)
	})
	loadCaddyfile(t, siteConfig([]string{limited.addr, other.addr}, `
		name throttle
		lb_policy first
		retry {
			on connect_failure timeout reset 5xx 429
		}`))

	code, _ := get(t, "/")
	if code != http.StatusOK {
		t.Fatalf("got %d, want 200 from the other worker", code)
	}
	if limited.hits.Load() != 1 {
		t.Fatalf("throttled worker got %d requests, want 1", limited.hits.Load())
	}
	throttledAt := time.Now()
	for time.Since(throttledAt) < 1500*time.Millisecond {
		if code, _ := get(t, "/"); code != http.StatusOK {
			t.Fatalf("got %d while one worker is throttled", code)
		}
	}
	if n := limited.hits.Load(); n != 1 {
		t.Fatalf("throttled worker got %d requests within its Retry-After, want 1", n)
	}
	ws := workerOf(t, "throttle", limited.addr)
	if st := ws.Breaker.State(); st != breaker.StateClosed {
		t.Errorf("a throttled worker's breaker is %s; throttling is not a breaker failure", st)
	}
	limited.set(status(http.StatusOK, "back"))
	eventually(t, 3*time.Second, "throttled worker to get traffic again", func() bool {
		_, body := get(t, "/")
		return body == "back"
	})
}

// A client that cancels mid-request counts against nobody.
func TestClientCancelCountsAgainstNobody(t *testing.T) {
	slow := newBackend(t)
	slow.set(hang)
	loadCaddyfile(t, siteConfig([]string{slow.addr}, `name cancel`))

	ws := workerOf(t, "cancel", slow.addr)
	before := ws.Breaker.Counts()
	ctx, cancel := withTimeout(200 * time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, testSite+"/", nil)
	if resp, err := client.Do(req); err == nil {
		resp.Body.Close()
		t.Fatal("request should have been cancelled")
	}
	eventually(t, 2*time.Second, "the try to end", func() bool { return ws.Health.InFlight() == 0 })
	after := ws.Breaker.Counts()
	if after.TotalFailures != before.TotalFailures || after.ConsecutiveFailures != 0 {
		t.Fatalf("breaker counts changed: before %+v after %+v", before, after)
	}
	if f := ws.Health.Snapshot(time.Now()).Failures; f != 0 {
		t.Fatalf("worker failures = %d, want 0", f)
	}
}

// reverse_proxy subdirectives pass through to every worker and work.
func TestReverseProxySubdirectivesPassThrough(t *testing.T) {
	slow, fast := newBackend(t), newBackend(t)
	var mu sync.Mutex
	var seen []string
	record := func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("X-Test"))
		mu.Unlock()
		fmt.Fprint(w, "fast")
	}
	fast.set(record)
	slow.set(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(2 * time.Second)
		record(w, r)
	})
	loadCaddyfile(t, siteConfig([]string{slow.addr, fast.addr}, `
		name passthrough
		lb_policy first
		header_up X-Test {http.request.uri.path}
		header_down X-Proxied-By bifrost
		transport http {
			response_header_timeout 300ms
		}`))

	code, body, hdr := do(t, http.MethodGet, testSite+"/hello", nil)
	if code != http.StatusOK || body != "fast" {
		t.Fatalf("got %d %q", code, body)
	}
	if hdr.Get("X-Proxied-By") != "bifrost" {
		t.Errorf("header_down not applied: %v", hdr)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) == 0 || seen[len(seen)-1] != "/hello" {
		t.Errorf("header_up not applied: %v", seen)
	}
	errs := pool.Errors(recovery.Filter{Worker: pool.WorkerID("passthrough", slow.addr)}, nil)
	if len(errs) == 0 || errs[0].Kind != recovery.KindTimeout {
		t.Fatalf("slow worker's failure should be a timeout (transport response_header_timeout), got %+v", errs)
	}
}

// Each kind a proxy meets is classified from the real error it produces.
func TestFailuresAreClassifiedFromRealErrors(t *testing.T) {
	refused := deadAddr(t)
	resetter, hanging, err5xx, limited, good := newBackend(t), newBackend(t), newBackend(t), newBackend(t), newBackend(t)
	resetter.set(reset)
	hanging.set(hang)
	err5xx.set(status(http.StatusInternalServerError, "oops"))
	limited.set(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusTooManyRequests)
	})
	cases := []struct {
		name string
		dial string
		want recovery.Kind
	}{
		{"refused dial", refused, recovery.KindConnection},
		{"reset", resetter.addr, recovery.KindIO},
		{"response header timeout", hanging.addr, recovery.KindTimeout},
		{"5xx", err5xx.addr, recovery.KindHTTP},
		{"429", limited.addr, recovery.KindThrottled},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			poolName := fmt.Sprintf("classify%d", i)
			loadCaddyfile(t, siteConfig([]string{tc.dial, good.addr}, fmt.Sprintf(`
				name %s
				lb_policy first
				transport http {
					response_header_timeout 300ms
				}
				retry {
					on connect_failure timeout reset 5xx 429
				}`, poolName)))
			code, _, hdr := do(t, http.MethodGet, testSite+"/", nil)
			if code != http.StatusOK {
				t.Fatalf("got %d, want 200 from the good worker (%v)", code, hdr)
			}
			errs := pool.Errors(recovery.Filter{Worker: pool.WorkerID(poolName, tc.dial)}, nil)
			if len(errs) == 0 {
				t.Fatal("no error recorded")
			}
			if errs[0].Kind != tc.want || errs[0].Severity != tc.want.Severity() {
				t.Fatalf("classified as %s/%s, want %s", errs[0].Kind, errs[0].Severity, tc.want)
			}
		})
	}
}

// The placeholders describe the whole request, and are set before the
// response is written so that deferred header operations can use them.
func TestPlaceholders(t *testing.T) {
	dead := deadAddr(t)
	good := newBackend(t)
	loadCaddyfile(t, fmt.Sprintf(`:9080 {
	header >X-Attempts {http.bifrost.attempts}
	header >X-Worker {http.bifrost.worker}
	header >X-Kind {http.bifrost.error_kind}
	header >X-Severity {http.bifrost.error_severity}
	bifrost %s %s {
		name ph
		lb_policy first
	}
}`, dead, good.addr))
	code, _, hdr := do(t, http.MethodGet, testSite+"/", nil)
	if code != http.StatusOK {
		t.Fatalf("got %d", code)
	}
	want := map[string]string{
		"X-Attempts": "2",
		"X-Worker":   pool.WorkerID("ph", good.addr),
		"X-Kind":     "connection",
		"X-Severity": "low",
	}
	for k, v := range want {
		if got := hdr.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}

	// in a hedged race, the worker that answers is the one named
	hung := newBackend(t)
	hung.set(hang)
	loadCaddyfile(t, fmt.Sprintf(`:9080 {
	header >X-Attempts {http.bifrost.attempts}
	header >X-Worker {http.bifrost.worker}
	bifrost %s %s {
		name ph
		lb_policy first
		retry {
			hedge 20ms
		}
	}
}`, hung.addr, good.addr))
	code, _, hdr = do(t, http.MethodGet, testSite+"/", nil)
	if code != http.StatusOK {
		t.Fatalf("hedged request: got %d", code)
	}
	if got, want := hdr.Get("X-Worker"), pool.WorkerID("ph", good.addr); got != want {
		t.Errorf("hedged request: X-Worker = %q, want the hedge's worker %q", got, want)
	}
	if got := hdr.Get("X-Attempts"); got != "2" {
		t.Errorf("hedged request: X-Attempts = %q, want 2", got)
	}
}

// Caddy reads placeholders after the handler has returned, for instance
// in access log fields that log_append adds, while the handler reuses the
// state of finished requests: what the placeholders show must outlive it.
func TestPlaceholdersOutliveTheHandler(t *testing.T) {
	dead := deadAddr(t)
	good := newBackend(t)
	logFile := filepath.Join(t.TempDir(), "access.log")
	// Response headers, set while the handler runs, are the reference
	// for the log fields, read after it returned. The first requests try
	// the dead worker first (2 tries, a connection error); once its
	// breaker opens the rest go straight to the good one.
	loadCaddyfile(t, fmt.Sprintf(`:9080 {
	log {
		output file %s
		format json
	}
	header >X-Attempts {http.bifrost.attempts}
	header >X-Worker {http.bifrost.worker}
	header >X-Kind {http.bifrost.error_kind}
	log_append bifrost_attempts {http.bifrost.attempts}
	log_append bifrost_worker {http.bifrost.worker}
	log_append bifrost_error {http.bifrost.error_kind}
	bifrost %s %s {
		name outlive
		lb_policy first
	}
}`, logFile, dead, good.addr))
	const n = 20
	want := map[string]string{}
	retried := 0
	for i := range n {
		uri := fmt.Sprintf("/r%d", i)
		code, _, hdr := do(t, http.MethodGet, testSite+uri, nil)
		if code != http.StatusOK {
			t.Fatalf("%s: got %d", uri, code)
		}
		if hdr.Get("X-Attempts") == "2" {
			retried++
		}
		// a header shows an unknown placeholder as is, a log field as ""
		kind := hdr.Get("X-Kind")
		if kind == "{http.bifrost.error_kind}" {
			kind = ""
		}
		want[uri] = hdr.Get("X-Attempts") + " " + hdr.Get("X-Worker") + " " + kind
	}
	if retried == 0 {
		t.Fatal("no request was retried: the test needs some that were")
	}
	// the log file is written as requests end; a new config closes it
	loadCaddyfile(t, ":9080 {\n\trespond ok\n}\n")
	data, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(data)) {
		var entry struct {
			Request struct {
				URI string `json:"uri"`
			} `json:"request"`
			Attempts json.Number `json:"bifrost_attempts"`
			Worker   string      `json:"bifrost_worker"`
			Error    string      `json:"bifrost_error"`
		}
		if err := json.Unmarshal([]byte(line), &entry); err != nil {
			continue
		}
		w, ok := want[entry.Request.URI]
		if !ok {
			continue
		}
		delete(want, entry.Request.URI)
		if got := entry.Attempts.String() + " " + entry.Worker + " " + entry.Error; got != w {
			t.Errorf("%s: the access log shows %q (attempts, worker, error), its response headers %q", entry.Request.URI, got, w)
		}
	}
	if len(want) > 0 {
		t.Errorf("%d requests have no access log entry:\n%s", len(want), data)
	}
}
