package breaker

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/sony/gobreaker/v2"
)

// windowBuckets is the number of buckets the rolling window is cut into
// (gobreaker's BucketPeriod is a tenth of the window): counts age out one
// tenth of the window at a time.
const windowBuckets = 10

// maxWindow is the longest window handed to gobreaker, which rounds the
// window up to a whole number of buckets and would overflow near the
// largest duration. It is about 146 years.
const maxWindow = time.Duration(math.MaxInt64 / 2)

// Settings configures a Breaker. The package has no defaults: every field is
// used as given, and Validate says which values a Breaker accepts. Settings
// is a plain value, safe to copy and compare; a Breaker keeps its own copy.
// Each field maps onto gobreaker's Settings as its comment says.
type Settings struct {
	// Failures is the number of consecutive failures that open the breaker
	// (gobreaker's ReadyToTrip). At least 1.
	Failures uint32

	// FailureRatio, if greater than 0, also opens the breaker when
	// failures/(successes+failures) in the window reaches it, once the window
	// holds at least MinRequests completed requests (ReadyToTrip too).
	// Excluded requests and requests still in flight are not part of the
	// ratio. It must be between 0 and 1; 0 turns it off. Without a Window,
	// the ratio covers everything since the breaker last closed, so a Window
	// is recommended with it.
	FailureRatio float64

	// MinRequests is the minimum number of completed, non-excluded requests in
	// the window before FailureRatio applies; 0 means no minimum. Unused
	// without a FailureRatio.
	MinRequests uint32

	// Window is the rolling window over which the closed state counts
	// outcomes (gobreaker's Interval, with a BucketPeriod of a tenth of it:
	// counts age out a tenth of the window at a time). 0 means counts are
	// cleared only when the state changes.
	Window time.Duration

	// Successes is the number of consecutive successes in the half-open state
	// that close the breaker. It is also the number of probe requests let
	// through in the half-open state (gobreaker's MaxRequests, which is
	// both). At least 1.
	Successes uint32

	// Timeout is how long the breaker stays open before it turns half-open
	// (gobreaker's Timeout). Greater than 0.
	Timeout time.Duration
}

// Validate reports every invalid field of s, each error naming its field as
// the configuration spells it. New and Update call it, so a caller that
// checks its configuration with Validate gets no error from them.
func (s Settings) Validate() error {
	var errs []error
	if s.Failures == 0 {
		errs = append(errs, errors.New("failures must be at least 1"))
	}
	// The negated comparison also catches NaN.
	if !(s.FailureRatio >= 0 && s.FailureRatio <= 1) {
		errs = append(errs, fmt.Errorf("failure_ratio must be between 0 and 1, got %v", s.FailureRatio))
	}
	if s.Window < 0 {
		errs = append(errs, fmt.Errorf("window must not be negative, got %v", s.Window))
	}
	if s.Successes == 0 {
		errs = append(errs, errors.New("successes must be at least 1"))
	}
	if s.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("timeout must be greater than 0, got %v", s.Timeout))
	}
	return errors.Join(errs...)
}

// gobreaker returns gobreaker's settings for s, without OnStateChange (the
// Breaker adds its own). s must be valid.
func (s Settings) gobreaker(name string) gobreaker.Settings {
	window := min(s.Window, maxWindow)
	return gobreaker.Settings{
		Name:        name,
		MaxRequests: s.Successes,
		Interval:    window,
		// a window shorter than windowBuckets nanoseconds has no
		// buckets: gobreaker clears it whole when it has passed
		BucketPeriod: window / windowBuckets,
		Timeout:      s.Timeout,
		ReadyToTrip:  s.readyToTrip,
		IsExcluded:   isExcluded,
		// IsSuccessful is gobreaker's default: a nil error (Success)
	}
}

// readyToTrip reports whether counts taken in the closed state, right after a
// failure, should open the breaker: gobreaker's ReadyToTrip.
func (s Settings) readyToTrip(c gobreaker.Counts) bool {
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

// The errors an Outcome is booked with: gobreaker judges a request by the
// error it returned.
var (
	errFailure  = errors.New("failure")
	errExcluded = errors.New("excluded")
)

// err is the error that books o in gobreaker: nil for a Success (its
// default IsSuccessful), errExcluded for an Excluded outcome (see
// isExcluded), errFailure for anything else.
func (o Outcome) err() error {
	switch o {
	case Success:
		return nil
	case Excluded:
		return errExcluded
	}
	return errFailure
}

// isExcluded is gobreaker's IsExcluded: an Excluded outcome counts against
// nobody.
func isExcluded(err error) bool { return err == errExcluded }
