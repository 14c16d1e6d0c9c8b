//go:build bk_cur

package breaker

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
)

// ErrOpen is returned by Do while the breaker is open.
var ErrOpen = errors.New("circuit breaker is open")

// ErrTooManyRequests is returned by Do while the breaker is half-open and all
// of its probe slots (Settings.Successes) are taken.
var ErrTooManyRequests = errors.New("circuit breaker is half-open and at its request limit")

const (
	// minOpen is the shortest open period handed to the library, which takes
	// 0 for its own 60 s default. It carries over a state that is already due
	// to turn half-open.
	minOpen = time.Nanosecond

	// settleTries bounds the loop that waits for a gobreaker opened for
	// minOpen to turn half-open. Every try reads the clock, so one or two
	// suffice; the bound only guards against a clock that stands still.
	settleTries = 1000
)

// epoch is the origin of the monotonic timestamps kept in atomics: they are
// durations since epoch, so wall-clock jumps do not move them.
var epoch = time.Now()

// mono returns the monotonic time since epoch in nanoseconds. It is at least 1,
// so that 0 can mean "unset".
func mono() int64 {
	return max(int64(time.Since(epoch)), 1)
}

// monoTime converts a timestamp from mono back to a time, 0 to the zero time.
func monoTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return epoch.Add(time.Duration(ns))
}

// Breaker is one worker's circuit breaker. It is safe for concurrent use, and
// must not be copied after first use. Create it with New.
type Breaker struct {
	name     string
	onChange func(from, to State)

	// cur is the gobreaker in use. Do loads it without a lock. Reset, Trip
	// and Update replace it, and so does the state-change hook of a
	// provisional instance (see instance.provisional).
	cur atomic.Pointer[instance]

	// mu serializes Reset, Trip and Update. The request path never takes it.
	mu sync.Mutex

	// hookMu orders every change of the mirror below and every onChange call,
	// and makes replacing cur atomic with respect to them: a hook of an
	// instance that is no longer current is ignored. The hook takes it inside
	// gobreaker's lock, so it must never be held while calling into a live
	// gobreaker.
	hookMu sync.Mutex

	// The mirror of the state, written under hookMu and read without a lock,
	// so that Ready and the other accessors stay off gobreaker's mutex.
	state    atomic.Uint32 // a State
	openedAt atomic.Int64  // mono() when it last opened; 0 if never
	retryAt  atomic.Int64  // mono() when an open breaker turns half-open; 0 if not open
	trips    atomic.Uint64 // times it opened, over its whole life
}

// instance is one gobreaker with the settings it was built from. Instances are
// replaced, never reconfigured.
type instance struct {
	b        *Breaker
	cb       *gobreaker.CircuitBreaker[struct{}]
	settings Settings

	// provisional marks a gobreaker built with a shortened open timeout, to
	// carry an open or half-open state over from the instance it replaced
	// (the library's timeout is fixed at construction, and it cannot be put
	// into a state directly). That timeout is wrong for any later open
	// period, so as soon as a provisional instance closes or opens again its
	// hook replaces it with a regular instance in the same state. The library
	// clears counts and drops in-flight outcomes on those changes anyway, so
	// the swap loses nothing.
	provisional bool

	// force makes readyToTrip report true. It is set only while the instance
	// is prepared, before it is live, to open it with one failure.
	force atomic.Bool

	// live is set just before the instance is published in Breaker.cur. Until
	// then its hook does nothing, so an instance can be prepared while hookMu
	// is held.
	live atomic.Bool

	// lean marks an instance whose closed state trips on consecutive
	// failures alone (no FailureRatio, no Window, not provisional). Such an
	// instance lets a request skip the library while it is clean: closed,
	// with no failure since its last success. A success then costs one
	// atomic add instead of the library's two locks and two clock reads,
	// and any other outcome is handed to the library as it would have been
	// (see fast). The fields below are used by lean instances only.
	lean bool

	// word holds the clean flag in its low bit and, above it, a sequence
	// number that every failure and every change of state advances, so
	// that a success which found the instance failing can mark it clean
	// again only if nothing failed in between (see recheck).
	word atomic.Uint64

	// pending counts failures that have marked the instance failing but
	// are not booked in the library yet.
	pending atomic.Int64

	// gen advances on every change of state: an outcome admitted in one
	// state is not booked in another, as the library does with its own
	// generations.
	gen atomic.Uint64

	// fastOK counts the successes booked on the fast path since the
	// instance last closed; runStart is fastOK's value when the instance
	// last became clean, where its current run of successes began.
	fastOK   atomic.Uint64
	runStart atomic.Uint64
}

// cleanBit is word's clean flag; the sequence number counts in units of seqStep.
const (
	cleanBit = 1
	seqStep  = 2
)

// New returns a closed breaker with settings s, after WithDefaults. New does not
// fail: values that Validate would reject are replaced by safe ones (a bad
// FailureRatio turns the ratio off, a negative Timeout is the default), so call
// Validate first to report them. The name is only a label for the library.
//
// onChange, which may be nil, is called once for every change of state, in
// order, from the goroutine that caused it; each call's from is the previous
// call's to. It runs while the breaker's internal locks are held, so it must be
// quick, must not block, and must not call any method of this Breaker (that
// deadlocks): an atomic store or a non-blocking send on a buffered channel is
// the intended use.
func New(name string, s Settings, onChange func(from, to State)) (*Breaker, error) {
	b := &Breaker{name: name, onChange: onChange}
	in, _, _ := b.closed(s.sanitize())
	b.install(in)
	return b, nil
}

// Do lets one request through the breaker and books its outcome: it calls
// fn, which runs the request and returns its Outcome. If the breaker
// refuses the request, Do returns ErrOpen or ErrTooManyRequests without
// calling fn. A panic in fn counts as a failure and is re-raised.
//
// Admission and outcome are one call: unlike a two-step Allow/done, Do
// allocates nothing (fn does not escape), and no outcome can be forgotten.
// Under the default rule a clean closed breaker runs fn without the
// library (see fast); otherwise fn runs inside the library's Execute.
func (b *Breaker) Do(fn func() Outcome) error {
	in := b.cur.Load()
	if in.lean && in.word.Load()&cleanBit != 0 {
		in.fast(fn)
		return nil
	}
	return in.slow(fn)
}

// fast runs fn, admitted by a clean lean instance, outside the library. A
// success only counts; any other outcome is handed to the library, which
// books it as though it had admitted the request. The closed state admits
// every request, so skipping the library's admission changes nothing. What
// the library would have done differently is the rare interleaving: a
// success admitted before a failure but finishing after it does not end
// that failure's streak.
func (in *instance) fast(fn func() Outcome) {
	gen := in.gen.Load()
	booked := false
	defer func() {
		if !booked {
			// fn panicked: a failure, as in the library
			in.book(gen, Failure)
		}
	}()
	o := fn()
	booked = true
	if o == Success {
		in.fastOK.Add(1)
		return
	}
	in.book(gen, o)
}

// book hands an outcome of the fast path to the library, if the instance
// has not changed state since the request was admitted (in generation gen).
// A failure marks the instance failing first, so that later requests take
// the library's path and its successes end the streak.
func (in *instance) book(gen uint64, o Outcome) {
	if o != Excluded {
		in.failing()
		defer in.pending.Add(-1)
	}
	if in.gen.Load() != gen {
		return
	}
	// If the library refuses (a concurrent failure opened it), the outcome
	// belongs to a state that is over, and is dropped as the library would.
	_, _ = in.cb.Execute(func() (struct{}, error) { return struct{}{}, o.err() })
}

// failing marks a lean instance as failing (not clean) and counts a failure
// pending, before the failure is booked in the library.
func (in *instance) failing() {
	in.pending.Add(1)
	in.step(false)
}

// step advances word's sequence number and sets its clean flag to clean.
func (in *instance) step(clean bool) {
	for {
		w := in.word.Load()
		next := w&^cleanBit + seqStep
		if clean {
			next |= cleanBit
		}
		if in.word.CompareAndSwap(w, next) {
			return
		}
	}
}

// slow runs fn through the library's Execute. On a lean instance, failures
// mark it failing before the library books them, and a success checks
// whether it is clean again.
func (in *instance) slow(fn func() Outcome) error {
	failed := false
	if in.lean {
		defer func() {
			if failed {
				in.pending.Add(-1)
			}
		}()
	}
	_, err := in.cb.Execute(func() (struct{}, error) {
		o := Failure // if fn panics
		if in.lean {
			defer func() {
				if o != Success && o != Excluded {
					in.failing()
					failed = true
				}
			}()
		}
		o = fn()
		return struct{}{}, o.err()
	})
	if err == nil && in.lean {
		in.recheck()
	}
	switch err {
	case nil, errFailure, errExcluded:
		return nil
	case gobreaker.ErrOpenState:
		return ErrOpen
	case gobreaker.ErrTooManyRequests:
		return ErrTooManyRequests
	}
	return err
}

// State returns the current state. It takes the library's lock, and if an open
// breaker's timeout has passed it turns it half-open (calling onChange) first,
// as Do would.
func (b *Breaker) State() State {
	return fromGobreaker(b.cur.Load().cb.State())
}

// recheck marks a failing lean instance clean again after a success, if the
// library is closed with no failure streak, and no failure is pending or
// came in since the check began.
func (in *instance) recheck() {
	w := in.word.Load()
	if w&cleanBit != 0 || in.pending.Load() != 0 {
		return
	}
	// Any change of state or failure after w was read moves word on, and
	// the swap below fails; one before it is in the library's state now.
	if in.cb.State() != gobreaker.StateClosed || in.cb.Counts().ConsecutiveFailures != 0 {
		return
	}
	run := in.fastOK.Load()
	if in.word.CompareAndSwap(w, w|cleanBit) {
		in.runStart.Store(run)
	}
}

// Counts returns the counts of the current state (see Counts). Like State, it
// brings the state and the rolling window up to date first.
func (b *Breaker) Counts() Counts {
	in := b.cur.Load()
	st := in.cb.State()
	c := countsFrom(in.cb.Counts())
	if in.lean && st == gobreaker.StateClosed {
		// the successes of the fast path since the instance closed
		ok := in.fastOK.Load()
		c.Requests += uint32(ok)
		c.TotalSuccesses += uint32(ok)
		if in.word.Load()&cleanBit != 0 {
			c.ConsecutiveSuccesses += uint32(ok - in.runStart.Load())
		}
	}
	return c
}

// Ready reports whether Do would likely let a request through now: the
// breaker is closed or half-open (whose probe slots may all be taken), or open
// with its timeout passed. It takes no lock, does not allocate, and does not
// change the state or take a probe slot.
func (b *Breaker) Ready() bool {
	if State(b.state.Load()) != StateOpen {
		return true
	}
	return mono() > b.retryAt.Load()
}

// OpenedAt returns when the breaker last opened, or the zero time if it never
// did.
func (b *Breaker) OpenedAt() time.Time {
	return monoTime(b.openedAt.Load())
}

// RetryAt returns when an open breaker turns half-open (it does so on the first
// call that looks after that time), or the zero time if it is not open.
func (b *Breaker) RetryAt() time.Time {
	if State(b.state.Load()) != StateOpen {
		return time.Time{}
	}
	return monoTime(b.retryAt.Load())
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

// Settings returns the settings in use, with defaults applied.
func (b *Breaker) Settings() Settings {
	return b.cur.Load().settings
}

// Reset closes the breaker and clears its counts, calling onChange if it was not
// closed. Outcomes of requests admitted before Reset are ignored.
func (b *Breaker) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	in, st, retryAt := b.closed(b.cur.Load().settings)
	b.replace(nil, in, st, retryAt)
}

// Trip opens the breaker now, for a full Timeout, whatever its state. If it was
// not open, onChange is called and Trips counts one more; if it was, its open
// period restarts now (RetryAt moves, OpenedAt does not). Outcomes of requests
// admitted before Trip are ignored.
func (b *Breaker) Trip() {
	b.mu.Lock()
	defer b.mu.Unlock()
	in, st, retryAt := b.opened(b.cur.Load().settings)
	b.replace(nil, in, st, retryAt)
}

// Update applies new settings (after WithDefaults) to the breaker, for a
// configuration reload. If they equal the current settings nothing changes.
// Otherwise the breaker carries its state over to the new settings:
//
//   - closed stays closed, with its counts cleared;
//   - open stays open until its RetryAt, or until OpenedAt plus the new
//     Timeout if that is sooner (a shorter timeout applies at once, a longer
//     one waits for the next open period); if that time has passed it turns
//     half-open at once;
//   - half-open stays half-open, with all Successes probe slots free again:
//     probes in flight are not counted, so up to twice as many can briefly
//     run.
//
// onChange is called only if the state changes. Trips, OpenedAt and RetryAt are
// kept. Outcomes of requests admitted before Update are ignored.
func (b *Breaker) Update(s Settings) error {
	s = s.sanitize()
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		base := b.cur.Load()
		if base.settings == s {
			return nil
		}
		// Reading the state first turns a due open breaker half-open
		// through the hook, so the carried state is the current one.
		in, st, retryAt := b.carry(s, fromGobreaker(base.cb.State()))
		if b.replace(base, in, st, retryAt) {
			return nil
		}
		// base was provisional, and its hook replaced it by a regular
		// instance in the meantime. Regular instances are replaced only
		// under b.mu, so this loops at most once more.
	}
}

// newInstance builds an instance that is not live yet. openFor is the library's
// open timeout: s.Timeout, except for a provisional instance.
func (b *Breaker) newInstance(s Settings, openFor time.Duration, provisional bool) *instance {
	in := &instance{b: b, settings: s, provisional: provisional}
	in.lean = !provisional && s.FailureRatio == 0 && s.Window == 0
	if in.lean {
		in.word.Store(cleanBit) // closed, with nothing counted
	}
	gs := gobreaker.Settings{
		Name:          b.name,
		MaxRequests:   s.Successes,
		Timeout:       openFor,
		ReadyToTrip:   in.readyToTrip,
		OnStateChange: in.stateChanged,
		IsExcluded:    isExcluded,
	}
	if s.Window > 0 {
		gs.Interval, gs.BucketPeriod = window(s.Window)
	}
	in.cb = gobreaker.NewCircuitBreaker[struct{}](gs)
	return in
}

// closed returns a regular instance in the closed state.
func (b *Breaker) closed(s Settings) (*instance, State, int64) {
	return b.newInstance(s, s.Timeout, false), StateClosed, 0
}

// opened returns a regular instance opened now, with its state and RetryAt.
func (b *Breaker) opened(s Settings) (*instance, State, int64) {
	in := b.newInstance(s, s.Timeout, false)
	in.forceOpen()
	st, retryAt := in.settle(s.Timeout)
	return in, st, retryAt
}

// carry returns an instance with settings s that continues state st of the
// current one (see Update), with its actual state and RetryAt.
func (b *Breaker) carry(s Settings, st State) (*instance, State, int64) {
	if st == StateClosed {
		return b.closed(s)
	}
	openFor := minOpen
	if st == StateOpen {
		openFor = b.remainingOpen(s)
	}
	in := b.newInstance(s, openFor, true)
	in.forceOpen()
	got, retryAt := in.settle(openFor)
	for i := 0; st == StateHalfOpen && got == StateOpen && i < settleTries; i++ {
		got, retryAt = in.settle(openFor)
	}
	return in, got, retryAt
}

// remainingOpen returns how much longer an open breaker stays open under new
// settings s: until its RetryAt, or OpenedAt+s.Timeout if sooner, and at least
// minOpen.
func (b *Breaker) remainingOpen(s Settings) time.Duration {
	now := mono()
	until := now + int64(s.Timeout)
	if at := b.openedAt.Load(); at != 0 {
		until = at + int64(s.Timeout)
	}
	if r := b.retryAt.Load(); r != 0 && r < until {
		until = r
	}
	return max(time.Duration(until-now), minOpen)
}

// install makes in live and current. Callers other than New hold hookMu.
func (b *Breaker) install(in *instance) {
	in.live.Store(true)
	b.cur.Store(in)
}

// replace installs in, prepared in state st, in place of base (or of whatever
// is current if base is nil) and publishes st. If base is no longer current it
// changes nothing and reports false.
func (b *Breaker) replace(base, in *instance, st State, retryAt int64) bool {
	b.hookMu.Lock()
	defer b.hookMu.Unlock()
	if base != nil && b.cur.Load() != base {
		return false
	}
	b.install(in)
	b.publish(st, retryAt)
	return true
}

// publish records state to in the mirror and reports the change, if any, to
// onChange. retryAt is used only if to is StateOpen. It must be called with
// hookMu held.
func (b *Breaker) publish(to State, retryAt int64) {
	from := State(b.state.Load())
	// Store RetryAt before the state when opening, and clear it after
	// leaving, so that a lock-free reader never sees an open state with
	// another period's RetryAt.
	if to == StateOpen {
		if from != StateOpen {
			b.openedAt.Store(mono())
			b.trips.Add(1)
		}
		b.retryAt.Store(retryAt)
		b.state.Store(uint32(to))
	} else {
		b.state.Store(uint32(to))
		b.retryAt.Store(0)
	}
	if from != to && b.onChange != nil {
		b.onChange(from, to)
	}
}

// readyToTrip is the library's ReadyToTrip hook.
func (in *instance) readyToTrip(c gobreaker.Counts) bool {
	return in.force.Load() || in.settings.readyToTrip(countsFrom(c))
}

// stateChanged is the library's OnStateChange hook. It runs with the library's
// lock held.
func (in *instance) stateChanged(_ string, _, to gobreaker.State) {
	if !in.live.Load() {
		return
	}
	b := in.b
	b.hookMu.Lock()
	defer b.hookMu.Unlock()
	if b.cur.Load() != in {
		// Replaced: its outcomes no longer matter.
		return
	}
	st := fromGobreaker(to)
	if in.lean {
		in.changed(st)
	}
	var retryAt int64
	switch {
	case in.provisional && st == StateOpen:
		var next *instance
		next, st, retryAt = b.opened(in.settings)
		b.install(next)
	case in.provisional && st == StateClosed:
		var next *instance
		next, st, retryAt = b.closed(in.settings)
		b.install(next)
	case st == StateOpen:
		// The library set its expiry before calling the hook, so this
		// RetryAt is never before it.
		retryAt = mono() + int64(in.settings.Timeout)
	}
	b.publish(st, retryAt)
}

// changed starts a new generation of a lean instance entering state st: the
// fast path's counts start over, and the instance is clean if st is closed
// (the library has just cleared its counts).
func (in *instance) changed(st State) {
	in.gen.Add(1)
	if st == StateClosed {
		in.fastOK.Store(0)
		in.runStart.Store(0)
	}
	in.step(st == StateClosed)
}

// forceOpen opens a fresh instance that is not live yet, by reporting one
// failure while force is set.
func (in *instance) forceOpen() {
	in.force.Store(true)
	defer in.force.Store(false)
	in.word.Store(0) // not clean: open
	_, _ = in.cb.Execute(func() (struct{}, error) { return struct{}{}, errFailure })
}

// settle returns the state of an instance that is not live yet, and for an open
// one its RetryAt, read after the library set its expiry from openFor so that
// Ready never reports the instance due before the library does.
func (in *instance) settle(openFor time.Duration) (State, int64) {
	st := fromGobreaker(in.cb.State())
	if st != StateOpen {
		return st, 0
	}
	return st, mono() + int64(openFor)
}
