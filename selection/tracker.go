package selection

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

const (
	// DefaultDecay is the time constant of the latency estimate when
	// none is configured: the decay of bifrost_p2c both when the bifrost
	// handler uses it as its default policy and when a user names it
	// without a decay. It is much shorter than the 10s of Finagle's and
	// linkerd's peak-EWMA balancers, so that a worker that was 100×
	// slower for a while earns its traffic back within about five seconds
	// (ln 100 × 1s); the estimate still averages hundreds of samples per
	// second of traffic, and its peak behaviour keeps it cautious.
	DefaultDecay = time.Second

	// DefaultInitial is the latency [Tracker.Cost] assumes for a tracker
	// with no observations.
	DefaultInitial = time.Millisecond

	// DefaultFailurePenalty is how long a worker is avoided after one
	// failure; each consecutive failure doubles it, up to
	// DefaultMaxFailurePenalty.
	DefaultFailurePenalty = 50 * time.Millisecond

	// DefaultMaxFailurePenalty caps the avoidance after repeated failures,
	// so that a recovered worker is tried, and serves again, within it.
	DefaultMaxFailurePenalty = time.Second

	// failurePull is the share of the way each outcome moves the failure
	// share towards 1 (a failure) or 0 (a success): the share follows
	// roughly the last 16 outcomes.
	failurePull = 1.0 / 16

	// minFailureShare is the failure share below which it is dropped to
	// 0, so that a worker that has stopped failing is back on the
	// success path's single atomic load.
	minFailureShare = 1e-3

	// penaltyFactor multiplies the cost of a worker that is being avoided
	// after a failure: it loses every comparison with one that is not.
	penaltyFactor = 1e9

	// DefaultMaxTrackers bounds a [Trackers] registry. Entries are created
	// per configured upstream, so this is a guard against misuse (dial
	// addresses taken from requests), not a limit real pools reach.
	DefaultMaxTrackers = 4096
)

const (
	// slotCount is the number of in-flight requests whose start time a
	// tracker keeps, one bit each in Tracker.busy.
	slotCount = 64

	// slotMask selects the slot number (plus one) in the low bits of a
	// token; the other bits are the start time, truncated to 128ns.
	slotMask = 0x7F

	// maxEstimate caps the estimate so that absurd latencies (a clock
	// jump) cannot overflow it.
	maxEstimate = float64(10 * time.Minute)

	// monoOffset keeps mono's results positive for any realistic time, so
	// that 0 can mean "empty" in the slots.
	monoOffset = int64(1) << 62
)

// epoch is the origin of the timestamps kept in atomics. Times from
// time.Now carry a monotonic reading, so the differences taken against
// epoch do not move when the wall clock is stepped; injected test clocks
// use their wall times.
var epoch = time.Now()

// mono converts t to the nanosecond timestamps kept in atomics.
func mono(t time.Time) int64 {
	return int64(t.Sub(epoch)) + monoOffset
}

// Settings configures trackers. The zero value of each field selects its
// default.
type Settings struct {
	// Decay is the time constant of the latency estimate: without news
	// the estimate falls to 1/e (37%) of its value in Decay, and an
	// observation below it moves it from there towards the observation by
	// the share 1 - exp(-elapsed/Decay), elapsed being the time since the
	// previous observation, or by a sixteenth if that is more (see
	// Tracker.Estimate). Zero or less selects
	// DefaultDecay.
	Decay time.Duration

	// Initial is the latency Tracker.Cost assumes before the first
	// observation. Zero or less selects DefaultInitial.
	Initial time.Duration

	// FailurePenalty is how long a worker is avoided after a failure,
	// and the latency a failure is reckoned to cost in the worker's cost
	// (weighted by its failure share); see Tracker.Done. Zero or less
	// selects DefaultFailurePenalty.
	FailurePenalty time.Duration

	// MaxFailurePenalty caps the avoidance after consecutive failures,
	// and is the time constant with which a worker's failure share is
	// forgotten without news. Zero or less selects
	// DefaultMaxFailurePenalty.
	MaxFailurePenalty time.Duration

	// MaxTrackers bounds the number of entries of a Trackers registry.
	// Zero or less selects DefaultMaxTrackers.
	MaxTrackers int
}

// withDefaults returns s with every unset field at its default.
func (s Settings) withDefaults() Settings {
	if s.Decay <= 0 {
		s.Decay = DefaultDecay
	}
	if s.Initial <= 0 {
		s.Initial = DefaultInitial
	}
	if s.FailurePenalty <= 0 {
		s.FailurePenalty = DefaultFailurePenalty
	}
	if s.MaxFailurePenalty <= 0 {
		s.MaxFailurePenalty = DefaultMaxFailurePenalty
	}
	s.MaxFailurePenalty = max(s.MaxFailurePenalty, s.FailurePenalty)
	if s.MaxTrackers <= 0 {
		s.MaxTrackers = DefaultMaxTrackers
	}
	return s
}

// Tracker tracks the latency and load of one upstream; see the package
// documentation for the cost model. Create it with NewTracker or through a
// Trackers registry; the zero value works with the default settings. A
// Tracker is safe for concurrent use and must not be copied after first
// use. Every method is also safe on a nil *Tracker, which records nothing.
type Tracker struct {
	decay      float64 // ns
	initial    float64 // ns
	penalty    float64 // ns
	maxPenalty float64 // ns

	// failures counts consecutive failures; avoidUntil (a mono
	// timestamp) is the end of the avoidance they earned.
	failures   atomic.Int32
	avoidUntil atomic.Int64

	// failShare holds the float64 bits of the failure share as of
	// failStamp (a mono timestamp); 0 while the worker has not failed
	// recently. See Done.
	failShare atomic.Uint64
	failStamp atomic.Int64

	inflight atomic.Int64

	// estimate holds the float64 bits of the latency estimate in ns as of
	// stamp (a mono timestamp); 0 means "no observation yet" (observations
	// are at least 1ns, and nothing decays a stored estimate to 0).
	estimate atomic.Uint64
	stamp    atomic.Int64

	// busy has bit i set while slots[i] belongs to an in-flight request.
	// A slot holds that request's token, 0 while it is being filled.
	busy  atomic.Uint64
	slots [slotCount]atomic.Int64
}

// NewTracker returns a tracker with the given settings (MaxTrackers is
// ignored).
func NewTracker(s Settings) *Tracker {
	s = s.withDefaults()
	return &Tracker{
		decay:      float64(s.Decay),
		initial:    float64(s.Initial),
		penalty:    float64(s.FailurePenalty),
		maxPenalty: float64(s.MaxFailurePenalty),
	}
}

// Start records that a request to the upstream begins at now and returns
// the token to pass to Done or Cancel. Its start time is kept exactly while
// fewer than 64 requests are in flight; beyond that, further requests are
// counted but not timed (their token is 0), so the age of the oldest
// request is then the oldest among the 64 timed ones, and Stuck counts
// those only. A worker that hangs fills its 64 slots with its oldest
// requests, which is exactly what the age term needs to see.
func (t *Tracker) Start(now time.Time) (token int64) {
	if t == nil {
		return 0
	}
	t.inflight.Add(1)
	for {
		m := t.busy.Load()
		if m == math.MaxUint64 {
			return 0
		}
		i := bits.TrailingZeros64(^m)
		if t.busy.CompareAndSwap(m, m|1<<i) {
			token = mono(now)&^slotMask | int64(i+1)
			t.slots[i].Store(token)
			return token
		}
	}
}

// release frees the slot of token and the in-flight count. It returns
// false for a token that is not in flight (already released, or not from
// this tracker), which is then ignored.
func (t *Tracker) release(token int64) bool {
	if token != 0 {
		i := int(token&slotMask) - 1
		if i < 0 || i >= slotCount || !t.slots[i].CompareAndSwap(token, 0) {
			return false
		}
		// The slot is cleared before its bit, so a reader that sees the
		// bit set finds either this request's token, 0, or the token of
		// the request that takes the slot next: never a stale one.
		t.busy.And(^(uint64(1) << i))
	}
	t.inflight.Add(-1)
	return true
}

// Done records the answer of the request of token at now: its latency
// (when 0 or less, the time since Start) goes into the estimate. A failure
// also makes the worker avoided, its cost multiplied so that it loses
// every comparison with a worker that is not, for FailurePenalty, doubled
// with each consecutive failure up to MaxFailurePenalty; a success ends
// the avoidance. So a fast failure (a refused connection, an instant 502)
// never makes a broken worker look like the fastest, a worker that keeps
// failing is tried about once per MaxFailurePenalty, and one that has
// recovered serves again within that time.
//
// Every outcome also moves the worker's failure share (see FailureShare)
// a sixteenth of the way towards 1 or 0, and the cost adds the share times
// FailurePenalty to the latency: a worker that fails some of its requests
// (a success between failures ends each avoidance) costs what a failure
// costs its clients, a retry, in proportion to how often it fails.
//
// A token that is not in flight (already finished) is ignored; a 0 token
// always releases one in-flight request, since untimed requests cannot be
// told apart.
func (t *Tracker) Done(token int64, now time.Time, latency time.Duration, failed bool) {
	if t == nil || !t.release(token) {
		return
	}
	x := float64(latency)
	n := mono(now)
	if x <= 0 && token != 0 {
		x = float64(n - token&^slotMask)
	}
	t.observe(n, max(x, 1))
	if !failed {
		if t.failures.Load() != 0 {
			t.failures.Store(0)
			t.avoidUntil.Store(0)
		}
		if t.failShare.Load() != 0 {
			t.account(n, false)
		}
		return
	}
	t.account(n, true)
	streak := min(t.failures.Add(1), 30)
	d := orDefault(t.penalty, DefaultFailurePenalty) * float64(int64(1)<<(streak-1))
	d = min(d, orDefault(t.maxPenalty, DefaultMaxFailurePenalty))
	t.avoidUntil.Store(n + int64(d))
}

// account folds one outcome at now (mono) into the failure share.
func (t *Tracker) account(now int64, failed bool) {
	w := t.forget(advanceStamp(&t.failStamp, now))
	for {
		oldBits := t.failShare.Load()
		share := math.Float64frombits(oldBits) * w
		if failed {
			share += (1 - share) * failurePull
		} else {
			share -= share * failurePull
		}
		if share < minFailureShare {
			share = 0
		}
		if t.failShare.CompareAndSwap(oldBits, math.Float64bits(share)) {
			return
		}
	}
}

// forget returns exp(-dt/MaxFailurePenalty), the share of the failure
// share that survives dt nanoseconds without news: a worker that traffic
// avoids because it failed is forgiven with that time constant, and tried
// again.
func (t *Tracker) forget(dt int64) float64 {
	if dt <= 0 {
		return 1
	}
	return math.Exp(-float64(dt) / orDefault(t.maxPenalty, DefaultMaxFailurePenalty))
}

// FailureShare returns the worker's failure share at now, in [0, 1): an
// exponentially weighted share of its recent outcomes that were failures
// (each outcome weighs a sixteenth), which without news decays with the
// time constant MaxFailurePenalty. It is 0 for a worker that has not
// failed recently.
func (t *Tracker) FailureShare(now time.Time) float64 {
	if t == nil {
		return 0
	}
	return t.shareAt(mono(now))
}

// shareAt is FailureShare at the mono timestamp now.
func (t *Tracker) shareAt(now int64) float64 {
	share := math.Float64frombits(t.failShare.Load())
	if share == 0 {
		return 0
	}
	return share * t.forget(now-t.failStamp.Load())
}

// Forgive clears the worker's failure share and its avoidance after a
// failure, for a worker that health checks have reinstated: it competes
// on latency and load alone again, instead of waiting out the failures
// that got it isolated.
func (t *Tracker) Forgive() {
	if t == nil {
		return
	}
	t.failures.Store(0)
	t.avoidUntil.Store(0)
	t.failShare.Store(0)
}

// Observe folds a latency measured outside the request path, such as an
// active health probe's, into the estimate, leaving the requests in flight
// and the avoidance after a failure alone. It lets a worker that traffic
// avoids show that it got fast again.
func (t *Tracker) Observe(now time.Time, latency time.Duration) {
	if t == nil || latency <= 0 {
		return
	}
	t.observe(mono(now), float64(latency))
}

// Avoided reports whether the worker is being avoided at now after a
// failure (see Done).
func (t *Tracker) Avoided(now time.Time) bool {
	return t != nil && mono(now) < t.avoidUntil.Load()
}

// Cancel releases the request of token without an answer, after elapsed
// (a cancelled hedge, a client that went away). Its latency is only known
// to be at least elapsed, so the estimate is raised to elapsed if it was
// lower and otherwise left alone: a loser that was slow counts as slow, a
// client that left early changes nothing.
func (t *Tracker) Cancel(token int64, now time.Time, elapsed time.Duration) {
	if t == nil || !t.release(token) {
		return
	}
	if elapsed > 0 {
		t.raise(mono(now), float64(elapsed))
	}
}

// answerPull is the least share of the way from the estimate to a faster
// answer that the answer moves it. Time alone would leave a busy worker's
// estimate at its latest peak for seconds, since answers a millisecond
// apart move it by a ten-thousandth each: one hiccup would then cost a
// healthy worker its traffic and load its peers. With a sixteenth, a
// peak five times the usual latency is down to within 10% of it after
// about 60 fast answers.
const answerPull = 1.0 / 16

// observe folds the latency x (ns, at least 1) observed at now into the
// estimate.
func (t *Tracker) observe(now int64, x float64) {
	w := t.weight(t.advance(now))
	for {
		oldBits := t.estimate.Load()
		old := math.Float64frombits(oldBits)
		cur := old * w // the estimate as readers see it now
		obs := x
		est := obs
		if old != 0 && obs < cur {
			// Below the estimate: move from it towards obs by the share
			// 1-w that the elapsed time gives, and by at least
			// answerPull, so that a lone slow answer among many fast
			// ones is soon forgotten however busy the worker is.
			est = obs + (cur-obs)*min(w, 1-answerPull)
		}
		est = min(est, maxEstimate)
		if t.estimate.CompareAndSwap(oldBits, math.Float64bits(est)) {
			return
		}
	}
}

// raise lifts the estimate to x if it is lower; see Cancel.
func (t *Tracker) raise(now int64, x float64) {
	for {
		oldBits := t.estimate.Load()
		old := math.Float64frombits(oldBits)
		if old != 0 && x <= old*t.weight(max(now-t.stamp.Load(), 0)) {
			return
		}
		if t.estimate.CompareAndSwap(oldBits, math.Float64bits(min(x, maxEstimate))) {
			t.advance(now)
			return
		}
	}
}

// advance moves the estimate's stamp forward to now and returns the time
// it moved (0 if now is not after it). Concurrent updates each get a
// disjoint share of the elapsed time, so decay is applied once in total.
func (t *Tracker) advance(now int64) int64 { return advanceStamp(&t.stamp, now) }

// advanceStamp is advance for any stamp.
func advanceStamp(stamp *atomic.Int64, now int64) int64 {
	for {
		prev := stamp.Load()
		if now <= prev {
			return 0
		}
		if stamp.CompareAndSwap(prev, now) {
			if prev == 0 {
				return 0 // first observation: nothing to decay
			}
			return now - prev
		}
	}
}

// weight returns exp(-dt/decay), the share of the estimate that survives
// dt nanoseconds without news.
func (t *Tracker) weight(dt int64) float64 {
	if dt <= 0 {
		return 1
	}
	x := float64(dt) / orDefault(t.decay, DefaultDecay)
	if x < 1e-3 {
		// A fed worker's estimate is milliseconds old: a Taylor series
		// is exact to 1e-10 there and costs a tenth of math.Exp.
		return 1 - x*(1-x/2)
	}
	return math.Exp(-x)
}

// orDefault returns the setting v (in ns) when it is set, else def: the
// zero Tracker works with the default settings.
func orDefault(v float64, def time.Duration) float64 {
	if v > 0 {
		return v
	}
	return float64(def)
}

// view is what a cost is computed from, read at one instant.
type view struct {
	latency  float64 // the estimate in ns, 0 if !known
	known    bool    // whether there has been an observation
	inflight int64
	age      float64 // ns since the start of the oldest timed request in flight
	avoided  bool    // failed recently: see Done
	failing  float64 // ns: the failure share × FailurePenalty
}

// view reads the tracker at now. A nil tracker gives the zero view.
func (t *Tracker) view(now time.Time) view {
	if t == nil {
		return view{}
	}
	n := mono(now)
	v := view{inflight: max(t.inflight.Load(), 0), avoided: n < t.avoidUntil.Load()}
	if share := t.shareAt(n); share != 0 {
		v.failing = share * orDefault(t.penalty, DefaultFailurePenalty)
	}
	if est := math.Float64frombits(t.estimate.Load()); est != 0 {
		v.latency = est * t.weight(n-t.stamp.Load())
		v.known = true
	}
	if v.inflight > 0 {
		if oldest, ok := t.oldest(); ok {
			v.age = float64(max(n-oldest, 0))
		}
	}
	return v
}

// oldest returns the start time (mono) of the oldest timed request in
// flight.
func (t *Tracker) oldest() (int64, bool) {
	var first int64
	found := false
	for m := t.busy.Load(); m != 0; m &= m - 1 {
		tok := t.slots[bits.TrailingZeros64(m)].Load()
		if tok == 0 {
			continue // being filled: it starts now
		}
		if start := tok &^ slotMask; !found || start < first {
			first, found = start, true
		}
	}
	return first, found
}

// cost is the cost formula of the package documentation.
func cost(latency, age, failing float64, inflight int64) float64 {
	return (max(latency, age) + failing) * float64(inflight+1)
}

// costOf is the cost of a view, with the avoidance of a recent failure.
func costOf(v view) float64 {
	c := cost(v.latency, v.age, v.failing, v.inflight)
	if v.avoided {
		c = (c + 1) * penaltyFactor
	}
	return c
}

// Cost returns the cost of sending one more request to the upstream at
// now, in nanoseconds × requests:
//
//	(max(estimate, age of the oldest unanswered request)
//	 + failure share × FailurePenalty) × (in-flight + 1)
//
// with Settings.Initial as the estimate before the first observation, and
// multiplied by a huge factor while the worker is avoided after a failure.
// Lower is better. A nil tracker costs 0.
func (t *Tracker) Cost(now time.Time) float64 {
	if t == nil {
		return 0
	}
	v := t.view(now)
	if !v.known {
		v.latency = orDefault(t.initial, DefaultInitial)
	}
	return costOf(v)
}

// Estimate returns the latency estimate at now, and false if there has
// been no observation yet. If E was stored at time s, the estimate at t
// is E × exp(-(t-s)/decay). An observation x at t stores
//
//	x                          if x ≥ the estimate at t (peak: at once)
//	x + (estimate − x) × w     otherwise, with w = min(exp(-(t-s)/decay), 15/16)
//
// where s is the time of the previous observation.
func (t *Tracker) Estimate(now time.Time) (time.Duration, bool) {
	v := t.view(now)
	return time.Duration(v.latency), v.known
}

// InFlight returns the number of requests started and not yet finished.
func (t *Tracker) InFlight() int {
	if t == nil {
		return 0
	}
	return int(max(t.inflight.Load(), 0))
}

// OldestAge returns how long the oldest timed request in flight has been
// waiting for an answer at now, 0 if none is in flight.
func (t *Tracker) OldestAge(now time.Time) time.Duration {
	return time.Duration(t.view(now).age)
}

// Stuck returns how many timed in-flight requests started more than
// threshold before now: the hang detector's count. It is at most 64; see
// Start.
func (t *Tracker) Stuck(now time.Time, threshold time.Duration) int {
	if t == nil {
		return 0
	}
	limit := mono(now) - int64(threshold)
	n := 0
	for m := t.busy.Load(); m != 0; m &= m - 1 {
		tok := t.slots[bits.TrailingZeros64(m)].Load()
		if tok != 0 && tok&^slotMask < limit {
			n++
		}
	}
	return n
}
