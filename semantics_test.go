package bifrost

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// The tests of this file check that what a client sees keeps the meaning
// it has with reverse_proxy: an upstream's answer stands, errors are
// reverse_proxy's, and a request that may have been executed is never
// answered with an invitation to send it again.

// A single upstream answering 500 is asked once, and its own 500 (with
// its body) reaches the client, as with reverse_proxy: asking the same
// failing backend again only loads it more.
func TestSingleUpstreamFailureStands(t *testing.T) {
	bk := newBackend(t)
	bk.set(status(http.StatusInternalServerError, "upstream says no"))
	loadCaddyfile(t, siteConfig([]string{bk.addr}, "\t\tname single500"))
	for i := range 8 { // past the breaker's 5 failures
		code, body, hdr := do(t, http.MethodGet, testSite+"/", nil)
		if code != http.StatusInternalServerError || body != "upstream says no" {
			t.Fatalf("request %d: got %d %q; want the upstream's 500", i, code, body)
		}
		if hdr.Get("Retry-After") != "" {
			t.Fatalf("request %d: Retry-After %q on an upstream's answer", i, hdr.Get("Retry-After"))
		}
	}
	if n := bk.hits.Load(); n != 8 {
		t.Fatalf("the upstream got %d requests for 8; want each asked once", n)
	}
}

// With the single worker's breaker open, its upstream still gets the
// request and its answer reaches the client: a breaker-made 503 in front
// of the only upstream, which answers, would be worse than reverse_proxy.
func TestSingleUpstreamOpenBreakerStillServes(t *testing.T) {
	bk := newBackend(t)
	h := loadHandler(t, siteConfig([]string{bk.addr}, "\t\tname singleopen"))
	h.workers[0].Breaker.Trip()
	code, body := get(t, "/")
	if code != http.StatusOK || !strings.HasPrefix(body, "ok from") {
		t.Fatalf("got %d %q; want the upstream's answer", code, body)
	}
}

// When every try got an upstream's answer, the client gets the last one:
// a 500 stays a 500, never Bifrost's 503.
func TestEveryUpstreamAnswersFailure(t *testing.T) {
	a, b, c := newBackend(t), newBackend(t), newBackend(t)
	for _, bk := range []*backend{a, b, c} {
		bk.set(status(http.StatusInternalServerError, "failed at "+bk.addr))
	}
	loadCaddyfile(t, siteConfig([]string{a.addr, b.addr, c.addr}, "\t\tname all500"))
	code, body, _ := do(t, http.MethodGet, testSite+"/", nil)
	if code != http.StatusInternalServerError || !strings.HasPrefix(body, "failed at ") {
		t.Fatalf("got %d %q; want an upstream's 500", code, body)
	}
	if n := a.hits.Load() + b.hits.Load() + c.hits.Load(); n != 3 {
		t.Fatalf("%d tries; want one per worker", n)
	}
}

// An upstream that aborts its response after the status and part of the
// body: the client gets that status and part, cut short, as from
// reverse_proxy (Caddy's TestReverseProxyResponseHandling /partial).
func TestPartialFailureResponseIsCutShort(t *testing.T) {
	partial := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "500")
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = io.WriteString(w, "partial")
		http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler)
	})
	a, b := rawBackend(t, partial), rawBackend(t, partial)
	loadCaddyfile(t, siteConfig([]string{a, b}, "\t\tname partial"))
	resp, err := client.Get(testSite + "/partial")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusInternalServerError || string(body) != "partial" {
		t.Fatalf("got %d %q; want the upstream's 500 and its partial body", resp.StatusCode, body)
	}
	if err == nil {
		t.Fatal("the cut-short body read as complete")
	}
}

// A POST abandoned after it reached its upstream (per_try_timeout) is not
// retried and answers 504: never a 503 with Retry-After, or a fallback,
// that invites the client to send it again.
func TestAbandonedPostAnswersGatewayTimeout(t *testing.T) {
	hung, other := newBackend(t), newBackend(t)
	hung.set(hang)
	loadCaddyfile(t, siteConfig([]string{hung.addr, other.addr}, `
		name abandoned
		lb_policy first
		retry {
			per_try_timeout 200ms
		}
		fallback {
			status 200
			body "fallback"
		}`))
	code, body, hdr := do(t, http.MethodPost, testSite+"/", []byte("order"), "X-Request-Id", "post-1")
	if code != http.StatusGatewayTimeout {
		t.Fatalf("got %d %q; want 504", code, body)
	}
	if hdr.Get("Retry-After") != "" {
		t.Fatalf("Retry-After %q on a request that may have been executed", hdr.Get("Retry-After"))
	}
	if n := hung.executions("post-1") + other.executions("post-1"); n != 1 {
		t.Fatalf("the POST reached upstreams %d times; want once", n)
	}
}

// Fallback bodies keep literal braces: only known placeholders are
// replaced, so a JSON body is sent as written.
func TestFallbackKeepsLiteralBraces(t *testing.T) {
	loadCaddyfile(t, siteConfig([]string{deadAddr(t)}, `
		name fbjson
		fallback {
			body "{\"json\":1,\"path\":\"{http.request.uri.path}\"}"
			header Content-Type application/json
		}`))
	code, body := get(t, "/x")
	if code != http.StatusServiceUnavailable || body != `{"json":1,"path":"/x"}` {
		t.Fatalf("got %d %q", code, body)
	}
}

func init() {
	caddy.RegisterModule(panicHandler{})
}

// panicHandler is a handler that panics, to put a panic inside a
// worker's reverse_proxy (through handle_response).
type panicHandler struct{}

func (panicHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.bifrost_test_panic", New: func() caddy.Module { return new(panicHandler) }}
}

func (panicHandler) ServeHTTP(http.ResponseWriter, *http.Request, caddyhttp.Handler) error {
	panic(errors.New("test panic inside a worker's handler"))
}

// loadPanickingOn418 runs the adapted config js, whose bifrost handler
// answers a 418 with `handle_response { respond "PANIC" }`, with that
// response made a panicHandler: a panic inside the worker's own
// reverse_proxy.
func loadPanickingOn418(t *testing.T, js []byte) {
	t.Helper()
	s := strings.Replace(string(js), `{"body":"PANIC","handler":"static_response"}`, `{"handler":"bifrost_test_panic"}`, 1)
	if !strings.Contains(s, "bifrost_test_panic") {
		t.Fatalf("could not put the panicking handler in %s", js)
	}
	loadJSON(t, []byte(s))
}

// A panic inside a try of a hedged race, the first try's on the request's
// goroutine or the hedge's on a goroutine of its own, is the request's, as
// a panic in a try that runs alone is: a worker failure (kind worker),
// after which the request gets a 500 (every worker panics here) and the
// process goes on serving. /boom answers after the hedge delay, so that
// both tries run and both panic.
func TestPanicInHedgedTryIsTheRequests(t *testing.T) {
	var inFlight, most atomic.Int64
	boom := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/boom" {
			n := inFlight.Add(1)
			defer inFlight.Add(-1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			time.Sleep(60 * time.Millisecond)
			w.WriteHeader(http.StatusTeapot)
		}
		_, _ = io.WriteString(w, "fine")
	}
	a, b := newBackend(t), newBackend(t)
	a.set(boom)
	b.set(boom)
	js, err := adapt("{\n\tadmin " + testAdmin + "\n\thttp_port 9080\n\tauto_https off\n\tgrace_period 1ns\n}\n" +
		siteConfig([]string{a.addr, b.addr}, `
		name hedgepanic
		retry {
			hedge 10ms
		}
		@teapot status 418
		handle_response @teapot {
			respond "PANIC"
		}`))
	if err != nil {
		t.Fatal(err)
	}
	loadPanickingOn418(t, js)
	for range 3 {
		if code, _ := get(t, "/boom"); code != http.StatusInternalServerError {
			t.Fatalf("a request whose tries panicked got %d, want 500", code)
		}
		if code, body := get(t, "/"); code != http.StatusOK || body != "fine" {
			t.Fatalf("after a panic: got %d %q", code, body)
		}
	}
	if most.Load() < 2 {
		t.Error("no /boom request had two tries at once: the hedges did not run")
	}
}

// Requests already waiting on a worker when it is found hanging are moved
// to another worker, with no per_try_timeout and no hedging: none waits
// for the client's own timeout (here 5 s, far above the 300 ms hang
// threshold). A POST, which may have been executed, is not moved.
func TestWaitingRequestsLeaveAHungWorker(t *testing.T) {
	hung, b, c := newBackend(t), newBackend(t), newBackend(t)
	hung.set(hang)
	loadCaddyfile(t, siteConfig([]string{hung.addr, b.addr, c.addr}, `
		name moved
		lb_policy round_robin
		isolation {
			hang_threshold 300ms
			hang_requests 2
		}`))
	impatient := &http.Client{Timeout: 5 * time.Second}
	var wg sync.WaitGroup
	errs := make(chan error, 12)
	for i := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := impatient.Get(fmt.Sprintf("%s/?n=%d", testSite, i))
			if err != nil {
				errs <- err
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				errs <- fmt.Errorf("request %d: status %d", i, resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if hung.hits.Load() == 0 {
		t.Fatal("the hung backend got no request; the test needs some waiting on it")
	}
	if !workerOf(t, "moved", hung.addr).Health.Isolated() {
		t.Fatal("the hung worker was not isolated")
	}
}

// A request waiting on a worker that is taken out of rotation for another
// reason than hang detection (here its probes time out; a single waiting
// request is too few for hang detection) moves on too, once it has waited
// past the hang threshold, instead of waiting for the client's timeout.
func TestWaitingRequestLeavesAnIsolatedWorker(t *testing.T) {
	hung, good := newBackend(t), newBackend(t)
	hung.set(hang)
	hung.setHealth(hang)
	loadCaddyfile(t, siteConfig([]string{hung.addr, good.addr}, `
		name movedout
		lb_policy first
		health {
			uri /health
			interval 200ms
			timeout 100ms
			fails 2
		}
		isolation {
			hang_threshold 500ms
		}`))
	impatient := &http.Client{Timeout: 6 * time.Second}
	resp, err := impatient.Get(testSite + "/")
	if err != nil {
		t.Fatalf("the request waited for the client's timeout: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || hung.hits.Load() != 1 || good.hits.Load() != 1 {
		t.Fatalf("got %d, tries: hung %d, good %d; want the request moved to the good worker", resp.StatusCode, hung.hits.Load(), good.hits.Load())
	}
}
