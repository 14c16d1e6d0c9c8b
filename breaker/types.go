package breaker

import (
	"fmt"
)

// State is the state of a Breaker, as gobreaker numbers its states. Its zero
// value is StateClosed. It is a plain value, safe for concurrent use.
type State uint8

// The states of a Breaker.
const (
	// StateClosed lets every request through and counts the outcomes.
	StateClosed State = iota
	// StateHalfOpen lets a limited number of probe requests through.
	StateHalfOpen
	// StateOpen refuses every request until the timeout has passed.
	StateOpen
)

// String returns the name of the state: "closed", "half_open" or "open", and
// "unknown" for a value that is not a state.
func (s State) String() string {
	switch s {
	case StateClosed:
		return "closed"
	case StateHalfOpen:
		return "half_open"
	case StateOpen:
		return "open"
	}
	return "unknown"
}

// MarshalText encodes the state as its name (see String), so it reads well in
// JSON. A value that is not a state is an error.
func (s State) MarshalText() ([]byte, error) {
	if s > StateOpen {
		return nil, fmt.Errorf("invalid breaker state %d", uint8(s))
	}
	return []byte(s.String()), nil
}

// UnmarshalText decodes a state from its name (see String).
func (s *State) UnmarshalText(text []byte) error {
	switch string(text) {
	case "closed":
		*s = StateClosed
	case "half_open":
		*s = StateHalfOpen
	case "open":
		*s = StateOpen
	default:
		return fmt.Errorf("unknown breaker state %q", text)
	}
	return nil
}

// Outcome is the result of a request let through by Allow, booked with
// Pass.Done. It is a plain value, safe for concurrent use.
type Outcome uint8

// The outcomes of a request.
const (
	// Success counts as a success.
	Success Outcome = iota
	// Failure counts as a failure. Any value that is not an Outcome counts as
	// a Failure too.
	Failure
	// Excluded counts as neither a success nor a failure, for example when the
	// client went away. It is tallied in Counts.TotalExclusions, and in the
	// half-open state it frees the probe slot it held.
	Excluded
)

// String returns the name of the outcome: "success", "failure" or "excluded",
// and "unknown" for a value that is not an outcome.
func (o Outcome) String() string {
	switch o {
	case Success:
		return "success"
	case Failure:
		return "failure"
	case Excluded:
		return "excluded"
	}
	return "unknown"
}

// Counts are a breaker's request counts, as gobreaker keeps them. In the
// closed state they cover the rolling window (Settings.Window), or everything
// since the breaker last closed if there is no window; they are cleared on
// every change of state. Counts is a snapshot: a plain value, safe to copy
// and share.
type Counts struct {
	// Requests is the number of admitted requests, including those still in
	// flight and those excluded.
	Requests uint32 `json:"requests"`
	// TotalSuccesses is the number of requests that succeeded.
	TotalSuccesses uint32 `json:"total_successes"`
	// TotalFailures is the number of requests that failed.
	TotalFailures uint32 `json:"total_failures"`
	// TotalExclusions is the number of requests whose outcome was Excluded.
	TotalExclusions uint32 `json:"total_exclusions"`
	// ConsecutiveSuccesses is the number of successes since the last failure.
	ConsecutiveSuccesses uint32 `json:"consecutive_successes"`
	// ConsecutiveFailures is the number of failures since the last success.
	ConsecutiveFailures uint32 `json:"consecutive_failures"`
}
