package bifrost

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/pool"
)

// unload stops the running config, as a restart does: every pool and
// worker state is released.
func unload(t *testing.T) {
	t.Helper()
	if err := caddy.Load([]byte(fmt.Sprintf(`{"admin":{"listen":%q}}`, testAdmin)), true); err != nil {
		t.Fatal(err)
	}
	if w := pool.AllWorkers(); len(w) != 0 {
		t.Fatalf("%d workers left after unloading", len(w))
	}
}

// loadWithGlobals runs a Caddyfile body with the tests' global options
// and more of them (lines of the global block).
func loadWithGlobals(t *testing.T, globals, body string) {
	t.Helper()
	js, err := adapt("{\n\tadmin " + testAdmin + "\n\thttp_port 9080\n\tauto_https off\n\tgrace_period 1ns\n" + globals + "\n}\n" + body)
	if err != nil {
		t.Fatalf("adapting: %v", err)
	}
	loadJSON(t, js)
}

// An operator's isolation, an automatic one and a throttle outlive the
// config (a restart): the next config starts with them, from its first
// request. The automatic isolation took the only place max_percent
// leaves before the operator's (which is not limited) came: both are
// restored.
func TestStateSurvivesRestart(t *testing.T) {
	a, b, c, d := newBackend(t), newBackend(t), newBackend(t), newBackend(t)
	site := siteConfig([]string{a.addr, b.addr, c.addr, d.addr}, `
		name persist
		lb_policy first
		isolation {
			max_percent 34
		}`)
	loadCaddyfile(t, site)
	wa, wb, wc := workerOf(t, "persist", a.addr), workerOf(t, "persist", b.addr), workerOf(t, "persist", c.addr)
	if !pool.Named("persist").Isolate(wb, health.ReasonProbe, "3 probes failed") {
		t.Fatal("b not isolated")
	}
	isoB := wb.Health.Snapshot(time.Now())
	var out map[string]any
	if code := adminJSON(t, http.MethodPost, "/bifrost/workers/"+wa.ID+"/isolate?duration=1h", &out); code != http.StatusOK {
		t.Fatalf("isolate a: %d %v", code, out)
	}
	throttle := time.Now().Add(time.Hour).Truncate(time.Millisecond)
	wc.Health.Throttle(throttle)
	unload(t)

	loadCaddyfile(t, site)
	wa, wb, wc = workerOf(t, "persist", a.addr), workerOf(t, "persist", b.addr), workerOf(t, "persist", c.addr)
	sb := wb.Health.Snapshot(time.Now())
	if !sb.Isolated || sb.IsolationReason != isoB.IsolationReason || sb.Ejections != isoB.Ejections || !sb.IsolatedUntil.Equal(isoB.IsolatedUntil) {
		t.Errorf("b after the restart: %+v, want isolated as before: %+v", sb, isoB)
	}
	sa := wa.Health.Snapshot(time.Now())
	if !sa.Isolated || !strings.HasPrefix(sa.IsolationReason, "operator") || time.Until(sa.IsolatedUntil) < 59*time.Minute {
		t.Errorf("a after the restart: %+v, want the operator's isolation for 1h", sa)
	}
	if got := wc.Health.ThrottledUntil(); !got.Equal(throttle) {
		t.Errorf("c throttled until %v after the restart, want %v", got, throttle)
	}
	// lb_policy first: the first request goes to d, the only one left
	if code, body := get(t, "/"); code != http.StatusOK || !strings.Contains(body, d.addr) {
		t.Errorf("first request after the restart: %d %q, want d's answer", code, body)
	}
}

// With `state off` nothing is kept: the next config starts afresh.
func TestStateOff(t *testing.T) {
	a, b := newBackend(t), newBackend(t)
	globals := "bifrost {\n\tstate off\n}"
	site := siteConfig([]string{a.addr, b.addr}, `
		name persistoff
		lb_policy first`)
	loadWithGlobals(t, globals, site)
	wa := workerOf(t, "persistoff", a.addr)
	if err := pool.Act(wa, "isolate", time.Hour, "kept?"); err != nil {
		t.Fatal(err)
	}
	unload(t)
	loadWithGlobals(t, globals, site)
	if code, body := get(t, "/"); code != http.StatusOK || !strings.Contains(body, a.addr) {
		t.Errorf("first request: %d %q, want a (nothing kept)", code, body)
	}
}

// A stored document is untrusted: entries that ended, name an upstream
// the pool does not have, or are out of range are dropped; a document
// that is not one is ignored, and the config loads.
func TestStateReadIsValidated(t *testing.T) {
	a, b := newBackend(t), newBackend(t)
	now := time.Now()
	doc := map[string]any{
		"version": 1,
		"pool":    "persistbad",
		"workers": []map[string]any{
			{"upstream": a.addr, "isolation": map[string]any{"until": now.Add(-time.Minute), "reason": "ended"}},
			{"upstream": a.addr, "isolation": map[string]any{"until": now.Add(48 * time.Hour), "reason": "too far"}},
			{"upstream": a.addr, "isolation": map[string]any{"reason": "automatic without an end"}},
			{"upstream": a.addr, "isolation": map[string]any{"until": now.Add(time.Minute), "reason": "x", "ejections": 1000}},
			{"upstream": a.addr, "throttled_until": now.Add(30 * 24 * time.Hour)},
			{"upstream": "10.9.9.9:1", "isolation": map[string]any{"until": now.Add(time.Minute), "reason": "unknown upstream"}},
			{"upstream": b.addr, "isolation": map[string]any{"until": now.Add(time.Minute), "reason": "probe_failed: kept", "ejections": 2}},
		},
	}
	data, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.DefaultStorage.Store(context.Background(), stateKey("persistbad"), data); err != nil {
		t.Fatal(err)
	}
	loadCaddyfile(t, siteConfig([]string{a.addr, b.addr}, `
		name persistbad
		lb_policy first`))
	sa := workerOf(t, "persistbad", a.addr).Health.Snapshot(time.Now())
	if sa.Isolated || sa.Throttled || sa.Ejections != 0 {
		t.Errorf("a: %+v, want none of its invalid entries applied", sa)
	}
	sb := workerOf(t, "persistbad", b.addr).Health.Snapshot(time.Now())
	if !sb.Isolated || sb.IsolationReason != "probe_failed: kept" || sb.Ejections != 2 {
		t.Errorf("b: %+v, want its valid entry applied", sb)
	}
	unload(t)

	for _, garbage := range []string{`{`, `[]`, `{"version":2,"pool":"persistbad"}`, `{"version":1,"pool":"other"}`, strings.Repeat(" ", maxStateSize+1)} {
		if err := caddy.DefaultStorage.Store(context.Background(), stateKey("persistbad"), []byte(garbage)); err != nil {
			t.Fatal(err)
		}
		loadCaddyfile(t, siteConfig([]string{a.addr, b.addr}, `
		name persistbad
		lb_policy first`))
		if code, body := get(t, "/"); code != http.StatusOK || !strings.Contains(body, a.addr) {
			t.Errorf("with stored %.20q: %d %q, want a", garbage, code, body)
		}
		unload(t)
	}
}
