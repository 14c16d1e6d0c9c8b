package breaker

import (
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
)

// ErrOpen is returned by Allow while the breaker is open (gobreaker's
// ErrOpenState).
var ErrOpen = gobreaker.ErrOpenState

// ErrTooManyRequests is returned by Allow while the breaker is half-open and
// all of its probe slots (Settings.Successes) are taken (gobreaker's
// ErrTooManyRequests).
var ErrTooManyRequests = gobreaker.ErrTooManyRequests

// Breaker is one worker's circuit breaker: a gobreaker TwoStepCircuitBreaker
// and a lock-free mirror of its state. It is safe for concurrent use, and
// must not be copied after first use. Create it with New.
type Breaker struct {
	name     string
	onChange func(from, to State)

	// epoch is a nanosecond before New: the mirror's timestamps are
	// durations since epoch, so that they fit in atomics, keep the clock's
	// monotonic reading, and are never 0 (unset).
	epoch time.Time

	// mu serializes replacing the instance (Reset, Update) with the
	// instance's state changes, so that the mirror and onChange see one
	// sequence of states. It is taken inside gobreaker's lock (from
	// OnStateChange) and never held while calling into gobreaker.
	mu  sync.Mutex
	cur atomic.Pointer[instance]

	// The mirror, written under mu from OnStateChange and read without a
	// lock. It only copies what gobreaker decided. Timestamps are since
	// epoch, at least 1; 0 means unset.
	state    atomic.Uint32 // a State
	openedAt atomic.Int64  // when it last opened
	retryAt  atomic.Int64  // when an open breaker may turn half-open; 0 if not open
	trips    atomic.Uint64 // times it opened, over its whole life
}

// instance is one gobreaker breaker with the settings it was made with.
type instance struct {
	cb       *gobreaker.TwoStepCircuitBreaker[struct{}]
	settings Settings
}

// New returns a closed breaker with settings s, or the error of s.Validate.
// The name is gobreaker's name of the breaker, a label for the caller.
//
// onChange, which may be nil, is called once for every change of state, in
// order; each call's from is the previous call's to. It is called from
// gobreaker's OnStateChange (on the goroutine that caused the change, while
// gobreaker's lock is held), and from Reset and Update. So it must be quick,
// must not block, and must not call any method of this Breaker (that
// deadlocks): an atomic store or a hand-off to another goroutine that never
// blocks is the intended use.
func New(name string, s Settings, onChange func(from, to State)) (*Breaker, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	b := &Breaker{name: name, onChange: onChange, epoch: time.Now().Add(-time.Nanosecond)}
	b.cur.Store(b.newInstance(s))
	return b, nil
}

// newInstance returns a closed gobreaker breaker with settings s, whose state
// changes reach the mirror and onChange while it is the current one.
func (b *Breaker) newInstance(s Settings) *instance {
	inst := &instance{settings: s}
	st := s.gobreaker(b.name)
	st.OnStateChange = func(_ string, from, to gobreaker.State) {
		b.changed(inst, State(from), State(to))
	}
	inst.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](st)
	return inst
}

// changed is OnStateChange of inst: it updates the mirror and calls onChange,
// unless inst was replaced (its late outcomes change nothing).
func (b *Breaker) changed(inst *instance, from, to State) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cur.Load() != inst {
		return
	}
	b.mirror(to, inst.settings.Timeout)
	if b.onChange != nil {
		b.onChange(from, to)
	}
}

// mirror records state to, which gobreaker just entered (or a new instance
// starts in). b.mu must be held.
func (b *Breaker) mirror(to State, timeout time.Duration) {
	if to != StateOpen {
		b.state.Store(uint32(to))
		b.retryAt.Store(0)
		return
	}
	// RetryAt is stored before the state, so that a lock-free reader never
	// sees an open state with another period's RetryAt. It is read after
	// gobreaker read its clock, so it is never before gobreaker's expiry:
	// when Ready says yes, Allow does too.
	now := b.since()
	b.openedAt.Store(now)
	b.trips.Add(1)
	b.retryAt.Store(addSat(now, timeout))
	b.state.Store(uint32(to))
}

// since returns the time since epoch, at least 1. time.Since reads only the
// monotonic clock.
func (b *Breaker) since() int64 {
	return max(int64(time.Since(b.epoch)), 1)
}

// at converts a timestamp from since back to a time; 0 is the zero time.
func (b *Breaker) at(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return b.epoch.Add(time.Duration(ns))
}

// addSat returns t+d, or the largest timestamp if that overflows.
func addSat(t int64, d time.Duration) int64 {
	if int64(d) > math.MaxInt64-t {
		return math.MaxInt64
	}
	return t + int64(d)
}

// Pass is one request let through by Allow. Its outcome is booked with
// Done, once; the zero Pass (a request that bypassed the breaker, see
// AllowPanic) books nothing. A Pass must not be copied once its request
// runs, and its Done must not be called concurrently.
type Pass struct {
	done func(error)
}

// Done books the request's outcome o in the breaker that let it through,
// the first time it is called; later calls do nothing. An outcome booked
// after the breaker changed state, or was Reset or replaced by Update since
// the request was let through, counts for nothing (gobreaker's
// generations).
func (p *Pass) Done(o Outcome) {
	if d := p.done; d != nil {
		p.done = nil
		d(o.err())
	}
}

// Pending reports whether the request's outcome is still to be booked.
func (p *Pass) Pending() bool { return p.done != nil }

// Allow asks the breaker to let one request through (gobreaker's
// TwoStepCircuitBreaker.Allow). If it does, the request's outcome must be
// booked with the Pass's Done once known; a half-open breaker holds a probe
// slot until then. Otherwise it returns ErrOpen or ErrTooManyRequests.
// Allow allocates gobreaker's done function: one allocation per request.
func (b *Breaker) Allow() (Pass, error) {
	done, err := b.cur.Load().cb.Allow()
	if err != nil {
		return Pass{}, err
	}
	return Pass{done: done}, nil
}

// AllowPanic is Allow for a request sent while no worker of its pool is
// available (panic mode), where one try is better than none. A half-open
// breaker (or an open one whose timeout has passed, which Allow turns
// half-open) is asked as Allow asks it: its probe limit holds, in panic mode
// too. A closed breaker, or an open one within its timeout, is bypassed: the
// request goes through with the zero Pass, and its outcome is not counted.
func (b *Breaker) AllowPanic() (Pass, error) {
	switch State(b.state.Load()) {
	case StateClosed:
		return Pass{}, nil
	case StateOpen:
		if b.since() < b.retryAt.Load() {
			return Pass{}, nil
		}
	}
	return b.Allow()
}

// Ready reports whether Allow would likely let a request through now: the
// breaker is closed or half-open (whose probe slots may all be taken), or
// open with its timeout passed. It reads only the mirror: it takes no lock,
// does not allocate, and does not change the state or take a probe slot.
func (b *Breaker) Ready() bool {
	if State(b.state.Load()) != StateOpen {
		return true
	}
	return b.since() >= b.retryAt.Load()
}

// State returns the current state. gobreaker turns an open breaker whose
// timeout has passed half-open (calling onChange) first, and ages a closed
// breaker's window.
func (b *Breaker) State() State {
	return State(b.cur.Load().cb.State())
}

// Counts returns the counts of the current state (see Counts), once State
// has brought the state and the rolling window up to date.
func (b *Breaker) Counts() Counts {
	inst := b.cur.Load()
	inst.cb.State()
	return Counts(inst.cb.Counts())
}

// OpenedAt returns when the breaker last opened, or the zero time if it never
// did.
func (b *Breaker) OpenedAt() time.Time {
	return b.at(b.openedAt.Load())
}

// RetryAt returns when an open breaker turns half-open (it does so on the
// first call that looks after that time), or the zero time if it is not open.
func (b *Breaker) RetryAt() time.Time {
	if State(b.state.Load()) != StateOpen {
		return time.Time{}
	}
	return b.at(b.retryAt.Load())
}

// Trips returns how many times the breaker has opened in its life. Reset and
// Update keep it.
func (b *Breaker) Trips() uint64 {
	return b.trips.Load()
}

// Name returns the name the breaker was created with.
func (b *Breaker) Name() string {
	return b.name
}

// Settings returns the settings in use.
func (b *Breaker) Settings() Settings {
	return b.cur.Load().settings
}

// Reset closes the breaker and clears its counts: gobreaker cannot be put
// into a state, so the breaker gets a new gobreaker instance, closed, with
// the same settings. onChange is called if it was not closed. Outcomes of
// requests let through before Reset count for nothing.
func (b *Breaker) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.replace(b.cur.Load().settings)
}

// Update applies a reload's settings, after checking them with Validate
// (whose error it returns, changing nothing). If they equal the current
// settings, nothing changes: the gobreaker instance, and so its exact state
// and counts, are kept. Otherwise the breaker gets a new gobreaker instance
// with the new settings, closed, as Reset does: onChange is called with a
// change to closed if it was not closed (never with an opening), and
// outcomes of requests let through before count for nothing. Trips and
// OpenedAt are kept.
func (b *Breaker) Update(s Settings) error {
	if err := s.Validate(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cur.Load().settings == s {
		return nil
	}
	b.replace(s)
	return nil
}

// replace puts a new closed gobreaker instance with settings s in place of
// the current one. b.mu must be held.
func (b *Breaker) replace(s Settings) {
	b.cur.Store(b.newInstance(s))
	from := State(b.state.Load())
	b.mirror(StateClosed, 0)
	if from != StateClosed && b.onChange != nil {
		b.onChange(from, StateClosed)
	}
}

// Trip opens a closed or half-open breaker the way failing requests do: it
// books failures through gobreaker until it opens (at most Failures of
// them). It reports whether the breaker is open afterwards; a half-open
// breaker whose probe slots are all taken cannot be tripped. It is meant for
// tests and tools; an open breaker is left as it is.
func (b *Breaker) Trip() bool {
	for range b.Settings().Failures {
		p, err := b.Allow()
		if errors.Is(err, ErrOpen) {
			return true
		}
		if err != nil {
			return false
		}
		p.Done(Failure)
	}
	return State(b.state.Load()) == StateOpen
}
