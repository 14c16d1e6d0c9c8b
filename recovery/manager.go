package recovery

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// MaxMetadata is how many metadata entries of a recorded error are kept;
// when there are more, the ones with the smallest keys are kept.
const MaxMetadata = 8

// ellipsis marks a cut message.
const ellipsis = "…"

// ManagerConfig holds the limits of a Manager. It has no defaults: the
// caller sets every limit (see Validate). It is a plain value, safe to
// copy.
type ManagerConfig struct {
	// HistoryLimit is how many errors the history keeps, the newest
	// winning; at least 1.
	HistoryLimit int

	// MaxConcurrentRecovery limits how many recovery functions started by
	// TryRecover run at once; at least 1.
	MaxConcurrentRecovery int

	// MessageLimit is the longest recorded message and metadata value, in
	// bytes; at least 1. Longer ones are cut on a rune boundary and end
	// with "…", within the limit.
	MessageLimit int

	// OnPanic, if set, is called when a recovery function panics, with the
	// panic value and the goroutine's stack, so the caller can log it. It
	// runs on the recovery goroutine and must not panic itself.
	OnPanic func(value any, stack []byte)
}

// Validate reports the first limit of c that is missing or out of range.
func (c ManagerConfig) Validate() error {
	switch {
	case c.HistoryLimit < 1:
		return fmt.Errorf("history limit must be at least 1, got %d", c.HistoryLimit)
	case c.MaxConcurrentRecovery < 1:
		return fmt.Errorf("max concurrent recovery must be at least 1, got %d", c.MaxConcurrentRecovery)
	case c.MessageLimit < 1:
		return fmt.Errorf("message limit must be at least 1, got %d", c.MessageLimit)
	}
	return nil
}

// Filter selects errors from the history. Its zero value selects all. It is
// a plain value.
type Filter struct {
	Limit    int      // most errors to return; 0 means all that are kept
	Worker   string   // only this worker's errors, if set
	Pool     string   // only this pool's errors, if set
	Severity Severity // only errors of exactly this severity; SeverityNone means any
	Kind     Kind     // only errors of this kind; KindNone means any
}

// match reports whether e passes f (ignoring Limit).
func (f *Filter) match(e *ContextualError) bool {
	return (f.Worker == "" || e.Context.WorkerID == f.Worker) &&
		(f.Pool == "" || e.Context.Pool == f.Pool) &&
		(f.Severity == SeverityNone || e.Severity == f.Severity) &&
		(f.Kind == KindNone || e.Kind == f.Kind)
}

// Statistics is a snapshot of a Manager's counters, owned by the caller.
type Statistics struct {
	TotalErrors       uint64            `json:"total_errors"`
	BySeverity        map[string]uint64 `json:"by_severity"` // every severity except none, even if 0
	ByKind            map[string]uint64 `json:"by_kind"`     // every kind except none, even if 0
	Retries           uint64            `json:"retries"`
	RecoveryAttempts  uint64            `json:"recovery_attempts"`
	RecoverySuccesses uint64            `json:"recovery_successes"`
	BreakerTrips      uint64            `json:"breaker_trips"`
}

// Manager is the error recovery manager: it keeps a bounded history of
// contextual errors, counts errors, retries, breaker trips and recoveries,
// and runs recovery work under a concurrency limit. A Manager is safe for
// concurrent use. Until it is given limits (NewManager or Reconfigure with a
// valid ManagerConfig), as the zero Manager, it counts errors but keeps none
// in its history and starts no recovery. A Manager must not be copied after
// first use.
type Manager struct {
	msgLimit atomic.Int64

	retries      atomic.Uint64
	trips        atomic.Uint64
	recAttempts  atomic.Uint64
	recSuccesses atomic.Uint64

	mu         sync.Mutex        // guards the fields below, up to recMu
	history    []ContextualError // ring, oldest overwritten first; len <= limit
	next       int               // slot the next error goes to, once the ring is full
	limit      int
	total      uint64
	bySeverity [numSeverities]uint64
	byKind     [numKinds]uint64

	recMu      sync.Mutex // guards the fields below
	recIdle    sync.Cond  // broadcast when running drops to 0
	running    int
	maxRunning int
	onPanic    func(value any, stack []byte)
}

// NewManager returns a Manager with the limits of cfg. An invalid cfg (see
// ManagerConfig.Validate), the zero one included, leaves it without limits,
// as the zero Manager, until Reconfigure.
func NewManager(cfg ManagerConfig) *Manager {
	m := new(Manager)
	_ = m.Reconfigure(cfg)
	return m
}

// Reconfigure applies new limits, for a config reload, or refuses invalid
// ones (see ManagerConfig.Validate) and changes nothing. The history and
// the counters are kept; a smaller HistoryLimit keeps the newest errors.
// Recovery functions already running are not affected by a smaller
// MaxConcurrentRecovery, but no new one starts until they are below it.
func (m *Manager) Reconfigure(cfg ManagerConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	m.msgLimit.Store(int64(cfg.MessageLimit))

	m.mu.Lock()
	if cfg.HistoryLimit != m.limit {
		m.resize(cfg.HistoryLimit)
	}
	m.mu.Unlock()

	m.recMu.Lock()
	m.maxRunning = cfg.MaxConcurrentRecovery
	m.onPanic = cfg.OnPanic
	m.recMu.Unlock()
	return nil
}

// resize sets the history limit, keeping the newest errors in
// oldest-to-newest order. m.mu must be held.
func (m *Manager) resize(limit int) {
	keep := min(len(m.history), limit)
	h := make([]ContextualError, keep, min(limit, max(keep, initialHistoryCap)))
	for i := range keep {
		h[keep-1-i] = *m.at(i)
	}
	m.history, m.next, m.limit = h, keep%limit, limit
}

// initialHistoryCap is the capacity the history starts with; it grows by
// doubling up to the limit, so a manager that sees few errors stays small.
const initialHistoryCap = 16

// at returns the i-th newest error of the history (0 is the newest).
// m.mu must be held and i < len(m.history).
func (m *Manager) at(i int) *ContextualError {
	n := len(m.history)
	if n < m.limit {
		return &m.history[n-1-i]
	}
	return &m.history[((m.next-1-i)%n+n)%n]
}

// Record stores a copy of e in the history, overwriting the oldest error
// once HistoryLimit errors are kept, and counts it by kind and severity.
// Missing fields are filled in: Timestamp (now), Severity and Action (the
// kind's defaults), and Message (the underlying error's text). The message
// and metadata values are cut to MessageLimit, and at most MaxMetadata
// metadata entries are kept, in a new map.
func (m *Manager) Record(e ContextualError) {
	if e.Timestamp.IsZero() {
		e.Timestamp = time.Now()
	}
	if e.Severity == SeverityNone {
		e.Severity = e.Kind.Severity()
	}
	if e.Action == ActionNone {
		e.Action = e.Kind.SuggestedRecovery()
	}
	limit := int(m.msgLimit.Load())
	if e.Message == "" && e.Err != nil {
		e.Message = e.Err.Error()
	}
	// redacted before it is cut, so that no part of a secret is left
	e.Message = Truncate(Redact(e.Message), limit)
	e.Context.Metadata = copyMetadata(e.Context.Metadata, limit)

	m.mu.Lock()
	m.total++
	if int(e.Severity) < numSeverities {
		m.bySeverity[e.Severity]++
	}
	if e.Kind.valid() {
		m.byKind[e.Kind]++
	}
	if m.limit > 0 { // not a Manager without limits
		m.store(&e)
	}
	m.mu.Unlock()
}

// store puts e into the ring. m.mu must be held.
func (m *Manager) store(e *ContextualError) {
	if len(m.history) < m.limit {
		if len(m.history) == cap(m.history) {
			h := make([]ContextualError, len(m.history), min(m.limit, max(2*cap(m.history), initialHistoryCap)))
			copy(h, m.history)
			m.history = h
		}
		m.history = append(m.history, *e)
		m.next = len(m.history) % m.limit
		return
	}
	m.history[m.next] = *e
	m.next = (m.next + 1) % m.limit
}

// Truncate cuts s to at most limit bytes on a rune boundary, ending it with
// an ellipsis when it was cut. The result never shares memory with a cut s,
// so a long message is not kept alive by its prefix.
func Truncate(s string, limit int) string {
	if len(s) <= limit {
		return s
	}
	suffix := ellipsis
	if limit < len(ellipsis) {
		suffix = ""
	}
	cut := limit - len(suffix)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + suffix
}

// copyMetadata returns a copy of md with at most MaxMetadata entries (those
// with the smallest keys) and its keys and values cut to limit bytes, or nil
// when md is empty.
func copyMetadata(md map[string]string, limit int) map[string]string {
	if len(md) == 0 {
		return nil
	}
	out := make(map[string]string, min(len(md), MaxMetadata))
	if len(md) <= MaxMetadata {
		for k, v := range md {
			out[Truncate(k, limit)] = Truncate(v, limit)
		}
		return out
	}
	// Keep the MaxMetadata smallest keys, so which entries survive does
	// not depend on map iteration order.
	var keys [MaxMetadata]string
	n := 0
	for k := range md {
		if n == MaxMetadata && k >= keys[n-1] {
			continue
		}
		if n < MaxMetadata {
			n++
		}
		i := n - 1
		for ; i > 0 && keys[i-1] > k; i-- {
			keys[i] = keys[i-1]
		}
		keys[i] = k
	}
	for _, k := range keys {
		out[Truncate(k, limit)] = Truncate(md[k], limit)
	}
	return out
}

// Errors returns the recorded errors that pass f, newest first. The result
// and its metadata maps are the caller's own.
func (m *Manager) Errors(f Filter) []ContextualError {
	m.mu.Lock()
	n := len(m.history)
	want := n
	if f.Limit > 0 {
		want = min(f.Limit, n)
	}
	out := make([]ContextualError, 0, want)
	for i := 0; i < n && len(out) < want; i++ {
		if e := m.at(i); f.match(e) {
			out = append(out, *e)
		}
	}
	m.mu.Unlock()

	// The stored maps are never modified, so they can be copied unlocked.
	for i := range out {
		if md := out[i].Context.Metadata; md != nil {
			c := make(map[string]string, len(md))
			for k, v := range md {
				c[k] = v
			}
			out[i].Context.Metadata = c
		}
	}
	return out
}

// Stats returns a snapshot of the counters. BySeverity and ByKind have an
// entry for every severity and kind except none, even when it is 0.
func (m *Manager) Stats() Statistics {
	m.mu.Lock()
	total, bySeverity, byKind := m.total, m.bySeverity, m.byKind
	m.mu.Unlock()

	s := Statistics{
		TotalErrors:       total,
		BySeverity:        make(map[string]uint64, numSeverities-1),
		ByKind:            make(map[string]uint64, numKinds-1),
		Retries:           m.retries.Load(),
		RecoveryAttempts:  m.recAttempts.Load(),
		RecoverySuccesses: m.recSuccesses.Load(),
		BreakerTrips:      m.trips.Load(),
	}
	for sev := SeverityNone + 1; sev < numSeverities; sev++ {
		s.BySeverity[sev.String()] = bySeverity[sev]
	}
	for k := KindNone + 1; k < numKinds; k++ {
		s.ByKind[k.String()] = byKind[k]
	}
	return s
}

// CountRetry counts one retry of a request.
func (m *Manager) CountRetry() { m.retries.Add(1) }

// CountBreakerTrip counts one circuit breaker opening.
func (m *Manager) CountBreakerTrip() { m.trips.Add(1) }

// TryRecover runs fn(ctx) on a new goroutine if fewer than
// MaxConcurrentRecovery recovery functions are running, and reports whether
// it did. It never blocks: when no slot is free, or ctx is already done, it
// returns false and the caller counts the recovery as skipped. A started fn
// counts as a recovery attempt, and as a success when it returns nil; a
// panic in fn is recovered and counts as a failure (see
// ManagerConfig.OnPanic). fn must return when ctx is done; Wait waits for it.
func (m *Manager) TryRecover(ctx context.Context, fn func(ctx context.Context) error) bool {
	if ctx == nil {
		ctx = context.Background()
	}
	if fn == nil || ctx.Err() != nil {
		return false
	}
	m.recMu.Lock()
	if m.running >= m.maxRunning {
		m.recMu.Unlock()
		return false
	}
	m.running++
	onPanic := m.onPanic
	m.recMu.Unlock()

	m.recAttempts.Add(1)
	go m.runRecovery(ctx, fn, onPanic)
	return true
}

// runRecovery is the body of a recovery goroutine.
func (m *Manager) runRecovery(ctx context.Context, fn func(context.Context) error, onPanic func(any, []byte)) {
	defer func() {
		m.recMu.Lock()
		m.running--
		if m.running == 0 {
			m.recIdle.Broadcast()
		}
		m.recMu.Unlock()
	}()
	if callRecovery(ctx, fn, onPanic) == nil {
		m.recSuccesses.Add(1)
	}
}

// callRecovery calls fn, turning a panic into an error.
func callRecovery(ctx context.Context, fn func(context.Context) error, onPanic func(any, []byte)) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("recovery function panicked: %v", v)
			if onPanic != nil {
				onPanic(v, debug.Stack())
			}
		}
	}()
	return fn(ctx)
}

// Wait blocks until no recovery function started by TryRecover is running.
// Cancel their context first to make it quick, as a module's Cleanup does.
func (m *Manager) Wait() {
	m.recMu.Lock()
	if m.recIdle.L == nil {
		m.recIdle.L = &m.recMu
	}
	for m.running > 0 {
		m.recIdle.Wait()
	}
	m.recMu.Unlock()
}
