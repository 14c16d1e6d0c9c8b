package bifrost

import (
	"context"
	"runtime/debug"
	"time"

	"go.uber.org/zap"

	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/pool"
)

// emit sends a Caddy event; Emit runs subscribers synchronously, so it is
// never called with a lock held.
func (h *Handler) emit(name string, data map[string]any) {
	if h.events != nil {
		h.events.Emit(h.ctx, name, data)
	}
}

// emitHealth reports an isolation transition through the pool, which
// hands a worker that came back to its users (see Restored).
func (h *Handler) emitHealth(ev health.Event) { h.pool.Report(ev) }

// Reporter implements pool.User: while this handler is the pool's newest
// user, the pool logs, emits and counts through its config.
func (h *Handler) Reporter() pool.Reporter {
	return pool.Reporter{
		Ctx:          h.ctx,
		Events:       h.events,
		Logger:       h.logger,
		Transition:   countTransition,
		BreakerState: setBreakerState,
		Error:        countError,
	}
}

// Restored implements pool.User: a worker of this handler that comes
// back from isolation is restarted, and its selection cost forgets the
// failures that got it isolated.
func (h *Handler) Restored(ws *pool.Worker) {
	for _, wk := range h.set.Load().workers {
		if wk.Worker == ws {
			wk.tracker.Forgive()
			h.restart(wk)
		}
	}
}

// Tick implements pool.User: on each tick of the pool's loop, the
// handler refreshes its automatic hedge delay, takes back the waiting
// tries of isolated workers and refreshes its state gauges (suspected
// hangs have a watch of their own: see watchHangs).
func (h *Handler) Tick(now time.Time) {
	if h.hedge != nil && h.hedge.Delay == 0 {
		h.pool.Latency.Refresh(h.hedge.Percentile)
	}
	h.takeBackFromIsolated(now)
	for _, wk := range h.set.Load().workers {
		h.metrics.workerGauges(wk)
	}
}

// startBackground starts the loops of this handler; each stops when ctx
// is done, and Cleanup waits for them.
func (h *Handler) startBackground(ctx context.Context) {
	if h.dyn != nil {
		h.goSafe(ctx, "dynamic_upstreams", h.dyn.run)
	}
	if h.dyn != nil || len(h.workers) > 1 {
		h.goSafe(ctx, "hang_watch", h.watchHangs)
	}
	if h.Health.active() && len(h.workers) > 0 {
		checker, err := h.newChecker()
		if err != nil {
			h.logger.Error("active health checks disabled", zap.Error(err))
			return
		}
		// the workers' probe state is the pool's: the last checker of a
		// worker to stop forgets it (see health.WorkerHealth.AddProber)
		for _, wk := range h.workers {
			wk.Health.AddProber()
		}
		h.goSafe(ctx, "probes", func(ctx context.Context) {
			defer func() {
				for _, wk := range h.workers {
					wk.Health.RemoveProber()
				}
			}()
			checker.Run(ctx)
		})
	}
}

// goSafe runs f in a goroutine that Cleanup waits for, logging a panic
// instead of crashing the server.
func (h *Handler) goSafe(ctx context.Context, name string, f func(context.Context)) {
	h.bg.Add(1)
	go func() {
		defer h.bg.Done()
		defer func() {
			if v := recover(); v != nil {
				h.logger.Error("background loop panicked",
					zap.String("loop", name), zap.Any("panic", v), zap.ByteString("stack", debug.Stack()))
			}
		}()
		f(ctx)
	}()
}

// takeBackFromIsolated takes back, from each worker that is out of
// rotation for whatever reason (its probes failed, say), its tries that
// have waited past the hang threshold: they can go elsewhere.
func (h *Handler) takeBackFromIsolated(now time.Time) {
	workers := h.set.Load().workers
	if len(workers) < 2 {
		return
	}
	for _, wk := range workers {
		if wk.Health.Isolated() {
			wk.waiting.takeBack(now, h.hangAfter)
		}
	}
}
