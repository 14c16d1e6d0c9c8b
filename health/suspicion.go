package health

import "time"

// A worker whose request waits for an answer past the hang threshold,
// while it answers nothing else and its peers answer, is suspected of
// hanging. Its silence alone proves nothing (a long poll, a slow report,
// or traffic steered away from it look the same), so the worker is asked:
// one short request, a suspicion probe. These methods keep that probe to
// one at a time per worker and to one per interval, whatever the number
// of configs that share the worker.

// BeginSuspicion claims the worker's suspicion probe at time now. It
// reports false when one is already in flight, or when the last one
// started less than every before now; on true the caller sends the probe
// and then calls EndSuspicion.
func (w *WorkerHealth) BeginSuspicion(now time.Time, every time.Duration) bool {
	if !w.suspecting.CompareAndSwap(false, true) {
		return false
	}
	if last := w.lastSuspicion.Load(); last != 0 && now.UnixNano()-last < int64(every) {
		w.suspecting.Store(false)
		return false
	}
	w.lastSuspicion.Store(now.UnixNano())
	return true
}

// EndSuspicion ends the suspicion probe claimed by BeginSuspicion; an
// answer at time now clears the suspicion (see SuspicionCleared).
func (w *WorkerHealth) EndSuspicion(answered bool, now time.Time) {
	if answered {
		w.lastCleared.Store(now.UnixNano())
	}
	w.suspecting.Store(false)
}

// Suspecting reports whether a suspicion probe of the worker is in
// flight.
func (w *WorkerHealth) Suspecting() bool { return w.suspecting.Load() }

// LastSuspicion returns when the worker's last suspicion probe started,
// or the zero time if none did.
func (w *WorkerHealth) LastSuspicion() time.Time { return fromNanos(w.lastSuspicion.Load()) }

// SuspicionCleared returns when a suspicion probe of the worker last got
// an answer, or the zero time if none did: the worker answered then, even
// if no request of its own ended.
func (w *WorkerHealth) SuspicionCleared() time.Time { return fromNanos(w.lastCleared.Load()) }

// AddProber records that one more checker probes the worker actively;
// RemoveProber undoes it. The probe state (streaks and probe health)
// belongs to the worker, shared by every config that uses it: once the
// last checker stops, no probe can ever bring it back, so a failed probe
// is forgotten then, and only then. A config without probes leaves the
// state alone while another config (a second site on the pool, say)
// still probes the worker.
func (w *WorkerHealth) AddProber() { w.probers.Add(1) }

// RemoveProber ends one AddProber; the last one resets the probe state
// (see ResetProbe).
func (w *WorkerHealth) RemoveProber() {
	if w.probers.Add(-1) == 0 {
		w.ResetProbe()
	}
}

// Probers returns the number of checkers that probe the worker.
func (w *WorkerHealth) Probers() int { return int(w.probers.Load()) }
