package bifrost

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/pool"
	"github.com/bifrost-proxy/bifrost/recovery"
)

// record books the outcome of one try, which its breaker has booked
// already: health, error history, metrics, logs, and the escalations a
// failure calls for.
func (h *Handler) record(res tryResult, panicMode bool) {
	wk, cls, now := res.wk, res.cls, res.end
	h.metrics.request(wk, cls)
	h.metrics.latency(wk, res.latency)
	if cls.Kind == recovery.KindCanceled {
		return
	}

	if cls.Kind != recovery.KindThrottled && wk.throttles.n.Load() != 0 {
		wk.throttles.end() // an answer that is not throttled ends a run
	}
	if !cls.Failure {
		wk.Health.RecordSuccess(now)
		if h.hedge != nil {
			h.pool.Latency.Observe(res.latency)
		}
		if panicMode && wk.Breaker.State() == breaker.StateOpen {
			// the worker served while the whole pool was out, past its
			// open breaker: that is the evidence the breaker waits for
			// (a half-open breaker counted this try as its probe)
			wk.Breaker.Reset()
		}
		h.onResult(wk, false)
		return
	}

	ce := recovery.ContextualError{
		Kind:     cls.Kind,
		Severity: cls.Severity,
		Action:   cls.Action,
		Message:  failureMessage(res),
		Context: recovery.ErrorContext{
			Component: "proxy",
			Operation: "attempt",
			Pool:      h.poolName,
			WorkerID:  wk.ID,
		},
		Timestamp: now,
		Attempt:   res.number,
		Status:    res.status,
	}
	h.pool.Book(ce)
	h.logFailure(res)

	h.act(res, panicMode)
}

// throttleStreak is how many throttled answers in a row, to more than
// one client, show that a worker throttles everyone rather than one
// client.
const throttleStreak = 3

// minThrottle is the least time a throttle takes a worker out for, what
// its answer's Retry-After says (0, a date past) notwithstanding.
const minThrottle = recovery.DelayThrottled

// throttleRun is a worker's current run of throttled answers and whether
// they went to more than one client. It keeps the first answer's client
// only: no map of clients to bound.
type throttleRun struct {
	n       atomic.Int32 // answers in the run; 0 when there is none
	mu      sync.Mutex
	first   string // the client of the run's first answer; guarded by mu
	several bool   // the run's answers went to more than one client; guarded by mu
}

// add counts a throttled answer to client and reports whether the run
// shows the worker throttling everyone: throttleStreak answers in a row,
// to more than one client.
func (t *throttleRun) add(client string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n.Load() == 0 {
		t.first, t.several = client, false
	} else if client != t.first {
		t.several = true
	}
	return t.n.Add(1) >= throttleStreak && t.several
}

// end ends the run.
func (t *throttleRun) end() {
	t.mu.Lock()
	t.n.Store(0)
	t.mu.Unlock()
}

// clientOf identifies the client of r for throttling: its IP as Caddy
// sees it (trusted_proxies applied), else the peer's address.
func clientOf(r *http.Request) string {
	if r == nil {
		return ""
	}
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
		return ip
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}

// throttlesWorker reports whether a throttled answer to r takes its
// worker out of rotation until its Retry-After. A 429, or a 503 with
// Retry-After, is as often about one client (a per-user rate limit) as
// about the server, so by default it does only when the worker's last
// throttleStreak answers were all throttled and went to more than one
// client (any other answer ends a run), and never when no other worker
// could serve: neither one client's burst nor one request retried on
// every worker may put the pool into panic mode. With `retry { on 429 }`
// (or `on 503`) the operator declares those answers to be the worker's
// state, and so does a classify rule for the status (a throttle it names
// is the operator's word): each such answer throttles its worker.
func (h *Handler) throttlesWorker(wk *worker, r *http.Request, status int, panicMode bool) bool {
	if h.classifier.HasRule(status) {
		return true
	}
	switch status {
	case http.StatusTooManyRequests:
		if h.retryOn.s429 || slices.Contains(h.retryOn.codes, status) {
			return true
		}
	case http.StatusServiceUnavailable:
		if slices.Contains(h.retryOn.codes, status) {
			return true
		}
	default:
		return true
	}
	if !wk.throttles.add(clientOf(r)) || panicMode {
		return false
	}
	for _, other := range h.set.Load().workers {
		if other != wk && other.available() {
			return true
		}
	}
	return false
}

// breakerOutcome is what a try's classification means to its worker's
// breaker. An ignored failure (a client that went away, a body over its
// limit, a classify rule's ignore) is nobody's fault; a throttled worker
// is answering, and throttling, not the breaker, deals with it.
func breakerOutcome(cls recovery.Classification) breaker.Outcome {
	switch {
	case !countsAgainst(cls), cls.Kind == recovery.KindThrottled:
		return breaker.Excluded
	case cls.Failure:
		return breaker.Failure
	}
	return breaker.Success
}

// countsAgainst reports whether a failure's action holds it against its
// worker: every action does but ignore, skip_worker and expand_pool,
// which send the request elsewhere without blaming the worker.
func countsAgainst(cls recovery.Classification) bool {
	switch cls.Action {
	case recovery.ActionIgnore, recovery.ActionSkipWorker, recovery.ActionExpandPool:
		return false
	}
	return true
}

// failureMessage describes a failed try without request data beyond the
// method: no URL, header or body can carry a secret into the history.
func failureMessage(res tryResult) string {
	method := res.tw.method
	if res.status != 0 {
		return fmt.Sprintf("%s request answered with status %d", method, res.status)
	}
	return fmt.Sprintf("%s request failed: %s", method, res.errText)
}

// logFailure writes one structured entry per classified failure, at a
// level matching its severity.
func (h *Handler) logFailure(res tryResult) {
	wk, cls := res.wk, res.cls
	lvl := zapcore.DebugLevel
	switch cls.Severity {
	case recovery.SeverityMedium:
		lvl = zapcore.InfoLevel
	case recovery.SeverityHigh, recovery.SeverityCritical:
		lvl = zapcore.ErrorLevel
	}
	if cls.Kind == recovery.KindConfig {
		// logged once per worker and config, with the fix to make; the
		// error history and the metrics count every one
		if wk.configLogged.Swap(true) {
			lvl = zapcore.DebugLevel
		} else if c := h.logger.Check(zapcore.ErrorLevel, "proxy and upstream disagree on the protocol"); c != nil {
			c.Write(
				zap.String("pool", h.poolName),
				zap.String("worker", wk.ID),
				zap.String("upstream", wk.Upstream),
				zap.Int("status", res.status),
				zap.String("error", res.errText),
				zap.String("fix", configFix(res)),
			)
			return
		}
	}
	if c := h.logger.Check(lvl, "worker failure"); c != nil {
		c.Write(
			zap.String("pool", h.poolName),
			zap.String("worker", wk.ID),
			zap.String("upstream", wk.Upstream),
			zap.Stringer("kind", cls.Kind),
			zap.Stringer("severity", cls.Severity),
			zap.Stringer("action", cls.Action),
			zap.Duration("delay", cls.Delay),
			zap.Int("attempt", res.number),
			zap.Int("status", res.status),
			zap.String("error", res.errText),
		)
	}
}

// configFix says what to change when the proxy and an upstream disagree
// on the protocol (KindConfig), from what the try saw.
func configFix(res tryResult) string {
	e := res.errText
	switch {
	case res.status == http.StatusMisdirectedRequest:
		return "the upstream is not configured for this request's host or TLS server name: check header_up Host and the transport's tls_server_name"
	case strings.Contains(e, "does not look like a TLS handshake"):
		return "the upstream answers plain HTTP to a TLS handshake: remove tls from the transport (or use http:// upstreams), or serve TLS on the upstream"
	case strings.Contains(e, "tls:"):
		return "TLS versions, ciphers, ALPN protocols or client certificates do not match: compare the transport's tls settings and versions with the upstream's"
	}
	return "the upstream speaks another HTTP version: match the transport's versions (1.1, 2, h2c) to what the upstream serves"
}

// onResult tells the isolation monitor about a try's outcome (a worker on
// probation that fails goes straight back out).
func (h *Handler) onResult(wk *worker, failure bool) {
	if ev, ok := h.pool.Monitor.OnResult(wk.Health, failure); ok {
		h.emitHealth(ev)
	}
}

// isolate takes a worker out of rotation, unless max_percent forbids it.
func (h *Handler) isolate(wk *worker, reason health.Reason, detail string) {
	h.pool.Isolate(wk.Worker, reason, detail)
}

// reconnect drops a worker's idle connections, under the recovery
// manager's concurrency limit.
func (h *Handler) reconnect(wk *worker) {
	ht, ok := wk.proxy.Load().Transport.(*reverseproxy.HTTPTransport)
	if !ok || ht.Transport == nil {
		return
	}
	h.pool.Manager.TryRecover(h.ctx, func(context.Context) error {
		ht.Transport.CloseIdleConnections()
		h.metrics.recovery(wk.ID, recovery.ActionReconnect)
		return nil
	})
}

// provisionMu serializes the provisioning of restarted workers' proxies.
// Provisioning loads modules (the transport) through the config's
// caddy.Context, whose LoadModule records them in maps without a lock:
// two restarts at once, of this handler or of another one of the same
// config (as when several workers come back in one tick), would write
// them concurrently.
var provisionMu sync.Mutex

// configActive reports whether ctx is the context of the running config.
// Until it is, Caddy may still be provisioning other modules of the same
// config through it, so a restart must not load modules with it.
// (The handler's context wraps the config's root context with values, so
// the two are compared by the channel that closes when the config stops.)
func configActive(ctx caddy.Context) bool {
	active := caddy.ActiveContext()
	return ctx.Context != nil && active.Context != nil && active.Done() == ctx.Done()
}

// restart replaces a worker's reverse_proxy handler with a freshly
// provisioned one (a new transport and connection pool), under the
// recovery manager's concurrency limit. It runs when a worker comes back
// from an automatic isolation, so that it starts without the connections
// of the time it was failing. The replaced handler keeps serving the
// requests it has and is cleaned up with this config; restarts per worker
// are bounded by maxRestarts. Restarts are provisioned one at a time, and
// only once this handler's config is the running one; before that, the
// worker's idle connections are dropped instead.
func (h *Handler) restart(wk *worker) {
	if !configActive(h.ctx) {
		h.reconnect(wk)
		return
	}
	wk.mu.Lock()
	if wk.restarts >= maxRestarts {
		wk.mu.Unlock()
		h.reconnect(wk)
		return
	}
	wk.restarts++
	wk.mu.Unlock()
	h.pool.Manager.TryRecover(h.ctx, func(ctx context.Context) error {
		if ctx.Err() != nil {
			return ctx.Err() // the config is going away
		}
		rp, err := newWorkerProxy(h.proxyCfg, wk.up, wk)
		if err == nil {
			provisionMu.Lock()
			err = h.provisionProxy(wk, rp)
			provisionMu.Unlock()
		}
		if err != nil {
			h.recordCritical(wk.Worker, recovery.KindWorkerCreationFailed, fmt.Errorf("restarting worker: %w", err))
			return err
		}
		wk.mu.Lock()
		if wk.dyn != nil && wk.dyn.finalized {
			// it retired meanwhile: nothing will use the new proxy
			wk.mu.Unlock()
			return rp.Cleanup()
		}
		old := wk.proxy.Swap(rp)
		wk.retired = append(wk.retired, old)
		wk.mu.Unlock()
		if ht, ok := old.Transport.(*reverseproxy.HTTPTransport); ok && ht.Transport != nil {
			ht.Transport.CloseIdleConnections()
		}
		h.metrics.recovery(wk.ID, recovery.ActionRestartWorker)
		h.logger.Info("worker restarted", zap.String("pool", h.poolName), zap.String("worker", wk.ID))
		return nil
	})
}

// recordCritical books an error that is not bound to a request, such as a
// worker that could not be provisioned.
func (h *Handler) recordCritical(ws *pool.Worker, kind recovery.Kind, err error) {
	ce := pool.Incident(kind, ws.Ref(), "provision", "worker", err.Error())
	ce.Err = err
	h.pool.Book(ce)
	h.logger.Error("worker failure",
		zap.String("pool", ws.Pool), zap.String("worker", ws.ID),
		zap.Stringer("kind", kind), zap.Stringer("severity", kind.Severity()), zap.String("error", recovery.Redact(err.Error())))
}

// reasonClassified is the isolation reason of a worker taken out by the
// isolate_worker action of a failure below critical severity: a classify
// rule named the action (`status 418 http isolate_worker`). A critical
// failure (an upstream that fails TLS verification) is isolated with
// health.ReasonCritical.
const reasonClassified health.Reason = "classified_failure"

// act carries out the recovery action of a failed try on its worker, once
// the failure is booked (history, metrics, log). It is the one place where
// an action has an effect; the README's classification section describes
// the same list.
//
// Every failure counts against its worker (its health, outlier detection
// and, for a worker on probation, a failed reinstatement), except one
// whose action is ignore, and a 429 or 503 that may be about one client (see
// throttlesWorker). The breaker's count is decided before, by
// breakerOutcome. Then, by action:
//
//   - retry: nothing more.
//   - reconnect: the worker's idle connections are dropped, so that the
//     next tries dial afresh (the default of io: a reset on a pooled
//     connection).
//   - restart_worker: the worker's proxy is re-provisioned (a new
//     transport), as after a reinstatement, within maxRestarts per worker
//     and config; past that, or while the config is not yet running, its
//     idle connections are dropped instead.
//   - throttle: the worker gets no new request until the try's delay has
//     passed (its Retry-After, else a second; at least a second).
//   - isolate_worker: the worker is taken out of rotation for its next
//     ejection time, whatever the failure's severity, unless `isolation
//     max_percent` leaves no room or it is out already (a worker on
//     probation is sent back by its probation, which counts the failed
//     reinstatement).
//   - ignore: nothing; the proxy does not retry it either (see retryable).
//
// Whether the request is retried is not an action's business (except
// ignore's): `retry on`, the method and the body decide.
func (h *Handler) act(res tryResult, panicMode bool) {
	wk, cls := res.wk, res.cls
	switch {
	case !countsAgainst(cls):
		return
	case cls.Action == recovery.ActionThrottle && !h.throttlesWorker(wk, res.tw.hook.r, res.status, panicMode):
		// the client gets the answer as the upstream gave it
		return
	}
	wk.Health.RecordFailure(res.end)
	h.onResult(wk, true)
	switch cls.Action {
	case recovery.ActionThrottle:
		wk.Health.Throttle(res.end.Add(max(cls.Delay, minThrottle)))
		pool.SignalVerdicts()
	case recovery.ActionReconnect:
		h.reconnect(wk)
	case recovery.ActionRestartWorker:
		h.restart(wk)
	case recovery.ActionIsolateWorker:
		reason, detail := reasonClassified, cls.Kind.String()
		if cls.Severity >= recovery.SeverityCritical {
			reason = health.ReasonCritical
		}
		if res.status != 0 {
			detail = fmt.Sprintf("%s (status %d)", detail, res.status)
		}
		if cls.Kind == recovery.KindConfig {
			// it will not clear by itself: the longest ejection
			h.pool.IsolateLongest(wk.Worker, reasonConfig, configFix(res))
			return
		}
		h.isolate(wk, reason, detail)
	case recovery.ActionForceShutdown:
		h.forceShutdown(wk, res)
	}
}

// reasonConfig is the isolation reason of a worker whose upstream and
// proxy disagree on the protocol (KindConfig).
const reasonConfig health.Reason = "config_mismatch"

// forceShutdown stops a worker for good (the force_shutdown action): no
// new try goes to it, its idle connections are closed, and it stays out,
// whatever max_percent says, until an operator restores it or a config
// gives its place to another upstream. Its probes keep running.
func (h *Handler) forceShutdown(wk *worker, res tryResult) {
	detail := res.cls.Kind.String()
	switch {
	case res.status != 0:
		detail = fmt.Sprintf("%s (status %d)", detail, res.status)
	case res.errText != "":
		detail = fmt.Sprintf("%s: %s", detail, res.errText)
	}
	if !h.pool.Shutdown(wk.Worker, detail) {
		return // shut down already
	}
	if ht, ok := wk.proxy.Load().Transport.(*reverseproxy.HTTPTransport); ok && ht.Transport != nil {
		ht.Transport.CloseIdleConnections()
	}
	h.metrics.recovery(wk.ID, recovery.ActionForceShutdown)
}
