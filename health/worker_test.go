package health

import (
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"
)

func TestWorkerRequestCounters(t *testing.T) {
	t0 := newFakeClock().Now()
	tests := []struct {
		name string
		// ops is a sequence of: 'b' BeginRequest, 'e' EndRequest,
		// 's' RecordSuccess, 'f' RecordFailure (each at t0 + its index in s).
		ops             string
		wantInFlight    int64
		wantRequests    uint64
		wantFailures    uint64
		wantConsecutive int64
		wantWindow      WindowStats
		wantLastSuccess time.Time
		wantLastFailure time.Time
	}{
		{name: "nothing"},
		{
			name: "in flight counts begun but not ended", ops: "bbbe",
			wantInFlight: 2, wantRequests: 3,
		},
		{
			name: "failures accumulate", ops: "bfebfe",
			wantRequests: 2, wantFailures: 2, wantConsecutive: 2,
			wantWindow:      WindowStats{Requests: 2, Successes: 0},
			wantLastFailure: t0.Add(4 * time.Second),
		},
		{
			name: "success resets consecutive failures but not total", ops: "ffsf",
			wantFailures: 3, wantConsecutive: 1,
			wantWindow:      WindowStats{Requests: 4, Successes: 1},
			wantLastSuccess: t0.Add(2 * time.Second),
			wantLastFailure: t0.Add(3 * time.Second),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := NewWorkerHealth("p", "w", "127.0.0.1:1")
			for i, op := range tc.ops {
				now := t0.Add(time.Duration(i) * time.Second)
				switch op {
				case 'b':
					w.BeginRequest()
				case 'e':
					w.EndRequest()
				case 's':
					w.RecordSuccess(now)
				case 'f':
					w.RecordFailure(now)
				}
			}
			s := w.Snapshot(t0)
			if got := w.InFlight(); got != tc.wantInFlight {
				t.Errorf("InFlight() = %d, want %d", got, tc.wantInFlight)
			}
			if s.Requests != tc.wantRequests || s.Failures != tc.wantFailures {
				t.Errorf("requests, failures = %d, %d; want %d, %d", s.Requests, s.Failures, tc.wantRequests, tc.wantFailures)
			}
			if got := w.ConsecutiveFailures(); got != tc.wantConsecutive || s.ConsecutiveFailures != got {
				t.Errorf("ConsecutiveFailures() = %d (snapshot %d), want %d", got, s.ConsecutiveFailures, tc.wantConsecutive)
			}
			if !s.LastSuccess.Equal(tc.wantLastSuccess) || !s.LastFailure.Equal(tc.wantLastFailure) {
				t.Errorf("last success, failure = %v, %v; want %v, %v", s.LastSuccess, s.LastFailure, tc.wantLastSuccess, tc.wantLastFailure)
			}
			if got := w.takeWindow(); got != tc.wantWindow {
				t.Errorf("window = %+v, want %+v", got, tc.wantWindow)
			}
			if got := w.takeWindow(); got != (WindowStats{}) {
				t.Errorf("window after reset = %+v, want zero", got)
			}
		})
	}
}

func TestWorkerThrottle(t *testing.T) {
	t0 := newFakeClock().Now()
	tests := []struct {
		name  string
		calls []time.Duration // Throttle(t0 + d) in order
		want  time.Duration   // ThrottledUntil() - t0
	}{
		{name: "first throttle sets", calls: []time.Duration{5 * time.Second}, want: 5 * time.Second},
		{name: "later time extends", calls: []time.Duration{5 * time.Second, 9 * time.Second}, want: 9 * time.Second},
		{name: "earlier time never shortens", calls: []time.Duration{9 * time.Second, 5 * time.Second}, want: 9 * time.Second},
		{name: "same time is a no-op", calls: []time.Duration{3 * time.Second, 3 * time.Second}, want: 3 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := NewWorkerHealth("p", "w", "u")
			for _, d := range tc.calls {
				w.Throttle(t0.Add(d))
			}
			if got := w.ThrottledUntil(); !got.Equal(t0.Add(tc.want)) {
				t.Errorf("ThrottledUntil() = %v, want %v", got, t0.Add(tc.want))
			}
		})
	}

	t.Run("never throttled is the zero time", func(t *testing.T) {
		if got := NewWorkerHealth("p", "w", "u").ThrottledUntil(); !got.IsZero() {
			t.Errorf("ThrottledUntil() = %v, want zero", got)
		}
	})

	t.Run("concurrent throttles keep the latest", func(t *testing.T) {
		w := NewWorkerHealth("p", "w", "u")
		var wg sync.WaitGroup
		for i := range 50 {
			wg.Go(func() { w.Throttle(t0.Add(time.Duration(i) * time.Second)) })
		}
		wg.Wait()
		if got := w.ThrottledUntil(); !got.Equal(t0.Add(49 * time.Second)) {
			t.Errorf("ThrottledUntil() = %v, want %v", got, t0.Add(49*time.Second))
		}
	})
}

func TestWorkerAvailable(t *testing.T) {
	t0 := newFakeClock().Now()
	tests := []struct {
		name     string
		throttle time.Duration // 0: not throttled
		isolate  bool
		probeBad bool
		at       time.Duration
		want     bool
		healthy  bool
	}{
		{name: "fresh worker", want: true, healthy: true},
		{name: "throttled", throttle: 10 * time.Second, at: 5 * time.Second},
		{name: "throttle ends at its time", throttle: 10 * time.Second, at: 10 * time.Second, want: true, healthy: true},
		{name: "isolated", isolate: true},
		{name: "probe-unhealthy is available but not healthy", probeBad: true, want: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := NewWorkerHealth("p", "w", "u")
			if tc.throttle > 0 {
				w.Throttle(t0.Add(tc.throttle))
			}
			if tc.isolate {
				w.mu.Lock()
				w.setIsolatedLocked(time.Time{}, "test")
				w.mu.Unlock()
			}
			if tc.probeBad {
				w.RecordProbe(errors.New("down"), t0, 1, 1)
			}
			now := t0.Add(tc.at)
			if got := w.Available(now); got != tc.want {
				t.Errorf("Available() = %v, want %v", got, tc.want)
			}
			if got := w.Healthy(now); got != tc.healthy {
				t.Errorf("Healthy() = %v, want %v", got, tc.healthy)
			}
			if got := w.Snapshot(now).Healthy; got != tc.healthy {
				t.Errorf("Snapshot().Healthy = %v, want %v", got, tc.healthy)
			}
			if got := w.Isolated(); got != tc.isolate {
				t.Errorf("Isolated() = %v, want %v", got, tc.isolate)
			}
		})
	}
}

func TestRecordProbeHysteresis(t *testing.T) {
	t0 := newFakeClock().Now()
	down := errors.New("down")
	type step struct {
		pass        bool
		wantChanged bool
		wantHealthy bool
		wantPasses  int
		wantFails   int
	}
	tests := []struct {
		name          string
		passes, fails int
		steps         []step
	}{
		{
			name: "falls after fails consecutive failures", passes: 2, fails: 3,
			steps: []step{
				{pass: false, wantHealthy: true, wantFails: 1},
				{pass: false, wantHealthy: true, wantFails: 2},
				{pass: false, wantChanged: true, wantHealthy: false, wantFails: 3},
				{pass: false, wantHealthy: false, wantFails: 3}, // capped
				{pass: false, wantHealthy: false, wantFails: 3},
			},
		},
		{
			name: "a pass breaks a failure streak", passes: 2, fails: 3,
			steps: []step{
				{pass: false, wantHealthy: true, wantFails: 1},
				{pass: false, wantHealthy: true, wantFails: 2},
				{pass: true, wantHealthy: true, wantPasses: 1},
				{pass: false, wantHealthy: true, wantFails: 1},
				{pass: false, wantHealthy: true, wantFails: 2},
			},
		},
		{
			name: "rises after passes consecutive passes", passes: 2, fails: 1,
			steps: []step{
				{pass: false, wantChanged: true, wantHealthy: false, wantFails: 1},
				{pass: true, wantHealthy: false, wantPasses: 1},
				{pass: false, wantHealthy: false, wantFails: 1},
				{pass: true, wantHealthy: false, wantPasses: 1},
				{pass: true, wantChanged: true, wantHealthy: true, wantPasses: 2},
				{pass: true, wantHealthy: true, wantPasses: 2}, // capped
			},
		},
		{
			name: "thresholds below one count as one", passes: 0, fails: -1,
			steps: []step{
				{pass: false, wantChanged: true, wantHealthy: false, wantFails: 1},
				{pass: true, wantChanged: true, wantHealthy: true, wantPasses: 1},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := NewWorkerHealth("p", "w", "u")
			for i, st := range tc.steps {
				var err error
				if !st.pass {
					err = down
				}
				now := t0.Add(time.Duration(i) * time.Second)
				res := w.RecordProbe(err, now, tc.passes, tc.fails)
				if res.Changed != st.wantChanged || res.Healthy != st.wantHealthy || !errors.Is(res.Err, err) {
					t.Fatalf("step %d: RecordProbe() = %+v, want changed %v healthy %v err %v", i, res, st.wantChanged, st.wantHealthy, err)
				}
				s := w.Snapshot(now)
				if s.ProbeHealthy != st.wantHealthy || w.probeHealthy.Load() != st.wantHealthy {
					t.Fatalf("step %d: ProbeHealthy = %v, want %v", i, s.ProbeHealthy, st.wantHealthy)
				}
				if s.ProbePasses != st.wantPasses || s.ProbeFails != st.wantFails {
					t.Fatalf("step %d: streaks = %d passes, %d fails; want %d, %d", i, s.ProbePasses, s.ProbeFails, st.wantPasses, st.wantFails)
				}
				if !s.LastCheck.Equal(now) {
					t.Fatalf("step %d: LastCheck = %v, want %v", i, s.LastCheck, now)
				}
			}
		})
	}

	t.Run("reset makes the worker probe-healthy", func(t *testing.T) {
		w := NewWorkerHealth("p", "w", "u")
		w.RecordProbe(down, t0, 1, 1)
		w.ResetProbe()
		if s := w.Snapshot(t0); !s.ProbeHealthy || s.ProbeFails != 0 {
			t.Errorf("after ResetProbe: healthy %v, fails %d; want true, 0", s.ProbeHealthy, s.ProbeFails)
		}
	})

	t.Run("concurrent failures flip exactly once", func(t *testing.T) {
		w := NewWorkerHealth("p", "w", "u")
		var mu sync.Mutex
		changed := 0
		var wg sync.WaitGroup
		for range 64 {
			wg.Go(func() {
				if w.RecordProbe(down, t0, 2, 3).Changed {
					mu.Lock()
					changed++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if changed != 1 {
			t.Errorf("%d probes reported a change, want 1", changed)
		}
	})
}

func TestSnapshotJSON(t *testing.T) {
	clk := newFakeClock()
	t0 := clk.Now()
	m := NewMonitor(isolation(IsolationSettings{SlowStart: 10 * time.Second}), clk.Now, half)
	w := NewWorkerHealth("pool1", "pool1/a", "10.0.0.1:80")
	other := NewWorkerHealth("pool1", "pool1/b", "10.0.0.2:80")
	m.SetWorkers([]*WorkerHealth{w, other})

	t.Run("fresh worker omits unset times", func(t *testing.T) {
		raw, err := json.Marshal(w.Snapshot(t0))
		if err != nil {
			t.Fatal(err)
		}
		var got map[string]any
		if err := json.Unmarshal(raw, &got); err != nil {
			t.Fatal(err)
		}
		for _, key := range []string{"isolated_until", "isolation_reason", "throttled_until", "last_check", "last_success", "last_failure"} {
			if _, ok := got[key]; ok {
				t.Errorf("key %q present in %s", key, raw)
			}
		}
		for key, want := range map[string]any{
			"id": "pool1/a", "pool": "pool1", "upstream": "10.0.0.1:80", "healthy": true,
			"isolated": false, "recovery_attempts": 0.0, "consecutive_failures": 0.0,
			"probe_healthy": true, "slow_start_weight": 1.0, "in_flight": 0.0,
		} {
			if got[key] != want {
				t.Errorf("%s = %v, want %v", key, got[key], want)
			}
		}
	})

	t.Run("isolated and throttled worker", func(t *testing.T) {
		w.BeginRequest()
		w.RecordFailure(t0)
		w.Throttle(t0.Add(time.Minute))
		if _, ok := m.Isolate(w, ReasonCritical, "tls name mismatch"); !ok {
			t.Fatal("Isolate refused")
		}
		s := w.Snapshot(t0)
		want := Snapshot{
			ID: "pool1/a", Pool: "pool1", Upstream: "10.0.0.1:80",
			Isolated: true, IsolatedUntil: t0.Add(testBaseTime),
			IsolationReason: "critical_error: tls name mismatch", Ejections: 1,
			Throttled: true, ThrottledUntil: t0.Add(time.Minute),
			ProbeHealthy: true, ConsecutiveFailures: 1, LastFailure: t0,
			InFlight: 1, Requests: 1, Failures: 1, SlowStartWeight: 1,
		}
		if !snapshotsEqual(s, want) {
			t.Errorf("Snapshot() =\n%+v\nwant\n%+v", s, want)
		}
		raw, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		var back Snapshot
		if err := json.Unmarshal(raw, &back); err != nil {
			t.Fatal(err)
		}
		if !snapshotsEqual(back, want) {
			t.Errorf("JSON round trip =\n%+v\nwant\n%+v", back, want)
		}
	})
}

// snapshotsEqual compares snapshots, times by instant.
func snapshotsEqual(a, b Snapshot) bool {
	times := [][2]time.Time{
		{a.IsolatedUntil, b.IsolatedUntil}, {a.ThrottledUntil, b.ThrottledUntil},
		{a.LastCheck, b.LastCheck}, {a.LastSuccess, b.LastSuccess}, {a.LastFailure, b.LastFailure},
	}
	for _, p := range times {
		if !p[0].Equal(p[1]) {
			return false
		}
	}
	a.IsolatedUntil, a.ThrottledUntil, a.LastCheck, a.LastSuccess, a.LastFailure = time.Time{}, time.Time{}, time.Time{}, time.Time{}, time.Time{}
	b.IsolatedUntil, b.ThrottledUntil, b.LastCheck, b.LastSuccess, b.LastFailure = time.Time{}, time.Time{}, time.Time{}, time.Time{}, time.Time{}
	return a == b
}

func TestRequestPathDoesNotAllocate(t *testing.T) {
	w := NewWorkerHealth("p", "w", "u")
	m := NewMonitor(isolation(IsolationSettings{SlowStart: time.Second}), nil, nil)
	m.SetWorkers([]*WorkerHealth{w})
	now := time.Now()
	allocs := testing.AllocsPerRun(1000, func() {
		w.BeginRequest()
		_ = w.Available(now)
		_ = m.Weight(w)
		w.RecordSuccess(now)
		w.RecordFailure(now)
		_, _ = m.OnResult(w, false)
		w.EndRequest()
	})
	if allocs != 0 {
		t.Errorf("request path allocates %v times per request, want 0", allocs)
	}
}

// AvailableNow reads the real clock, so its cases use times far from now.
func TestWorkerAvailableNow(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name     string
		throttle time.Duration // Throttle(now + d) unless 0
		isolate  bool
		want     bool
	}{
		{name: "never throttled", want: true},
		{name: "throttle in the future", throttle: time.Hour, want: false},
		{name: "throttle in the past", throttle: -time.Hour, want: true},
		{name: "isolated", isolate: true, want: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := NewWorkerHealth("p", "w", "u")
			if tc.throttle != 0 {
				w.Throttle(now.Add(tc.throttle))
			}
			if tc.isolate {
				w.mu.Lock()
				w.setIsolatedLocked(now.Add(time.Hour), "test")
				w.mu.Unlock()
			}
			if got := w.AvailableNow(); got != tc.want {
				t.Errorf("AvailableNow() = %v, want %v", got, tc.want)
			}
			if got := w.Available(time.Now()); got != tc.want {
				t.Errorf("Available(now) = %v, want %v (AvailableNow must agree)", got, tc.want)
			}
		})
	}
}
