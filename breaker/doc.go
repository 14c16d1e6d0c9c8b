// Package breaker implements the per-worker circuit breakers of Bifrost.
//
// A Breaker wraps a circuit breaker from github.com/sony/gobreaker/v2
// without exposing any of its types. It has three states:
//
//   - closed: requests pass; failures are counted. Settings.Failures consecutive
//     failures, or (with Settings.FailureRatio) a failure ratio over the rolling
//     window, open the breaker.
//   - open: requests are refused with ErrOpen until Settings.Timeout has passed.
//   - half-open: up to Settings.Successes requests pass as probes; as many
//     consecutive successes close the breaker, and one failure opens it again.
//
// A request runs inside Do, which admits it or refuses it and books the
// Outcome it returns. Excluded outcomes (for example a client that went away)
// count against nobody.
//
// With the default rule alone (Settings.Failures consecutive failures, no
// FailureRatio, no Window), a closed breaker with no failure since its last
// success lets requests skip the library: a success costs one atomic add,
// and any other outcome is handed to the library as if it had admitted the
// request. Counts merges both. Only the rare interleaving differs: a success
// admitted before a failure and finishing after it does not end that
// failure's streak.
//
// The breaker keeps a lock-free mirror of its state, so Ready, OpenedAt, RetryAt
// and Trips never take the library's lock: they are cheap enough to call for every
// worker on every request. State changes are reported to an optional callback that
// runs while the library's lock is held; see New for what that callback may do.
//
// Reset, Trip and Update replace the underlying gobreaker atomically, so the
// request path takes no extra lock. Update lets a configuration reload change the
// settings of a surviving breaker while it keeps its state.
//
// The package does not know about HTTP, and it starts no goroutines.
package breaker
