// Package health tracks the health of Bifrost's workers and decides when a
// worker is taken out of rotation and when it comes back.
//
// It has three parts:
//
//   - [WorkerHealth] is the per-worker record. The request path updates it
//     with atomics only (in-flight, requests, failures, consecutive failures,
//     throttling), and it also holds the worker's probe streaks and its
//     isolation record, so all of a worker's health survives a config reload
//     together with the record itself.
//   - [Checker] runs active probes, one goroutine per worker, and applies
//     hysteresis: a worker becomes probe-unhealthy after Fails consecutive
//     failed probes and probe-healthy again after Passes consecutive passes.
//   - [Monitor] makes the pool-level decisions: isolation with ejection times
//     that grow with each repeat, the max_percent limit, success-rate outlier
//     detection, reinstatement on probation with slow start, and the
//     recovery-failed state.
//
// # Isolation rules
//
// The n-th ejection of a worker lasts BaseTime * 2^(n-1), capped at MaxTime,
// with a random ± Jitter share applied (never above MaxTime); see
// [EjectionTime]. After DecayAfter without being isolated, a worker's
// ejection count drops by one, so an old incident stops lengthening new ones.
//
// Automatic isolation never takes more than [MaxIsolated] workers of a pool
// out of rotation, counting every isolated worker (operator isolations
// included); an operator may isolate beyond that limit.
//
// When its ejection time has passed, a worker is reinstated on probation (and
// only once its probe passes, when probes are configured). While on
// probation, a single failure isolates it again with a longer ejection time
// and counts as a failed recovery attempt; after MaxRecoveryAttempts failed
// attempts the worker is recovery-failed and stays out until a probe flips it
// back to healthy ([Monitor.ProbeRecovered]) or an operator restores it.
// Reinstated workers ramp their share of traffic up over SlowStart; see
// [SlowStartWeight].
//
// Success-rate outlier detection follows Envoy's algorithm: at most once per
// DetectionInterval, among the workers that served at least
// SuccessRateMinRequests requests in the window (and only when there are at
// least SuccessRateMinHosts of them), a worker whose success rate is below
// mean - SuccessRateStdevFactor*stdev is isolated; see [Monitor.Tick].
//
// # Events and locks
//
// Every isolation and reinstatement is one transition that produces exactly
// one [Event], returned to the caller; the package never calls back into the
// caller while holding a lock of its own, so the caller may emit Caddy events,
// log or update metrics freely. The only callback, the Checker's onResult, is
// called from the probing goroutine with no lock held.
//
// Inside the package the lock order is Monitor before WorkerHealth; a
// WorkerHealth never calls into a Monitor.
package health
