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
//
// The first try runs on the request's goroutine, with a timer armed for
// the hedge delay. A request whose first try answers in time, nearly every
// one, pays for nothing more: no goroutine, no channel, no copy of its
// headers or variables. When the delay passes first, the timer's goroutine
// becomes the race's coordinator (see coordinate): it launches the hedges
// and collects every try's outcome, the first try's included, which the
// request's goroutine hands over when that try ends (see handOver). A race
// lives in its request's state, and its timer is reused with it.
type race struct {
	winner atomic.Pointer[tryWriter]
	rs     *requestState // whose placeholders show the winner

	// the request under way (see start)
	h     *Handler
	w     http.ResponseWriter
	r     *http.Request
	next  caddyhttp.Handler
	delay time.Duration

	mu        sync.Mutex
	cancels   []raceCancel // the running tries'
	cancelBuf [2]raceCancel
	// firstDone is set when the first try has ended, coordinating when
	// the timer fired before that, and coordinate runs; results and
	// verdict are coordinate's, made then
	firstDone    bool
	coordinating bool
	results      chan tryResult
	verdict      chan raceVerdict

	timer *time.Timer    // the hedge delay
	fired sync.WaitGroup // the timer's callback, from arming to its end
}

// raceCancel is a running try's cancel function.
type raceCancel struct {
	tw     *tryWriter
	cancel context.CancelFunc
}

// raceVerdict is how a coordinated race ended: the outcome that decides
// the request, and a try's panic to raise on the request's goroutine.
type raceVerdict struct {
	best  tryResult
	abort any
}

// start readies the race for a new first try of rs's request.
func (rc *race) start(h *Handler, w http.ResponseWriter, r *http.Request, rs *requestState, next caddyhttp.Handler, delay time.Duration) {
	rc.winner.Store(nil)
	rc.rs, rc.h, rc.w, rc.r, rc.next, rc.delay = rs, h, w, r, next, delay
	rc.cancels = rc.cancelBuf[:0]
	rc.firstDone, rc.coordinating = false, false
	rc.results, rc.verdict = nil, nil
}

// arm starts the hedge delay.
func (rc *race) arm() {
	rc.fired.Add(1)
	if rc.timer == nil {
		rc.timer = time.AfterFunc(rc.delay, rc.fire)
		return
	}
	rc.timer.Reset(rc.delay)
}

// fire is the timer's callback: unless the first try has ended or won,
// it coordinates the rest of the race.
func (rc *race) fire() {
	defer rc.fired.Done()
	rc.mu.Lock()
	if rc.firstDone || rc.winner.Load() != nil {
		rc.mu.Unlock()
		return
	}
	rc.results = make(chan tryResult, 1+rc.h.hedge.Max+len(rc.rs.set.workers))
	rc.verdict = make(chan raceVerdict, 1)
	rc.coordinating = true
	rc.mu.Unlock()
	rc.verdict <- rc.h.coordinate(rc)
}

// handOver ends the first try's part in the race, on the request's
// goroutine. Without a coordinator (the timer was stopped in time, or
// fired too late to act) it reports false: the first try's outcome is the
// race's. With one, the outcome goes to it, and its verdict comes back
// once every try has ended; nothing of the race runs after handOver
// returns.
func (rc *race) handOver(res tryResult) (raceVerdict, bool) {
	if rc.timer.Stop() {
		rc.fired.Done() // the callback never runs
		return raceVerdict{}, false
	}
	rc.mu.Lock()
	rc.firstDone = true
	coordinated := rc.coordinating
	rc.mu.Unlock()
	if !coordinated {
		rc.fired.Wait()
		return raceVerdict{}, false
	}
	rc.results <- res
	v := <-rc.verdict
	rc.fired.Wait()
	return v, true
}

// add registers a try's cancel function.
func (rc *race) add(tw *tryWriter, cancel context.CancelFunc) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.cancels = append(rc.cancels, raceCancel{tw, cancel})
	if w := rc.winner.Load(); w != nil && w != tw {
		cancel() // started after the race was decided
	}
}

// remove forgets tw's cancel function once its try has ended: after it
// returns, the race never calls it.
func (rc *race) remove(tw *tryWriter) {
	rc.mu.Lock()
	rc.cancels = slices.DeleteFunc(rc.cancels, func(c raceCancel) bool { return c.tw == tw })
	rc.mu.Unlock()
}

// claim makes tw the winner if there is none yet, and cancels the other
// tries. It reports whether tw is the winner. The winner writes the
// client writer's headers only after claim returns, that is after rc.mu
// was free: another (which copies them for a hedge) holds it.
func (rc *race) claim(tw *tryWriter) bool {
	if !rc.winner.CompareAndSwap(nil, tw) {
		return rc.winner.Load() == tw
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for _, c := range rc.cancels {
		if c.tw != tw {
			c.cancel()
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

// runRace runs the request's next try, first, with hedging armed (see
// race), on the request's goroutine; first's writer is tw, and its try
// began at start. It returns the outcome that decides the request: the
// winner's, or a failure when every try failed. refused is set when
// first refused the try and no hedge was sent: it never saw the request,
// and the caller picks another worker, as for any try.
func (h *Handler) runRace(w http.ResponseWriter, r *http.Request, rs *requestState, tw *tryWriter, first *worker, start time.Time, next caddyhttp.Handler) (res tryResult, refused bool) {
	rc := &rs.race
	rc.start(h, w, r, rs, next, h.hedgeDelay(rs, false))
	// the variables as they are before any try: a hedge starts from a
	// copy of these, while the first try may be changing them
	if vars, ok := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any); ok {
		if rs.vars == nil {
			rs.vars = make(map[string]any, len(vars))
		}
		maps.Copy(rs.vars, vars)
	}
	rc.arm()
	res = h.raceTry(r.Context(), start, first, tw, rc, rs.tries)
	v, coordinated := rc.handOver(res)
	if !coordinated {
		if res.refused {
			return res, true
		}
		h.record(res, false)
		v = raceVerdict{best: res, abort: res.abort}
	}
	if v.abort != nil {
		panic(v.abort)
	}
	if v.best.wk != nil {
		// the worker whose answer decides the request
		rs.last = v.best.wk
		rs.publish()
	}
	return v.best, false
}

// coordinate runs a race whose hedge delay passed before its first try
// ended, on the timer's goroutine: it sends the first hedge, one more each
// time the delay passes again without an answer (up to the hedge
// maximum), replaces a try that a breaker refused, and collects every
// try's outcome. It returns once every try has ended.
func (h *Handler) coordinate(rc *race) raceVerdict {
	rs := rc.rs
	running := 1 // the first try, on the request's goroutine
	var again *time.Timer
	var againC <-chan time.Time
	hedge := func() {
		if rc.winner.Load() != nil || h.hedgeDelay(rs, false) == 0 || !h.another(rc, true) {
			return
		}
		rs.hedges++
		h.metrics.hedge(rs.tried[len(rs.tried)-1])
		running++
		if again == nil {
			again = time.NewTimer(rc.delay)
			againC = again.C
		} else {
			again.Reset(rc.delay)
		}
	}
	hedge()
	var v raceVerdict
	for running > 0 {
		select {
		case res := <-rc.results:
			running--
			if res.refused {
				// its breaker refused it: that worker never saw the
				// request, so another one takes its place at once
				rs.refused(res.wk)
				if rc.winner.Load() == nil && h.another(rc, false) {
					running++
				}
				continue
			}
			h.record(res, false)
			if res.abort != nil {
				v.abort = res.abort
			}
			if v.best.tw == nil || better(res, v.best) {
				v.best = res
			}
		case <-againC:
			hedge()
		}
	}
	if again != nil {
		again.Stop()
	}
	return v
}

// another launches a try on a worker not tried yet, if there is one (and,
// for a hedge, if the retry budget allows it), and reports whether it did.
func (h *Handler) another(rc *race, hedge bool) bool {
	rs := rc.rs
	// the client writer's headers are as they were before any try until
	// a winner writes them, which waits for rc.mu (see claim)
	rc.mu.Lock()
	if rc.winner.Load() != nil {
		rc.mu.Unlock()
		return false
	}
	tw := newTryWriter(rc.w, rc.w.Header(), h.maxHeld)
	rc.mu.Unlock()
	wk := h.pickFresh(rc.r, tw, rs)
	if wk == nil || (hedge && !h.pool.Budget().TryRetry(time.Now())) {
		return false
	}
	rs.tries++
	rs.tried = append(rs.tried, wk)
	rs.publish()
	// each hedge gets its own copy of the request's variables:
	// reverse_proxy writes to them while preparing the request
	ctx := rc.r.Context()
	if rs.vars != nil {
		ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, maps.Clone(rs.vars))
	}
	attempt := rs.tries
	go func() { rc.results <- h.raceTry(ctx, time.Now(), wk, tw, rc, attempt) }()
	return true
}

// raceTry runs one try of a race on wk with writer tw, begun at start, and
// returns its outcome, numbered attempt; refused if the worker never saw
// the request (retired, full, or its breaker refused). A panic in the try
// is the request's, not the process's: it comes back as the outcome's
// abort, raised on the request's goroutine once the race is over.
func (h *Handler) raceTry(ctx context.Context, start time.Time, wk *worker, tw *tryWriter, rc *race, attempt int) (res tryResult) {
	entered, slot := false, false
	defer func() {
		if slot {
			wk.ReleaseSlot() // the try panicked
		}
		if entered {
			wk.leave()
		}
		if v := recover(); v != nil {
			h.logger.Error("panic in a hedged try", zap.String("worker", wk.ID), zap.Any("panic", v))
			res = tryResult{wk: wk, tw: tw, number: attempt, abort: v,
				cls: h.classifier.Classify(recovery.Attempt{Err: fmt.Errorf("panic: %v", v), Dialed: true, Wrote: true}, time.Now())}
		}
	}()
	err := errWorkerRetired
	if wk.enter() {
		entered = true
		err = recovery.ErrPoolExhausted // it filled up: refused
		if wk.TakeSlot() {
			slot = true
			var pass breaker.Pass
			if pass, err = wk.Breaker.Allow(); err == nil {
				tw.pass = pass
				res = h.try(ctx, start, wk, tw, rc.r, rc.rs, true, false, rc, rc.next)
			}
			wk.ReleaseSlot()
			slot = false
		}
		wk.leave()
		entered = false
	}
	if err != nil {
		res = tryResult{wk: wk, tw: tw, refused: true}
	}
	res.number = attempt
	return res
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
