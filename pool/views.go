package pool

import (
	"slices"
	"sort"
	"time"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/recovery"
)

// WorkerView is a worker as the admin API, the status page and the CLI
// show it.
type WorkerView struct {
	health.Snapshot
	// IsolatedByFleet is the instance of the fleet whose verdict
	// isolates the worker; empty when it is this instance's own.
	IsolatedByFleet string      `json:"isolated_by_fleet,omitempty"`
	Breaker         BreakerView `json:"breaker"`
	// Backup is set on a backup worker, which takes traffic only when
	// the pool's primaries cannot serve it.
	Backup bool `json:"backup,omitempty"`
}

// BreakerView is a breaker's state.
type BreakerView struct {
	State    breaker.State  `json:"state"`
	Counts   breaker.Counts `json:"counts"`
	Trips    uint64         `json:"trips"`
	OpenedAt time.Time      `json:"opened_at,omitzero"`
	RetryAt  time.Time      `json:"retry_at,omitzero"`
}

// ViewOf returns the view of w at now.
func ViewOf(w *Worker, now time.Time) WorkerView {
	snap := w.Health.Snapshot(now)
	return WorkerView{
		Snapshot:        snap,
		IsolatedByFleet: FleetAuthor(snap.IsolationReason),
		Breaker: BreakerView{
			State:    w.Breaker.State(),
			Counts:   w.Breaker.Counts(),
			Trips:    w.Breaker.Trips(),
			OpenedAt: w.Breaker.OpenedAt(),
			RetryAt:  w.Breaker.RetryAt(),
		},
		Backup: w.Backup.Load(),
	}
}

// State names the one state that describes the worker best, the most
// severe first: "recovery_failed", "isolated", "open" (its breaker),
// "throttled", "half_open", "unhealthy" (its probes fail) or "healthy".
// The status page and the CLI both describe a worker by it.
func (v WorkerView) State() string {
	switch {
	case v.RecoveryFailed:
		return "recovery_failed"
	case v.Isolated:
		return "isolated"
	case v.Breaker.State == breaker.StateOpen:
		return "open"
	case v.Throttled:
		return "throttled"
	case v.Breaker.State == breaker.StateHalfOpen:
		return "half_open"
	case !v.ProbeHealthy:
		return "unhealthy"
	}
	return "healthy"
}

// AllWorkers returns every worker of the running configs, sorted by id.
func AllWorkers() []*Worker { return registered(func(w *Worker) string { return w.ID }) }

// All returns every pool of the running configs, sorted by name.
func All() []*Pool { return registered(func(p *Pool) string { return p.Name }) }

// registered returns the values of type T in the registry, sorted by key.
func registered[T any](key func(T) string) []T {
	var out []T
	registry.Range(func(_, v any) bool {
		if x, ok := v.(T); ok {
			out = append(out, x)
		}
		return true
	})
	sort.Slice(out, func(i, j int) bool { return key(out[i]) < key(out[j]) })
	return out
}

// Named returns the pool called name, or nil.
func Named(name string) *Pool {
	for _, p := range All() {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// Lookup returns the worker with the given id, or nil.
func Lookup(id string) *Worker {
	for _, w := range AllWorkers() {
		if w.ID == id {
			return w
		}
	}
	return nil
}

// WorkerViews returns the views of every worker, or of one pool's.
func WorkerViews(pool string) []WorkerView {
	now := time.Now()
	out := []WorkerView{}
	for _, w := range AllWorkers() {
		if pool == "" || w.Pool == pool {
			out = append(out, ViewOf(w, now))
		}
	}
	return out
}

// StatsView is the answer of GET /bifrost/stats: the error statistics
// summed over pools, and per pool.
type StatsView struct {
	recovery.Statistics
	HealthyWorkers  int                  `json:"healthy_workers"`
	IsolatedWorkers int                  `json:"isolated_workers"`
	TotalWorkers    int                  `json:"total_workers"`
	Pools           map[string]PoolStats `json:"pools"`
}

// PoolStats is one pool's share of StatsView.
type PoolStats struct {
	recovery.Statistics
	HealthyWorkers  int `json:"healthy_workers"`
	IsolatedWorkers int `json:"isolated_workers"`
	TotalWorkers    int `json:"total_workers"`
	// DynamicError is the error of the pool's dynamic upstream source
	// while its lookups fail (the last workers are kept meanwhile).
	DynamicError string `json:"dynamic_error,omitempty"`
}

// Stats returns the statistics of the pools for which keep is true (nil:
// all of them).
func Stats(keep func(pool string) bool) StatsView {
	out := StatsView{
		Statistics: recovery.Statistics{BySeverity: map[string]uint64{}, ByKind: map[string]uint64{}},
		Pools:      map[string]PoolStats{},
	}
	for _, p := range All() {
		if keep != nil && !keep(p.Name) {
			continue
		}
		healthy, isolated, total := p.Monitor.Counts()
		ps := PoolStats{Statistics: p.Manager.Stats(), HealthyWorkers: healthy, IsolatedWorkers: isolated, TotalWorkers: total}
		if msg := p.DynamicErr.Load(); msg != nil {
			ps.DynamicError = *msg
		}
		out.add(p.Name, ps)
	}
	return out
}

// add counts the statistics of one pool into the totals.
func (v *StatsView) add(name string, ps PoolStats) {
	v.Pools[name] = ps
	v.TotalErrors += ps.TotalErrors
	v.Retries += ps.Retries
	v.RecoveryAttempts += ps.RecoveryAttempts
	v.RecoverySuccesses += ps.RecoverySuccesses
	v.BreakerTrips += ps.BreakerTrips
	for k, n := range ps.BySeverity {
		v.BySeverity[k] += n
	}
	for k, n := range ps.ByKind {
		v.ByKind[k] += n
	}
	v.HealthyWorkers += ps.HealthyWorkers
	v.IsolatedWorkers += ps.IsolatedWorkers
	v.TotalWorkers += ps.TotalWorkers
}

// Errors merges the histories of the pools for which keep is true (nil:
// all of them), newest first, as f filters them.
func Errors(f recovery.Filter, keep func(pool string) bool) []recovery.ContextualError {
	out := []recovery.ContextualError{}
	for _, p := range All() {
		if keep == nil || keep(p.Name) {
			out = append(out, p.Manager.Errors(f)...)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Timestamp.After(out[j].Timestamp) })
	if f.Limit > 0 && len(out) > f.Limit {
		out = out[:f.Limit]
	}
	return out
}

// NameOf returns the name of the pool u is a user of (see Attach), and
// whether it is one.
func NameOf(u User) (string, bool) {
	for _, p := range All() {
		p.mu.Lock()
		ok := slices.Contains(p.users, u)
		p.mu.Unlock()
		if ok {
			return p.Name, true
		}
	}
	return "", false
}
