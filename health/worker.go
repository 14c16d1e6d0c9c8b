package health

import (
	"sync"
	"sync/atomic"
	"time"
)

// WorkerHealth is the health record of one worker (one upstream of a pool).
//
// The request path updates it with atomics only: [WorkerHealth.BeginRequest],
// [WorkerHealth.EndRequest], [WorkerHealth.RecordSuccess] and
// [WorkerHealth.RecordFailure] neither lock nor allocate. Probe streaks and
// the isolation record are guarded by small mutexes; the isolation record is
// written only by a [Monitor].
//
// A WorkerHealth is safe for concurrent use. It must not be copied after
// first use; share it by pointer.
type WorkerHealth struct {
	id, pool, upstream string

	// Read on every selection; written by a Monitor while holding mu (the
	// throttle by Throttle), so they always agree with iso.
	isolated       atomic.Bool
	onProbation    atomic.Bool
	restoredAt     atomic.Int64 // unix nanoseconds of the last reinstatement; 0 when not ramping
	slowStart      atomic.Int64 // ramp window in nanoseconds; set by the Monitor
	throttledUntil atomic.Int64 // unix nanoseconds; 0 means never

	// The request path's counters, which every try writes, have cache
	// lines of their own: sharing one with the fields above would make
	// every selection on another CPU miss its cache.
	_               cacheLinePad
	inFlight        atomic.Int64
	requests        atomic.Uint64
	failures        atomic.Uint64
	consecFailures  atomic.Int64
	lastSuccess     atomic.Int64 // unix nanoseconds; 0 means never
	lastFailure     atomic.Int64 // unix nanoseconds; 0 means never
	windowSuccesses atomic.Uint64
	windowFailures  atomic.Uint64
	_               cacheLinePad

	// Active probes.
	probeHealthy atomic.Bool
	lastCheck    atomic.Int64 // unix nanoseconds; 0 means never
	pmu          sync.Mutex   // guards probePasses and probeFails
	probePasses  int
	probeFails   int
	// probers counts the checkers that probe the worker (see AddProber).
	probers atomic.Int32

	// Suspicion probes (see BeginSuspicion).
	suspecting    atomic.Bool  // a suspicion probe is in flight
	lastSuspicion atomic.Int64 // unix nanoseconds of the last one's start
	lastCleared   atomic.Int64 // unix nanoseconds of the last answer to one

	mu  sync.Mutex // guards iso
	iso isolationRecord

	// shutdown is set while the worker is isolated by Monitor.Shutdown
	// (force_shutdown): panic mode must not pick it either.
	shutdown atomic.Bool
}

// ShutDown reports whether the worker was stopped by the force_shutdown
// action and not restored since.
func (w *WorkerHealth) ShutDown() bool { return w.shutdown.Load() }

// isolationRecord is the part of a worker's health that the Monitor owns.
// It is guarded by WorkerHealth.mu.
type isolationRecord struct {
	until              time.Time // zero while isolated means: until an operator or a probe brings it back
	reason             string
	endsOnProbe        bool // an automatic isolation that probe recovery ends (see Monitor.ProbeRecovered)
	ejections          int
	recoveryAttempts   int
	recoveryFailed     bool
	probationSuccesses int
	healthySince       time.Time // last reinstatement or last decay step
}

// cacheLinePad keeps the fields on either side of it off each other's cache
// lines. It is two lines long, since CPUs fetch lines in adjacent pairs.
type cacheLinePad [128]byte

// NewWorkerHealth returns the health record of the worker id, which proxies
// to upstream in the pool named pool. It starts healthy and probe-healthy.
func NewWorkerHealth(pool, id, upstream string) *WorkerHealth {
	w := &WorkerHealth{id: id, pool: pool, upstream: upstream}
	w.probeHealthy.Store(true)
	return w
}

// ID returns the worker's id.
func (w *WorkerHealth) ID() string { return w.id }

// Pool returns the name of the worker's pool.
func (w *WorkerHealth) Pool() string { return w.pool }

// Upstream returns the address of the worker's upstream.
func (w *WorkerHealth) Upstream() string { return w.upstream }

// BeginRequest records that a request to the worker started: it adds one to
// the in-flight count and one to the request count.
func (w *WorkerHealth) BeginRequest() {
	w.inFlight.Add(1)
	w.requests.Add(1)
}

// EndRequest records that a request started with BeginRequest ended.
func (w *WorkerHealth) EndRequest() {
	w.inFlight.Add(-1)
}

// InFlight returns the number of requests to the worker in progress.
func (w *WorkerHealth) InFlight() int64 { return w.inFlight.Load() }

// RecordSuccess records a successful try at time now: it resets the
// consecutive failures, sets the last success and counts the success for
// outlier detection.
func (w *WorkerHealth) RecordSuccess(now time.Time) {
	// Skip the store in the common case so that concurrent successes do
	// not keep invalidating each other's cache line.
	if w.consecFailures.Load() != 0 {
		w.consecFailures.Store(0)
	}
	w.lastSuccess.Store(now.UnixNano())
	w.windowSuccesses.Add(1)
}

// RecordFailure records a failed try at time now: it adds one to the
// consecutive failures and to the failure count, sets the last failure and
// counts the failure for outlier detection.
func (w *WorkerHealth) RecordFailure(now time.Time) {
	w.consecFailures.Add(1)
	w.failures.Add(1)
	w.lastFailure.Store(now.UnixNano())
	w.windowFailures.Add(1)
}

// ConsecutiveFailures returns the number of failures since the last success.
func (w *WorkerHealth) ConsecutiveFailures() int64 { return w.consecFailures.Load() }

// Throttle keeps the worker out of rotation until the given time, typically
// from a 429 or 503 response's Retry-After. It only ever extends the current
// throttle; an earlier time is ignored.
func (w *WorkerHealth) Throttle(until time.Time) {
	n := until.UnixNano()
	for {
		cur := w.throttledUntil.Load()
		if n <= cur || w.throttledUntil.CompareAndSwap(cur, n) {
			return
		}
	}
}

// ThrottledUntil returns the end of the latest throttle, or the zero time if
// the worker was never throttled. The time may be in the past.
func (w *WorkerHealth) ThrottledUntil() time.Time { return fromNanos(w.throttledUntil.Load()) }

// Available reports whether the worker may be given requests at time now:
// it is not isolated and not throttled. An isolation whose ejection time has
// passed still counts until a Monitor reinstates the worker, so that
// reinstatement (probation, slow start, its event) happens in one place.
func (w *WorkerHealth) Available(now time.Time) bool {
	return !w.isolated.Load() && now.UnixNano() >= w.throttledUntil.Load()
}

// AvailableNow is Available at the current time. It reads the clock only
// for a worker that has been throttled, so that the request path's
// availability checks cost no clock read in the common case.
func (w *WorkerHealth) AvailableNow() bool {
	if w.throttledUntil.Load() == 0 {
		return !w.isolated.Load()
	}
	return w.Available(time.Now())
}

// LastSuccess returns the time of the worker's last successful request,
// or the zero time if it never had one.
func (w *WorkerHealth) LastSuccess() time.Time { return fromNanos(w.lastSuccess.Load()) }

// Isolated reports whether the worker is isolated.
func (w *WorkerHealth) Isolated() bool { return w.isolated.Load() }

// Healthy reports whether the worker is healthy at time now: available,
// probe-healthy and not recovery-failed. It is [Snapshot.Healthy] without
// building a snapshot.
func (w *WorkerHealth) Healthy(now time.Time) bool {
	// A recovery-failed worker is always isolated, so Available covers it.
	return w.Available(now) && w.probeHealthy.Load()
}

// ResetProbe forgets the probe streaks and makes the worker probe-healthy
// again, for a config that probes it no more.
func (w *WorkerHealth) ResetProbe() {
	w.pmu.Lock()
	w.probePasses, w.probeFails = 0, 0
	w.probeHealthy.Store(true)
	w.pmu.Unlock()
}

// Snapshot is a point-in-time copy of a worker's health, shaped for the
// admin API. Times that never happened, and the isolation and throttle
// details while they do not apply, are left zero and omitted from JSON. It
// is a plain value, safe to copy and to share read-only.
type Snapshot struct {
	ID       string `json:"id"`
	Pool     string `json:"pool"`
	Upstream string `json:"upstream"`

	// Healthy is true when the worker is available now (not isolated,
	// not throttled), probe-healthy and not recovery-failed.
	Healthy bool `json:"healthy"`

	Isolated         bool      `json:"isolated"`
	IsolatedUntil    time.Time `json:"isolated_until,omitzero"`
	IsolationReason  string    `json:"isolation_reason,omitempty"`
	Ejections        int       `json:"ejections"`
	RecoveryAttempts int       `json:"recovery_attempts"`
	RecoveryFailed   bool      `json:"recovery_failed"`

	Throttled      bool      `json:"throttled"`
	ThrottledUntil time.Time `json:"throttled_until,omitzero"`

	// ProbeHealthy is the active probes' verdict; ProbePasses and
	// ProbeFails are the current streaks.
	ProbeHealthy bool `json:"probe_healthy"`
	ProbePasses  int  `json:"probe_passes"`
	ProbeFails   int  `json:"probe_fails"`

	ConsecutiveFailures int64     `json:"consecutive_failures"`
	LastCheck           time.Time `json:"last_check,omitzero"`
	LastSuccess         time.Time `json:"last_success,omitzero"`
	LastFailure         time.Time `json:"last_failure,omitzero"`

	InFlight int64  `json:"in_flight"`
	Requests uint64 `json:"requests"`
	Failures uint64 `json:"failures"`

	// SlowStartWeight is the share of its normal traffic the worker gets
	// while ramping up after a reinstatement, from 0.1 to 1; 1 when not
	// ramping.
	SlowStartWeight float64 `json:"slow_start_weight"`
}

// Snapshot returns a copy of the worker's health at time now.
func (w *WorkerHealth) Snapshot(now time.Time) Snapshot {
	s := Snapshot{
		ID:                  w.id,
		Pool:                w.pool,
		Upstream:            w.upstream,
		ConsecutiveFailures: w.consecFailures.Load(),
		LastCheck:           fromNanos(w.lastCheck.Load()),
		LastSuccess:         fromNanos(w.lastSuccess.Load()),
		LastFailure:         fromNanos(w.lastFailure.Load()),
		InFlight:            w.inFlight.Load(),
		Requests:            w.requests.Load(),
		Failures:            w.failures.Load(),
		SlowStartWeight:     w.slowStartWeight(now),
	}

	w.pmu.Lock()
	s.ProbeHealthy = w.probeHealthy.Load()
	s.ProbePasses, s.ProbeFails = w.probePasses, w.probeFails
	w.pmu.Unlock()

	w.mu.Lock()
	s.Isolated = w.isolated.Load()
	if s.Isolated {
		s.IsolatedUntil = w.iso.until
		s.IsolationReason = w.iso.reason
	}
	s.Ejections = w.iso.ejections
	s.RecoveryAttempts = w.iso.recoveryAttempts
	s.RecoveryFailed = w.iso.recoveryFailed
	w.mu.Unlock()

	if tu := w.ThrottledUntil(); now.Before(tu) {
		s.Throttled, s.ThrottledUntil = true, tu
	}
	s.Healthy = !s.Isolated && !s.Throttled && s.ProbeHealthy && !s.RecoveryFailed
	return s
}

// slowStartWeight returns the worker's slow-start weight at time now.
func (w *WorkerHealth) slowStartWeight(now time.Time) float64 {
	window := w.slowStart.Load()
	restored := w.restoredAt.Load()
	if window <= 0 || restored == 0 {
		return 1
	}
	return SlowStartWeight(time.Duration(now.UnixNano()-restored), time.Duration(window))
}

// takeWindow returns the results counted since the last call and starts a
// new window.
func (w *WorkerHealth) takeWindow() WindowStats {
	s := w.windowSuccesses.Swap(0)
	f := w.windowFailures.Swap(0)
	return WindowStats{Requests: s + f, Successes: s}
}

// probeChanging reports whether the worker's state is in flux, so that it
// should be probed at the fast interval: it is isolated or probe-unhealthy
// (waiting to come back), or a failure streak is in progress.
func (w *WorkerHealth) probeChanging() bool {
	if w.isolated.Load() || !w.probeHealthy.Load() {
		return true
	}
	w.pmu.Lock()
	defer w.pmu.Unlock()
	return w.probeFails > 0
}

// setIsolatedLocked takes the worker out of rotation until the given time
// (zero: until brought back) for the given reason. Requires w.mu.
func (w *WorkerHealth) setIsolatedLocked(until time.Time, reason string) {
	w.iso.until = until
	w.iso.reason = reason
	w.iso.endsOnProbe = false
	w.iso.probationSuccesses = 0
	w.onProbation.Store(false)
	w.restoredAt.Store(0)
	w.isolated.Store(true)
}

// reinstateLocked puts the worker back into rotation at time now, on
// probation and ramping up. Requires w.mu.
func (w *WorkerHealth) reinstateLocked(now time.Time) {
	w.iso.until = time.Time{}
	w.iso.reason = ""
	w.iso.recoveryFailed = false
	w.iso.probationSuccesses = 0
	w.iso.healthySince = now
	w.restoredAt.Store(now.UnixNano())
	w.onProbation.Store(true)
	w.shutdown.Store(false)
	w.isolated.Store(false)
}

// endProbationLocked ends the worker's probation. A probation that saw
// successes (and, since a failure ends it differently, no failure) proves
// the recovery, so the failed recovery attempts are forgotten. Requires w.mu.
func (w *WorkerHealth) endProbationLocked() {
	w.onProbation.Store(false)
	if w.iso.probationSuccesses > 0 {
		w.iso.recoveryAttempts = 0
	}
	w.iso.probationSuccesses = 0
}

// fromNanos converts unix nanoseconds to a time, with 0 meaning the zero
// time.
func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}
