//go:build bk_gob

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

var epoch = time.Now()

func mono() int64 { return max(int64(time.Since(epoch)), 1) }

func monoTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return epoch.Add(time.Duration(ns))
}

// Breaker is the plain-gobreaker prototype: one library breaker per set of
// settings, used through Execute, with a lock-free mirror of its state kept
// by the library's OnStateChange hook.
type Breaker struct {
	name     string
	onChange func(from, to State)
	cur      atomic.Pointer[instance]
	mu       sync.Mutex // Reset, Trip, Update
	hookMu   sync.Mutex // mirror and onChange; taken inside the library's lock

	state    atomic.Uint32
	openedAt atomic.Int64
	retryAt  atomic.Int64
	trips    atomic.Uint64
}

type instance struct {
	b     *Breaker
	cb    *gobreaker.CircuitBreaker[struct{}]
	s     Settings
	live  atomic.Bool
	force atomic.Bool
}

// New returns a closed breaker.
func New(name string, s Settings, onChange func(from, to State)) (*Breaker, error) {
	b := &Breaker{name: name, onChange: onChange}
	in := b.newInstance(s.sanitize())
	in.live.Store(true)
	b.cur.Store(in)
	return b, nil
}

func (b *Breaker) newInstance(s Settings) *instance {
	in := &instance{b: b, s: s}
	gs := gobreaker.Settings{
		Name:          b.name,
		MaxRequests:   s.Successes,
		Timeout:       s.Timeout,
		ReadyToTrip:   func(c gobreaker.Counts) bool { return in.force.Load() || s.readyToTrip(countsFrom(c)) },
		OnStateChange: in.stateChanged,
		IsExcluded:    isExcluded,
	}
	if s.Window > 0 {
		gs.Interval, gs.BucketPeriod = window(s.Window)
	}
	in.cb = gobreaker.NewCircuitBreaker[struct{}](gs)
	return in
}

// Do runs fn through the library's Execute.
func (b *Breaker) Do(fn func() Outcome) error {
	_, err := b.cur.Load().cb.Execute(func() (struct{}, error) {
		return struct{}{}, fn().err()
	})
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

func (in *instance) stateChanged(_ string, _, to gobreaker.State) {
	if !in.live.Load() {
		return
	}
	b := in.b
	b.hookMu.Lock()
	defer b.hookMu.Unlock()
	if b.cur.Load() != in {
		return
	}
	b.publish(fromGobreaker(to), in.s.Timeout)
}

func (b *Breaker) publish(to State, timeout time.Duration) {
	from := State(b.state.Load())
	if to == StateOpen {
		now := mono()
		if from != StateOpen {
			b.openedAt.Store(now)
			b.trips.Add(1)
		}
		b.retryAt.Store(now + int64(timeout))
		b.state.Store(uint32(to))
	} else {
		b.state.Store(uint32(to))
		b.retryAt.Store(0)
	}
	if from != to && b.onChange != nil {
		b.onChange(from, to)
	}
}

// replace installs a new instance, forced open first if open.
func (b *Breaker) replace(s Settings, open bool) {
	in := b.newInstance(s)
	if open {
		in.force.Store(true)
		_, _ = in.cb.Execute(func() (struct{}, error) { return struct{}{}, errFailure })
		in.force.Store(false)
	}
	b.hookMu.Lock()
	defer b.hookMu.Unlock()
	in.live.Store(true)
	b.cur.Store(in)
	to := StateClosed
	if open {
		to = StateOpen
	}
	b.publish(to, s.Timeout)
}

// State returns the current state.
func (b *Breaker) State() State { return fromGobreaker(b.cur.Load().cb.State()) }

// Counts returns the counts of the current state.
func (b *Breaker) Counts() Counts { return countsFrom(b.cur.Load().cb.Counts()) }

// Ready reports whether Do would likely let a request through now.
func (b *Breaker) Ready() bool {
	if State(b.state.Load()) != StateOpen {
		return true
	}
	return mono() > b.retryAt.Load()
}

// OpenedAt returns when the breaker last opened.
func (b *Breaker) OpenedAt() time.Time { return monoTime(b.openedAt.Load()) }

// RetryAt returns when an open breaker turns half-open.
func (b *Breaker) RetryAt() time.Time {
	if State(b.state.Load()) != StateOpen {
		return time.Time{}
	}
	return monoTime(b.retryAt.Load())
}

// Trips returns how many times the breaker has opened.
func (b *Breaker) Trips() uint64 { return b.trips.Load() }

// Name returns the breaker's name.
func (b *Breaker) Name() string { return b.name }

// Settings returns the settings in use.
func (b *Breaker) Settings() Settings { return b.cur.Load().s }

// Reset closes the breaker.
func (b *Breaker) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.replace(b.cur.Load().s, false)
}

// Trip opens the breaker for a full Timeout.
func (b *Breaker) Trip() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.replace(b.cur.Load().s, true)
}

// Update applies new settings. The library cannot be put into a state, so
// a breaker that is not closed is forced open for a full new Timeout.
func (b *Breaker) Update(s Settings) error {
	s = s.sanitize()
	b.mu.Lock()
	defer b.mu.Unlock()
	cur := b.cur.Load()
	if cur.s == s {
		return nil
	}
	b.replace(s, cur.cb.State() != gobreaker.StateClosed)
	return nil
}
