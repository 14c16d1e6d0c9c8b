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
	// operator, a passing probe or a re-provision to clear.
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
	KindResourceLimit:        {"resource_limit_exceeded", SeverityLow, ActionIgnore, 0, ErrResourceLimit},
	KindWorkerCreationFailed: {"worker_creation_failed", SeverityCritical, ActionNone, DelayCritical, ErrWorkerCreationFailed},
	KindIsolationViolation:   {"isolation_violation", SeverityCritical, ActionIsolateWorker, DelayCritical, ErrIsolationViolation},
	KindWorkerRecoveryFailed: {"worker_recovery_failed", SeverityCritical, ActionIsolateWorker, DelayCritical, ErrWorkerRecoveryFailed},
	KindCanceled:             {"canceled", SeverityNone, ActionIgnore, 0, ErrCanceled},
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
// critical kinds, which need a re-provision or an operator.
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
//	connection, timeout                     DelayTransient (100ms)
//	throttled                               DelayThrottled (1s), when there is no Retry-After
//	health_check_failed                     DelayHealthCheck (5s)
//	the critical kinds                      DelayCritical (30s)
//	none, canceled, resource_limit_exceeded 0
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
func ParseKind(s string) (Kind, error) {
	for k := range kinds {
		if strings.EqualFold(s, kinds[k].name) {
			return Kind(k), nil
		}
	}
	names := make([]string, 0, numKinds)
	for _, ki := range kinds {
		names = append(names, ki.name)
	}
	return KindNone, fmt.Errorf("unknown error kind %q (valid: %s)", s, strings.Join(names, ", "))
}

// MarshalText encodes k as its name.
func (k Kind) MarshalText() ([]byte, error) {
	if !k.valid() {
		return nil, fmt.Errorf("invalid error kind %d", uint8(k))
	}
	return []byte(kinds[k].name), nil
}

// UnmarshalText decodes a kind name, as ParseKind does.
func (k *Kind) UnmarshalText(b []byte) error {
	v, err := ParseKind(string(b))
	if err != nil {
		return err
	}
	*k = v
	return nil
}

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

var severityNames = [numSeverities]string{"none", "low", "medium", "high", "critical"}

// String returns the name of s, such as "medium", or "severity(N)" for an
// undeclared value.
func (s Severity) String() string {
	if int(s) >= numSeverities {
		return fmt.Sprintf("severity(%d)", uint8(s))
	}
	return severityNames[s]
}

// ParseSeverity returns the severity whose name is s, ignoring case. It is
// the inverse of Severity.String.
func ParseSeverity(s string) (Severity, error) {
	for i, name := range severityNames {
		if strings.EqualFold(s, name) {
			return Severity(i), nil
		}
	}
	return SeverityNone, fmt.Errorf("unknown severity %q (valid: %s)", s, strings.Join(severityNames[:], ", "))
}

// MarshalText encodes s as its name.
func (s Severity) MarshalText() ([]byte, error) {
	if int(s) >= numSeverities {
		return nil, fmt.Errorf("invalid severity %d", uint8(s))
	}
	return []byte(severityNames[s]), nil
}

// UnmarshalText decodes a severity name, as ParseSeverity does.
func (s *Severity) UnmarshalText(b []byte) error {
	v, err := ParseSeverity(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

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

	numActions = iota
)

var actionNames = [numActions]string{
	"none", "retry", "reconnect", "restart_worker", "throttle", "isolate_worker", "ignore",
}

// String returns the name of a, such as "isolate_worker", or "action(N)" for an
// undeclared value.
func (a Action) String() string {
	if int(a) >= numActions {
		return fmt.Sprintf("action(%d)", uint8(a))
	}
	return actionNames[a]
}

// ParseAction returns the action whose name is s, ignoring case. It is the
// inverse of Action.String.
func ParseAction(s string) (Action, error) {
	for i, name := range actionNames {
		if strings.EqualFold(s, name) {
			return Action(i), nil
		}
	}
	return ActionNone, fmt.Errorf("unknown recovery action %q (valid: %s)", s, strings.Join(actionNames[:], ", "))
}

// MarshalText encodes a as its name.
func (a Action) MarshalText() ([]byte, error) {
	if int(a) >= numActions {
		return nil, fmt.Errorf("invalid recovery action %d", uint8(a))
	}
	return []byte(actionNames[a]), nil
}

// UnmarshalText decodes an action name, as ParseAction does.
func (a *Action) UnmarshalText(b []byte) error {
	v, err := ParseAction(string(b))
	if err != nil {
		return err
	}
	*a = v
	return nil
}
