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
}

// newSeries returns an empty series.
func newSeries() *series {
	return &series{
		pools:  map[string]*ring{},
		tracks: map[*pool.Worker]*workerTrack{},
		rates:  map[string]workerRate{},
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

// sample reads the workers' counters at time now. Every status page of
// the running configs calls it once per step; a call less than 90% of a
// step after the previous sample is ignored, so that overlapping samplers
// (during a reload, or with several pages) do not thicken the series.
func (ss *series) sample(now time.Time, workers []*pool.Worker) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if !ss.last.IsZero() && now.Sub(ss.last) < step*9/10 {
		return
	}
	first := ss.last.IsZero()
	secs := now.Sub(ss.last).Seconds()
	ss.last = now
	ss.gen++

	type sums struct{ requests, fails uint64 }
	pools := map[string]*sums{}
	rates := make(map[string]workerRate, len(workers))
	for _, ws := range workers {
		snap := ws.Health.Snapshot(now)
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
	s.series.sample(time.Now(), pool.AllWorkers())
	t := time.NewTicker(step)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.series.sample(time.Now(), pool.AllWorkers())
		}
	}
}

// Interface guards
var _ caddy.Destructor = (*series)(nil)
