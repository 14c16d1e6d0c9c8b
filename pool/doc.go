// Package pool owns the state of Bifrost's pools and workers that outlives
// a configuration: each worker's breaker, health record and selection
// tracker, and each pool's isolation monitor, error history, retry budget
// and body-copy memory. It keeps them in a registry keyed by pool name and
// upstream address, so that a reload that keeps a worker keeps its state
// and two sites naming one pool share its workers.
//
// A pool has one loop, whatever the number of handlers (configs, sites)
// that use it: it starts with the pool's first User and stops with its
// last. The loop hands breaker changes and isolation timers to the pool,
// which logs, emits Caddy events and escalates a worker whose breaker
// keeps opening to isolation; it then hands each user what concerns its
// own workers (restarts, hang detection, gauges).
//
// The package also provides the read models (WorkerView, StatsView) and
// the operator actions (Act) that the admin API, the status page and the
// CLI share, and the one reading of an operator's request that the admin
// API and the status page both answer (Operate, WriteJSON). It knows
// nothing of the requests it proxies.
package pool
