package bifrost

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/recovery"
	"github.com/bifrost-proxy/bifrost/selection"
)

// errNoWorker is returned (as a 503) when no worker could serve a request.
var errNoWorker = errors.New("no worker could serve the request")

// ServeHTTP proxies r to one worker after another until one serves it, a
// retry would be unsafe, or the tries are used up (see RetryConfig).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	ready := time.Now()
	h.pool.Budget().OnRequest(ready)
	// The body streams to the first try as the upstream reads it; a copy
	// is kept for a retry only when the request may need one.
	// (keepsCopy's header lookups only for a request with a body)
	body := newRequestBody(r, h.maxBody, &h.pool.Replay, hasBody(r) && h.keepsCopy(r))
	defer body.release()

	rs := h.newRequestState(r, body, ready)
	rs.set = h.currentSet(r.Context())
	h.chooseSet(rs)
	// Bifrost's placeholders are values of the request's replacer, set
	// whenever they change: deferred header operations see the try whose
	// response is written, and the access log the whole request.
	rs.shown.repl = repl
	err := h.serve(w, r, repl, rs, next)
	if body.overTotal.Load() {
		h.bodyOverTotal(rs)
	}
	if !rs.clientCanceled {
		h.pool.ClientRequests.Add(1)
		if rs.clientFailed {
			h.pool.ClientFailures.Add(1)
		}
	}
	h.releaseRequestState(rs)
	return err
}

// bodyOverTotal books that a request's body copy was dropped because the
// pool's body memory (retry.max_body_total) was full: the request went
// without a retry copy (resource_limit_exceeded, which counts against no
// worker).
func (h *Handler) bodyOverTotal(rs *requestState) {
	cls := recovery.NewClassification(recovery.KindResourceLimit, recovery.ActionNone, false)
	ce := recovery.ContextualError{
		Kind:     cls.Kind,
		Severity: cls.Severity,
		Action:   cls.Action,
		Message:  fmt.Sprintf("%s request body not kept for a retry: the pool's max_body_total is in use", rs.r.Method),
		Context: recovery.ErrorContext{
			Component: "proxy",
			Operation: "request_body",
			Pool:      h.poolName,
		},
		Timestamp: time.Now(),
	}
	if rs.last != nil {
		ce.Context.WorkerID = rs.last.ID
	}
	h.pool.Book(ce)
}

// serve runs the request loop of ServeHTTP.
func (h *Handler) serve(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, rs *requestState, next caddyhttp.Handler) error {
	var sched *recovery.Schedule
	var held *tryWriter

	for {
		res, ok := h.nextTry(w, r, rs, next)
		if !ok {
			break
		}
		cls := res.cls
		switch {
		case cls.Kind == recovery.KindCanceled:
			// the client went away (or its body stalled past its
			// timeout): nobody to blame, and as with reverse_proxy a
			// 499 for the logs, which reaches a client still there
			rs.clientCanceled = true
			if res.tw.passed || res.err != nil {
				return res.err
			}
			return caddyhttp.Error(499, context.Canceled)
		case !cls.Failure:
			if res.tw.held {
				return res.tw.replay()
			}
			return res.err
		case res.tw.passed:
			// bytes already reached the client: the answer stands
			rs.clientFailed = true
			return res.err
		}

		// a failure the client has not seen: try again if it is safe
		rs.shown.setFailure(cls)
		if cls.Action == recovery.ActionExpandPool {
			rs.expand() // the backups, if any, may take it
		}
		if res.status != 0 {
			rs.answered = append(rs.answered, res.wk)
		}
		// an upstream's answer held back (not one abandoned: timed out
		// or lost a race) can still be given to the client
		answer := res.tw.held && !res.tw.discard.Load()
		if answer && (held == nil || !res.tw.broken || held.broken) {
			// the latest upstream answer, a whole one if there is one
			held = res.tw
		}
		if res.status == 0 {
			rs.lastErr = res.err
		}
		if !res.tw.retryMatched && !h.retryable(r, cls, res.status) {
			if !answer {
				// may have been executed: reverse_proxy's own error stands
				rs.unsafeErr = res.err
			}
			break
		}
		if !res.canRetry || !rs.body.replayable() || !h.anotherWorker(rs, nil) {
			break
		}
		if !skipsWorker(cls, res.status) {
			// a skip goes to another worker at once, outside the
			// budget and the backoff: it is no failure of an upstream
			if !h.pool.Budget().TryRetry(time.Now()) {
				h.logDebug("retry budget exhausted", res.wk, rs, cls)
				break
			}
			if sched == nil {
				sched = h.policy.NewSchedule(r.Context())
			}
			delay, ok := sched.Next()
			if !ok {
				break
			}
			if err := recovery.Sleep(r.Context(), delay); err != nil {
				// the client went away during the backoff: a 499 for the
				// logs, as when it goes away during a try
				rs.clientCanceled = true
				return caddyhttp.Error(499, err)
			}
		}
		h.pool.Manager.CountRetry()
		h.metrics.retry(res.wk)
	}

	// No more tries. As with reverse_proxy, an upstream's answer stands
	// (the latest, failure or not), then the error of a try that was
	// unsafe to retry, then the last try's error, unless a fallback is
	// configured; a request that no worker could take degrades.
	rs.clientFailed = true
	if rs.tries == 0 {
		rs.publish() // its placeholders show 0 attempts
	}
	switch {
	case held != nil:
		return held.replay()
	case rs.unsafeErr != nil:
		return rs.unsafeErr
	case rs.lastErr != nil && h.Fallback == nil:
		return rs.lastErr
	}
	return h.degrade(w, r, repl, rs)
}

// anotherWorker reports whether a retry of the request has a worker to go
// to: one that is available, did not refuse it, and has not answered it
// already (asking a worker again that answered with a failure only loads
// it more; its answer is given instead). except is left out, if set.
func (h *Handler) anotherWorker(rs *requestState, except *worker) bool {
	set := rs.set
	if rs.full != nil {
		set = rs.full // a backup could take it
	}
	for _, wk := range set.workers {
		if wk != except && !slices.Contains(rs.skipped, wk) && !slices.Contains(rs.answered, wk) && wk.available() {
			return true
		}
	}
	return false
}

// nextTry makes one try of the request, or, when hedging applies, a race
// of tries, and returns the outcome that decides what happens next. It
// reports false when no worker can take the request.
func (h *Handler) nextTry(w http.ResponseWriter, r *http.Request, rs *requestState, next caddyhttp.Handler) (tryResult, bool) {
	// entered is the worker whose try is under way: a panic in it must
	// not keep a dynamic worker from retiring, nor hold its slot
	var entered *worker
	defer func() {
		if entered != nil {
			entered.ReleaseSlot()
			entered.leave()
		}
	}()
	for {
		// Every try starts from the client writer's headers as the
		// previous handlers left them: a try that is retried never
		// passed its own headers on, so nothing of it is left behind.
		// The selection policy writes into the try's headers too (the
		// cookie policy sets one), so that only the worker that answers
		// leaves its cookie.
		tw := h.newTry(w, rs)
		// The request's first try starts when it was ready: one clock
		// read less, and the selection's few hundred nanoseconds are
		// nothing next to a round trip.
		start := rs.ready
		if rs.tries > 0 || len(rs.skipped) > 0 {
			start = time.Now()
		}
		wk, panicMode := h.pick(r, tw, rs, start)
		if wk == nil {
			tw.unwind()
			return tryResult{}, false
		}
		rs.tries++
		rs.last = wk
		rs.tried = append(rs.tried, wk)
		rs.publish()
		canRetry := !panicMode && rs.tries < h.policy.Attempts && rs.body.replayable()
		if h.hedgeDelay(rs, panicMode) > 0 {
			res, refused := h.runRace(w, r, rs, tw, wk, start, next)
			if refused {
				tw.unwind()
				rs.refused(wk)
				continue
			}
			return res, true
		}
		if !wk.enter() {
			// a dynamic worker that retired since this request took
			// its snapshot of the workers: it never saw the request
			tw.unwind()
			rs.refused(wk)
			continue
		}
		if !wk.TakeSlot() {
			// its max_requests filled up since it was picked: the
			// request goes elsewhere, counting against nobody
			wk.leave()
			tw.unwind()
			rs.refused(wk)
			h.exhausted(rs, wk)
			continue
		}
		entered = wk
		var res tryResult
		var pass breaker.Pass
		var refused error
		if panicMode {
			// the whole pool is out: closed and open breakers are
			// bypassed, a half-open one keeps its probe limit
			pass, refused = wk.Breaker.AllowPanic()
		} else {
			pass, refused = wk.Breaker.Allow()
		}
		if refused == nil {
			// the try books its outcome when its response headers
			// are in, or when it ends without them
			tw.pass = pass
			res = h.try(r.Context(), start, wk, tw, r, rs, canRetry, panicMode, nil, next)
		}
		wk.ReleaseSlot()
		wk.leave()
		entered = nil
		if refused != nil {
			// half-open and at its limit, or it just opened: the
			// worker never saw the request
			tw.unwind()
			rs.refused(wk)
			continue
		}
		res.number = rs.tries
		h.record(res, panicMode)
		if res.abort != nil {
			panic(res.abort)
		}
		return res, true
	}
}

// newTry returns the writer of the request's next try: one with headers of
// its own when tries may race, else one that writes the client writer's
// headers; the request's first writer is kept in its state.
func (h *Handler) newTry(w http.ResponseWriter, rs *requestState) *tryWriter {
	switch {
	case !rs.firstTryUsed:
		rs.firstTryUsed = true
		if h.hedge != nil {
			if rs.firstHeader == nil {
				rs.firstHeader = make(http.Header)
			}
			rs.firstTry.initOwn(w, rs.firstHeader, h.maxHeld)
		} else {
			rs.firstTry.initDirect(w, h.maxHeld)
		}
		return &rs.firstTry
	case h.hedge != nil:
		return newTryWriter(w, w.Header(), h.maxHeld)
	}
	return newDirectTryWriter(w, h.maxHeld)
}

// requestState is what the request loop knows about one request.
type requestState struct {
	r        *http.Request
	set      *workerSet // the workers this request chooses from
	ready    time.Time  // when the request arrived, ready for its first try
	body     *requestBody
	tried    []*worker // workers that got a try
	answered []*worker // workers whose upstream answered with a failure
	triedBuf [4]*worker
	skipped  []*worker // workers whose breaker refused this request
	// exhausted is set once a full worker (connection_pool_exhausted) was
	// booked for this request
	exhausted bool
	// full is the whole set, backups included, while set is its primary
	// view (see chooseSet and expand)
	full   *workerSet
	tries  int
	hedges int
	last   *worker
	// unsafeErr is the error of a failed try that could not be retried
	// because the request may have been executed; it is returned as is.
	unsafeErr error
	// lastErr is the error of the latest try that got no answer.
	lastErr error
	// firstTry is the writer of the first try when it runs alone, kept
	// here to save an allocation per request.
	firstTry     tryWriter
	firstTryUsed bool
	// tryReq is the copy of the request that a try runs alone with (see
	// try), kept here to save an allocation per try.
	tryReq http.Request
	// race is the request's hedged race, when hedging is on (see race),
	// firstHeader its first try's own headers and vars the request's
	// variables as they were before the race's first try; the three are
	// kept, with their allocations, from one request to the next.
	race        race
	firstHeader http.Header
	vars        map[string]any

	// shown is what the placeholders show of the request.
	shown shownState

	// clientFailed and clientCanceled say how the request ended for its
	// client (see pool.Pool.ClientFailures).
	clientFailed, clientCanceled bool
}

// shownState is what Bifrost's placeholders show of a request: its tries
// so far and the worker of the latest (see publish; a racing try's
// response may read them while the race goes on), and its last failure.
// They are static values of the request's replacer, which is safe for
// concurrent use and outlives the request's state: the state is reused
// once the handler returns, and Caddy reads placeholders after that too
// (error routes, access logs). Keeping them there costs a request no
// allocation, where a replacer function of its own would cost two.
type shownState struct {
	repl *caddy.Replacer
	cls  recovery.Classification // changes only between tries
}

// Bifrost's placeholders.
const (
	placeholderWorker   = "http.bifrost.worker"
	placeholderAttempts = "http.bifrost.attempts"
	placeholderKind     = "http.bifrost.error_kind"
	placeholderSeverity = "http.bifrost.error_severity"
	placeholderAction   = "http.bifrost.recovery_action"
)

// setWorker shows wk as the request's worker, or none if wk is nil.
func (s *shownState) setWorker(wk *worker) {
	if wk == nil {
		s.repl.Delete(placeholderWorker)
		return
	}
	s.repl.Set(placeholderWorker, wk.IDValue)
}

// setFailure shows cls, a failure, as the request's last failure.
func (s *shownState) setFailure(cls recovery.Classification) {
	s.cls = cls
	s.repl.Set(placeholderKind, cls.Kind.String())
	s.repl.Set(placeholderSeverity, cls.Severity.String())
	s.repl.Set(placeholderAction, cls.Action.String())
}

// requestStates keeps the states of finished requests for reuse: a
// request's state, with its first try's writer, is the biggest
// allocation Bifrost makes per request, and garbage costs a proxy more
// than the allocation itself.
var requestStates = sync.Pool{New: func() any { return new(requestState) }}

// newRequestState returns the state of a new request, reused if the
// handler allows it (see Handler.reuseState).
func (h *Handler) newRequestState(r *http.Request, body *requestBody, ready time.Time) *requestState {
	var rs *requestState
	if h.reuseState {
		rs = requestStates.Get().(*requestState)
	} else {
		rs = new(requestState)
	}
	rs.r, rs.body, rs.ready = r, body, ready
	rs.tried = rs.triedBuf[:0]
	return rs
}

// releaseRequestState makes a finished request's state reusable. Nothing
// may use it afterwards: the handler returned, and nothing it started
// outlives it when reuseState is set.
func (h *Handler) releaseRequestState(rs *requestState) {
	if !h.reuseState {
		return
	}
	timer, header, vars := rs.race.timer, rs.firstHeader, rs.vars
	*rs = requestState{}
	clear(header)
	clear(vars)
	rs.race.timer, rs.firstHeader, rs.vars = timer, header, vars
	requestStates.Put(rs)
}

// refused takes back the try given to wk, whose breaker refused it: the
// worker never saw the request, and is skipped for the rest of it.
func (rs *requestState) refused(wk *worker) {
	rs.tries--
	if i := slices.Index(rs.tried, wk); i >= 0 {
		rs.tried = slices.Delete(rs.tried, i, i+1)
	}
	rs.skipped = append(rs.skipped, wk)
	rs.last = nil
	if n := len(rs.tried); n > 0 {
		rs.last = rs.tried[n-1]
	}
	rs.publish()
}

// publish makes the request's attempts and last worker visible to its
// placeholders, which racing tries may read while the request goes on.
func (rs *requestState) publish() {
	rs.shown.repl.Set(placeholderAttempts, int64(rs.tries))
	rs.shown.setWorker(rs.last)
}

// pick chooses the next worker: the selection policy's choice among
// available workers, preferring one not tried yet for this request, then
// any other available worker not tried yet, then an available worker that
// was tried (a pool of one can still retry). When no worker is available
// for the first try, it returns the least-bad worker with panicMode set:
// one try is better than failing everything, and a recovered pool serves
// again at once. A worker whose breaker refused the request (a half-open
// one at its probe limit) is no panic-mode choice.
func (h *Handler) pick(r *http.Request, w http.ResponseWriter, rs *requestState, now time.Time) (*worker, bool) {
	if rs.set == nil {
		rs.set = h.set.Load()
	}
	chosen := h.chooseIn(rs.set, r, w, now)
	if chosen != nil && !slices.Contains(rs.skipped, chosen) && !slices.Contains(rs.tried, chosen) {
		return chosen, false
	}
	if wk := h.cheapestUntried(rs, now); wk != nil {
		return wk, false
	}
	if rs.expand() {
		// no primary left to go to: the backups come in
		return h.pick(r, w, rs, now)
	}
	if chosen != nil && !slices.Contains(rs.skipped, chosen) && !slices.Contains(rs.answered, chosen) {
		return chosen, false
	}
	workers := rs.set.workers
	if rs.tries > 0 || len(workers) == 0 {
		return nil, false
	}
	var best, full *worker
	off := rand.IntN(len(workers))
	for i := range workers {
		wk := workers[(off+i)%len(workers)]
		if wk.dyn != nil && wk.dyn.closing.Load() {
			continue // retired since the snapshot
		}
		if slices.Contains(rs.skipped, wk) {
			continue // its breaker refused this request
		}
		if wk.Health.ShutDown() {
			continue // force_shutdown: out until an operator restores it
		}
		if wk.Full() {
			// never past max_requests; a full worker that is not out
			// makes the pool saturated, not out (no panic mode)
			if full == nil || !wk.out() {
				full = wk
			}
			continue
		}
		if best == nil || wk.Health.ConsecutiveFailures() < best.Health.ConsecutiveFailures() {
			best = wk
		}
	}
	if full != nil && (best == nil || !full.out()) {
		h.exhausted(rs, full)
		return nil, false
	}
	return best, true
}

// exhausted books, once per request, that a worker it could have gone to
// was full (connection_pool_exhausted): the request goes to another
// worker or, when none has room, gets the pool's 503. It counts against
// nobody: the error history and the errors metric show it, and the
// request's error placeholders name it.
func (h *Handler) exhausted(rs *requestState, wk *worker) {
	cls := recovery.NewClassification(recovery.KindPoolExhausted, recovery.ActionNone, false)
	if !rs.shown.cls.Failure {
		rs.shown.setFailure(cls)
	}
	if rs.exhausted {
		return
	}
	rs.exhausted = true
	ce := recovery.ContextualError{
		Kind:     cls.Kind,
		Severity: cls.Severity,
		Action:   cls.Action,
		Message:  fmt.Sprintf("%s request found the worker at its limit of %d requests in flight", rs.r.Method, wk.MaxRequests.Load()),
		Context: recovery.ErrorContext{
			Component: "proxy",
			Operation: "attempt",
			Pool:      h.poolName,
			WorkerID:  wk.ID,
		},
		Timestamp: time.Now(),
	}
	h.pool.Book(ce)
	h.logDebug("worker full", wk, rs, cls)
}

// chooseIn returns the selection policy's choice of worker of set for r at
// now, or nil. The default policy's choice is made over the workers
// themselves: the same draws and costs as its Select, without finding
// each worker's tracker by its address and each upstream's worker in a
// map.
func (h *Handler) chooseIn(set *workerSet, r *http.Request, w http.ResponseWriter, now time.Time) *worker {
	if !h.directP2C || !set.direct {
		if up := h.selector.Select(set.upstreams, r, w); up != nil {
			return set.byUpstream[up]
		}
		return nil
	}
	ws := set.workers
	ia, ib := selection.PickTwo(ws, (*worker).selectable)
	switch {
	case ia < 0:
		return nil
	case ib >= 0 && h.p2c.Cheaper(ws[ib].candidate(), ws[ia].candidate(), now):
		return ws[ib]
	}
	return ws[ia]
}

// cheapestUntried returns the available worker not tried or skipped yet
// for this request with the lowest latency-and-load cost, or nil.
func (h *Handler) cheapestUntried(rs *requestState, now time.Time) *worker {
	var best *worker
	var bestCost float64
	for _, wk := range rs.set.workers {
		if slices.Contains(rs.tried, wk) || slices.Contains(rs.skipped, wk) || !wk.available() {
			continue
		}
		if c := wk.tracker.Cost(now); best == nil || c < bestCost {
			best, bestCost = wk, c
		}
	}
	return best
}

// degrade answers a request that no worker could serve: the fallback
// response if configured, else a 503 error with Retry-After.
func (h *Handler) degrade(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, rs *requestState) error {
	retryAfter := h.soonestRecovery(rs.set.workers, time.Now())
	secs := strconv.Itoa(int(math.Ceil(retryAfter.Seconds())))
	h.metrics.degradedRequest()
	if fb := h.Fallback; fb != nil {
		hdr := w.Header()
		for name, vals := range fb.Headers {
			hdr.Del(name)
			for _, v := range vals {
				hdr.Add(name, repl.ReplaceKnown(v, ""))
			}
		}
		if hdr.Get("Retry-After") == "" {
			hdr.Set("Retry-After", secs)
		}
		status := fb.Status
		if status == 0 {
			status = http.StatusServiceUnavailable
		}
		w.WriteHeader(status)
		_, err := io.WriteString(w, repl.ReplaceKnown(fb.Body, ""))
		return err
	}
	w.Header().Set("Retry-After", secs)
	err := errNoWorker
	if cls := rs.shown.cls; cls.Failure {
		err = fmt.Errorf("%w after %d tries: last failure %s", errNoWorker, rs.tries, cls.Kind)
	}
	return caddyhttp.Error(http.StatusServiceUnavailable, err)
}

// soonestRecovery estimates when some worker will be able to serve again:
// the earliest breaker half-open time, isolation end or throttle end; at
// least one second.
func (h *Handler) soonestRecovery(workers []*worker, now time.Time) time.Duration {
	soonest := time.Duration(math.MaxInt64)
	consider := func(t time.Time) {
		if d := t.Sub(now); !t.IsZero() && d > 0 && d < soonest {
			soonest = d
		}
	}
	for _, wk := range workers {
		consider(wk.Breaker.RetryAt())
		consider(wk.Health.ThrottledUntil())
		snap := wk.Health.Snapshot(now)
		if snap.Isolated {
			consider(snap.IsolatedUntil)
		}
	}
	if soonest == time.Duration(math.MaxInt64) || soonest < time.Second {
		return time.Second
	}
	return soonest
}

// logDebug writes a debug entry about one request's retry loop.
func (h *Handler) logDebug(msg string, wk *worker, rs *requestState, cls recovery.Classification) {
	if c := h.logger.Check(zapcore.DebugLevel, msg); c != nil {
		c.Write(
			zap.String("pool", h.poolName),
			zap.String("worker", wk.ID),
			zap.Int("attempt", rs.tries),
			zap.Stringer("kind", cls.Kind),
		)
	}
}
