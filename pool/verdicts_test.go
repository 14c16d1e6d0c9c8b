package pool

import (
	"testing"
	"time"

	"github.com/bifrost-proxy/bifrost/health"
)

// Apply: oldest verdicts first within max_percent, operators' after
// automatic ones issued together, unknown upstreams dropped, throttles
// only extended; Offer hands verdicts to the pool's loop; Verdicts reads
// them back.
func TestApplyVerdicts(t *testing.T) {
	p := newPool(t)
	s := testIsolation
	s.MaxPercent = 25 // 1 of 4
	setIsolation(t, p, s)
	u := newUser("u")
	var ws []*Worker
	for _, dial := range []string{"a:1", "b:1", "c:1", "d:1"} {
		ws = append(ws, newWorker(t, p, dial, slowBreaker))
	}
	attach(t, p, u, ws...)
	now := time.Now()
	auto := func(dial string, issued time.Time) Verdict {
		return Verdict{Upstream: dial, Issued: issued, Isolation: &health.Verdict{Until: now.Add(time.Minute), Reason: "probe_failed: " + dial}}
	}
	op := Verdict{Upstream: "a:1", Issued: now, Isolation: &health.Verdict{Until: now.Add(time.Minute), Reason: "operator: x", Operator: true}}
	n := p.Apply([]Verdict{
		auto("c:1", now.Add(time.Second)), // newer than b's: the one place is taken
		op,                                // issued with b's: applied after it
		auto("b:1", now),
		auto("zz:1", now.Add(-time.Hour)), // not in the pool
		{Upstream: "d:1", ThrottledUntil: now.Add(time.Minute)},
	})
	if n != 3 {
		t.Errorf("Apply changed %d workers, want 3", n)
	}
	if !ws[0].Health.Isolated() || !ws[1].Health.Isolated() || ws[2].Health.Isolated() {
		t.Errorf("isolated a %v b %v c %v, want a (operator) and b (oldest), not c",
			ws[0].Health.Isolated(), ws[1].Health.Isolated(), ws[2].Health.Isolated())
	}
	if p.Apply([]Verdict{{Upstream: "d:1", ThrottledUntil: now.Add(time.Second)}}) != 0 ||
		!ws[3].Health.ThrottledUntil().Equal(now.Add(time.Minute)) {
		t.Error("an earlier throttle shortened the worker's")
	}
	if vs := p.Verdicts(now); len(vs) != 3 {
		t.Errorf("Verdicts: %+v, want a, b and d", vs)
	}
	// Offer: applied by the loop's next tick
	p.Offer([]Verdict{{Upstream: "b:1", Restore: true}})
	eventually(t, 2*time.Second, "b restored by the loop", func() bool { return !ws[1].Health.Isolated() })
	if got := FleetAuthor(FleetReason("probe_failed: x", "edge-2")); got != "edge-2" {
		t.Errorf("FleetAuthor = %q", got)
	}
	if got := FleetAuthor("probe_failed: x [not the fleet]"); got != "" {
		t.Errorf("FleetAuthor of a local reason = %q", got)
	}
}

// An isolation that begins or ends here, and an isolation adopted from
// elsewhere, signal VerdictsChanged, so that the bifrost app publishes
// without waiting for its turn.
func TestVerdictsChangedSignalled(t *testing.T) {
	p := newPool(t)
	s := testIsolation
	s.MaxPercent = 100
	setIsolation(t, p, s)
	w := newWorker(t, p, "a:1", slowBreaker)
	b := newWorker(t, p, "b:1", slowBreaker)
	attach(t, p, newUser("u"), w, b)
	drain := func() {
		select {
		case <-VerdictsChanged():
		default:
		}
	}
	signalled := func() bool {
		select {
		case <-VerdictsChanged():
			return true
		default:
			return false
		}
	}
	drain()
	now := time.Now()
	if p.Apply([]Verdict{{Upstream: "a:1", Issued: now, Isolation: &health.Verdict{Until: now.Add(time.Minute), Reason: "probe_failed: x"}}}) != 1 {
		t.Fatal("not isolated")
	}
	if !signalled() {
		t.Error("an isolation did not signal VerdictsChanged")
	}
	if p.Apply([]Verdict{{Upstream: "a:1", Restore: true}}) != 1 {
		t.Fatal("not restored")
	}
	if !signalled() {
		t.Error("a restore did not signal VerdictsChanged")
	}
	if signalled() {
		t.Error("signalled with nothing changed")
	}
}
