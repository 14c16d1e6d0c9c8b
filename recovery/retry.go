package recovery

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// BackoffMultiplier is how much the delay grows after each retry.
const BackoffMultiplier = 2.0

// Policy is a retry policy: how many tries a request gets and how long to
// wait between them. It has no defaults: the caller sets every field (see
// Validate). A Policy is a plain value, safe for concurrent use; each
// request gets its own Schedule from it.
type Policy struct {
	// Attempts is the number of tries including the first, at least 1;
	// 1 means no retries.
	Attempts int

	// Initial is the delay before the first retry, above 0. Each further
	// delay is BackoffMultiplier times the previous one.
	Initial time.Duration

	// Max caps every delay, jitter included; at least Initial.
	Max time.Duration

	// Jitter is the randomization factor, from 0 (none) to 1: a delay d
	// becomes a random value in [d*(1-Jitter), d*(1+Jitter)].
	Jitter float64

	// TryDuration bounds all tries together, measured from the start of
	// the schedule: no retry is scheduled whose delay would end after it.
	// 0 means no bound beyond the request's context.
	TryDuration time.Duration
}

// Validate reports the first field of p that is missing or out of range.
func (p Policy) Validate() error {
	switch {
	case p.Attempts < 1:
		return fmt.Errorf("attempts must be at least 1, got %d", p.Attempts)
	case p.Initial <= 0:
		return fmt.Errorf("initial backoff must be above 0, got %s", p.Initial)
	case p.Max < p.Initial:
		return fmt.Errorf("max backoff %s is below initial backoff %s", p.Max, p.Initial)
	case math.IsNaN(p.Jitter) || p.Jitter < 0 || p.Jitter > 1:
		return fmt.Errorf("jitter must be between 0 and 1, got %g", p.Jitter)
	case p.TryDuration < 0:
		return fmt.Errorf("try duration must not be negative, got %s", p.TryDuration)
	}
	return nil
}

// Schedule hands out the delays between the tries of one request. It wraps
// a backoff.ExponentialBackOff with backoff.WithMaxRetries (Attempts-1
// delays) and backoff.WithContext. A Schedule is not safe for concurrent
// use: make one per request with Policy.NewSchedule.
type Schedule struct {
	ctx   context.Context
	now   func() time.Time
	max   time.Duration
	tries uint64
	exp   backoff.ExponentialBackOff
	bo    backoff.BackOff // built on the first Next, so requests that never retry do not pay for it
}

// NewSchedule starts the schedule of one request; ctx is the request's
// context. TryDuration counts from now. The policy is taken as it is
// (see Validate); a jitter out of range is clamped.
func (p Policy) NewSchedule(ctx context.Context) *Schedule {
	return p.NewScheduleWithClock(ctx, time.Now)
}

// NewScheduleWithClock is NewSchedule with a clock, for tests and for
// callers that already read the time.
func (p Policy) NewScheduleWithClock(ctx context.Context, now func() time.Time) *Schedule {
	if ctx == nil {
		ctx = context.Background() // backoff.WithContext panics on nil
	}
	if now == nil {
		now = time.Now
	}
	if math.IsNaN(p.Jitter) {
		p.Jitter = 0
	}
	p.Jitter = min(max(p.Jitter, 0), 1)
	s := &Schedule{ctx: ctx, now: now, max: p.Max, tries: uint64(max(p.Attempts-1, 0))}
	s.exp = backoff.ExponentialBackOff{
		InitialInterval:     p.Initial,
		RandomizationFactor: p.Jitter,
		Multiplier:          BackoffMultiplier,
		MaxInterval:         p.Max,
		MaxElapsedTime:      p.TryDuration, // compared with the delay before Next caps it: errs on the short side
		Stop:                backoff.Stop,
		Clock:               clockFunc(now),
	}
	s.exp.Reset()
	return s
}

// clockFunc makes a function a backoff.Clock.
type clockFunc func() time.Time

// Now returns f().
func (f clockFunc) Now() time.Time { return f() }

// Next returns the delay to wait before the next try, or false when there
// must be no further try: the attempts are used up, the delay would end after
// TryDuration or after the context's deadline, or the context is done.
func (s *Schedule) Next() (time.Duration, bool) {
	if s.bo == nil {
		s.bo = backoff.WithContext(backoff.WithMaxRetries(&s.exp, s.tries), s.ctx)
	}
	d := s.bo.NextBackOff()
	if d == backoff.Stop {
		return 0, false
	}
	// backoff caps the interval before jitter; cap the result too, so Max
	// means what it says.
	d = min(d, s.max)
	if deadline, ok := s.ctx.Deadline(); ok && !s.now().Add(d).Before(deadline) {
		return 0, false
	}
	return d, true
}

// Sleep waits for d or until ctx is done, whichever comes first. It returns
// ctx.Err() if ctx ended the wait (or was done already), and nil otherwise.
func Sleep(ctx context.Context, d time.Duration) error {
	// Checked first so that a done context always wins, even against a
	// timer that is already due.
	if err := ctx.Err(); err != nil || d <= 0 {
		return err
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// budgetBuckets is the number of buckets the window is split into: with
// the default window, one per second.
const budgetBuckets = 10

// budgetShards is how many cache lines a Budget spreads its request
// counts over: every request adds one, from any CPU, while retries are
// few and read the sum.
const budgetShards = 8

// Budget limits retries to a share of requests over a sliding window, like
// the retry budgets of Envoy and Finagle, so that a full outage fails fast
// instead of multiplying the load. It allows a retry while the retries in
// the window stay below ratio × requests in the window + minPerSecond ×
// window seconds. A nil *Budget allows every retry.
//
// A Budget is safe for concurrent use and lock-free. Under concurrent
// TryRetry calls it may allow a few more retries than its limit, never
// fewer.
type Budget struct {
	width    int64 // bucket width in nanoseconds
	windowS  float64
	ratio    atomic.Uint64 // math.Float64bits
	minPerS  atomic.Int64
	requests [budgetShards]budgetShard
	retries  [budgetBuckets]atomic.Uint64 // packed epoch<<32 | count
}

// budgetShard is one shard of a Budget's request counts, on cache lines
// of its own: a request counts in one shard, picked at random.
type budgetShard struct {
	buckets [budgetBuckets]atomic.Uint64 // packed epoch<<32 | count
	_       [128 - budgetBuckets*8]byte
}

// NewBudget returns a budget with the given ratio of retries to requests,
// retries per second always allowed, and sliding window, which must be
// positive (the other two must not be negative: see Update). The window
// is counted in budgetBuckets buckets, so it slides in steps of a tenth
// of its length.
func NewBudget(ratio float64, minPerSecond int, window time.Duration) (*Budget, error) {
	if window <= 0 {
		return nil, fmt.Errorf("budget window must be positive, got %v", window)
	}
	b := &Budget{
		width:   max(int64(window/budgetBuckets), 1),
		windowS: window.Seconds(),
	}
	if err := b.Update(ratio, minPerSecond); err != nil {
		return nil, err
	}
	return b, nil
}

// Update sets a new ratio and minimum rate, keeping the counts. Either may
// be 0 (no retries earned by requests; no rate always allowed); neither
// may be negative.
func (b *Budget) Update(ratio float64, minPerSecond int) error {
	switch {
	case !(ratio >= 0):
		return fmt.Errorf("budget ratio must not be negative, got %v", ratio)
	case minPerSecond < 0:
		return fmt.Errorf("budget minimum must not be negative, got %d", minPerSecond)
	case b == nil:
		return nil
	}
	b.ratio.Store(math.Float64bits(ratio))
	b.minPerS.Store(int64(minPerSecond))
	return nil
}

// OnRequest counts a new client request at now.
func (b *Budget) OnRequest(now time.Time) {
	if b == nil {
		return
	}
	// rand.Uint32 reads the current thread's generator: no shared state
	b.add(&b.requests[rand.Uint32()%budgetShards].buckets, b.epoch(now))
}

// TryRetry takes one retry from the budget at now, and reports whether it
// could.
func (b *Budget) TryRetry(now time.Time) bool {
	if b == nil {
		return true
	}
	e := b.epoch(now)
	var requests uint64
	for i := range b.requests {
		requests += b.sum(&b.requests[i].buckets, e)
	}
	allowed := math.Float64frombits(b.ratio.Load())*float64(requests) +
		float64(b.minPerS.Load())*b.windowS
	if float64(b.sum(&b.retries, e)) >= allowed {
		return false
	}
	b.add(&b.retries, e)
	return true
}

// epoch returns the number of the bucket now falls in; only its low 32 bits
// are kept.
func (b *Budget) epoch(now time.Time) uint32 {
	return uint32(now.UnixNano() / b.width)
}

// add counts one event in the bucket of epoch e, resetting the bucket if it
// still holds an older epoch.
func (b *Budget) add(buckets *[budgetBuckets]atomic.Uint64, e uint32) {
	slot := &buckets[e%budgetBuckets]
	for {
		old := slot.Load()
		next := uint64(e)<<32 | 1
		if uint32(old>>32) == e {
			if uint32(old) == math.MaxUint32 {
				return // saturated
			}
			next = old + 1
		}
		if slot.CompareAndSwap(old, next) {
			return
		}
	}
}

// sum returns the events counted in the window that ends with epoch e.
func (b *Budget) sum(buckets *[budgetBuckets]atomic.Uint64, e uint32) uint64 {
	var n uint64
	for i := range buckets {
		v := buckets[i].Load()
		// Unsigned difference: buckets from the future (a clock that went
		// back) and from long ago both fall outside the window.
		if e-uint32(v>>32) < budgetBuckets {
			n += uint64(uint32(v))
		}
	}
	return n
}
