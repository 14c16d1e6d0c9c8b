package health

import (
	"errors"
	"testing"
	"time"
)

// One suspicion probe per worker at a time, and one per interval.
func TestSuspicionProbeIsOneAtATimeAndOnePerInterval(t *testing.T) {
	w := NewWorkerHealth("p", "w", "up")
	t0 := time.Unix(1000, 0)
	if !w.BeginSuspicion(t0, time.Second) {
		t.Fatal("the first suspicion probe was refused")
	}
	if w.BeginSuspicion(t0.Add(2*time.Second), time.Second) {
		t.Fatal("a second suspicion probe while one is in flight")
	}
	w.EndSuspicion(true, t0.Add(100*time.Millisecond))
	if got := w.SuspicionCleared(); !got.Equal(t0.Add(100 * time.Millisecond)) {
		t.Fatalf("cleared at %v", got)
	}
	if w.BeginSuspicion(t0.Add(999*time.Millisecond), time.Second) {
		t.Fatal("a second suspicion probe within the interval")
	}
	if w.Suspecting() {
		t.Fatal("a refused suspicion probe left the slot taken")
	}
	if !w.BeginSuspicion(t0.Add(time.Second), time.Second) {
		t.Fatal("the next interval's suspicion probe was refused")
	}
	w.EndSuspicion(false, t0.Add(1200*time.Millisecond))
	if got := w.SuspicionCleared(); !got.Equal(t0.Add(100 * time.Millisecond)) {
		t.Fatalf("an unanswered probe moved the cleared time to %v", got)
	}
}

// The probe state is forgotten when the last checker of the worker stops,
// not before.
func TestProbeStateOutlivesAllButTheLastProber(t *testing.T) {
	w := NewWorkerHealth("p", "w", "up")
	w.AddProber()
	w.AddProber()
	w.RecordProbe(errors.New("down"), time.Now(), 1, 1)
	w.RemoveProber()
	if w.Snapshot(time.Now()).ProbeHealthy {
		t.Fatal("the probe state was reset while a checker still probes the worker")
	}
	w.RemoveProber()
	if s := w.Snapshot(time.Now()); !s.ProbeHealthy || s.ProbeFails != 0 || w.Probers() != 0 {
		t.Fatalf("after the last checker stopped: probe healthy %v, fails %d, probers %d", s.ProbeHealthy, s.ProbeFails, w.Probers())
	}
}
