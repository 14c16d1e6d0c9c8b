package health

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestMaxIsolated(t *testing.T) {
	tests := []struct {
		percent int
		want    map[int]int // total workers -> max isolated
	}{
		{percent: 50, want: map[int]int{0: 0, 1: 0, 2: 1, 3: 1, 4: 2, 5: 2, 10: 5}},
		{percent: 100, want: map[int]int{0: 0, 1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 10: 9}},
		{percent: 0, want: map[int]int{1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 10: 0}},
		{percent: 10, want: map[int]int{1: 0, 2: 1, 3: 1, 5: 1, 10: 1, 20: 2}},
		{percent: 150, want: map[int]int{1: 0, 2: 1, 10: 9}},
		{percent: -5, want: map[int]int{2: 0, 10: 0}},
	}
	for _, tc := range tests {
		for total, want := range tc.want {
			t.Run(fmt.Sprintf("%d%% of %d", tc.percent, total), func(t *testing.T) {
				if got := MaxIsolated(total, tc.percent); got != want {
					t.Errorf("MaxIsolated(%d, %d) = %d, want %d", total, tc.percent, got, want)
				}
			})
		}
	}
}

func TestEjectionTime(t *testing.T) {
	s := IsolationSettings{BaseTime: 10 * time.Second, MaxTime: 5 * time.Minute, Jitter: 0.1}
	tests := []struct {
		name      string
		s         IsolationSettings
		ejections int
		rnd       float64
		want      time.Duration
	}{
		{name: "first", s: s, ejections: 1, rnd: 0.5, want: 10 * time.Second},
		{name: "second doubles", s: s, ejections: 2, rnd: 0.5, want: 20 * time.Second},
		{name: "third", s: s, ejections: 3, rnd: 0.5, want: 40 * time.Second},
		{name: "fifth", s: s, ejections: 5, rnd: 0.5, want: 160 * time.Second},
		{name: "sixth is capped", s: s, ejections: 6, rnd: 0.5, want: 5 * time.Minute},
		{name: "many stays capped", s: s, ejections: 1000, rnd: 0.5, want: 5 * time.Minute},
		{name: "zero ejections counts as first", s: s, ejections: 0, rnd: 0.5, want: 10 * time.Second},
		{name: "lowest jitter", s: s, ejections: 1, rnd: 0, want: 9 * time.Second},
		{name: "highest jitter", s: s, ejections: 1, rnd: 1, want: 11 * time.Second},
		{name: "jitter never exceeds the cap", s: s, ejections: 10, rnd: 1, want: 5 * time.Minute},
		{name: "jitter may go below the cap", s: s, ejections: 10, rnd: 0, want: 270 * time.Second},
		{name: "base above max is capped", s: IsolationSettings{BaseTime: time.Hour, MaxTime: time.Minute}, ejections: 1, rnd: 0.5, want: time.Minute},
		{name: "no overflow near the largest duration", s: IsolationSettings{BaseTime: time.Hour, MaxTime: math.MaxInt64, Jitter: 0.5}, ejections: 200, rnd: 0.99, want: math.MaxInt64},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := EjectionTime(tc.s, tc.ejections, tc.rnd); got != tc.want {
				t.Errorf("EjectionTime(%d, %v) = %v, want %v", tc.ejections, tc.rnd, got, tc.want)
			}
		})
	}

	t.Run("grows and stays within jitter bounds", func(t *testing.T) {
		prevNominal := time.Duration(0)
		for n := 1; n <= 12; n++ {
			nominal := min(s.BaseTime<<(n-1), s.MaxTime)
			if nominal < prevNominal {
				t.Fatalf("ejection %d: nominal %v shrank from %v", n, nominal, prevNominal)
			}
			prevNominal = nominal
			lo := time.Duration(float64(nominal) * 0.9)
			hi := min(time.Duration(float64(nominal)*1.1), s.MaxTime)
			for rnd := 0.0; rnd < 1; rnd += 0.01 {
				got := EjectionTime(s, n, rnd)
				if got < lo || got > hi {
					t.Fatalf("EjectionTime(%d, %v) = %v, want within [%v, %v]", n, rnd, got, lo, hi)
				}
			}
		}
	})
}

func TestSuccessRateOutliers(t *testing.T) {
	ok := WindowStats{Requests: 100, Successes: 100}
	bad := WindowStats{Requests: 100, Successes: 70}
	tests := []struct {
		name        string
		stats       []WindowStats
		minRequests int
		factor      float64
		minHosts    int
		want        []int
	}{
		{
			name:  "70% among peers at 100% is an outlier",
			stats: []WindowStats{ok, ok, bad, ok, ok}, minRequests: 50, factor: 1.9, minHosts: 3,
			want: []int{2},
		},
		{
			name:  "70% among two peers at 100% is an outlier with factor 1",
			stats: []WindowStats{ok, bad, ok}, minRequests: 50, factor: 1, minHosts: 3,
			want: []int{1},
		},
		{
			name:  "one error among healthy peers is noise, not an outlier",
			stats: []WindowStats{ok, {Requests: 100, Successes: 99}, ok}, minRequests: 50, factor: 1, minHosts: 3,
		},
		{
			name:  "outlier below min requests does not take part",
			stats: []WindowStats{ok, ok, {Requests: 40, Successes: 28}, ok, ok}, minRequests: 50, factor: 1.9, minHosts: 3,
		},
		{
			name:  "too few hosts with enough requests",
			stats: []WindowStats{ok, ok, bad, ok, {Requests: 10, Successes: 10}}, minRequests: 50, factor: 1.9, minHosts: 5,
		},
		{
			name:  "fewer hosts than min hosts",
			stats: []WindowStats{ok, ok, bad, ok, ok}, minRequests: 50, factor: 1.9, minHosts: 6,
		},
		{
			name:  "with 3 hosts one deviant is within 1.9 stdev",
			stats: []WindowStats{ok, ok, bad}, minRequests: 50, factor: 1.9, minHosts: 3,
		},
		{
			name:  "a lower factor flags it with 3 hosts",
			stats: []WindowStats{ok, ok, bad}, minRequests: 50, factor: 1.0, minHosts: 3,
			want: []int{2},
		},
		{
			name:  "two outliers among ten",
			stats: []WindowStats{ok, ok, ok, {Requests: 200, Successes: 100}, ok, ok, ok, ok, {Requests: 100, Successes: 50}, ok}, minRequests: 50, factor: 1.9, minHosts: 3,
			want: []int{3, 8},
		},
		{
			name:  "all equal flags nobody",
			stats: []WindowStats{bad, bad, bad, bad, bad}, minRequests: 50, factor: 1.9, minHosts: 3,
		},
		{
			name:  "detection off",
			stats: []WindowStats{ok, ok, bad, ok, ok}, minRequests: 0, factor: 1.9, minHosts: 3,
		},
		{
			name:  "successes above requests are clamped",
			stats: []WindowStats{{Requests: 100, Successes: 500}, ok, bad, ok, ok}, minRequests: 50, factor: 1.9, minHosts: 3,
			want: []int{2},
		},
		{name: "no stats", minRequests: 1, factor: 1.9},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, _, _ := successRateOutliers(tc.stats, tc.minRequests, tc.factor, tc.minHosts)
			if !slices.Equal(got, tc.want) {
				t.Errorf("successRateOutliers() = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestSlowStartWeight(t *testing.T) {
	tests := []struct {
		name   string
		since  time.Duration
		window time.Duration
		want   float64
	}{
		{name: "off", since: 0, window: 0, want: 1},
		{name: "negative window is off", since: 0, window: -time.Second, want: 1},
		{name: "start is never zero", since: 0, window: 10 * time.Second, want: 0.1},
		{name: "clock going backwards", since: -time.Second, window: 10 * time.Second, want: 0.1},
		{name: "halfway", since: 5 * time.Second, window: 10 * time.Second, want: 0.55},
		{name: "end", since: 10 * time.Second, window: 10 * time.Second, want: 1},
		{name: "after the end", since: time.Hour, window: 10 * time.Second, want: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := SlowStartWeight(tc.since, tc.window); math.Abs(got-tc.want) > 1e-9 {
				t.Errorf("SlowStartWeight(%v, %v) = %v, want %v", tc.since, tc.window, got, tc.want)
			}
		})
	}
}

// Values for tests, and isolation, which completes settings with them, as
// a caller of this package must: the package has no defaults.
const (
	testBaseTime           = 10 * time.Second
	testDetectionInterval  = 10 * time.Second
	testProbationSuccesses = 5
)

// isolation returns s with each zero field set to a value for tests.
func isolation(s IsolationSettings) IsolationSettings {
	if s.BaseTime == 0 {
		s.BaseTime = testBaseTime
	}
	if s.MaxTime == 0 {
		s.MaxTime = 5 * time.Minute
	}
	if s.Jitter == 0 {
		s.Jitter = 0.1
	}
	if s.DecayAfter == 0 {
		s.DecayAfter = s.MaxTime
	}
	if s.MaxPercent == 0 {
		s.MaxPercent = 50
	}
	if s.SuccessRateStdevFactor == 0 {
		s.SuccessRateStdevFactor = 1.9
	}
	if s.SuccessRateMinHosts == 0 {
		s.SuccessRateMinHosts = 3
	}
	if s.DetectionInterval == 0 {
		s.DetectionInterval = testDetectionInterval
	}
	if s.ProbationTime == 0 {
		s.ProbationTime = 5 * time.Second
	}
	if s.ProbationSuccesses == 0 {
		s.ProbationSuccesses = testProbationSuccesses
	}
	if s.MaxRecoveryAttempts == 0 {
		s.MaxRecoveryAttempts = 3
	}
	return s
}

// IsolationSettings have no defaults: a missing field is an error, not a
// value the package picks, so the defaults the handler documents are the
// only ones.
func TestIsolationSettings(t *testing.T) {
	full := isolation(IsolationSettings{})
	with := func(f func(*IsolationSettings)) IsolationSettings {
		s := full
		f(&s)
		return s
	}
	tests := []struct {
		name    string
		in      IsolationSettings
		wantErr string
	}{
		{name: "complete", in: full},
		{name: "features off", in: with(func(s *IsolationSettings) {
			s.MaxPercent, s.SuccessRateMinRequests, s.SuccessRateStdevFactor, s.Jitter = 0, 0, 0, 0
		})},
		{name: "zero is incomplete", wantErr: "base_time must be above 0"},
		{name: "missing max_time", in: with(func(s *IsolationSettings) { s.MaxTime = 0 }), wantErr: "max_time (0s) must not be below base_time (10s)"},
		{name: "missing decay", in: with(func(s *IsolationSettings) { s.DecayAfter = 0 }), wantErr: "decay_after"},
		{name: "missing min hosts", in: with(func(s *IsolationSettings) { s.SuccessRateMinHosts = 0 }), wantErr: "min_hosts"},
		{name: "missing detection interval", in: with(func(s *IsolationSettings) { s.DetectionInterval = 0 }), wantErr: "outlier_interval"},
		{name: "missing probation successes", in: with(func(s *IsolationSettings) { s.ProbationSuccesses = 0 }), wantErr: "probation_successes"},
		{name: "missing recovery attempts", in: with(func(s *IsolationSettings) { s.MaxRecoveryAttempts = 0 }), wantErr: "max_recovery_attempts"},
		{name: "base above max", in: with(func(s *IsolationSettings) { s.BaseTime, s.MaxTime = time.Hour, time.Minute }), wantErr: "max_time (1m0s) must not be below base_time (1h0m0s)"},
		{name: "jitter of one", in: with(func(s *IsolationSettings) { s.Jitter = 1 }), wantErr: "jitter"},
		{name: "max_percent above 100", in: with(func(s *IsolationSettings) { s.MaxPercent = 101 }), wantErr: "max_percent"},
		{name: "negative min requests", in: with(func(s *IsolationSettings) { s.SuccessRateMinRequests = -1 }), wantErr: "min_requests"},
		{name: "negative factor", in: with(func(s *IsolationSettings) { s.SuccessRateStdevFactor = -1 }), wantErr: "stdev_factor"},
		{name: "NaN factor", in: with(func(s *IsolationSettings) { s.SuccessRateStdevFactor = math.NaN() }), wantErr: "stdev_factor"},
		{name: "negative slow start", in: with(func(s *IsolationSettings) { s.SlowStart = -1 }), wantErr: "slow_start"},
		{name: "negative probation time", in: with(func(s *IsolationSettings) { s.ProbationTime = -1 }), wantErr: "probation_time"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.in.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Errorf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Validate() = %v, want error containing %q", err, tc.wantErr)
			}
		})
	}
}

// Update refuses incomplete settings and keeps the ones it had.
func TestMonitorUpdateRefusesIncomplete(t *testing.T) {
	p := newPool(2, IsolationSettings{MaxPercent: 100})
	if err := p.m.Update(IsolationSettings{SuccessRateMinRequests: 10}); err == nil {
		t.Fatal("Update with incomplete settings succeeded")
	}
	if _, ok := p.m.Isolate(p.ws[0], ReasonBreaker, ""); !ok {
		t.Error("the refused update changed the settings: isolation refused")
	}
}

func TestEventTypeString(t *testing.T) {
	tests := []struct {
		typ  EventType
		want string
	}{
		{EventIsolated, "worker_isolated"},
		{EventRestored, "worker_restored"},
		{EventRecoveryFailed, "worker_recovery_failed"},
		{0, "event_type(0)"},
	}
	for _, tc := range tests {
		t.Run(tc.want, func(t *testing.T) {
			if got := tc.typ.String(); got != tc.want {
				t.Errorf("String() = %q, want %q", got, tc.want)
			}
		})
	}
}

// pool is a Monitor over n workers with a fake clock and no jitter.
type pool struct {
	clk *fakeClock
	m   *Monitor
	ws  []*WorkerHealth
}

// newPool returns a pool of n workers named w0, w1, ...
func newPool(n int, s IsolationSettings) *pool {
	p := &pool{clk: newFakeClock()}
	p.m = NewMonitor(isolation(s), p.clk.Now, half)
	for i := range n {
		p.ws = append(p.ws, NewWorkerHealth("p", "w"+string(rune('0'+i)), "u"))
	}
	p.m.SetWorkers(p.ws)
	return p
}

// outcome is the result of a Monitor call that may produce an event.
type outcome struct {
	ev Event
	ok bool
}

// out bundles a Monitor call's two results for mustEvent and mustNoEvent.
func out(ev Event, ok bool) outcome { return outcome{ev, ok} }

// mustEvent fails the test unless o holds an event with the given type,
// worker and reason prefix, and returns the event.
func mustEvent(t *testing.T, o outcome, typ EventType, w *WorkerHealth, reason Reason) Event {
	t.Helper()
	if !o.ok {
		t.Fatalf("no event, want %v for %s", typ, w.ID())
	}
	ev := o.ev
	if ev.Type != typ || ev.Worker != w || !strings.HasPrefix(ev.Reason, string(reason)) {
		t.Fatalf("event = {%v %s %q}, want {%v %s %q...}", ev.Type, ev.Worker.ID(), ev.Reason, typ, w.ID(), reason)
	}
	return ev
}

// mustNoEvent fails the test if o holds an event.
func mustNoEvent(t *testing.T, o outcome) {
	t.Helper()
	if o.ok {
		t.Fatalf("unexpected event {%v %s %q}", o.ev.Type, o.ev.Worker.ID(), o.ev.Reason)
	}
}

// tickOne runs Tick and returns its only event, failing on more.
func tickOne(t *testing.T, m *Monitor) (Event, bool) {
	t.Helper()
	evs := m.Tick()
	switch len(evs) {
	case 0:
		return Event{}, false
	case 1:
		return evs[0], true
	}
	t.Fatalf("Tick() returned %d events, want at most 1: %+v", len(evs), evs)
	return Event{}, false
}

func TestMonitorIsolate(t *testing.T) {
	t.Run("refused beyond MaxIsolated", func(t *testing.T) {
		p := newPool(4, IsolationSettings{}) // 50%: 2 of 4
		ev, ok := p.m.Isolate(p.ws[0], ReasonBreaker, "tripped 3 times")
		ev = mustEvent(t, out(ev, ok), EventIsolated, p.ws[0], ReasonBreaker)
		if ev.Reason != "breaker_tripping: tripped 3 times" {
			t.Errorf("reason = %q", ev.Reason)
		}
		if !ev.Until.Equal(p.clk.Now().Add(10 * time.Second)) {
			t.Errorf("until = %v, want now+10s", ev.Until)
		}
		ev, ok = p.m.Isolate(p.ws[1], ReasonCritical, "")
		ev = mustEvent(t, out(ev, ok), EventIsolated, p.ws[1], ReasonCritical)
		if ev.Reason != "critical_error" {
			t.Errorf("reason without detail = %q, want %q", ev.Reason, "critical_error")
		}
		ev, ok = p.m.Isolate(p.ws[2], ReasonBreaker, "")
		mustNoEvent(t, out(ev, ok))
		if p.ws[2].Isolated() {
			t.Error("refused worker is isolated")
		}
		if h, i, n := p.m.Counts(); h != 2 || i != 2 || n != 4 {
			t.Errorf("Counts() = %d, %d, %d; want 2, 2, 4", h, i, n)
		}
	})

	t.Run("single worker is never isolated automatically", func(t *testing.T) {
		p := newPool(1, IsolationSettings{MaxPercent: 100})
		ev, ok := p.m.Isolate(p.ws[0], ReasonCritical, "")
		mustNoEvent(t, out(ev, ok))
	})

	t.Run("already isolated is refused", func(t *testing.T) {
		p := newPool(4, IsolationSettings{})
		p.m.Isolate(p.ws[0], ReasonBreaker, "")
		ev, ok := p.m.Isolate(p.ws[0], ReasonCritical, "")
		mustNoEvent(t, out(ev, ok))
		if s := p.ws[0].Snapshot(p.clk.Now()); s.Ejections != 1 || s.IsolationReason != "breaker_tripping" {
			t.Errorf("ejections %d, reason %q; want 1, breaker_tripping", s.Ejections, s.IsolationReason)
		}
	})

	t.Run("non-member is refused", func(t *testing.T) {
		p := newPool(4, IsolationSettings{})
		stranger := NewWorkerHealth("other", "x", "u")
		for name, call := range map[string]func() (Event, bool){
			"Isolate":        func() (Event, bool) { return p.m.Isolate(stranger, ReasonBreaker, "") },
			"IsolateFor":     func() (Event, bool) { return p.m.IsolateFor(stranger, time.Minute, "") },
			"Restore":        func() (Event, bool) { return p.m.Restore(stranger) },
			"ProbeRecovered": func() (Event, bool) { return p.m.ProbeRecovered(stranger) },
		} {
			if _, ok := call(); ok {
				t.Errorf("%s accepted a worker outside the pool", name)
			}
		}
		if stranger.Isolated() {
			t.Error("stranger isolated")
		}
	})

	t.Run("concurrent isolations produce exactly one event", func(t *testing.T) {
		p := newPool(10, IsolationSettings{})
		var mu sync.Mutex
		events := 0
		var wg sync.WaitGroup
		for range 50 {
			wg.Go(func() {
				if _, ok := p.m.Isolate(p.ws[3], ReasonBreaker, ""); ok {
					mu.Lock()
					events++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if events != 1 {
			t.Errorf("%d events, want 1", events)
		}
	})
}

func TestMonitorOperator(t *testing.T) {
	t.Run("IsolateFor ignores MaxPercent and expires via Tick", func(t *testing.T) {
		p := newPool(2, IsolationSettings{})
		mustEvent(t, out(p.m.Isolate(p.ws[0], ReasonBreaker, "")), EventIsolated, p.ws[0], ReasonBreaker)
		ev, ok := p.m.IsolateFor(p.ws[1], time.Minute, "")
		ev = mustEvent(t, out(ev, ok), EventIsolated, p.ws[1], ReasonOperator)
		if ev.Reason != "operator: isolated by operator for 1m0s" || !ev.Until.Equal(p.clk.Now().Add(time.Minute)) {
			t.Errorf("event = %q until %v", ev.Reason, ev.Until)
		}
		if s := p.ws[1].Snapshot(p.clk.Now()); s.Ejections != 0 {
			t.Errorf("operator isolation counted as ejection: %d", s.Ejections)
		}
		p.clk.Advance(10 * time.Second)
		mustEvent(t, out(tickOne(t, p.m)), EventRestored, p.ws[0], ReasonExpired)
		p.clk.Advance(50*time.Second - time.Nanosecond)
		mustNoEvent(t, out(tickOne(t, p.m)))
		p.clk.Advance(time.Nanosecond)
		mustEvent(t, out(tickOne(t, p.m)), EventRestored, p.ws[1], ReasonExpired)
	})

	t.Run("IsolateFor zero lasts until Restore", func(t *testing.T) {
		p := newPool(2, IsolationSettings{})
		ev, ok := p.m.IsolateFor(p.ws[0], 0, "disk replacement")
		ev = mustEvent(t, out(ev, ok), EventIsolated, p.ws[0], ReasonOperator)
		if ev.Reason != "operator: disk replacement" || !ev.Until.IsZero() {
			t.Errorf("event = %q until %v", ev.Reason, ev.Until)
		}
		mustNoEvent(t, out(p.m.IsolateFor(p.ws[0], time.Second, "")))
		p.clk.Advance(1000 * time.Hour)
		mustNoEvent(t, out(tickOne(t, p.m)))
		mustNoEvent(t, out(p.m.ProbeRecovered(p.ws[0])))
		ev, ok = p.m.Restore(p.ws[0])
		ev = mustEvent(t, out(ev, ok), EventRestored, p.ws[0], ReasonOperator)
		if ev.Reason != "operator: restored by operator" {
			t.Errorf("reason = %q", ev.Reason)
		}
		if !p.ws[0].Available(p.clk.Now()) {
			t.Error("restored worker unavailable")
		}
		mustNoEvent(t, out(p.m.Restore(p.ws[0])))
	})

	t.Run("negative duration is refused", func(t *testing.T) {
		p := newPool(2, IsolationSettings{})
		mustNoEvent(t, out(p.m.IsolateFor(p.ws[0], -time.Second, "")))
	})
}

func TestMonitorTickReinstatement(t *testing.T) {
	tests := []struct {
		name         string
		probes       bool
		probeHealthy bool
		wantRestore  bool
		wantReason   string
	}{
		{name: "without probes after the time", wantRestore: true, wantReason: "isolation_expired: ejection time passed"},
		{name: "with probes healthy", probes: true, probeHealthy: true, wantRestore: true, wantReason: "isolation_expired: ejection time passed and probe passes"},
		{name: "with probes unhealthy stays", probes: true},
		{name: "probe state ignored without probes", probeHealthy: false, wantRestore: true, wantReason: "isolation_expired: ejection time passed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPool(3, IsolationSettings{ProbesConfigured: tc.probes})
			w := p.ws[0]
			if !tc.probeHealthy {
				w.RecordProbe(errors.New("down"), p.clk.Now(), 1, 1)
			}
			mustEvent(t, out(p.m.Isolate(w, ReasonProbe, "")), EventIsolated, w, ReasonProbe)
			p.clk.Advance(10*time.Second - time.Nanosecond)
			mustNoEvent(t, out(tickOne(t, p.m)))
			p.clk.Advance(time.Nanosecond)
			ev, ok := tickOne(t, p.m)
			if !tc.wantRestore {
				mustNoEvent(t, out(ev, ok))
				if !w.Isolated() {
					t.Error("worker reinstated while probe-unhealthy")
				}
				return
			}
			ev = mustEvent(t, out(ev, ok), EventRestored, w, ReasonExpired)
			if ev.Reason != tc.wantReason {
				t.Errorf("reason = %q, want %q", ev.Reason, tc.wantReason)
			}
			if w.Isolated() || !w.Available(p.clk.Now()) {
				t.Error("worker still out after reinstatement")
			}
			mustNoEvent(t, out(tickOne(t, p.m)))
		})
	}

	t.Run("probe recovery ends a probe isolation at once", func(t *testing.T) {
		p := newPool(3, IsolationSettings{ProbesConfigured: true})
		w := p.ws[0]
		w.RecordProbe(errors.New("down"), p.clk.Now(), 1, 1)
		p.m.Isolate(w, ReasonProbe, "")
		mustNoEvent(t, out(p.m.ProbeRecovered(w))) // probe still failing
		w.RecordProbe(nil, p.clk.Now(), 1, 1)
		mustEvent(t, out(p.m.ProbeRecovered(w)), EventRestored, w, ReasonProbeRecovered)
		mustNoEvent(t, out(tickOne(t, p.m)))
		mustNoEvent(t, out(p.m.ProbeRecovered(w)))
	})

	t.Run("probe recovery ends a breaker isolation at once", func(t *testing.T) {
		p := newPool(3, IsolationSettings{ProbesConfigured: true})
		w := p.ws[0]
		p.m.Isolate(w, ReasonBreaker, "tripping")
		w.RecordProbe(errors.New("down"), p.clk.Now(), 1, 1)
		mustNoEvent(t, out(p.m.ProbeRecovered(w))) // probe failing
		w.RecordProbe(nil, p.clk.Now(), 1, 1)
		mustEvent(t, out(p.m.ProbeRecovered(w)), EventRestored, w, ReasonProbeRecovered)
		mustNoEvent(t, out(tickOne(t, p.m)))
	})

	t.Run("probe recovery cannot end an operator isolation", func(t *testing.T) {
		p := newPool(3, IsolationSettings{ProbesConfigured: true})
		w := p.ws[0]
		p.m.IsolateFor(w, time.Minute, "maintenance")
		w.RecordProbe(nil, p.clk.Now(), 1, 1)
		mustNoEvent(t, out(p.m.ProbeRecovered(w)))
	})
}

func TestMonitorProbation(t *testing.T) {
	settings := IsolationSettings{BaseTime: 10 * time.Second, MaxTime: time.Hour, MaxRecoveryAttempts: 3}

	// reinstate isolates w (if needed), moves past its ejection time and
	// ticks it back in.
	reinstate := func(t *testing.T, p *pool, w *WorkerHealth) {
		t.Helper()
		until := w.Snapshot(p.clk.Now()).IsolatedUntil
		p.clk.Advance(until.Sub(p.clk.Now()))
		mustEvent(t, out(tickOne(t, p.m)), EventRestored, w, ReasonExpired)
	}

	t.Run("failure on probation re-isolates for longer until recovery failed", func(t *testing.T) {
		p := newPool(3, settings)
		w := p.ws[0]
		p.m.Isolate(w, ReasonBreaker, "")
		wantUntil := []time.Duration{20 * time.Second, 40 * time.Second}
		for attempt, d := range wantUntil {
			reinstate(t, p, w)
			p.clk.Advance(time.Second)
			ev, ok := p.m.OnResult(w, true)
			ev = mustEvent(t, out(ev, ok), EventIsolated, w, ReasonProbation)
			if !ev.Until.Equal(p.clk.Now().Add(d)) {
				t.Fatalf("attempt %d: until = now+%v, want now+%v", attempt+1, ev.Until.Sub(p.clk.Now()), d)
			}
			wantReason := "failed_probation: failed 1s after reinstatement (recovery attempt " + string(rune('1'+attempt)) + " of 3)"
			if ev.Reason != wantReason {
				t.Errorf("reason = %q, want %q", ev.Reason, wantReason)
			}
			if s := w.Snapshot(p.clk.Now()); s.RecoveryAttempts != attempt+1 || s.Ejections != attempt+2 {
				t.Fatalf("attempts %d, ejections %d; want %d, %d", s.RecoveryAttempts, s.Ejections, attempt+1, attempt+2)
			}
		}

		reinstate(t, p, w)
		ev, ok := p.m.OnResult(w, true)
		ev = mustEvent(t, out(ev, ok), EventRecoveryFailed, w, ReasonProbation)
		if !ev.Until.IsZero() || !strings.Contains(ev.Reason, "recovery failed 3 times") {
			t.Errorf("recovery failed event = %q until %v", ev.Reason, ev.Until)
		}
		s := w.Snapshot(p.clk.Now())
		if !s.Isolated || !s.RecoveryFailed || s.Healthy || !s.IsolatedUntil.IsZero() {
			t.Fatalf("snapshot after recovery failed = %+v", s)
		}

		// Only ProbeRecovered or Restore bring it back.
		p.clk.Advance(24 * time.Hour)
		mustNoEvent(t, out(tickOne(t, p.m)))
		w.RecordProbe(errors.New("down"), p.clk.Now(), 1, 1)
		mustNoEvent(t, out(p.m.ProbeRecovered(w)))
		w.RecordProbe(nil, p.clk.Now(), 1, 1)
		mustEvent(t, out(p.m.ProbeRecovered(w)), EventRestored, w, ReasonProbeRecovered)
		if s := w.Snapshot(p.clk.Now()); s.Isolated || s.RecoveryFailed {
			t.Fatalf("after ProbeRecovered: isolated %v, recovery failed %v", s.Isolated, s.RecoveryFailed)
		}

		// Still at the limit: one more probation failure fails at once.
		mustEvent(t, out(p.m.OnResult(w, true)), EventRecoveryFailed, w, ReasonProbation)
		mustEvent(t, out(p.m.Restore(w)), EventRestored, w, ReasonOperator)
		if s := w.Snapshot(p.clk.Now()); s.RecoveryAttempts != 0 || s.RecoveryFailed {
			t.Errorf("after Restore: attempts %d, recovery failed %v; want 0, false", s.RecoveryAttempts, s.RecoveryFailed)
		}
	})

	t.Run("successes end probation and clear attempts", func(t *testing.T) {
		p := newPool(3, settings)
		w := p.ws[0]
		p.m.Isolate(w, ReasonBreaker, "")
		reinstate(t, p, w)
		mustEvent(t, out(p.m.OnResult(w, true)), EventIsolated, w, ReasonProbation)
		reinstate(t, p, w)
		for range testProbationSuccesses - 1 {
			mustNoEvent(t, out(p.m.OnResult(w, false)))
		}
		if s := w.Snapshot(p.clk.Now()); s.RecoveryAttempts != 1 {
			t.Fatalf("attempts during probation = %d, want 1", s.RecoveryAttempts)
		}
		mustNoEvent(t, out(p.m.OnResult(w, false)))
		if s := w.Snapshot(p.clk.Now()); s.RecoveryAttempts != 0 {
			t.Errorf("attempts after probation = %d, want 0", s.RecoveryAttempts)
		}
		mustNoEvent(t, out(p.m.OnResult(w, true)))
		if w.Isolated() {
			t.Error("failure after probation isolated the worker")
		}
	})

	t.Run("probation ends with its time", func(t *testing.T) {
		tests := []struct {
			name         string
			successes    int
			wantAttempts int
		}{
			{name: "with a success attempts are cleared", successes: 1, wantAttempts: 0},
			{name: "without traffic attempts are kept", successes: 0, wantAttempts: 1},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				p := newPool(3, IsolationSettings{SlowStart: 20 * time.Second})
				w := p.ws[0]
				p.m.Isolate(w, ReasonBreaker, "")
				reinstate(t, p, w)
				p.m.OnResult(w, true)
				reinstate(t, p, w)
				for range tc.successes {
					p.m.OnResult(w, false)
				}
				// Probation lasts max(ProbationTime, SlowStart) = 20s.
				p.clk.Advance(20*time.Second - time.Nanosecond)
				mustNoEvent(t, out(tickOne(t, p.m)))
				if !w.onProbation.Load() {
					t.Fatal("probation ended early")
				}
				p.clk.Advance(time.Nanosecond)
				mustNoEvent(t, out(tickOne(t, p.m)))
				if w.onProbation.Load() {
					t.Fatal("probation did not end")
				}
				if s := w.Snapshot(p.clk.Now()); s.RecoveryAttempts != tc.wantAttempts {
					t.Errorf("attempts = %d, want %d", s.RecoveryAttempts, tc.wantAttempts)
				}
				mustNoEvent(t, out(p.m.OnResult(w, true)))
			})
		}
	})

	t.Run("probation failure respects MaxPercent", func(t *testing.T) {
		p := newPool(2, settings)
		w := p.ws[0]
		p.m.Isolate(w, ReasonBreaker, "")
		reinstate(t, p, w)
		p.m.IsolateFor(p.ws[1], 0, "maintenance")
		mustNoEvent(t, out(p.m.OnResult(w, true)))
		if w.Isolated() {
			t.Error("last worker in rotation isolated")
		}
	})

	t.Run("concurrent probation failures produce exactly one event", func(t *testing.T) {
		p := newPool(3, settings)
		w := p.ws[0]
		p.m.Isolate(w, ReasonBreaker, "")
		reinstate(t, p, w)
		var mu sync.Mutex
		events := 0
		var wg sync.WaitGroup
		for range 50 {
			wg.Go(func() {
				if _, ok := p.m.OnResult(w, true); ok {
					mu.Lock()
					events++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if events != 1 {
			t.Errorf("%d events, want 1", events)
		}
	})

	t.Run("a healthy worker is not on probation", func(t *testing.T) {
		p := newPool(3, settings)
		mustNoEvent(t, out(p.m.OnResult(p.ws[0], true)))
	})
}

func TestMonitorDecay(t *testing.T) {
	s := IsolationSettings{BaseTime: 10 * time.Second, MaxTime: time.Hour, DecayAfter: time.Hour}
	p := newPool(3, s)
	w := p.ws[0]
	// Two ejections: the second lasts 20s.
	p.m.Isolate(w, ReasonBreaker, "")
	p.clk.Advance(10 * time.Second)
	p.m.Tick()
	p.m.OnResult(w, true)
	p.clk.Advance(20 * time.Second)
	mustEvent(t, out(tickOne(t, p.m)), EventRestored, w, ReasonExpired)

	steps := []struct {
		advance       time.Duration
		wantEjections int
	}{
		{advance: time.Hour - time.Nanosecond, wantEjections: 2},
		{advance: time.Nanosecond, wantEjections: 1},
		{advance: time.Hour - time.Nanosecond, wantEjections: 1},
		{advance: time.Nanosecond, wantEjections: 0},
		{advance: 10 * time.Hour, wantEjections: 0},
	}
	for i, st := range steps {
		p.clk.Advance(st.advance)
		p.m.Tick()
		if got := w.Snapshot(p.clk.Now()).Ejections; got != st.wantEjections {
			t.Fatalf("step %d: ejections = %d, want %d", i, got, st.wantEjections)
		}
	}
	ev, ok := p.m.Isolate(w, ReasonBreaker, "")
	if !ok || !ev.Until.Equal(p.clk.Now().Add(10*time.Second)) {
		t.Errorf("after full decay, ejection lasts %v, want the base time 10s", ev.Until.Sub(p.clk.Now()))
	}

	t.Run("isolated workers do not decay", func(t *testing.T) {
		p := newPool(3, IsolationSettings{DecayAfter: time.Second})
		w := p.ws[0]
		p.m.IsolateFor(w, 0, "")
		w.mu.Lock()
		w.iso.ejections = 2
		w.mu.Unlock()
		p.clk.Advance(time.Hour)
		p.m.Tick()
		if got := w.Snapshot(p.clk.Now()).Ejections; got != 2 {
			t.Errorf("ejections = %d, want 2", got)
		}
	})
}

func TestMonitorOutliers(t *testing.T) {
	// feed records requests successes out of requests for each worker.
	feed := func(p *pool, results [][2]int) {
		now := p.clk.Now()
		for i, r := range results {
			for j := range r[0] {
				if j < r[1] {
					p.ws[i].RecordSuccess(now)
				} else {
					p.ws[i].RecordFailure(now)
				}
			}
		}
	}
	good := [2]int{100, 100}
	tests := []struct {
		name     string
		s        IsolationSettings
		results  [][2]int // requests, successes per worker
		want     []int    // indexes of isolated workers, in event order
		wantText string
	}{
		{
			name:    "flags 70% among peers at 100%",
			s:       IsolationSettings{SuccessRateMinRequests: 50},
			results: [][2]int{good, good, {100, 70}, good, good},
			want:    []int{2},
			wantText: "success_rate_outlier: success rate 70.0% over 100 requests, " +
				"below the pool threshold 71.2% (mean 94.0%)",
		},
		{
			name:    "below min requests",
			s:       IsolationSettings{SuccessRateMinRequests: 200},
			results: [][2]int{good, good, {100, 70}, good, good},
		},
		{
			name:    "below min hosts",
			s:       IsolationSettings{SuccessRateMinRequests: 50, SuccessRateMinHosts: 6},
			results: [][2]int{good, good, {100, 70}, good, good},
		},
		{
			name:    "off by default",
			results: [][2]int{good, good, {100, 70}, good, good},
		},
		{
			// Both are outliers, but 5% of 20 allows only one.
			name: "worst first within MaxPercent",
			s:    IsolationSettings{SuccessRateMinRequests: 50, MaxPercent: 5},
			results: [][2]int{good, good, good, {100, 50}, good, good, good, good, good, good,
				good, good, good, good, good, {100, 40}, good, good, good, good},
			want: []int{15},
		},
		{
			name: "several outliers",
			s:    IsolationSettings{SuccessRateMinRequests: 50, MaxPercent: 50},
			results: [][2]int{good, good, good, {100, 50}, good, good, good, good, good, good,
				good, good, good, good, good, {100, 40}, good, good, good, good},
			want: []int{15, 3},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPool(len(tc.results), tc.s)
			feed(p, tc.results)
			p.clk.Advance(testDetectionInterval - time.Nanosecond)
			if evs := p.m.Tick(); len(evs) != 0 {
				t.Fatalf("detection ran before its interval: %+v", evs)
			}
			p.clk.Advance(time.Nanosecond)
			evs := p.m.Tick()
			if len(evs) != len(tc.want) {
				t.Fatalf("Tick() = %d events, want %d: %+v", len(evs), len(tc.want), evs)
			}
			for i, idx := range tc.want {
				mustEvent(t, out(evs[i], true), EventIsolated, p.ws[idx], ReasonOutlier)
			}
			if tc.wantText != "" && evs[0].Reason != tc.wantText {
				t.Errorf("reason = %q, want %q", evs[0].Reason, tc.wantText)
			}
			// The window was reset: with no new traffic nothing more.
			p.clk.Advance(testDetectionInterval)
			for _, ev := range p.m.Tick() {
				if ev.Type == EventIsolated {
					t.Errorf("old window counted again: %+v", ev)
				}
			}
		})
	}
}

func TestMonitorSlowStart(t *testing.T) {
	p := newPool(3, IsolationSettings{SlowStart: 10 * time.Second})
	w := p.ws[0]
	if got := p.m.Weight(w); got != 1 {
		t.Fatalf("weight before any isolation = %v, want 1", got)
	}
	p.m.Isolate(w, ReasonBreaker, "")
	p.clk.Advance(10 * time.Second)
	mustEvent(t, out(tickOne(t, p.m)), EventRestored, w, ReasonExpired)
	steps := []struct {
		advance time.Duration
		want    float64
	}{
		{0, 0.1},
		{5 * time.Second, 0.55},
		{5 * time.Second, 1},
		{time.Hour, 1},
	}
	for i, st := range steps {
		p.clk.Advance(st.advance)
		if got := p.m.Weight(w); math.Abs(got-st.want) > 1e-9 {
			t.Errorf("step %d: Weight() = %v, want %v", i, got, st.want)
		}
		if got := w.Snapshot(p.clk.Now()).SlowStartWeight; math.Abs(got-st.want) > 1e-9 {
			t.Errorf("step %d: SlowStartWeight = %v, want %v", i, got, st.want)
		}
	}

	t.Run("Update applies the new window", func(t *testing.T) {
		p := newPool(3, IsolationSettings{SlowStart: 10 * time.Second})
		w := p.ws[0]
		p.m.Restore(w) // not isolated: no ramp
		p.m.IsolateFor(w, 0, "")
		p.m.Restore(w)
		if got := p.m.Weight(w); got != 0.1 {
			t.Fatalf("Weight() after restore = %v, want 0.1", got)
		}
		if err := p.m.Update(isolation(IsolationSettings{})); err != nil {
			t.Fatal(err)
		}
		if got := p.m.Weight(w); got != 1 {
			t.Errorf("Weight() with slow start off = %v, want 1", got)
		}
	})
}

func TestMonitorSetWorkers(t *testing.T) {
	p := newPool(2, IsolationSettings{MaxPercent: 100})
	mustEvent(t, out(p.m.Isolate(p.ws[0], ReasonBreaker, "")), EventIsolated, p.ws[0], ReasonBreaker)
	mustNoEvent(t, out(p.m.Isolate(p.ws[1], ReasonBreaker, "")))

	// A reload adds two workers: now 3 of 4 may be out.
	more := append(slices.Clone(p.ws), NewWorkerHealth("p", "w2", "u"), NewWorkerHealth("p", "w3", "u"))
	p.m.SetWorkers(more)
	mustEvent(t, out(p.m.Isolate(more[1], ReasonBreaker, "")), EventIsolated, more[1], ReasonBreaker)
	if h, i, n := p.m.Counts(); h != 2 || i != 2 || n != 4 {
		t.Errorf("Counts() = %d, %d, %d; want 2, 2, 4", h, i, n)
	}

	// A new Monitor over the same records carries the state on.
	m2 := NewMonitor(isolation(IsolationSettings{}), p.clk.Now, half)
	m2.SetWorkers(more)
	p.clk.Advance(10 * time.Second)
	if evs := m2.Tick(); len(evs) != 2 {
		t.Errorf("new Monitor Tick() = %d events, want 2 restores", len(evs))
	}

	// A removed worker is no longer the Monitor's.
	p.m.SetWorkers(more[:1])
	mustNoEvent(t, out(p.m.Isolate(more[3], ReasonBreaker, "")))
}
