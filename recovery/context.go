package recovery

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"
)

// ErrorContext says where an error happened. It is a plain value; the
// Metadata map is shared by copies, so treat a recorded context as read-only.
type ErrorContext struct {
	Component string            // e.g. "proxy", "health", "admin"
	Operation string            // e.g. "attempt", "probe", "restart"
	Pool      string            // the pool (bifrost handler) name
	WorkerID  string            // the worker, usually its upstream address
	Metadata  map[string]string // small, bounded by caller
}

// ContextualError is a classified error with the context it happened in: the
// unit the error history stores and the admin API lists. It works with
// errors.Is and errors.As: it unwraps to Err, and it matches the sentinel of
// its kind (ErrTimeout, ErrThrottled, ...). A ContextualError is a value;
// it is safe for concurrent reads but not for concurrent modification.
type ContextualError struct {
	Err              error        // the underlying error (may be nil for status failures)
	Kind             Kind         // the class of failure
	Severity         Severity     // how serious it is
	Action           Action       // the recovery action chosen
	Message          string       // human-readable, length-capped by the manager
	Context          ErrorContext // where it happened
	Timestamp        time.Time    // when it happened
	RecoveryAttempts int          // recovery attempts made for the worker so far
	Attempt          int          // which try of the request (1-based), 0 if not request-bound
	Status           int          // upstream status, 0 if none
}

// message returns the human-readable description of e: its Message, else
// its underlying error, else its status.
func (e *ContextualError) message() string {
	switch {
	case e.Message != "":
		return e.Message
	case e.Err != nil:
		return e.Err.Error()
	case e.Status != 0:
		return "upstream status " + strconv.Itoa(e.Status)
	}
	if err := e.Kind.Err(); err != nil {
		return err.Error()
	}
	return "unknown error"
}

// Error returns "<kind> error on worker <id>: <message>", leaving out the
// worker part when there is no worker.
func (e *ContextualError) Error() string {
	var b strings.Builder
	b.WriteString(e.Kind.String())
	b.WriteString(" error")
	if e.Context.WorkerID != "" {
		b.WriteString(" on worker ")
		b.WriteString(e.Context.WorkerID)
	}
	b.WriteString(": ")
	b.WriteString(e.message())
	return b.String()
}

// Unwrap returns the underlying error.
func (e *ContextualError) Unwrap() error { return e.Err }

// Is reports whether target is the sentinel error of e's kind, so that
// errors.Is(err, ErrTimeout) holds for a timeout whatever its cause.
func (e *ContextualError) Is(target error) bool {
	s := e.Kind.Err()
	return s != nil && target == s
}

// contextualErrorJSON is the JSON form of a ContextualError.
type contextualErrorJSON struct {
	Time             time.Time         `json:"time"`
	Kind             string            `json:"kind"`
	Severity         string            `json:"severity"`
	Action           string            `json:"action"`
	Message          string            `json:"message"`
	Pool             string            `json:"pool"`
	Worker           string            `json:"worker"`
	Component        string            `json:"component"`
	Operation        string            `json:"operation"`
	Attempt          int               `json:"attempt"`
	Status           int               `json:"status"`
	RecoveryAttempts int               `json:"recovery_attempts"`
	Metadata         map[string]string `json:"metadata,omitempty"`
}

// MarshalJSON encodes e for the admin API, with the keys time, kind,
// severity, action, message, pool, worker, component, operation, attempt,
// status, recovery_attempts and (when not empty) metadata. The message falls
// back to the underlying error's text when Message is empty. It has a value
// receiver so that a ContextualError encodes the same way whether or not it
// is addressable.
func (e ContextualError) MarshalJSON() ([]byte, error) {
	return json.Marshal(contextualErrorJSON{
		Time:             e.Timestamp,
		Kind:             e.Kind.String(),
		Severity:         e.Severity.String(),
		Action:           e.Action.String(),
		Message:          e.message(),
		Pool:             e.Context.Pool,
		Worker:           e.Context.WorkerID,
		Component:        e.Context.Component,
		Operation:        e.Context.Operation,
		Attempt:          e.Attempt,
		Status:           e.Status,
		RecoveryAttempts: e.RecoveryAttempts,
		Metadata:         e.Context.Metadata,
	})
}

// UnmarshalJSON decodes the form MarshalJSON writes, so that clients in Go
// (the CLI, tests) can read the admin API's errors back. The underlying
// error is not carried by JSON; its text is in Message.
func (e *ContextualError) UnmarshalJSON(b []byte) error {
	var j contextualErrorJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	var err error
	*e = ContextualError{
		Message:          j.Message,
		Timestamp:        j.Time,
		Attempt:          j.Attempt,
		Status:           j.Status,
		RecoveryAttempts: j.RecoveryAttempts,
		Context: ErrorContext{
			Component: j.Component,
			Operation: j.Operation,
			Pool:      j.Pool,
			WorkerID:  j.Worker,
			Metadata:  j.Metadata,
		},
	}
	if e.Kind, err = ParseKind(j.Kind); err != nil {
		return err
	}
	if e.Severity, err = ParseSeverity(j.Severity); err != nil {
		return err
	}
	e.Action, err = ParseAction(j.Action)
	return err
}
