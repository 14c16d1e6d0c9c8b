package pool

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// latencySamples is the size of a pool's latency ring.
const latencySamples = 512

// LatencyRing keeps a pool's recent successful try latencies, and the
// percentile the automatic hedge delay uses, refreshed on the tick.
type LatencyRing struct {
	mu      sync.Mutex
	samples [latencySamples]time.Duration
	n       int // samples written, capped at len(samples)
	next    int

	percentile atomic.Int64 // nanoseconds; 0 until enough samples
}

// Observe adds one latency.
func (lr *LatencyRing) Observe(d time.Duration) {
	lr.mu.Lock()
	lr.samples[lr.next] = d
	lr.next = (lr.next + 1) % len(lr.samples)
	lr.n = min(lr.n+1, len(lr.samples))
	lr.mu.Unlock()
}

// Refresh recomputes the percentile p (0-100) over the kept samples,
// once there are at least 20.
func (lr *LatencyRing) Refresh(p float64) {
	lr.mu.Lock()
	s := slices.Clone(lr.samples[:lr.n])
	lr.mu.Unlock()
	if len(s) < 20 {
		return
	}
	slices.Sort(s)
	i := min(int(float64(len(s))*p/100), len(s)-1)
	lr.percentile.Store(int64(s[i]))
}

// Percentile returns the percentile computed by the last Refresh, or 0
// before there were enough samples.
func (lr *LatencyRing) Percentile() time.Duration { return time.Duration(lr.percentile.Load()) }

// BodyMemory accounts for the bytes a pool's request body copies hold,
// under the limit of retry.max_body_total. A nil *BodyMemory has no limit.
type BodyMemory struct {
	limit atomic.Int64
	used  atomic.Int64
}

// SetLimit sets the most the copies may hold; a nil *BodyMemory keeps
// having none.
func (m *BodyMemory) SetLimit(n int64) {
	if m != nil {
		m.limit.Store(n)
	}
}

// Used returns what the copies hold now.
func (m *BodyMemory) Used() int64 {
	if m == nil {
		return 0
	}
	return m.used.Load()
}

// Take reserves n bytes, if the limit allows.
func (m *BodyMemory) Take(n int64) bool {
	if m == nil {
		return true
	}
	limit := m.limit.Load()
	for {
		used := m.used.Load()
		if used+n > limit {
			return false
		}
		if m.used.CompareAndSwap(used, used+n) {
			return true
		}
	}
}

// Free gives back n bytes.
func (m *BodyMemory) Free(n int64) {
	if m != nil {
		m.used.Add(-n)
	}
}
