package health

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// waitLimit bounds every wait for a probe loop to make progress. It is a
// failure deadline, not timing logic: the loops run at millisecond
// intervals.
const waitLimit = 10 * time.Second

// probes returns s with each zero field set to a value for tests (the
// values the handler documents), as a caller of this package must.
func probes(s ProbeSettings) ProbeSettings {
	if s.Interval == 0 {
		s.Interval = 5 * time.Second
	}
	if s.Timeout == 0 {
		s.Timeout = min(2*time.Second, s.Interval)
	}
	if s.Passes == 0 {
		s.Passes = 2
	}
	if s.Fails == 0 {
		s.Fails = 3
	}
	if s.Jitter == 0 {
		s.Jitter = 0.2
	}
	if s.FastInterval == 0 {
		s.FastInterval = min(max(s.Interval/4, 100*time.Millisecond), s.Interval)
	}
	return s
}

// mustChecker is NewChecker over probes(s), failing the test on an error.
func mustChecker(t testing.TB, s ProbeSettings, targets []Target, onResult func(Target, ProbeResult), logger *zap.Logger) *Checker {
	t.Helper()
	c, err := NewChecker(probes(s), targets, onResult, logger)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestProbeSettingsValidate(t *testing.T) {
	full := ProbeSettings{Interval: time.Second, Timeout: time.Second, Passes: 1, Fails: 1, Jitter: 1, FastInterval: time.Second}
	with := func(f func(*ProbeSettings)) ProbeSettings {
		s := full
		f(&s)
		return s
	}
	tests := []struct {
		name    string
		in      ProbeSettings
		wantErr string // substring; empty: valid
	}{
		{name: "complete", in: full},
		{name: "no jitter", in: with(func(s *ProbeSettings) { s.Jitter = 0 })},
		{name: "zero is incomplete", wantErr: "interval must be above 0"},
		{name: "missing timeout", in: with(func(s *ProbeSettings) { s.Timeout = 0 }), wantErr: "timeout"},
		{name: "missing passes", in: with(func(s *ProbeSettings) { s.Passes = 0 }), wantErr: "passes"},
		{name: "missing fails", in: with(func(s *ProbeSettings) { s.Fails = 0 }), wantErr: "fails"},
		{name: "missing fast interval", in: with(func(s *ProbeSettings) { s.FastInterval = 0 }), wantErr: "fast_interval"},
		{name: "negative interval", in: with(func(s *ProbeSettings) { s.Interval = -1 }), wantErr: "interval"},
		{name: "negative fails", in: with(func(s *ProbeSettings) { s.Fails = -2 }), wantErr: "fails"},
		{name: "jitter above one", in: with(func(s *ProbeSettings) { s.Jitter = 1.5 }), wantErr: "jitter"},
		{name: "negative jitter", in: with(func(s *ProbeSettings) { s.Jitter = -0.1 }), wantErr: "jitter"},
		{name: "timeout above interval, as reverse_proxy allows", in: with(func(s *ProbeSettings) { s.Timeout = 2 * time.Second })},
		{name: "fast interval above interval", in: with(func(s *ProbeSettings) { s.FastInterval = 2 * time.Second }), wantErr: "fast_interval"},
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

// A Checker cannot be built from incomplete settings: the package has no
// defaults to fill them with.
func TestNewCheckerRefusesIncompleteSettings(t *testing.T) {
	if c, err := NewChecker(ProbeSettings{Interval: time.Second}, nil, nil, nil); err == nil || c != nil {
		t.Errorf("NewChecker with only an interval = %v, %v; want an error", c, err)
	}
	if _, err := NewChecker(probes(ProbeSettings{}), nil, nil, nil); err != nil {
		t.Errorf("NewChecker with complete settings: %v", err)
	}
}

func TestProbeDelays(t *testing.T) {
	tests := []struct {
		name   string
		fn     func(time.Duration, float64, float64) time.Duration
		base   time.Duration
		jitter float64
		rnd    float64
		want   time.Duration
	}{
		{name: "no jitter", fn: jittered, base: time.Second, jitter: 0, rnd: 0.9, want: time.Second},
		{name: "middle rnd is the interval", fn: jittered, base: time.Second, jitter: 0.2, rnd: 0.5, want: time.Second},
		{name: "lowest rnd removes the jitter share", fn: jittered, base: time.Second, jitter: 0.2, rnd: 0, want: 800 * time.Millisecond},
		{name: "highest rnd adds the jitter share", fn: jittered, base: time.Second, jitter: 0.2, rnd: 1, want: 1200 * time.Millisecond},
		{name: "full jitter never goes below the floor", fn: jittered, base: time.Second, jitter: 1, rnd: 0, want: minProbeDelay},
		{name: "out of range rnd is clamped", fn: jittered, base: time.Second, jitter: 0.2, rnd: 7, want: 1200 * time.Millisecond},
		{name: "huge interval saturates", fn: jittered, base: time.Duration(1<<63 - 1), jitter: 0.2, rnd: 1, want: time.Duration(1<<63 - 1)},
		{name: "first probe within the jitter window", fn: firstDelay, base: 5 * time.Second, jitter: 0.2, rnd: 0.5, want: 500 * time.Millisecond},
		{name: "first probe at once with rnd 0", fn: firstDelay, base: 5 * time.Second, jitter: 0.2, rnd: 0, want: minProbeDelay},
		{name: "first probe at most jitter share", fn: firstDelay, base: 5 * time.Second, jitter: 0.2, rnd: 1, want: time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.fn(tc.base, tc.jitter, tc.rnd); got != tc.want {
				t.Errorf("delay = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestCheckerNextDelay(t *testing.T) {
	t0 := newFakeClock().Now()
	down := errors.New("down")
	tests := []struct {
		name  string
		setup func(w *WorkerHealth)
		want  time.Duration
	}{
		{name: "steady healthy worker uses the interval", setup: func(*WorkerHealth) {}, want: time.Second},
		{name: "failure streak in progress uses the fast interval", setup: func(w *WorkerHealth) { w.RecordProbe(down, t0, 2, 3) }, want: 100 * time.Millisecond},
		{name: "probe-unhealthy uses the fast interval", setup: func(w *WorkerHealth) { w.RecordProbe(down, t0, 2, 1) }, want: 100 * time.Millisecond},
		{name: "isolated uses the fast interval", setup: func(w *WorkerHealth) {
			w.mu.Lock()
			w.setIsolatedLocked(time.Time{}, "test")
			w.mu.Unlock()
		}, want: 100 * time.Millisecond},
		{name: "streak broken returns to the interval", setup: func(w *WorkerHealth) {
			w.RecordProbe(down, t0, 2, 3)
			w.RecordProbe(nil, t0, 2, 3)
		}, want: time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := NewWorkerHealth("p", "w", "u")
			tc.setup(w)
			c := mustChecker(t, ProbeSettings{Interval: time.Second, FastInterval: 100 * time.Millisecond}, nil, nil, nil)
			c.rnd = half
			if got := c.nextDelay(w); got != tc.want {
				t.Errorf("nextDelay() = %v, want %v", got, tc.want)
			}
		})
	}
}

// probeRun is a Checker over one worker whose results are collected.
type probeRun struct {
	w       *WorkerHealth
	results chan ProbeResult
	cancel  context.CancelFunc
	done    chan struct{}
	logs    *observer.ObservedLogs
}

// startChecker runs a Checker with fast intervals over one worker probed by
// probe, and stops it when the test ends.
func startChecker(t *testing.T, s ProbeSettings, probe Probe, onResult func(ProbeResult)) *probeRun {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	r := &probeRun{
		w:       NewWorkerHealth("p", "w", "u"),
		results: make(chan ProbeResult, 100),
		done:    make(chan struct{}),
		logs:    logs,
	}
	report := func(_ Target, res ProbeResult) {
		if onResult != nil {
			onResult(res)
		}
		select {
		case r.results <- res:
		default:
		}
	}
	c := mustChecker(t, s, []Target{{Worker: r.w, Probe: probe}}, report, zap.New(core))
	c.rnd = func() float64 { return 0 }
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		defer close(r.done)
		c.Run(ctx)
	}()
	t.Cleanup(r.stop)
	return r
}

// stop cancels the Checker and waits for Run to return.
func (r *probeRun) stop() {
	r.cancel()
	<-r.done
}

// next returns the next probe result.
func (r *probeRun) next(t *testing.T) ProbeResult {
	t.Helper()
	select {
	case res := <-r.results:
		return res
	case <-time.After(waitLimit):
		t.Fatal("no probe result")
		return ProbeResult{}
	}
}

func TestCheckerHysteresis(t *testing.T) {
	down := errors.New("down")
	script := []error{down, down, down, nil, nil}
	var calls atomic.Int64
	probe := func(context.Context) error {
		if i := calls.Add(1) - 1; i < int64(len(script)) {
			return script[i]
		}
		return nil
	}
	s := ProbeSettings{Interval: 2 * time.Millisecond, FastInterval: time.Millisecond, Passes: 2, Fails: 3}
	r := startChecker(t, s, probe, nil)

	want := []ProbeResult{
		{Err: down, Healthy: true},
		{Err: down, Healthy: true},
		{Err: down, Changed: true, Healthy: false},
		{Healthy: false},
		{Changed: true, Healthy: true},
	}
	for i, w := range want {
		if got := r.next(t); got != w {
			t.Fatalf("result %d = %+v, want %+v", i, got, w)
		}
	}
	if !r.w.probeHealthy.Load() {
		t.Error("worker not probe-healthy after the passes")
	}
	if r.w.Snapshot(time.Now()).LastCheck.IsZero() {
		t.Error("LastCheck not set")
	}
}

func TestCheckerTimeout(t *testing.T) {
	tests := []struct {
		name  string
		probe Probe
	}{
		{name: "probe blocking on its context returns", probe: func(ctx context.Context) error {
			<-ctx.Done()
			return ctx.Err()
		}},
		{name: "pass after the timeout counts as failed", probe: func(ctx context.Context) error {
			<-ctx.Done()
			return nil
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// A one-hour interval: only the first probe runs, and it
			// can end only through its 5ms timeout.
			r := startChecker(t, ProbeSettings{Interval: time.Hour, Timeout: 5 * time.Millisecond}, tc.probe, nil)
			if got := r.next(t); !errors.Is(got.Err, context.DeadlineExceeded) {
				t.Errorf("result error = %v, want %v", got.Err, context.DeadlineExceeded)
			}
		})
	}
}

func TestCheckerRecoversPanics(t *testing.T) {
	t.Run("panicking probe counts as failed and the loop goes on", func(t *testing.T) {
		var calls atomic.Int64
		probe := func(context.Context) error {
			if calls.Add(1) == 1 {
				panic("boom")
			}
			return nil
		}
		r := startChecker(t, ProbeSettings{Interval: time.Millisecond}, probe, nil)
		if got := r.next(t); !errors.Is(got.Err, ErrProbePanic) || !strings.Contains(got.Err.Error(), "boom") {
			t.Errorf("first result error = %v, want ErrProbePanic with the panic value", got.Err)
		}
		if got := r.next(t); got.Err != nil {
			t.Errorf("second result error = %v, want nil", got.Err)
		}
		assertPanicLogged(t, r.logs, "panic in probe")
	})

	t.Run("panicking result handler is logged and the loop goes on", func(t *testing.T) {
		var calls atomic.Int64
		onResult := func(ProbeResult) {
			if calls.Add(1) == 1 {
				panic("handler boom")
			}
		}
		r := startChecker(t, ProbeSettings{Interval: time.Millisecond}, func(context.Context) error { return nil }, onResult)
		r.next(t) // the second call: the first one panicked before sending
		if calls.Load() < 2 {
			t.Errorf("result handler called %d times, want at least 2", calls.Load())
		}
		assertPanicLogged(t, r.logs, "panic in probe result handler")
	})
}

// assertPanicLogged checks that a panic was logged at error level with its
// stack.
func assertPanicLogged(t *testing.T, logs *observer.ObservedLogs, msg string) {
	t.Helper()
	entries := logs.FilterMessage(msg).All()
	if len(entries) == 0 {
		t.Fatalf("no %q log entry; got %v", msg, logs.All())
	}
	e := entries[0]
	if e.Level != zapcore.ErrorLevel {
		t.Errorf("logged at %v, want error", e.Level)
	}
	stack, _ := e.ContextMap()["stack"].(string)
	if !strings.Contains(stack, "goroutine") {
		t.Errorf("stack field = %q, want a stack trace", stack)
	}
	if e.ContextMap()["worker"] != "w" {
		t.Errorf("worker field = %v, want w", e.ContextMap()["worker"])
	}
}

func TestCheckerRunStops(t *testing.T) {
	t.Run("cancel during a probe ends Run and records nothing", func(t *testing.T) {
		started := make(chan struct{})
		probe := func(ctx context.Context) error {
			close(started)
			<-ctx.Done()
			return ctx.Err()
		}
		r := startChecker(t, ProbeSettings{Interval: time.Hour, Timeout: time.Hour}, probe, nil)
		select {
		case <-started:
		case <-time.After(waitLimit):
			t.Fatal("probe never started")
		}
		r.cancel()
		select {
		case <-r.done:
		case <-time.After(waitLimit):
			t.Fatal("Run did not return after cancel")
		}
		select {
		case res := <-r.results:
			t.Errorf("a probe cut short by shutdown was recorded: %+v", res)
		default:
		}
		if !r.w.Snapshot(time.Now()).LastCheck.IsZero() {
			t.Error("a probe cut short by shutdown set LastCheck")
		}
	})

	t.Run("many targets all stop", func(t *testing.T) {
		var targets []Target
		for range 20 {
			targets = append(targets, Target{Worker: NewWorkerHealth("p", "w", "u"), Probe: func(context.Context) error { return nil }})
		}
		targets = append(targets, Target{}) // skipped, not a crash
		c := mustChecker(t, ProbeSettings{Interval: time.Millisecond}, targets, nil, nil)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			c.Run(ctx)
		}()
		cancel()
		select {
		case <-done:
		case <-time.After(waitLimit):
			t.Fatal("Run did not return after cancel")
		}
	})
}
