package breaker

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Defaults applied by Settings.WithDefaults to zero fields. They are the
// CircuitBreaker(5, 3, 30s) of the original design.
const (
	// DefaultFailures is the number of consecutive failures that open a breaker.
	DefaultFailures uint32 = 5
	// DefaultSuccesses is the number of consecutive half-open successes that
	// close a breaker, and the number of probes let through at once.
	DefaultSuccesses uint32 = 3
	// DefaultMinRequests is the number of requests the window must hold before
	// Settings.FailureRatio is looked at.
	DefaultMinRequests uint32 = 10
	// DefaultTimeout is how long a breaker stays open before it lets probes through.
	DefaultTimeout = 30 * time.Second
)

const (
	// windowBuckets is the number of buckets the rolling window is cut into:
	// counts age out one tenth of the window at a time.
	windowBuckets = 10

	// maxWindow bounds the window so that the library's rounding of it to a
	// multiple of the bucket period cannot overflow. It is about 26 years.
	maxWindow = time.Duration(math.MaxInt64 / 11)
)

// Settings configures a Breaker. Zero values mean the defaults (see
// WithDefaults). Settings is a plain value, safe to copy; a Breaker keeps its
// own copy.
type Settings struct {
	// Failures is the number of consecutive failures that open the breaker.
	// Default: DefaultFailures.
	Failures uint32

	// FailureRatio, if greater than 0, also opens the breaker when
	// failures/(successes+failures) in the window reaches it, once the window
	// holds at least MinRequests completed requests. Excluded requests and
	// requests still in flight are not part of the ratio. It must be between
	// 0 and 1. Without a Window, the ratio covers everything since the breaker
	// last closed, so a Window is recommended with it.
	FailureRatio float64

	// MinRequests is the minimum number of completed, non-excluded requests in
	// the window before FailureRatio applies. Default: DefaultMinRequests.
	MinRequests uint32

	// Window is the rolling window over which the closed state counts
	// outcomes. It is cut into 10 buckets, so counts age out a tenth of the
	// window at a time. 0 means counts are cleared only when the state changes.
	Window time.Duration

	// Successes is the number of consecutive successes in the half-open state
	// that close the breaker. It is also the number of probe requests let
	// through in the half-open state. Default: DefaultSuccesses.
	Successes uint32

	// Timeout is how long the breaker stays open before it turns half-open.
	// Default: DefaultTimeout.
	Timeout time.Duration
}

// WithDefaults returns a copy of s in which every zero field that has a default
// is set to it. FailureRatio and Window have no default: 0 turns them off.
func (s Settings) WithDefaults() Settings {
	if s.Failures == 0 {
		s.Failures = DefaultFailures
	}
	if s.MinRequests == 0 {
		s.MinRequests = DefaultMinRequests
	}
	if s.Successes == 0 {
		s.Successes = DefaultSuccesses
	}
	if s.Timeout == 0 {
		s.Timeout = DefaultTimeout
	}
	return s
}

// Validate reports every invalid field of s, each error naming its field. It
// accepts zero values, which WithDefaults fills in.
func (s Settings) Validate() error {
	var errs []error
	// The negated comparison also catches NaN.
	if !(s.FailureRatio >= 0 && s.FailureRatio <= 1) {
		errs = append(errs, fmt.Errorf("failure_ratio must be between 0 and 1, got %v", s.FailureRatio))
	}
	if s.Window < 0 {
		errs = append(errs, fmt.Errorf("window must not be negative, got %v", s.Window))
	}
	if s.Window > maxWindow {
		errs = append(errs, fmt.Errorf("window must be at most %v, got %v", maxWindow, s.Window))
	}
	if s.Timeout < 0 {
		errs = append(errs, fmt.Errorf("timeout must not be negative, got %v", s.Timeout))
	}
	return errors.Join(errs...)
}

// sanitize returns s with defaults applied and with every value that Validate
// would reject replaced by a safe one, so that New and Update never fail.
func (s Settings) sanitize() Settings {
	s = s.WithDefaults()
	if !(s.FailureRatio >= 0 && s.FailureRatio <= 1) {
		s.FailureRatio = 0
	}
	if s.Window < 0 {
		s.Window = 0
	}
	if s.Window > maxWindow {
		s.Window = maxWindow
	}
	if s.Timeout < 0 {
		s.Timeout = DefaultTimeout
	}
	return s
}

// window returns the library's Interval and BucketPeriod for a rolling window
// of length w > 0. A window too short to be cut into buckets is a fixed one.
func window(w time.Duration) (interval, bucket time.Duration) {
	bucket = w / windowBuckets
	if bucket <= 0 {
		return w, 0
	}
	return bucket * windowBuckets, bucket
}

// readyToTrip reports whether counts taken in the closed state, right after a
// failure, should open the breaker.
func (s Settings) readyToTrip(c Counts) bool {
	if c.ConsecutiveFailures >= s.Failures {
		return true
	}
	if s.FailureRatio <= 0 {
		return false
	}
	// In 64 bits: the two 32-bit totals may add up past 2^32.
	completed := uint64(c.TotalSuccesses) + uint64(c.TotalFailures)
	if completed == 0 || completed < uint64(s.MinRequests) {
		return false
	}
	return float64(c.TotalFailures) >= s.FailureRatio*float64(completed)
}
