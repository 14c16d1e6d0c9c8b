package health

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// MinOutlierGap is how far, at least, a worker's success rate must be
// below the pool's mean for outlier detection to flag it (0.1: ten
// percentage points).
const MinOutlierGap = 0.1

// minSlowStartWeight is the weight at the start of a slow-start ramp: never
// 0, so a reinstated worker always gets some traffic to prove itself.
const minSlowStartWeight = 0.1

// IsolationSettings configures a pool's Monitor. It has no defaults: the
// caller sets every field (see Validate), and 0 turns off the features
// that say so. It is a plain value: copies are independent and safe to
// share read-only.
type IsolationSettings struct {
	// BaseTime is the length of a worker's first ejection, above 0;
	// ejection n lasts BaseTime * 2^(n-1).
	BaseTime time.Duration
	// MaxTime caps the length of an ejection, jitter included; at least
	// BaseTime.
	MaxTime time.Duration
	// Jitter is the share, from 0 to below 1, randomly added to or removed
	// from each ejection time, so that workers ejected together do not
	// come back together.
	Jitter float64
	// DecayAfter is how long a worker must stay in rotation for its
	// ejection count to drop by one, above 0; each further DecayAfter
	// drops it by one more.
	DecayAfter time.Duration
	// MaxPercent is the largest share of the pool's workers, in percent
	// (0-100), that automatic isolation may take out of rotation; see
	// MaxIsolated. 0 turns automatic isolation off.
	MaxPercent int
	// SuccessRateMinRequests turns success-rate outlier detection on: a
	// worker takes part when it served at least this many requests in the
	// window. 0 turns detection off.
	SuccessRateMinRequests int
	// SuccessRateStdevFactor makes a worker an outlier when its success
	// rate is below mean - factor*stdev of the participating workers.
	// With one bad worker among n equally good peers, the bad one sits
	// sqrt(n-1) standard deviations below the mean.
	SuccessRateStdevFactor float64
	// SuccessRateMinHosts is how many workers must take part for detection
	// to run, at least 1.
	SuccessRateMinHosts int
	// DetectionInterval is the length of the outlier detection window,
	// above 0: detection runs at most this often.
	DetectionInterval time.Duration
	// SlowStart is how long a reinstated worker takes to ramp up to its
	// full share of traffic; 0 turns slow start off.
	SlowStart time.Duration
	// ProbationTime is the shortest probation after a reinstatement; the
	// probation lasts max(ProbationTime, SlowStart) or until
	// ProbationSuccesses successes.
	ProbationTime time.Duration
	// ProbationSuccesses is how many successes end a probation early, at
	// least 1.
	ProbationSuccesses int
	// MaxRecoveryAttempts is how many failed reinstatements in a row make
	// a worker recovery-failed, at least 1.
	MaxRecoveryAttempts int
	// ProbesConfigured makes reinstatement after the ejection time also
	// wait until the worker's active probes pass.
	ProbesConfigured bool
}

// Validate reports the first setting that is missing or out of range,
// naming it.
func (s IsolationSettings) Validate() error {
	switch {
	case s.BaseTime <= 0:
		return fmt.Errorf("base_time must be above 0, got %v", s.BaseTime)
	case s.MaxTime < s.BaseTime:
		return fmt.Errorf("max_time (%v) must not be below base_time (%v)", s.MaxTime, s.BaseTime)
	case !(s.Jitter >= 0 && s.Jitter < 1):
		return fmt.Errorf("jitter must be at least 0 and below 1, got %v", s.Jitter)
	case s.DecayAfter <= 0:
		return fmt.Errorf("decay_after must be above 0, got %v", s.DecayAfter)
	case s.MaxPercent < 0 || s.MaxPercent > 100:
		return fmt.Errorf("max_percent must be between 0 and 100, got %d", s.MaxPercent)
	case s.SuccessRateMinRequests < 0:
		return fmt.Errorf("success_rate_min_requests must not be negative, got %d", s.SuccessRateMinRequests)
	case !(s.SuccessRateStdevFactor >= 0):
		return fmt.Errorf("success_rate_stdev_factor must not be negative, got %v", s.SuccessRateStdevFactor)
	case s.SuccessRateMinHosts < 1:
		return fmt.Errorf("success_rate_min_hosts must be at least 1, got %d", s.SuccessRateMinHosts)
	case s.DetectionInterval <= 0:
		return fmt.Errorf("outlier_interval must be above 0, got %v", s.DetectionInterval)
	case s.SlowStart < 0:
		return fmt.Errorf("slow_start must not be negative, got %v", s.SlowStart)
	case s.ProbationTime < 0:
		return fmt.Errorf("probation_time must not be negative, got %v", s.ProbationTime)
	case s.ProbationSuccesses < 1:
		return fmt.Errorf("probation_successes must be at least 1, got %d", s.ProbationSuccesses)
	case s.MaxRecoveryAttempts < 1:
		return fmt.Errorf("max_recovery_attempts must be at least 1, got %d", s.MaxRecoveryAttempts)
	}
	return nil
}

// MaxIsolated returns how many of a pool's total workers may be isolated
// automatically when at most maxPercent percent of them may be.
//
// The rule is floor(total*maxPercent/100), with two adjustments: at least
// one worker always stays in rotation, and when the pool has two workers or
// more, at least one may be isolated. So at 50%: 1 worker → 0, 2 → 1,
// 3 → 1, 4 → 2, 10 → 5; at 100%: all but one. A maxPercent of 0 or less
// allows none.
//
// Every isolated worker counts against the limit, those an operator
// isolated included; operators themselves are not limited.
func MaxIsolated(total, maxPercent int) int {
	if total < 2 || maxPercent <= 0 {
		return 0
	}
	n := total * min(maxPercent, 100) / 100
	return min(max(n, 1), total-1)
}

// EjectionTime returns how long a worker's ejection number ejections (1 for
// the first) lasts under s: BaseTime * 2^(ejections-1), capped at MaxTime,
// then scaled by a random factor in [1-Jitter, 1+Jitter) picked by rnd in
// [0,1), and capped at MaxTime again. It is a pure function.
func EjectionTime(s IsolationSettings, ejections int, rnd float64) time.Duration {
	limit := s.MaxTime
	d := min(s.BaseTime, limit)
	for i := 1; i < ejections && d < limit; i++ {
		if d > limit/2 {
			d = limit
			break
		}
		d *= 2
	}
	j := clampUnit(s.Jitter)
	return min(scaleDuration(d, 1+j*(2*clampUnit(rnd)-1)), limit)
}

// WindowStats are a worker's results in an outlier detection window. It is
// a plain value, safe to copy.
type WindowStats struct {
	Requests, Successes uint64
}

// successRateOutliers returns the indexes, in increasing order, of the
// entries of stats whose success rate is an outlier (Envoy's success-rate
// algorithm): only entries with at least minRequests requests take part,
// nothing is flagged when fewer than minHosts take part, and an entry is an
// outlier when its success rate is below mean - factor*stdev of the
// participants (population standard deviation). A minRequests of 0 or less
// turns detection off. It also returns the mean and the threshold, for
// explaining the decision. It is a pure function.
func successRateOutliers(stats []WindowStats, minRequests int, factor float64, minHosts int) (idx []int, mean, threshold float64) {
	if minRequests <= 0 {
		return nil, 0, 0
	}
	var n int
	var sum float64
	for _, st := range stats {
		if st.Requests >= uint64(minRequests) {
			n++
			sum += successRate(st)
		}
	}
	if n == 0 || n < minHosts {
		return nil, 0, 0
	}
	mean = sum / float64(n)
	var sq float64
	for _, st := range stats {
		if st.Requests >= uint64(minRequests) {
			d := successRate(st) - mean
			sq += d * d
		}
	}
	// the threshold is also at least MinOutlierGap below the mean, so
	// that the noise of a few errors among healthy peers, whose rates
	// barely differ and whose deviation is tiny, flags nobody
	threshold = min(mean-factor*math.Sqrt(sq/float64(n)), mean-MinOutlierGap)
	for i, st := range stats {
		if st.Requests >= uint64(minRequests) && successRate(st) < threshold {
			idx = append(idx, i)
		}
	}
	return idx, mean, threshold
}

// successRate returns the share of successful requests in st.
func successRate(st WindowStats) float64 {
	if st.Requests == 0 {
		return 1
	}
	return float64(min(st.Successes, st.Requests)) / float64(st.Requests)
}

// SlowStartWeight returns the share of its normal traffic a worker gets
// sinceRestore after its reinstatement when it ramps up over window: it
// grows linearly from 0.1 (never 0, so the worker gets some traffic) to 1,
// and is 1 once the window has passed or when window <= 0. It is a pure
// function.
func SlowStartWeight(sinceRestore, window time.Duration) float64 {
	if window <= 0 || sinceRestore >= window {
		return 1
	}
	if sinceRestore <= 0 {
		return minSlowStartWeight
	}
	return minSlowStartWeight + (1-minSlowStartWeight)*float64(sinceRestore)/float64(window)
}

// Reason says why a worker was isolated or restored. It starts the reason
// text of an Event, followed by ": " and the details.
type Reason string

// Reasons for isolating and restoring workers.
const (
	// ReasonBreaker: the worker's circuit breaker keeps tripping.
	ReasonBreaker Reason = "breaker_tripping"
	// ReasonCritical: the worker caused a critical error.
	ReasonCritical Reason = "critical_error"
	// ReasonProbe: the worker's active probes failed.
	ReasonProbe Reason = "probe_failed"
	// ReasonOutlier: the worker's success rate is far below its peers'.
	ReasonOutlier Reason = "success_rate_outlier"
	// ReasonOperator: an operator isolated or restored the worker.
	ReasonOperator Reason = "operator"
	// ReasonProbation: the worker failed while on probation after a
	// reinstatement.
	ReasonProbation Reason = "failed_probation"
	// ReasonExpired: the worker's ejection time passed (restore).
	ReasonExpired Reason = "isolation_expired"
	// ReasonProbeRecovered: the worker's probes passed again (restore).
	ReasonProbeRecovered Reason = "probe_recovered"
)

// reasonText joins a reason and its details.
func reasonText(r Reason, detail string) string {
	if detail == "" {
		return string(r)
	}
	return string(r) + ": " + detail
}

// EventType is the kind of transition an Event reports.
type EventType uint8

// Event types.
const (
	// EventIsolated: the worker was taken out of rotation until Until
	// (zero: until an operator restores it).
	EventIsolated EventType = iota + 1
	// EventRestored: the worker is back in rotation, on probation.
	EventRestored
	// EventRecoveryFailed: the worker failed MaxRecoveryAttempts
	// reinstatements and was isolated with no end; only a passing probe
	// or an operator brings it back.
	EventRecoveryFailed
)

// String returns the event's name as emitted to Caddy's events app.
func (t EventType) String() string {
	switch t {
	case EventIsolated:
		return "worker_isolated"
	case EventRestored:
		return "worker_restored"
	case EventRecoveryFailed:
		return "worker_recovery_failed"
	}
	return fmt.Sprintf("event_type(%d)", uint8(t))
}

// Event reports one transition of a worker, to be emitted by the caller. It
// is a plain value, safe to copy and to hand to another goroutine.
type Event struct {
	Type   EventType
	Worker *WorkerHealth
	// Reason explains the transition: a Reason, then ": " and details.
	Reason string
	// Until is the end of the isolation; zero for restores and for
	// isolations with no end.
	Until time.Time
}

// Monitor makes the isolation decisions of one pool. The caller hands it
// request results (OnResult), isolation requests (Isolate, IsolateFor),
// restores (Restore, ProbeRecovered) and calls Tick periodically; each
// method returns the events to emit.
//
// Every method that takes a worker does nothing (and returns false) unless
// the worker is one of those given to SetWorkers.
//
// A Monitor is safe for concurrent use. The state it decides on lives in
// the WorkerHealth records, so a new Monitor over the same records (e.g.
// after a config reload) carries on where the old one stopped.
type Monitor struct {
	now func() time.Time
	rnd func() float64 // called with mu held

	mu            sync.Mutex
	s             IsolationSettings
	workers       []*WorkerHealth // never modified in place: SetWorkers replaces it
	member        map[*WorkerHealth]struct{}
	lastDetection time.Time
}

// NewMonitor returns a Monitor with settings s, reading the time from now
// and random numbers in [0,1) from rnd; nil selects time.Now and
// math/rand/v2's Float64. rnd is always called with the Monitor's lock
// held. s is taken as it is: check it with Validate. The zero
// IsolationSettings make a Monitor that isolates nothing by itself
// (MaxPercent and SuccessRateMinRequests are 0) until Update gives it
// settings.
func NewMonitor(s IsolationSettings, now func() time.Time, rnd func() float64) *Monitor {
	if now == nil {
		now = time.Now
	}
	if rnd == nil {
		rnd = rand.Float64
	}
	return &Monitor{
		now:           now,
		rnd:           rnd,
		s:             s,
		member:        map[*WorkerHealth]struct{}{},
		lastDetection: now(),
	}
}

// Update replaces the settings, or refuses invalid ones (see Validate) and
// changes nothing. Current isolations keep their end times; the new
// settings apply from the next decision on.
func (m *Monitor) Update(s IsolationSettings) error {
	if err := s.Validate(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.s = s
	for _, w := range m.workers {
		w.slowStart.Store(int64(m.s.SlowStart))
	}
	return nil
}

// SetWorkers sets the pool's current workers. Workers left out keep their
// state, so they can be handed to another Monitor.
func (m *Monitor) SetWorkers(ws []*WorkerHealth) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.workers = slices.Clone(ws)
	m.member = make(map[*WorkerHealth]struct{}, len(ws))
	for _, w := range ws {
		m.member[w] = struct{}{}
		w.slowStart.Store(int64(m.s.SlowStart))
	}
}

// Isolate takes w out of rotation automatically for its next ejection time,
// counting one more ejection. The event's reason is reason followed by ": "
// and detail (e.g. "5 consecutive failures"). It is refused (false) when w
// is already isolated or when isolating it would exceed MaxIsolated.
func (m *Monitor) Isolate(w *WorkerHealth, reason Reason, detail string) (Event, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.isMemberLocked(w) {
		return Event{}, false
	}
	return m.ejectLocked(w, m.now(), reasonText(reason, detail))
}

// IsolateFor takes w out of rotation on an operator's request, for d, or
// until an operator restores it when d is 0. It ignores MaxPercent and does
// not count as an ejection. It is refused (false) when w is already
// isolated.
func (m *Monitor) IsolateFor(w *WorkerHealth, d time.Duration, detail string) (Event, bool) {
	if d < 0 {
		return Event{}, false
	}
	if detail == "" {
		detail = "isolated by operator until restored"
		if d > 0 {
			detail = "isolated by operator for " + d.String()
		}
	}
	return m.withWorker(w, func(now time.Time) (Event, bool) {
		if w.isolated.Load() {
			return Event{}, false
		}
		var until time.Time
		if d > 0 {
			until = now.Add(d)
		}
		text := reasonText(ReasonOperator, detail)
		w.setIsolatedLocked(until, text)
		return Event{Type: EventIsolated, Worker: w, Reason: text, Until: until}, true
	})
}

// Restore puts w back into rotation on an operator's request, on probation
// and with slow start, and clears its recovery-failed state and failed
// recovery attempts. It returns false, after clearing them, when w is not
// isolated.
func (m *Monitor) Restore(w *WorkerHealth) (Event, bool) {
	return m.withWorker(w, func(now time.Time) (Event, bool) {
		w.iso.recoveryAttempts = 0
		w.iso.recoveryFailed = false
		if !w.isolated.Load() {
			return Event{}, false
		}
		w.reinstateLocked(now)
		return Event{Type: EventRestored, Worker: w, Reason: reasonText(ReasonOperator, "restored by operator")}, true
	})
}

// ProbeRecovered is called when a probe flips w from unhealthy to
// healthy. It reinstates w, on probation, when it is recovery-failed, when
// it was isolated automatically (breaker, probes, outlier detection,
// critical error: the flip is evidence of recovery), or when its ejection
// time has passed and it was only waiting for its probes. An isolation by
// an operator or after a failed probation is not ended early. Otherwise,
// or when w is not probe-healthy, it returns false.
func (m *Monitor) ProbeRecovered(w *WorkerHealth) (Event, bool) {
	return m.withWorker(w, func(now time.Time) (Event, bool) {
		if !w.isolated.Load() || !w.probeHealthy.Load() {
			return Event{}, false
		}
		var detail string
		switch {
		case w.iso.recoveryFailed:
			detail = "probe passed after recovery failed"
		case w.iso.endsOnProbe:
			// the probes failed and now pass again: evidence of recovery,
			// whatever took the worker out. A probe that never failed (one
			// that lies while real traffic fails) never flips, so it cannot
			// shorten an ejection; nor can it end one that began when a
			// reinstated worker failed its probation.
			detail = "probe passed again"
		case !w.iso.until.IsZero() && !now.Before(w.iso.until):
			detail = "probe passed after the ejection time"
		default:
			return Event{}, false
		}
		w.reinstateLocked(now)
		return Event{Type: EventRestored, Worker: w, Reason: reasonText(ReasonProbeRecovered, detail)}, true
	})
}

// OnResult is called after each try of a request to w that counts (not
// canceled by the client). It costs one atomic load unless w is on
// probation.
//
// While w is on probation (reinstated less than max(ProbationTime,
// SlowStart) ago and with fewer than ProbationSuccesses successes since), a
// failure isolates it again at once, within MaxPercent, counting one more
// ejection and one more failed recovery attempt; once the failed attempts
// reach MaxRecoveryAttempts, w becomes recovery-failed instead
// (EventRecoveryFailed) and stays isolated with no end. A probation that
// ends with successes and no failure clears the failed attempts.
func (m *Monitor) OnResult(w *WorkerHealth, failure bool) (Event, bool) {
	if !w.onProbation.Load() {
		return Event{}, false
	}
	return m.onProbationResult(w, failure)
}

// onProbationResult is OnResult for a worker that looked on probation. It is
// split out so that OnResult's common path pays for no defers and inlines.
func (m *Monitor) onProbationResult(w *WorkerHealth, failure bool) (Event, bool) {
	return m.withWorker(w, func(now time.Time) (Event, bool) {
		if !w.onProbation.Load() {
			return Event{}, false
		}
		if m.probationOverLocked(w, now) {
			w.endProbationLocked()
			return Event{}, false
		}
		if !failure {
			w.iso.probationSuccesses++
			if w.iso.probationSuccesses >= m.s.ProbationSuccesses {
				w.endProbationLocked()
			}
			return Event{}, false
		}
		if !m.roomLocked() {
			return Event{}, false
		}
		since := now.Sub(fromNanos(w.restoredAt.Load())).Round(time.Millisecond)
		w.iso.ejections++
		w.iso.recoveryAttempts++
		if w.iso.recoveryAttempts >= m.s.MaxRecoveryAttempts {
			w.iso.recoveryFailed = true
			back := "an operator restores it"
			if m.s.ProbesConfigured {
				back = "a probe passes or " + back
			}
			text := reasonText(ReasonProbation, fmt.Sprintf(
				"failed %v after reinstatement, recovery failed %d times; isolated until %s",
				since, w.iso.recoveryAttempts, back))
			w.setIsolatedLocked(time.Time{}, text)
			return Event{Type: EventRecoveryFailed, Worker: w, Reason: text}, true
		}
		until := now.Add(EjectionTime(m.s, w.iso.ejections, m.rnd()))
		text := reasonText(ReasonProbation, fmt.Sprintf(
			"failed %v after reinstatement (recovery attempt %d of %d)",
			since, w.iso.recoveryAttempts, m.s.MaxRecoveryAttempts))
		w.setIsolatedLocked(until, text)
		return Event{Type: EventIsolated, Worker: w, Reason: text, Until: until}, true
	})
}

// Tick runs the Monitor's periodic work and returns the resulting events;
// the caller runs it every 250 ms to 1 s. In order:
//
//  1. Isolated workers whose ejection time has passed are reinstated on
//     probation (EventRestored), except while ProbesConfigured and the
//     worker is not probe-healthy. Recovery-failed workers and operator
//     isolations without an end stay out.
//  2. Probations that have run their time end.
//  3. The ejection count of a worker in rotation for DecayAfter drops by
//     one.
//  4. At most once per DetectionInterval, the success rates of the window
//     that ends are compared (when SuccessRateMinRequests > 0) and outliers
//     are isolated, worst first, within MaxPercent; then a new window
//     starts.
func (m *Monitor) Tick() []Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	var evs []Event
	for _, w := range m.workers {
		if ev, ok := m.tickWorkerLocked(w, now); ok {
			evs = append(evs, ev)
		}
	}
	return m.detectOutliersLocked(now, evs)
}

// tickWorkerLocked does Tick's steps 1 to 3 for one worker. Requires m.mu.
func (m *Monitor) tickWorkerLocked(w *WorkerHealth, now time.Time) (Event, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.isolated.Load() {
		if w.iso.recoveryFailed || w.iso.until.IsZero() || now.Before(w.iso.until) {
			return Event{}, false
		}
		detail := "ejection time passed"
		if m.s.ProbesConfigured {
			if !w.probeHealthy.Load() {
				return Event{}, false
			}
			detail += " and probe passes"
		}
		w.reinstateLocked(now)
		return Event{Type: EventRestored, Worker: w, Reason: reasonText(ReasonExpired, detail)}, true
	}
	if w.onProbation.Load() && m.probationOverLocked(w, now) {
		w.endProbationLocked()
	}
	if w.iso.ejections > 0 {
		if w.iso.healthySince.IsZero() {
			w.iso.healthySince = now
		}
		if now.Sub(w.iso.healthySince) >= m.s.DecayAfter {
			w.iso.ejections--
			w.iso.healthySince = now
		}
	}
	return Event{}, false
}

// detectOutliersLocked does Tick's step 4 and appends its events to evs.
// Requires m.mu.
func (m *Monitor) detectOutliersLocked(now time.Time, evs []Event) []Event {
	if now.Sub(m.lastDetection) < m.s.DetectionInterval {
		return evs
	}
	m.lastDetection = now
	stats := make([]WindowStats, len(m.workers))
	for i, w := range m.workers {
		st := w.takeWindow()
		if !w.isolated.Load() {
			stats[i] = st
		}
	}
	idx, mean, threshold := successRateOutliers(stats, m.s.SuccessRateMinRequests,
		m.s.SuccessRateStdevFactor, m.s.SuccessRateMinHosts)
	// Worst first, so that MaxPercent keeps the better ones in rotation.
	slices.SortStableFunc(idx, func(a, b int) int {
		return cmp.Compare(successRate(stats[a]), successRate(stats[b]))
	})
	for _, i := range idx {
		text := reasonText(ReasonOutlier, fmt.Sprintf(
			"success rate %.1f%% over %d requests, below the pool threshold %.1f%% (mean %.1f%%)",
			100*successRate(stats[i]), stats[i].Requests, 100*threshold, 100*mean))
		if ev, ok := m.ejectLocked(m.workers[i], now, text); ok {
			evs = append(evs, ev)
		}
	}
	return evs
}

// Weight returns w's slow-start weight now: from 0.1 right after a
// reinstatement up to 1 at the end of SlowStart; 1 when not ramping.
func (m *Monitor) Weight(w *WorkerHealth) float64 {
	if w.restoredAt.Load() == 0 || w.slowStart.Load() <= 0 {
		return 1 // not ramping: skip reading the clock
	}
	return w.slowStartWeight(m.now())
}

// Counts returns how many of the pool's workers are healthy (see
// WorkerHealth.Healthy), how many are isolated, and how many there are.
func (m *Monitor) Counts() (healthy, isolated, total int) {
	m.mu.Lock()
	ws := m.workers
	m.mu.Unlock()
	now := m.now()
	for _, w := range ws {
		switch {
		case w.Isolated():
			isolated++
		case w.Healthy(now):
			healthy++
		}
	}
	return healthy, isolated, len(ws)
}

// ejectLocked isolates w automatically for its next ejection time, within
// MaxPercent. Requires m.mu.
//
// An automatic isolation may end early when the probes recover (see
// ProbeRecovered).
func (m *Monitor) ejectLocked(w *WorkerHealth, now time.Time, text string) (Event, bool) {
	if !m.roomLocked() {
		return Event{}, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.isolated.Load() {
		return Event{}, false
	}
	w.iso.ejections++
	until := now.Add(EjectionTime(m.s, w.iso.ejections, m.rnd()))
	w.setIsolatedLocked(until, text)
	w.iso.endsOnProbe = true
	return Event{Type: EventIsolated, Worker: w, Reason: text, Until: until}, true
}

// roomLocked reports whether one more worker may be isolated
// automatically. Requires m.mu.
func (m *Monitor) roomLocked() bool {
	n := 0
	for _, w := range m.workers {
		if w.isolated.Load() {
			n++
		}
	}
	return n < MaxIsolated(len(m.workers), m.s.MaxPercent)
}

// probationOverLocked reports whether w's probation has run its time.
// Requires m.mu and w.mu.
func (m *Monitor) probationOverLocked(w *WorkerHealth, now time.Time) bool {
	return now.UnixNano()-w.restoredAt.Load() >= int64(max(m.s.ProbationTime, m.s.SlowStart))
}

// withWorker runs f with m.mu and w.mu held and the current time, when w
// is one of the pool's workers; otherwise it returns false.
func (m *Monitor) withWorker(w *WorkerHealth, f func(now time.Time) (Event, bool)) (Event, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.isMemberLocked(w) {
		return Event{}, false
	}
	now := m.now()
	w.mu.Lock()
	defer w.mu.Unlock()
	return f(now)
}

// isMemberLocked reports whether w is one of the pool's workers. Requires
// m.mu.
func (m *Monitor) isMemberLocked(w *WorkerHealth) bool {
	_, ok := m.member[w]
	return ok
}

// ReasonShutdown: the worker was stopped by the force_shutdown action.
const ReasonShutdown Reason = "force_shutdown"

// IsolateLongest takes w out of rotation automatically for the longest
// ejection time (MaxTime), within MaxPercent, counting one more ejection:
// for a failure that will not clear by itself, such as a protocol
// mismatch between proxy and upstream. Like Isolate, it may end early when
// the probes, having failed, pass again; it is refused (false) when w is
// already isolated or there is no room.
func (m *Monitor) IsolateLongest(w *WorkerHealth, reason Reason, detail string) (Event, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.isMemberLocked(w) || !m.roomLocked() {
		return Event{}, false
	}
	now := m.now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.isolated.Load() {
		return Event{}, false
	}
	w.iso.ejections++
	until := now.Add(m.s.MaxTime)
	text := reasonText(reason, detail)
	w.setIsolatedLocked(until, text)
	w.iso.endsOnProbe = true
	return Event{Type: EventIsolated, Worker: w, Reason: text, Until: until}, true
}

// Shutdown stops w for good: it is isolated with no end, whether or not
// it was isolated already, ignoring MaxPercent as an operator's isolation
// does. Neither its ejection time nor a passing probe brings it back; only
// Restore (an operator) does, or a configuration in which its upstream
// is another worker. It returns false when w is already shut down.
func (m *Monitor) Shutdown(w *WorkerHealth, detail string) (Event, bool) {
	return m.withWorker(w, func(time.Time) (Event, bool) {
		text := reasonText(ReasonShutdown, detail)
		if w.shutdown.Load() {
			return Event{}, false
		}
		w.setIsolatedLocked(time.Time{}, text)
		w.iso.recoveryFailed = false
		w.shutdown.Store(true)
		return Event{Type: EventIsolated, Worker: w, Reason: text}, true
	})
}
