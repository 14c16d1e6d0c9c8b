package bifrost

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/pool"
	"github.com/bifrost-proxy/bifrost/recovery"
)

// Every admin endpoint against a running config, including the JSON
// errors for unknown ids, wrong methods and bad input.
func TestAdminAPI(t *testing.T) {
	a, b := newBackend(t), newBackend(t)
	dead := deadAddr(t)
	loadCaddyfile(t, siteConfig([]string{a.addr, b.addr, dead}, `
		name adm
		lb_policy round_robin
		breaker {
			failures 2
			timeout 1m
		}`))
	for range 30 {
		get(t, "/")
	}

	var workers []pool.WorkerView
	if code := adminJSON(t, http.MethodGet, "/bifrost/workers", &workers); code != http.StatusOK || len(workers) != 3 {
		t.Fatalf("GET /bifrost/workers: %d, %d workers", code, len(workers))
	}
	var one pool.WorkerView
	if code := adminJSON(t, http.MethodGet, "/bifrost/workers/"+pool.WorkerID("adm", dead), &one); code != http.StatusOK {
		t.Fatalf("GET one worker: %d", code)
	}
	if one.Upstream != dead || one.Breaker.State.String() != "open" || one.Failures != 2 || one.Breaker.RetryAt.IsZero() {
		t.Fatalf("dead worker view: %+v", one)
	}

	var stats pool.StatsView
	adminJSON(t, http.MethodGet, "/bifrost/stats", &stats)
	if stats.TotalWorkers != 3 || stats.ByKind["connection"] != 2 || stats.BySeverity["low"] != 2 || stats.BreakerTrips != 1 || stats.Retries != 2 {
		t.Fatalf("stats: %+v", stats)
	}

	var errs []recovery.ContextualError
	adminJSON(t, http.MethodGet, "/bifrost/errors?limit=1&worker="+pool.WorkerID("adm", dead)+"&severity=low", &errs)
	if len(errs) != 1 || errs[0].Kind != recovery.KindConnection || errs[0].Context.WorkerID != pool.WorkerID("adm", dead) {
		t.Fatalf("errors: %+v", errs)
	}

	bad := []struct {
		method, path string
		want         int
	}{
		{http.MethodGet, "/bifrost/workers/nope", http.StatusNotFound},
		{http.MethodGet, "/bifrost/nothing", http.StatusNotFound},
		{http.MethodDelete, "/bifrost/workers", http.StatusMethodNotAllowed},
		{http.MethodPost, "/bifrost/stats", http.StatusMethodNotAllowed},
		{http.MethodGet, "/bifrost/workers/" + pool.WorkerID("adm", a.addr) + "/isolate", http.StatusMethodNotAllowed},
		{http.MethodPost, "/bifrost/workers/" + pool.WorkerID("adm", a.addr) + "/explode", http.StatusNotFound},
		{http.MethodGet, "/bifrost/errors?limit=zero", http.StatusBadRequest},
		{http.MethodGet, "/bifrost/errors?limit=-4", http.StatusBadRequest},
		{http.MethodGet, "/bifrost/errors?severity=apocalyptic", http.StatusBadRequest},
		{http.MethodGet, "/bifrost/errors?kind=weird", http.StatusBadRequest},
		{http.MethodPost, "/bifrost/workers/" + pool.WorkerID("adm", a.addr) + "/isolate?duration=-5s", http.StatusBadRequest},
		{http.MethodPost, "/bifrost/workers/" + pool.WorkerID("adm", a.addr) + "/isolate?duration=soon", http.StatusBadRequest},
	}
	for _, tc := range bad {
		var e struct{ Error string }
		if code := adminJSON(t, tc.method, tc.path, &e); code != tc.want || e.Error == "" {
			t.Errorf("%s %s: %d %q, want %d with a JSON error", tc.method, tc.path, code, e.Error, tc.want)
		}
	}
	code, body, hdr := do(t, http.MethodPost, "http://"+testAdmin+"/bifrost/workers/"+pool.WorkerID("adm", a.addr)+"/isolate",
		[]byte(`{"duration": 12}`), "Content-Type", "application/json")
	if code != http.StatusBadRequest || !strings.Contains(hdr.Get("Content-Type"), "json") || !strings.Contains(body, "error") {
		t.Errorf("isolate with a bad body: %d %s", code, body)
	}

	// an isolation with a duration expires by itself
	var v pool.WorkerView
	code, body, _ = do(t, http.MethodPost, "http://"+testAdmin+"/bifrost/workers/"+pool.WorkerID("adm", a.addr)+"/isolate",
		[]byte(`{"duration": "400ms", "reason": "maintenance"}`), "Content-Type", "application/json")
	if err := json.Unmarshal([]byte(body), &v); code != http.StatusOK || err != nil || !v.Isolated || !strings.Contains(v.IsolationReason, "maintenance") {
		t.Fatalf("isolate: %d %s", code, body)
	}
	ws := workerOf(t, "adm", a.addr)
	eventually(t, 3*time.Second, "the operator isolation to expire", func() bool { return !ws.Health.Isolated() })

	// reset closes an open breaker
	adminJSON(t, http.MethodPost, "/bifrost/workers/"+pool.WorkerID("adm", dead)+"/reset", &v)
	if v.Breaker.State.String() != "closed" {
		t.Fatalf("after reset the breaker is %s", v.Breaker.State)
	}
}

// eventLog is a Caddy event handler module that tests subscribe, to see
// exactly which events were emitted.
type eventLog struct{}

var (
	eventsMu sync.Mutex
	events   []caddy.Event
)

func init() { caddy.RegisterModule(eventLog{}) }

func (eventLog) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.bifrost_test_log", New: func() caddy.Module { return new(eventLog) }}
}

func (eventLog) Handle(_ context.Context, e caddy.Event) error {
	eventsMu.Lock()
	events = append(events, e)
	eventsMu.Unlock()
	return nil
}

// eventsNamed returns the recorded events of one name for one worker.
func eventsNamed(name, worker string) []caddy.Event {
	eventsMu.Lock()
	defer eventsMu.Unlock()
	var out []caddy.Event
	for _, e := range events {
		if e.Name() == name && e.Data["worker"] == worker {
			out = append(out, e)
		}
	}
	return out
}

// waitEvent waits for the first event of one name for one worker. Its
// deadline is long: it is there to end a test that would otherwise hang,
// not to time what it waits for.
func waitEvent(t *testing.T, name, worker string) caddy.Event {
	t.Helper()
	var got []caddy.Event
	eventually(t, time.Minute, name+" of "+worker, func() bool {
		got = eventsNamed(name, worker)
		return len(got) > 0
	})
	return got[0]
}

// loadWithEventLog runs a Caddyfile with the test event log subscribed
// to Bifrost's events.
func loadWithEventLog(t *testing.T, body string) {
	t.Helper()
	js, err := adapt("{\n\tadmin " + testAdmin + "\n\thttp_port 9080\n\tauto_https off\n\tgrace_period 1ns\n}\n" + body)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	_ = json.Unmarshal(js, &cfg)
	apps := cfg["apps"].(map[string]any)
	apps["events"] = map[string]any{"subscriptions": []any{map[string]any{
		"events": []string{pool.EventBreakerOpened, pool.EventBreakerHalfOpen, pool.EventBreakerClosed,
			pool.EventWorkerIsolated, pool.EventWorkerRestored, pool.EventWorkerRecoveryFailed, pool.EventWorkerShutdown},
		"handlers": []any{map[string]any{"handler": "bifrost_test_log"}},
	}}}
	js, _ = json.Marshal(cfg)
	loadJSON(t, js)
}

// One isolation emits exactly one worker_isolated and one worker_restored;
// a breaker that opens emits breaker_opened with its worker.
func TestEvents(t *testing.T) {
	a, b, c := newBackend(t), newBackend(t), newBackend(t)
	loadWithEventLog(t, siteConfig([]string{a.addr, b.addr, c.addr}, `
		name ev
		lb_policy round_robin
		breaker {
			failures 1
		}
		health {
			uri /health
			interval 100ms
			passes 1
			fails 1
		}`))
	ws := workerOf(t, "ev", a.addr)
	a.setHealth(status(http.StatusServiceUnavailable, ""))
	eventually(t, 3*time.Second, "isolation", func() bool { return ws.Health.Isolated() })
	a.setHealth(status(http.StatusOK, ""))
	eventually(t, 3*time.Second, "restoration", func() bool { return !ws.Health.Isolated() })
	time.Sleep(300 * time.Millisecond) // any duplicate would show up by now

	iso, res := eventsNamed(pool.EventWorkerIsolated, ws.ID), eventsNamed(pool.EventWorkerRestored, ws.ID)
	if len(iso) != 1 || len(res) != 1 {
		t.Fatalf("got %d worker_isolated and %d worker_restored events, want 1 each", len(iso), len(res))
	}
	if iso[0].Data["pool"] != "ev" || iso[0].Data["until"] == nil || !strings.HasPrefix(iso[0].Data["reason"].(string), "probe_failed") {
		t.Fatalf("worker_isolated data: %v", iso[0].Data)
	}

	b.close()
	for range 20 {
		get(t, "/")
	}
	eventually(t, 2*time.Second, "breaker_opened", func() bool {
		return len(eventsNamed(pool.EventBreakerOpened, pool.WorkerID("ev", b.addr))) == 1
	})
}

// scrape reads Caddy's /metrics and returns Bifrost's families.
func scrape(t *testing.T) map[string]float64 {
	t.Helper()
	code, body, _ := do(t, http.MethodGet, "http://"+testAdmin+"/metrics", nil)
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d", code)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	out := map[string]float64{}
	for name, fam := range fams {
		if !strings.HasPrefix(name, "caddy_bifrost_") {
			continue
		}
		for _, m := range fam.GetMetric() {
			key := name
			for _, l := range m.GetLabel() {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			switch {
			case m.Counter != nil:
				out[key] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[key] = m.GetGauge().GetValue()
			case m.Histogram != nil:
				out[key] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// Counters move by the expected amounts after a known sequence of
// failures, and a removed worker's series disappear after a reload.
func TestMetrics(t *testing.T) {
	a := newBackend(t)
	dead := deadAddr(t)
	cfg := func(ups ...string) string {
		return siteConfig(ups, `
			name met
			lb_policy first
			breaker {
				failures 2
				timeout 1m
			}`)
	}
	loadCaddyfile(t, cfg(dead, a.addr))
	for range 10 {
		if code, _ := get(t, "/"); code != http.StatusOK {
			t.Fatalf("got %d", code)
		}
	}
	time.Sleep(2 * pool.TickInterval) // gauges refresh on the tick
	m := scrape(t)
	deadID, liveID := pool.WorkerID("met", dead), pool.WorkerID("met", a.addr)
	want := map[string]float64{
		"caddy_bifrost_requests_total,outcome=failure,pool=met,worker=" + deadID:            2,
		"caddy_bifrost_requests_total,outcome=success,pool=met,worker=" + liveID:            10,
		"caddy_bifrost_errors_total,kind=connection,pool=met,severity=low,worker=" + deadID: 2,
		"caddy_bifrost_retries_total,pool=met,worker=" + deadID:                             2,
		"caddy_bifrost_breaker_state,pool=met,worker=" + deadID:                             2,
		"caddy_bifrost_worker_healthy,pool=met,worker=" + deadID:                            0,
		"caddy_bifrost_worker_healthy,pool=met,worker=" + liveID:                            1,
		"caddy_bifrost_attempt_duration_seconds,pool=met,worker=" + liveID:                  10,
	}
	for k, v := range want {
		if got, ok := m[k]; !ok || got != v {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, v)
		}
	}

	// reload without the dead worker: its series go
	js, err := adapt("{\n\tadmin " + testAdmin + "\n\thttp_port 9080\n\tauto_https off\n\tgrace_period 1ns\n}\n" + cfg(a.addr))
	if err != nil {
		t.Fatal(err)
	}
	if code, body, _ := do(t, http.MethodPost, "http://"+testAdmin+"/load", js, "Content-Type", "application/json"); code != http.StatusOK {
		t.Fatalf("reload: %d %s", code, body)
	}
	get(t, "/")
	for k := range scrape(t) {
		if strings.Contains(k, "worker="+deadID) {
			t.Errorf("series of a removed worker still exported: %s", k)
		}
	}
	if got := scrape(t)["caddy_bifrost_requests_total,outcome=success,pool=met,worker="+liveID]; got != 11 {
		t.Errorf("counter of a kept worker = %v after reload, want 11 (counts carry on)", got)
	}
}

// The error history never exceeds its limit, and never holds a
// credential the client sent.
func TestErrorHistoryBoundedAndWithoutSecrets(t *testing.T) {
	a := newBackend(t)
	a.set(status(http.StatusInternalServerError, "Authorization: Bearer leaked-in-body"))
	loadCaddyfile(t, siteConfig([]string{a.addr}, `
		name hist
		error_history_limit 25
		breaker {
			failures 100000
		}
		retry {
			attempts 1
		}`))
	for range 60 {
		do(t, http.MethodGet, testSite+"/secret-path?token=query-secret", nil,
			"Authorization", "Bearer header-secret", "Cookie", "session=cookie-secret", "Proxy-Authorization", "Basic proxy-secret")
	}
	errs := pool.Errors(recovery.Filter{Pool: "hist"}, nil)
	if len(errs) != 25 {
		t.Fatalf("history holds %d errors, want its limit 25", len(errs))
	}
	raw, _ := json.Marshal(errs)
	for _, secret := range []string{"header-secret", "cookie-secret", "proxy-secret", "query-secret", "leaked-in-body"} {
		if bytes.Contains(raw, []byte(secret)) {
			t.Fatalf("error history contains %q: %s", secret, raw)
		}
	}
	// the manager's own bound is tested under 1,000,000 errors in recovery/
}

// The CLI prints the workers of a running Caddy, and says clearly when
// the admin endpoint cannot be reached.
func TestStatusCommand(t *testing.T) {
	a := newBackend(t)
	dead := deadAddr(t)
	loadCaddyfile(t, siteConfig([]string{a.addr, dead}, `
		name cli
		breaker {
			failures 1
		}`))
	// the default policy draws the dead worker for about half of the
	// requests until its first failure opens its breaker
	ws := workerOf(t, "cli", dead)
	for i := 0; i < 50 && ws.Breaker.State() != breaker.StateOpen; i++ {
		get(t, "/")
	}
	text, err := bifrostStatus(t, "--address", testAdmin)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"POOL", pool.WorkerID("cli", a.addr), pool.WorkerID("cli", dead), "healthy", "open"} {
		if !strings.Contains(text, want) {
			t.Errorf("status output lacks %q:\n%s", want, text)
		}
	}

	_, err = bifrostStatus(t, "--address", deadAddr(t))
	if err == nil || !strings.Contains(err.Error(), "cannot reach Caddy's admin API") {
		t.Fatalf("unreachable admin: %v", err)
	}
}

// An operator isolation is capped at 24h: a longer one is refused with a
// JSON 400 that names the limit, and leaves the worker in.
func TestAdminIsolateDurationCap(t *testing.T) {
	a := newBackend(t)
	loadCaddyfile(t, siteConfig([]string{a.addr}, `
		name cap`))
	path := "http://" + testAdmin + "/bifrost/workers/" + pool.WorkerID("cap", a.addr) + "/isolate"
	ws := workerOf(t, "cap", a.addr)
	for _, tc := range []struct {
		query string
		body  []byte
	}{
		{query: "?duration=1000000h"},
		{body: []byte(`{"duration":"24h1s"}`)},
		{body: []byte(`{"duration":"2d"}`)},
	} {
		code, body, hdr := do(t, http.MethodPost, path+tc.query, tc.body, "Content-Type", "application/json")
		var e struct{ Error string }
		_ = json.Unmarshal([]byte(body), &e)
		if code != http.StatusBadRequest || !strings.Contains(hdr.Get("Content-Type"), "json") || !strings.Contains(e.Error, "limit of 24h") {
			t.Errorf("isolate %s%s: %d %s, want a JSON 400 naming the limit", tc.query, tc.body, code, body)
		}
		if ws.Health.Isolated() {
			t.Fatalf("isolate %s%s isolated the worker", tc.query, tc.body)
		}
	}
	var v pool.WorkerView
	code, body, _ := do(t, http.MethodPost, path+"?duration=24h", nil)
	if err := json.Unmarshal([]byte(body), &v); code != http.StatusOK || err != nil || !v.Isolated ||
		time.Until(v.IsolatedUntil) > pool.MaxIsolateDuration || time.Until(v.IsolatedUntil) < pool.MaxIsolateDuration-time.Minute {
		t.Fatalf("isolate for exactly the limit: %d %s", code, body)
	}
}
