package breaker

import "time"

// window is the rolling window of a closed breaker (Settings.Window): its
// counts are the sum of the last windowBuckets buckets, and the oldest
// bucket's share leaves them as time moves on. A request is counted in the
// bucket current when it was admitted, its outcome in the bucket current
// when it ended. The zero window is off: it keeps nothing, and the counts
// last until the state changes.
type window struct {
	// bucket is the length of one bucket; 0 if the window is off.
	bucket time.Duration
	// start is when the window started (since the breaker's epoch), and
	// age the number of whole buckets since then: the current bucket is
	// buckets[age%len(buckets)].
	start   int64
	age     uint64
	buckets []bucket
}

// bucket is one slice of the window. runS and runF are the successes and
// failures in it that belong to the current run of consecutive ones, so
// that the run shrinks by them when the bucket leaves the window.
type bucket struct {
	requests, successes, failures, exclusions uint32
	runS, runF                                uint32
}

// on reports whether the window is in use.
func (w *window) on() bool {
	return w.bucket > 0
}

// reset empties the window and restarts it at now, for a Window of length d
// (0: off). A window shorter than windowBuckets nanoseconds is one bucket.
func (w *window) reset(d time.Duration, now int64) {
	n := windowBuckets
	w.bucket = d / windowBuckets
	if w.bucket == 0 && d > 0 {
		n, w.bucket = 1, d
	}
	if d <= 0 {
		w.bucket, n = 0, 0
	}
	w.start, w.age = now, 0
	if cap(w.buckets) >= n {
		w.buckets = w.buckets[:n]
		clear(w.buckets)
	} else {
		w.buckets = make([]bucket, n)
	}
}

// cur returns the current bucket. The window must be on.
func (w *window) cur() *bucket {
	return &w.buckets[w.age%uint64(len(w.buckets))]
}

// advance moves the window to now, taking the buckets that left it out of
// c. A clock that went back moves nothing.
func (w *window) advance(now int64, c *Counts) {
	d := now - w.start
	if d < 0 {
		return
	}
	age := uint64(time.Duration(d) / w.bucket)
	if age <= w.age {
		return
	}
	if age-w.age >= uint64(len(w.buckets)) {
		// everything left the window
		*c = Counts{}
		clear(w.buckets)
		w.age = age
		return
	}
	for w.age < age {
		w.age++
		old := w.cur() // the oldest bucket, about to be reused
		c.Requests -= old.requests
		c.TotalSuccesses -= old.successes
		c.TotalFailures -= old.failures
		c.TotalExclusions -= old.exclusions
		c.ConsecutiveSuccesses -= old.runS
		c.ConsecutiveFailures -= old.runF
		*old = bucket{}
	}
}

// success records a success in the current bucket; it ends the run of
// failures, if ended says there was one. It does nothing if the window is
// off.
func (w *window) success(ended bool) {
	if w.on() {
		w.outcome(ended, func(b *bucket) *uint32 { return &b.runF }, func(b *bucket) (*uint32, *uint32) { return &b.successes, &b.runS })
	}
}

// failure records a failure in the current bucket; it ends the run of
// successes, if ended says there was one. It does nothing if the window is
// off.
func (w *window) failure(ended bool) {
	if w.on() {
		w.outcome(ended, func(b *bucket) *uint32 { return &b.runS }, func(b *bucket) (*uint32, *uint32) { return &b.failures, &b.runF })
	}
}

// outcome counts one success or failure: when ended, the other kind's
// run (other) ends in every bucket; the current bucket's count and run
// (mine) grow by one.
func (w *window) outcome(ended bool, other func(*bucket) *uint32, mine func(*bucket) (count, run *uint32)) {
	if ended {
		for i := range w.buckets {
			*other(&w.buckets[i]) = 0
		}
	}
	count, run := mine(w.cur())
	*count++
	*run++
}

// exclusion records an excluded outcome in the current bucket.
func (w *window) exclusion() {
	if w.on() {
		w.cur().exclusions++
	}
}
