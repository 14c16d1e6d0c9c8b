// Package breaker gives each Bifrost worker a circuit breaker: a thin
// wrapper around github.com/sony/gobreaker/v2.
//
// # What gobreaker does
//
// Each Breaker holds a gobreaker TwoStepCircuitBreaker, which is the state
// machine: it admits a request (Allow) and books its outcome later (the done
// function), so that a proxy can book a response when its headers are in
// rather than when its body ends. gobreaker keeps the three states and their
// counts:
//
//   - closed: requests pass; outcomes are counted, over a rolling window
//     when Settings.Window is set (Interval and BucketPeriod). ReadyToTrip
//     opens the breaker after Settings.Failures consecutive failures, or
//     when the failure ratio over the window reaches Settings.FailureRatio
//     with at least Settings.MinRequests completed requests.
//   - open: requests are refused with ErrOpen until Settings.Timeout has
//     passed; the first call after that turns it half-open.
//   - half-open: up to Settings.Successes requests pass as probes
//     (MaxRequests); as many consecutive successes close the breaker, one
//     failure opens it again; further requests get ErrTooManyRequests.
//
// Excluded outcomes (a client that went away) count against nobody
// (IsExcluded), and in the half-open state they free the slot they held.
// An outcome booked after the state changed counts for nothing, and so
// does, with a window, one whose request was let through in a bucket that
// has left the window since.
//
// # What the wrapper adds
//
//   - A lock-free mirror of the state, copied from gobreaker's
//     OnStateChange, for Ready, OpenedAt, RetryAt and Trips: selection reads
//     Ready for every worker on every request, and gobreaker's State takes
//     its lock. The mirror decides nothing; it only copies what gobreaker
//     decided.
//   - Outcomes as values (Success, Failure, Excluded) instead of errors, and
//     a Pass whose Done books an outcome once.
//   - AllowPanic, for a request sent while no worker of the pool is
//     available: closed and open breakers are bypassed, but a half-open
//     breaker's probe limit holds.
//   - Reset and Update. gobreaker cannot be put into a state, so both give
//     the breaker a new gobreaker instance, closed: Reset with the same
//     settings, Update only when a reload changed the settings (a reload
//     that did not keeps the instance, and so its exact state). Every change
//     of state, these included, reaches the callback given to New, in order.
//   - Settings.Validate, which names each bad field as the configuration
//     spells it. The package has no defaults: the caller owns them.
//
// The package does not know about HTTP, and it starts no goroutines.
package breaker
