//go:build bk_cur && old_tests

package breaker

import (
	"errors"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// short is the open timeout of tests that wait for a breaker to turn
// half-open; they poll for it (see waitUntil) rather than sleep.
const short = 20 * time.Millisecond

// slack bounds how far apart two timestamps taken in one step may be.
const slack = 100 * time.Millisecond

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

func (r *recorder) transitions() []transition {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

func (r *recorder) expect(t *testing.T, want ...transition) {
	t.Helper()
	if got := r.transitions(); !slices.Equal(got, want) {
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

// allow lets one request through b and keeps it in flight, as a two-step
// breaker would: the request runs inside Do on a goroutine of its own, and
// the returned function reports its outcome and waits until Do has booked
// it. A refused request returns Do's error and no function.
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

// report lets one request through b and reports its outcome.
func report(t *testing.T, b *Breaker, o Outcome) {
	t.Helper()
	done, err := allow(b)
	if err != nil {
		t.Fatalf("allow() refused a %v: %v", o, err)
	}
	done(o)
}

// reportAll reports a sequence of outcomes: S, F or X for each.
func reportAll(t *testing.T, b *Breaker, seq string) {
	t.Helper()
	for _, c := range seq {
		report(t, b, outcomeOf(t, c))
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

// admit takes n requests through b and returns their done functions. The
// requests a test leaves in flight end, excluded, when it is over.
func admit(t *testing.T, b *Breaker, n int) []func(Outcome) {
	t.Helper()
	var dones []func(Outcome)
	for i := range n {
		done, err := allow(b)
		if err != nil {
			t.Fatalf("allow() #%d refused: %v", i+1, err)
		}
		t.Cleanup(func() { done(Excluded) })
		dones = append(dones, done)
	}
	return dones
}

func expectRefused(t *testing.T, b *Breaker, want error) {
	t.Helper()
	done, err := allow(b)
	if !errors.Is(err, want) {
		if done != nil {
			done(Excluded)
		}
		t.Fatalf("allow() = %v, want %v", err, want)
	}
	if done != nil {
		t.Fatal("allow() refused but returned a done function")
	}
}

func expectState(t *testing.T, b *Breaker, want State) {
	t.Helper()
	if got := b.State(); got != want {
		t.Fatalf("State() = %v, want %v", got, want)
	}
}

// waitUntil polls cond until it holds, failing the test after a generous
// deadline. It is for the library's real-time open timeout only.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// halfOpen returns a half-open breaker with settings s, whose next open period
// lasts s.Timeout (which should be long, so that no test races it). It gets
// there by tripping with a short timeout, waiting, and updating the timeout,
// which reports closed→open and open→half_open to rec.
func halfOpen(t *testing.T, s Settings, rec *recorder) *Breaker {
	t.Helper()
	long := s
	s.Timeout = short
	b := New("w", s, rec.onChange)
	b.Trip()
	waitUntil(t, "half-open", func() bool { return b.State() == StateHalfOpen })
	b.Update(long)
	expectState(t, b, StateHalfOpen)
	rec.expect(t, closedToOpen, openToHalfOpen)
	return b
}

func TestNew(t *testing.T) {
	b := New("w1", Settings{}, nil)
	expectState(t, b, StateClosed)
	if !b.Ready() {
		t.Error("Ready() = false on a new breaker")
	}
	if got := b.Name(); got != "w1" {
		t.Errorf("Name() = %q", got)
	}
	if got := b.Settings(); got != (Settings{}).WithDefaults() {
		t.Errorf("Settings() = %+v, want the defaults", got)
	}
	if b.Trips() != 0 || !b.OpenedAt().IsZero() || !b.RetryAt().IsZero() {
		t.Errorf("Trips, OpenedAt, RetryAt = %d, %v, %v; want zeros", b.Trips(), b.OpenedAt(), b.RetryAt())
	}
	if got := b.Counts(); got != (Counts{}) {
		t.Errorf("Counts() = %+v, want zero", got)
	}
}

func TestConsecutiveFailures(t *testing.T) {
	for _, tc := range []struct {
		name     string
		failures uint32 // Settings.Failures
		before   string // outcomes that must leave it closed
		last     bool   // one more failure opens it
	}{
		{name: "default threshold", before: "FFFF", last: true},
		{name: "threshold 1", failures: 1, before: "", last: true},
		{name: "threshold 3", failures: 3, before: "FF", last: true},
		{name: "a success resets the streak", failures: 3, before: "FFSFF", last: true},
		{name: "exclusions do not break the streak", failures: 3, before: "FXXXF", last: true},
		{name: "successes only", failures: 1, before: "SSSSSSSSSS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var rec recorder
			b := New("w", Settings{Failures: tc.failures, Timeout: time.Hour}, rec.onChange)
			for i, c := range tc.before {
				report(t, b, outcomeOf(t, c))
				if got := b.State(); got != StateClosed {
					t.Fatalf("State() after %q = %v, want closed", tc.before[:i+1], got)
				}
			}
			if !tc.last {
				rec.expect(t)
				return
			}
			report(t, b, Failure)
			expectState(t, b, StateOpen)
			expectRefused(t, b, ErrOpen)
			rec.expect(t, closedToOpen)
			if b.Trips() != 1 || b.Ready() {
				t.Errorf("Trips, Ready = %d, %v; want 1, false", b.Trips(), b.Ready())
			}
			if got := b.Counts(); got != (Counts{}) {
				t.Errorf("Counts() = %+v, want cleared on opening", got)
			}
		})
	}
}

func TestFailureRatio(t *testing.T) {
	for _, tc := range []struct {
		name     string
		settings Settings
		seq      string
		openAt   int // outcomes after which it is open; 0: never
	}{
		{name: "opens at the ratio", settings: Settings{FailureRatio: 0.5, MinRequests: 4}, seq: "SSFF", openAt: 4},
		{name: "not before min requests", settings: Settings{FailureRatio: 0.5, MinRequests: 4}, seq: "FSFSF", openAt: 5},
		{name: "default min requests", settings: Settings{FailureRatio: 0.5}, seq: "FFFFFFFFFF", openAt: 10},
		{name: "below the ratio", settings: Settings{FailureRatio: 0.6, MinRequests: 4}, seq: "SFSFSFSFSFSF"},
		{name: "exclusions are not requests", settings: Settings{FailureRatio: 0.5, MinRequests: 4}, seq: "FXXXXXXF"},
		{name: "in-flight requests are not requests", settings: Settings{FailureRatio: 0.5, MinRequests: 3}, seq: "SFF", openAt: 3},
		{name: "ratio 1 needs every request failed", settings: Settings{FailureRatio: 1, MinRequests: 3}, seq: "FFSFFFS"},
		{name: "ratio 1", settings: Settings{FailureRatio: 1, MinRequests: 3}, seq: "FFF", openAt: 3},
		{name: "consecutive failures still open it", settings: Settings{Failures: 3, FailureRatio: 0.9, MinRequests: 100}, seq: "SFFF", openAt: 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.settings
			if s.Failures == 0 {
				s.Failures = 100
			}
			s.Timeout = time.Hour
			b := New("w", s, nil)
			if tc.name == "in-flight requests are not requests" {
				// Two requests in flight raise Requests but not the
				// completed count the ratio is taken over.
				for _, done := range admit(t, b, 2) {
					defer done(Excluded)
				}
			}
			for i, c := range tc.seq {
				report(t, b, outcomeOf(t, c))
				want := StateClosed
				if i+1 == tc.openAt {
					want = StateOpen
				}
				if got := b.State(); got != want {
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
		var rec recorder
		b := New("w", Settings{Failures: 3}, rec.onChange)
		reportAll(t, b, "SFF")
		before := b.Counts()
		for range 50 {
			report(t, b, Excluded)
		}
		got := b.Counts()
		want := before
		want.Requests += 50
		want.TotalExclusions += 50
		if got != want {
			t.Fatalf("Counts() = %+v, want %+v", got, want)
		}
		expectState(t, b, StateClosed)
		rec.expect(t)
	})

	t.Run("half-open", func(t *testing.T) {
		var rec recorder
		b := halfOpen(t, Settings{Successes: 2, Timeout: time.Hour}, &rec)
		for range 20 {
			report(t, b, Excluded)
		}
		expectState(t, b, StateHalfOpen)
		if c := b.Counts(); c.TotalSuccesses != 0 || c.TotalFailures != 0 || c.TotalExclusions != 20 {
			t.Fatalf("Counts() = %+v", c)
		}
		rec.expect(t, closedToOpen, openToHalfOpen)
	})
}

func TestHalfOpen(t *testing.T) {
	settings := Settings{Failures: 1, Successes: 3, Timeout: time.Hour}

	t.Run("limits probes and closes after successes", func(t *testing.T) {
		var rec recorder
		b := halfOpen(t, settings, &rec)
		dones := admit(t, b, 3)
		expectRefused(t, b, ErrTooManyRequests)
		if !b.Ready() {
			t.Error("Ready() = false while half-open")
		}
		dones[0](Success)
		dones[1](Success)
		expectState(t, b, StateHalfOpen)
		expectRefused(t, b, ErrTooManyRequests)
		dones[2](Success)
		expectState(t, b, StateClosed)
		rec.expect(t, closedToOpen, openToHalfOpen, halfOpenToClosed)
		admit(t, b, 10) // closed: no limit
	})

	t.Run("a failure reopens it", func(t *testing.T) {
		var rec recorder
		b := halfOpen(t, settings, &rec)
		dones := admit(t, b, 2)
		dones[0](Success)
		dones[1](Failure)
		expectState(t, b, StateOpen)
		expectRefused(t, b, ErrOpen)
		rec.expect(t, closedToOpen, openToHalfOpen, halfOpenToOpen)
		if b.Trips() != 2 {
			t.Errorf("Trips() = %d, want 2", b.Trips())
		}
		if d := b.RetryAt().Sub(b.OpenedAt()); d < time.Hour-slack || d > time.Hour {
			t.Errorf("RetryAt - OpenedAt = %v, want the full timeout", d)
		}
	})

	t.Run("an exclusion frees its slot", func(t *testing.T) {
		var rec recorder
		b := halfOpen(t, settings, &rec)
		dones := admit(t, b, 3)
		dones[0](Excluded)
		dones = append(dones, admit(t, b, 1)...)
		expectRefused(t, b, ErrTooManyRequests)
		for _, done := range dones[1:] {
			done(Success)
		}
		expectState(t, b, StateClosed)
	})

	t.Run("concurrent probes", func(t *testing.T) {
		var rec recorder
		b := halfOpen(t, settings, &rec)
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
				done, err := allow(b)
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
		expectState(t, b, StateClosed)
	})
}

func TestTimeoutTurnsHalfOpen(t *testing.T) {
	var rec recorder
	b := New("w", Settings{Failures: 1, Successes: 1, Timeout: short}, rec.onChange)
	report(t, b, Failure)
	opened, retry := b.OpenedAt(), b.RetryAt()
	if d := retry.Sub(opened); d < short-slack || d > short {
		t.Fatalf("RetryAt - OpenedAt = %v, want about %v", d, short)
	}
	waitUntil(t, "Ready", b.Ready)
	if time.Now().Before(retry) {
		t.Fatalf("Ready() before RetryAt %v", retry)
	}
	// Ready does not change the state: the mirror still says open.
	if got := State(b.state.Load()); got != StateOpen {
		t.Fatalf("state after Ready() = %v, want still open", got)
	}
	rec.expect(t, closedToOpen)
	report(t, b, Success)
	expectState(t, b, StateClosed)
	rec.expect(t, closedToOpen, openToHalfOpen, halfOpenToClosed)
	if !b.RetryAt().IsZero() || !b.OpenedAt().Equal(opened) {
		t.Errorf("RetryAt, OpenedAt = %v, %v; want zero, %v", b.RetryAt(), b.OpenedAt(), opened)
	}
}

func TestReadyTakesNoSlot(t *testing.T) {
	var rec recorder
	b := halfOpen(t, Settings{Successes: 2, Timeout: time.Hour}, &rec)
	for range 100 {
		if !b.Ready() {
			t.Fatal("Ready() = false while half-open")
		}
	}
	admit(t, b, 2)
	b.Trip()
	if b.Ready() {
		t.Error("Ready() = true while open for an hour")
	}
}

func TestOnChangeOrder(t *testing.T) {
	var rec recorder
	b := New("w", Settings{Failures: 1, Successes: 1, Timeout: short}, rec.onChange)
	report(t, b, Failure)
	waitUntil(t, "half-open", func() bool { return b.State() == StateHalfOpen })
	b.State() // no change, no call
	report(t, b, Success)
	b.Trip()
	b.Trip() // already open: no call
	b.Reset()
	b.Reset() // already closed: no call
	rec.expect(t, closedToOpen, openToHalfOpen, halfOpenToClosed, closedToOpen, openToClosed)
}

func TestTrip(t *testing.T) {
	settings := Settings{Successes: 2, Timeout: time.Hour}
	for _, tc := range []struct {
		name      string
		setup     func(t *testing.T, rec *recorder) *Breaker
		before    []transition // transitions of setup
		from      State        // the state Trip opens from
		tripsWant uint64
	}{
		{
			name: "closed with counts",
			setup: func(t *testing.T, rec *recorder) *Breaker {
				b := New("w", settings, rec.onChange)
				reportAll(t, b, "SFF")
				return b
			},
			from:      StateClosed,
			tripsWant: 1,
		},
		{
			name: "half-open with probes in flight",
			setup: func(t *testing.T, rec *recorder) *Breaker {
				b := halfOpen(t, settings, rec)
				for _, done := range admit(t, b, 2) {
					t.Cleanup(func() { done(Success) })
				}
				return b
			},
			before:    []transition{closedToOpen, openToHalfOpen},
			from:      StateHalfOpen,
			tripsWant: 2,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var rec recorder
			b := tc.setup(t, &rec)
			b.Trip()
			expectState(t, b, StateOpen)
			expectRefused(t, b, ErrOpen)
			rec.expect(t, append(tc.before, transition{tc.from, StateOpen})...)
			if b.Trips() != tc.tripsWant {
				t.Errorf("Trips() = %d, want %d", b.Trips(), tc.tripsWant)
			}
			if got := b.Counts(); got != (Counts{}) {
				t.Errorf("Counts() = %+v, want zero", got)
			}
			if d := time.Until(b.RetryAt()); d < time.Hour-slack || d > time.Hour {
				t.Errorf("RetryAt in %v, want an hour", d)
			}
			if d := time.Since(b.OpenedAt()); d < 0 || d > slack {
				t.Errorf("OpenedAt %v ago, want now", d)
			}
		})
	}

	t.Run("already open restarts the open period", func(t *testing.T) {
		var rec recorder
		b := New("w", Settings{Failures: 1, Timeout: time.Hour}, rec.onChange)
		report(t, b, Failure)
		opened, retry := b.OpenedAt(), b.RetryAt()
		waitUntil(t, "the clock to move", func() bool { return time.Since(opened) > time.Millisecond })
		b.Trip()
		expectState(t, b, StateOpen)
		rec.expect(t, closedToOpen)
		if b.Trips() != 1 || !b.OpenedAt().Equal(opened) || !b.RetryAt().After(retry) {
			t.Errorf("Trips, OpenedAt, RetryAt = %d, %v, %v; want 1, %v, after %v", b.Trips(), b.OpenedAt(), b.RetryAt(), opened, retry)
		}
	})

	t.Run("due to turn half-open", func(t *testing.T) {
		var rec recorder
		b := New("w", Settings{Failures: 1, Timeout: short}, rec.onChange)
		report(t, b, Failure)
		waitUntil(t, "Ready", b.Ready)
		before := time.Now()
		b.Trip()
		if got := State(b.state.Load()); got != StateOpen || b.RetryAt().Before(before.Add(short)) {
			t.Errorf("state, RetryAt = %v, %v; want open until at least %v", got, b.RetryAt(), before.Add(short))
		}
		rec.expect(t, closedToOpen)
	})
}

func TestReset(t *testing.T) {
	t.Run("closed with counts", func(t *testing.T) {
		var rec recorder
		b := New("w", Settings{Failures: 3}, rec.onChange)
		reportAll(t, b, "SFF")
		b.Reset()
		if got := b.Counts(); got != (Counts{}) {
			t.Fatalf("Counts() = %+v, want zero", got)
		}
		reportAll(t, b, "FF") // the two earlier failures are gone
		expectState(t, b, StateClosed)
		rec.expect(t)
	})

	t.Run("open", func(t *testing.T) {
		var rec recorder
		b := New("w", Settings{Failures: 1, Timeout: time.Hour}, rec.onChange)
		report(t, b, Failure)
		opened := b.OpenedAt()
		b.Reset()
		expectState(t, b, StateClosed)
		rec.expect(t, closedToOpen, openToClosed)
		if !b.Ready() || !b.RetryAt().IsZero() || b.Trips() != 1 || !b.OpenedAt().Equal(opened) {
			t.Errorf("Ready, RetryAt, Trips, OpenedAt = %v, %v, %d, %v", b.Ready(), b.RetryAt(), b.Trips(), b.OpenedAt())
		}
		report(t, b, Success)
	})

	t.Run("half-open with probes in flight", func(t *testing.T) {
		var rec recorder
		b := halfOpen(t, Settings{Failures: 1, Successes: 2, Timeout: time.Hour}, &rec)
		dones := admit(t, b, 2)
		b.Reset()
		rec.expect(t, closedToOpen, openToHalfOpen, halfOpenToClosed)
		// Outcomes of requests admitted before Reset are ignored.
		dones[0](Failure)
		dones[1](Failure)
		expectState(t, b, StateClosed)
		if got := b.Counts(); got != (Counts{}) {
			t.Fatalf("Counts() = %+v, want zero", got)
		}
	})
}

func TestUpdate(t *testing.T) {
	t.Run("equal settings keep everything", func(t *testing.T) {
		for _, same := range []Settings{{}, (Settings{}).WithDefaults()} {
			var rec recorder
			b := New("w", Settings{}, rec.onChange)
			reportAll(t, b, "SFFFFX")
			before, in := b.Counts(), b.cur.Load()
			b.Update(same)
			if got := b.Counts(); got != before {
				t.Fatalf("Update(%+v): Counts() = %+v, want %+v", same, got, before)
			}
			if b.cur.Load() != in {
				t.Fatalf("Update(%+v) replaced the breaker", same)
			}
			reportAll(t, b, "F") // the fifth consecutive failure
			expectState(t, b, StateOpen)
		}
	})

	t.Run("closed takes the new threshold at once", func(t *testing.T) {
		var rec recorder
		b := New("w", Settings{Failures: 5}, rec.onChange)
		reportAll(t, b, "FFF")
		b.Update(Settings{Failures: 2})
		if got := b.Settings().Failures; got != 2 {
			t.Fatalf("Settings().Failures = %d, want 2", got)
		}
		expectState(t, b, StateClosed)
		if got := b.Counts(); got != (Counts{}) {
			t.Fatalf("Counts() = %+v, want cleared", got)
		}
		report(t, b, Failure)
		expectState(t, b, StateClosed)
		report(t, b, Failure)
		expectState(t, b, StateOpen)
		rec.expect(t, closedToOpen)
	})

	t.Run("open stays open until its RetryAt", func(t *testing.T) {
		var rec recorder
		b := New("w", Settings{Failures: 1, Timeout: time.Hour}, rec.onChange)
		report(t, b, Failure)
		opened, retry := b.OpenedAt(), b.RetryAt()
		b.Update(Settings{Failures: 2, Timeout: 2 * time.Hour})
		expectState(t, b, StateOpen)
		expectRefused(t, b, ErrOpen)
		rec.expect(t, closedToOpen)
		if b.Trips() != 1 || !b.OpenedAt().Equal(opened) {
			t.Errorf("Trips, OpenedAt = %d, %v; want 1, %v", b.Trips(), b.OpenedAt(), opened)
		}
		if d := b.RetryAt().Sub(retry); d < 0 || d > slack {
			t.Errorf("RetryAt moved by %v, want kept", d)
		}
		if b.Settings().Timeout != 2*time.Hour {
			t.Errorf("Settings().Timeout = %v", b.Settings().Timeout)
		}
	})

	t.Run("open takes a shorter timeout and the new threshold", func(t *testing.T) {
		var rec recorder
		b := New("w", Settings{Failures: 1, Successes: 1, Timeout: time.Hour}, rec.onChange)
		report(t, b, Failure)
		b.Update(Settings{Failures: 2, Successes: 1, Timeout: short})
		// At most short plus the time Update took to build the new breaker.
		if d := b.RetryAt().Sub(b.OpenedAt()); d > short+slack {
			t.Fatalf("RetryAt - OpenedAt = %v, want about %v", d, short)
		}
		waitUntil(t, "half-open", func() bool { return b.State() == StateHalfOpen })
		report(t, b, Success)
		expectState(t, b, StateClosed)
		report(t, b, Failure)
		expectState(t, b, StateClosed) // the old threshold was 1
		report(t, b, Failure)
		expectState(t, b, StateOpen)
		rec.expect(t, closedToOpen, openToHalfOpen, halfOpenToClosed, closedToOpen)
		if b.Trips() != 2 {
			t.Errorf("Trips() = %d, want 2", b.Trips())
		}
	})

	t.Run("carried open period does not shorten later ones", func(t *testing.T) {
		for _, reopen := range []struct {
			name    string
			outcome Outcome
			path    []transition
		}{
			{name: "reopened from half-open", outcome: Failure, path: []transition{halfOpenToOpen}},
			{name: "closed then opened", outcome: Success, path: []transition{halfOpenToClosed, closedToOpen}},
		} {
			t.Run(reopen.name, func(t *testing.T) {
				var rec recorder
				b := New("w", Settings{Failures: 1, Successes: 1, Timeout: short}, rec.onChange)
				report(t, b, Failure)
				// A longer timeout waits for the next open period: this
				// one keeps its short RetryAt.
				b.Update(Settings{Failures: 1, Successes: 1, Timeout: time.Hour})
				if !b.cur.Load().provisional {
					t.Fatal("carried open state is not provisional")
				}
				waitUntil(t, "half-open", func() bool { return b.State() == StateHalfOpen })
				report(t, b, reopen.outcome)
				if reopen.outcome == Success {
					if b.cur.Load().provisional {
						t.Fatal("closed breaker still provisional")
					}
					report(t, b, Failure)
				}
				expectState(t, b, StateOpen)
				if b.cur.Load().provisional {
					t.Fatal("reopened breaker still provisional: its open period would be the carried one")
				}
				if d := time.Until(b.RetryAt()); d < time.Hour-slack {
					t.Errorf("RetryAt in %v, want an hour", d)
				}
				rec.expect(t, append([]transition{closedToOpen, openToHalfOpen}, reopen.path...)...)
			})
		}
	})

	t.Run("open past its new timeout turns half-open", func(t *testing.T) {
		var rec recorder
		b := New("w", Settings{Failures: 1, Timeout: time.Hour}, rec.onChange)
		report(t, b, Failure)
		waitUntil(t, "the clock to move", func() bool { return time.Since(b.OpenedAt()) > time.Millisecond })
		b.Update(Settings{Failures: 1, Timeout: time.Millisecond})
		if !b.Ready() {
			t.Error("Ready() = false past the new timeout")
		}
		expectState(t, b, StateHalfOpen)
		rec.expect(t, closedToOpen, openToHalfOpen)
	})

	t.Run("half-open stays half-open", func(t *testing.T) {
		var rec recorder
		b := halfOpen(t, Settings{Successes: 2, Timeout: time.Hour}, &rec)
		old := admit(t, b, 2)
		expectRefused(t, b, ErrTooManyRequests)
		b.Update(Settings{Successes: 3, Timeout: time.Hour})
		expectState(t, b, StateHalfOpen)
		rec.expect(t, closedToOpen, openToHalfOpen)
		dones := admit(t, b, 3)
		expectRefused(t, b, ErrTooManyRequests)
		// Probes admitted before Update do not count.
		old[0](Success)
		old[1](Success)
		expectState(t, b, StateHalfOpen)
		for _, done := range dones {
			done(Success)
		}
		expectState(t, b, StateClosed)
		rec.expect(t, closedToOpen, openToHalfOpen, halfOpenToClosed)
		if b.cur.Load().provisional {
			t.Error("closed breaker still provisional")
		}
	})

	t.Run("trips survive", func(t *testing.T) {
		b := New("w", Settings{Failures: 1}, nil)
		b.Trip()
		b.Reset()
		report(t, b, Failure)
		b.Update(Settings{Failures: 3})
		b.Reset()
		b.Update(Settings{Failures: 4})
		if b.Trips() != 2 {
			t.Errorf("Trips() = %d, want 2", b.Trips())
		}
	})

	t.Run("invalid settings are made safe", func(t *testing.T) {
		b := New("w", Settings{}, nil)
		b.Update(Settings{FailureRatio: 7, Timeout: -1})
		if got, want := b.Settings(), (Settings{}).WithDefaults(); got != want {
			t.Errorf("Settings() = %+v, want %+v", got, want)
		}
	})
}

func TestRollingWindow(t *testing.T) {
	const window = 200 * time.Millisecond
	b := New("w", Settings{Failures: 3, Window: window, Timeout: time.Hour}, nil)
	reportAll(t, b, "FF")
	if c := b.Counts(); c.ConsecutiveFailures != 2 {
		t.Fatalf("Counts() = %+v", c)
	}
	waitUntil(t, "the failures age out", func() bool {
		c := b.Counts()
		return c.TotalFailures == 0 && c.ConsecutiveFailures == 0
	})
	reportAll(t, b, "FF")
	expectState(t, b, StateClosed)
	report(t, b, Failure)
	expectState(t, b, StateOpen)
}

// TestConcurrent races requests against operator calls and reloads, under
// -race, and checks that onChange saw one consistent chain of transitions.
func TestConcurrent(t *testing.T) {
	var (
		mu    sync.Mutex
		chain []transition
		opens int
	)
	b := New("w", Settings{Failures: 3, Successes: 2, Timeout: time.Millisecond}, func(from, to State) {
		mu.Lock()
		chain = append(chain, transition{from, to})
		if to == StateOpen {
			opens++
		}
		mu.Unlock()
	})

	var (
		stop     = make(chan struct{})
		workers  sync.WaitGroup
		admitted atomic.Int64
		attempts atomic.Int64
	)
	for w := range 6 {
		workers.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for {
				select {
				case <-stop:
					return
				default:
				}
				// Yield often so that the operations below
				// interleave with requests even on one CPU.
				runtime.Gosched()
				attempts.Add(1)
				done, err := allow(b)
				if err != nil {
					if !errors.Is(err, ErrOpen) && !errors.Is(err, ErrTooManyRequests) {
						t.Errorf("allow() = %v", err)
					}
					b.Ready()
					continue
				}
				admitted.Add(1)
				done(Outcome(r.IntN(3)))
				if r.IntN(10) == 0 {
					done(Failure) // ignored
				}
			}
		})
	}
	workers.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			b.State()
			b.Counts()
			b.RetryAt()
			b.OpenedAt()
			runtime.Gosched()
		}
	})

	r := rand.New(rand.NewPCG(42, 42))
	for range 1000 {
		switch n := r.IntN(10); {
		case n == 0:
			b.Trip()
		case n == 1:
			b.Reset()
		case n < 5:
			// Mostly short timeouts, so that open periods carried over
			// by Update end while requests run; now and then a long one.
			timeout := time.Duration(1+r.IntN(3)) * time.Millisecond
			if r.IntN(8) == 0 {
				timeout = time.Hour
			}
			b.Update(Settings{Failures: uint32(2 + r.IntN(3)), Successes: uint32(1 + r.IntN(3)), Timeout: timeout})
		}
		// Let the workers run between operations, for long enough
		// that the short timeouts expire now and then.
		next, until := attempts.Load()+20, time.Now().Add(200*time.Microsecond)
		for attempts.Load() < next || time.Now().Before(until) {
			runtime.Gosched()
		}
	}
	close(stop)
	workers.Wait()

	b.State() // settle a due open → half-open before reading the mirror
	mu.Lock()
	defer mu.Unlock()
	prev := StateClosed
	for i, tr := range chain {
		if tr.from != prev || tr.from == tr.to {
			t.Fatalf("transition #%d %v does not follow %v", i, tr, prev)
		}
		prev = tr.to
	}
	if got := State(b.state.Load()); got != prev {
		t.Errorf("mirror state %v, last transition to %v", got, prev)
	}
	if uint64(opens) != b.Trips() {
		t.Errorf("Trips() = %d, onChange saw %d opens", b.Trips(), opens)
	}
	if admitted.Load() == 0 || opens == 0 {
		t.Errorf("admitted %d, opened %d times: the test exercised nothing", admitted.Load(), opens)
	}
	t.Logf("%d transitions, %d opens, %d requests admitted", len(chain), opens, admitted.Load())
}

// TestReplaceStale checks the guard that keeps Update from overwriting an
// instance that a provisional hook installed while Update was building its own.
func TestReplaceStale(t *testing.T) {
	var rec recorder
	b := New("w", Settings{Failures: 1, Timeout: time.Hour}, rec.onChange)
	stale := b.cur.Load()
	b.Trip()
	current := b.cur.Load()
	in, st, retryAt := b.closed(b.Settings())
	if b.replace(stale, in, st, retryAt) {
		t.Fatal("replace() of a stale base succeeded")
	}
	if b.cur.Load() != current {
		t.Fatal("replace() of a stale base changed the breaker")
	}
	expectState(t, b, StateOpen)
	rec.expect(t, closedToOpen)
	if !b.replace(current, in, st, retryAt) {
		t.Fatal("replace() of the current base failed")
	}
	expectState(t, b, StateClosed)
	rec.expect(t, closedToOpen, openToClosed)
}

func TestDo(t *testing.T) {
	t.Run("refused request never runs", func(t *testing.T) {
		b := New("w", Settings{Timeout: time.Hour}, nil)
		b.Trip()
		ran := false
		if err := b.Do(func() Outcome { ran = true; return Success }); !errors.Is(err, ErrOpen) {
			t.Fatalf("Do() on an open breaker = %v, want ErrOpen", err)
		}
		if ran {
			t.Fatal("Do() ran a refused request")
		}
	})

	t.Run("outcomes are booked", func(t *testing.T) {
		b := New("w", Settings{Failures: 2}, nil)
		for _, o := range []Outcome{Success, Excluded, Failure} {
			if err := b.Do(func() Outcome { return o }); err != nil {
				t.Fatalf("Do() returned %v for an admitted request", err)
			}
		}
		c := b.Counts()
		if c.TotalSuccesses != 1 || c.TotalFailures != 1 || c.Requests != 3 {
			t.Fatalf("Counts() = %+v, want 1 success, 1 failure, 3 requests", c)
		}
		if err := b.Do(func() Outcome { return Failure }); err != nil {
			t.Fatal(err)
		}
		expectState(t, b, StateOpen)
	})

	t.Run("a panic is a failure and goes on", func(t *testing.T) {
		b := New("w", Settings{Failures: 1}, nil)
		func() {
			defer func() {
				if v := recover(); v != "boom" {
					t.Fatalf("recovered %v, want the request's panic", v)
				}
			}()
			_ = b.Do(func() Outcome { panic("boom") })
		}()
		expectState(t, b, StateOpen)
	})
}
