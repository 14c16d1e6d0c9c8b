package pool

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/recovery"
	"github.com/bifrost-proxy/bifrost/selection"
)

// The registry is package-global: every test names its pools after itself
// and a counter, so no two tests (or two runs with -count) share one.
var poolSeq atomic.Int64

func uniqueName(t *testing.T) string {
	name := strings.NewReplacer("/", "-", " ", "-").Replace(t.Name())
	return fmt.Sprintf("%s-%d", name, poolSeq.Add(1))
}

// testIsolation are complete isolation settings with the product's
// defaults (the root's config.go), as a handler gives its pool.
var testIsolation = health.IsolationSettings{
	BaseTime:               10 * time.Second,
	MaxTime:                5 * time.Minute,
	Jitter:                 0.1,
	DecayAfter:             5 * time.Minute,
	MaxPercent:             50,
	SuccessRateMinRequests: 20,
	SuccessRateStdevFactor: 1,
	SuccessRateMinHosts:    3,
	DetectionInterval:      5 * time.Second,
	ProbationTime:          5 * time.Second,
	ProbationSuccesses:     5,
	MaxRecoveryAttempts:    3,
}

// testManager is a complete error history configuration.
var testManager = recovery.ManagerConfig{HistoryLimit: 1000, MaxConcurrentRecovery: 4, MessageLimit: 256}

// newPool acquires a pool with a unique name and the product's default
// settings, released when the test ends.
func newPool(t *testing.T) *Pool {
	t.Helper()
	p, err := Acquire(uniqueName(t))
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	setIsolation(t, p, testIsolation)
	if err := p.Manager.Reconfigure(testManager); err != nil {
		t.Fatalf("Reconfigure: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Release(); err != nil {
			t.Errorf("Release: %v", err)
		}
	})
	return p
}

// setIsolation gives p's monitor the settings s.
func setIsolation(t *testing.T, p *Pool, s health.IsolationSettings) {
	t.Helper()
	if err := p.Monitor.Update(s); err != nil {
		t.Fatalf("Monitor.Update: %v", err)
	}
}

// fastBreaker opens after one failure and turns half-open after a
// millisecond, so a test can walk it through its states quickly.
var fastBreaker = breaker.Settings{Failures: 1, Successes: 1, Timeout: time.Millisecond}

// slowBreaker stays open for the whole test once opened.
var slowBreaker = breaker.Settings{Failures: 1, Successes: 1, Timeout: time.Hour}

// newWorker acquires the worker for dial in p, released when the test
// ends.
func newWorker(t *testing.T, p *Pool, dial string, bs breaker.Settings) *Worker {
	t.Helper()
	w, err := p.AcquireWorker(dial, bs, selection.Settings{})
	if err != nil {
		t.Fatalf("AcquireWorker(%q): %v", dial, err)
	}
	t.Cleanup(func() {
		if _, err := p.ReleaseWorker(w); err != nil {
			t.Errorf("ReleaseWorker: %v", err)
		}
	})
	return w
}

// attach makes u a user of p, detached when the test ends (a second
// Detach is harmless).
func attach(t *testing.T, p *Pool, u *fakeUser, workers ...*Worker) {
	t.Helper()
	p.Attach(u, workers)
	t.Cleanup(func() { p.Detach(u) })
}

// stateChange is one call of the BreakerState hook.
type stateChange struct {
	pool, worker string
	state        breaker.State
}

// bookedError is one call of the Error hook.
type bookedError struct {
	pool, worker string
	kind         recovery.Kind
	severity     recovery.Severity
}

// fakeUser is a User that records what the pool hands it, and reports
// through an observed logger and counting hooks.
type fakeUser struct {
	name   string
	logger *zap.Logger
	logs   *observer.ObservedLogs

	ticks atomic.Int64

	// onTick and onRestored, when set, run inside Tick and Restored.
	onTick     func()
	onRestored func(*Worker)

	mu          sync.Mutex
	restored    []*Worker
	transitions []string // "<worker> <event>"
	states      []stateChange
	errors      []bookedError
}

func newUser(name string) *fakeUser {
	core, logs := observer.New(zapcore.DebugLevel)
	return &fakeUser{name: name, logger: zap.New(core), logs: logs}
}

func (u *fakeUser) Reporter() Reporter {
	return Reporter{
		Logger: u.logger,
		Transition: func(pool, worker, event string) {
			u.mu.Lock()
			u.transitions = append(u.transitions, worker+" "+event)
			u.mu.Unlock()
		},
		BreakerState: func(pool, worker string, s breaker.State) {
			u.mu.Lock()
			u.states = append(u.states, stateChange{pool, worker, s})
			u.mu.Unlock()
		},
		Error: func(pool, worker string, k recovery.Kind, s recovery.Severity) {
			u.mu.Lock()
			u.errors = append(u.errors, bookedError{pool, worker, k, s})
			u.mu.Unlock()
		},
	}
}

func (u *fakeUser) Restored(w *Worker) {
	if u.onRestored != nil {
		u.onRestored(w)
	}
	u.mu.Lock()
	u.restored = append(u.restored, w)
	u.mu.Unlock()
}

func (u *fakeUser) Tick(time.Time) {
	if u.onTick != nil {
		u.onTick()
	}
	u.ticks.Add(1)
}

func (u *fakeUser) restoredList() []*Worker {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]*Worker(nil), u.restored...)
}

func (u *fakeUser) transitionList() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.transitions...)
}

func (u *fakeUser) stateList() []stateChange {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]stateChange(nil), u.states...)
}

func (u *fakeUser) errorList() []bookedError {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]bookedError(nil), u.errors...)
}

// countTransitions counts the Transition calls for worker and event.
func (u *fakeUser) countTransitions(worker, event string) int {
	n := 0
	for _, s := range u.transitionList() {
		if s == worker+" "+event {
			n++
		}
	}
	return n
}

// statesOf returns the breaker states the hook was given for worker, in
// order.
func (u *fakeUser) statesOf(worker string) []breaker.State {
	var out []breaker.State
	for _, c := range u.stateList() {
		if c.worker == worker {
			out = append(out, c.state)
		}
	}
	return out
}

// logCount counts the log entries with message msg about worker.
func (u *fakeUser) logCount(msg, worker string) int {
	n := 0
	for _, e := range u.logs.FilterMessage(msg).All() {
		if e.ContextMap()["worker"] == worker {
			n++
		}
	}
	return n
}

// eventually polls cond every few milliseconds until it holds, failing the
// test after d (bounds are generous: the machine is busy).
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// settleGoroutines waits until the number of goroutines is want.
func settleGoroutines(t *testing.T, want int, what string) {
	t.Helper()
	eventually(t, 10*time.Second, fmt.Sprintf("%s (want %d goroutines)", what, want), func() bool {
		return runtime.NumGoroutine() == want
	})
}

// loops counts the goroutines that run a pool's loop, in any pool.
func loops() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "bifrost/pool.(*Pool).run(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// baseline waits until no pool loop runs (those of earlier tests may be
// on their way out) and returns the number of goroutines then: the least
// of a few samples, as the runtime counts its finalizer goroutine while it
// runs finalizers.
func baseline(t *testing.T) int {
	t.Helper()
	eventually(t, 10*time.Second, "loops of earlier tests to end", func() bool { return loops() == 0 })
	n := runtime.NumGoroutine()
	for range 10 {
		time.Sleep(time.Millisecond)
		n = min(n, runtime.NumGoroutine())
	}
	return n
}

// waitTicks waits until u has had n more ticks than it had when called.
func waitTicks(t *testing.T, u *fakeUser, n int64) {
	t.Helper()
	start := u.ticks.Load()
	eventually(t, 10*time.Second, fmt.Sprintf("%d ticks of user %s", n, u.name), func() bool {
		return u.ticks.Load() >= start+n
	})
}

// barrier waits until the pool's loop has handled every breaker change
// made before it: it opens and closes the breaker of sentinel (a worker of
// p kept for this) and waits until the newest user u saw it closed. The
// loop handles changes in order, one at a time.
func barrier(t *testing.T, u *fakeUser, sentinel *Worker) {
	t.Helper()
	closed := func() int {
		n := 0
		for _, s := range u.statesOf(sentinel.ID) {
			if s == breaker.StateClosed {
				n++
			}
		}
		return n
	}
	want := closed() + 1
	sentinel.Breaker.Trip()
	sentinel.Breaker.Reset()
	eventually(t, 10*time.Second, "the loop handled the sentinel's changes", func() bool { return closed() >= want })
}

// halfOpen waits until a fastBreaker that is open turns half-open (reading
// its state turns it once its timeout has passed).
func halfOpen(t *testing.T, w *Worker) {
	t.Helper()
	eventually(t, 10*time.Second, "breaker "+w.ID+" half-open", func() bool {
		return w.Breaker.State() == breaker.StateHalfOpen
	})
}
