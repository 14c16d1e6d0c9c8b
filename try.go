package bifrost

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/recovery"
)

// errPerTryTimeout marks a try abandoned because its worker did not answer
// within retry.per_try_timeout.
var errPerTryTimeout = errors.New("worker did not answer within per_try_timeout")

// tryResult is the outcome of one try.
type tryResult struct {
	wk       *worker
	tw       *tryWriter
	cls      recovery.Classification
	err      error // what the worker's reverse_proxy returned
	status   int   // the upstream's status, 0 if none arrived
	errText  string
	canRetry bool
	latency  time.Duration
	end      time.Time // when the try ended
	number   int
	// refused is set when the worker's breaker refused a racing try,
	// which therefore never ran
	refused bool
	// abort is reverse_proxy's http.ErrAbortHandler panic for a response
	// that failed mid-stream after reaching the client; it is re-raised
	// on the request's goroutine once the failure is recorded.
	abort any
}

// try sends the request to one worker and classifies the outcome; start
// is when the try began, for its latency. A failure response is held back
// when canRetry and it is retryable. In a race (rc not nil), a response
// that is not held back must also win the race to reach the client; a
// loser's response is discarded. In panic mode (the whole pool out) the
// latency tracker books a failure as an answer: when every worker fails
// alike a failure says nothing about this one against its peers, and
// counting it would keep the worker avoided after the pool recovers.
func (h *Handler) try(ctx context.Context, start time.Time, wk *worker, tw *tryWriter, r *http.Request, rs *requestState, canRetry, panicMode bool, rc *race, next caddyhttp.Handler) tryResult {
	// the breaker's outcome is booked when the response headers are in
	// (see bookHeaders), else once the try is classified below; a try
	// that panics counts as a failure
	defer tw.pass.Done(breaker.Failure)
	tw.method = r.Method
	tw.hook = tryHook{h: h, wk: wk, r: r, rs: rs, rc: rc, start: start, token: wk.tracker.Start(start), canRetry: canRetry, panicMode: panicMode}
	if rc != nil {
		tw.quiet = true // a racing try forwards no 1xx response
	}

	// a try that could go to another worker can be taken back from a
	// worker found hanging (see waitingTries)
	movable := rc == nil && canRetry && len(rs.set.workers) > 1 && slices.Contains(h.methods, r.Method)
	if rc != nil || h.perTry > 0 || movable {
		// each of these stops cancelling before the try releases tc
		tc := newTryContext(ctx)
		defer tc.release()
		ctx = tc
		if rc != nil {
			rc.add(tw, tc.Cancel)
			defer rc.remove(tw)
		}
		if movable {
			wk.waiting.add(tw, start, rs.body, tc.Cancel)
			defer wk.waiting.remove(tw)
		}
		if h.perTry > 0 {
			t := time.AfterFunc(h.perTry, func() {
				if tw.timeOut() {
					tc.Cancel()
				}
			})
			defer tc.stopTimer(t)
		}
	}

	// the try's request is a copy whenever the try changes it (its
	// context, or its body below): the caller's request stays as it came,
	// for handle_errors and the handlers after this one
	rr := r
	switch {
	case ctx == r.Context() && !rs.body.changes(r):
	case rc == nil || tw == &rs.firstTry:
		// a try at a time, or a race's first try, the only one on the
		// request's goroutine: its copy is kept in the request's state,
		// and nothing holds on to it once the try returns
		rs.tryReq = *r.WithContext(ctx)
		rr = &rs.tryReq
	default:
		rr = r.WithContext(ctx)
	}
	tw.hook.body = rs.body.forTry(rr)
	if tw.hook.body != nil {
		// the transport may go on reading after the try: not this body
		defer tw.hook.body.Close()
	}

	wk.Health.BeginRequest()
	ended := false
	defer func() {
		if !ended {
			// a panic that is not reverse_proxy's abort goes on up: the
			// try must not keep its place in the worker's in-flight count
			// or its latency tracker
			wk.Health.EndRequest()
			wk.tracker.Cancel(tw.hook.token, time.Now(), 0)
		}
	}()
	abort, err := h.serveWorker(wk, tw, rr, next)
	ended = true
	wk.Health.EndRequest()
	tw.unwind()
	now := time.Now()
	res := tryResult{wk: wk, tw: tw, err: err, canRetry: canRetry, latency: now.Sub(start), end: now, abort: abort}
	if abort != nil && !errors.Is(err, recovery.ErrWorker) {
		err = io.ErrUnexpectedEOF
		res.err = err
	}

	// reverse_proxy wraps every failure to dial in a DialError: such a
	// request never left. Any other error may have reached the upstream,
	// so it counts as sent (the classifier knows the exceptions, such as a
	// failed TLS verification). An httptrace would tell more, at the price
	// of reflection and nine allocations per request; this is enough for
	// safe-retry decisions.
	att := recovery.Attempt{Err: err, Status: tw.status, Header: tw.header, Dialed: true, Wrote: true}
	var bodyErr error // the client's body failed, which failed the try
	if err != nil {
		markDialError(&att)
		bodyErr = rs.body.clientError()
	}
	switch {
	case r.Context().Err() != nil:
		att.Err, att.Status = context.Canceled, 0
	case bodyErr != nil:
		// the client's fault (a malformed chunked body): it counts
		// against no worker and is not retried; the client gets a 400,
		// or reverse_proxy's answer to a body that timed out
		att.Err, att.Status = context.Canceled, 0
		var ne net.Error
		if !errors.As(bodyErr, &ne) || !ne.Timeout() {
			res.err = caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("reading the request body: %w", bodyErr))
		}
	case tw.timedOut.Load():
		why := errPerTryTimeout
		if tw.hung.Load() {
			why = errWorkerHung
		}
		att.Err, att.Status = timeoutError{why}, 0
		res.err = caddyhttp.Error(http.StatusGatewayTimeout, why)
	case rc != nil && err != nil && ctx.Err() != nil && rc.winner.Load() != tw:
		// a loser the race cancelled, its response on the way: the
		// broken copy is the race's doing, not the worker's; a failure
		// status it answered stands, anything else says nothing
		att.Err = context.Canceled
		if k := &tw.hook; k.classified && k.cls.Failure && k.status == tw.status {
			att.Err = nil
			tw.broken = tw.held // its body was cut: never replayed whole
		}
	case tw.status == 499 && err == nil:
		// reverse_proxy reports a cancelled round trip as 499: here, a
		// racing try that lost
		att.Err, att.Status = context.Canceled, 0
	case errors.Is(err, errHeldTooLarge):
		// the failure status stands; the body was abandoned
		att.Err = nil
	case err != nil && tw.status != 0 && !tw.passed && !tw.held:
		att.Status = 0
	}
	if k := &tw.hook; k.classified && att.Err == nil && att.Status == k.status {
		// decide classified this very answer when its headers came
		res.cls = k.cls
	} else {
		res.cls = h.classifier.Classify(att, now)
	}
	res.status = att.Status
	if tw.retryMatched && att.Err == nil {
		// retried as reverse_proxy retries a retry_match response: a
		// failure of its worker
		res.cls = recovery.Classification{Kind: recovery.KindHTTP, Severity: recovery.KindHTTP.Severity(),
			Action: recovery.ActionRetry, Failure: true, Sent: true}
	}
	tw.pass.Done(breakerOutcome(res.cls)) // unless booked with the headers
	if token := tw.hook.token; !tw.hook.answered {
		switch {
		case r.Context().Err() != nil, bodyErr != nil:
			// the client left, or its body failed: no news about the
			// worker
			wk.tracker.Cancel(token, now, now.Sub(start))
		case res.cls.Kind == recovery.KindCanceled:
			// a race loser that had not answered while another worker
			// did: no failure for the breaker, but slow news for the
			// selection policy, so a hanging worker stops winning picks
			wk.tracker.Done(token, now, now.Sub(start), true)
		default:
			wk.tracker.Done(token, now, now.Sub(start), res.cls.Failure && countsAgainst(res.cls) && !tw.hook.panicMode)
		}
	}
	if att.Err != nil {
		// an upstream's error may quote the request (its query string,
		// its credentials): the text that history and logs show may not
		res.errText = recovery.Truncate(recovery.Redact(att.Err.Error()), 200)
	}
	if tw.held && (att.Err != nil || errors.Is(err, errHeldTooLarge)) {
		// a held response whose body failed can only be replayed as
		// reverse_proxy would have passed it: cut short
		tw.broken = true
	}
	return res
}

// markDialError marks att as never sent if its error is reverse_proxy's
// DialError. It is apart from try because errors.As moves its target to
// the heap, which would cost every try, failed or not, an allocation.
func markDialError(att *recovery.Attempt) {
	var de reverseproxy.DialError
	if !errors.As(att.Err, &de) {
		return
	}
	att.Dialed, att.Wrote, att.Err = false, false, de
	if msg := de.Error(); strings.Contains(msg, "timeout") || strings.Contains(msg, "deadline exceeded") {
		// DialError has no Unwrap: keep a dial timeout a timeout
		att.Err = timeoutError{de}
	}
}

// tryHook is what a try's writer needs to decide, when the response
// headers arrive, whether the response is held back.
type tryHook struct {
	h        *Handler
	wk       *worker
	r        *http.Request
	rs       *requestState
	rc       *race     // nil unless the try races others
	body     *tryBody  // the try's request body, nil if none
	start    time.Time // when the try started
	token    int64     // of the worker's latency tracker
	canRetry bool
	// panicMode: the whole pool was out; failures do not count against
	// the worker's selection cost (see try)
	panicMode bool
	answered  bool // the upstream answered (set by decide)
	// cls is decide's classification of the answer with status, when
	// classified is set; try uses it rather than classifying again
	cls        recovery.Classification
	status     int
	classified bool
}

// decide is called once, when the final response headers of the try
// arrive: it feeds the latency tracker, then reports whether the response
// is held back, because it is a retryable failure or lost a race.
func (k *tryHook) decide(tw *tryWriter, status int) bool {
	now := time.Now()
	retryable := k.canRetry && k.rs.body.replayable()
	if retryable || status >= 500 {
		k.cls = k.h.classifier.Classify(recovery.Attempt{Status: status, Header: tw.header, Dialed: true, Wrote: true}, now)
		k.status, k.classified = status, true
	}
	if status != 499 { // reverse_proxy's mark of a cancelled round trip: no answer
		k.answered = true
		// the worker's latency runs from when it had the whole request:
		// a slow upload is the client's time, not the worker's
		var latency time.Duration
		if sent := k.body.sentAt(); sent.After(k.start) {
			latency = max(now.Sub(sent), 1)
		}
		// a 5xx counts against the worker's selection cost unless a
		// classify rule ignores or skips it (it counts against
		// nobody), as in its breaker and health
		failed := status >= 500 && !k.panicMode && k.cls.Failure && countsAgainst(k.cls)
		k.wk.tracker.Done(k.token, now, latency, failed)
	}
	if retryable {
		cls := k.cls
		retry := cls.Failure && k.h.retryable(k.r, cls, status)
		// a response the user's retry match asks to retry
		matched := !retry && !cls.Failure && k.rc == nil && k.h.retryMatchesResponse(k.r)
		// held only if another worker could take the request (racing
		// tries share the request's state with the race's loop: they
		// leave the choice of a next worker to it)
		if (retry || matched) && (k.rc != nil || k.h.anotherWorker(k.rs, k.wk)) {
			tw.retryMatched = matched
			return true
		}
	}
	if k.rc != nil {
		if !k.rc.claim(tw) {
			tw.discard.Store(true)
			return true
		}
		// the winner's response is about to be written: its deferred
		// header operations name its worker
		k.rc.rs.shown.setWorker(k.wk)
	}
	return false
}

// bookHeaders books the try's outcome in its worker's breaker once its
// final response headers are in, as reverse_proxy books its passive
// health: by the status, as classified, so that a stream, a WebSocket or
// a long download does not hold a half-open breaker's probe slot for its
// whole life. A body that fails later counts against the worker's health,
// not its breaker. A try that timed out, or a cancelled round trip (499),
// is booked when it ends instead.
func (tw *tryWriter) bookHeaders(status int) {
	k := &tw.hook
	// phase, not timedOut: the timer sets timedOut just after it wins
	if !tw.pass.Pending() || k.h == nil || status == 499 || tw.phase.Load() != phaseAnswered {
		return
	}
	if tw.retryMatched {
		tw.pass.Done(breaker.Failure) // see try
		return
	}
	if !k.classified || k.status != status {
		// try uses this classification too
		k.cls = k.h.classifier.Classify(recovery.Attempt{Status: status, Header: tw.header, Dialed: true, Wrote: true}, time.Now())
		k.status, k.classified = status, true
	}
	tw.pass.Done(breakerOutcome(k.cls))
}

// serveWorker runs the worker's own reverse_proxy handler. reverse_proxy
// aborts a response whose body fails mid-stream by panicking with
// http.ErrAbortHandler. When that response was held back, nothing reached
// the client, so the panic becomes an error and the request can be
// retried; when it was streaming to the client, the panic is returned so
// that the caller can record the failure and then abort as reverse_proxy
// intended.
func (h *Handler) serveWorker(wk *worker, tw *tryWriter, r *http.Request, next caddyhttp.Handler) (abort any, err error) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				// a panic in the worker's own proxy (a module, a
				// handle_response route): the worker failed, not its
				// upstream (KindWorker); a response that was streaming
				// is aborted as reverse_proxy aborts one
				h.logger.Error("panic in a worker's proxy", zap.String("pool", h.poolName),
					zap.String("worker", wk.ID), zap.Any("panic", v), zap.Stack("stack"))
				err = caddyhttp.Error(http.StatusInternalServerError, fmt.Errorf("%w: panic: %v", recovery.ErrWorker, v))
				if tw.passed {
					abort = http.ErrAbortHandler
				}
				return
			}
			if tw.passed {
				abort = v
				return
			}
			err = fmt.Errorf("response body from %s: %w", wk.Upstream, io.ErrUnexpectedEOF)
		}
	}()
	return nil, wk.proxy.Load().ServeHTTP(tw, r, next)
}

// timeoutError marks an error as a timeout for the classifier.
type timeoutError struct{ error }

func (timeoutError) Timeout() bool { return true }

func (timeoutError) Temporary() bool { return true }

func (e timeoutError) Unwrap() error { return e.error }

// retryable reports whether a failure may be retried: its condition is
// in retry.on, and either the request never reached the upstream or it
// may be repeated (retry.methods, retry.match: see mayRepeat).
func (h *Handler) retryable(r *http.Request, cls recovery.Classification, status int) bool {
	if !cls.Failure || cls.Action == recovery.ActionIgnore {
		return false
	}
	if skipsWorker(cls, status) {
		// whatever retry.on lists: the request belongs elsewhere
		return !cls.Sent || h.mayRepeat(r, status)
	}
	if !h.retryOn.matches(cls, status) {
		return false
	}
	return !cls.Sent || h.mayRepeat(r, status)
}

// skipsWorker reports whether a failure sends its request to another
// worker at once (when it can be sent again): the skip_worker and
// expand_pool actions, and a 421 Misdirected Request of kind config,
// which RFC 9110 lets any request retry on another connection, whatever
// its method.
func skipsWorker(cls recovery.Classification, status int) bool {
	switch {
	case cls.Action == recovery.ActionSkipWorker, cls.Action == recovery.ActionExpandPool:
		return true
	case cls.Kind == recovery.KindConfig && status == http.StatusMisdirectedRequest:
		return true
	}
	return false
}

// errHeldTooLarge aborts a held-back response whose body outgrew its cap.
var errHeldTooLarge = errors.New("held-back failure response exceeds max_held_response")

// tryWriter is the response writer of one try. Headers of a try that is
// then retried must never reach the client, and reverse_proxy copies the
// upstream's headers into the writer's map before WriteHeader, so a try
// writes its headers either
//
//   - into the client writer's own map (direct), which is put back as it
//     was before the try (base) if the response is held back or never
//     arrives: the usual case, a try at a time, costs no second map; or
//   - into a map of its own, copied to the client writer's when the
//     response passes: racing tries (hedging) must not share one map.
//
// When the response is written, the try's hook decides whether it is held
// back, because it is a failure that another try may replace, or passed
// through to the client untouched, after which every byte streams as
// usual.
//
// Informational (1xx) responses always pass through; a held body is capped
// at limit bytes, past which writes fail and the try is abandoned.
type tryWriter struct {
	caddyhttp.ResponseWriterWrapper

	header http.Header
	direct bool
	// base is the client writer's headers before a direct try, kept
	// without copying their values: a try only adds fields or appends
	// values (which never changes the slices kept here), and unwind puts
	// these back. Up to len(baseInline) fields are kept inline, more in
	// baseMap.
	baseN      int
	baseInline [4]headerField
	baseMap    http.Header
	method     string // of the request, for messages
	limit      int64
	quiet      bool // drop 1xx responses (a racing try)

	// hook, if set (its handler not nil), is called once with the final
	// status when the response headers arrive; it reports whether the
	// response is held back.
	hook tryHook
	// pass is the try's admission by its worker's breaker; the outcome
	// is booked with the final response headers (bookHeaders), or by
	// try when none arrive. Zero when the breaker was bypassed.
	pass breaker.Pass

	// discard is set when the try's response must never reach the
	// client: it timed out, or it lost a race. timedOut says which.
	discard  atomic.Bool
	timedOut atomic.Bool
	// hung is set with timedOut when the try was taken back from a
	// worker found hanging (see waitingTries).
	hung atomic.Bool
	// phase decides between the final response headers arriving and
	// per_try_timeout firing: whichever moves it from phaseWaiting first
	// wins, so a response is never passed to the client by a try that is
	// being abandoned.
	phase atomic.Int32

	status      int
	wroteHeader bool
	held        bool
	passed      bool
	// retryMatched is set when the response is held back because the
	// handler's retry match asked for a retry of it (not a failure).
	retryMatched bool
	// broken is set when a held response's body failed (or outgrew its
	// cap) before its end: replayed, it is cut short as reverse_proxy
	// would have cut it.
	broken bool
	buf    bytes.Buffer
}

// Phases of a try (tryWriter.phase).
const (
	phaseWaiting int32 = iota
	phaseAnswered
	phaseTimedOut
)

// timeOut abandons the try if its response headers have not arrived yet,
// and reports whether it did.
func (tw *tryWriter) timeOut() bool {
	if !tw.phase.CompareAndSwap(phaseWaiting, phaseTimedOut) {
		return false
	}
	tw.timedOut.Store(true)
	tw.discard.Store(true)
	return true
}

// newTryWriter returns a writer for one try to the client writer w with
// headers of its own, starting as a copy of base (w's headers before any
// try). Racing tries use it.
func newTryWriter(w http.ResponseWriter, base http.Header, limit int64) *tryWriter {
	return &tryWriter{
		ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w},
		header:                base.Clone(),
		limit:                 limit,
	}
}

// initOwn sets up a zero tryWriter as newTryWriter does, with header (empty)
// as its own headers: the first try of a race keeps them in its request's
// state. The values are w's slices, capped so that an append never writes
// into them: a try only adds fields or appends values (as initDirect
// assumes too).
func (tw *tryWriter) initOwn(w http.ResponseWriter, header http.Header, limit int64) {
	tw.ResponseWriterWrapper.ResponseWriter = w
	for name, values := range w.Header() {
		header[name] = values[:len(values):len(values)]
	}
	tw.header = header
	tw.limit = limit
}

// newDirectTryWriter returns a writer for one try to the client writer w
// that writes into w's headers, for a try that runs alone.
func newDirectTryWriter(w http.ResponseWriter, limit int64) *tryWriter {
	tw := new(tryWriter)
	tw.initDirect(w, limit)
	return tw
}

// initDirect sets up a zero tryWriter as newDirectTryWriter does.
func (tw *tryWriter) initDirect(w http.ResponseWriter, limit int64) {
	tw.ResponseWriterWrapper.ResponseWriter = w
	tw.header = w.Header()
	tw.direct = true
	tw.limit = limit
	if len(tw.header) > len(tw.baseInline) {
		tw.baseMap = maps.Clone(tw.header)
		return
	}
	for name, values := range tw.header {
		tw.baseInline[tw.baseN] = headerField{name, values}
		tw.baseN++
	}
}

// headerField is one header field, as a header map holds it.
type headerField struct {
	name   string
	values []string
}

// unwind puts the client writer's headers back as they were before a
// direct try whose response did not pass (held back, or none arrived).
func (tw *tryWriter) unwind() {
	if !tw.direct || tw.passed {
		return
	}
	real := tw.ResponseWriter.Header()
	if tw.held {
		// keep the held response's headers for a replay
		tw.header = real.Clone()
	}
	if tw.baseMap != nil {
		replaceHeader(real, tw.baseMap)
	} else {
		clear(real)
		for _, f := range tw.baseInline[:tw.baseN] {
			real[f.name] = f.values
		}
	}
	tw.direct = false // its headers are its own from now on
}

// Header returns the try's own header map.
func (tw *tryWriter) Header() http.Header { return tw.header }

// WriteHeader holds the response back or passes it to the client.
func (tw *tryWriter) WriteHeader(code int) {
	if tw.wroteHeader {
		return
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		if tw.quiet || tw.discard.Load() {
			return
		}
		if tw.direct {
			tw.ResponseWriter.WriteHeader(code)
			return
		}
		real := tw.ResponseWriter.Header()
		saved := real.Clone()
		replaceHeader(real, tw.header)
		tw.ResponseWriter.WriteHeader(code)
		replaceHeader(real, saved)
		return
	}
	tw.wroteHeader = true
	tw.status = code
	if !tw.phase.CompareAndSwap(phaseWaiting, phaseAnswered) {
		tw.discard.Store(true) // timed out just before
	}
	hold := tw.hook.h != nil && tw.hook.decide(tw, code)
	tw.bookHeaders(code)
	if tw.discard.Load() || hold {
		tw.held = true
		tw.unwind()
		return
	}
	tw.passed = true
	if !tw.direct {
		replaceHeader(tw.ResponseWriter.Header(), tw.header)
		// from now on the try writes the client's headers: its
		// trailers, set after the body, must reach the client too
		tw.header = tw.ResponseWriter.Header()
	}
	tw.ResponseWriter.WriteHeader(code)
}

// Write writes to the client, or to the held-back buffer within its cap.
func (tw *tryWriter) Write(p []byte) (int, error) {
	if !tw.wroteHeader {
		tw.WriteHeader(http.StatusOK)
	}
	if !tw.held {
		return tw.ResponseWriter.Write(p)
	}
	if int64(tw.buf.Len()+len(p)) > tw.limit {
		return 0, errHeldTooLarge
	}
	return tw.buf.Write(p)
}

// ReadFrom copies a body from r. It must be overridden: the promoted
// ReadFrom of the wrapper would write to the client even while the
// response is held back.
func (tw *tryWriter) ReadFrom(r io.Reader) (int64, error) {
	if !tw.wroteHeader {
		tw.WriteHeader(http.StatusOK)
	}
	if !tw.held {
		return tw.ResponseWriterWrapper.ReadFrom(r)
	}
	return io.Copy(writerOnly{tw}, r)
}

// writerOnly hides every method but Write, so that io.Copy cannot call
// back into ReadFrom.
type writerOnly struct{ io.Writer }

// Flush flushes a passed-through response; a held one has nothing to
// flush yet.
func (tw *tryWriter) Flush() {
	_ = tw.FlushError()
}

// FlushError implements the interface http.ResponseController looks for.
func (tw *tryWriter) FlushError() error {
	if !tw.passed {
		return nil
	}
	return http.NewResponseController(tw.ResponseWriter).Flush()
}

// replay writes a held-back response to the client, its trailers after
// its body. A broken one is cut short after what arrived of its body, the
// way reverse_proxy aborts a response that fails mid-stream.
func (tw *tryWriter) replay() error {
	tw.passed = true
	real := tw.ResponseWriter.Header()
	replaceHeader(real, tw.header)
	trailers := splitTrailers(real)
	tw.ResponseWriter.WriteHeader(tw.status)
	_, err := tw.ResponseWriter.Write(tw.buf.Bytes())
	maps.Copy(real, trailers)
	if tw.broken {
		if err == nil {
			_ = http.NewResponseController(tw.ResponseWriter).Flush()
		}
		panic(http.ErrAbortHandler)
	}
	return err
}

// splitTrailers removes from h the values of the trailers a held
// response set after its body (fields announced in its Trailer header,
// or named with http.TrailerPrefix) and returns them: they are sent
// after the body, as the upstream sent them.
func splitTrailers(h http.Header) http.Header {
	var out http.Header
	move := func(name string) {
		if vals, ok := h[name]; ok {
			if out == nil {
				out = make(http.Header)
			}
			out[name] = vals
			delete(h, name)
		}
	}
	for _, line := range h.Values("Trailer") {
		for name := range strings.SplitSeq(line, ",") {
			if name = http.CanonicalHeaderKey(strings.TrimSpace(name)); name != "" {
				move(name)
			}
		}
	}
	for name := range h {
		if strings.HasPrefix(name, http.TrailerPrefix) {
			move(name)
		}
	}
	return out
}

// replaceHeader makes dst hold exactly the fields of src.
func replaceHeader(dst, src http.Header) {
	clear(dst)
	maps.Copy(dst, src)
}

// Interface guards
var (
	_ http.ResponseWriter = (*tryWriter)(nil)
	_ http.Flusher        = (*tryWriter)(nil)
	_ io.ReaderFrom       = (*tryWriter)(nil)
)
