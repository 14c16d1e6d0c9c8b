// Package recovery is Bifrost's error taxonomy and recovery policy: it
// classifies what happened on a try against an upstream, keeps a bounded
// history of what went wrong, and decides how (and how often) to retry.
//
// # Taxonomy
//
// Every failure has a Kind, which fixes its Severity, its default recovery
// Action and its base recovery delay:
//
//	kind                        severity   action          delay
//	io                          low        reconnect       0
//	http                        low        retry           0
//	connection                  low        retry           100ms
//	timeout                     low        retry           100ms
//	throttled                   medium     throttle        Retry-After, else 1s
//	health_check_failed         medium     isolate_worker  5s
//	resource_limit_exceeded     low        ignore          0
//	worker_creation_failed      critical   none            30s
//	isolation_violation         critical   isolate_worker  30s
//	worker_recovery_failed      critical   isolate_worker  30s
//	canceled                    none       ignore          0
//
// An Action is what is done to the worker whose try failed, beyond
// counting the failure against it: retry does nothing more, reconnect
// drops its idle connections, restart_worker re-provisions its proxy,
// throttle gives it no new request until the delay passes, isolate_worker
// takes it out of rotation; ignore holds the failure against nobody and
// is not retried. Whether any other failed request is retried is decided
// by the caller's retry conditions, not by the action. The delay matters
// to throttle; for the other actions it is only reported.
//
// Low and medium kinds are recoverable. A canceled request (the client
// went away) and a request body over its limit (resource_limit_exceeded)
// count against no worker. worker_creation_failed and
// worker_recovery_failed are booked by the caller about a worker, never
// given to a response.
//
// # Pieces
//
//   - Classifier.Classify turns the outcome of one try (an Attempt: error,
//     status, headers, and whether the request was sent) into a
//     Classification. It is pure and does not allocate on the success path.
//   - ContextualError is a classified error with where it happened; it works
//     with errors.Is against one sentinel per kind (ErrTimeout, ...).
//   - Manager keeps a bounded ring of ContextualErrors, counts errors,
//     retries, breaker trips and recoveries, and runs recovery work under a
//     concurrency limit.
//   - Policy and Schedule give the delays between the tries of a request,
//     on top of github.com/cenkalti/backoff/v4; Budget caps retries to a
//     share of requests so that an outage is not multiplied by retries.
//
// # Concurrency
//
// Kind, Severity, Action, Policy and a Classifier that is not modified are
// safe for concurrent use, as are Manager and Budget (Budget is lock-free).
// A Schedule belongs to one request and is not safe for concurrent use.
// Recovery goroutines started by Manager.TryRecover stop when their context
// is done; Manager.Wait waits for them.
//
// The package imports neither Caddy nor the other Bifrost packages.
package recovery
