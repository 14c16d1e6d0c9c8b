package pool

import (
	"go.uber.org/zap"

	"github.com/bifrost-proxy/bifrost/health"
)

// EventWorkerShutdown is the Caddy event of a worker stopped by the
// force_shutdown recovery action (see Pool.Shutdown). It comes after the
// worker_isolated event of the same isolation.
const EventWorkerShutdown = "worker_shutdown"

// Shutdown stops a worker for good, whatever max_percent says: it is
// isolated with no end, and only an operator's restore (or a config in
// which its upstream is another worker) brings it back; its probes keep
// running and are shown. It is reported as an isolation, then loudly: an
// error in the log, the worker_shutdown event and its transition count.
// It reports false when the worker was shut down already.
func (p *Pool) Shutdown(w *Worker, detail string) bool {
	ev, ok := p.Monitor.Shutdown(w.Health, detail)
	if !ok {
		return false
	}
	p.Report(ev)
	_, rep := p.snapshot()
	rep.Logger.Error("worker shut down: it gets no traffic until an operator restores it",
		zap.String("pool", w.Pool), zap.String("worker", w.ID),
		zap.String("upstream", w.Health.Upstream()), zap.String("reason", ev.Reason))
	if rep.Transition != nil {
		rep.Transition(w.Pool, w.ID, EventWorkerShutdown)
	}
	rep.emit(EventWorkerShutdown, map[string]any{
		"pool":     w.Pool,
		"worker":   w.ID,
		"upstream": w.Health.Upstream(),
		"reason":   ev.Reason,
	})
	return true
}

// IsolateLongest takes a worker out of rotation for the longest ejection
// time (isolation max_time), unless max_percent forbids it, and reports
// it: for a failure that only a change of configuration clears.
func (p *Pool) IsolateLongest(w *Worker, reason health.Reason, detail string) bool {
	ev, ok := p.Monitor.IsolateLongest(w.Health, reason, detail)
	if ok {
		p.Report(ev)
	}
	return ok
}
