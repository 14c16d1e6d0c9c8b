package recovery

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Kind is the class of a failure seen by the proxy. Its zero value, KindNone,
// means "not a failure". Kind values are plain integers and safe for
// concurrent use; their text form (String, MarshalText) is the stable name used
// in configuration, the admin API, metrics labels and logs.
type Kind uint8

// The kinds of failure. The comment on each gives its text form and what
// produces it.
const (
	KindNone                 Kind = iota // "none": not a failure
	KindIO                               // "io": a connection broke under a written request
	KindHTTP                             // "http": a failure status
	KindConnection                       // "connection": the request could not be sent
	KindTimeout                          // "timeout": a dial, header, per-try timeout or a hang
	KindThrottled                        // "throttled": 429, or 503 with Retry-After
	KindHealthCheckFailed                // "health_check_failed": an active probe failed
	KindResourceLimit                    // "resource_limit_exceeded": the client's body passed its limit
	KindWorkerCreationFailed             // "worker_creation_failed": a worker's proxy did not provision
	KindIsolationViolation               // "isolation_violation": the upstream's certificate failed verification
	KindWorkerRecoveryFailed             // "worker_recovery_failed": reinstatements ran out
	KindCanceled                         // "canceled": the client went away
	KindConfig                           // "config": the proxy and the upstream disagree on how to talk
	KindWorker                           // "worker": the worker's own proxy failed, not the upstream
	KindPoolExhausted                    // "connection_pool_exhausted": the worker's concurrency limit is full

	numKinds = iota
)

// Default recovery delays, by how disruptive the failure is; see
// Kind.RecoveryDelay. A delay is how long ActionThrottle keeps the worker
// out when the answer names no Retry-After; the other actions do not wait
// on it, it is reported with the failure (logs, error history).
const (
	// DelayTransient is the delay for failures that usually clear on the next
	// try against another worker (connection, timeout): long enough to
	// avoid a tight loop, short enough to go unnoticed.
	DelayTransient = 100 * time.Millisecond

	// DelayThrottled is the delay for a throttled worker that did not say
	// when to come back (no valid Retry-After), and the least a throttle
	// action takes a worker out for.
	DelayThrottled = time.Second

	// DelayHealthCheck is the delay after a failed active health check.
	DelayHealthCheck = 5 * time.Second

	// DelayCritical is the delay of the critical kinds, which need an
	// operator, a passing probe or a re-provision to clear, and of
	// KindConfig, which needs a change of configuration.
	DelayCritical = 30 * time.Second
)

// kindInfo is one row of the taxonomy table.
type kindInfo struct {
	name     string
	severity Severity
	action   Action
	delay    time.Duration
	err      error
}

// Sentinel errors, one per failing kind. A *ContextualError matches the
// sentinel of its kind with errors.Is, so callers can test for a class of
// failure without knowing the concrete error.
var (
	ErrIO                   = errors.New("io error")
	ErrHTTP                 = errors.New("http error")
	ErrConnection           = errors.New("connection error")
	ErrTimeout              = errors.New("timeout")
	ErrThrottled            = errors.New("throttled")
	ErrHealthCheckFailed    = errors.New("health check failed")
	ErrResourceLimit        = errors.New("resource limit exceeded")
	ErrWorkerCreationFailed = errors.New("worker creation failed")
	ErrIsolationViolation   = errors.New("isolation violation")
	ErrWorkerRecoveryFailed = errors.New("worker recovery failed")
	ErrCanceled             = errors.New("canceled")
	ErrConfig               = errors.New("proxy and upstream disagree on the protocol")
	ErrWorker               = errors.New("worker proxy failed")
	ErrPoolExhausted        = errors.New("connection pool exhausted")
)

// kinds is the taxonomy, indexed by Kind.
var kinds = [numKinds]kindInfo{
	KindNone:                 {"none", SeverityNone, ActionNone, 0, nil},
	KindIO:                   {"io", SeverityLow, ActionReconnect, 0, ErrIO},
	KindHTTP:                 {"http", SeverityLow, ActionRetry, 0, ErrHTTP},
	KindConnection:           {"connection", SeverityLow, ActionRetry, DelayTransient, ErrConnection},
	KindTimeout:              {"timeout", SeverityLow, ActionRetry, DelayTransient, ErrTimeout},
	KindThrottled:            {"throttled", SeverityMedium, ActionThrottle, DelayThrottled, ErrThrottled},
	KindHealthCheckFailed:    {"health_check_failed", SeverityMedium, ActionIsolateWorker, DelayHealthCheck, ErrHealthCheckFailed},
	KindResourceLimit:        {"resource_limit_exceeded", SeverityHigh, ActionIgnore, 0, ErrResourceLimit},
	KindWorkerCreationFailed: {"worker_creation_failed", SeverityCritical, ActionNone, DelayCritical, ErrWorkerCreationFailed},
	KindIsolationViolation:   {"isolation_violation", SeverityCritical, ActionForceShutdown, DelayCritical, ErrIsolationViolation},
	KindWorkerRecoveryFailed: {"worker_recovery_failed", SeverityCritical, ActionIsolateWorker, DelayCritical, ErrWorkerRecoveryFailed},
	KindCanceled:             {"canceled", SeverityNone, ActionIgnore, 0, ErrCanceled},
	KindConfig:               {"config", SeverityHigh, ActionIsolateWorker, DelayCritical, ErrConfig},
	KindWorker:               {"worker", SeverityMedium, ActionRestartWorker, DelayTransient, ErrWorker},
	KindPoolExhausted:        {"connection_pool_exhausted", SeverityMedium, ActionSkipWorker, 0, ErrPoolExhausted},
}

// valid reports whether k is one of the declared kinds.
func (k Kind) valid() bool { return int(k) < numKinds }

// String returns the stable text name of k, such as "timeout", or
// "kind(N)" for an undeclared value.
func (k Kind) String() string {
	if !k.valid() {
		return fmt.Sprintf("kind(%d)", uint8(k))
	}
	return kinds[k].name
}

// Severity returns how serious a failure of kind k is. KindNone and
// KindCanceled have SeverityNone.
func (k Kind) Severity() Severity {
	if !k.valid() {
		return SeverityNone
	}
	return kinds[k].severity
}

// recoverable reports whether a failure of kind k is expected to clear by
// itself (low and medium severity), so that the request or the worker can be
// tried again. It is false for KindNone, KindCanceled and the high and
// critical kinds, which need a change of configuration, a re-provision or
// an operator.
func (k Kind) recoverable() bool {
	s := k.Severity()
	return s == SeverityLow || s == SeverityMedium
}

// SuggestedRecovery returns the default recovery action for k: what is
// done to the worker when a try fails with k and no classify rule names
// another action. A worker that keeps failing is isolated by its breaker,
// its probes and outlier detection, not by this table. It is ActionNone
// for KindNone and for KindWorkerCreationFailed, which is booked when a
// worker could not be built: there is no running worker to act on.
func (k Kind) SuggestedRecovery() Action {
	if !k.valid() {
		return ActionNone
	}
	return kinds[k].action
}

// RecoveryDelay returns the base delay before acting on a failure of kind k
// (or before sending more traffic to the worker that had it):
//
//	io, http                                0 (the retry backoff applies)
//	connection, timeout, worker             DelayTransient (100ms)
//	throttled                               DelayThrottled (1s), when there is no Retry-After
//	health_check_failed                     DelayHealthCheck (5s)
//	config and the critical kinds           DelayCritical (30s)
//	none, canceled, resource_limit_exceeded,
//	connection_pool_exhausted               0
func (k Kind) RecoveryDelay() time.Duration {
	if !k.valid() {
		return 0
	}
	return kinds[k].delay
}

// Err returns the sentinel error of kind k (ErrTimeout for KindTimeout, and
// so on), or nil for KindNone and undeclared values.
func (k Kind) Err() error {
	if !k.valid() {
		return nil
	}
	return kinds[k].err
}

// ParseKind returns the kind whose name is s ("timeout", "throttled",
// "none", ...), ignoring case. It is the inverse of Kind.String.
func ParseKind(s string) (Kind, error) { return parseName[Kind](kindNames, s) }

// MarshalText encodes k as its name.
func (k Kind) MarshalText() ([]byte, error) { return kindNames.marshal(uint8(k)) }

// UnmarshalText decodes a kind name, as ParseKind does.
func (k *Kind) UnmarshalText(b []byte) error { return unmarshalName(kindNames, b, k) }

// kindNames are the names of the kinds, from the taxonomy.
var kindNames = func() names {
	n := names{what: "error kind", short: "kind", all: make([]string, numKinds)}
	for k, ki := range kinds {
		n.all[k] = ki.name
	}
	return n
}()

// Severity is how serious a failure is. Its zero value, SeverityNone, is the
// severity of "no failure" and of a client cancellation. Severities are
// ordered: a larger value is more severe. Severity values are safe for
// concurrent use.
type Severity uint8

// The severities, from least to most severe.
const (
	SeverityNone     Severity = iota // "none"
	SeverityLow                      // "low": common operational failures
	SeverityMedium                   // "medium": resource trouble that recovers
	SeverityHigh                     // "high": needs intervention, the rest keeps running
	SeverityCritical                 // "critical": the worker must be shut down or isolated

	numSeverities = iota
)

var severityNames = names{what: "severity", short: "severity", all: []string{"none", "low", "medium", "high", "critical"}}

// String returns the name of s, such as "medium", or "severity(N)" for an
// undeclared value.
func (s Severity) String() string { return severityNames.name(uint8(s)) }

// ParseSeverity returns the severity whose name is s, ignoring case. It is
// the inverse of Severity.String.
func ParseSeverity(s string) (Severity, error) { return parseName[Severity](severityNames, s) }

// MarshalText encodes s as its name.
func (s Severity) MarshalText() ([]byte, error) { return severityNames.marshal(uint8(s)) }

// UnmarshalText decodes a severity name, as ParseSeverity does.
func (s *Severity) UnmarshalText(b []byte) error { return unmarshalName(severityNames, b, s) }

// Action is a recovery action: what is done to the worker whose try
// failed, beyond counting the failure. Whether the request itself is
// retried does not depend on the action (except ActionIgnore): it is
// retried when the proxy's retry conditions list the failure and the
// request is safe to send again. Action values are safe for concurrent
// use.
type Action uint8

// The recovery actions. The proxy carries each one out in one place (its
// dispatcher); the comments say what each does to the worker.
const (
	ActionNone          Action = iota // "none": no action chosen (use the kind's default)
	ActionRetry                       // "retry": nothing more: the failure counts against the worker
	ActionReconnect                   // "reconnect": also drop the worker's idle connections
	ActionRestartWorker               // "restart_worker": also re-provision the worker's proxy (bounded)
	ActionThrottle                    // "throttle": also send the worker no new request until its delay passes
	ActionIsolateWorker               // "isolate_worker": also take the worker out of rotation
	ActionIgnore                      // "ignore": counts against nobody and is not retried
	ActionSkipWorker                  // "skip_worker": counts against nobody; the request goes to another worker at once
	ActionExpandPool                  // "expand_pool": counts against nobody; the pool's backups may take the request
	ActionForceShutdown               // "force_shutdown": also stop the worker until an operator restores it

	numActions = iota
)

var actionNames = names{what: "recovery action", short: "action", all: []string{
	"none", "retry", "reconnect", "restart_worker", "throttle", "isolate_worker", "ignore",
	"skip_worker", "expand_pool", "force_shutdown",
}}

// String returns the name of a, such as "isolate_worker", or "action(N)" for an
// undeclared value.
func (a Action) String() string { return actionNames.name(uint8(a)) }

// ParseAction returns the action whose name is s, ignoring case. It is the
// inverse of Action.String.
func ParseAction(s string) (Action, error) { return parseName[Action](actionNames, s) }

// MarshalText encodes a as its name.
func (a Action) MarshalText() ([]byte, error) { return actionNames.marshal(uint8(a)) }

// UnmarshalText decodes an action name, as ParseAction does.
func (a *Action) UnmarshalText(b []byte) error { return unmarshalName(actionNames, b, a) }

// names are the names of an enumeration's values (Kind, Severity,
// Action), indexed by value.
type names struct {
	what  string // the enumeration in errors
	short string // the enumeration in the name of an undeclared value
	all   []string
}

// name returns the name of v, or "short(N)" for an undeclared value.
func (n names) name(v uint8) string {
	if int(v) >= len(n.all) {
		return fmt.Sprintf("%s(%d)", n.short, v)
	}
	return n.all[v]
}

// parseName returns the value whose name is s, ignoring case, or 0 and an
// error listing the valid names.
func parseName[T ~uint8](n names, s string) (T, error) {
	for i, name := range n.all {
		if strings.EqualFold(s, name) {
			return T(i), nil
		}
	}
	return 0, fmt.Errorf("unknown %s %q (valid: %s)", n.what, s, strings.Join(n.all, ", "))
}

// marshal returns the name of v, or an error for an undeclared value.
func (n names) marshal(v uint8) ([]byte, error) {
	if int(v) >= len(n.all) {
		return nil, fmt.Errorf("invalid %s %d", n.what, v)
	}
	return []byte(n.all[v]), nil
}

// unmarshalName sets *v to the value named b, as parseName does.
func unmarshalName[T ~uint8](n names, b []byte, v *T) error {
	x, err := parseName[T](n, string(b))
	if err != nil {
		return err
	}
	*v = x
	return nil
}
