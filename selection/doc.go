// Package selection holds Bifrost's latency- and load-aware selection policy:
// a per-upstream cost tracker and the Caddy selection policy module
// http.reverse_proxy.selection_policies.bifrost_p2c built on it.
//
// # Cost model
//
// A [Tracker] keeps, for one upstream:
//
//   - a peak-EWMA latency estimate, as in Finagle's and linkerd's
//     load balancers: an observation at or above the current estimate
//     replaces it at once (slowness is believed immediately); an
//     observation below it pulls the estimate towards it with the time
//     constant decay (default 1s), so good news is believed gradually,
//     but by at least a sixteenth of the way per answer, so that one
//     hiccup of a busy worker is forgotten within dozens of answers
//     rather than seconds. Without news, the estimate decays towards zero with the same time
//     constant: a worker that gets no traffic because it was slow is
//     eventually tried again, and one fast answer brings it back (see
//     [Tracker.Estimate] for the exact formula);
//   - the number of requests in flight;
//   - the start time of each in-flight request (exactly for up to 64
//     concurrent requests, see [Tracker.Start]), so that the age of the
//     oldest unanswered request is known at any instant.
//
// Its cost is
//
//	cost = (max(estimate, age of the oldest unanswered request)
//	        + failure share × 50ms) × (in-flight + 1)
//
// in nanoseconds × requests (the failure share is explained below). The age term is the hang detector: a worker
// whose requests pile up without answers sees its cost rise at once and
// keep rising, long before any timeout fires, while a worker that answers
// keeps its cost near its latency. [Tracker.Stuck] counts the requests
// older than a threshold, for callers that turn a hang into a failure.
//
// A worker with no observations yet has no estimate. [Tracker.Cost] then
// uses Settings.Initial (default 1ms); the P2C policy uses the estimate of
// the other candidate instead, so a new or reset worker competes on load
// alone and earns traffic at once.
//
// A failure records its latency like any answer, and makes the worker
// avoided for a while: its cost is multiplied so that it loses every
// comparison with a worker that is not, for 50ms after one failure,
// doubling with each consecutive failure up to 1s (Settings.FailurePenalty,
// Settings.MaxFailurePenalty). A fast failure (a refused connection, an
// instant 502) therefore never makes a broken worker look like the fastest
// one; a worker that keeps failing gets about one try per second; and one
// that has recovered serves again within a second.
//
// A success ends that avoidance, so on its own it would let a worker that
// fails a share of its requests (say 30%) keep a good part of its traffic
// between failures. Each outcome therefore also moves the worker's failure
// share a sixteenth of the way towards 1 (a failure) or 0 (a success), and
// the cost adds the share times the penalty (50ms) to the latency: a
// failure costs a client a retry, so a worker that fails 30% of the time
// costs about 15ms more per request than its latency says, and gets
// traffic only when its peers are that much busier. Without news the
// share decays with the time constant Settings.MaxFailurePenalty (1s), so
// a worker that traffic avoids is tried again within seconds
// ([Tracker.Forgive] clears it at once, for a worker that health checks
// have reinstated); the share
// of a worker that does not fail stays 0, at the price of one atomic load
// per answer. Breakers and isolation remain the tools that take a failing
// worker out; the cost only steers traffic.
//
// # Feeding a tracker
//
// The caller wraps each try: token := t.Start(now) before the request is
// sent, then exactly one of t.Done(token, ...) when the response headers
// arrive or the try fails, or t.Cancel(token, ...) when the try is
// abandoned without an answer (a cancelled hedge, a client that went away).
// Done must be called at the response headers, not after the body has been
// copied: a long download or an upgraded (WebSocket) connection is not an
// unanswered request, and counting it as one would keep the worker's cost
// high for as long as the stream lasts.
//
// # Concurrency
//
// Every Tracker method is lock-free (atomics only) and allocation-free, and
// safe for concurrent use. A nil *Tracker is valid: it records nothing and
// has no estimate, so callers need no nil checks. [Trackers], the registry
// keyed by dial address, reads without locks and copies its map on the rare
// writes. Nothing in this package starts a goroutine.
package selection
