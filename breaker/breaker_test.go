package breaker

import (
	"errors"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// clock is a test clock: it moves only when told to.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock {
	return &clock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type transition struct{ from, to State }

// recorder collects onChange calls.
type recorder struct {
	mu  sync.Mutex
	got []transition
}

func (r *recorder) onChange(from, to State) {
	r.mu.Lock()
	r.got = append(r.got, transition{from, to})
	r.mu.Unlock()
}

func (r *recorder) expect(t *testing.T, want ...transition) {
	t.Helper()
	r.mu.Lock()
	got := slices.Clone(r.got)
	r.mu.Unlock()
	if !slices.Equal(got, want) {
		t.Fatalf("transitions = %v, want %v", got, want)
	}
}

var (
	closedToOpen     = transition{StateClosed, StateOpen}
	openToHalfOpen   = transition{StateOpen, StateHalfOpen}
	halfOpenToClosed = transition{StateHalfOpen, StateClosed}
	halfOpenToOpen   = transition{StateHalfOpen, StateOpen}
	openToClosed     = transition{StateOpen, StateClosed}
)

// settings returns complete settings: 3 failures, 2 successes, a one-minute
// timeout, changed by the given functions.
func settings(change ...func(*Settings)) Settings {
	s := Settings{Failures: 3, Successes: 2, Timeout: time.Minute}
	for _, f := range change {
		f(&s)
	}
	return s
}

// harness is a breaker on a test clock, with its transitions recorded.
type harness struct {
	*Breaker
	clock *clock
	rec   *recorder
}

func newHarness(t *testing.T, s Settings) *harness {
	t.Helper()
	h := &harness{clock: newClock(), rec: &recorder{}}
	b, err := newWithClock("w", s, h.rec.onChange, h.clock.now)
	if err != nil {
		t.Fatalf("New(%+v) = %v", s, err)
	}
	h.Breaker = b
	return h
}

// halfOpen returns a half-open breaker with settings s: tripped, and past
// its timeout.
func halfOpen(t *testing.T, s Settings) *harness {
	t.Helper()
	h := newHarness(t, s)
	h.Trip()
	h.clock.advance(s.Timeout)
	h.expectState(t, StateHalfOpen)
	h.rec.expect(t, closedToOpen, openToHalfOpen)
	return h
}

func (h *harness) expectState(t *testing.T, want State) {
	t.Helper()
	if got := h.State(); got != want {
		t.Fatalf("State() = %v, want %v", got, want)
	}
}

// do runs one request with outcome o through the breaker, which must admit
// it.
func do(t *testing.T, b *Breaker, o Outcome) {
	t.Helper()
	if err := b.Do(func() Outcome { return o }); err != nil {
		t.Fatalf("Do(%v) = %v", o, err)
	}
}

// doAll runs a sequence of outcomes: S, F or X for each.
func doAll(t *testing.T, b *Breaker, seq string) {
	t.Helper()
	for _, c := range seq {
		do(t, b, outcomeOf(t, c))
	}
}

func outcomeOf(t *testing.T, c rune) Outcome {
	t.Helper()
	switch c {
	case 'S':
		return Success
	case 'F':
		return Failure
	case 'X':
		return Excluded
	}
	t.Fatalf("bad outcome %q", c)
	return Failure
}

// allow lets one request through b and keeps it in flight: the request runs
// inside Do on a goroutine of its own, and the returned function reports its
// outcome and waits until Do has booked it. A refused request returns Do's
// error and no function.
func allow(b *Breaker) (done func(Outcome), err error) {
	admitted := make(chan struct{})
	outcome := make(chan Outcome)
	returned := make(chan error, 1)
	go func() {
		returned <- b.Do(func() Outcome {
			close(admitted)
			return <-outcome
		})
	}()
	select {
	case <-admitted:
		var once sync.Once
		return func(o Outcome) {
			once.Do(func() {
				outcome <- o
				<-returned
			})
		}, nil
	case err := <-returned:
		return nil, err
	}
}

// admit takes n requests through b and returns their done functions. The
// requests a test leaves in flight end, excluded, when it is over.
func admit(t *testing.T, b *Breaker, n int) []func(Outcome) {
	t.Helper()
	var dones []func(Outcome)
	for i := range n {
		done, err := allow(b)
		if err != nil {
			t.Fatalf("request #%d refused: %v", i+1, err)
		}
		t.Cleanup(func() { done(Excluded) })
		dones = append(dones, done)
	}
	return dones
}

func expectRefused(t *testing.T, b *Breaker, want error) {
	t.Helper()
	ran := false
	if err := b.Do(func() Outcome { ran = true; return Success }); !errors.Is(err, want) {
		t.Fatalf("Do() = %v, want %v", err, want)
	}
	if ran {
		t.Fatal("Do() ran a refused request")
	}
}

func TestNew(t *testing.T) {
	t.Run("closed", func(t *testing.T) {
		s := settings()
		b, err := New("w1", s, nil)
		if err != nil {
			t.Fatal(err)
		}
		if b.State() != StateClosed || !b.Ready() {
			t.Errorf("State, Ready = %v, %v; want closed, true", b.State(), b.Ready())
		}
		if b.Name() != "w1" || b.Settings() != s {
			t.Errorf("Name, Settings = %q, %+v", b.Name(), b.Settings())
		}
		if b.Trips() != 0 || !b.OpenedAt().IsZero() || !b.RetryAt().IsZero() || b.Counts() != (Counts{}) {
			t.Errorf("Trips, OpenedAt, RetryAt, Counts = %d, %v, %v, %+v; want zeros",
				b.Trips(), b.OpenedAt(), b.RetryAt(), b.Counts())
		}
		do(t, b, Failure) // nil onChange is fine
	})

	t.Run("incomplete settings are refused", func(t *testing.T) {
		b, err := New("w", Settings{Failures: 5}, nil)
		if b != nil || err == nil {
			t.Fatalf("New() = %v, %v; want an error", b, err)
		}
		for _, field := range []string{"successes", "timeout"} {
			if !strings.Contains(err.Error(), field) {
				t.Errorf("New() = %q, want it to name %s", err, field)
			}
		}
	})
}

func TestConsecutiveFailures(t *testing.T) {
	for _, tc := range []struct {
		name     string
		failures uint32
		before   string // outcomes that must leave it closed
		last     bool   // one more failure opens it
	}{
		{name: "threshold 1", failures: 1, last: true},
		{name: "threshold 3", failures: 3, before: "FF", last: true},
		{name: "a success resets the streak", failures: 3, before: "FFSFF", last: true},
		{name: "exclusions do not break the streak", failures: 3, before: "FXXXF", last: true},
		{name: "successes only", failures: 1, before: "SSSSSSSSSS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, settings(func(s *Settings) { s.Failures = tc.failures }))
			for i, c := range tc.before {
				do(t, h.Breaker, outcomeOf(t, c))
				if got := h.State(); got != StateClosed {
					t.Fatalf("State() after %q = %v, want closed", tc.before[:i+1], got)
				}
			}
			if !tc.last {
				h.rec.expect(t)
				return
			}
			do(t, h.Breaker, Failure)
			h.expectState(t, StateOpen)
			expectRefused(t, h.Breaker, ErrOpen)
			h.rec.expect(t, closedToOpen)
			if h.Trips() != 1 || h.Ready() {
				t.Errorf("Trips, Ready = %d, %v; want 1, false", h.Trips(), h.Ready())
			}
			if !h.OpenedAt().Equal(h.clock.now()) || !h.RetryAt().Equal(h.clock.now().Add(time.Minute)) {
				t.Errorf("OpenedAt, RetryAt = %v, %v; want now and a timeout later", h.OpenedAt(), h.RetryAt())
			}
			if got := h.Counts(); got != (Counts{}) {
				t.Errorf("Counts() = %+v, want cleared on opening", got)
			}
		})
	}
}

func TestFailureRatio(t *testing.T) {
	for _, tc := range []struct {
		name     string
		ratio    float64
		min      uint32
		failures uint32 // 0: 100
		seq      string
		openAt   int // outcomes after which it is open; 0: never
	}{
		{name: "opens at the ratio", ratio: 0.5, min: 4, seq: "SSFF", openAt: 4},
		{name: "not before min requests", ratio: 0.5, min: 4, seq: "FSFSF", openAt: 5},
		{name: "no minimum", ratio: 0.5, seq: "SF", openAt: 2},
		{name: "below the ratio", ratio: 0.6, min: 4, seq: "SFSFSFSFSFSF"},
		{name: "exclusions are not requests", ratio: 0.5, min: 4, seq: "FXXXXXXF"},
		{name: "in-flight requests are not requests", ratio: 0.5, min: 3, seq: "SFF", openAt: 3},
		{name: "ratio 1 needs every request failed", ratio: 1, min: 3, seq: "FFSFFFS"},
		{name: "ratio 1", ratio: 1, min: 3, seq: "FFF", openAt: 3},
		{name: "consecutive failures still open it", ratio: 0.9, min: 100, failures: 3, seq: "SFFF", openAt: 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, settings(func(s *Settings) {
				s.FailureRatio, s.MinRequests, s.Failures = tc.ratio, tc.min, tc.failures
				if s.Failures == 0 {
					s.Failures = 100
				}
			}))
			if tc.name == "in-flight requests are not requests" {
				// two requests in flight raise Requests, not the
				// completed count the ratio is taken over
				admit(t, h.Breaker, 2)
			}
			for i, c := range tc.seq {
				do(t, h.Breaker, outcomeOf(t, c))
				want := StateClosed
				if i+1 == tc.openAt {
					want = StateOpen
				}
				if got := h.State(); got != want {
					t.Fatalf("State() after %q = %v, want %v", tc.seq[:i+1], got, want)
				}
				if want == StateOpen {
					return
				}
			}
		})
	}
}

func TestExcluded(t *testing.T) {
	t.Run("closed", func(t *testing.T) {
		h := newHarness(t, settings())
		doAll(t, h.Breaker, "SFF")
		for range 50 {
			do(t, h.Breaker, Excluded)
		}
		want := Counts{Requests: 53, TotalSuccesses: 1, TotalFailures: 2, TotalExclusions: 50, ConsecutiveFailures: 2}
		if got := h.Counts(); got != want {
			t.Fatalf("Counts() = %+v, want %+v", got, want)
		}
		h.expectState(t, StateClosed)
		h.rec.expect(t)
	})

	t.Run("half-open", func(t *testing.T) {
		h := halfOpen(t, settings())
		for range 20 {
			do(t, h.Breaker, Excluded)
		}
		h.expectState(t, StateHalfOpen)
		if c := h.Counts(); c != (Counts{Requests: 20, TotalExclusions: 20}) {
			t.Fatalf("Counts() = %+v", c)
		}
		h.rec.expect(t, closedToOpen, openToHalfOpen)
	})
}

func TestHalfOpen(t *testing.T) {
	s := settings(func(s *Settings) { s.Failures, s.Successes = 1, 3 })

	t.Run("limits probes and closes after successes", func(t *testing.T) {
		h := halfOpen(t, s)
		dones := admit(t, h.Breaker, 3)
		expectRefused(t, h.Breaker, ErrTooManyRequests)
		if !h.Ready() {
			t.Error("Ready() = false while half-open")
		}
		dones[0](Success)
		dones[1](Success)
		h.expectState(t, StateHalfOpen)
		expectRefused(t, h.Breaker, ErrTooManyRequests)
		dones[2](Success)
		h.expectState(t, StateClosed)
		h.rec.expect(t, closedToOpen, openToHalfOpen, halfOpenToClosed)
		admit(t, h.Breaker, 10) // closed: no limit
	})

	t.Run("a failure reopens it", func(t *testing.T) {
		h := halfOpen(t, s)
		dones := admit(t, h.Breaker, 2)
		dones[0](Success)
		dones[1](Failure)
		h.expectState(t, StateOpen)
		expectRefused(t, h.Breaker, ErrOpen)
		h.rec.expect(t, closedToOpen, openToHalfOpen, halfOpenToOpen)
		if h.Trips() != 2 {
			t.Errorf("Trips() = %d, want 2", h.Trips())
		}
		if d := h.RetryAt().Sub(h.OpenedAt()); d != time.Minute {
			t.Errorf("RetryAt - OpenedAt = %v, want the timeout", d)
		}
	})

	t.Run("an exclusion frees its slot", func(t *testing.T) {
		h := halfOpen(t, s)
		dones := admit(t, h.Breaker, 3)
		dones[0](Excluded)
		dones = append(dones, admit(t, h.Breaker, 1)...)
		expectRefused(t, h.Breaker, ErrTooManyRequests)
		for _, done := range dones[1:] {
			done(Success)
		}
		h.expectState(t, StateClosed)
	})

	t.Run("concurrent probes", func(t *testing.T) {
		h := halfOpen(t, s)
		var (
			start            = make(chan struct{})
			wg               sync.WaitGroup
			admitted, refuse atomic.Int32
			mu               sync.Mutex
			dones            []func(Outcome)
		)
		for range 64 {
			wg.Go(func() {
				<-start
				done, err := allow(h.Breaker)
				if err != nil {
					if errors.Is(err, ErrTooManyRequests) {
						refuse.Add(1)
					}
					return
				}
				admitted.Add(1)
				mu.Lock()
				dones = append(dones, done)
				mu.Unlock()
			})
		}
		close(start)
		wg.Wait()
		if admitted.Load() != 3 || refuse.Load() != 61 {
			t.Fatalf("admitted %d, refused %d; want 3, 61", admitted.Load(), refuse.Load())
		}
		for _, done := range dones {
			done(Success)
		}
		h.expectState(t, StateClosed)
	})
}

func TestTimeoutTurnsHalfOpen(t *testing.T) {
	h := newHarness(t, settings(func(s *Settings) { s.Failures, s.Successes = 1, 1 }))
	do(t, h.Breaker, Failure)
	opened := h.OpenedAt()
	if want := opened.Add(time.Minute); !h.RetryAt().Equal(want) {
		t.Fatalf("RetryAt() = %v, want %v", h.RetryAt(), want)
	}
	h.clock.advance(time.Minute - time.Nanosecond)
	if h.Ready() || h.State() != StateOpen {
		t.Fatal("Ready or not open a nanosecond before RetryAt")
	}
	expectRefused(t, h.Breaker, ErrOpen)
	h.clock.advance(time.Nanosecond)
	if !h.Ready() {
		t.Fatal("Ready() = false at RetryAt")
	}
	// Ready does not change the state: the mirror still says open.
	if got := State(h.mstate.Load()); got != StateOpen {
		t.Fatalf("state after Ready() = %v, want still open", got)
	}
	h.rec.expect(t, closedToOpen)
	do(t, h.Breaker, Success)
	h.expectState(t, StateClosed)
	h.rec.expect(t, closedToOpen, openToHalfOpen, halfOpenToClosed)
	if !h.RetryAt().IsZero() || !h.OpenedAt().Equal(opened) {
		t.Errorf("RetryAt, OpenedAt = %v, %v; want zero, %v", h.RetryAt(), h.OpenedAt(), opened)
	}
}

func TestReadyTakesNoSlot(t *testing.T) {
	h := halfOpen(t, settings())
	for range 100 {
		if !h.Ready() {
			t.Fatal("Ready() = false while half-open")
		}
	}
	admit(t, h.Breaker, 2)
	h.Trip()
	if h.Ready() {
		t.Error("Ready() = true while open")
	}
}

func TestOnChangeOrder(t *testing.T) {
	h := newHarness(t, settings(func(s *Settings) { s.Failures, s.Successes = 1, 1 }))
	do(t, h.Breaker, Failure)
	h.clock.advance(time.Minute)
	h.State() // open → half-open
	h.State() // no change, no call
	do(t, h.Breaker, Success)
	h.Trip()
	h.Trip() // already open: no call
	h.Reset()
	h.Reset() // already closed: no call
	h.rec.expect(t, closedToOpen, openToHalfOpen, halfOpenToClosed, closedToOpen, openToClosed)
}

func TestTrip(t *testing.T) {
	t.Run("closed with counts", func(t *testing.T) {
		h := newHarness(t, settings())
		doAll(t, h.Breaker, "SFF")
		h.Trip()
		h.expectState(t, StateOpen)
		expectRefused(t, h.Breaker, ErrOpen)
		h.rec.expect(t, closedToOpen)
		if h.Trips() != 1 || h.Counts() != (Counts{}) {
			t.Errorf("Trips, Counts = %d, %+v; want 1, zero", h.Trips(), h.Counts())
		}
		if now := h.clock.now(); !h.OpenedAt().Equal(now) || !h.RetryAt().Equal(now.Add(time.Minute)) {
			t.Errorf("OpenedAt, RetryAt = %v, %v; want now and a timeout later", h.OpenedAt(), h.RetryAt())
		}
	})

	t.Run("half-open with probes in flight", func(t *testing.T) {
		h := halfOpen(t, settings())
		dones := admit(t, h.Breaker, 2)
		h.Trip()
		h.rec.expect(t, closedToOpen, openToHalfOpen, halfOpenToOpen)
		// outcomes of requests admitted before Trip are ignored
		dones[0](Success)
		dones[1](Success)
		h.expectState(t, StateOpen)
		if h.Trips() != 2 || h.Counts() != (Counts{}) {
			t.Errorf("Trips, Counts = %d, %+v; want 2, zero", h.Trips(), h.Counts())
		}
	})

	t.Run("open restarts the open period", func(t *testing.T) {
		h := newHarness(t, settings())
		h.Trip()
		opened := h.OpenedAt()
		h.clock.advance(59 * time.Second) // due in a second
		h.Trip()
		h.expectState(t, StateOpen)
		h.rec.expect(t, closedToOpen)
		if h.Trips() != 1 || !h.OpenedAt().Equal(opened) || !h.RetryAt().Equal(h.clock.now().Add(time.Minute)) {
			t.Errorf("Trips, OpenedAt, RetryAt = %d, %v, %v; want 1, %v, a timeout from now",
				h.Trips(), h.OpenedAt(), h.RetryAt(), opened)
		}
	})

	t.Run("open past its timeout stays open", func(t *testing.T) {
		h := newHarness(t, settings())
		h.Trip()
		h.clock.advance(2 * time.Minute) // due, but nobody looked
		h.Trip()
		if got := State(h.mstate.Load()); got != StateOpen || h.Ready() {
			t.Errorf("state, Ready = %v, %v; want open, false", got, h.Ready())
		}
		h.rec.expect(t, closedToOpen)
	})
}

func TestReset(t *testing.T) {
	t.Run("closed with counts", func(t *testing.T) {
		h := newHarness(t, settings())
		doAll(t, h.Breaker, "SFF")
		h.Reset()
		if got := h.Counts(); got != (Counts{}) {
			t.Fatalf("Counts() = %+v, want zero", got)
		}
		doAll(t, h.Breaker, "FF") // the two earlier failures are gone
		h.expectState(t, StateClosed)
		h.rec.expect(t)
	})

	t.Run("closed with a request in flight", func(t *testing.T) {
		h := newHarness(t, settings())
		doAll(t, h.Breaker, "FF")
		dones := admit(t, h.Breaker, 1)
		h.Reset()
		dones[0](Failure) // admitted before Reset: ignored
		doAll(t, h.Breaker, "FF")
		h.expectState(t, StateClosed)
	})

	t.Run("open", func(t *testing.T) {
		h := newHarness(t, settings())
		h.Trip()
		opened := h.OpenedAt()
		h.Reset()
		h.expectState(t, StateClosed)
		h.rec.expect(t, closedToOpen, openToClosed)
		if !h.Ready() || !h.RetryAt().IsZero() || h.Trips() != 1 || !h.OpenedAt().Equal(opened) {
			t.Errorf("Ready, RetryAt, Trips, OpenedAt = %v, %v, %d, %v", h.Ready(), h.RetryAt(), h.Trips(), h.OpenedAt())
		}
		do(t, h.Breaker, Success)
	})

	t.Run("half-open with probes in flight", func(t *testing.T) {
		h := halfOpen(t, settings())
		dones := admit(t, h.Breaker, 2)
		h.Reset()
		h.rec.expect(t, closedToOpen, openToHalfOpen, halfOpenToClosed)
		dones[0](Failure)
		dones[1](Failure)
		h.expectState(t, StateClosed)
		if got := h.Counts(); got != (Counts{}) {
			t.Fatalf("Counts() = %+v, want zero", got)
		}
	})
}

func TestUpdate(t *testing.T) {
	t.Run("equal settings keep everything", func(t *testing.T) {
		h := newHarness(t, settings())
		doAll(t, h.Breaker, "SFFX")
		before := h.Counts()
		if err := h.Update(settings()); err != nil {
			t.Fatal(err)
		}
		if got := h.Counts(); got != before {
			t.Fatalf("Counts() = %+v, want %+v", got, before)
		}
		do(t, h.Breaker, Failure) // the third in a row
		h.expectState(t, StateOpen)
	})

	t.Run("invalid settings change nothing", func(t *testing.T) {
		h := newHarness(t, settings())
		err := h.Update(settings(func(s *Settings) { s.FailureRatio, s.Timeout = 7, 0 }))
		if err == nil || !strings.Contains(err.Error(), "failure_ratio") || !strings.Contains(err.Error(), "timeout") {
			t.Fatalf("Update() = %v, want an error naming failure_ratio and timeout", err)
		}
		if h.Settings() != settings() {
			t.Errorf("Settings() = %+v, want unchanged", h.Settings())
		}
	})

	t.Run("closed keeps its counts, judged by the new threshold", func(t *testing.T) {
		h := newHarness(t, settings(func(s *Settings) { s.Failures = 5 }))
		doAll(t, h.Breaker, "SFFF")
		if err := h.Update(settings(func(s *Settings) { s.Failures = 2 })); err != nil {
			t.Fatal(err)
		}
		if got := h.Settings().Failures; got != 2 {
			t.Fatalf("Settings().Failures = %d, want 2", got)
		}
		h.expectState(t, StateClosed) // judged on the next failure
		if c := h.Counts(); c.ConsecutiveFailures != 3 || c.Requests != 4 {
			t.Fatalf("Counts() = %+v, want kept", c)
		}
		do(t, h.Breaker, Failure)
		h.expectState(t, StateOpen)
		h.rec.expect(t, closedToOpen)
	})

	t.Run("closed with a new window starts over", func(t *testing.T) {
		h := newHarness(t, settings())
		doAll(t, h.Breaker, "FF")
		if err := h.Update(settings(func(s *Settings) { s.Window = time.Minute })); err != nil {
			t.Fatal(err)
		}
		if c := h.Counts(); c != (Counts{}) {
			t.Fatalf("Counts() = %+v, want zero", c)
		}
		doAll(t, h.Breaker, "FF")
		h.expectState(t, StateClosed)
	})

	t.Run("open keeps its RetryAt under a longer timeout", func(t *testing.T) {
		h := newHarness(t, settings())
		h.Trip()
		opened, retry := h.OpenedAt(), h.RetryAt()
		h.clock.advance(time.Second)
		if err := h.Update(settings(func(s *Settings) { s.Timeout = time.Hour })); err != nil {
			t.Fatal(err)
		}
		h.expectState(t, StateOpen)
		expectRefused(t, h.Breaker, ErrOpen)
		if h.Trips() != 1 || !h.OpenedAt().Equal(opened) || !h.RetryAt().Equal(retry) {
			t.Errorf("Trips, OpenedAt, RetryAt = %d, %v, %v; want 1, %v, %v", h.Trips(), h.OpenedAt(), h.RetryAt(), opened, retry)
		}
		h.rec.expect(t, closedToOpen)

		// the next open period is the new timeout
		h.clock.advance(time.Minute)
		h.Trip()
		if d := h.RetryAt().Sub(h.clock.now()); d != time.Hour {
			t.Errorf("next open period %v, want an hour", d)
		}
	})

	t.Run("open takes a shorter timeout at once", func(t *testing.T) {
		h := newHarness(t, settings())
		h.Trip()
		opened := h.OpenedAt()
		h.clock.advance(time.Second)
		if err := h.Update(settings(func(s *Settings) { s.Timeout = 10 * time.Second })); err != nil {
			t.Fatal(err)
		}
		if want := opened.Add(10 * time.Second); !h.RetryAt().Equal(want) {
			t.Fatalf("RetryAt() = %v, want %v", h.RetryAt(), want)
		}
		h.clock.advance(9 * time.Second)
		h.expectState(t, StateHalfOpen)
	})

	t.Run("open past its new timeout turns half-open", func(t *testing.T) {
		h := newHarness(t, settings())
		h.Trip()
		h.clock.advance(30 * time.Second)
		if err := h.Update(settings(func(s *Settings) { s.Timeout = time.Second })); err != nil {
			t.Fatal(err)
		}
		if !h.Ready() {
			t.Error("Ready() = false past the new timeout")
		}
		h.expectState(t, StateHalfOpen)
		h.rec.expect(t, closedToOpen, openToHalfOpen)
	})

	t.Run("half-open keeps its probes", func(t *testing.T) {
		h := halfOpen(t, settings(func(s *Settings) { s.Successes = 2 }))
		old := admit(t, h.Breaker, 2)
		expectRefused(t, h.Breaker, ErrTooManyRequests)
		if err := h.Update(settings(func(s *Settings) { s.Successes = 3 })); err != nil {
			t.Fatal(err)
		}
		h.expectState(t, StateHalfOpen)
		dones := admit(t, h.Breaker, 1) // one more slot
		expectRefused(t, h.Breaker, ErrTooManyRequests)
		old[0](Success)
		old[1](Success)
		h.expectState(t, StateHalfOpen)
		dones[0](Success)
		h.expectState(t, StateClosed)
		h.rec.expect(t, closedToOpen, openToHalfOpen, halfOpenToClosed)
	})

	t.Run("half-open closes if its probes already succeeded enough", func(t *testing.T) {
		h := halfOpen(t, settings(func(s *Settings) { s.Successes = 3 }))
		doAll(t, h.Breaker, "SS")
		if err := h.Update(settings(func(s *Settings) { s.Successes = 2 })); err != nil {
			t.Fatal(err)
		}
		h.expectState(t, StateClosed)
		h.rec.expect(t, closedToOpen, openToHalfOpen, halfOpenToClosed)
	})

	t.Run("trips survive", func(t *testing.T) {
		h := newHarness(t, settings(func(s *Settings) { s.Failures = 1 }))
		h.Trip()
		h.Reset()
		do(t, h.Breaker, Failure)
		for i, f := range []uint32{3, 4} {
			if err := h.Update(settings(func(s *Settings) { s.Failures = f })); err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				h.Reset()
			}
		}
		if h.Trips() != 2 {
			t.Errorf("Trips() = %d, want 2", h.Trips())
		}
	})
}

func TestRollingWindow(t *testing.T) {
	const window = 10 * time.Second // ten buckets of a second

	t.Run("failures age out a bucket at a time", func(t *testing.T) {
		h := newHarness(t, settings(func(s *Settings) { s.Window = window }))
		do(t, h.Breaker, Failure) // bucket 0
		h.clock.advance(5 * time.Second)
		do(t, h.Breaker, Failure) // bucket 5
		if c := h.Counts(); c.ConsecutiveFailures != 2 || c.TotalFailures != 2 {
			t.Fatalf("Counts() = %+v", c)
		}
		h.clock.advance(5*time.Second - time.Nanosecond)
		if c := h.Counts(); c.ConsecutiveFailures != 2 {
			t.Fatalf("Counts() a nanosecond before the first failure leaves = %+v", c)
		}
		h.clock.advance(time.Nanosecond) // bucket 10: bucket 0 leaves
		want := Counts{Requests: 1, TotalFailures: 1, ConsecutiveFailures: 1}
		if c := h.Counts(); c != want {
			t.Fatalf("Counts() = %+v, want %+v", c, want)
		}
		doAll(t, h.Breaker, "F")
		h.expectState(t, StateClosed)
		doAll(t, h.Breaker, "F")
		h.expectState(t, StateOpen)
	})

	t.Run("a success ends the run of failures in every bucket", func(t *testing.T) {
		h := newHarness(t, settings(func(s *Settings) { s.Window = window }))
		do(t, h.Breaker, Failure) // bucket 0
		h.clock.advance(5 * time.Second)
		doAll(t, h.Breaker, "SF")        // bucket 5
		h.clock.advance(5 * time.Second) // bucket 0 leaves
		want := Counts{Requests: 2, TotalSuccesses: 1, TotalFailures: 1, ConsecutiveFailures: 1}
		if c := h.Counts(); c != want {
			t.Fatalf("Counts() = %+v, want %+v", c, want)
		}
	})

	t.Run("a success's run ends with its bucket", func(t *testing.T) {
		h := newHarness(t, settings(func(s *Settings) { s.Window = window }))
		doAll(t, h.Breaker, "SS")
		h.clock.advance(time.Second)
		doAll(t, h.Breaker, "S")
		h.clock.advance(9 * time.Second) // the first bucket leaves
		want := Counts{Requests: 1, TotalSuccesses: 1, ConsecutiveSuccesses: 1}
		if c := h.Counts(); c != want {
			t.Fatalf("Counts() = %+v, want %+v", c, want)
		}
		doAll(t, h.Breaker, "FS") // a failure ends the run in every bucket
		h.clock.advance(9 * time.Second)
		want = Counts{Requests: 2, TotalSuccesses: 1, TotalFailures: 1, ConsecutiveSuccesses: 1}
		if c := h.Counts(); c != want {
			t.Fatalf("Counts() = %+v, want %+v", c, want)
		}
	})

	t.Run("everything leaves after a long pause", func(t *testing.T) {
		h := newHarness(t, settings(func(s *Settings) { s.Window = window }))
		doAll(t, h.Breaker, "SFFX")
		h.clock.advance(time.Hour)
		if c := h.Counts(); c != (Counts{}) {
			t.Fatalf("Counts() = %+v, want zero", c)
		}
		doAll(t, h.Breaker, "FF")
		h.expectState(t, StateClosed)
	})

	t.Run("ratio over the window", func(t *testing.T) {
		h := newHarness(t, settings(func(s *Settings) {
			s.Failures, s.FailureRatio, s.MinRequests, s.Window = 100, 0.5, 4, window
		}))
		doAll(t, h.Breaker, "FFF") // 3 of 3, below min requests
		h.clock.advance(window)    // gone
		doAll(t, h.Breaker, "SSSF")
		h.expectState(t, StateClosed) // 1 of 4
		doAll(t, h.Breaker, "F")
		h.expectState(t, StateClosed) // 2 of 5
		doAll(t, h.Breaker, "F")
		h.expectState(t, StateOpen) // 3 of 6
	})

	t.Run("an outcome counts when it ends", func(t *testing.T) {
		h := newHarness(t, settings(func(s *Settings) { s.Window = window }))
		dones := admit(t, h.Breaker, 1)
		h.clock.advance(window) // the request's admission leaves the window
		dones[0](Failure)
		want := Counts{TotalFailures: 1, ConsecutiveFailures: 1}
		if c := h.Counts(); c != want {
			t.Fatalf("Counts() = %+v, want %+v", c, want)
		}
	})

	t.Run("a clock going back moves nothing", func(t *testing.T) {
		h := newHarness(t, settings(func(s *Settings) { s.Window = window }))
		h.clock.advance(5 * time.Second)
		doAll(t, h.Breaker, "FF")
		h.clock.advance(-time.Hour)
		if c := h.Counts(); c.ConsecutiveFailures != 2 {
			t.Fatalf("Counts() = %+v", c)
		}
	})

	t.Run("shorter than its buckets", func(t *testing.T) {
		h := newHarness(t, settings(func(s *Settings) { s.Window = 5 }))
		doAll(t, h.Breaker, "FF")
		h.clock.advance(5)
		doAll(t, h.Breaker, "FF")
		h.expectState(t, StateClosed)
	})
}

func TestDo(t *testing.T) {
	t.Run("a panic is a failure and goes on", func(t *testing.T) {
		h := newHarness(t, settings(func(s *Settings) { s.Failures = 1 }))
		func() {
			defer func() {
				if v := recover(); v != "boom" {
					t.Fatalf("recovered %v, want the request's panic", v)
				}
			}()
			_ = h.Do(func() Outcome { panic("boom") })
		}()
		h.expectState(t, StateOpen)
	})

	t.Run("an unknown outcome is a failure", func(t *testing.T) {
		h := newHarness(t, settings(func(s *Settings) { s.Failures = 1 }))
		do(t, h.Breaker, Outcome(9))
		h.expectState(t, StateOpen)
	})

	t.Run("allocates nothing", func(t *testing.T) {
		for name, s := range map[string]Settings{
			"closed": settings(),
			"window": settings(func(s *Settings) { s.FailureRatio, s.Window = 0.5, time.Second }),
		} {
			b, err := New("w", s, nil)
			if err != nil {
				t.Fatal(err)
			}
			ok := func() Outcome { return Success }
			if n := testing.AllocsPerRun(100, func() { _ = b.Do(ok); b.Ready() }); n != 0 {
				t.Errorf("%s: Do and Ready allocate %v times", name, n)
			}
		}
	})
}

// TestConcurrent races requests against operator calls, reloads and the
// clock, under -race, and checks that onChange saw one consistent chain of
// transitions that matches the mirror and Trips.
func TestConcurrent(t *testing.T) {
	var (
		mu    sync.Mutex
		chain []transition
		opens int
		clk   = newClock()
	)
	b, err := newWithClock("w", settings(), func(from, to State) {
		mu.Lock()
		chain = append(chain, transition{from, to})
		if to == StateOpen {
			opens++
		}
		mu.Unlock()
	}, clk.now)
	if err != nil {
		t.Fatal(err)
	}

	var (
		stop     = make(chan struct{})
		workers  sync.WaitGroup
		admitted atomic.Int64
		attempts atomic.Int64
	)
	for w := range 4 {
		workers.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for {
				select {
				case <-stop:
					return
				default:
				}
				runtime.Gosched()
				attempts.Add(1)
				err := b.Do(func() Outcome {
					admitted.Add(1)
					runtime.Gosched()
					return Outcome(r.IntN(3))
				})
				if err != nil && !errors.Is(err, ErrOpen) && !errors.Is(err, ErrTooManyRequests) {
					t.Errorf("Do() = %v", err)
				}
				b.Ready()
				b.RetryAt()
			}
		})
	}

	r := rand.New(rand.NewPCG(42, 42))
	for range 2000 {
		switch n := r.IntN(10); {
		case n == 0:
			b.Trip()
		case n == 1:
			b.Reset()
		case n < 4:
			s := settings(func(s *Settings) {
				s.Failures, s.Successes = uint32(1+r.IntN(3)), uint32(1+r.IntN(3))
				s.Timeout = time.Duration(1+r.IntN(3)) * time.Second
				if r.IntN(2) == 0 {
					s.Window = 10 * time.Second
				}
			})
			if err := b.Update(s); err != nil {
				t.Fatal(err)
			}
		case n < 6:
			b.State()
			b.Counts()
		default:
			clk.advance(time.Duration(r.IntN(1500)) * time.Millisecond)
		}
		for next := attempts.Load() + 5; attempts.Load() < next; {
			runtime.Gosched()
		}
	}
	close(stop)
	workers.Wait()

	final := b.State()
	mu.Lock()
	defer mu.Unlock()
	prev := StateClosed
	for i, tr := range chain {
		if tr.from != prev || tr.from == tr.to {
			t.Fatalf("transition #%d %v does not follow %v", i, tr, prev)
		}
		prev = tr.to
	}
	if final != prev || State(b.mstate.Load()) != prev {
		t.Errorf("State() %v, mirror %v, last transition to %v", final, State(b.mstate.Load()), prev)
	}
	if uint64(opens) != b.Trips() {
		t.Errorf("Trips() = %d, onChange saw %d opens", b.Trips(), opens)
	}
	if admitted.Load() == 0 || opens < 10 {
		t.Errorf("admitted %d, opened %d times: the test exercised little", admitted.Load(), opens)
	}
	t.Logf("%d transitions, %d opens, %d requests admitted", len(chain), opens, admitted.Load())
}
