package pool

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/selection"
)

// actPool is a pool with two attached workers and its user.
func actPool(t *testing.T) (p *Pool, w, other *Worker, u *fakeUser) {
	t.Helper()
	p = newPool(t)
	w = newWorker(t, p, "10.0.0.1:80", slowBreaker)
	other = newWorker(t, p, "10.0.0.2:80", slowBreaker)
	u = newUser("u")
	attach(t, p, u, w, other)
	return p, w, other, u
}

func TestActIsolate(t *testing.T) {
	_, w, _, u := actPool(t)

	err := Act(w, "isolate", MaxIsolateDuration+time.Second, "too long")
	if err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("isolate beyond the cap: err = %v", err)
	}
	if isolated(w) {
		t.Fatal("isolated beyond the cap")
	}

	before := time.Now()
	if err := Act(w, "isolate", MaxIsolateDuration, "maintenance"); err != nil {
		t.Fatalf("isolate for the cap: %v", err)
	}
	s := w.Health.Snapshot(time.Now())
	if !s.Isolated || s.IsolatedUntil.Before(before.Add(MaxIsolateDuration)) ||
		s.IsolatedUntil.After(time.Now().Add(MaxIsolateDuration)) {
		t.Fatalf("after isolate for 24h: isolated %v until %v", s.Isolated, s.IsolatedUntil)
	}
	if !strings.Contains(s.IsolationReason, "maintenance") {
		t.Fatalf("isolation reason = %q", s.IsolationReason)
	}
	if n := u.countTransitions(w.ID, EventWorkerIsolated); n != 1 {
		t.Fatalf("worker_isolated counted %d times, want 1", n)
	}
	entries := u.logs.FilterMessage("operator action").All()
	if len(entries) != 1 || entries[0].ContextMap()["action"] != "isolate" || entries[0].ContextMap()["worker"] != w.ID {
		t.Fatalf("operator action entries = %v", entries)
	}

	// again: accepted, nothing new to report
	if err := Act(w, "isolate", 0, ""); err != nil {
		t.Fatal(err)
	}
	if n := u.countTransitions(w.ID, EventWorkerIsolated); n != 1 {
		t.Fatalf("worker_isolated counted %d times after a second isolate, want 1", n)
	}
}

func TestActIsolateUntilRestored(t *testing.T) {
	_, w, other, u := actPool(t)
	// an operator is not bound by max_percent: both go
	for _, x := range []*Worker{w, other} {
		if err := Act(x, "isolate", 0, ""); err != nil {
			t.Fatal(err)
		}
		s := x.Health.Snapshot(time.Now())
		if !s.Isolated || !s.IsolatedUntil.IsZero() {
			t.Fatalf("%s: isolated %v until %v, want isolated with no end", x.ID, s.Isolated, s.IsolatedUntil)
		}
	}

	if err := Act(w, "restore", 0, ""); err != nil {
		t.Fatal(err)
	}
	if isolated(w) {
		t.Fatal("still isolated after restore")
	}
	if got := u.restoredList(); len(got) != 1 || got[0] != w {
		t.Fatalf("Restored got %v, want [%s]", ids(got), w.ID)
	}
	if n := u.countTransitions(w.ID, EventWorkerRestored); n != 1 {
		t.Fatalf("worker_restored counted %d times, want 1", n)
	}

	// restoring a worker in rotation does nothing
	if err := Act(w, "restore", 0, ""); err != nil {
		t.Fatal(err)
	}
	if got := u.restoredList(); len(got) != 1 {
		t.Fatalf("a second restore restored %v", ids(got))
	}
}

func TestActReset(t *testing.T) {
	_, w, other, u := actPool(t)
	w.Breaker.Trip()
	barrier(t, u, other)
	if w.Trips.Load() != 1 || w.Breaker.State() != breaker.StateOpen {
		t.Fatalf("before reset: trips %d, state %v", w.Trips.Load(), w.Breaker.State())
	}
	if err := Act(w, "reset", 0, ""); err != nil {
		t.Fatal(err)
	}
	if w.Breaker.State() != breaker.StateClosed {
		t.Fatalf("state after reset = %v", w.Breaker.State())
	}
	if n := w.Trips.Load(); n != 0 {
		t.Fatalf("Trips after reset = %d", n)
	}
	if c := w.Breaker.Counts(); c != (breaker.Counts{}) {
		t.Fatalf("counts after reset = %+v", c)
	}
	// the close goes through the loop like any other change
	barrier(t, u, other)
	if got := u.statesOf(w.ID); len(got) != 2 || got[1] != breaker.StateClosed {
		t.Fatalf("BreakerState hook got %v", got)
	}
}

func TestActErrors(t *testing.T) {
	_, w, _, u := actPool(t)
	err := Act(w, "reboot", 0, "")
	if !errors.Is(err, ErrUnknownAction) {
		t.Fatalf("unknown action: err = %v, want ErrUnknownAction", err)
	}
	if u.logs.FilterMessage("operator action").Len() != 0 {
		t.Fatal("a refused action was logged as done")
	}

	// a worker whose pool is in no running config
	q, err := Acquire(uniqueName(t))
	if err != nil {
		t.Fatal(err)
	}
	stray, err := q.AcquireWorker("10.0.0.9:80", slowBreaker, selection.Settings{})
	if err != nil {
		t.Fatal(err)
	}
	if err := Act(stray, "reset", 0, ""); err != nil {
		t.Fatalf("reset while the pool exists: %v", err)
	}
	if _, err := q.ReleaseWorker(stray); err != nil {
		t.Fatal(err)
	}
	if err := q.Release(); err != nil {
		t.Fatal(err)
	}
	for _, action := range []string{"isolate", "restore", "reset", "reboot"} {
		if err := Act(stray, action, 0, ""); !errors.Is(err, ErrNoPool) {
			t.Fatalf("%s of a worker with no pool: err = %v, want ErrNoPool", action, err)
		}
	}
}
