package breaker

import (
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// ErrOpen is returned by Do while the breaker is open.
var ErrOpen = errors.New("circuit breaker is open")

// ErrTooManyRequests is returned by Do while the breaker is half-open and all
// of its probe slots (Settings.Successes) are taken.
var ErrTooManyRequests = errors.New("circuit breaker is half-open and at its request limit")

// Breaker is one worker's circuit breaker. It is safe for concurrent use, and
// must not be copied after first use. Create it with New.
type Breaker struct {
	name     string
	onChange func(from, to State)

	// now is the clock of tests; nil means time.Now, read through
	// time.Since, which reads only the monotonic clock (half the cost of
	// time.Now). epoch is a nanosecond before the clock's reading at New:
	// the breaker's timestamps are durations since epoch, so that they fit
	// in atomics, keep the clock's monotonic reading, and are never 0
	// (unset) unless the clock goes back past New.
	now   func() time.Time
	epoch time.Time

	// mu guards everything below up to the mirror.
	mu       sync.Mutex
	settings Settings
	state    State
	// gen advances on every change of state and on Reset and Trip: an
	// outcome admitted in an earlier generation is not booked.
	gen    uint64
	counts Counts
	win    window

	// The mirror, written under mu and read without it, so that Ready and
	// the timestamps cost no lock. Timestamps are since epoch, at least 1;
	// 0 means unset.
	mstate   atomic.Uint32 // a State
	openedAt atomic.Int64  // when it last opened
	retryAt  atomic.Int64  // when an open breaker turns half-open; 0 if not open
	trips    atomic.Uint64 // times it opened, over its whole life
}

// New returns a closed breaker with settings s, or the error of s.Validate.
// The name is a label for the caller.
//
// onChange, which may be nil, is called once for every change of state, in
// order, from the goroutine that caused it; each call's from is the previous
// call's to. It runs while the breaker's lock is held, so it must be quick,
// must not block, and must not call any method of this Breaker (that
// deadlocks): an atomic store or a non-blocking send on a buffered channel is
// the intended use.
func New(name string, s Settings, onChange func(from, to State)) (*Breaker, error) {
	return newWithClock(name, s, onChange, nil)
}

// newWithClock is New with a clock of the caller's; nil means time.Now.
func newWithClock(name string, s Settings, onChange func(from, to State), now func() time.Time) (*Breaker, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	b := &Breaker{name: name, onChange: onChange, now: now, settings: s}
	if now == nil {
		now = time.Now
	}
	b.epoch = now().Add(-time.Nanosecond)
	b.win.reset(s.Window, b.since())
	return b, nil
}

// since returns the clock's reading as a duration since epoch, at least 1.
func (b *Breaker) since() int64 {
	if b.now == nil {
		return max(int64(time.Since(b.epoch)), 1)
	}
	return max(int64(b.now().Sub(b.epoch)), 1)
}

// at converts a timestamp from since back to a time; 0 is the zero time.
func (b *Breaker) at(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return b.epoch.Add(time.Duration(ns))
}

// Do lets one request through the breaker and books its outcome: it calls
// fn, which runs the request and returns its Outcome. If the breaker refuses
// the request, Do returns ErrOpen or ErrTooManyRequests without calling fn.
// A panic in fn counts as a failure and is re-raised.
//
// Admission and outcome are one call, so no outcome can be forgotten, and Do
// allocates nothing (fn does not escape). Do reads the clock only while the
// breaker is open or has a Window.
func (b *Breaker) Do(fn func() Outcome) error {
	gen, err := b.admit()
	if err != nil {
		return err
	}
	o := Failure // if fn panics
	defer func() { b.book(gen, o) }()
	o = fn()
	return nil
}

// admit lets a request in or refuses it, and returns the generation its
// outcome belongs to.
func (b *Breaker) admit() (uint64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case StateOpen:
		now := b.since()
		if now < b.retryAt.Load() {
			return 0, ErrOpen
		}
		b.setState(StateHalfOpen, now)
		fallthrough
	case StateHalfOpen:
		if b.counts.Requests-b.counts.TotalExclusions >= b.settings.Successes {
			return 0, ErrTooManyRequests
		}
	case StateClosed:
		if b.win.on() {
			b.win.advance(b.since(), &b.counts)
			b.win.cur().requests++
		}
	}
	b.counts.Requests++
	return b.gen, nil
}

// book records the outcome of a request admitted in generation gen, unless
// the breaker has moved on since.
func (b *Breaker) book(gen uint64, o Outcome) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if gen != b.gen {
		return
	}
	// Same generation: the state is the one that admitted the request,
	// closed or half-open.
	if b.state == StateClosed && b.win.on() {
		b.win.advance(b.since(), &b.counts)
	}
	switch o {
	case Success:
		b.win.success(b.counts.ConsecutiveFailures > 0)
		b.counts.TotalSuccesses++
		b.counts.ConsecutiveSuccesses++
		b.counts.ConsecutiveFailures = 0
		if b.state == StateHalfOpen && b.counts.ConsecutiveSuccesses >= b.settings.Successes {
			b.setState(StateClosed, 0)
		}
	case Excluded:
		// frees a half-open probe slot: slots are Requests less exclusions
		b.counts.TotalExclusions++
		b.win.exclusion()
	default:
		b.win.failure(b.counts.ConsecutiveSuccesses > 0)
		b.counts.TotalFailures++
		b.counts.ConsecutiveFailures++
		b.counts.ConsecutiveSuccesses = 0
		if b.state == StateHalfOpen || b.settings.readyToTrip(b.counts) {
			b.setState(StateOpen, b.since())
		}
	}
}

// setState moves the breaker to state to, which must differ from the
// current one, at now (since epoch; needed only when opening or when a
// closed state has a window, 0 otherwise). It clears the counts, starts a
// new generation, updates the mirror and calls onChange. b.mu must be held.
func (b *Breaker) setState(to State, now int64) {
	from := b.state
	b.state = to
	b.gen++
	b.counts = Counts{}
	if to == StateClosed {
		if now == 0 {
			now = b.windowNow()
		}
		b.win.reset(b.settings.Window, now)
	} else {
		b.win.reset(0, 0) // off: open and half-open count no window
	}
	// Store RetryAt before the state when opening, and clear it after
	// leaving, so that a lock-free reader never sees an open state with
	// another period's RetryAt.
	if to == StateOpen {
		b.openedAt.Store(now)
		b.trips.Add(1)
		b.retryAt.Store(addSat(now, b.settings.Timeout))
		b.mstate.Store(uint32(to))
	} else {
		b.mstate.Store(uint32(to))
		b.retryAt.Store(0)
	}
	if b.onChange != nil {
		b.onChange(from, to)
	}
}

// addSat returns t+d, or the largest timestamp if that overflows.
func addSat(t int64, d time.Duration) int64 {
	if int64(d) > math.MaxInt64-t {
		return math.MaxInt64
	}
	return t + int64(d)
}

// refresh turns an open breaker whose timeout has passed half-open, and
// ages a closed breaker's window, as Do would. b.mu must be held.
func (b *Breaker) refresh() {
	switch b.state {
	case StateOpen:
		if now := b.since(); now >= b.retryAt.Load() {
			b.setState(StateHalfOpen, now)
		}
	case StateClosed:
		if b.win.on() {
			b.win.advance(b.since(), &b.counts)
		}
	}
}

// State returns the current state. If an open breaker's timeout has passed,
// it turns it half-open (calling onChange) first, as Do would.
func (b *Breaker) State() State {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refresh()
	return b.state
}

// Counts returns the counts of the current state (see Counts). Like State,
// it brings the state and the rolling window up to date first.
func (b *Breaker) Counts() Counts {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refresh()
	return b.counts
}

// Ready reports whether Do would likely let a request through now: the
// breaker is closed or half-open (whose probe slots may all be taken), or
// open with its timeout passed. It takes no lock, does not allocate, and does
// not change the state or take a probe slot.
func (b *Breaker) Ready() bool {
	if State(b.mstate.Load()) != StateOpen {
		return true
	}
	return b.since() >= b.retryAt.Load()
}

// OpenedAt returns when the breaker last opened, or the zero time if it never
// did.
func (b *Breaker) OpenedAt() time.Time {
	return b.at(b.openedAt.Load())
}

// RetryAt returns when an open breaker turns half-open (it does so on the
// first call that looks after that time), or the zero time if it is not open.
func (b *Breaker) RetryAt() time.Time {
	if State(b.mstate.Load()) != StateOpen {
		return time.Time{}
	}
	return b.at(b.retryAt.Load())
}

// Trips returns how many times the breaker has opened in its life, Trip
// included. Update keeps it.
func (b *Breaker) Trips() uint64 {
	return b.trips.Load()
}

// Name returns the name the breaker was created with.
func (b *Breaker) Name() string {
	return b.name
}

// Settings returns the settings in use.
func (b *Breaker) Settings() Settings {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.settings
}

// Reset closes the breaker and clears its counts, calling onChange if it was
// not closed. Outcomes of requests admitted before Reset are ignored.
func (b *Breaker) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state != StateClosed {
		b.setState(StateClosed, 0)
		return
	}
	b.gen++
	b.counts = Counts{}
	b.win.reset(b.settings.Window, b.windowNow())
}

// windowNow returns the clock's reading if the settings have a window, else 0.
func (b *Breaker) windowNow() int64 {
	if b.settings.Window > 0 {
		return b.since()
	}
	return 0
}

// Trip opens the breaker now, for a full Timeout, whatever its state. If it
// was not open, onChange is called and Trips counts one more, and outcomes
// of requests admitted before Trip are ignored; if it was, its open period
// restarts now (RetryAt moves, OpenedAt does not).
func (b *Breaker) Trip() {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.since()
	if b.state != StateOpen {
		b.setState(StateOpen, now)
		return
	}
	// Open admits nothing, so no outcome is pending: only the period moves.
	b.retryAt.Store(addSat(now, b.settings.Timeout))
}

// Update applies new settings to the breaker, for a configuration reload,
// after checking them with Validate (whose error it returns, changing
// nothing). If they equal the current settings nothing changes. Otherwise
// the breaker keeps its state:
//
//   - closed stays closed, with its counts, which the new thresholds judge
//     from the next failure on; a changed Window starts the counts over;
//   - open stays open until its RetryAt, or until OpenedAt plus the new
//     Timeout if that is sooner (a shorter timeout applies at once, a longer
//     one from the next open period);
//   - half-open stays half-open with its probes in flight, and the new
//     Successes sets how many probes it admits and how many successes close
//     it (if the probes so far already make that many, it closes now).
//
// onChange is called only if the state changes. Trips and OpenedAt are kept.
func (b *Breaker) Update(s Settings) error {
	if err := s.Validate(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	old := b.settings
	if s == old {
		return nil
	}
	b.settings = s
	switch b.state {
	case StateClosed:
		if s.Window != old.Window {
			b.counts = Counts{}
			b.win.reset(s.Window, b.windowNow())
		}
	case StateOpen:
		if r := addSat(b.openedAt.Load(), s.Timeout); r < b.retryAt.Load() {
			b.retryAt.Store(r)
		}
	case StateHalfOpen:
		if b.counts.ConsecutiveSuccesses >= s.Successes {
			b.setState(StateClosed, 0)
		}
	}
	return nil
}
