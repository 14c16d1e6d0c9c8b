package selection

import (
	"math"
	"sync"
	"testing"
	"time"
)

// t0 is the start of every injected clock. It is a wall-clock time with no
// monotonic reading, as injected clocks are.
var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

const ms = float64(time.Millisecond)

// fakeClock is an injected clock that moves only when told to.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func (c *fakeClock) advance(d time.Duration) time.Time {
	c.t = c.t.Add(d)
	return c.t
}

// observeAt records one answered request that took lat and was answered at.
func observeAt(tr *Tracker, at time.Time, lat time.Duration) {
	tr.Done(tr.Start(at.Add(-lat)), at, lat, false)
}

// near reports whether got is within a relative tolerance of want. Ages are
// kept to 128ns, and decay factors are floats, so exact equality is not
// expected.
func near(got, want float64) bool {
	return math.Abs(got-want) <= 1e-6*math.Abs(want)+1024
}

// decayed is the read view of an estimate e after dt with the default decay.
func decayed(e float64, dt time.Duration) float64 {
	return e * math.Exp(-float64(dt)/float64(DefaultDecay))
}

func TestCost(t *testing.T) {
	tests := []struct {
		name string
		// setup prepares the tracker; the cost is read at t0+at.
		setup func(tr *Tracker)
		at    time.Duration
		want  float64
	}{
		{
			name:  "no observations, idle: the initial latency",
			setup: func(*Tracker) {},
			want:  1 * ms,
		},
		{
			name: "no observations, two fresh requests in flight",
			setup: func(tr *Tracker) {
				tr.Start(t0)
				tr.Start(t0)
			},
			want: 1 * ms * 3,
		},
		{
			name:  "estimate, idle",
			setup: func(tr *Tracker) { observeAt(tr, t0, 10*time.Millisecond) },
			want:  10 * ms,
		},
		{
			name: "estimate, one young request: latency × 2",
			setup: func(tr *Tracker) {
				observeAt(tr, t0, 10*time.Millisecond)
				tr.Start(t0)
			},
			at:   time.Millisecond,
			want: decayed(10*ms, time.Millisecond) * 2,
		},
		{
			name: "one request older than the estimate: age × 2 (hang term)",
			setup: func(tr *Tracker) {
				observeAt(tr, t0, 10*time.Millisecond)
				tr.Start(t0)
			},
			at:   50 * time.Millisecond,
			want: 50 * ms * 2,
		},
		{
			name: "three requests: the oldest one's age counts",
			setup: func(tr *Tracker) {
				observeAt(tr, t0, time.Millisecond)
				tr.Start(t0)
				tr.Start(t0.Add(20 * time.Millisecond))
				tr.Start(t0.Add(25 * time.Millisecond))
			},
			at:   30 * time.Millisecond,
			want: 30 * ms * 4,
		},
		{
			name: "the oldest request answered: the next oldest counts",
			setup: func(tr *Tracker) {
				observeAt(tr, t0, time.Millisecond)
				first := tr.Start(t0)
				tr.Start(t0.Add(20 * time.Millisecond))
				tr.Done(first, t0.Add(21*time.Millisecond), time.Millisecond, false)
			},
			at: 30 * time.Millisecond,
			// the estimate after the 1ms answer is 1ms (a peak over the
			// decayed 1ms), then 9ms of read decay; the young request's age
			// (10ms) is larger
			want: 10 * ms * 2,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := NewTracker(Settings{})
			tc.setup(tr)
			if got := tr.Cost(t0.Add(tc.at)); !near(got, tc.want) {
				t.Errorf("Cost = %.0fns, want %.0fns", got, tc.want)
			}
		})
	}
}

func TestEstimatePeakAndDecay(t *testing.T) {
	e := math.Exp(-1)
	tests := []struct {
		name  string
		decay time.Duration // 0: 10s, the time constant the cases are written for
		// observations: latency answered at t0+at, in order
		obs []struct {
			at  time.Duration
			lat time.Duration
		}
		readAt time.Duration
		want   float64
	}{
		{
			name:   "first observation is the estimate",
			obs:    obsList(0, 5*time.Millisecond),
			readAt: 0,
			want:   5 * ms,
		},
		{
			name:   "peak: a slower answer replaces the estimate at once",
			obs:    obsList(0, 10*time.Millisecond, time.Second, 100*time.Millisecond),
			readAt: time.Second,
			want:   100 * ms,
		},
		{
			name:   "a faster answer at the same instant pulls it a sixteenth of the way",
			obs:    obsList(0, 100*time.Millisecond, 0, time.Millisecond),
			readAt: 0,
			want:   1*ms + 99*ms*15/16,
		},
		{
			name:   "a faster answer soon after pulls it a sixteenth of the way",
			obs:    obsList(0, 100*time.Millisecond, time.Millisecond, time.Millisecond),
			readAt: time.Millisecond,
			// time alone would keep exp(-1ms/10s) of the gap
			want: 1*ms + (100*ms*math.Exp(-1e-4)-1*ms)*15/16,
		},
		{
			name:   "a faster answer one decay later moves it towards the answer",
			obs:    obsList(0, 100*time.Millisecond, 10*time.Second, time.Millisecond),
			readAt: 10 * time.Second,
			// read view 100/e, then 1 + (100/e - 1)·e^-1
			want: 1*ms + (100*ms*e-1*ms)*e,
		},
		{
			name:   "after many decays one fast answer is believed",
			obs:    obsList(0, 300*time.Millisecond, 100*time.Second, time.Millisecond),
			readAt: 100 * time.Second,
			want:   1*ms + (300*ms*math.Exp(-10)-1*ms)*math.Exp(-10),
		},
		{
			name:   "without news the estimate decays towards zero",
			obs:    obsList(0, 100*time.Millisecond),
			readAt: 10 * time.Second,
			want:   100 * ms * e,
		},
		{
			name:   "decay is configurable",
			decay:  time.Second,
			obs:    obsList(0, 100*time.Millisecond),
			readAt: 5 * time.Second,
			want:   100 * ms * math.Exp(-5),
		},
		{
			name:   "an answer above the decayed estimate is a peak",
			obs:    obsList(0, 100*time.Millisecond, 10*time.Second, 50*time.Millisecond),
			readAt: 10 * time.Second,
			want:   50 * ms, // 50 > 100/e ≈ 36.8
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			decay := tc.decay
			if decay == 0 {
				decay = 10 * time.Second
			}
			tr := NewTracker(Settings{Decay: decay})
			for _, o := range tc.obs {
				observeAt(tr, t0.Add(o.at), o.lat)
			}
			got, ok := tr.Estimate(t0.Add(tc.readAt))
			if !ok {
				t.Fatal("Estimate reports no observation")
			}
			if !near(float64(got), tc.want) {
				t.Errorf("Estimate = %v, want %v", got, time.Duration(tc.want))
			}
		})
	}
}

// obsList builds observations from (at, latency) pairs.
func obsList(pairs ...time.Duration) []struct {
	at  time.Duration
	lat time.Duration
} {
	out := make([]struct {
		at  time.Duration
		lat time.Duration
	}, 0, len(pairs)/2)
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, struct {
			at  time.Duration
			lat time.Duration
		}{pairs[i], pairs[i+1]})
	}
	return out
}

func TestLoneSlowAnswerIsSoonForgotten(t *testing.T) {
	// A busy worker answering in 1ms every 200µs has one 5ms hiccup: 60
	// answers (12ms) later its estimate must be back near 1ms. With the
	// time constant alone (10s) it would still be about 5ms, and the
	// worker would lose its traffic to its peers for seconds.
	tr := NewTracker(Settings{})
	clock := fakeClock{t0}
	for range 100 {
		observeAt(tr, clock.advance(200*time.Microsecond), time.Millisecond)
	}
	observeAt(tr, clock.advance(200*time.Microsecond), 5*time.Millisecond)
	if got, _ := tr.Estimate(clock.now()); !near(float64(got), 5*ms) {
		t.Fatalf("Estimate = %v right after the hiccup, want 5ms (peak)", got)
	}
	for range 60 {
		observeAt(tr, clock.advance(200*time.Microsecond), time.Millisecond)
	}
	if got, _ := tr.Estimate(clock.now()); got > 1100*time.Microsecond {
		t.Errorf("Estimate = %v 60 answers after the hiccup, want within 10%% of 1ms", got)
	}
}

func TestEstimateConvergesToSteadyLatency(t *testing.T) {
	// A worker that was slow and now answers in 2ms at 500 req/s must end
	// up with an estimate of 2ms, not below it (no bias towards zero).
	tr := NewTracker(Settings{})
	clock := fakeClock{t0}
	observeAt(tr, clock.now(), 50*time.Millisecond)
	for range 50_000 { // 100s
		observeAt(tr, clock.advance(2*time.Millisecond), 2*time.Millisecond)
	}
	got, _ := tr.Estimate(clock.now())
	if !near(float64(got), 2*ms) {
		t.Errorf("Estimate = %v, want 2ms", got)
	}
}

func TestFailurePenalty(t *testing.T) {
	fail := func(tr *Tracker, at time.Time) { tr.Done(tr.Start(at), at, time.Millisecond, true) }

	t.Run("avoidance doubles per consecutive failure and is capped", func(t *testing.T) {
		tr := NewTracker(Settings{})
		want := []time.Duration{50, 100, 200, 400, 800, 1000, 1000}
		for i, w := range want {
			fail(tr, t0)
			if !tr.Avoided(t0.Add(w*time.Millisecond - time.Microsecond)) {
				t.Errorf("failure %d: not avoided just before %dms", i+1, w)
			}
			if tr.Avoided(t0.Add(w * time.Millisecond)) {
				t.Errorf("failure %d: still avoided at %dms", i+1, w)
			}
		}
	})

	t.Run("a success ends the avoidance and the streak", func(t *testing.T) {
		tr := NewTracker(Settings{})
		fail(tr, t0)
		fail(tr, t0)
		tr.Done(tr.Start(t0), t0, time.Millisecond, false)
		if tr.Avoided(t0) {
			t.Fatal("avoided after a success")
		}
		fail(tr, t0)
		if tr.Avoided(t0.Add(50 * time.Millisecond)) {
			t.Fatal("the streak did not restart after a success")
		}
	})

	t.Run("a fast failure never makes a worker cheapest", func(t *testing.T) {
		broken, healthy := NewTracker(Settings{}), NewTracker(Settings{})
		observeAt(healthy, t0, 5*time.Millisecond)
		broken.Done(broken.Start(t0), t0, 10*time.Microsecond, true)
		if broken.Cost(t0) <= healthy.Cost(t0) {
			t.Fatalf("broken cost %g <= healthy cost %g", broken.Cost(t0), healthy.Cost(t0))
		}
		// once the avoidance is over it competes on latency again
		if after := t0.Add(time.Second); broken.Cost(after) >= healthy.Cost(after) {
			t.Fatalf("after the avoidance: broken %g >= healthy %g", broken.Cost(after), healthy.Cost(after))
		}
	})

	t.Run("a slow failure counts its latency", func(t *testing.T) {
		tr := NewTracker(Settings{})
		observeAt(tr, t0, 10*time.Millisecond)
		tr.Done(tr.Start(t0.Add(-3*time.Second)), t0, 3*time.Second, true)
		if got, _ := tr.Estimate(t0); !near(float64(got), 3000*ms) {
			t.Fatalf("Estimate = %v, want 3s", got)
		}
	})
}

func TestFailureShare(t *testing.T) {
	done := func(tr *Tracker, at time.Time, failed bool) {
		tr.Done(tr.Start(at), at, 2*time.Millisecond, failed)
	}
	const pull = 1.0 / 16

	t.Run("successes alone leave it at 0", func(t *testing.T) {
		tr := NewTracker(Settings{})
		for i := range 100 {
			done(tr, t0.Add(time.Duration(i)*time.Millisecond), false)
		}
		if got := tr.FailureShare(t0.Add(time.Second)); got != 0 {
			t.Fatalf("FailureShare = %g, want 0", got)
		}
	})

	t.Run("each outcome moves it a sixteenth of the way", func(t *testing.T) {
		tr := NewTracker(Settings{})
		done(tr, t0, true)
		done(tr, t0, true)
		want := pull + (1-pull)*pull
		if got := tr.FailureShare(t0); !nearShare(got, want) {
			t.Fatalf("after 2 failures: %g, want %g", got, want)
		}
		done(tr, t0, false)
		want -= want * pull
		if got := tr.FailureShare(t0); !nearShare(got, want) {
			t.Fatalf("after a success: %g, want %g", got, want)
		}
		// enough successes take it below the floor, to 0 exactly
		for range 80 {
			done(tr, t0, false)
		}
		if got := tr.FailureShare(t0); got != 0 {
			t.Fatalf("after 80 successes: %g, want 0", got)
		}
	})

	t.Run("without news it decays with MaxFailurePenalty", func(t *testing.T) {
		tr := NewTracker(Settings{MaxFailurePenalty: 2 * time.Second})
		done(tr, t0, true)
		if got := tr.FailureShare(t0.Add(2 * time.Second)); !nearShare(got, pull/math.E) {
			t.Fatalf("one time constant later: %g, want %g", got, pull/math.E)
		}
		// the next outcome starts from the decayed share
		done(tr, t0.Add(2*time.Second), true)
		want := pull/math.E + (1-pull/math.E)*pull
		if got := tr.FailureShare(t0.Add(2 * time.Second)); !nearShare(got, want) {
			t.Fatalf("failure after the decay: %g, want %g", got, want)
		}
	})

	t.Run("it follows the failure ratio", func(t *testing.T) {
		tr := NewTracker(Settings{})
		at := t0
		for i := range 300 {
			at = at.Add(time.Millisecond)
			done(tr, at, i%10 < 3) // 30%
		}
		if got := tr.FailureShare(at); got < 0.2 || got > 0.4 {
			t.Fatalf("FailureShare = %g after 30%% failures, want about 0.3", got)
		}
	})

	t.Run("Forgive clears it and the avoidance, and nothing else", func(t *testing.T) {
		tr := NewTracker(Settings{})
		observeAt(tr, t0, 4*time.Millisecond)
		tr.Start(t0)
		done(tr, t0, true)
		done(tr, t0, true)
		est, _ := tr.Estimate(t0)
		tr.Forgive()
		if got := tr.FailureShare(t0); got != 0 {
			t.Errorf("FailureShare = %g after Forgive", got)
		}
		if tr.Avoided(t0) {
			t.Error("still avoided after Forgive")
		}
		if got, _ := tr.Estimate(t0); got != est || tr.InFlight() != 1 {
			t.Errorf("estimate %v, in flight %d after Forgive; want %v and 1", got, tr.InFlight(), est)
		}
		// the streak starts over: the next failure is avoided for 50ms
		done(tr, t0, true)
		if tr.Avoided(t0.Add(50 * time.Millisecond)) {
			t.Error("the failure streak survived Forgive")
		}
	})

	t.Run("it prices a flaky worker above a busier healthy one", func(t *testing.T) {
		flaky, healthy := NewTracker(Settings{}), NewTracker(Settings{})
		at := t0
		for i := range 300 {
			at = at.Add(time.Millisecond)
			done(flaky, at, i%10 < 3)
			done(healthy, at, false)
		}
		// The flaky worker's last outcome was a success, so it is not
		// avoided; the healthy one has three requests in flight.
		if flaky.Avoided(at) {
			t.Fatal("flaky worker still avoided after a success")
		}
		for range 3 {
			healthy.Start(at)
		}
		share := flaky.FailureShare(at)
		want := (2*ms + share*float64(DefaultFailurePenalty)) * 1
		if got := flaky.Cost(at); !near(got, want) {
			t.Fatalf("flaky cost %g, want %g", got, want)
		}
		if flaky.Cost(at) <= healthy.Cost(at) {
			t.Fatalf("flaky cost %g <= cost %g of a healthy worker with 3 in flight", flaky.Cost(at), healthy.Cost(at))
		}
	})
}

// nearShare reports whether two failure shares agree to 1e-9.
func nearShare(got, want float64) bool { return math.Abs(got-want) <= 1e-9 }

func TestCancel(t *testing.T) {
	tests := []struct {
		name    string
		elapsed time.Duration
		want    float64
	}{
		{"a slow loser raises the estimate", 300 * time.Millisecond, 300 * ms},
		{"a client that left early changes nothing", time.Millisecond, 10 * ms},
		{"zero elapsed changes nothing", 0, 10 * ms},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := NewTracker(Settings{})
			observeAt(tr, t0, 10*time.Millisecond)
			tok := tr.Start(t0)
			tr.Cancel(tok, t0, tc.elapsed)
			if got, _ := tr.Estimate(t0); !near(float64(got), tc.want) {
				t.Errorf("Estimate = %v, want %v", got, time.Duration(tc.want))
			}
			if n := tr.InFlight(); n != 0 {
				t.Errorf("InFlight = %d after Cancel, want 0", n)
			}
		})
	}
}

func TestDoneWithoutLatencyUsesStart(t *testing.T) {
	tr := NewTracker(Settings{})
	tok := tr.Start(t0)
	tr.Done(tok, t0.Add(7*time.Millisecond), 0, false)
	if got, _ := tr.Estimate(t0.Add(7 * time.Millisecond)); !near(float64(got), 7*ms) {
		t.Errorf("Estimate = %v, want 7ms", got)
	}
}

func TestHangDetection(t *testing.T) {
	tr := NewTracker(Settings{})
	observeAt(tr, t0, time.Millisecond)
	healthy := tr.Cost(t0)

	// The hung request: its cost rises with its age, before any timeout.
	hung := tr.Start(t0)
	steps := []struct {
		at        time.Duration
		wantCost  float64
		wantStuck int // older than 10ms
	}{
		{0, decayed(1*ms, 0) * 2, 0},
		{5 * time.Millisecond, 5 * ms * 2, 0},
		{50 * time.Millisecond, 50 * ms * 2, 1},
		{time.Second, 1000 * ms * 2, 1},
	}
	for _, s := range steps {
		now := t0.Add(s.at)
		if got := tr.Cost(now); !near(got, s.wantCost) {
			t.Errorf("at %v: Cost = %.0f, want %.0f", s.at, got, s.wantCost)
		}
		if got := tr.Stuck(now, 10*time.Millisecond); got != s.wantStuck {
			t.Errorf("at %v: Stuck = %d, want %d", s.at, got, s.wantStuck)
		}
	}
	if c := tr.Cost(t0.Add(5 * time.Millisecond)); c <= healthy*5 {
		t.Errorf("5ms into a hang the cost %.0f is not well above the healthy %.0f", c, healthy)
	}

	// More requests pile up; Stuck counts the ones past the threshold.
	tr.Start(t0.Add(995 * time.Millisecond))
	late := tr.Start(t0.Add(999 * time.Millisecond))
	now := t0.Add(time.Second)
	if got := tr.Stuck(now, 10*time.Millisecond); got != 1 {
		t.Errorf("Stuck(10ms) = %d, want 1", got)
	}
	if got := tr.Stuck(now, 2*time.Millisecond); got != 2 {
		t.Errorf("Stuck(2ms) = %d, want 2", got)
	}
	if got := tr.OldestAge(now); !near(float64(got), 1000*ms) {
		t.Errorf("OldestAge = %v, want 1s", got)
	}

	// The hung request times out: it is a failure with its latency, and
	// the next oldest request's age takes over.
	tr.Done(hung, now, time.Second, true)
	if got := tr.Stuck(now, 2*time.Millisecond); got != 1 {
		t.Errorf("after the timeout Stuck(2ms) = %d, want 1", got)
	}
	if got := tr.OldestAge(now); !near(float64(got), 5*ms) {
		t.Errorf("after the timeout OldestAge = %v, want 5ms", got)
	}
	tr.Cancel(late, now, time.Millisecond)
	if got := tr.InFlight(); got != 1 {
		t.Errorf("InFlight = %d, want 1", got)
	}
}

func TestSlotsOverflowAndRepeatedTokens(t *testing.T) {
	tr := NewTracker(Settings{})
	tokens := make([]int64, 0, slotCount+6)
	for i := range slotCount + 6 {
		tokens = append(tokens, tr.Start(t0.Add(time.Duration(i)*time.Millisecond)))
	}
	untimed := 0
	for _, tok := range tokens {
		if tok == 0 {
			untimed++
		}
	}
	if untimed != 6 {
		t.Fatalf("%d untimed tokens, want 6", untimed)
	}
	now := t0.Add(time.Second)
	if got := tr.InFlight(); got != slotCount+6 {
		t.Errorf("InFlight = %d, want %d", got, slotCount+6)
	}
	if got := tr.Stuck(now, 0); got != slotCount {
		t.Errorf("Stuck = %d, want %d (the timed ones)", got, slotCount)
	}

	// Finishing a timed request twice releases it once.
	tr.Done(tokens[0], now, time.Millisecond, false)
	tr.Done(tokens[0], now, time.Millisecond, false)
	tr.Cancel(tokens[0], now, time.Millisecond)
	if got := tr.InFlight(); got != slotCount+5 {
		t.Errorf("InFlight = %d after repeated Done, want %d", got, slotCount+5)
	}
	// A freed slot is reused by the next request.
	if tok := tr.Start(now); tok == 0 {
		t.Error("Start after a release returned an untimed token")
	}
	for _, tok := range tokens[1:] {
		tr.Done(tok, now, time.Millisecond, false)
	}
	if got := tr.InFlight(); got != 1 {
		t.Errorf("InFlight = %d, want 1", got)
	}
	// Foreign or corrupt tokens are ignored.
	tr.Done(127, now, time.Millisecond, false)
	tr.Done(-1&^slotMask|100, now, time.Millisecond, false)
	if got := tr.InFlight(); got != 1 {
		t.Errorf("InFlight = %d after foreign tokens, want 1", got)
	}
}

func TestNilTracker(t *testing.T) {
	var tr *Tracker
	tok := tr.Start(t0)
	tr.Done(tok, t0, time.Millisecond, true)
	tr.Cancel(tok, t0, time.Millisecond)
	if tr.Cost(t0) != 0 || tr.InFlight() != 0 || tr.Stuck(t0, 0) != 0 || tr.OldestAge(t0) != 0 {
		t.Error("a nil tracker reports state")
	}
	if _, ok := tr.Estimate(t0); ok {
		t.Error("a nil tracker has an estimate")
	}
}

func TestZeroTrackerUsesDefaults(t *testing.T) {
	var tr Tracker
	observeAt(&tr, t0, 100*time.Millisecond)
	if got, _ := tr.Estimate(t0.Add(DefaultDecay)); !near(float64(got), 100*ms*math.Exp(-1)) {
		t.Errorf("Estimate = %v, want the default decay applied", got)
	}
	if got := (&Tracker{}).Cost(t0); got != float64(DefaultInitial) {
		t.Errorf("Cost = %v, want DefaultInitial", got)
	}
}

func TestTrackerConcurrent(t *testing.T) {
	tr := NewTracker(Settings{})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 2 { // readers
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
					now := time.Now()
					_ = tr.Cost(now)
					_ = tr.Stuck(now, time.Millisecond)
				}
			}
		})
	}
	var writers sync.WaitGroup
	for g := range 8 {
		writers.Go(func() {
			for i := range 5000 {
				tok := tr.Start(time.Now())
				switch {
				case i%7 == 0:
					tr.Cancel(tok, time.Now(), time.Microsecond)
				default:
					tr.Done(tok, time.Now(), time.Duration(g+1)*time.Microsecond, i%11 == 0)
				}
			}
		})
	}
	writers.Wait()
	close(stop)
	wg.Wait()
	if n := tr.InFlight(); n != 0 {
		t.Errorf("InFlight = %d, want 0", n)
	}
	if m := tr.busy.Load(); m != 0 {
		t.Errorf("busy = %b, want 0", m)
	}
	if _, ok := tr.Estimate(time.Now()); !ok {
		t.Error("no estimate after 40000 answers")
	}
}

func TestWeight(t *testing.T) {
	tr := NewTracker(Settings{Decay: 10 * time.Second})
	for _, dt := range []time.Duration{0, time.Nanosecond, time.Microsecond, time.Millisecond, 9999 * time.Microsecond, 10 * time.Millisecond, time.Second, time.Minute, time.Hour} {
		want := math.Exp(-float64(dt) / float64(10*time.Second))
		if got := tr.weight(int64(dt)); math.Abs(got-want) > 1e-9 {
			t.Errorf("weight(%v) = %v, want %v", dt, got, want)
		}
	}
	if got := tr.weight(-5); got != 1 {
		t.Errorf("weight of a negative interval = %v, want 1", got)
	}
}

func TestObserveLeavesRequestsAndAvoidanceAlone(t *testing.T) {
	tr := NewTracker(Settings{Decay: 2 * time.Second})
	observeAt(tr, t0, 300*time.Millisecond)
	tok := tr.Start(t0)
	tr.Done(tr.Start(t0), t0, time.Millisecond, true) // avoided now
	for i := 1; i <= 20; i++ {                        // a probe every second, answering in 1ms
		tr.Observe(t0.Add(time.Duration(i)*time.Second), time.Millisecond)
	}
	at := t0.Add(20 * time.Second)
	if got, _ := tr.Estimate(at); got > 2*time.Millisecond {
		t.Errorf("Estimate = %v after 20 fast probes, want about 1ms", got)
	}
	if tr.InFlight() != 1 {
		t.Errorf("InFlight = %d, want the 1 request still in flight", tr.InFlight())
	}
	tr.Done(tok, at, time.Millisecond, false)
	tr.Observe(at, time.Millisecond)
	if tr.Avoided(at) {
		t.Error("avoided after a success")
	}
}
