//go:build bk_cur && old_tests

package breaker

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"
)

// libraryRequests returns how many requests the breaker's gobreaker itself
// has counted in its current state.
func libraryRequests(b *Breaker) uint32 {
	return b.cur.Load().cb.Counts().Requests
}

func do(t *testing.T, b *Breaker, o Outcome) {
	t.Helper()
	if err := b.Do(func() Outcome { return o }); err != nil {
		t.Fatalf("Do(%v) = %v", o, err)
	}
}

func TestFastPath(t *testing.T) {
	t.Run("successes skip the library", func(t *testing.T) {
		b := New("w", Settings{Failures: 3, Timeout: time.Hour}, nil)
		for range 100 {
			do(t, b, Success)
		}
		want := Counts{Requests: 100, TotalSuccesses: 100, ConsecutiveSuccesses: 100}
		if got := b.Counts(); got != want {
			t.Fatalf("Counts() = %+v, want %+v", got, want)
		}
		if n := libraryRequests(b); n != 0 {
			t.Fatalf("the library counted %d requests, want 0: successes took its path", n)
		}

		// A failure goes to the library, and so does the next success,
		// which finds the streak over and the breaker clean again.
		do(t, b, Failure)
		want = Counts{Requests: 101, TotalSuccesses: 100, TotalFailures: 1, ConsecutiveFailures: 1}
		if got := b.Counts(); got != want {
			t.Fatalf("Counts() after a failure = %+v, want %+v", got, want)
		}
		for range 5 {
			do(t, b, Success)
		}
		want = Counts{Requests: 106, TotalSuccesses: 105, TotalFailures: 1, ConsecutiveSuccesses: 5}
		if got := b.Counts(); got != want {
			t.Fatalf("Counts() after five successes = %+v, want %+v", got, want)
		}
		if n := libraryRequests(b); n != 2 {
			t.Fatalf("the library counted %d requests, want 2 (the failure and the success after it)", n)
		}
	})

	t.Run("a ratio or a window takes the library's path", func(t *testing.T) {
		for _, s := range []Settings{{FailureRatio: 0.5}, {Window: time.Minute}} {
			b := New("w", s, nil)
			for range 10 {
				do(t, b, Success)
			}
			if n := libraryRequests(b); n != 10 {
				t.Errorf("%+v: the library counted %d requests, want all 10", s, n)
			}
		}
	})

	t.Run("interleaved successes do not let failures add up", func(t *testing.T) {
		b := New("w", Settings{Failures: 3, Timeout: time.Hour}, nil)
		for range 20 {
			do(t, b, Failure)
			do(t, b, Failure)
			do(t, b, Success)
			do(t, b, Success)
		}
		expectState(t, b, StateClosed)
		do(t, b, Failure)
		do(t, b, Failure)
		do(t, b, Failure)
		expectState(t, b, StateOpen)
	})
}

// TestCountsMatchLibrary runs random outcomes through a breaker on the fast
// path and through a bare gobreaker with the same rule, one at a time, and
// expects the same counts and state after every step.
func TestCountsMatchLibrary(t *testing.T) {
	const failures = 4
	r := rand.New(rand.NewPCG(7, 7))
	for run := range 50 {
		b := New("w", Settings{Failures: failures, Timeout: time.Hour}, nil)
		ref := gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
			Timeout:     time.Hour,
			ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= failures },
			IsExcluded:  isExcluded,
		})
		var seq []Outcome
		for step := range 200 {
			// mostly successes, in runs, with bursts of failures
			o := Success
			switch n := r.IntN(10); {
			case n < 3:
				o = Failure
			case n == 3:
				o = Excluded
			}
			seq = append(seq, o)
			err := b.Do(func() Outcome { return o })
			_, refErr := ref.Execute(func() (struct{}, error) { return struct{}{}, o.err() })
			if refused := refErr == gobreaker.ErrOpenState; refused != (err == ErrOpen) {
				t.Fatalf("run %d step %d: Do() = %v, the library's Execute = %v (outcomes %v)", run, step, err, refErr, seq)
			}
			got, want := b.Counts(), countsFrom(ref.Counts())
			if got != want || b.State() != fromGobreaker(ref.State()) {
				t.Fatalf("run %d step %d: Counts() = %+v in %v, the library's %+v in %v (outcomes %v)",
					run, step, got, b.State(), want, ref.State(), seq)
			}
			if b.State() == StateOpen {
				break
			}
		}
	}
}

// TestStaleOutcomeIsDropped checks that an outcome of a request admitted on
// the fast path in one closed period is not booked in a later state, as the
// library drops outcomes of its earlier generations.
func TestStaleOutcomeIsDropped(t *testing.T) {
	for _, o := range []Outcome{Failure, Success} {
		t.Run(o.String(), func(t *testing.T) {
			var rec recorder
			b := New("w", Settings{Failures: 1, Successes: 1, Timeout: short}, rec.onChange)
			done, err := allow(b) // admitted while closed and clean
			if err != nil {
				t.Fatal(err)
			}
			report(t, b, Failure) // opens it
			waitUntil(t, "half-open", func() bool { return b.State() == StateHalfOpen })
			done(o)
			expectState(t, b, StateHalfOpen)
			rec.expect(t, closedToOpen, openToHalfOpen)
			if c := b.Counts(); c != (Counts{}) {
				t.Fatalf("Counts() = %+v in half-open, want nothing booked", c)
			}
		})
	}
}

// TestFastPathConcurrent books outcomes from many goroutines on a breaker
// that never opens, and expects every one counted once, whichever path it
// took; then it checks that concurrent failures still open a breaker.
func TestFastPathConcurrent(t *testing.T) {
	b := New("w", Settings{Failures: 1 << 30}, nil)
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		counts [3]uint32
	)
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 3))
			var mine [3]uint32
			for range 2000 {
				o := Success
				if n := r.IntN(8); n == 0 {
					o = Failure
				} else if n == 1 {
					o = Excluded
				}
				mine[o]++
				if err := b.Do(func() Outcome { return o }); err != nil {
					t.Errorf("Do() = %v", err)
					return
				}
			}
			mu.Lock()
			for i := range counts {
				counts[i] += mine[i]
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	got := b.Counts()
	if got.TotalSuccesses != counts[Success] || got.TotalFailures != counts[Failure] ||
		got.TotalExclusions != counts[Excluded] || got.Requests != 8*2000 {
		t.Fatalf("Counts() = %+v, want %d successes, %d failures, %d exclusions of %d requests",
			got, counts[Success], counts[Failure], counts[Excluded], 8*2000)
	}

	var rec recorder
	b = New("w", Settings{Failures: 5, Timeout: time.Hour}, rec.onChange)
	for range 8 {
		wg.Go(func() {
			for range 10 {
				_ = b.Do(func() Outcome { return Failure })
			}
		})
	}
	wg.Wait()
	expectState(t, b, StateOpen)
	rec.expect(t, closedToOpen)
}
