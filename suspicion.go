package bifrost

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/pool"
	"github.com/bifrost-proxy/bifrost/recovery"
)

// Hang detection asks the worker before it judges. A worker with a
// request that has waited hang_threshold for its answer, that has
// answered nothing since, while its peers answer, is suspected of hanging:
// Bifrost sends it one suspicion probe at once. No answer within the
// probe's timeout is the hang verdict (the worker is isolated as a
// timeout, and its waiting tries that can go elsewhere are taken back);
// an answer clears the suspicion, and the slow request runs on to its
// end. Silence alone is no evidence: selection steers traffic away from a
// worker with aged requests, so a worker serving long polls soon answers
// nothing else.

// reasonHang is the isolation reason of a worker found hanging.
const reasonHang health.Reason = "requests_hanging"

// minHangWatch bounds the time between two looks at the workers' waiting
// requests from below; the watch sleeps until the oldest request of a
// worker reaches the hang threshold, and never longer than a quarter of
// the threshold, so that a request that started while it slept is seen
// in time.
const minHangWatch = 5 * time.Millisecond

// Bounds of a suspicion probe's timeout when the health block sets none.
const (
	minSuspicion = 50 * time.Millisecond
	maxSuspicion = 300 * time.Millisecond
)

// suspicionTimeout is how long a suspicion probe waits for an answer: the
// health block's timeout when the user set one, at most the hang
// threshold; else a fifth of the hang threshold, between minSuspicion and
// maxSuspicion (300ms with the default 2s), so that a request waits on a
// hung worker at most about the threshold plus 0.3s.
func (h *Handler) suspicionTimeout() time.Duration {
	if hc := h.Health; hc != nil && hc.Timeout > 0 && h.cfg.probe != nil {
		return min(time.Duration(hc.Timeout), h.hangAfter)
	}
	return min(max(h.hangAfter/5, minSuspicion), maxSuspicion)
}

// watchHangs looks at the workers' waiting requests until ctx is done,
// sending a suspicion probe to each worker that is suspected.
func (h *Handler) watchHangs(ctx context.Context) {
	t := time.NewTimer(h.hangAfter / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		t.Reset(h.checkHangs(ctx, time.Now()))
	}
}

// checkHangs sends a suspicion probe to each suspected worker and returns
// when to look again.
func (h *Handler) checkHangs(ctx context.Context, now time.Time) time.Duration {
	next := h.hangAfter / 4
	workers := h.set.Load().workers
	if len(workers) < 2 {
		return next // a single worker has nowhere to send its requests
	}
	for _, wk := range workers {
		if wk.Health.Isolated() || !wk.provisioned {
			continue
		}
		age := wk.tracker.OldestAge(now)
		if age == 0 {
			continue
		}
		if age < h.hangAfter {
			next = min(next, h.hangAfter-age)
			continue
		}
		if wk.tracker.Stuck(now, h.hangAfter) < h.hangCount || !h.suspected(workers, wk, now.Add(-age), now) {
			continue
		}
		if !wk.Health.BeginSuspicion(now, h.hangAfter) {
			if last := wk.Health.LastSuspicion(); !wk.Health.Suspecting() && !last.IsZero() {
				next = min(next, last.Add(h.hangAfter).Sub(now))
			}
			continue
		}
		h.goSafe(ctx, "suspicion_probe", func(ctx context.Context) { h.suspect(ctx, wk, age) })
	}
	return max(next, minHangWatch)
}

// suspected reports whether wk, whose oldest waiting request was sent at
// since, is suspected of hanging: it has answered nothing (no request, no
// suspicion probe) since then, or nothing within the hang threshold, while
// another worker answered since then.
func (h *Handler) suspected(workers []*worker, wk *worker, since, now time.Time) bool {
	last := wk.Health.LastSuccess()
	if cleared := wk.Health.SuspicionCleared(); cleared.After(last) {
		last = cleared
	}
	if last.After(since) && now.Sub(last) < h.hangAfter {
		return false
	}
	return peersAnswering(workers, wk, since)
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

// suspect sends the suspicion probe claimed for wk, whose oldest request
// had waited age, and acts on its outcome.
func (h *Handler) suspect(ctx context.Context, wk *worker, age time.Duration) {
	timeout := h.suspicionTimeout()
	pctx, cancel := context.WithTimeout(ctx, timeout)
	sent, err := h.suspicionProbe(pctx, wk)
	cancel()
	now := time.Now()
	if ctx.Err() != nil || !sent {
		// shutting down, or no probe to send: no verdict
		wk.Health.EndSuspicion(false, now)
		if !sent && ctx.Err() == nil {
			h.logger.Error("cannot build the suspicion probe", zap.String("pool", h.poolName),
				zap.String("worker", wk.ID), zap.Error(err))
		}
		return
	}
	wk.Health.EndSuspicion(err == nil, now)
	if err == nil {
		if ce := h.logger.Check(zap.DebugLevel, "suspicion probe answered: the waiting requests are slow, not hung"); ce != nil {
			ce.Write(zap.String("pool", h.poolName), zap.String("worker", wk.ID), zap.Duration("waited", age))
		}
		return
	}
	h.hangVerdict(wk, now, fmt.Sprintf("a request waited %s without an answer, and a probe got none within %s: %s",
		age.Round(time.Millisecond), timeout, recovery.Truncate(err.Error(), 160)))
}

// hangVerdict isolates a worker found hanging (kind timeout) and takes
// back every try waiting on it that can go elsewhere.
func (h *Handler) hangVerdict(wk *worker, now time.Time, msg string) {
	// its requests that can go elsewhere need not wait any longer,
	// whether or not max_percent lets it be isolated
	moved := wk.waiting.takeBack(now, 0)
	h.logger.Info("worker found hanging", zap.String("pool", h.poolName), zap.String("worker", wk.ID),
		zap.String("reason", msg), zap.Int("requests_moved", moved))
	ev, ok := h.pool.Monitor.Isolate(wk.Health, reasonHang, msg)
	if !ok {
		return // max_percent: booked once it can be acted on
	}
	ce := pool.Incident(recovery.KindTimeout, wk.Ref(), "health", "hang_detection", msg)
	ce.Action, ce.Timestamp = recovery.ActionIsolateWorker, now
	h.pool.Book(ce)
	h.emitHealth(ev)
}

// suspicionProbe sends wk one request and returns nil if any answer came
// (its status does not matter: a worker that answers is not hung); sent
// is false when the request could not even be built.
// It is the health block's probe request when there is one (unless it
// goes to a health upstream instead of the worker), else HEAD /:
// a request the upstream's application answers itself (OPTIONS * is often
// answered by the HTTP server alone, even when every handler is stuck),
// and not the stuck request's own path, which a long poll would hold as
// it holds the stuck request.
func (h *Handler) suspicionProbe(ctx context.Context, wk *worker) (sent bool, err error) {
	hc := h.Health
	if h.cfg.probe == nil || hc.Upstream != "" {
		// no probe of the worker's own (a health upstream is another
		// service, which says nothing about this worker's silence)
		hc = &HealthConfig{URI: "/", Method: http.MethodHead}
	}
	pt, err := newProbeTarget(hc, wk.Upstream)
	if err != nil {
		return false, err
	}
	rt := wk.proxy.Load().Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	req, err := pt.request(ctx, hc, rt)
	if err != nil {
		return false, err
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return true, redactProbeError(err)
	}
	_ = resp.Body.Close()
	return true, nil
}
