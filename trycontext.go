package bifrost

import (
	"context"
	"sync"
	"time"
)

// tryContext is the context a try runs with when something other than its
// client may end it: a hedge race, a per-try timeout, or the take-back from
// a worker found hanging (see waitingTries). It carries the request's
// context (values, deadline, the client going away) and a cancellation of
// its own.
//
// context.WithCancel would do that at five allocations per try: the
// context, its cancel function, its Done channel, and the children map
// that Go's transport registers its own per-request context in (the map
// and its first group). A tryContext keeps its cancellation in a
// tryCancel that outlives the try: as long as nobody cancels it, it goes
// back to a pool with its channel and children map, so a try pays for the
// tryContext itself and the context.AfterFunc that brings the client's
// cancellation to it (three allocations). Value answers the context
// package's own lookup with the tryCancel's context, so a context derived
// from the try (the transport's) registers with it directly, as it would
// with any cancelable context, and no goroutine is started for it.
//
// The tryContext itself is never reused: Go's transport may go on using a
// request's context after the request (a dial that finishes for the idle
// pool reads its values), and it must keep reading this request's.
type tryContext struct {
	parent context.Context
	*tryCancel
}

// tryCancel is the reusable part of a tryContext.
type tryCancel struct {
	// inner is set once, and canceled at most once, after which the
	// tryCancel is dropped: what reads it late reads what it read before
	inner       context.Context
	cancelInner context.CancelCauseFunc
	// Cancel ends the try (with context.Canceled); made once per
	// tryCancel, so that handing it out costs nothing
	Cancel context.CancelFunc
	// onParentDone passes the client's cancellation (and its cause) to
	// inner; made once, like Cancel
	onParentDone func()
	// the current try's: its request's context, and the undoing of the
	// AfterFunc that watches it
	parent context.Context
	stop   func() bool
	// late is set when a cancellation may still come after the try (a
	// per-try timer that fired as the try ended): the tryCancel is not
	// reused
	late bool
}

var tryCancels = sync.Pool{New: func() any {
	c := new(tryCancel)
	c.inner, c.cancelInner = context.WithCancelCause(context.Background())
	c.Cancel = func() { c.cancelInner(nil) }
	c.onParentDone = func() { c.cancelInner(context.Cause(c.parent)) }
	return c
}}

// newTryContext returns a cancelable context for one try of a request
// whose context is parent. The try must call release when it ends.
func newTryContext(parent context.Context) *tryContext {
	c := tryCancels.Get().(*tryCancel)
	c.parent, c.late = parent, false
	c.stop = context.AfterFunc(parent, c.onParentDone)
	return &tryContext{parent: parent, tryCancel: c}
}

// release ends the try's use of t: it no longer follows its parent, and
// its cancellation is kept for another try unless it was used.
func (t *tryContext) release() {
	c := t.tryCancel
	if c.stop() && !c.late && c.inner.Err() == nil {
		c.parent, c.stop = nil, nil
		tryCancels.Put(c)
	}
}

// stopTimer stops a per-try timer that cancels t; if it fired already,
// its cancellation may still be on its way, and t's is not reused.
func (t *tryContext) stopTimer(timer *time.Timer) {
	if !timer.Stop() {
		t.late = true
	}
}

// Deadline is the request's.
func (t *tryContext) Deadline() (time.Time, bool) { return t.parent.Deadline() }

// Done is closed when the try is canceled, or soon after its client's
// request is.
func (t *tryContext) Done() <-chan struct{} { return t.inner.Done() }

// Err is nil until Done is closed, then context.Canceled.
func (t *tryContext) Err() error { return t.inner.Err() }

// Value is the request's value for key, except for the context package's
// own key, which finds the cancelable context to register with: inner's.
// That key is a *int; the request's values (Caddy's, net/http's) are
// looked up many times per request under keys of other types, and go
// straight to the request's context. (Were the package's key to change
// type, contexts derived from a try would start a goroutine each, which
// TestTryContextCancelEndsWhatDerivesFromIt catches.)
func (t *tryContext) Value(key any) any {
	if _, ok := key.(*int); ok {
		if v := t.inner.Value(key); v != nil {
			return v
		}
	}
	return t.parent.Value(key)
}

// String names the context in panics and logs.
func (t *tryContext) String() string { return "bifrost.tryContext" }
