package faultserver

import (
	"fmt"
	"time"
)

// Mode is what a Server does with the requests it receives.
type Mode uint8

// The modes of a Server.
const (
	// OK answers 200 with a small body.
	OK Mode = iota
	// Down closes the listener and every connection: connects are
	// refused until the server leaves this mode and listens again on the
	// same port.
	Down
	// Status answers Behavior.Status, with a Retry-After header for 429
	// and 503.
	Status
	// Hang reads the request and never answers, until the client gives
	// up or the server leaves this mode (then it answers as the new mode
	// says).
	Hang
	// Slow answers like OK after Behavior.Delay.
	Slow
	// ResetBefore reads the request, then resets the connection (linger
	// 0) without a response byte.
	ResetBefore
	// ResetMidBody sends the status line, the headers and half of the
	// announced body, then resets the connection.
	ResetMidBody
	// Flaky fails a share Behavior.FailRatio of the requests with 502 (or
	// Behavior.Status) and answers the others like OK.
	Flaky
	// Junk answers bytes that are not HTTP and closes the connection.
	Junk
)

var modeNames = [...]string{
	OK:           "ok",
	Down:         "down",
	Status:       "status",
	Hang:         "hang",
	Slow:         "slow",
	ResetBefore:  "reset",
	ResetMidBody: "reset_mid_body",
	Flaky:        "flaky",
	Junk:         "junk",
}

// String returns the name of the mode.
func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// MarshalText encodes the mode as its name.
func (m Mode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// Behavior is the run-time behaviour of a Server. The zero value is a
// healthy server.
type Behavior struct {
	// Mode selects what the server does.
	Mode Mode `json:"mode"`
	// Status is the status of Status mode and the failure status of
	// Flaky mode (default 502).
	Status int `json:"status,omitempty"`
	// RetryAfter is sent, in whole seconds, with 429 and 503 answers
	// (default 1s).
	RetryAfter time.Duration `json:"retry_after,omitempty"`
	// Delay is the extra latency of Slow mode.
	Delay time.Duration `json:"delay,omitempty"`
	// FailRatio is the share of requests Flaky mode fails, in [0, 1].
	FailRatio float64 `json:"fail_ratio,omitempty"`
	// LyingHealth makes the health path answer 200 whatever the mode
	// (except Down, where nothing answers): a health check that says all
	// is well while traffic fails.
	LyingHealth bool `json:"lying_health,omitempty"`
}

// Healthy is the behaviour of a server that answers every request.
func Healthy() Behavior { return Behavior{} }

// Refusing is the behaviour of a server whose port is closed.
func Refusing() Behavior { return Behavior{Mode: Down} }

// Answering returns the behaviour of a server that answers every request
// with status code, and Retry-After: retryAfter on 429 and 503.
func Answering(code int, retryAfter time.Duration) Behavior {
	return Behavior{Mode: Status, Status: code, RetryAfter: retryAfter}
}

// SlowBy returns the behaviour of a server that answers d late.
func SlowBy(d time.Duration) Behavior { return Behavior{Mode: Slow, Delay: d} }

// FlakyBy returns the behaviour of a server that fails a share p of its
// requests with 502.
func FlakyBy(p float64) Behavior { return Behavior{Mode: Flaky, FailRatio: p} }

// String describes the behaviour in a few words, e.g. "status 429
// (Retry-After 2s)".
func (b Behavior) String() string {
	var s string
	switch b.Mode {
	case Status:
		s = fmt.Sprintf("status %d", b.status())
		if retryAfterApplies(b.status()) {
			s += fmt.Sprintf(" (Retry-After %s)", b.retryAfter())
		}
	case Slow:
		s = fmt.Sprintf("slow +%s", b.Delay)
	case Flaky:
		s = fmt.Sprintf("flaky %.0f%% %d", b.FailRatio*100, b.status())
	default:
		s = b.Mode.String()
	}
	if b.LyingHealth {
		s += ", health lies"
	}
	return s
}

// validate reports a behaviour that cannot be carried out.
func (b Behavior) validate() error {
	if b.Mode > Junk {
		return fmt.Errorf("unknown mode %d", uint8(b.Mode))
	}
	if b.Status != 0 && (b.Status < 200 || b.Status > 599) {
		return fmt.Errorf("status %d is not a final status code", b.Status)
	}
	if b.FailRatio < 0 || b.FailRatio > 1 {
		return fmt.Errorf("fail ratio %g is not in [0, 1]", b.FailRatio)
	}
	if b.Delay < 0 || b.RetryAfter < 0 {
		return fmt.Errorf("negative duration")
	}
	return nil
}

// status is the status of Status and Flaky modes.
func (b Behavior) status() int {
	if b.Status == 0 {
		if b.Mode == Status {
			return 500
		}
		return 502
	}
	return b.Status
}

// retryAfter is the Retry-After of 429 and 503 answers.
func (b Behavior) retryAfter() time.Duration {
	if b.RetryAfter <= 0 {
		return time.Second
	}
	return b.RetryAfter
}

func retryAfterApplies(code int) bool { return code == 429 || code == 503 }
