//go:build bk_cur || bk_gob

package breaker

import (
	"errors"
	"math"
	"time"

	"github.com/sony/gobreaker/v2"
)

// fromGobreaker maps the library's state onto ours.
func fromGobreaker(s gobreaker.State) State {
	switch s {
	case gobreaker.StateHalfOpen:
		return StateHalfOpen
	case gobreaker.StateOpen:
		return StateOpen
	}
	return StateClosed
}

// errFailure and errExcluded carry an Outcome out of the function gobreaker's
// Execute runs: IsExcluded recognises errExcluded, and every other non-nil error
// is a failure.
var (
	errFailure  = errors.New("breaker: request failed")
	errExcluded = errors.New("breaker: request excluded")
)

// err returns the error that stands for o in the function Execute runs.
func (o Outcome) err() error {
	switch o {
	case Success:
		return nil
	case Excluded:
		return errExcluded
	}
	return errFailure
}

// isExcluded is the gobreaker IsExcluded hook.
func isExcluded(err error) bool {
	return err == errExcluded
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

// countsFrom converts the library's counts.
func countsFrom(c gobreaker.Counts) Counts {
	return Counts{
		Requests:             c.Requests,
		TotalSuccesses:       c.TotalSuccesses,
		TotalFailures:        c.TotalFailures,
		TotalExclusions:      c.TotalExclusions,
		ConsecutiveSuccesses: c.ConsecutiveSuccesses,
		ConsecutiveFailures:  c.ConsecutiveFailures,
	}
}

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
	// maxWindow bounds the window so that the library's rounding of it to a
	// multiple of the bucket period cannot overflow. It is about 26 years.
	maxWindow = time.Duration(math.MaxInt64 / 11)
)

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
