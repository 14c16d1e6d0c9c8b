package pool

import (
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// MaxIsolateDuration caps the duration of an operator's isolation, from
// the admin API or the status page: a slip of the keyboard (or a page
// someone else reached) must not take a worker out for years. Without a
// duration, an isolation lasts until the worker is restored, which is
// explicit and visible.
const MaxIsolateDuration = 24 * time.Hour

// ErrNoPool is returned by Act for a worker whose pool is in no running
// config.
var ErrNoPool = errors.New("the worker has no active pool")

// ErrUnknownAction is returned by Act for an action it does not know.
var ErrUnknownAction = errors.New("unknown worker action (want isolate, restore or reset)")

// Act performs an operator action on a worker, for the admin API and the
// status page: "isolate" takes it out for d (until restored when d is 0)
// with the given reason, "restore" brings it back now, and "reset" closes
// its breaker and clears its counts. The transition is reported as the
// pool reports its own.
func Act(w *Worker, action string, d time.Duration, reason string) error {
	p := Named(w.Pool)
	if p == nil {
		return ErrNoPool
	}
	switch action {
	case "isolate":
		if d > MaxIsolateDuration {
			return fmt.Errorf("isolation of %s is longer than the limit of %s", d, MaxIsolateDuration)
		}
		if ev, ok := p.Monitor.IsolateFor(w.Health, d, reason); ok {
			p.Report(ev)
		}
	case "restore":
		if ev, ok := p.Monitor.Restore(w.Health); ok {
			p.Report(ev)
		}
	case "reset":
		w.Breaker.Reset()
		w.Trips.Store(0)
	default:
		return ErrUnknownAction
	}
	observed(w, action, d, reason)
	_, rep := p.snapshot()
	rep.Logger.Info("operator action", zap.String("action", action), zap.String("worker", w.ID))
	return nil
}
