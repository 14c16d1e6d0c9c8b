package selection

import (
	"maps"
	"sync"
	"sync/atomic"
)

// Trackers is a registry of trackers keyed by dial address (the Dial of a
// reverseproxy.Upstream as configured, placeholders unreplaced, which is
// what a selection policy sees). Entries are created only when asked for,
// by whoever feeds them for its configured upstreams, and are bounded by
// Settings.MaxTrackers; Remove drops a stale one.
//
// Get is lock-free: the registry keeps an immutable map behind an atomic
// pointer and writers, which are rare (provisioning), replace it with a
// copy. A Trackers is safe for concurrent use; a nil *Trackers is empty.
type Trackers struct {
	settings Settings

	mu sync.Mutex // serializes writers
	m  atomic.Pointer[map[string]*Tracker]
}

// NewTrackers returns an empty registry whose trackers use s.
func NewTrackers(s Settings) *Trackers {
	return &Trackers{settings: s.withDefaults()}
}

// Get returns the tracker of dial, or nil if there is none (a nil
// *Tracker is valid and records nothing).
func (ts *Trackers) Get(dial string) *Tracker {
	if ts == nil {
		return nil
	}
	if m := ts.m.Load(); m != nil {
		return (*m)[dial]
	}
	return nil
}

// GetOrCreate returns the tracker of dial, creating it if needed. It
// returns nil when the registry already holds Settings.MaxTrackers entries.
func (ts *Trackers) GetOrCreate(dial string) *Tracker {
	if ts == nil {
		return nil
	}
	if t := ts.Get(dial); t != nil {
		return t
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	old := ts.load()
	if t := old[dial]; t != nil {
		return t
	}
	if len(old) >= ts.settings.MaxTrackers {
		return nil
	}
	t := NewTracker(ts.settings)
	m := make(map[string]*Tracker, len(old)+1)
	maps.Copy(m, old)
	m[dial] = t
	ts.m.Store(&m)
	return t
}

// Remove drops the tracker of dial and reports whether there was one.
// Callers holding it may keep using it; it is just no longer found.
func (ts *Trackers) Remove(dial string) bool {
	if ts == nil {
		return false
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	old := ts.load()
	if _, ok := old[dial]; !ok {
		return false
	}
	m := make(map[string]*Tracker, len(old))
	for k, v := range old {
		if k != dial {
			m[k] = v
		}
	}
	ts.m.Store(&m)
	return true
}

// Len returns the number of trackers.
func (ts *Trackers) Len() int {
	if ts == nil {
		return 0
	}
	return len(ts.load())
}

// Settings returns the settings of the registry's trackers, with defaults
// applied.
func (ts *Trackers) Settings() Settings {
	if ts == nil {
		return Settings{}.withDefaults()
	}
	return ts.settings
}

// load returns the current map (nil before the first entry).
func (ts *Trackers) load() map[string]*Tracker {
	if m := ts.m.Load(); m != nil {
		return *m
	}
	return nil
}

// Put makes t the tracker of dial, replacing any it had, so that a
// tracker kept by its caller across configurations (with its latency
// history and requests in flight) is the one the policy reads. It returns
// false, and stores nothing, when the registry is full.
func (ts *Trackers) Put(dial string, t *Tracker) bool {
	if ts == nil {
		return false
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	old := ts.load()
	if _, ok := old[dial]; !ok && len(old) >= ts.settings.MaxTrackers {
		return false
	}
	m := make(map[string]*Tracker, len(old)+1)
	maps.Copy(m, old)
	m[dial] = t
	ts.m.Store(&m)
	return true
}
