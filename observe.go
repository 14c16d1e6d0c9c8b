package bifrost

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/recovery"
)

// Event names emitted through Caddy's events app.
const (
	eventBreakerOpened        = "breaker_opened"
	eventBreakerHalfOpen      = "breaker_half_open"
	eventBreakerClosed        = "breaker_closed"
	eventWorkerIsolated       = "worker_isolated"
	eventWorkerRestored       = "worker_restored"
	eventWorkerRecoveryFailed = "worker_recovery_failed"
)

// tickInterval is how often isolation expiries, outlier detection and the
// state gauges are looked at.
const tickInterval = 250 * time.Millisecond

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

	if cls.Kind != recovery.KindThrottled && wk.throttles.Load() != 0 {
		wk.throttles.Store(0) // an answer that is not a 429 ends a streak
	}
	if !cls.Failure {
		wk.health.RecordSuccess(now)
		if h.hedge != nil {
			h.pool.latency.observe(res.latency)
		}
		if panicMode && wk.breaker.State() != breaker.StateClosed {
			// the worker served while the whole pool was out: that is
			// the evidence the breaker waits for
			wk.breaker.Reset()
		}
		h.onResult(wk, false)
		return
	}

	// a 429 that may be about its client rather than the worker counts
	// against nobody: the client gets it as the upstream answered it
	clientLimit := false
	if cls.Kind == recovery.KindThrottled {
		if h.throttlesWorker(wk, res.status, panicMode) {
			wk.health.Throttle(now.Add(cls.Delay))
		} else {
			clientLimit = true
		}
	}
	if !clientLimit {
		wk.health.RecordFailure(now)
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
			WorkerID:  wk.id,
		},
		Timestamp: now,
		Attempt:   res.attempt,
		Status:    res.status,
	}
	h.pool.manager.Record(ce)
	h.metrics.failure(wk.id, cls)
	h.logFailure(res)

	switch cls.Action {
	case recovery.ActionIsolateWorker, recovery.ActionForceShutdown:
		if cls.Severity >= recovery.SeverityCritical {
			h.isolate(wk, health.ReasonCritical, cls.Kind.String())
		}
	case recovery.ActionReconnect:
		h.reconnect(wk)
	}
	if cls.Kind == recovery.KindIO {
		// a reset on a pooled connection: drop the worker's idle ones
		h.reconnect(wk)
	}
	if !clientLimit {
		h.onResult(wk, true)
	}
}

// throttleStreak is how many 429s in a row, to as many requests, show
// that a worker throttles everyone rather than one client.
const throttleStreak = 3

// throttlesWorker reports whether a throttled answer takes its worker out
// of rotation until its Retry-After. A 503 with Retry-After does. A 429 is
// as often about one client (a per-user rate limit) as about the server,
// so by default it does only when the worker's last throttleStreak
// answers were all 429s (any other answer ends a streak), and never when
// no other worker could serve: one client's burst must not put the pool
// into panic mode. With `retry { on 429 }` the operator declares 429s to
// be the worker's state: each one throttles its worker, as 503s do.
func (h *Handler) throttlesWorker(wk *worker, status int, panicMode bool) bool {
	if status != http.StatusTooManyRequests || h.retryOn.s429 || slices.Contains(h.retryOn.codes, status) {
		return true
	}
	if wk.throttles.Add(1) < throttleStreak || panicMode {
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
// breaker. A client that went away is nobody's fault; a throttled worker
// is answering, and throttling, not the breaker, deals with it.
func breakerOutcome(cls recovery.Classification) breaker.Outcome {
	switch {
	case cls.Kind == recovery.KindCanceled, cls.Kind == recovery.KindThrottled:
		return breaker.Excluded
	case cls.Failure:
		return breaker.Failure
	}
	return breaker.Success
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
	if c := h.logger.Check(lvl, "worker failure"); c != nil {
		c.Write(
			zap.String("pool", h.poolName),
			zap.String("worker", wk.id),
			zap.String("upstream", wk.upstream),
			zap.Stringer("kind", cls.Kind),
			zap.Stringer("severity", cls.Severity),
			zap.Stringer("action", cls.Action),
			zap.Duration("delay", cls.Delay),
			zap.Int("attempt", res.attempt),
			zap.Int("status", res.status),
			zap.String("error", res.errText),
		)
	}
}

// onResult tells the isolation monitor about a try's outcome (a worker on
// probation that fails goes straight back out).
func (h *Handler) onResult(wk *worker, failure bool) {
	if ev, ok := h.pool.monitor.OnResult(wk.health, failure); ok {
		h.emitHealth(ev)
	}
}

// isolate takes a worker out of rotation, unless max_percent forbids it.
func (h *Handler) isolate(wk *worker, reason health.Reason, detail string) {
	if ev, ok := h.pool.monitor.Isolate(wk.health, reason, detail); ok {
		h.emitHealth(ev)
	}
}

// reconnect drops a worker's idle connections, under the recovery
// manager's concurrency limit.
func (h *Handler) reconnect(wk *worker) {
	ht, ok := wk.proxy.Load().Transport.(*reverseproxy.HTTPTransport)
	if !ok || ht.Transport == nil {
		return
	}
	h.pool.manager.TryRecover(h.ctx, func(context.Context) error {
		ht.Transport.CloseIdleConnections()
		h.metrics.recovery(wk.id, recovery.ActionReconnect)
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
	h.pool.manager.TryRecover(h.ctx, func(ctx context.Context) error {
		if ctx.Err() != nil {
			return ctx.Err() // the config is going away
		}
		// a dynamic worker's proxies live in its own context, which
		// goes when it retires
		pctx := h.ctx
		if wk.dyn != nil {
			pctx = wk.dyn.ctx
		}
		rp, err := newWorkerProxy(h.proxyCfg, wk.up, wk)
		if err == nil {
			provisionMu.Lock()
			err = rp.Provision(pctx)
			provisionMu.Unlock()
		}
		if err != nil {
			h.recordCritical(wk.workerState, recovery.KindWorkerCreationFailed, fmt.Errorf("restarting worker: %w", err))
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
		h.metrics.recovery(wk.id, recovery.ActionRestartWorker)
		h.logger.Info("worker restarted", zap.String("pool", h.poolName), zap.String("worker", wk.id))
		return nil
	})
}

// recordCritical books an error that is not bound to a request, such as a
// worker that could not be provisioned.
func (h *Handler) recordCritical(ws *workerState, kind recovery.Kind, err error) {
	h.pool.manager.Record(recovery.ContextualError{
		Err:       err,
		Kind:      kind,
		Severity:  kind.Severity(),
		Action:    kind.SuggestedRecovery(),
		Message:   err.Error(),
		Context:   recovery.ErrorContext{Component: "provision", Operation: "worker", Pool: ws.pool, WorkerID: ws.id},
		Timestamp: time.Now(),
	})
	h.metrics.failure(ws.id, recovery.Classification{Kind: kind, Severity: kind.Severity()})
	h.logger.Error("worker failure",
		zap.String("pool", ws.pool), zap.String("worker", ws.id),
		zap.Stringer("kind", kind), zap.Stringer("severity", kind.Severity()), zap.Error(err))
}

// emit sends a Caddy event; Emit runs subscribers synchronously, so it is
// never called with a lock held.
func (h *Handler) emit(name string, data map[string]any) {
	if h.events != nil {
		h.events.Emit(h.ctx, name, data)
	}
}

// emitHealth logs, counts and emits an isolation transition; a worker
// that comes back is restarted, and its selection cost forgets the
// failures that got it isolated.
func (h *Handler) emitHealth(ev health.Event) {
	emitWorkerEvent(h.ctx, h.events, h.logger, ev)
	if ev.Type != health.EventRestored {
		return
	}
	for _, wk := range h.set.Load().workers {
		if wk.health == ev.Worker {
			wk.tracker.Forgive()
			h.restart(wk)
		}
	}
}

// startBackground starts the loops of this handler; each stops when ctx
// is done, and Cleanup waits for them.
func (h *Handler) startBackground(ctx context.Context) {
	h.goSafe(ctx, "breaker_changes", h.drainBreakerChanges)
	h.goSafe(ctx, "ticker", h.tick)
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

// drainBreakerChanges turns breaker transitions into logs, events,
// statistics and, when a breaker keeps tripping, isolation.
func (h *Handler) drainBreakerChanges(ctx context.Context) {
	threshold := int32(h.cfg.isolation.breakerTrips)
	for {
		select {
		case <-ctx.Done():
			return
		case ch := <-h.pool.changes:
			h.onBreakerChange(ch, threshold)
		}
	}
}

// onBreakerChange handles one breaker transition.
func (h *Handler) onBreakerChange(ch breakerChange, threshold int32) {
	ws := ch.ws
	fields := []zap.Field{zap.String("pool", ws.pool), zap.String("worker", ws.id),
		zap.Stringer("from", ch.from), zap.Stringer("to", ch.to)}
	data := map[string]any{"pool": ws.pool, "worker": ws.id, "upstream": ws.upstream, "from": ch.from.String()}
	h.metrics.breakerState(ws.id, ch.to)
	switch ch.to {
	case breaker.StateOpen:
		trips := ws.trips.Add(1)
		h.pool.manager.CountBreakerTrip()
		if at := ws.breaker.RetryAt(); !at.IsZero() {
			data["until"] = at.UTC().Format(time.RFC3339Nano)
		}
		h.logger.Warn("breaker opened", append(fields, zap.Int32("trips_in_a_row", trips))...)
		h.emit(eventBreakerOpened, data)
		if trips >= threshold {
			if wk := h.workerFor(ws); wk != nil {
				h.isolate(wk, health.ReasonBreaker, fmt.Sprintf("breaker opened %d times in a row", trips))
			}
		}
	case breaker.StateHalfOpen:
		h.logger.Info("breaker half-open", fields...)
		h.emit(eventBreakerHalfOpen, data)
	case breaker.StateClosed:
		ws.trips.Store(0)
		h.logger.Info("breaker closed", fields...)
		h.emit(eventBreakerClosed, data)
	}
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
		if wk.health.Isolated() {
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
		ev, ok := h.pool.monitor.Isolate(wk.health, reasonHang, msg)
		if !ok {
			continue // max_percent: booked once it can be acted on
		}
		kind := recovery.KindTimeout
		h.pool.manager.Record(recovery.ContextualError{
			Kind:      kind,
			Severity:  kind.Severity(),
			Action:    recovery.ActionIsolateWorker,
			Message:   msg,
			Context:   recovery.ErrorContext{Component: "health", Operation: "hang_detection", Pool: h.poolName, WorkerID: wk.id},
			Timestamp: now,
		})
		h.metrics.failure(wk.id, recovery.Classification{Kind: kind, Severity: kind.Severity()})
		h.emitHealth(ev)
	}
}

// answering reports whether wk itself still answers: it served a request
// after since (when its oldest unanswered request was sent) and within
// the hang threshold before now.
func (h *Handler) answering(wk *worker, since, now time.Time) bool {
	last := wk.health.LastSuccess()
	return last.After(since) && now.Sub(last) < h.hangAfter
}

// peersAnswering reports whether another worker answered a request after
// since, when the oldest unanswered request of wk was sent: the pool is
// answering, this worker is not.
func peersAnswering(workers []*worker, wk *worker, since time.Time) bool {
	for _, other := range workers {
		if other != wk && other.health.LastSuccess().After(since) {
			return true
		}
	}
	return false
}

// workerFor finds this handler's worker for a shared state.
func (h *Handler) workerFor(ws *workerState) *worker {
	for _, wk := range h.set.Load().workers {
		if wk.workerState == ws {
			return wk
		}
	}
	return nil
}

// tick runs isolation expiries and outlier detection, and refreshes the
// state gauges.
func (h *Handler) tick(ctx context.Context) {
	t := time.NewTicker(tickInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, ev := range h.pool.monitor.Tick() {
			h.emitHealth(ev)
		}
		if h.hedge != nil && h.hedge.Delay == 0 {
			h.pool.latency.refresh(h.hedge.Percentile)
		}
		now := time.Now()
		h.detectHangs(now)
		for _, wk := range h.set.Load().workers {
			h.metrics.workerGauges(wk)
		}
	}
}

// newChecker builds the active prober of this handler's workers. Each
// probe is a request for health.uri (GET unless health.method says
// otherwise) through the worker's own transport.
func (h *Handler) newChecker() (*health.Checker, error) {
	return h.cfg.probe.checker(h, h.workers)
}

// checker builds the prober of workers.
func (pc *probeConfig) checker(h *Handler, workers []*worker) (*health.Checker, error) {
	targets := make([]health.Target, 0, len(workers))
	for _, wk := range workers {
		pt, err := newProbeTarget(h.Health, wk.upstream)
		if err != nil {
			return nil, fmt.Errorf("health: worker %s: %w", wk.id, err)
		}
		targets = append(targets, health.Target{Worker: wk.health, Probe: h.probeFunc(wk, pt, pc)})
	}
	return health.NewChecker(pc.settings, targets, h.onProbe, h.logger.Named("health"))
}

// probeFunc returns the probe of one worker, sent to pt.
func (h *Handler) probeFunc(wk *worker, pt *probeTarget, pc *probeConfig) health.Probe {
	hc := h.Health
	maxBody, expect, bodyRe := pc.maxSize, pc.expect, pc.bodyRe
	// each probe goes through the worker's current transport (a restart
	// replaces it), so it tests what requests use, TLS settings included
	transport := func() http.RoundTripper {
		if rt := wk.proxy.Load().Transport; rt != nil {
			return rt
		}
		return http.DefaultTransport
	}
	client := &http.Client{
		Transport: roundTripperFunc(func(req *http.Request) (*http.Response, error) {
			return transport().RoundTrip(req)
		}),
		CheckRedirect: func(_ *http.Request, via []*http.Request) error {
			if !hc.FollowRedirects {
				return http.ErrUseLastResponse
			}
			if len(via) >= 10 {
				return errors.New("stopped after 10 redirects")
			}
			return nil
		},
	}
	return func(ctx context.Context) error {
		req, err := pt.request(ctx, hc, transport())
		if err != nil {
			return err
		}
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			return redactProbeError(err)
		}
		defer resp.Body.Close()
		if statusMatches(resp.StatusCode, expect) {
			// a passing probe is a latency sample, so that a worker
			// the policy avoids for being slow can show it is fast again
			wk.tracker.Observe(time.Now(), time.Since(start))
		}
		if !statusMatches(resp.StatusCode, expect) {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
			return fmt.Errorf("probe answered status %d", resp.StatusCode)
		}
		if bodyRe == nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
			return nil
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
		if err != nil {
			return err
		}
		if !bodyRe.Match(b) {
			return errors.New("probe body does not match expect_body")
		}
		return nil
	}
}

// redactProbeError removes the query of the probed URL from a probe's
// error. net/http reports a failed round trip as a *url.Error that quotes
// the whole URL, and a health URI's query may carry a token; the error
// goes on to isolation reasons, the error history, events, logs and the
// status page. The query is replaced, not dropped, so that the message
// still shows that the URL had one.
func redactProbeError(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	return &url.Error{Op: ue.Op, URL: redactQuery(ue.URL), Err: ue.Err}
}

// redactQuery replaces the query of a URL, if it has one, with
// "redacted".
func redactQuery(u string) string {
	if i := strings.IndexByte(u, '?'); i >= 0 {
		return u[:i] + "?redacted"
	}
	return u
}

// roundTripperFunc adapts a function to http.RoundTripper.
type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// statusMatches reports whether status is the expected code, or in the
// expected class when expect is 1-5.
func statusMatches(status, expect int) bool {
	if expect < 10 {
		return status/100 == expect
	}
	return status == expect
}

// onProbe escalates probe transitions: a worker whose probes fail is
// isolated; one whose probes pass again may come back.
func (h *Handler) onProbe(t health.Target, res health.ProbeResult) {
	if res.Err != nil {
		h.metrics.probe(t.Worker.ID(), false)
	} else {
		h.metrics.probe(t.Worker.ID(), true)
	}
	if !res.Changed {
		return
	}
	if !res.Healthy {
		msg := "probe failed"
		if res.Err != nil {
			msg = truncate(res.Err.Error(), 200)
		}
		h.pool.manager.Record(recovery.ContextualError{
			Err:       res.Err,
			Kind:      recovery.KindHealthCheckFailed,
			Severity:  recovery.KindHealthCheckFailed.Severity(),
			Action:    recovery.KindHealthCheckFailed.SuggestedRecovery(),
			Message:   msg,
			Context:   recovery.ErrorContext{Component: "health", Operation: "probe", Pool: t.Worker.Pool(), WorkerID: t.Worker.ID()},
			Timestamp: time.Now(),
		})
		h.metrics.failure(t.Worker.ID(), recovery.Classification{Kind: recovery.KindHealthCheckFailed, Severity: recovery.KindHealthCheckFailed.Severity()})
		if ev, ok := h.pool.monitor.Isolate(t.Worker, health.ReasonProbe, msg); ok {
			h.emitHealth(ev)
		}
		return
	}
	if ev, ok := h.pool.monitor.ProbeRecovered(t.Worker); ok {
		h.emitHealth(ev)
	}
}

// truncate cuts s to at most n bytes on a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}
