package breaker

import (
	"testing"
	"time"
)

// benchSettings are the root's default settings.
var benchSettings = Settings{Failures: 5, Successes: 3, MinRequests: 10, Timeout: time.Second}

// newBench returns a breaker with settings s, failing b if New does.
func newBench(b *testing.B, s Settings) *Breaker {
	br, err := New("w", s, nil)
	if err != nil {
		b.Fatal(err)
	}
	return br
}

// BenchmarkAllow is the request path of a closed breaker: one request
// through Allow and its Pass's Done.
func BenchmarkAllow(b *testing.B) {
	br := newBench(b, benchSettings)
	b.ReportAllocs()
	for b.Loop() {
		p, err := br.Allow()
		if err != nil {
			b.Fatal(err)
		}
		p.Done(Success)
	}
}

// BenchmarkAllowParallel is BenchmarkAllow from every P at once on one
// breaker: the contention of one busy worker.
func BenchmarkAllowParallel(b *testing.B) {
	br := newBench(b, benchSettings)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			p, err := br.Allow()
			if err != nil {
				b.Error(err)
				return
			}
			p.Done(Success)
		}
	})
}

// BenchmarkAllowWindow is BenchmarkAllow with a rolling window and a
// failure ratio.
func BenchmarkAllowWindow(b *testing.B) {
	br := newBench(b, Settings{Failures: 5, FailureRatio: 0.5, MinRequests: 10, Window: 10 * time.Second, Successes: 3, Timeout: time.Second})
	b.ReportAllocs()
	for b.Loop() {
		p, err := br.Allow()
		if err != nil {
			b.Fatal(err)
		}
		p.Done(Success)
	}
}

// BenchmarkAllowOpen is a request refused by an open breaker.
func BenchmarkAllowOpen(b *testing.B) {
	br := newBench(b, Settings{Failures: 5, Successes: 3, Timeout: time.Hour})
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
			br := newBench(b, Settings{Failures: 5, Successes: 3, Timeout: time.Hour})
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
	br := newBench(b, Settings{Failures: 5, Successes: 3, Timeout: time.Hour})
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

// BenchmarkState is State, which takes gobreaker's lock.
func BenchmarkState(b *testing.B) {
	br := newBench(b, benchSettings)
	b.ReportAllocs()
	for b.Loop() {
		if br.State() != StateClosed {
			b.Fatal("not closed")
		}
	}
}
