package health

import (
	"testing"
	"time"
)

// A worker stopped by Shutdown stays out through its ejection time and a
// probe that passes again, ignores MaxPercent, and is kept as an
// operator's verdict with no end, which another monitor adopts as a
// shutdown; Restore ends it.
func TestShutdownStaysOutUntilRestored(t *testing.T) {
	now := time.Unix(1000, 0)
	clock := func() time.Time { return now }
	s := IsolationSettings{BaseTime: time.Second, MaxTime: time.Minute, DecayAfter: time.Minute, MaxPercent: 0,
		SuccessRateStdevFactor: 1, SuccessRateMinHosts: 1, DetectionInterval: time.Second,
		ProbationTime: time.Second, ProbationSuccesses: 1, MaxRecoveryAttempts: 1, ProbesConfigured: true}
	m := NewMonitor(s, clock, func() float64 { return 0.5 })
	a, b := NewWorkerHealth("p", "a", "a:1"), NewWorkerHealth("p", "b", "b:1")
	m.SetWorkers([]*WorkerHealth{a, b})
	if _, ok := m.Shutdown(a, "isolation_violation"); !ok || !a.Isolated() || !a.ShutDown() {
		t.Fatal("Shutdown refused with max_percent 0")
	}
	if _, ok := m.Shutdown(a, "again"); ok {
		t.Error("a second Shutdown reported a change")
	}
	now = now.Add(time.Hour)
	m.Tick()
	if _, ok := m.ProbeRecovered(a); ok || !a.Isolated() {
		t.Fatal("the ejection time or a passing probe ended a shutdown")
	}
	v, ok := a.Verdict()
	if !ok || !v.Operator || !v.Until.IsZero() {
		t.Fatalf("verdict %+v, want an operator's with no end", v)
	}
	m2 := NewMonitor(s, clock, nil)
	c := NewWorkerHealth("p", "a", "a:1")
	m2.SetWorkers([]*WorkerHealth{c})
	if _, ok := m2.Adopt(c, v, time.Hour); !ok || !c.ShutDown() {
		t.Fatal("the shutdown verdict was not adopted as a shutdown")
	}
	if _, ok := m.Restore(a); !ok || a.Isolated() || a.ShutDown() {
		t.Fatal("Restore did not end the shutdown")
	}
}
