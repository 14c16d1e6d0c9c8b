package breaker

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"
)

// These tests drive gobreaker through the wrapper, on the real clock: a
// breaker that must change state with time has a short timeout or window,
// and the test polls for the state with a deadline.

type transition struct{ from, to State }

var (
	closedToOpen     = transition{StateClosed, StateOpen}
	openToHalfOpen   = transition{StateOpen, StateHalfOpen}
	halfOpenToClosed = transition{StateHalfOpen, StateClosed}
	halfOpenToOpen   = transition{StateHalfOpen, StateOpen}
	openToClosed     = transition{StateOpen, StateClosed}
)

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

// settings returns complete settings: 3 failures, 2 successes, a one-hour
// timeout, changed by the given functions.
func settings(change ...func(*Settings)) Settings {
	s := Settings{Failures: 3, Successes: 2, Timeout: time.Hour}
	for _, f := range change {
		f(&s)
	}
	return s
}

// shortTimeout is the timeout of breakers that must turn half-open during
// a test.
const shortTimeout = 20 * time.Millisecond

func withTimeout(d time.Duration) func(*Settings) {
	return func(s *Settings) { s.Timeout = d }
}

// newBreaker returns a breaker with settings s and the recorder of its
// transitions.
func newBreaker(t *testing.T, s Settings) (*Breaker, *recorder) {
	t.Helper()
	rec := &recorder{}
	b, err := New("w", s, rec.onChange)
	if err != nil {
		t.Fatalf("New(%+v) = %v", s, err)
	}
	return b, rec
}

// eventually polls cond until it holds, failing the test after a generous
// deadline: the wait is never the assertion.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// halfOpen returns a half-open breaker with settings s (whose timeout
// should be short): tripped, then polled until its timeout has passed.
func halfOpen(t *testing.T, s Settings) (*Breaker, *recorder) {
	t.Helper()
	b, rec := newBreaker(t, s)
	if !b.Trip() {
		t.Fatal("Trip() = false on a closed breaker")
	}
	eventually(t, "the breaker is half-open", func() bool { return b.State() == StateHalfOpen })
	rec.expect(t, closedToOpen, openToHalfOpen)
	return b, rec
}

func expectState(t *testing.T, b *Breaker, want State) {
	t.Helper()
	if got := b.State(); got != want {
		t.Fatalf("State() = %v, want %v", got, want)
	}
}

// allow takes one request through b, failing the test if it is refused.
func allow(t *testing.T, b *Breaker) *Pass {
	t.Helper()
	p, err := b.Allow()
	if err != nil {
		t.Fatalf("Allow() = %v", err)
	}
	if !p.Pending() {
		t.Fatal("Allow() gave a Pass with nothing to book")
	}
	return &p
}

// book runs a sequence of requests through b, each booked at once: S, F
// or X for each outcome.
func book(t *testing.T, b *Breaker, seq string) {
	t.Helper()
	for _, c := range seq {
		o := map[rune]Outcome{'S': Success, 'F': Failure, 'X': Excluded}[c]
		allow(t, b).Done(o)
	}
}

func expectRefused(t *testing.T, b *Breaker, want error) {
	t.Helper()
	p, err := b.Allow()
	if !errors.Is(err, want) {
		t.Fatalf("Allow() = %v, want %v", err, want)
	}
	if p.Pending() {
		t.Fatal("a refused Allow gave a Pass to book")
	}
}

func TestNew(t *testing.T) {
	if _, err := New("w", Settings{}, nil); err == nil {
		t.Fatal("New with empty settings succeeded, want Validate's error")
	}
	s := settings()
	b, err := New("w", s, nil)
	if err != nil {
		t.Fatal(err)
	}
	expectState(t, b, StateClosed)
	if !b.Ready() || b.Name() != "w" || b.Settings() != s || b.Trips() != 0 ||
		!b.OpenedAt().IsZero() || !b.RetryAt().IsZero() || b.Counts() != (Counts{}) {
		t.Fatalf("new breaker: ready %v, name %q, settings %+v, trips %d, opened %v, retry %v, counts %+v",
			b.Ready(), b.Name(), b.Settings(), b.Trips(), b.OpenedAt(), b.RetryAt(), b.Counts())
	}
	// a nil onChange is allowed through every change of state
	b.Trip()
	b.Reset()
	expectState(t, b, StateClosed)
}

func TestSettingsMapOntoGobreaker(t *testing.T) {
	s := Settings{Failures: 4, FailureRatio: 0.5, MinRequests: 6, Window: 10 * time.Second, Successes: 3, Timeout: 7 * time.Second}
	g := s.gobreaker("w")
	if g.Name != "w" || g.MaxRequests != 3 || g.Interval != 10*time.Second || g.BucketPeriod != time.Second ||
		g.Timeout != 7*time.Second || g.ReadyToTrip == nil || g.IsExcluded == nil || g.IsSuccessful != nil {
		t.Fatalf("gobreaker settings = %+v", g)
	}
	if !g.IsExcluded(Excluded.err()) || g.IsExcluded(Failure.err()) || g.IsExcluded(nil) {
		t.Error("IsExcluded does not single out Excluded outcomes")
	}
	if Success.err() != nil || Failure.err() == nil || Outcome(9).err() != Failure.err() {
		t.Error("outcomes map onto the wrong errors")
	}
	for _, tc := range []struct {
		c    gobreaker.Counts
		want bool
	}{
		{gobreaker.Counts{ConsecutiveFailures: 4, TotalFailures: 4}, true},
		{gobreaker.Counts{ConsecutiveFailures: 3, TotalFailures: 3, TotalSuccesses: 2}, false}, // 5 < min 6
		{gobreaker.Counts{ConsecutiveFailures: 1, TotalFailures: 3, TotalSuccesses: 3}, true},  // 3/6 = 0.5
		{gobreaker.Counts{ConsecutiveFailures: 1, TotalFailures: 2, TotalSuccesses: 4}, false},
		{gobreaker.Counts{TotalFailures: math.MaxUint32, TotalSuccesses: math.MaxUint32, ConsecutiveFailures: 1}, true},
	} {
		if got := g.ReadyToTrip(tc.c); got != tc.want {
			t.Errorf("ReadyToTrip(%+v) = %v, want %v", tc.c, got, tc.want)
		}
	}
	// the largest window does not overflow gobreaker's rounding to buckets
	huge := settings(func(s *Settings) { s.Window, s.Timeout = math.MaxInt64, math.MaxInt64 })
	if g := huge.gobreaker("w"); g.Interval <= 0 || g.BucketPeriod <= 0 || g.Interval+g.BucketPeriod < g.Interval {
		t.Fatalf("huge window maps to interval %v, bucket %v", g.Interval, g.BucketPeriod)
	}
	b, _ := newBreaker(t, huge)
	book(t, b, "SFX")
	if !b.Trip() || b.Ready() {
		t.Fatal("a breaker with the largest window and timeout did not open")
	}
}

func TestConsecutiveFailures(t *testing.T) {
	b, rec := newBreaker(t, settings())
	book(t, b, "FFSFFX")
	expectState(t, b, StateClosed)
	if c := b.Counts(); c.ConsecutiveFailures != 2 || c.TotalFailures != 4 || c.TotalSuccesses != 1 || c.TotalExclusions != 1 || c.Requests != 6 {
		t.Fatalf("counts = %+v", c)
	}
	before := time.Now()
	book(t, b, "F")
	rec.expect(t, closedToOpen)
	expectState(t, b, StateOpen)
	expectRefused(t, b, ErrOpen)
	if b.Ready() {
		t.Error("an open breaker within its timeout is Ready")
	}
	if b.Trips() != 1 {
		t.Errorf("Trips() = %d, want 1", b.Trips())
	}
	if opened := b.OpenedAt(); opened.Before(before) || opened.After(time.Now()) {
		t.Errorf("OpenedAt() = %v, not within the failure that opened it", opened)
	}
	if got := b.RetryAt().Sub(b.OpenedAt()); got != time.Hour {
		t.Errorf("RetryAt() - OpenedAt() = %v, want the timeout", got)
	}
	if c := b.Counts(); c != (Counts{}) {
		t.Errorf("counts of the new state = %+v, want none", c)
	}
}

func TestFailureRatio(t *testing.T) {
	for _, tc := range []struct {
		seq  string
		open bool
	}{
		{seq: "SFS", open: false},     // below min 4
		{seq: "SFSF", open: true},     // 2 of 4
		{seq: "SSFSF", open: false},   // 2 of 5
		{seq: "FXXXSF", open: false},  // exclusions are no requests of the minimum: 2 of 3
		{seq: "FXXXSFSF", open: true}, // 3 of 5
		{seq: "SSSSFFF", open: false}, // 3 of 7
		{seq: "SSSSFFFF", open: true}, // 4 of 8, by the ratio
	} {
		t.Run(tc.seq, func(t *testing.T) {
			b, _ := newBreaker(t, settings(func(s *Settings) { s.Failures, s.FailureRatio, s.MinRequests = 100, 0.5, 4 }))
			for _, c := range tc.seq {
				if b.State() == StateOpen {
					break
				}
				book(t, b, string(c))
			}
			if got := b.State() == StateOpen; got != tc.open {
				t.Fatalf("open = %v after %s, want %v (counts %+v)", got, tc.seq, tc.open, b.Counts())
			}
		})
	}
}

func TestExcludedCountsAgainstNobody(t *testing.T) {
	b, rec := newBreaker(t, settings())
	book(t, b, "FXFXX")
	expectState(t, b, StateClosed)
	if c := b.Counts(); c.ConsecutiveFailures != 2 || c.TotalExclusions != 3 {
		t.Fatalf("counts = %+v: exclusions must neither end nor extend a run", c)
	}
	book(t, b, "F")
	rec.expect(t, closedToOpen)
}

func TestHalfOpen(t *testing.T) {
	t.Run("probes close it", func(t *testing.T) {
		b, rec := halfOpen(t, settings(withTimeout(shortTimeout)))
		if !b.Ready() || !b.RetryAt().IsZero() {
			t.Fatalf("half-open: Ready %v, RetryAt %v", b.Ready(), b.RetryAt())
		}
		p1, p2 := allow(t, b), allow(t, b)
		expectRefused(t, b, ErrTooManyRequests)
		if !b.Ready() {
			t.Error("a half-open breaker at its limit is not Ready (Ready must not count slots)")
		}
		p1.Done(Excluded) // frees its slot
		p3 := allow(t, b)
		expectRefused(t, b, ErrTooManyRequests)
		p2.Done(Success)
		expectState(t, b, StateHalfOpen)
		p3.Done(Success)
		expectState(t, b, StateClosed)
		rec.expect(t, closedToOpen, openToHalfOpen, halfOpenToClosed)
		book(t, b, "FF")
		expectState(t, b, StateClosed)
	})
	t.Run("one failure opens it again", func(t *testing.T) {
		b, rec := halfOpen(t, settings(withTimeout(shortTimeout)))
		p1, p2 := allow(t, b), allow(t, b)
		p1.Done(Success)
		p2.Done(Failure)
		rec.expect(t, closedToOpen, openToHalfOpen, halfOpenToOpen)
		if b.Trips() != 2 {
			t.Errorf("Trips() = %d, want 2", b.Trips())
		}
		expectRefused(t, b, ErrOpen)
		eventually(t, "the breaker is half-open again", func() bool { return b.State() == StateHalfOpen })
	})
	t.Run("Ready sees the timeout pass without a call", func(t *testing.T) {
		b, rec := newBreaker(t, settings(withTimeout(shortTimeout)))
		b.Trip()
		eventually(t, "Ready", b.Ready)
		// only the mirror was read: gobreaker turns half-open on its
		// next call, which Allow is
		rec.expect(t, closedToOpen)
		allow(t, b).Done(Success)
		rec.expect(t, closedToOpen, openToHalfOpen)
	})
}

func TestReadyTakesNoSlot(t *testing.T) {
	b, _ := halfOpen(t, settings(withTimeout(shortTimeout), func(s *Settings) { s.Successes = 1 }))
	for range 10 {
		if !b.Ready() {
			t.Fatal("half-open breaker is not Ready")
		}
	}
	allow(t, b).Done(Success)
	expectState(t, b, StateClosed)
}

func TestPassBooksOnce(t *testing.T) {
	b, _ := newBreaker(t, settings(func(s *Settings) { s.Failures = 2 }))
	p := allow(t, b)
	p.Done(Failure)
	if p.Pending() {
		t.Fatal("a booked Pass is still pending")
	}
	p.Done(Failure)
	expectState(t, b, StateClosed)
	if c := b.Counts(); c.TotalFailures != 1 {
		t.Fatalf("counts = %+v after one Pass booked twice", c)
	}
	var zero Pass
	zero.Done(Failure) // books nothing, and does not panic
}

func TestLateOutcomeCountsForNothing(t *testing.T) {
	b, rec := newBreaker(t, settings(withTimeout(shortTimeout)))
	late := allow(t, b)
	b.Trip()
	eventually(t, "the breaker is half-open", func() bool { return b.State() == StateHalfOpen })
	// admitted while closed, booked while half-open: not a probe's failure
	late.Done(Failure)
	expectState(t, b, StateHalfOpen)
	rec.expect(t, closedToOpen, openToHalfOpen)
}

func TestAllowPanic(t *testing.T) {
	t.Run("closed is bypassed", func(t *testing.T) {
		b, _ := newBreaker(t, settings(func(s *Settings) { s.Failures = 1 }))
		p, err := b.AllowPanic()
		if err != nil || p.Pending() {
			t.Fatalf("AllowPanic() = pending %v, %v; want a bypass", p.Pending(), err)
		}
		p.Done(Failure)
		expectState(t, b, StateClosed)
		if c := b.Counts(); c != (Counts{}) {
			t.Fatalf("a bypass was counted: %+v", c)
		}
	})
	t.Run("open within its timeout is bypassed", func(t *testing.T) {
		b, rec := newBreaker(t, settings())
		b.Trip()
		p, err := b.AllowPanic()
		if err != nil || p.Pending() {
			t.Fatalf("AllowPanic() = pending %v, %v; want a bypass", p.Pending(), err)
		}
		p.Done(Success)
		expectState(t, b, StateOpen)
		rec.expect(t, closedToOpen)
	})
	t.Run("half-open keeps its probe limit", func(t *testing.T) {
		b, rec := newBreaker(t, settings(withTimeout(shortTimeout), func(s *Settings) { s.Successes = 1 }))
		b.Trip()
		eventually(t, "Ready", b.Ready)
		// open past its timeout: asked as Allow asks, which takes the
		// one probe slot
		probe, err := b.AllowPanic()
		if err != nil || !probe.Pending() {
			t.Fatalf("AllowPanic() = pending %v, %v; want the probe", probe.Pending(), err)
		}
		rec.expect(t, closedToOpen, openToHalfOpen)
		if p, err := b.AllowPanic(); !errors.Is(err, ErrTooManyRequests) || p.Pending() {
			t.Fatalf("AllowPanic() with the probe in flight = pending %v, %v; want ErrTooManyRequests", p.Pending(), err)
		}
		probe.Done(Success)
		expectState(t, b, StateClosed)
	})
}

func TestTrip(t *testing.T) {
	b, rec := newBreaker(t, settings(withTimeout(shortTimeout), func(s *Settings) { s.Successes = 1 }))
	book(t, b, "F")
	if !b.Trip() {
		t.Fatal("Trip() = false on a closed breaker")
	}
	if !b.Trip() {
		t.Fatal("Trip() = false on an open breaker")
	}
	rec.expect(t, closedToOpen)
	eventually(t, "the breaker is half-open", func() bool { return b.State() == StateHalfOpen })
	probe := allow(t, b)
	if b.Trip() {
		t.Fatal("Trip() = true on a half-open breaker whose one slot is taken")
	}
	probe.Done(Excluded)
	if !b.Trip() {
		t.Fatal("Trip() = false on a half-open breaker")
	}
	rec.expect(t, closedToOpen, openToHalfOpen, halfOpenToOpen)
}

func TestReset(t *testing.T) {
	b, rec := newBreaker(t, settings(func(s *Settings) { s.Failures = 1 }))
	b.Trip()
	opened := b.OpenedAt()
	b.Reset()
	rec.expect(t, closedToOpen, openToClosed)
	expectState(t, b, StateClosed)
	if !b.Ready() || !b.RetryAt().IsZero() || b.Trips() != 1 || !b.OpenedAt().Equal(opened) {
		t.Fatalf("after Reset: Ready %v, RetryAt %v, Trips %d, OpenedAt %v (was %v)", b.Ready(), b.RetryAt(), b.Trips(), b.OpenedAt(), opened)
	}

	// a request let through before a Reset counts for nothing after it
	late := allow(t, b)
	b.Reset() // closed already: no change to report
	late.Done(Failure)
	expectState(t, b, StateClosed)
	rec.expect(t, closedToOpen, openToClosed)
	if c := b.Counts(); c != (Counts{}) {
		t.Fatalf("counts after Reset = %+v", c)
	}
	book(t, b, "F")
	rec.expect(t, closedToOpen, openToClosed, closedToOpen)
}

func TestUpdate(t *testing.T) {
	s := settings(func(s *Settings) { s.Failures = 2 })
	t.Run("same settings keep the state", func(t *testing.T) {
		b, rec := newBreaker(t, s)
		b.Trip()
		opened, retry := b.OpenedAt(), b.RetryAt()
		if err := b.Update(s); err != nil {
			t.Fatal(err)
		}
		expectState(t, b, StateOpen)
		expectRefused(t, b, ErrOpen)
		if !b.OpenedAt().Equal(opened) || !b.RetryAt().Equal(retry) || b.Trips() != 1 {
			t.Fatalf("after Update: OpenedAt %v (was %v), RetryAt %v (was %v), Trips %d", b.OpenedAt(), opened, b.RetryAt(), retry, b.Trips())
		}
		rec.expect(t, closedToOpen)

		// counts of a closed breaker are kept too
		c, _ := newBreaker(t, s)
		book(t, c, "F")
		if err := c.Update(s); err != nil {
			t.Fatal(err)
		}
		book(t, c, "F")
		expectState(t, c, StateOpen)
	})
	t.Run("bad settings change nothing", func(t *testing.T) {
		b, rec := newBreaker(t, s)
		b.Trip()
		if err := b.Update(Settings{}); err == nil {
			t.Fatal("Update(empty settings) succeeded")
		}
		expectState(t, b, StateOpen)
		if b.Settings() != s {
			t.Fatalf("Settings() = %+v after a refused Update", b.Settings())
		}
		rec.expect(t, closedToOpen)
	})
	t.Run("new settings give a new breaker, closed", func(t *testing.T) {
		for _, from := range []State{StateClosed, StateOpen, StateHalfOpen} {
			t.Run(from.String(), func(t *testing.T) {
				b, rec := newBreaker(t, settings(withTimeout(shortTimeout), func(s *Settings) { s.Failures = 2 }))
				var want []transition
				switch from {
				case StateClosed:
					book(t, b, "F")
				case StateOpen:
					b.Trip()
					want = []transition{closedToOpen, openToClosed}
				case StateHalfOpen:
					b.Trip()
					eventually(t, "the breaker is half-open", func() bool { return b.State() == StateHalfOpen })
					want = []transition{closedToOpen, openToHalfOpen, {StateHalfOpen, StateClosed}}
				}
				inFlight := allowOrNil(b)
				trips := b.Trips()
				next := settings(func(s *Settings) { s.Failures = 3 })
				if err := b.Update(next); err != nil {
					t.Fatal(err)
				}
				expectState(t, b, StateClosed)
				if b.Settings() != next || b.Trips() != trips || !b.Ready() {
					t.Fatalf("after Update: settings %+v, Trips %d (was %d), Ready %v", b.Settings(), b.Trips(), trips, b.Ready())
				}
				if c := b.Counts(); c != (Counts{}) {
					t.Fatalf("counts after Update = %+v", c)
				}
				// never an opening: the change reported is to closed
				rec.expect(t, want...)
				// a request from before counts for nothing
				if inFlight != nil {
					inFlight.Done(Failure)
				}
				book(t, b, "FF")
				expectState(t, b, StateClosed)
				book(t, b, "F")
				expectState(t, b, StateOpen)
			})
		}
	})
}

// allowOrNil takes one request through b if it admits one.
func allowOrNil(b *Breaker) *Pass {
	p, err := b.Allow()
	if err != nil {
		return nil
	}
	return &p
}

func TestRollingWindow(t *testing.T) {
	t.Run("failures within the window add up", func(t *testing.T) {
		b, _ := newBreaker(t, settings(func(s *Settings) { s.Window = time.Hour }))
		book(t, b, "FF")
		book(t, b, "F")
		expectState(t, b, StateOpen)
	})
	t.Run("failures leave the window", func(t *testing.T) {
		b, rec := newBreaker(t, settings(func(s *Settings) { s.Window = 50 * time.Millisecond }))
		book(t, b, "FF")
		eventually(t, "the failures left the window", func() bool { return b.Counts().TotalFailures == 0 })
		if c := b.Counts(); c.ConsecutiveFailures != 0 || c.Requests != 0 {
			t.Fatalf("counts after the window = %+v", c)
		}
		book(t, b, "F")
		expectState(t, b, StateClosed)
		rec.expect(t)
	})
	t.Run("ratio over the window", func(t *testing.T) {
		b, _ := newBreaker(t, settings(func(s *Settings) {
			s.Failures, s.FailureRatio, s.MinRequests, s.Window = 100, 0.5, 4, 50*time.Millisecond
		}))
		book(t, b, "FFS")
		eventually(t, "the outcomes left the window", func() bool { return b.Counts() == Counts{} })
		book(t, b, "SSF")
		expectState(t, b, StateClosed) // 1 of 3: the earlier failures are gone
		book(t, b, "F")
		expectState(t, b, StateOpen) // 2 of 4
	})
}

// TestConcurrent runs requests, resets, updates and state reads at once,
// with a short timeout: every change reaches onChange in order, each from
// the previous to, and the mirror ends where gobreaker is.
func TestConcurrent(t *testing.T) {
	s := settings(withTimeout(time.Millisecond), func(s *Settings) { s.Failures, s.Window = 2, 20*time.Millisecond })
	b, rec := newBreaker(t, s)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for range 2000 {
				switch n := r.IntN(100); {
				case n == 0:
					b.Reset()
				case n == 1:
					_ = b.Update(settings(withTimeout(time.Millisecond), func(s *Settings) { s.Failures = uint32(2 + r.IntN(2)) }))
				case n < 5:
					b.State()
					b.Ready()
				default:
					p, err := b.AllowPanic()
					if n%2 == 0 {
						p, err = b.Allow()
					}
					if err == nil {
						p.Done(Outcome(r.IntN(3)))
					}
				}
			}
		}()
	}
	wg.Wait()
	got := rec.transitions()
	prev := StateClosed
	for i, tr := range got {
		if tr.from != prev || tr.from == tr.to {
			t.Fatalf("transition #%d is %v after a change to %v", i, tr, prev)
		}
		prev = tr.to
	}
	if st := b.State(); State(b.state.Load()) != st {
		t.Fatalf("mirror says %v, gobreaker %v", State(b.state.Load()), st)
	}
	if got := rec.transitions(); len(got) > 0 && got[len(got)-1].to != b.State() {
		t.Fatalf("last change reported was to %v, the breaker is %v", got[len(got)-1].to, b.State())
	}
	t.Logf("%d transitions", len(got))
}
