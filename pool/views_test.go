package pool

import (
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/recovery"
)

func TestWorkerViewState(t *testing.T) {
	type snap = health.Snapshot
	open, half, closed := breaker.StateOpen, breaker.StateHalfOpen, breaker.StateClosed
	for _, tc := range []struct {
		name string
		s    snap
		b    breaker.State
		want string
	}{
		{"healthy", snap{ProbeHealthy: true}, closed, "healthy"},
		{"probes fail", snap{}, closed, "unhealthy"},
		{"half-open", snap{ProbeHealthy: true}, half, "half_open"},
		{"half-open beats unhealthy", snap{}, half, "half_open"},
		{"throttled", snap{ProbeHealthy: true, Throttled: true}, closed, "throttled"},
		{"throttled beats half-open", snap{Throttled: true}, half, "throttled"},
		{"open", snap{ProbeHealthy: true}, open, "open"},
		{"open beats throttled", snap{Throttled: true}, open, "open"},
		{"isolated", snap{ProbeHealthy: true, Isolated: true}, closed, "isolated"},
		{"isolated beats open", snap{Isolated: true, Throttled: true}, open, "isolated"},
		{"recovery failed", snap{ProbeHealthy: true, RecoveryFailed: true}, closed, "recovery_failed"},
		{"recovery failed beats all", snap{Isolated: true, RecoveryFailed: true, Throttled: true}, open, "recovery_failed"},
	} {
		v := WorkerView{Snapshot: tc.s, Breaker: BreakerView{State: tc.b}}
		if got := v.State(); got != tc.want {
			t.Errorf("%s: State() = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestViewOf(t *testing.T) {
	p := newPool(t)
	w := newWorker(t, p, "10.0.0.1:80", slowBreaker)
	other := newWorker(t, p, "10.0.0.2:80", slowBreaker)
	p.Monitor.SetWorkers([]*health.WorkerHealth{w.Health, other.Health})
	now := time.Now()

	v := ViewOf(w, now)
	if v.State() != "healthy" || v.ID != w.ID || v.Pool != p.Name || v.Upstream != w.Upstream || !v.Healthy {
		t.Fatalf("fresh worker view = %+v (%s)", v, v.State())
	}

	w.Health.Throttle(now.Add(time.Minute))
	if v := ViewOf(w, now); v.State() != "throttled" || !v.ThrottledUntil.Equal(now.Add(time.Minute)) {
		t.Fatalf("throttled worker view = %+v (%s)", v, v.State())
	}

	w.Breaker.Trip()
	v = ViewOf(w, now)
	if v.State() != "open" || v.Breaker.State != breaker.StateOpen || v.Breaker.Trips != 1 ||
		v.Breaker.OpenedAt.IsZero() || v.Breaker.RetryAt.Before(v.Breaker.OpenedAt) {
		t.Fatalf("open worker view = %+v", v.Breaker)
	}

	if _, ok := p.Monitor.IsolateFor(w.Health, time.Minute, "test"); !ok {
		t.Fatal("IsolateFor refused")
	}
	if v := ViewOf(w, time.Now()); v.State() != "isolated" || !v.Isolated {
		t.Fatalf("isolated worker view state = %s", v.State())
	}
}

func TestLookupNamedAndLists(t *testing.T) {
	p, q := newPool(t), newPool(t)
	w1 := newWorker(t, p, "10.0.0.2:80", slowBreaker)
	w2 := newWorker(t, p, "10.0.0.1:80", slowBreaker)
	w3 := newWorker(t, q, "10.0.0.1:80", slowBreaker)

	if Named(p.Name) != p || Named(q.Name) != q || Named(uniqueName(t)) != nil {
		t.Fatal("Named does not find the pools")
	}
	for _, w := range []*Worker{w1, w2, w3} {
		if Lookup(w.ID) != w {
			t.Fatalf("Lookup(%q) does not find it", w.ID)
		}
	}
	if Lookup(WorkerID(p.Name, "10.0.0.3:80")) != nil {
		t.Fatal("Lookup of an unknown id found a worker")
	}

	all := AllWorkers()
	if !sort.SliceIsSorted(all, func(i, j int) bool { return all[i].ID < all[j].ID }) {
		t.Fatalf("AllWorkers not sorted: %v", ids(all))
	}
	for _, w := range []*Worker{w1, w2, w3} {
		if !slices.Contains(all, w) {
			t.Fatalf("AllWorkers lacks %s", w.ID)
		}
	}
	pools := All()
	if !sort.SliceIsSorted(pools, func(i, j int) bool { return pools[i].Name < pools[j].Name }) ||
		!slices.Contains(pools, p) || !slices.Contains(pools, q) {
		t.Fatal("All is not the sorted pools")
	}

	views := WorkerViews(p.Name)
	if len(views) != 2 || views[0].ID != w2.ID || views[1].ID != w1.ID {
		t.Fatalf("WorkerViews(%s) = %v", p.Name, views)
	}
	if n := len(WorkerViews("")); n < 3 {
		t.Fatalf("WorkerViews(\"\") has %d workers, want all (at least 3)", n)
	}
}

// bookAt books an error of kind k for w at time at.
func bookAt(p *Pool, w *Worker, k recovery.Kind, at time.Time) {
	ce := Incident(k, w.Ref(), "test", "book", k.String())
	ce.Timestamp = at
	p.Book(ce)
}

func TestStats(t *testing.T) {
	p, q := newPool(t), newPool(t)
	w1 := newWorker(t, p, "10.0.0.1:80", slowBreaker)
	w2 := newWorker(t, p, "10.0.0.2:80", slowBreaker)
	w3 := newWorker(t, q, "10.0.0.1:80", slowBreaker)
	attach(t, p, newUser("p"), w1, w2)
	attach(t, q, newUser("q"), w3)
	if err := Act(w2, "isolate", 0, ""); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	bookAt(p, w1, recovery.KindTimeout, now)
	bookAt(p, w2, recovery.KindTimeout, now)
	bookAt(q, w3, recovery.KindHealthCheckFailed, now)
	p.Manager.CountRetry()
	q.Manager.CountBreakerTrip()
	msg := "lookup failed"
	q.DynamicErr.Store(&msg)

	both := func(name string) bool { return name == p.Name || name == q.Name }
	s := Stats(both)
	if len(s.Pools) != 2 {
		t.Fatalf("Stats has %d pools, want 2", len(s.Pools))
	}
	if s.TotalErrors != 3 || s.Retries != 1 || s.BreakerTrips != 1 {
		t.Fatalf("totals: errors %d, retries %d, trips %d", s.TotalErrors, s.Retries, s.BreakerTrips)
	}
	if s.ByKind["timeout"] != 2 || s.ByKind["health_check_failed"] != 1 {
		t.Fatalf("ByKind = %v", s.ByKind)
	}
	var bySeverity uint64
	for _, n := range s.BySeverity {
		bySeverity += n
	}
	if bySeverity != 3 {
		t.Fatalf("BySeverity = %v, want 3 in all", s.BySeverity)
	}
	if s.HealthyWorkers != 2 || s.IsolatedWorkers != 1 || s.TotalWorkers != 3 {
		t.Fatalf("workers: healthy %d, isolated %d, total %d", s.HealthyWorkers, s.IsolatedWorkers, s.TotalWorkers)
	}
	ps, pq := s.Pools[p.Name], s.Pools[q.Name]
	if ps.TotalErrors != 2 || ps.HealthyWorkers != 1 || ps.IsolatedWorkers != 1 || ps.TotalWorkers != 2 || ps.DynamicError != "" {
		t.Fatalf("pool %s: %+v", p.Name, ps)
	}
	if pq.TotalErrors != 1 || pq.TotalWorkers != 1 || pq.DynamicError != msg {
		t.Fatalf("pool %s: %+v", q.Name, pq)
	}

	only := Stats(func(name string) bool { return name == q.Name })
	if len(only.Pools) != 1 || only.TotalErrors != 1 || only.TotalWorkers != 1 || only.Retries != 0 {
		t.Fatalf("Stats of %s only: %+v", q.Name, only)
	}
	if none := Stats(func(string) bool { return false }); len(none.Pools) != 0 || none.TotalErrors != 0 ||
		none.ByKind == nil || none.BySeverity == nil {
		t.Fatalf("Stats of no pool: %+v", none)
	}
	if all := Stats(nil); all.Pools[p.Name].TotalErrors != 2 || all.Pools[q.Name].TotalErrors != 1 {
		t.Fatal("Stats(nil) lacks the pools")
	}
}

func TestErrorsMergeNewestFirst(t *testing.T) {
	p, q := newPool(t), newPool(t)
	wp := newWorker(t, p, "10.0.0.1:80", slowBreaker)
	wq := newWorker(t, q, "10.0.0.1:80", slowBreaker)
	t0 := time.Now().Add(-time.Hour)
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * time.Second) }
	bookAt(p, wp, recovery.KindTimeout, at(1))
	bookAt(q, wq, recovery.KindTimeout, at(2))
	bookAt(p, wp, recovery.KindHealthCheckFailed, at(3))
	bookAt(q, wq, recovery.KindHealthCheckFailed, at(4))
	bookAt(p, wp, recovery.KindTimeout, at(5))

	both := func(name string) bool { return name == p.Name || name == q.Name }
	stamps := func(errs []recovery.ContextualError) []int {
		var out []int
		for _, e := range errs {
			out = append(out, int(e.Timestamp.Sub(t0)/time.Second))
		}
		return out
	}
	for _, tc := range []struct {
		name string
		f    recovery.Filter
		keep func(string) bool
		want []int
	}{
		{"all", recovery.Filter{}, both, []int{5, 4, 3, 2, 1}},
		{"limit", recovery.Filter{Limit: 3}, both, []int{5, 4, 3}},
		{"limit above count", recovery.Filter{Limit: 50}, both, []int{5, 4, 3, 2, 1}},
		{"one pool", recovery.Filter{}, func(n string) bool { return n == q.Name }, []int{4, 2}},
		{"one pool, limit", recovery.Filter{Limit: 1}, func(n string) bool { return n == p.Name }, []int{5}},
		{"kind", recovery.Filter{Kind: recovery.KindHealthCheckFailed}, both, []int{4, 3}},
		{"worker", recovery.Filter{Worker: wq.ID}, both, []int{4, 2}},
		{"no pool", recovery.Filter{}, func(string) bool { return false }, nil},
	} {
		got := Errors(tc.f, tc.keep)
		if got == nil {
			t.Errorf("%s: Errors returned nil, want an empty list", tc.name)
		}
		if s := stamps(got); !slices.Equal(s, tc.want) {
			t.Errorf("%s: Errors = %v, want %v", tc.name, s, tc.want)
		}
	}
	if got := Errors(recovery.Filter{Pool: p.Name}, nil); !slices.Equal(stamps(got), []int{5, 3, 1}) {
		t.Errorf("Errors(Pool: p, nil) = %v", stamps(got))
	}
}
