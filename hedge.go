package bifrost

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/recovery"
)

// HedgeConfig enables hedged requests: when a try of a safe (GET, HEAD,
// OPTIONS, TRACE), retryable, replayable request has not answered after a delay, one more try is sent
// to another worker; the first good response wins and the others are
// cancelled. Hedges are retries as far as the retry budget and attempts
// are concerned, so they cannot multiply load in an outage.
type HedgeConfig struct {
	// Delay is a fixed hedge delay. Without it, the delay is the pool's
	// observed latency at Percentile ("auto"), measured over recent
	// successful tries.
	Delay caddy.Duration `json:"delay,omitempty"`

	// Percentile of recent successful try latencies used as the automatic
	// delay, 50-99.9. Default: 95.
	Percentile float64 `json:"percentile,omitempty"`

	// Max is the number of hedges one request may send. Default: 1.
	Max int `json:"max,omitempty"`
}

// Hedging bounds.
const (
	// minHedgeDelay keeps an automatic delay from hedging every request
	// of a very fast pool.
	minHedgeDelay = 2 * time.Millisecond
	// warmHedgeDelay is the automatic delay until enough latencies were
	// seen to compute a percentile.
	warmHedgeDelay = 100 * time.Millisecond
)

// race coordinates the tries of one hedged request: the first try to
// write a response that is not held back claims the client, and the
// others are cancelled at once.
type race struct {
	winner atomic.Pointer[tryWriter]
	rs     *requestState // whose placeholders show the winner

	mu      sync.Mutex
	cancels map[*tryWriter]context.CancelFunc
}

// add registers a try's cancel function.
func (rc *race) add(tw *tryWriter, cancel context.CancelFunc) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.cancels == nil {
		rc.cancels = make(map[*tryWriter]context.CancelFunc)
	}
	rc.cancels[tw] = cancel
	if w := rc.winner.Load(); w != nil && w != tw {
		cancel() // started after the race was decided
	}
}

// remove forgets tw's cancel function once its try has ended: after it
// returns, the race never calls it.
func (rc *race) remove(tw *tryWriter) {
	rc.mu.Lock()
	delete(rc.cancels, tw)
	rc.mu.Unlock()
}

// claim makes tw the winner if there is none yet, and cancels the other
// tries. It reports whether tw is the winner.
func (rc *race) claim(tw *tryWriter) bool {
	if !rc.winner.CompareAndSwap(nil, tw) {
		return rc.winner.Load() == tw
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for other, cancel := range rc.cancels {
		if other != tw {
			cancel()
		}
	}
	return true
}

// hedgeDelay returns the delay after which the next try of this request
// is hedged, or 0 when hedging does not apply: it is off, the request is
// not safe (GET, HEAD, OPTIONS, TRACE) and retryable, or not replayable, it is an upgrade, or its hedges and
// attempts are used up.
func (h *Handler) hedgeDelay(rs *requestState, panicMode bool) time.Duration {
	hc := h.hedge
	if hc == nil || panicMode || !rs.body.complete() || rs.hedges >= hc.Max || rs.tries >= h.policy.Attempts {
		return 0
	}
	r := rs.r
	// only a safe method: a hedge runs two tries at once, which no retry
	// setting can make safe for a write
	if !slices.Contains(h.methods, r.Method) || !slices.Contains(defaultRetryMethods, r.Method) || r.Header.Get("Upgrade") != "" {
		return 0
	}
	if hc.Delay > 0 {
		return time.Duration(hc.Delay)
	}
	if d := h.pool.Latency.Percentile(); d > 0 {
		return max(d, minHedgeDelay)
	}
	return warmHedgeDelay
}

// runRace runs the first try and, each time the hedge delay passes without
// an answer, one more try on another worker. It returns the outcome that
// decides the request: the winner's, or a failure when every try failed;
// false if no try could run at all.
func (h *Handler) runRace(w http.ResponseWriter, r *http.Request, rs *requestState, firstTW *tryWriter, first *worker, next caddyhttp.Handler) (tryResult, bool) {
	rc := &race{rs: rs}
	results := make(chan tryResult, 1+h.hedge.Max+len(rs.set.workers))
	// the client writer's headers, read once before any try can write
	// them: hedges start from this copy
	base := w.Header().Clone()
	launch := func(wk *worker, tw *tryWriter, attempt int) {
		// each racing try gets its own copy of the request's variables:
		// reverse_proxy writes to them while preparing the request
		ctx := r.Context()
		if vars, ok := ctx.Value(caddyhttp.VarsCtxKey).(map[string]any); ok {
			ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, maps.Clone(vars))
		}
		go func() {
			var res tryResult
			entered := false
			defer func() {
				if entered {
					wk.leave() // the try panicked
				}
				// a panic in a worker's handler is the request's, not the
				// process's: it is raised again on the request's
				// goroutine once the race is over
				if v := recover(); v != nil {
					h.logger.Error("panic in a hedged try", zap.String("worker", wk.ID), zap.Any("panic", v))
					results <- tryResult{wk: wk, tw: tw, number: attempt, abort: v,
						cls: h.classifier.Classify(recovery.Attempt{Err: fmt.Errorf("panic: %v", v), Dialed: true, Wrote: true}, time.Now())}
				}
			}()
			err := errWorkerRetired
			if wk.enter() {
				entered = true
				var pass breaker.Pass
				if !wk.TakeSlot() {
					err = recovery.ErrPoolExhausted // it filled up: refused
				} else {
					if pass, err = wk.Breaker.Allow(); err == nil {
						tw.pass = pass
						res = h.try(ctx, time.Now(), wk, tw, r, rs, true, false, rc, next)
					}
					wk.ReleaseSlot()
				}
				wk.leave()
				entered = false
			}
			if err != nil {
				res = tryResult{wk: wk, tw: tw, refused: true}
			}
			res.number = attempt
			results <- res
		}()
	}
	// another launches a try on a worker not tried yet, if there is one
	// (and, for a hedge, if the retry budget allows it)
	another := func(hedge bool) bool {
		tw := newTryWriter(w, base, h.maxHeld)
		wk := h.pickFresh(r, tw, rs)
		if wk == nil || (hedge && !h.pool.Budget().TryRetry(time.Now())) {
			return false
		}
		rs.tries++
		rs.tried = append(rs.tried, wk)
		rs.publish()
		launch(wk, tw, rs.tries)
		return true
	}

	delay := h.hedgeDelay(rs, false)
	launch(first, firstTW, rs.tries)
	running := 1
	timer := time.NewTimer(delay)
	defer timer.Stop()

	var best tryResult
	var abort any
	for running > 0 {
		select {
		case res := <-results:
			running--
			if res.refused {
				// its breaker refused it: that worker never saw the
				// request, so another one takes its place at once
				rs.refused(res.wk)
				if rc.winner.Load() == nil && another(false) {
					running++
				}
				continue
			}
			h.record(res, false)
			if res.abort != nil {
				abort = res.abort
			}
			if best.tw == nil || better(res, best) {
				best = res
			}
		case <-timer.C:
			if rc.winner.Load() != nil || h.hedgeDelay(rs, false) == 0 {
				continue
			}
			if another(true) {
				rs.hedges++
				h.metrics.hedge(rs.tried[len(rs.tried)-1])
				running++
				timer.Reset(delay)
			}
		}
	}
	if abort != nil {
		panic(abort)
	}
	if best.wk != nil {
		// the worker whose answer decides the request
		rs.last = best.wk
		rs.publish()
	}
	return best, best.tw != nil
}

// better reports whether a try's outcome should decide the request over
// another's: a response that reached the client or succeeded beats a
// failure, and a held-back failure response (which can be replayed) beats
// an error.
func better(a, b tryResult) bool {
	// a response that was discarded (it lost the race, or came after
	// its try timed out) never decides, whatever it was
	decisive := func(r tryResult) bool {
		return (!r.cls.Failure && r.cls.Kind != recovery.KindCanceled && !r.tw.discard.Load()) || r.tw.passed
	}
	switch {
	case decisive(a) != decisive(b):
		return decisive(a)
	case decisive(a):
		return false
	}
	replayable := func(r tryResult) bool { return r.tw.held && !r.tw.discard.Load() && !r.tw.broken }
	if replayable(a) != replayable(b) {
		return replayable(a)
	}
	// a loser that was cancelled says nothing: prefer a real failure
	return b.cls.Kind == recovery.KindCanceled && a.cls.Kind != recovery.KindCanceled
}

// pickFresh picks an available worker that has not been tried or refused
// for this request, for a hedge.
func (h *Handler) pickFresh(r *http.Request, w http.ResponseWriter, rs *requestState) *worker {
	now := time.Now()
	wk := h.chooseIn(rs.set, r, w, now)
	if wk == nil || slices.Contains(rs.tried, wk) || slices.Contains(rs.skipped, wk) {
		// the policy's choice was tried: take the cheapest other one
		wk = h.cheapestUntried(rs, now)
	}
	return wk
}
