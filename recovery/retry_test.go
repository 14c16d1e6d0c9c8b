package recovery

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

// delays drains s, advancing clock by each delay, and returns them.
func delays(s *Schedule, clock *fakeClock) []time.Duration {
	var out []time.Duration
	for len(out) < 1000 {
		d, ok := s.Next()
		if !ok {
			break
		}
		out = append(out, d)
		clock.advance(d)
	}
	return out
}

// policy is a complete policy for tests: three tries, 50ms doubling up to
// 2s, no jitter.
var policy = Policy{Attempts: 3, Initial: 50 * time.Millisecond, Max: 2 * time.Second}

// A Policy has no defaults: a missing field is an error, not a value the
// package picks, so the backoffs the handler documents are the only
// defaults.
func TestPolicyValidate(t *testing.T) {
	tests := []struct {
		name string
		p    Policy
		err  string // substring naming the field; "" means valid
	}{
		{"full", Policy{Attempts: 5, Initial: time.Millisecond, Max: time.Second, Jitter: 1, TryDuration: time.Second}, ""},
		{"no retries, no jitter", Policy{Attempts: 1, Initial: time.Millisecond, Max: time.Millisecond}, ""},
		{"zero is incomplete", Policy{}, "attempts must be at least 1"},
		{"no backoff", Policy{Attempts: 3}, "initial backoff must be above 0"},
		{"no max", Policy{Attempts: 3, Initial: time.Millisecond}, "max backoff 0s is below initial backoff 1ms"},
		{"negative attempts", Policy{Attempts: -1}, "attempts"},
		{"negative initial", Policy{Attempts: 1, Initial: -time.Second}, "initial"},
		{"initial above max", Policy{Attempts: 1, Initial: 2 * time.Second, Max: time.Second}, "max backoff 1s is below initial backoff 2s"},
		{"jitter above 1", Policy{Attempts: 1, Initial: 1, Max: 1, Jitter: 1.5}, "jitter"},
		{"negative jitter", Policy{Attempts: 1, Initial: 1, Max: 1, Jitter: -0.5}, "jitter"},
		{"negative try duration", Policy{Attempts: 1, Initial: 1, Max: 1, TryDuration: -time.Second}, "try duration"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.p.Validate()
			if tt.err == "" {
				if err != nil {
					t.Errorf("Validate() = %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("Validate() = %v, want it to mention %q", err, tt.err)
			}
		})
	}
}

func TestScheduleAttempts(t *testing.T) {
	for _, attempts := range []int{1, 2, 3, 6} {
		t.Run(strings.Repeat("I", attempts), func(t *testing.T) {
			clock := &fakeClock{t: time.Unix(1000, 0)}
			p := policy
			p.Attempts = attempts
			s := p.NewScheduleWithClock(context.Background(), clock.now)
			if got := len(delays(s, clock)); got != attempts-1 {
				t.Errorf("%d attempts gave %d delays, want %d", attempts, got, attempts-1)
			}
			if _, ok := s.Next(); ok {
				t.Error("Next succeeded after the schedule ended")
			}
		})
	}
}

func TestScheduleGrowth(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name string
		p    Policy
		want []time.Duration
	}{
		{"doubles up to max", Policy{Attempts: 7, Initial: 100 * ms, Max: time.Second},
			[]time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, time.Second, time.Second}},
		{"negative jitter is none", Policy{Attempts: 4, Initial: 100 * ms, Max: time.Second, Jitter: -1},
			[]time.Duration{100 * ms, 200 * ms, 400 * ms}},
		{"initial equals max", Policy{Attempts: 4, Initial: 300 * ms, Max: 300 * ms},
			[]time.Duration{300 * ms, 300 * ms, 300 * ms}},
		{"try duration stops the delay that would overrun it", Policy{Attempts: 10, Initial: 100 * ms, Max: time.Second, TryDuration: 350 * ms},
			[]time.Duration{100 * ms, 200 * ms}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := &fakeClock{t: time.Unix(1000, 0)}
			got := delays(tt.p.NewScheduleWithClock(context.Background(), clock.now), clock)
			if len(got) != len(tt.want) {
				t.Fatalf("delays = %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("delays = %v, want %v", got, tt.want)
				}
			}
		})
	}
}

func TestScheduleTryDurationCountsTryTime(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	p := Policy{Attempts: 10, Initial: 100 * time.Millisecond, Max: time.Second, TryDuration: 500 * time.Millisecond}
	s := p.NewScheduleWithClock(context.Background(), clock.now)
	clock.advance(250 * time.Millisecond) // the first try was slow
	if d, ok := s.Next(); !ok || d != 100*time.Millisecond {
		t.Fatalf("first delay = %v, %v", d, ok)
	}
	clock.advance(100*time.Millisecond + 50*time.Millisecond) // delay + second try: 400ms used
	if d, ok := s.Next(); ok {
		t.Errorf("a 200ms delay was allowed with 100ms of a 500ms try duration left (got %v)", d)
	}
}

func TestScheduleJitter(t *testing.T) {
	const runs = 300
	p := Policy{Attempts: 6, Initial: 100 * time.Millisecond, Max: 10 * time.Second, Jitter: 0.5}
	base := []time.Duration{100, 200, 400, 800, 1600}
	var lo, hi, sum [5]time.Duration
	for i := range lo {
		lo[i] = 1 << 62
	}
	for range runs {
		clock := &fakeClock{t: time.Unix(1000, 0)}
		got := delays(p.NewScheduleWithClock(context.Background(), clock.now), clock)
		if len(got) != 5 {
			t.Fatalf("got %d delays, want 5", len(got))
		}
		for i, d := range got {
			b := base[i] * time.Millisecond
			if d < b/2 || d > b*3/2+1 {
				t.Fatalf("delay %d = %v, outside [%v, %v]", i, d, b/2, b*3/2)
			}
			lo[i], hi[i], sum[i] = min(lo[i], d), max(hi[i], d), sum[i]+d
		}
	}
	for i := range base {
		b := base[i] * time.Millisecond
		if lo[i] > b*8/10 || hi[i] < b*12/10 {
			t.Errorf("delay %d spans only [%v, %v] over %d runs: jitter not applied", i, lo[i], hi[i], runs)
		}
		if i > 0 && sum[i] <= sum[i-1] {
			t.Errorf("mean delay %d (%v) does not grow from delay %d (%v)", i, sum[i]/runs, i-1, sum[i-1]/runs)
		}
	}
}

func TestScheduleMaxCapsJitter(t *testing.T) {
	p := Policy{Attempts: 50, Initial: time.Second, Max: time.Second, Jitter: 1}
	clock := &fakeClock{t: time.Unix(1000, 0)}
	for _, d := range delays(p.NewScheduleWithClock(context.Background(), clock.now), clock) {
		if d > time.Second {
			t.Fatalf("delay %v above max 1s", d)
		}
	}
}

func TestScheduleContext(t *testing.T) {
	t.Run("canceled before", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if d, ok := policy.NewSchedule(ctx).Next(); ok {
			t.Errorf("Next on a canceled context = %v", d)
		}
	})
	t.Run("canceled between tries", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		s := Policy{Attempts: 5, Initial: time.Millisecond, Max: time.Millisecond}.NewSchedule(ctx)
		if _, ok := s.Next(); !ok {
			t.Fatal("first Next failed")
		}
		cancel()
		if _, ok := s.Next(); ok {
			t.Error("Next succeeded after cancellation")
		}
	})
	t.Run("nil context and clock", func(t *testing.T) {
		// A nil context is a caller bug, but it must not panic.
		//lint:ignore SA1012 a nil context is what this case tests
		s := Policy{Attempts: 2, Initial: time.Millisecond, Max: time.Millisecond}.NewScheduleWithClock(nil, nil)
		if _, ok := s.Next(); !ok {
			t.Error("first Next failed")
		}
	})
	t.Run("delay past the deadline", func(t *testing.T) {
		clock := &fakeClock{t: time.Now()}
		ctx, cancel := context.WithDeadline(context.Background(), clock.t.Add(time.Hour))
		defer cancel()
		p := Policy{Attempts: 5, Initial: 40 * time.Minute, Max: 2 * time.Hour}
		got := delays(p.NewScheduleWithClock(ctx, clock.now), clock)
		if len(got) != 1 || got[0] != 40*time.Minute {
			t.Errorf("delays = %v, want only 40m: the 80m one ends after the deadline", got)
		}
	})
}

func TestSleep(t *testing.T) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		d    time.Duration
		want error
	}{
		{"zero", func() (context.Context, context.CancelFunc) { return context.Background(), func() {} }, 0, nil},
		{"short", func() (context.Context, context.CancelFunc) { return context.Background(), func() {} }, time.Millisecond, nil},
		{"already canceled", func() (context.Context, context.CancelFunc) { return canceled, func() {} }, time.Hour, context.Canceled},
		{"already canceled, zero delay", func() (context.Context, context.CancelFunc) { return canceled, func() {} }, 0, context.Canceled},
		{"canceled while sleeping", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			go cancel()
			return ctx, cancel
		}, time.Hour, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := tt.ctx()
			defer cancel()
			if err := Sleep(ctx, tt.d); !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Errorf("Sleep = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestBudget(t *testing.T) {
	t0 := time.Unix(1_000_000, 0) // on a bucket boundary
	type step struct {
		at       time.Duration // since t0
		requests int
		retries  int // retries tried
		granted  int // retries that must be granted
	}
	tests := []struct {
		name  string
		b     *Budget
		steps []step
	}{
		{"nil allows everything", nil, []step{{0, 0, 100, 100}}},
		{"3/s over 10s with no traffic", mustBudget(0.2, 3, 10*time.Second), []step{{0, 0, 40, 30}}},
		{"ratio alone", mustBudget(0.2, 0, 10*time.Second), []step{{0, 100, 30, 20}}},
		{"ratio plus minimum", mustBudget(0.2, 1, 10*time.Second), []step{{0, 100, 40, 30}}},
		{"minimum alone", mustBudget(0, 2, 5*time.Second), []step{{0, 1000, 20, 10}}},
		{"no traffic, no minimum", mustBudget(0.5, 0, time.Second), []step{{0, 0, 5, 0}}},
		{"requests earn retries as they come", mustBudget(0.1, 0, 10*time.Second), []step{
			{0, 10, 3, 1},
			{time.Second, 20, 3, 2},
		}},
		{"the window slides", mustBudget(0.2, 0, 10*time.Second), []step{
			{0, 100, 0, 0},
			{5 * time.Second, 0, 25, 20},       // earned by the requests at t0
			{9999 * time.Millisecond, 0, 5, 0}, // still inside the window
			{10 * time.Second, 0, 5, 0},        // the requests at t0 left
			{12 * time.Second, 100, 5, 0},      // the retries at +5s still count
			{15 * time.Second, 0, 25, 20},      // now they left too
			{100 * time.Second, 0, 5, 0},       // everything left
			{100 * time.Second, 100, 30, 20},   // recovered with new traffic
		}},
		{"a clock that goes back does not count the future", mustBudget(0.2, 0, 10*time.Second), []step{
			{20 * time.Second, 100, 0, 0},
			{0, 0, 5, 0},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for i, st := range tt.steps {
				now := t0.Add(st.at)
				for range st.requests {
					tt.b.OnRequest(now)
				}
				granted := 0
				for range st.retries {
					if tt.b.TryRetry(now) {
						granted++
					}
				}
				if granted != st.granted {
					t.Fatalf("step %d (+%v): %d of %d retries granted, want %d", i, st.at, granted, st.retries, st.granted)
				}
			}
		})
	}
}

func TestBudgetUpdate(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	b := mustBudget(0.1, 0, 10*time.Second)
	for range 100 {
		b.OnRequest(now)
	}
	take := func(n int) int {
		got := 0
		for range n {
			if b.TryRetry(now) {
				got++
			}
		}
		return got
	}
	if got := take(20); got != 10 {
		t.Fatalf("ratio 0.1: %d granted, want 10", got)
	}
	mustUpdate(t, b, 0.5, 0)
	if got := take(50); got != 40 {
		t.Errorf("after raising the ratio to 0.5: %d more granted, want 40", got)
	}
	mustUpdate(t, b, 0.5, 1) // +10 over the 10s window
	if got := take(20); got != 10 {
		t.Errorf("after adding a minimum of 1/s: %d more granted, want 10", got)
	}
	var nilBudget *Budget
	if err := nilBudget.Update(1, 1); err != nil { // must not panic
		t.Errorf("nil budget Update: %v", err)
	}
	nilBudget.OnRequest(now)
}

// A budget takes complete settings: no window, or a negative ratio or
// minimum, is refused, not read as a default.
func TestBudgetRefusesIncompleteSettings(t *testing.T) {
	for _, c := range []struct {
		ratio  float64
		min    int
		window time.Duration
	}{{0.2, 3, 0}, {-0.1, 3, time.Second}, {0.2, -1, time.Second}} {
		if b, err := NewBudget(c.ratio, c.min, c.window); err == nil {
			t.Errorf("NewBudget(%v, %d, %v) = %v, want an error", c.ratio, c.min, c.window, b)
		}
	}
	b := mustBudget(0.2, 3, time.Second)
	if err := b.Update(-1, 0); err == nil {
		t.Error("Update with a negative ratio: no error")
	}
}

// mustBudget returns NewBudget's budget, or panics.
func mustBudget(ratio float64, minPerSecond int, window time.Duration) *Budget {
	b, err := NewBudget(ratio, minPerSecond, window)
	if err != nil {
		panic(err)
	}
	return b
}

// mustUpdate updates b, failing the test on an error.
func mustUpdate(t *testing.T, b *Budget, ratio float64, minPerSecond int) {
	t.Helper()
	if err := b.Update(ratio, minPerSecond); err != nil {
		t.Fatal(err)
	}
}

func TestBudgetConcurrent(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	b := mustBudget(0.2, 0, 10*time.Second)
	const workers, perWorker = 4, 2000
	var granted atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range perWorker {
				b.OnRequest(now)
				if b.TryRetry(now) {
					granted.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	limit := int64(0.2 * workers * perWorker)
	if g := granted.Load(); g < limit-workers || g > limit+workers {
		t.Errorf("granted %d retries for %d requests, want about %d", g, workers*perWorker, limit)
	}
}

func TestBudgetAllocs(t *testing.T) {
	b := mustBudget(0.2, 3, 10*time.Second)
	now := time.Now()
	if n := testing.AllocsPerRun(1000, func() {
		b.OnRequest(now)
		b.TryRetry(now)
	}); n != 0 {
		t.Errorf("Budget allocates %v times", n)
	}
}

func TestNewScheduleAllocs(t *testing.T) {
	ctx := context.Background()
	p := policy
	if n := testing.AllocsPerRun(100, func() { p.NewSchedule(ctx) }); n > 1 {
		t.Errorf("NewSchedule allocates %v times, want 1", n)
	}
}

func BenchmarkBudget(b *testing.B) {
	bu := mustBudget(0.2, 3, 10*time.Second)
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		bu.OnRequest(now)
		bu.TryRetry(now)
	}
}

func BenchmarkBudgetParallel(b *testing.B) {
	bu := mustBudget(0.2, 3, 10*time.Second)
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			bu.OnRequest(now)
			bu.TryRetry(now)
		}
	})
}

func BenchmarkNewSchedule(b *testing.B) {
	ctx := context.Background()
	p := policy
	b.ReportAllocs()
	for b.Loop() {
		p.NewSchedule(ctx)
	}
}

func BenchmarkScheduleRetries(b *testing.B) {
	ctx := context.Background()
	p := policy
	b.ReportAllocs()
	for b.Loop() {
		s := p.NewSchedule(ctx)
		for {
			if _, ok := s.Next(); !ok {
				break
			}
		}
	}
}
