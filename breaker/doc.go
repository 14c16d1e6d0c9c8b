// Package breaker implements the per-worker circuit breakers of Bifrost.
//
// A Breaker has three states:
//
//   - closed: requests pass; outcomes are counted. Settings.Failures
//     consecutive failures, or (with Settings.FailureRatio) a failure ratio
//     over the rolling window, open the breaker.
//   - open: requests are refused with ErrOpen until Settings.Timeout has
//     passed.
//   - half-open: up to Settings.Successes requests pass as probes; as many
//     consecutive successes close the breaker, and one failure opens it again.
//
// A request runs inside Do, which admits or refuses it and books the Outcome
// it returns. Excluded outcomes (a client that went away) count against
// nobody. Every change of state is reported, in order, to a callback given to
// New, called under the breaker's lock (see New).
//
// The package has no defaults. New and Update take complete Settings and
// return the error of Settings.Validate, which names each bad field; the
// caller owns the defaults and calls Validate with the rest of its
// configuration. Update applies a reload's settings to a breaker that keeps
// its state: an open breaker stays open, a half-open one keeps its probes.
//
// A Breaker is a small state machine behind one mutex, with a lock-free
// mirror of its state for Ready, OpenedAt, RetryAt and Trips, which callers
// read for every worker on every request. It reads its clock only while open
// or with a window; tests give it their own clock (no sleeps).
//
// # Why not github.com/sony/gobreaker/v2
//
// Wrapping gobreaker takes a lock-free fast path (to meet the bookkeeping
// target) and provisional instances forced open and polled (to carry state
// across Update): workarounds of the library. Used plainly (Execute; TwoStepCircuitBreaker's Allow allocates its
// done function, one allocation per request), the library cannot be put into
// a state: a new breaker for new settings can only be forced open for a full
// new Timeout. A reload that changed the breaker block would then turn a
// half-open breaker open again, which the root counts as a trip in a row and,
// at the default breaker_trips of 2, isolates the worker; and an open
// breaker's period would restart. Its clock is time.Now, so its tests sleep.
// The own state machine keeps state exactly, and costs less.
//
// Measured on 2 cores shared with other work (load average 3 to 4), the
// three builds alternated round by round: the earlier wrapper ("wrapper"),
// gobreaker through Execute ("plain"), and this state machine ("own"); the
// prototypes are at commit 2fbfe52 (-tags bk_cur, -tags bk_gob). Medians of
// 11 rounds of the root's go test -run '^$' -bench Bookkeeping -benchmem .
// and 5 of go test -run '^$' -bench . -benchmem ./breaker/, in ns per
// request, every one 0 allocations; plain/own is the median of the rounds'
// ratios:
//
//	                               wrapper   plain    own   plain/own
//	Bookkeeping workers=3             462     708     515     1.33
//	Bookkeeping workers=300           516    1146     629     1.31
//	Bookkeeping workers=3 parallel    502     871     562     1.49
//	Do, closed                          8     138      23     6.3
//	Do, closed, parallel               13     147      24     6.1
//	Do with window and ratio          179     174     140     1.25
//
// Plain gobreaker misses the 1 µs bookkeeping target at 300 workers; the own
// machine is within the noise of the wrapper's fast path there. A second
// run of 9 rounds under heavier load (load average 6) gave plain/own 1.77,
// 1.44 and 1.08 for the three bookkeeping cases.
//
// The package does not know about HTTP, and it starts no goroutines.
package breaker
