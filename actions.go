package bifrost

import (
	"fmt"

	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/recovery"
)

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
// whose action is ignore, and a 429 that may be about one client (see
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
//     passed (its Retry-After, else at least a second).
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
	case cls.Action == recovery.ActionIgnore:
		return
	case cls.Action == recovery.ActionThrottle && !h.throttlesWorker(wk, res.status, panicMode):
		// the client gets the 429 as the upstream answered it
		return
	}
	wk.Health.RecordFailure(res.end)
	h.onResult(wk, true)
	switch cls.Action {
	case recovery.ActionThrottle:
		wk.Health.Throttle(res.end.Add(cls.Delay))
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
		h.isolate(wk, reason, detail)
	}
}
