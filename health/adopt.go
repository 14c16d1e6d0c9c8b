package health

import (
	"strings"
	"time"
)

// Verdict is a worker's isolation as it can be kept outside the process
// (in storage across a restart, or in a store shared with other
// instances) and taken up again. It is a plain value.
type Verdict struct {
	// Until is the end of the isolation; zero: until restored (an
	// operator's isolation without a duration, or a recovery failure).
	Until time.Time
	// Reason is the isolation's reason text (see Event.Reason).
	Reason string
	// Ejections is the worker's ejection count, so that the next
	// ejection keeps growing.
	Ejections int
	// Operator is true for an operator's isolation: it ignores
	// MaxPercent and only an operator (or its duration) ends it. A
	// worker stopped by force_shutdown (see Monitor.Shutdown) is kept as
	// one: it stays out until an operator restores it.
	Operator bool
	// RecoveryFailed is true for a worker that failed its
	// reinstatements: it stays out until a probe passes or an operator
	// restores it.
	RecoveryFailed bool
}

// Verdict returns w's current isolation, and false when w is not
// isolated.
func (w *WorkerHealth) Verdict() (Verdict, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.isolated.Load() {
		return Verdict{Ejections: w.iso.ejections}, false
	}
	return Verdict{
		Until:          w.iso.until,
		Reason:         w.iso.reason,
		Ejections:      w.iso.ejections,
		Operator:       IsOperatorReason(w.iso.reason) || w.shutdown.Load(),
		RecoveryFailed: w.iso.recoveryFailed,
	}, true
}

// IsOperatorReason reports whether an isolation's reason text is an
// operator's.
func IsOperatorReason(text string) bool {
	return text == string(ReasonOperator) || strings.HasPrefix(text, string(ReasonOperator)+":")
}

// Adopt isolates w as v says, for a verdict restored from storage or
// taken from another instance. An automatic verdict (not Operator) is
// refused when isolating w would exceed MaxPercent, and its end is capped
// at MaxTime from now; an operator's is capped at maxOperator from now
// when it has an end. A verdict whose end has passed is refused, and so
// is any when w is already isolated. The ejection count becomes the
// larger of w's and v's. Recovery-failed verdicts stay out with no end,
// as they do locally.
func (m *Monitor) Adopt(w *WorkerHealth, v Verdict, maxOperator time.Duration) (Event, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.isMemberLocked(w) {
		return Event{}, false
	}
	now := m.now()
	if !v.Until.IsZero() && !now.Before(v.Until) {
		return Event{}, false
	}
	if !v.Operator && !m.roomLocked() {
		return Event{}, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.isolated.Load() {
		return Event{}, false
	}
	until := v.Until
	switch {
	case v.Operator && !until.IsZero():
		until = minTime(until, now.Add(maxOperator))
	case !v.Operator && v.RecoveryFailed:
		until = time.Time{}
	case !v.Operator:
		if until.IsZero() {
			return Event{}, false // an automatic isolation has an end
		}
		until = minTime(until, now.Add(m.s.MaxTime))
	}
	w.iso.ejections = max(w.iso.ejections, v.Ejections)
	w.setIsolatedLocked(until, v.Reason)
	if v.Operator && until.IsZero() && strings.HasPrefix(v.Reason, string(ReasonShutdown)+": ") {
		w.shutdown.Store(true) // shut down elsewhere or before a restart
	}
	w.iso.endsOnProbe = !v.Operator && !v.RecoveryFailed
	if v.RecoveryFailed && !v.Operator {
		w.iso.recoveryFailed = true
		return Event{Type: EventRecoveryFailed, Worker: w, Reason: v.Reason}, true
	}
	return Event{Type: EventIsolated, Worker: w, Reason: v.Reason, Until: until}, true
}

// minTime returns the earlier of a and b.
func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
