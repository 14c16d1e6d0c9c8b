package bifrost

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/pool"
	"github.com/bifrost-proxy/bifrost/recovery"
)

// rawRequest sends raw bytes to the test site on a connection of its own
// and returns the status of the answer, 0 if none came.
func rawRequest(t *testing.T, raw string) int {
	t.Helper()
	conn, err := net.Dial("tcp", "127.0.0.1:9080")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte(raw)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// A PUT or DELETE that reached an upstream is not sent again by default,
// as reverse_proxy sends none but GETs again: a write retried after its
// first try timed out could overtake a later one. `retry methods` opts
// in. A refused dial is retried whatever the method.
func TestWritesAreNotRetriedOnceSentByDefault(t *testing.T) {
	first, second := newBackend(t), newBackend(t)
	first.set(reset)
	loadCaddyfile(t, siteConfig([]string{first.addr, second.addr}, `
		name writes
		lb_policy first
		breaker {
			failures 1000
		}`))
	for _, m := range []string{http.MethodPut, http.MethodDelete} {
		id := "once-" + m
		code, _, _ := do(t, m, testSite+"/", []byte("payload"), "X-Request-Id", id)
		if code != http.StatusBadGateway {
			t.Errorf("%s after a reset: got %d, want reverse_proxy's 502", m, code)
		}
		if n := first.executions(id) + second.executions(id); n != 1 {
			t.Errorf("%s reached the upstreams %d times, want 1", m, n)
		}
	}
	if code, _ := get(t, "/"); code != http.StatusOK {
		t.Errorf("GET after a reset: got %d, want the second worker's 200", code)
	}

	client.CloseIdleConnections()
	loadCaddyfile(t, siteConfig([]string{first.addr, second.addr}, `
		name writes2
		lb_policy first
		breaker {
			failures 1000
		}
		retry {
			methods GET PUT
		}`))
	code, _, _ := do(t, http.MethodPut, testSite+"/", []byte("payload"), "X-Request-Id", "listed")
	if code != http.StatusOK || second.executions("listed") != 1 {
		t.Errorf("PUT with retry methods PUT: got %d, %d at the second worker; want it retried there", code, second.executions("listed"))
	}
}

// A hedge sends a request to a second upstream while the first still has
// it: never for a write, even one listed in retry methods.
func TestWritesAreNeverHedged(t *testing.T) {
	a, b := newBackend(t), newBackend(t)
	slow := func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(300 * time.Millisecond)
		_, _ = w.Write([]byte("done"))
	}
	a.set(slow)
	b.set(slow)
	loadCaddyfile(t, siteConfig([]string{a.addr, b.addr}, `
		name nohedge
		retry {
			methods GET DELETE
			hedge 20ms
		}`))
	code, _, _ := do(t, http.MethodDelete, testSite+"/", nil, "X-Request-Id", "del")
	if code != http.StatusOK {
		t.Fatalf("DELETE: got %d, want 200", code)
	}
	if n := a.executions("del") + b.executions("del"); n != 1 {
		t.Fatalf("a DELETE reached %d upstreams, want 1 (no hedge)", n)
	}
	code, _, _ = do(t, http.MethodGet, testSite+"/", nil, "X-Request-Id", "get")
	if n := a.executions("get") + b.executions("get"); code != http.StatusOK || n != 2 {
		t.Fatalf("GET: got %d, %d tries; want 200 with a hedge (2 tries)", code, n)
	}
}

// Bifrost never changes the caller's request: a handle_errors route that
// proxies the request again, after every try was refused, sends its body,
// as it does after reverse_proxy.
func TestCallersRequestIsNotChanged(t *testing.T) {
	good := newBackend(t)
	loadCaddyfile(t, fmt.Sprintf(`:9080 {
	bifrost %s {
		name untouched
		retry {
			attempts 1
		}
	}
	handle_errors {
		reverse_proxy %s
	}
}
`, deadAddr(t), good.addr))
	code, _, _ := do(t, http.MethodPost, testSite+"/", []byte("payload"))
	if code != http.StatusOK || string(good.lastBody()) != "payload" {
		t.Fatalf("handle_errors' reverse_proxy: got %d, body %q at its upstream; want 200 with the request's body", code, good.lastBody())
	}
}

// A panic in a worker's handler (here a handle_response route) is a
// worker failure of its try (the request goes to the other worker): the
// worker's in-flight count goes back down, so a worker with max_requests
// 3 still serves after three panics.
func TestPanicInATryReleasesItsWorker(t *testing.T) {
	a, b := newBackend(t), newBackend(t)
	boom := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/boom" {
			w.WriteHeader(http.StatusTeapot)
		}
		_, _ = io.WriteString(w, "fine")
	}
	a.set(boom)
	js, err := adapt("{\n\tadmin " + testAdmin + "\n\thttp_port 9080\n\tauto_https off\n\tgrace_period 1ns\n}\n" +
		siteConfig([]string{a.addr, b.addr}, `
		name trypanic
		lb_policy first
		max_requests 3
		@teapot status 418
		handle_response @teapot {
			respond "PANIC"
		}`))
	if err != nil {
		t.Fatal(err)
	}
	loadPanickingOn418(t, js)
	h := runningHandler(t)
	for i := range 3 {
		if code, body := get(t, "/boom"); code != http.StatusOK || !strings.Contains(body, b.addr) {
			t.Fatalf("panic %d: got %d %q, want the other worker's answer", i, code, body)
		}
	}
	wk := workerAt(t, h, a.addr)
	if n := wk.Health.InFlight(); n != 0 {
		t.Fatalf("after three panics the worker counts %d requests in flight, want 0", n)
	}
	if code, body := get(t, "/"); code != http.StatusOK || body != "fine" {
		t.Fatalf("after three panics: got %d %q, want the first worker's answer", code, body)
	}
}

// A client whose chunked body is malformed gets a 400, and its request is
// neither retried nor held against a worker: ten such requests open no
// breaker and book no failure.
func TestMalformedClientBodyBlamesNoWorker(t *testing.T) {
	a, b, c := newBackend(t), newBackend(t), newBackend(t)
	h := loadHandler(t, siteConfig([]string{a.addr, b.addr, c.addr}, `
		name badbody
		breaker {
			failures 3
		}`))
	bodies := []string{
		"5\r\nhello\r\nzz\r\n",                                // bad chunk size
		"5\r\nhello\r\n" + strings.Repeat("a", 5000) + "\r\n", // over-long chunk line
	}
	for i := range 10 {
		for _, m := range []string{http.MethodGet, http.MethodPost} {
			raw := m + " / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n" + bodies[i%len(bodies)]
			if code := rawRequest(t, raw); code != http.StatusBadRequest && code != 0 {
				t.Errorf("%s with malformed body %d: got %d, want 400", m, i%len(bodies), code)
			}
		}
	}
	if n := a.hits.Load() + b.hits.Load() + c.hits.Load(); n > 20 {
		t.Errorf("20 requests reached the upstreams %d times: retried", n)
	}
	for _, wk := range h.workers {
		if st := wk.Breaker.State(); st != breaker.StateClosed || wk.Health.ConsecutiveFailures() != 0 {
			t.Errorf("%s: breaker %s, %d failures in a row after the clients' bad bodies", wk.ID, st, wk.Health.ConsecutiveFailures())
		}
	}
	if errs := h.pool.Manager.Errors(recovery.Filter{}); len(errs) != 0 {
		t.Errorf("the clients' bad bodies were booked as failures: %+v", errs[0])
	}
}

// clientFrom returns an HTTP client whose connections come from the
// loopback address ip, a client of its own as far as Caddy can tell.
func clientFrom(t *testing.T, ip string) *http.Client {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	tr := &http.Transport{DialContext: d.DialContext, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Timeout: 15 * time.Second, Transport: tr}
}

// getFrom sends a GET of the test site's path with c and returns its
// status.
func getFrom(t *testing.T, c *http.Client, path string, hdr ...string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, testSite+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// perUserUnavailable answers 503 with Retry-After: 60 to the user
// "abuser" and 200 to everyone else, as some rate limiters do.
func perUserUnavailable(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-User") == "abuser" {
		w.Header().Set("Retry-After", "60")
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ok"))
}

// One request answered 503 + Retry-After by every worker it is retried on
// throttles none of them: that is one client's answer, not the workers'
// state. Were it held against them, the pool would be in panic mode.
func TestOneRequestsUnavailableThrottlesNoWorker(t *testing.T) {
	a, b, c := newBackend(t), newBackend(t), newBackend(t)
	for _, be := range []*backend{a, b, c} {
		be.set(perUserUnavailable)
	}
	h := loadHandler(t, siteConfig([]string{a.addr, b.addr, c.addr}, `
		name oneclient
		lb_policy round_robin`))
	code, _, hdr := do(t, http.MethodGet, testSite+"/", nil, "X-User", "abuser", "X-Request-Id", "one")
	if code != http.StatusServiceUnavailable || hdr.Get("Retry-After") != "60" {
		t.Errorf("abuser: got %d, Retry-After %q; want the upstream's 503 with its Retry-After", code, hdr.Get("Retry-After"))
	}
	if n := a.executions("one") + b.executions("one") + c.executions("one"); n != 3 {
		t.Errorf("the 503 was tried on %d workers, want 3 (a 5xx is retried)", n)
	}
	checkNoneThrottled(t, h, "one request's 503s")
}

// Nine 429s in a row to one client throttle no worker: a run must go to
// more than one client to show a worker's state.
func TestOneClientsRunOf429sThrottlesNoWorker(t *testing.T) {
	a, b, c := newBackend(t), newBackend(t), newBackend(t)
	for _, be := range []*backend{a, b, c} {
		be.set(perUserLimit)
	}
	h := loadHandler(t, siteConfig([]string{a.addr, b.addr, c.addr}, `
		name oneclient429
		lb_policy round_robin`))
	for i := range 9 {
		if code, _, _ := do(t, http.MethodGet, testSite+"/", nil, "X-User", "abuser"); code != http.StatusTooManyRequests {
			t.Fatalf("429 %d: got %d", i, code)
		}
	}
	checkNoneThrottled(t, h, "one client's nine 429s")
	if code, _ := get(t, "/"); code != http.StatusOK {
		t.Fatalf("another client: got %d, want 200", code)
	}
}

// checkNoneThrottled fails the test if a worker of h is throttled or
// isolated.
func checkNoneThrottled(t *testing.T, h *Handler, after string) {
	t.Helper()
	for _, wk := range h.workers {
		if snap := wk.Health.Snapshot(time.Now()); snap.Throttled || snap.Isolated {
			t.Errorf("%s taken out by %s: %+v", wk.ID, after, snap)
		}
	}
}

// A worker answering 503 + Retry-After to everyone is throttled after a
// run of them to more than one client; the last worker that could serve
// is not.
func TestWorkerUnavailableToEveryoneIsThrottled(t *testing.T) {
	down, other := newBackend(t), newBackend(t)
	down.set(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	h := loadHandler(t, siteConfig([]string{down.addr, other.addr}, `
		name unavailable
		lb_policy first
		retry {
			attempts 1
		}`))
	clients := []*http.Client{clientFrom(t, "127.0.0.2"), clientFrom(t, "127.0.0.3")}
	for i := range throttleStreak {
		if code := getFrom(t, clients[i%2], "/"); code != http.StatusServiceUnavailable {
			t.Fatalf("request %d: got %d, want the worker's 503", i, code)
		}
	}
	if !workerAt(t, h, down.addr).Health.Snapshot(time.Now()).Throttled {
		t.Fatal("a worker answering 503 + Retry-After to two clients in a row is not throttled")
	}
	if code := getFrom(t, clients[0], "/"); code != http.StatusOK {
		t.Fatalf("after the throttle: got %d, want the other worker's 200", code)
	}
}

// A throttle takes its worker out for at least a second, whatever the
// answer's Retry-After says: 0, or a date in the past.
func TestThrottleLastsAtLeastASecond(t *testing.T) {
	for _, ra := range []string{"0", "Wed, 21 Oct 2015 07:28:00 GMT"} {
		limited, other := newBackend(t), newBackend(t)
		limited.set(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", ra)
			w.WriteHeader(http.StatusTooManyRequests)
		})
		h := loadHandler(t, siteConfig([]string{limited.addr, other.addr}, `
		name atleast
		lb_policy first
		retry {
			on connect_failure 5xx 429
		}`))
		if code, _ := get(t, "/"); code != http.StatusOK {
			t.Fatalf("Retry-After %q: got %d, want the other worker's 200", ra, code)
		}
		snap := workerAt(t, h, limited.addr).Health.Snapshot(time.Now())
		if d := snap.ThrottledUntil.Sub(snap.LastFailure); d < time.Second {
			t.Errorf("Retry-After %q: throttled for %s, want at least 1s", ra, d)
		}
	}
}

// echoingBackend answers every request with a response whose header
// section quotes the request line, as a broken upstream may: the
// transport's error then quotes it too.
func echoingBackend(t *testing.T) string {
	t.Helper()
	return hostile(t, func(c net.Conn, requestLine string) {
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\n"+requestLine+"\r\n\r\n")
	})
}

// A broken upstream that echoes the request line puts its query string
// into the transport's error: the error history, the status page's feed
// and Bifrost's logs show that error without it.
func TestEchoedSecretsAreRedacted(t *testing.T) {
	const secret = "query-s3cret"
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	js, err := adapt(fmt.Sprintf("{\n\tadmin %s\n\thttp_port 9080\n\tauto_https off\n\tgrace_period 1ns\n\tlog {\n\t\toutput file %s\n\t\tlevel DEBUG\n\t}\n}\n", testAdmin, logFile) +
		siteConfig([]string{echoingBackend(t)}, `
		name echo
		retry {
			attempts 1
		}`))
	if err != nil {
		t.Fatal(err)
	}
	loadJSON(t, js)
	if code, _ := get(t, "/health?token="+secret); code != http.StatusBadGateway {
		t.Fatalf("got %d, want 502", code)
	}
	errs := pool.Errors(recovery.Filter{Pool: "echo"}, nil)
	if len(errs) == 0 {
		t.Fatal("no error booked")
	}
	raw, _ := json.Marshal(errs)
	if bytes.Contains(raw, []byte(secret)) || !bytes.Contains(raw, []byte("/health?redacted")) {
		t.Fatalf("error history: %s; want the echoed request line with its query redacted", raw)
	}
	eventually(t, 5*time.Second, "the failure's log entry", func() bool {
		logs, _ := os.ReadFile(logFile)
		return bytes.Contains(logs, []byte(`"msg":"worker failure"`))
	})
	logs, _ := os.ReadFile(logFile)
	for line := range strings.SplitSeq(string(logs), "\n") {
		// each worker's own reverse_proxy logs its round trips at debug
		// level with the request, URI included, as reverse_proxy does:
		// that is Caddy's request log, not an error text Bifrost records
		if strings.Contains(line, `"msg":"upstream roundtrip"`) {
			continue
		}
		if strings.Contains(line, `"logger":"http.handlers.bifrost"`) && strings.Contains(line, secret) {
			t.Fatalf("Bifrost logged the secret: %s", line)
		}
	}
}

// A client that goes away while its request waits out a backoff gets a
// 499 in the access log, as when it goes away during a try.
func TestClientGoneDuringBackoffIs499(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "access.log")
	loadCaddyfile(t, fmt.Sprintf(`:9080 {
	log {
		output file %s
		format json
	}
	bifrost %s {
		name backoff499
		retry {
			backoff 10s
			jitter 0
		}
	}
}`, logFile, deadAddr(t)))
	ctx, cancel := withTimeout(300 * time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, testSite+"/gone", nil)
	if resp, err := client.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("got %d, want the client's own timeout", resp.StatusCode)
	}
	var status float64
	eventually(t, 15*time.Second, "the access log entry", func() bool {
		data, _ := os.ReadFile(logFile)
		for line := range strings.SplitSeq(string(data), "\n") {
			var entry struct {
				Status  float64 `json:"status"`
				Request struct {
					URI string `json:"uri"`
				} `json:"request"`
			}
			if json.Unmarshal([]byte(line), &entry) == nil && entry.Request.URI == "/gone" {
				status = entry.Status
				return true
			}
		}
		return false
	})
	if status != 499 {
		t.Fatalf("access log status %v, want 499", status)
	}
}

// A hedge's loser, cancelled by the race while its response was still
// arriving, is charged with what its worker answered (here a 500), not
// with the broken copy (an io failure, whose action drops the worker's
// connections): the race broke it. A worker answering 200 just after
// the race was decided is charged nothing.
func TestCancelledHedgeLoserKeepsItsAnswer(t *testing.T) {
	a, b := newBackend(t), newBackend(t)
	a.set(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = io.WriteString(w, "partial")
		http.NewResponseController(w).Flush()
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	})
	b.set(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "fine")
	})
	h := loadHandler(t, siteConfig([]string{a.addr, b.addr}, `
		name loser
		lb_policy first
		retry {
			hedge 20ms
		}`))
	for i := range 3 {
		if code, body := get(t, "/"); code != http.StatusOK || body != "fine" {
			t.Fatalf("request %d: got %d %q, want the hedge's answer", i, code, body)
		}
	}
	for _, e := range h.pool.Manager.Errors(recovery.Filter{}) {
		if e.Kind != recovery.KindHTTP || e.Status != http.StatusInternalServerError {
			t.Errorf("booked against %s: %s %q; want only its answer, an http failure with status 500", e.Context.WorkerID, e.Kind, e.Message)
		}
	}
}

func init() {
	caddy.RegisterModule(reloadOnEvent{})
}

// reloadOnEvent is an event subscriber that loads the config in
// reloadConfig synchronously, once, then closes reloadDone.
type reloadOnEvent struct{}

var (
	reloadConfig []byte
	reloadOnce   sync.Once
	reloadDone   = make(chan error, 1)
)

// CaddyModule returns the Caddy module information.
func (reloadOnEvent) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.bifrost_test_reload", New: func() caddy.Module { return new(reloadOnEvent) }}
}

// Handle reloads the config the first time it is called.
func (reloadOnEvent) Handle(context.Context, caddy.Event) error {
	reloadOnce.Do(func() { reloadDone <- caddy.Load(reloadConfig, true) })
	return nil
}

// An event subscriber that reloads the config synchronously when a
// breaker opens (the pool's loop emits that event) completes its reload:
// the loop emits with no lock held, so the old config's Cleanup does not
// wait for the loop that waits for it.
func TestSubscriberReloadingOnAnEventDoesNotDeadlock(t *testing.T) {
	for _, next := range []string{"reloader", "another"} {
		t.Run("to pool "+next, func(t *testing.T) { subscriberReloads(t, next) })
	}
}

// subscriberReloads runs TestSubscriberReloadingOnAnEventDoesNotDeadlock
// with a reload to a config whose pool is named next: the same pool (the
// loop goes on) or another (the loop stops).
func subscriberReloads(t *testing.T, next string) {
	reloadOnce = sync.Once{}
	good := newBackend(t)
	dead := deadAddr(t)
	config := func(name string, failures int) []byte {
		js, err := adapt("{\n\tadmin " + testAdmin + "\n\thttp_port 9080\n\tauto_https off\n\tgrace_period 1ns\n}\n" +
			siteConfig([]string{good.addr, dead}, fmt.Sprintf(`
		name %s
		lb_policy first
		breaker {
			failures %d
		}`, name, failures)))
		if err != nil {
			t.Fatal(err)
		}
		var cfg map[string]any
		if err := json.Unmarshal(js, &cfg); err != nil {
			t.Fatal(err)
		}
		cfg["apps"].(map[string]any)["events"] = map[string]any{"subscriptions": []any{map[string]any{
			"events":   []string{"breaker_opened"},
			"handlers": []any{map[string]any{"handler": "bifrost_test_reload"}},
		}}}
		out, _ := json.Marshal(cfg)
		return out
	}
	reloadConfig = config(next, 2)
	loadJSON(t, config("reloader", 1))
	good.close() // the first worker refuses, and the second is dead too
	get(t, "/")
	select {
	case err := <-reloadDone:
		if err != nil {
			t.Fatalf("the subscriber's reload failed: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the subscriber's reload did not finish: deadlocked")
	}
}

func init() {
	caddy.RegisterModule(invalidHandler{})
}

// invalidHandler is a handler whose Validate always fails: a config with
// it fails to load after the modules before it were provisioned.
type invalidHandler struct{}

// CaddyModule returns the Caddy module information.
func (invalidHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.bifrost_test_invalid", New: func() caddy.Module { return new(invalidHandler) }}
}

// Validate fails.
func (invalidHandler) Validate() error { return errors.New("invalid on purpose") }

// ServeHTTP is never called.
func (invalidHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	return next.ServeHTTP(w, r)
}

// A reload that fails after Bifrost was provisioned (another handler's
// Validate fails) leaves the running config's pool and workers as they
// were: their settings change only once a config runs.
func TestFailedReloadLeavesTheRunningConfig(t *testing.T) {
	a := newBackend(t)
	config := func(limit, maxRequests int, tail string) []byte {
		// the breaker's settings follow max_requests, so that the failed
		// reload below changes them too
		js, err := adapt("{\n\tadmin " + testAdmin + "\n\thttp_port 9080\n\tauto_https off\n\tgrace_period 1ns\n}\n" +
			fmt.Sprintf(":9080 {\n\troute {\n\t\tbifrost %s {\n\t\t\tname keep\n\t\t\terror_history_limit %d\n\t\t\tmax_requests %d\n\t\t\tbreaker {\n\t\t\t\tfailures %d\n\t\t\t\ttimeout 1m\n\t\t\t}\n\t\t}\n%s\t}\n}\n", a.addr, limit, maxRequests, maxRequests+1, tail))
		if err != nil {
			t.Fatal(err)
		}
		return js
	}
	loadJSON(t, config(10, 5, ""))
	h := runningHandler(t)
	// an open breaker stays open across a failed reload with other
	// breaker settings: a new breaker would start closed
	if !workerOf(t, "keep", a.addr).Breaker.Trip() {
		t.Fatal("could not open the worker's breaker")
	}
	bad := strings.Replace(string(config(2, 1, "\t\trespond MARK\n")), `{"body":"MARK","handler":"static_response"}`, `{"handler":"bifrost_test_invalid"}`, 1)
	if !strings.Contains(bad, "bifrost_test_invalid") {
		t.Fatalf("could not put the invalid handler in %s", bad)
	}
	if err := caddy.Load([]byte(bad), true); err == nil {
		t.Fatal("the invalid config loaded")
	}
	if n := workerOf(t, "keep", a.addr).MaxRequests.Load(); n != 5 {
		t.Errorf("after a failed reload the worker's max_requests is %d, want the running config's 5", n)
	}
	if st := workerOf(t, "keep", a.addr).Breaker.State(); st != breaker.StateOpen {
		t.Errorf("after a failed reload with other breaker settings the breaker is %s, want it still open", st)
	}
	workerOf(t, "keep", a.addr).Breaker.Reset()
	for i := range 5 {
		h.pool.Manager.Record(recovery.ContextualError{Kind: recovery.KindHTTP, Message: fmt.Sprint("error ", i)})
	}
	if n := len(h.pool.Manager.Errors(recovery.Filter{Pool: ""})); n != 5 {
		t.Errorf("after a failed reload the history keeps %d of 5 errors, want all 5 (the running config's limit is 10)", n)
	}
	if code, _ := get(t, "/"); code != http.StatusOK {
		t.Fatalf("the running config answers %d", code)
	}

	// a reload that runs applies its settings
	loadJSON(t, config(2, 1, ""))
	if n := workerOf(t, "keep", a.addr).MaxRequests.Load(); n != 1 {
		t.Errorf("after a reload the worker's max_requests is %d, want 1", n)
	}
}

// A dynamic worker whose tries panicked still retires once its address
// is gone: a panic does not leave its try counted.
func TestPanickedDynamicWorkerRetires(t *testing.T) {
	fastDynamic(t)
	srv := newTestDNS(t)
	port, bs := loopbackBackends(t, 2)
	boom := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/boom" {
			w.WriteHeader(http.StatusTeapot)
		}
		_, _ = io.WriteString(w, "fine")
	}
	bs[0].set(boom)
	bs[1].set(boom)
	name := "app-panic.workers.test"
	srv.setA(name, "127.0.0.2")
	js, err := adapt(fmt.Sprintf("{\n\tadmin %s\n\thttp_port 9080\n\tauto_https off\n\tgrace_period 1ns\n}\n"+`
:9080 {
	bifrost {
		name dynpanic
		dynamic a %s %s {
			refresh 50ms
			resolvers %s
		}
		dynamic_retire_after 100ms
		@teapot status 418
		handle_response @teapot {
			respond "PANIC"
		}
	}
}`, testAdmin, name, port, srv.addr))
	if err != nil {
		t.Fatal(err)
	}
	loadPanickingOn418(t, js)
	h := runningHandler(t)
	first := bs[0].addr
	eventually(t, 10*time.Second, "the A record's worker", func() bool { return hasDial(h, first) })
	for i := range 3 {
		// a worker failure, with no other worker to go to
		if code, _ := get(t, "/boom"); code != http.StatusInternalServerError {
			t.Fatalf("panic %d: got %d, want 500", i, code)
		}
	}
	srv.setA(name, "127.0.0.3")
	id := pool.WorkerID("dynpanic", first)
	eventually(t, 10*time.Second, "the panicked worker retired", func() bool {
		_, err := lookupWorker(id)
		return err != nil
	})
}

// A classify rule for a status is the operator's word: with `status 503
// throttled`, one 503 with Retry-After throttles its worker at once.
func TestClassifyRuleThrottlesAtOnce(t *testing.T) {
	down, other := newBackend(t), newBackend(t)
	down.set(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	h := loadHandler(t, siteConfig([]string{down.addr, other.addr}, `
		name classified
		lb_policy first
		classify {
			status 503 throttled
		}`))
	if code, _ := get(t, "/"); code != http.StatusOK {
		t.Fatalf("got %d, want the other worker's 200", code)
	}
	if !workerAt(t, h, down.addr).Health.Snapshot(time.Now()).Throttled {
		t.Fatal("a 503 that a classify rule calls throttled did not throttle its worker")
	}
}
