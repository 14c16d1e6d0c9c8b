package bifrost

import (
	"encoding/json"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/fleet"
	"github.com/bifrost-proxy/bifrost/fleet/fleettest"
	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/pool"
)

const fleetSecret = "s3cret-for-tests"

// fleetGlobals is the bifrost global option of an instance of the
// fleet on srv.
func fleetGlobals(srv *fleettest.Server, instance string, quorum int) string {
	return "bifrost {\n\tfleet " + srv.URL("") + " {\n\t\tsecret " + fleetSecret + "\n\t\tinstance " + instance +
		"\n\t\tquorum " + string(rune('0'+quorum)) + "\n\t}\n}"
}

// peer starts another fleet member, as another Caddy instance would be.
func peer(t *testing.T, srv *fleettest.Server, instance string) *fleet.Fleet {
	t.Helper()
	f, err := fleet.New(fleet.Config{URL: srv.URL(""), Secret: []byte(fleetSecret), Instance: instance,
		Resync: 200 * time.Millisecond, Heartbeat: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	f.Start()
	t.Cleanup(func() { _ = f.Close() })
	eventually(t, 5*time.Second, instance+" connected", func() bool { return f.Status().Connected })
	return f
}

func fleetStatus(t *testing.T) FleetView {
	t.Helper()
	var v FleetView
	if code := adminJSON(t, http.MethodGet, "/bifrost/fleet", &v); code != http.StatusOK {
		t.Fatalf("GET /bifrost/fleet: %d", code)
	}
	return v
}

// Another instance's isolation applies here, shown as the fleet's; an
// operator's isolation here reaches the others, and their restore
// applies here; forged entries change nothing and are counted.
func TestFleetSharesVerdicts(t *testing.T) {
	srv := fleettest.Start(t)
	other := peer(t, srv, "other")
	a, b, c := newBackend(t), newBackend(t), newBackend(t)
	js, err := adapt("{\n\tadmin " + testAdmin + "\n\thttp_port 9080\n\tauto_https off\n\tgrace_period 1ns\n" +
		fleetGlobals(srv, "edge-1", 1) + "\n}\n" + siteConfig([]string{a.addr, b.addr, c.addr}, `
		name fleetpool
		lb_policy first
		isolation {
			max_percent 100
		}`))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	_ = json.Unmarshal(js, &cfg)
	cfg["apps"].(map[string]any)["events"] = map[string]any{"subscriptions": []any{map[string]any{
		"events":   []string{EventFleetConnected, EventFleetAdopted},
		"handlers": []any{map[string]any{"handler": "bifrost_test_log"}},
	}}}
	js, _ = json.Marshal(cfg)
	eventsMu.Lock()
	before := len(events)
	eventsMu.Unlock()
	loadJSON(t, js)
	eventually(t, 5*time.Second, "connected", func() bool { return fleetStatus(t).Connected })
	cl := srv.Client("")

	other.Publish(fleet.Entry{Pool: "fleetpool", Upstream: a.addr, Kind: fleet.KindIsolated,
		Reason: "probe_failed: seen by other", Ejections: 2, Until: time.Now().Add(time.Minute)})
	wa := workerOf(t, "fleetpool", a.addr)
	eventually(t, 2*time.Second, "a isolated by the fleet", wa.Health.Isolated)
	sa := wa.Health.Snapshot(time.Now())
	if !strings.Contains(sa.IsolationReason, "[fleet: other]") || sa.Ejections != 2 {
		t.Errorf("a: reason %q, %d ejections; want the fleet's, from other, with 2", sa.IsolationReason, sa.Ejections)
	}
	eventsMu.Lock()
	connects := 0
	for _, e := range events[before:] {
		if e.Name() == EventFleetConnected && e.Data["instance"] == "edge-1" {
			connects++
		}
	}
	eventsMu.Unlock()
	if connects != 1 {
		t.Errorf("%d fleet_connected events, want 1", connects)
	}
	eventually(t, 2*time.Second, "fleet_verdict_adopted emitted", func() bool { return len(eventsNamed(EventFleetAdopted, wa.ID)) == 1 })
	var view pool.WorkerView
	if adminJSON(t, http.MethodGet, "/bifrost/workers/"+wa.ID, &view); view.IsolatedByFleet != "other" {
		t.Errorf("worker view: isolated_by_fleet %q, want other", view.IsolatedByFleet)
	}
	if code, body := get(t, "/"); code != http.StatusOK || !strings.Contains(body, b.addr) {
		t.Errorf("request: %d %q, want b (a is out)", code, body)
	}
	if m := scrape(t); m["caddy_bifrost_fleet_connected"] != 1 || m["caddy_bifrost_fleet_propagation_seconds"] == 0 {
		t.Errorf("fleet metrics: connected %v, propagation samples %v", m["caddy_bifrost_fleet_connected"], m["caddy_bifrost_fleet_propagation_seconds"])
	}
	v := fleetStatus(t)
	if v.Instance != "edge-1" || !v.Connected || v.Store != srv.URL("") || len(v.Verdicts) != 1 ||
		v.Verdicts[0].Author != "other" || v.Verdicts[0].Upstream != a.addr {
		t.Errorf("fleet view %+v", v)
	}
	eventually(t, 2*time.Second, "other among the peers", func() bool {
		for _, p := range fleetStatus(t).Peers {
			if p.Instance == "other" {
				return true
			}
		}
		return false
	})

	// an operator's isolation here is published for the others
	wb := workerOf(t, "fleetpool", b.addr)
	var out map[string]any
	if code := adminJSON(t, http.MethodPost, "/bifrost/workers/"+wb.ID+"/isolate?duration=10m", &out); code != http.StatusOK {
		t.Fatalf("isolate b: %d", code)
	}
	eventually(t, 2*time.Second, "other sees edge-1's operator isolation", func() bool {
		for _, e := range other.Entries() {
			if e.Author == "edge-1" && e.Upstream == b.addr && e.Kind == fleet.KindIsolated && e.Operator {
				return true
			}
		}
		return false
	})
	// and another instance's operator restore applies here (other
	// restores b first, as an operator there would)
	other.Publish(fleet.Entry{Pool: "fleetpool", Upstream: b.addr, Kind: fleet.KindRestore})
	eventually(t, 2*time.Second, "b restored by the fleet", func() bool { return !wb.Health.Isolated() })

	// an operator's restore here reaches the others and stays in the
	// store for those that were away
	if code := adminJSON(t, http.MethodPost, "/bifrost/workers/"+wb.ID+"/isolate?duration=10m", &out); code != http.StatusOK {
		t.Fatalf("isolate b again: %d", code)
	}
	ownEntry := func(upstream string, ok func(fleet.Entry) bool) func() bool {
		return func() bool {
			for _, e := range other.Entries() {
				if e.Author == "edge-1" && e.Upstream == upstream && ok(e) {
					return true
				}
			}
			return false
		}
	}
	eventually(t, 2*time.Second, "other sees b isolated again", ownEntry(b.addr, func(e fleet.Entry) bool { return e.Kind == fleet.KindIsolated }))
	if code := adminJSON(t, http.MethodPost, "/bifrost/workers/"+wb.ID+"/restore", &out); code != http.StatusOK {
		t.Fatalf("restore b: %d", code)
	}
	eventually(t, 2*time.Second, "other sees edge-1's restore", ownEntry(b.addr, func(e fleet.Entry) bool { return e.Kind == fleet.KindRestore }))
	// an exchange after the restore: the isolation of c, published by it
	wc0 := workerOf(t, "fleetpool", c.addr)
	if code := adminJSON(t, http.MethodPost, "/bifrost/workers/"+wc0.ID+"/isolate?duration=1m", &out); code != http.StatusOK {
		t.Fatalf("isolate c: %d", code)
	}
	eventually(t, 2*time.Second, "other sees c isolated", ownEntry(c.addr, func(e fleet.Entry) bool { return e.Kind == fleet.KindIsolated }))
	if raw := cl.HGet(t.Context(), fleet.DefaultPrefix+":verdicts", "fleetpool|"+b.addr+"|edge-1").Val(); !strings.Contains(raw, `"kind":"restore"`) {
		t.Errorf("edge-1's entry on b in the store: %q, want its restore", raw)
	}
	if code := adminJSON(t, http.MethodPost, "/bifrost/workers/"+wc0.ID+"/restore", &out); code != http.StatusOK {
		t.Fatalf("restore c: %d", code)
	}

	// another instance's throttle (a Retry-After) is honoured here
	throttle := time.Now().Add(time.Minute).Truncate(time.Millisecond)
	other.Publish(fleet.Entry{Pool: "fleetpool", Upstream: c.addr, Kind: fleet.KindThrottled, Until: throttle})
	wc := workerOf(t, "fleetpool", c.addr)
	eventually(t, 2*time.Second, "c throttled by the fleet", func() bool { return wc.Health.ThrottledUntil().Equal(throttle) })

	// forged: a bad signature, and garbage
	forged := fleet.Sign(fleet.Entry{Pool: "fleetpool", Upstream: c.addr, Kind: fleet.KindIsolated, Reason: "forged",
		Issued: time.Now(), Until: time.Now().Add(time.Minute), Author: "mallory"}, []byte("guessed"))
	cl.HSet(t.Context(), fleet.DefaultPrefix+":verdicts", "fleetpool|"+c.addr+"|mallory", fleet.Encode(forged))
	cl.Publish(t.Context(), fleet.DefaultPrefix+":events", "garbage")
	eventually(t, 3*time.Second, "forgeries counted", func() bool {
		r := fleetStatus(t).Rejected
		return r[fleet.RejectBadSignature] > 0 && r[fleet.RejectMalformed] > 0
	})
	if m := scrape(t); m["caddy_bifrost_fleet_rejected_total,reason=bad_signature"] == 0 {
		t.Error("caddy_bifrost_fleet_rejected_total{reason=bad_signature} not counted")
	}
	if wc.Health.Isolated() {
		t.Error("c isolated by a forged entry")
	}
}

// With quorum 2, one other instance's automatic isolation does not apply
// here; a second instance's agreement makes it apply.
func TestFleetQuorum(t *testing.T) {
	srv := fleettest.Start(t)
	other, third := peer(t, srv, "other"), peer(t, srv, "third")
	a, b, c := newBackend(t), newBackend(t), newBackend(t)
	loadWithGlobals(t, fleetGlobals(srv, "edge-1", 2), siteConfig([]string{a.addr, b.addr, c.addr}, `
		name quorumpool
		isolation {
			max_percent 100
		}`))
	eventually(t, 5*time.Second, "connected", func() bool { return fleetStatus(t).Connected })
	until := time.Now().Add(time.Minute)
	other.Publish(fleet.Entry{Pool: "quorumpool", Upstream: a.addr, Kind: fleet.KindIsolated, Reason: "probe_failed", Until: until})
	// an operator's isolation needs no quorum: once it applies, the
	// entry on a (published before it) has been weighed
	other.Publish(fleet.Entry{Pool: "quorumpool", Upstream: c.addr, Kind: fleet.KindIsolated, Operator: true, Reason: "operator: maintenance", Until: until})
	wa, wc := workerOf(t, "quorumpool", a.addr), workerOf(t, "quorumpool", c.addr)
	eventually(t, 2*time.Second, "c isolated by other's operator", wc.Health.Isolated)
	if wa.Health.Isolated() {
		t.Fatal("a isolated on one instance's word with quorum 2")
	}
	third.Publish(fleet.Entry{Pool: "quorumpool", Upstream: a.addr, Kind: fleet.KindIsolated, Reason: "probe_failed", Until: until})
	eventually(t, 2*time.Second, "a isolated once two agree", wa.Health.Isolated)
}

// A fleet without a secret refuses to start, saying so.
func TestFleetNeedsSecret(t *testing.T) {
	js, err := adapt("{\n\tadmin " + testAdmin + "\n\thttp_port 9080\n\tauto_https off\n\tbifrost {\n\t\tfleet redis://127.0.0.1:1/0\n\t}\n}\n" +
		siteConfig([]string{"127.0.0.1:1"}, ""))
	if err != nil {
		t.Fatal(err)
	}
	err = caddyLoad(js)
	if err == nil || !strings.Contains(err.Error(), "secret") {
		t.Fatalf("load: %v, want an error about the missing secret", err)
	}
	if len(pool.AllWorkers()) != 0 {
		t.Error("workers left from the failed load")
	}
}

// caddyLoad loads a config, returning its error.
func caddyLoad(js []byte) error { return caddy.Load(js, true) }

// An isolation taken from the fleet and kept in storage across a restart
// applies from the first request, and ends once the fleet, read again,
// no longer holds it (its author withdrew it, or an operator restored the
// worker elsewhere, while this instance was down).
func TestFleetEndsStaleKeptIsolation(t *testing.T) {
	srv := fleettest.Start(t)
	a, b := newBackend(t), newBackend(t)
	doc, err := json.Marshal(stateDoc{Version: stateVersion, Pool: "stalepool", Workers: []stateWorker{{
		Upstream:  a.addr,
		Isolation: &stateIsolation{Until: time.Now().Add(time.Hour), Reason: pool.FleetReason("operator: maintenance", "gone"), Operator: true},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.DefaultStorage.Store(t.Context(), stateKey("stalepool"), doc); err != nil {
		t.Fatal(err)
	}
	// Redis hangs while the config loads: the kept isolation applies at
	// once, before the fleet can be asked
	srv.Signal(syscall.SIGSTOP)
	stopped := true
	defer func() {
		if stopped {
			srv.Signal(syscall.SIGCONT)
		}
	}()
	loadWithGlobals(t, fleetGlobals(srv, "edge-1", 1), siteConfig([]string{a.addr, b.addr}, `
		name stalepool
		lb_policy first`))
	wa := workerOf(t, "stalepool", a.addr)
	if !wa.Health.Isolated() {
		t.Fatal("the kept isolation did not apply before the fleet answered")
	}
	if code, body := get(t, "/"); code != http.StatusOK || !strings.Contains(body, b.addr) {
		t.Errorf("first request: %d %q, want b", code, body)
	}
	srv.Signal(syscall.SIGCONT)
	stopped = false
	eventually(t, 10*time.Second, "the stale isolation ended", func() bool { return !wa.Health.Isolated() })
}

// A reload keeps the fleet's connection and what this instance
// published: a verdict published under the old config is withdrawn under
// the new one when it ends, and another instance's restore is not
// carried out twice.
func TestFleetAcrossReload(t *testing.T) {
	srv := fleettest.Start(t)
	other := peer(t, srv, "other")
	a, b := newBackend(t), newBackend(t)
	site := siteConfig([]string{a.addr, b.addr}, `
		name reloadpool
		lb_policy first`)
	loadWithGlobals(t, fleetGlobals(srv, "edge-1", 1), site)
	eventually(t, 5*time.Second, "connected", func() bool { return fleetStatus(t).Connected })
	wb := workerOf(t, "reloadpool", b.addr)
	has := func(upstream, kind string) func() bool {
		return func() bool {
			for _, e := range other.Entries() {
				if e.Author == "edge-1" && e.Upstream == upstream && e.Kind == kind {
					return true
				}
			}
			return false
		}
	}
	var out map[string]any
	if code := adminJSON(t, http.MethodPost, "/bifrost/workers/"+wb.ID+"/isolate?duration=1s", &out); code != http.StatusOK {
		t.Fatalf("isolate b: %d", code)
	}
	eventually(t, 2*time.Second, "other sees b isolated", has(b.addr, fleet.KindIsolated))
	// a remote restore of a, carried out once
	other.Publish(fleet.Entry{Pool: "reloadpool", Upstream: a.addr, Kind: fleet.KindRestore})
	eventually(t, 2*time.Second, "the restore seen", func() bool {
		for _, e := range currentLink.Load().f.Entries() {
			if e.Author == "other" && e.Kind == fleet.KindRestore {
				return true
			}
		}
		return false
	})

	loadWithGlobals(t, fleetGlobals(srv, "edge-1", 1), site+"\n") // a reload: the pool stays
	if workerOf(t, "reloadpool", b.addr) != wb {
		t.Fatal("the reload made a new worker")
	}
	eventually(t, 5*time.Second, "b's isolation withdrawn after it ended", func() bool { return !has(b.addr, fleet.KindIsolated)() })

	// a is isolated here after the restore: the restore, still in the
	// store, is not carried out again by the new config
	wa := workerOf(t, "reloadpool", a.addr)
	if !pool.Named("reloadpool").Isolate(wa, health.ReasonProbe, "after the restore") {
		t.Fatal("a not isolated")
	}
	loadWithGlobals(t, fleetGlobals(srv, "edge-1", 1), site)
	// an exchange of the new config has run once other's throttle of b,
	// published after the reload, applies here
	until := time.Now().Add(time.Minute).Truncate(time.Millisecond)
	other.Publish(fleet.Entry{Pool: "reloadpool", Upstream: b.addr, Kind: fleet.KindThrottled, Until: until})
	eventually(t, 2*time.Second, "b throttled by other", func() bool { return wb.Health.ThrottledUntil().Equal(until) })
	if !wa.Health.Isolated() {
		t.Error("the old restore was carried out again after the reload")
	}
}

// An operator's reset on any instance applies on every one, once, and is
// audited with the instance that did it: a reset here reaches the others
// (beside this instance's isolation of the worker, which it does not
// replace), and another instance's reset closes the breaker here.
func TestFleetReset(t *testing.T) {
	srv := fleettest.Start(t)
	other := peer(t, srv, "other")
	a, b := newBackend(t), newBackend(t)
	loadWithGlobals(t, fleetGlobals(srv, "edge-1", 1), siteConfig([]string{a.addr, b.addr}, `
		name resetpool
		lb_policy first
		isolation {
			max_percent 100
		}`))
	eventually(t, 5*time.Second, "connected", func() bool { return fleetStatus(t).Connected })

	// a reset here, of a worker this instance isolated: both reach the
	// others
	wb := workerOf(t, "resetpool", b.addr)
	var out map[string]any
	if code := adminJSON(t, http.MethodPost, "/bifrost/workers/"+wb.ID+"/isolate?duration=10m", &out); code != http.StatusOK {
		t.Fatalf("isolate b: %d", code)
	}
	if code := adminJSON(t, http.MethodPost, "/bifrost/workers/"+wb.ID+"/reset", &out); code != http.StatusOK {
		t.Fatalf("reset b: %d", code)
	}
	otherHas := func(kind string) func() bool {
		return func() bool {
			for _, e := range other.Entries() {
				if e.Author == "edge-1" && e.Upstream == b.addr && e.Kind == kind {
					return true
				}
			}
			return false
		}
	}
	eventually(t, 2*time.Second, "other sees edge-1's reset", otherHas(fleet.KindReset))
	eventually(t, 2*time.Second, "other sees edge-1's isolation too", otherHas(fleet.KindIsolated))
	if d := fleet.Merge(other.Entries(), "other", 1, time.Now()); len(d) != 1 || d[0].Reset == nil || d[0].Reset.Author != "edge-1" || d[0].Isolation == nil {
		t.Errorf("other's decisions %+v, want edge-1's reset and isolation of b", d)
	}

	// another instance's reset closes the breaker here, once
	wa := workerOf(t, "resetpool", a.addr)
	if !wa.Breaker.Trip() {
		t.Fatal("a's breaker did not open")
	}
	wa.Trips.Store(1)
	other.Publish(fleet.Entry{Pool: "resetpool", Upstream: a.addr, Kind: fleet.KindReset})
	eventually(t, 2*time.Second, "a's breaker closed by other's reset", func() bool {
		return wa.Breaker.State() == breaker.StateClosed && wa.Trips.Load() == 0
	})
	if !wa.Breaker.Trip() {
		t.Fatal("a's breaker did not open again")
	}
	time.Sleep(time.Second) // several exchanges: the reset is not carried out again
	if wa.Breaker.State() == breaker.StateClosed {
		t.Error("other's reset carried out more than once")
	}
}
