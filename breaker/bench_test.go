package breaker

import (
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"
)

// BenchmarkAllowDone is the request path of a closed breaker: Allow, then done.
func BenchmarkAllowDone(b *testing.B) {
	br := New("w", Settings{}, nil)
	b.ReportAllocs()
	for b.Loop() {
		done, err := br.Allow()
		if err != nil {
			b.Fatal(err)
		}
		done(Success)
	}
}

// BenchmarkAllowDoneParallel is BenchmarkAllowDone from every P at once on one
// breaker: the contention of one busy worker.
func BenchmarkAllowDoneParallel(b *testing.B) {
	br := New("w", Settings{}, nil)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			done, err := br.Allow()
			if err != nil {
				b.Error(err)
				return
			}
			done(Success)
		}
	})
}

// BenchmarkAllowDoneWindow is BenchmarkAllowDone with a rolling window and a
// failure ratio.
func BenchmarkAllowDoneWindow(b *testing.B) {
	br := New("w", Settings{FailureRatio: 0.5, Window: 10 * time.Second}, nil)
	b.ReportAllocs()
	for b.Loop() {
		done, err := br.Allow()
		if err != nil {
			b.Fatal(err)
		}
		done(Success)
	}
}

// BenchmarkGobreakerAllowDone is the library's own two-step path, the floor
// under BenchmarkAllowDone.
func BenchmarkGobreakerAllowDone(b *testing.B) {
	cb := gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{})
	b.ReportAllocs()
	for b.Loop() {
		done, err := cb.Allow()
		if err != nil {
			b.Fatal(err)
		}
		done(nil)
	}
}

// BenchmarkAllowOpen is a request refused by an open breaker.
func BenchmarkAllowOpen(b *testing.B) {
	br := New("w", Settings{Timeout: time.Hour}, nil)
	br.Trip()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := br.Allow(); err != ErrOpen {
			b.Fatal(err)
		}
	}
}

// BenchmarkReady is the per-worker availability check, for each state.
func BenchmarkReady(b *testing.B) {
	for _, bc := range []struct {
		name string
		trip bool
	}{
		{name: "closed"},
		{name: "open", trip: true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			br := New("w", Settings{Timeout: time.Hour}, nil)
			if bc.trip {
				br.Trip()
			}
			b.ReportAllocs()
			for b.Loop() {
				if br.Ready() == bc.trip {
					b.Fatal("wrong Ready")
				}
			}
		})
	}
}

// BenchmarkReadyParallel is Ready on an open breaker from every P at once.
func BenchmarkReadyParallel(b *testing.B) {
	br := New("w", Settings{Timeout: time.Hour}, nil)
	br.Trip()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if br.Ready() {
				b.Error("Ready() = true")
				return
			}
		}
	})
}

// BenchmarkState is State, which takes the library's lock.
func BenchmarkState(b *testing.B) {
	br := New("w", Settings{}, nil)
	b.ReportAllocs()
	for b.Loop() {
		if br.State() != StateClosed {
			b.Fatal("not closed")
		}
	}
}
