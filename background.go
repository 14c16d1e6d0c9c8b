package bifrost

import (
	"context"
	"fmt"
	"runtime/debug"
	"time"

	"go.uber.org/zap"

	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/pool"
	"github.com/bifrost-proxy/bifrost/recovery"
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
// handler refreshes its automatic hedge delay, looks for hung workers and
// refreshes its state gauges.
func (h *Handler) Tick(now time.Time) {
	if h.hedge != nil && h.hedge.Delay == 0 {
		h.pool.Latency.Refresh(h.hedge.Percentile)
	}
	h.detectHangs(now)
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
	if h.Health.active() && len(h.workers) > 0 {
		checker, err := h.newChecker()
		if err != nil {
			h.logger.Error("active health checks disabled", zap.Error(err))
			return
		}
		h.goSafe(ctx, "probes", checker.Run)
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

// reasonHang is the isolation reason of a worker whose requests pile up
// without answers.
const reasonHang health.Reason = "requests_hanging"

// detectHangs isolates a worker whose requests wait for an answer longer
// than the hang threshold while its peers answer and it does not: it is
// failing, even if no timeout has fired yet (kind timeout). Requests that
// are slow by nature (long polls, large reports) keep no worker from
// answering its other requests, so a worker that answered one within the
// hang threshold, after its oldest waiting request was sent, is not hung.
func (h *Handler) detectHangs(now time.Time) {
	workers := h.set.Load().workers
	if len(workers) < 2 {
		return
	}
	for _, wk := range workers {
		if wk.Health.Isolated() {
			// out of rotation for whatever reason (its probes failed,
			// say): its requests that waited past the hang threshold
			// can go elsewhere too
			wk.waiting.takeBack(now, h.hangAfter)
			continue
		}
		stuck := wk.tracker.Stuck(now, h.hangAfter)
		if stuck < h.hangCount {
			continue
		}
		since := now.Add(-wk.tracker.OldestAge(now))
		if h.answering(wk, since, now) || !peersAnswering(workers, wk, since) {
			continue
		}
		msg := fmt.Sprintf("%d requests without an answer for more than %s, and no other answer since, while peers answer", stuck, h.hangAfter)
		// its requests that can go elsewhere need not wait any longer,
		// whether or not max_percent lets it be isolated
		wk.waiting.takeBack(now, h.hangAfter)
		ev, ok := h.pool.Monitor.Isolate(wk.Health, reasonHang, msg)
		if !ok {
			continue // max_percent: booked once it can be acted on
		}
		ce := pool.Incident(recovery.KindTimeout, wk.Ref(), "health", "hang_detection", msg)
		ce.Action, ce.Timestamp = recovery.ActionIsolateWorker, now
		h.pool.Book(ce)
		h.emitHealth(ev)
	}
}

// answering reports whether wk itself still answers: it served a request
// after since (when its oldest unanswered request was sent) and within
// the hang threshold before now.
func (h *Handler) answering(wk *worker, since, now time.Time) bool {
	last := wk.Health.LastSuccess()
	return last.After(since) && now.Sub(last) < h.hangAfter
}

// peersAnswering reports whether another worker answered a request after
// since, when the oldest unanswered request of wk was sent: the pool is
// answering, this worker is not.
func peersAnswering(workers []*worker, wk *worker, since time.Time) bool {
	for _, other := range workers {
		if other != wk && other.Health.LastSuccess().After(since) {
			return true
		}
	}
	return false
}
