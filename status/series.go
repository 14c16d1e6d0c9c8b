package status

import (
	"context"
	"maps"
	"math"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/bifrost-proxy/bifrost/pool"
)

// The time series: one point per step, seriesLen points.
const (
	step      = time.Second
	seriesLen = 300
	// rateWindow is the number of steps a worker's rates are
	// averaged over.
	rateWindow = 5
	seriesKey  = "series"
)

// seriesPool holds the time series shared by every Page, so that
// it survives config reloads (the new config acquires it before the old
// one releases it) and goes away with the last status page.
var seriesPool = caddy.NewUsagePool()

// series samples the workers' request and failure counters once per
// step into bounded rings: one for all pools together and one per pool,
// plus a short window per worker for its current rates. Workers are
// tracked by identity, so a worker that is removed and added again starts
// from its new counters. It is safe for concurrent use.
type series struct {
	mu     sync.Mutex
	last   time.Time // time of the last sample; zero before the first
	gen    uint64    // sample count, to prune what a sample did not see
	total  ring
	pools  map[string]*ring
	tracks map[*pool.Worker]*workerTrack
	rates  map[string]workerRate // by worker id, from the last sample

	// windows hold each pool's counts over the last five minutes (see
	// outcomes); failedTries adds up the failed tries of its workers
	// since the first sample.
	windows     map[string]*outcomeRing
	failedTries map[string]uint64
	// since is when each worker last changed its state, by worker id
	// (see problemSince).
	since map[string]stateSince
}

// stateSince is a worker's state and the time it was first sampled in
// it.
type stateSince struct {
	state string
	at    time.Time
}

// outcomeCount is a pool's cumulative counts at one sample: failed tries
// of its workers, and requests answered and failed as their clients saw
// them.
type outcomeCount struct {
	t                                  time.Time
	failedTries, clientReqs, clientErr uint64
}

// outcomeRing is a bounded ring of a pool's cumulative counts.
type outcomeRing struct {
	pts  [seriesLen + 1]outcomeCount
	n    int
	next int
}

// push adds a sample, dropping the oldest when the ring is full.
func (r *outcomeRing) push(c outcomeCount) {
	r.pts[r.next] = c
	r.next = (r.next + 1) % len(r.pts)
	if r.n < len(r.pts) {
		r.n++
	}
}

// outcomes is what a pool's clients and tries got over a window: the
// span it covers (up to five minutes; shorter while the page is young)
// and the counts in it.
type outcomes struct {
	// WindowMS is the span the counts cover, in milliseconds; 0 before
	// the second sample, when there are no counts yet.
	WindowMS int64 `json:"window_ms"`
	// ClientRequests and ClientErrors are the requests answered in the
	// window, and those whose answer was a failure (pool.Pool's
	// ClientFailures).
	ClientRequests uint64 `json:"client_requests"`
	ClientErrors   uint64 `json:"client_errors"`
	// FailedTries are the failed tries of the pool's workers in the
	// window, retried or not.
	FailedTries uint64 `json:"failed_tries"`
}

// newSeries returns an empty series.
func newSeries() *series {
	return &series{
		pools:       map[string]*ring{},
		tracks:      map[*pool.Worker]*workerTrack{},
		rates:       map[string]workerRate{},
		windows:     map[string]*outcomeRing{},
		failedTries: map[string]uint64{},
		since:       map[string]stateSince{},
	}
}

// Destruct implements caddy.Destructor; the series holds only memory.
func (*series) Destruct() error { return nil }

// point is one point of a series: rates over the step ending at t.
type point struct {
	t                time.Time
	requests, errors float64
}

// ring is a bounded series, oldest point overwritten first.
type ring struct {
	pts  [seriesLen]point
	n    int // points stored
	next int // slot of the next point
}

// push adds a point, dropping the oldest when the ring is full.
func (r *ring) push(p point) {
	r.pts[r.next] = p
	r.next = (r.next + 1) % len(r.pts)
	if r.n < len(r.pts) {
		r.n++
	}
}

// workerCount is a worker's counters at one time.
type workerCount struct {
	t               time.Time
	requests, fails uint64
}

// workerTrack is a worker's last few counters.
type workerTrack struct {
	counts [rateWindow + 1]workerCount
	n      int
	next   int
	gen    uint64
}

// push adds a sample, dropping the oldest when the window is full.
func (tr *workerTrack) push(c workerCount) {
	tr.counts[tr.next] = c
	tr.next = (tr.next + 1) % len(tr.counts)
	if tr.n < len(tr.counts) {
		tr.n++
	}
}

// newest returns the last sample; the track has at least one.
func (tr *workerTrack) newest() workerCount {
	return tr.counts[(tr.next+len(tr.counts)-1)%len(tr.counts)]
}

// oldest returns the first sample still in the window.
func (tr *workerTrack) oldest() workerCount {
	return tr.counts[(tr.next+len(tr.counts)-tr.n)%len(tr.counts)]
}

// rate returns the worker's rates over its window.
func (tr *workerTrack) rate() workerRate {
	o, n := tr.oldest(), tr.newest()
	secs := n.t.Sub(o.t).Seconds()
	if secs <= 0 {
		return workerRate{}
	}
	return workerRate{
		requests: round2(float64(delta(n.requests, o.requests)) / secs),
		errors:   round2(float64(delta(n.fails, o.fails)) / secs),
	}
}

// workerRate is a worker's tries and failed tries per second.
type workerRate struct{ requests, errors float64 }

// delta is the growth of a counter; one that went backwards counts from 0.
func delta(cur, prev uint64) uint64 {
	if cur < prev {
		return cur
	}
	return cur - prev
}

// round2 rounds to two decimals, enough for rates and smaller JSON.
func round2(f float64) float64 { return math.Round(f*100) / 100 }

// sample reads the workers' and pools' counters at time now. Every
// status page of the running configs calls it once per step; a call less
// than 90% of a step after the previous sample is ignored, so that
// overlapping samplers (during a reload, or with several pages) do not
// thicken the series.
func (ss *series) sample(now time.Time, workers []*pool.Worker, live ...*pool.Pool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if !ss.last.IsZero() && now.Sub(ss.last) < step*9/10 {
		return
	}
	defer ss.sampleOutcomes(now, live)
	first := ss.last.IsZero()
	secs := now.Sub(ss.last).Seconds()
	ss.last = now
	ss.gen++

	type sums struct{ requests, fails uint64 }
	pools := map[string]*sums{}
	rates := make(map[string]workerRate, len(workers))
	seen := make(map[string]bool, len(workers))
	for _, ws := range workers {
		snap := ws.Health.Snapshot(now)
		ss.noteState(ws, now, seen)
		c := workerCount{t: now, requests: snap.Requests, fails: snap.Failures}
		ps := pools[ws.Pool]
		if ps == nil {
			ps = new(sums)
			pools[ws.Pool] = ps
		}
		tr := ss.tracks[ws]
		if tr == nil {
			tr = new(workerTrack)
			ss.tracks[ws] = tr
		} else {
			prev := tr.newest()
			ps.requests += delta(c.requests, prev.requests)
			ps.fails += delta(c.fails, prev.fails)
		}
		tr.push(c)
		tr.gen = ss.gen
		rates[ws.ID] = tr.rate()
	}
	for id := range ss.since {
		if !seen[id] {
			delete(ss.since, id)
		}
	}
	for name, ps := range pools {
		ss.failedTries[name] += ps.fails
	}
	for name := range ss.failedTries {
		if pools[name] == nil {
			delete(ss.failedTries, name)
		}
	}
	for ws, tr := range ss.tracks {
		if tr.gen != ss.gen {
			delete(ss.tracks, ws)
		}
	}
	ss.rates = rates
	for name := range ss.pools {
		if pools[name] == nil {
			delete(ss.pools, name)
		}
	}
	if first || secs <= 0 {
		return // a rate needs two samples
	}
	var total sums
	for name, ps := range pools {
		r := ss.pools[name]
		if r == nil {
			r = new(ring)
			ss.pools[name] = r
		}
		r.push(point{t: now, requests: round2(float64(ps.requests) / secs), errors: round2(float64(ps.fails) / secs)})
		total.requests += ps.requests
		total.fails += ps.fails
	}
	ss.total.push(point{t: now, requests: round2(float64(total.requests) / secs), errors: round2(float64(total.fails) / secs)})
}

// noteState records when a worker entered the state it is in now. Called
// with ss.mu held.
func (ss *series) noteState(ws *pool.Worker, now time.Time, seen map[string]bool) {
	if ws.Breaker == nil {
		return // a bare worker (tests): no state to track
	}
	seen[ws.ID] = true
	state := pool.ViewOf(ws, now).State()
	if prev, ok := ss.since[ws.ID]; ok && prev.state == state {
		return
	}
	ss.since[ws.ID] = stateSince{state: state, at: now}
}

// sampleOutcomes records the pools' cumulative counts at now. Called with
// ss.mu held, after the workers' sample.
func (ss *series) sampleOutcomes(now time.Time, pools []*pool.Pool) {
	keep := make(map[string]bool, len(pools))
	for _, p := range pools {
		keep[p.Name] = true
		r := ss.windows[p.Name]
		if r == nil {
			r = new(outcomeRing)
			ss.windows[p.Name] = r
		}
		r.push(outcomeCount{
			t:           now,
			failedTries: ss.failedTries[p.Name],
			clientReqs:  p.ClientRequests.Load(),
			clientErr:   p.ClientFailures.Load(),
		})
	}
	for name := range ss.windows {
		if !keep[name] {
			delete(ss.windows, name)
		}
	}
}

// outcomes returns what the pool's clients and tries got over the last
// five minutes, or over what the samples cover while they are younger.
func (ss *series) outcomes(name string) outcomes {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	r := ss.windows[name]
	if r == nil || r.n < 2 {
		return outcomes{}
	}
	newest := r.pts[(r.next+len(r.pts)-1)%len(r.pts)]
	oldest := newest
	for i := r.n - 1; i >= 1; i-- {
		c := r.pts[(r.next+len(r.pts)-1-i)%len(r.pts)]
		if newest.t.Sub(c.t) <= seriesLen*step {
			oldest = c
			break
		}
	}
	return outcomes{
		WindowMS:       newest.t.Sub(oldest.t).Milliseconds(),
		ClientRequests: delta(newest.clientReqs, oldest.clientReqs),
		ClientErrors:   delta(newest.clientErr, oldest.clientErr),
		FailedTries:    delta(newest.failedTries, oldest.failedTries),
	}
}

// problemSince returns when the worker entered its current state, as
// the samples saw it (the first sample, for a state older than the
// page), and whether it is known.
func (ss *series) problemSince(id string) (time.Time, bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	st, ok := ss.since[id]
	return st.at, ok
}

// workerRates returns the rates of the last sample, by worker id. The map
// is replaced, never modified, after it is returned.
func (ss *series) workerRates() map[string]workerRate {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.rates
}

// seriesView is a series in the feed: parallel arrays, oldest first, of
// sample times (Unix milliseconds) and of requests and errors per second
// (tries and failed tries of the workers) over the step ending then.
type seriesView struct {
	StepMS   int64     `json:"step_ms"`
	Times    []int64   `json:"t"`
	Requests []float64 `json:"requests"`
	Errors   []float64 `json:"errors"`
}

// view returns a pool's series, or the total with pool "".
func (ss *series) view(pool string) seriesView {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	r := &ss.total
	if pool != "" {
		r = ss.pools[pool]
	}
	v := seriesView{StepMS: step.Milliseconds(), Times: []int64{}, Requests: []float64{}, Errors: []float64{}}
	if r == nil {
		return v
	}
	for i := range r.n {
		p := r.pts[(r.next+len(r.pts)-r.n+i)%len(r.pts)]
		v.Times = append(v.Times, p.t.UnixMilli())
		v.Requests = append(v.Requests, p.requests)
		v.Errors = append(v.Errors, p.errors)
	}
	return v
}

// sum returns the series of the pools in scope added up: the total with
// every pool, else the pools' points summed by sample time (every pool's
// ring gets its points from the same samples).
func (ss *series) sum(scope poolSet) seriesView {
	if scope.all {
		return ss.view("")
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	type rates struct{ requests, errors float64 }
	byTime := map[int64]*rates{}
	for name, r := range ss.pools {
		if !scope.has(name) {
			continue
		}
		for i := range r.n {
			p := r.pts[(r.next+len(r.pts)-r.n+i)%len(r.pts)]
			t := p.t.UnixMilli()
			if byTime[t] == nil {
				byTime[t] = new(rates)
			}
			byTime[t].requests += p.requests
			byTime[t].errors += p.errors
		}
	}
	times := append([]int64{}, slices.Sorted(maps.Keys(byTime))...)
	times = times[max(len(times)-seriesLen, 0):]
	v := seriesView{StepMS: step.Milliseconds(), Times: times, Requests: make([]float64, len(times)), Errors: make([]float64, len(times))}
	for i, t := range times {
		v.Requests[i], v.Errors[i] = round2(byTime[t].requests), round2(byTime[t].errors)
	}
	return v
}

// sampleLoop samples the counters once per step until ctx is done.
func (s *Page) sampleLoop(ctx context.Context) {
	defer s.wg.Done()
	defer func() {
		if v := recover(); v != nil {
			s.logger.Error("status sampler panicked", zap.Any("panic", v), zap.ByteString("stack", debug.Stack()))
		}
	}()
	s.series.sample(time.Now(), pool.AllWorkers(), pool.All()...)
	t := time.NewTicker(step)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.series.sample(time.Now(), pool.AllWorkers(), pool.All()...)
		}
	}
}

// Interface guards
var _ caddy.Destructor = (*series)(nil)
