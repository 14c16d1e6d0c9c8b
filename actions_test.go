package bifrost

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/pool"
	"github.com/bifrost-proxy/bifrost/recovery"
)

// errorsOf returns the error history of one worker, newest first.
func errorsOf(poolName, dial string) []recovery.ContextualError {
	return pool.Errors(recovery.Filter{Worker: pool.WorkerID(poolName, dial)}, nil)
}

// hasKind reports whether errs holds an error of kind k.
func hasKind(errs []recovery.ContextualError, k recovery.Kind) bool {
	for _, e := range errs {
		if e.Kind == k {
			return true
		}
	}
	return false
}

// A classify rule naming isolate_worker isolates the worker that answers
// the status, although an http failure is of low severity.
func TestClassifyRuleIsolatesWorker(t *testing.T) {
	teapot, other := newBackend(t), newBackend(t)
	teapot.set(status(http.StatusTeapot, "short and stout"))
	h := loadHandler(t, siteConfig([]string{teapot.addr, other.addr}, `
		name isolate418
		lb_policy first
		classify {
			status 418 http isolate_worker
		}`))
	wk := workerAt(t, h, teapot.addr)
	// 418 is not in `retry on`: the client gets it
	if code, _ := get(t, "/"); code != http.StatusTeapot {
		t.Fatalf("got %d, want the upstream's 418", code)
	}
	eventually(t, 5*time.Second, "the worker answering 418 isolated", func() bool { return wk.Health.Isolated() })
	snap := wk.Health.Snapshot(time.Now())
	if want := "classified_failure: http (status 418)"; snap.IsolationReason != want {
		t.Errorf("isolation reason %q, want %q", snap.IsolationReason, want)
	}
	for i := range 3 {
		if code, body := get(t, "/"); code != http.StatusOK || !strings.Contains(body, other.addr) {
			t.Fatalf("request %d after the isolation: got %d %q, want the other worker", i, code, body)
		}
	}
	errs := errorsOf("isolate418", teapot.addr)
	if len(errs) == 0 || errs[0].Action != recovery.ActionIsolateWorker {
		t.Errorf("history %+v, want an http failure with action isolate_worker", errs)
	}
}

// A classify rule naming throttle takes the worker out until the answer's
// Retry-After, whatever the kind (a 500 is not a throttled kind).
func TestClassifyRuleThrottlesWorker(t *testing.T) {
	busy, other := newBackend(t), newBackend(t)
	busy.set(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusInternalServerError)
	})
	h := loadHandler(t, siteConfig([]string{busy.addr, other.addr}, `
		name throttle500
		lb_policy first
		classify {
			status 500 http throttle
		}`))
	wk := workerAt(t, h, busy.addr)
	// a 500 is retried (5xx is in the default `retry on`)
	if code, _ := get(t, "/"); code != http.StatusOK {
		t.Fatalf("got %d, want the other worker's 200", code)
	}
	eventually(t, 5*time.Second, "the worker answering 500 throttled", func() bool {
		return wk.Health.Snapshot(time.Now()).Throttled
	})
	if until := wk.Health.ThrottledUntil(); time.Until(until) < 20*time.Second {
		t.Errorf("throttled until %v, want about 30s from now (its Retry-After)", until)
	}
	for range 3 {
		get(t, "/")
	}
	if n := busy.hits.Load(); n != 1 {
		t.Errorf("the throttled worker got %d requests, want 1", n)
	}
	if wk.Health.Isolated() {
		t.Error("throttle isolated the worker")
	}
}

// A classify rule naming restart_worker re-provisions the worker's proxy.
func TestClassifyRuleRestartsWorker(t *testing.T) {
	failing, other := newBackend(t), newBackend(t)
	failing.set(status(http.StatusInternalServerError, "boom"))
	h := loadHandler(t, siteConfig([]string{failing.addr, other.addr}, `
		name restart500
		lb_policy first
		classify {
			status 500 http restart_worker
		}`))
	wk := workerAt(t, h, failing.addr)
	first := wk.proxy.Load()
	if code, _ := get(t, "/"); code != http.StatusOK {
		t.Fatalf("got %d, want the other worker's 200", code)
	}
	eventually(t, 5*time.Second, "a restarted proxy", func() bool { return wk.proxy.Load() != first })
	eventually(t, 5*time.Second, "the restart counted", func() bool {
		return scrape(t)["caddy_bifrost_recovery_actions_total,action=restart_worker,pool=restart500,worker="+wk.ID] == 1
	})
	if wk.Health.Isolated() || wk.Health.Snapshot(time.Now()).Throttled {
		t.Error("restart_worker took the worker out of rotation")
	}
}

// A classify rule naming ignore passes the answer on, does not retry it,
// and holds it against nobody: the breaker (one failure would open it)
// stays closed and the worker keeps its traffic.
func TestClassifyRuleIgnoreCountsAgainstNobody(t *testing.T) {
	flaky, other := newBackend(t), newBackend(t)
	flaky.set(status(http.StatusInternalServerError, "known and harmless"))
	h := loadHandler(t, siteConfig([]string{flaky.addr, other.addr}, `
		name ignore500
		lb_policy first
		breaker {
			failures 1
			timeout 1m
		}
		classify {
			status 500 http ignore
		}`))
	wk := workerAt(t, h, flaky.addr)
	for i := range 3 {
		if code, _ := get(t, "/"); code != http.StatusInternalServerError {
			t.Fatalf("request %d: got %d, want the upstream's 500 (not retried)", i, code)
		}
	}
	if n := flaky.hits.Load(); n != 3 {
		t.Errorf("the worker got %d requests, want all 3", n)
	}
	if n := other.hits.Load(); n != 0 {
		t.Errorf("the other worker got %d requests, want none (ignore is not retried)", n)
	}
	if st := wk.Breaker.State(); st != breaker.StateClosed {
		t.Errorf("breaker %s, want closed", st)
	}
	if n := wk.Health.ConsecutiveFailures(); n != 0 {
		t.Errorf("%d consecutive failures booked, want 0", n)
	}
	errs := errorsOf("ignore500", flaky.addr)
	if len(errs) != 3 || errs[0].Kind != recovery.KindHTTP || errs[0].Action != recovery.ActionIgnore {
		t.Errorf("history %+v, want 3 http failures with action ignore", errs)
	}
}

// The http kind's action (retry) does not override `retry on`: with
// connection failures only, a 502 goes to the client as it is.
func TestRetryOnDecidesWhatIsRetried(t *testing.T) {
	bad, other := newBackend(t), newBackend(t)
	bad.set(status(http.StatusBadGateway, "bad"))
	loadCaddyfile(t, siteConfig([]string{bad.addr, other.addr}, `
		name retryonconnect
		lb_policy first
		retry {
			on connect_failure
		}`))
	if code, body := get(t, "/"); code != http.StatusBadGateway || body != "bad" {
		t.Fatalf("got %d %q, want the upstream's 502 (5xx is not in retry on)", code, body)
	}
	if n := other.hits.Load(); n != 0 {
		t.Errorf("the other worker got %d requests, want 0", n)
	}
}

// A request body over request_body's max_size is the client's doing: the
// try is classified resource_limit_exceeded with action ignore, the
// client gets 413, and neither the breaker (one failure would open it)
// nor the worker's health counts it.
func TestBodyOverLimitCountsAgainstNobody(t *testing.T) {
	a, b := newBackend(t), newBackend(t)
	h := loadHandler(t, fmt.Sprintf(`:9080 {
	request_body {
		max_size 1KB
	}
	bifrost %s %s {
		name bodylimit
		lb_policy first
		breaker {
			failures 1
			timeout 1m
		}
	}
}
`, a.addr, b.addr))
	wk := workerAt(t, h, a.addr)
	for i := range 2 {
		req, err := http.NewRequest(http.MethodPost, testSite+"/", strings.NewReader(strings.Repeat("x", 64<<10)))
		if err != nil {
			t.Fatal(err)
		}
		req.ContentLength = -1 // streamed: the limit is met while proxying
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("request %d: got %d, want 413", i, resp.StatusCode)
		}
	}
	var errs []recovery.ContextualError
	eventually(t, 5*time.Second, "the try booked", func() bool {
		errs = errorsOf("bodylimit", a.addr)
		return len(errs) == 2
	})
	for _, e := range errs {
		if e.Kind != recovery.KindResourceLimit || e.Action != recovery.ActionIgnore {
			t.Errorf("booked %s/%s, want resource_limit_exceeded/ignore", e.Kind, e.Action)
		}
	}
	if st := wk.Breaker.State(); st != breaker.StateClosed {
		t.Errorf("breaker %s, want closed", st)
	}
	if n := wk.Health.ConsecutiveFailures(); n != 0 {
		t.Errorf("%d consecutive failures booked against the worker, want 0", n)
	}
	if n := b.hits.Load(); n != 0 {
		t.Errorf("the other worker got %d requests, want 0 (not retried)", n)
	}
}

// A worker that fails its reinstatement max_recovery_attempts times is
// booked as worker_recovery_failed in the error history and the errors
// metric, besides its event. A worker on probation that fails with an
// isolate_worker action is sent back by its probation, which counts the
// failed reinstatement.
func TestRecoveryFailedIsBooked(t *testing.T) {
	teapot, other := newBackend(t), newBackend(t)
	teapot.set(status(http.StatusTeapot, ""))
	h := loadHandler(t, siteConfig([]string{teapot.addr, other.addr}, `
		name recoveryfailed
		lb_policy first
		isolation {
			base_time 300ms
			max_recovery_attempts 1
		}
		classify {
			status 418 http isolate_worker
		}`))
	wk := workerAt(t, h, teapot.addr)
	get(t, "/")
	eventually(t, 5*time.Second, "the first isolation", func() bool { return wk.Health.Isolated() })
	eventually(t, 10*time.Second, "worker_recovery_failed booked", func() bool {
		get(t, "/") // reaches the worker once it is reinstated
		return hasKind(errorsOf("recoveryfailed", teapot.addr), recovery.KindWorkerRecoveryFailed)
	})
	snap := wk.Health.Snapshot(time.Now())
	if !snap.RecoveryFailed || !snap.Isolated {
		t.Errorf("snapshot %+v, want isolated and recovery failed", snap)
	}
	for _, e := range errorsOf("recoveryfailed", teapot.addr) {
		if e.Kind == recovery.KindWorkerRecoveryFailed &&
			(e.Severity != recovery.SeverityCritical || e.Action != recovery.ActionIsolateWorker || !strings.Contains(e.Message, "recovery failed 1 times")) {
			t.Errorf("booked %+v", e)
		}
	}
	if got := scrape(t)["caddy_bifrost_errors_total,kind=worker_recovery_failed,pool=recoveryfailed,severity=critical,worker="+wk.ID]; got != 1 {
		t.Errorf("errors metric %v, want 1", got)
	}
}

// classify rules accept every kind a response can be and every action;
// invalid combinations are refused, naming the valid values, with the
// file and line.
func TestClassifyRulesTakeEveryKindAndAction(t *testing.T) {
	for _, rule := range []string{
		"status 503 http skip_worker", "status 503 http expand_pool", "status 418 http force_shutdown",
		"status 503 connection_pool_exhausted", "status 421 config", "status 500 worker",
		"status 413 resource_limit_exceeded", "status 495 isolation_violation",
	} {
		cfg := ":8080 {\n\tbifrost 127.0.0.1:9001 {\n\t\tclassify {\n\t\t\t" + rule + "\n\t\t}\n\t}\n}\n"
		if _, err := adapt(cfg); err != nil {
			t.Errorf("%s: %v", rule, err)
		}
	}
	for _, tc := range []struct{ rule, want string }{
		{"status 503 http explode", `unknown recovery action "explode" (valid: none, retry, reconnect, restart_worker, throttle, isolate_worker, ignore, skip_worker, expand_pool, force_shutdown)`},
		{"status 503 http none", `action "none" is not an action`},
		{"status 404 none force_shutdown", `kind "none" makes the status a success`},
		{"status 503 canceled", `kind "canceled" cannot be given to a status`},
		{"status 503 worker_recovery_failed", `kind "worker_recovery_failed" cannot be given to a status`},
	} {
		cfg := ":8080 {\n\tbifrost 127.0.0.1:9001 {\n\t\tclassify {\n\t\t\t" + tc.rule + "\n\t\t}\n\t}\n}\n"
		_, err := adapt(cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "Caddyfile:4") {
			t.Errorf("%s: error %v, want it to contain %q and Caddyfile:4", tc.rule, err, tc.want)
		}
	}
}
