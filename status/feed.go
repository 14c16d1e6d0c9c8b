package status

import (
	"cmp"
	"sort"
	"time"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/pool"
	"github.com/bifrost-proxy/bifrost/recovery"
)

// errorLimit is the number of recent errors the feed carries.
const errorLimit = 50

// feed is the JSON the page reads.
type feed struct {
	// Now is the server's time; the page computes ages from it, not
	// from the browser's clock.
	Now time.Time `json:"now"`
	// Actions tells the page whether operator actions are enabled.
	Actions bool `json:"actions"`
	// RefreshMS is how often the page should poll.
	RefreshMS int64                      `json:"refresh_ms"`
	Stats     pool.StatsView             `json:"stats"`
	Pools     []feedPool                 `json:"pools"`
	Series    seriesView                 `json:"series"`
	Errors    []recovery.ContextualError `json:"errors"`
}

// feedPool is one pool in the feed.
type feedPool struct {
	Name    string         `json:"name"`
	Stats   pool.PoolStats `json:"stats"`
	Workers []feedWorker   `json:"workers"`
	Series  seriesView     `json:"series"`
	// Outcomes are what the pool's clients got apart from its failed
	// tries, over the last five minutes.
	Outcomes outcomes `json:"outcomes"`
}

// feedWorker is a worker in the feed: the admin API's view plus its
// status in one word, the times left, and its rates.
type feedWorker struct {
	pool.WorkerView

	// Status sums the worker up: healthy, half_open, open (breaker
	// open), throttled, unhealthy (probe failing), isolated or
	// recovery_failed; StatusText is the same in words.
	Status     string `json:"status"`
	StatusText string `json:"status_text"`

	IsolationLeftMS  int64 `json:"isolation_left_ms,omitempty"`
	ThrottleLeftMS   int64 `json:"throttle_left_ms,omitempty"`
	BreakerRetryInMS int64 `json:"breaker_retry_in_ms,omitempty"`

	// IsolationText says how long an isolated worker stays out, as the
	// CLI says it: "1m30s left", "expired, waiting for a passing probe",
	// "until restored".
	IsolationText string `json:"isolation_text,omitempty"`

	// Since is when the worker entered its status, as the page's
	// sampler saw it (at the latest when the page started).
	Since *time.Time `json:"since,omitempty"`

	// RequestRate and ErrorRate are tries and failed tries per second
	// over the last few seconds.
	RequestRate float64 `json:"request_rate"`
	ErrorRate   float64 `json:"error_rate"`
}

// state builds the JSON state of the pools in scope.
func (s *Page) state(now time.Time, scope poolSet) feed {
	stats := pool.Stats(scope.has)
	rates := s.series.workerRates()
	byPool := map[string][]feedWorker{}
	for _, v := range pool.WorkerViews("") {
		if scope.has(v.Pool) {
			byPool[v.Pool] = append(byPool[v.Pool], s.worker(v, now, rates))
		}
	}
	names := make([]string, 0, len(stats.Pools))
	for name := range stats.Pools {
		names = append(names, name)
	}
	for name := range byPool {
		if _, ok := stats.Pools[name]; !ok {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	pools := make([]feedPool, 0, len(names))
	for _, name := range names {
		ws := byPool[name]
		if ws == nil {
			ws = []feedWorker{}
		}
		pools = append(pools, feedPool{Name: name, Stats: stats.Pools[name], Workers: ws, Series: s.series.view(name), Outcomes: s.series.outcomes(name)})
	}
	return feed{
		Now:       now,
		Actions:   s.Actions,
		RefreshMS: step.Milliseconds(),
		Stats:     stats,
		Pools:     pools,
		Series:    s.series.sum(scope),
		Errors:    pool.Errors(recovery.Filter{Limit: errorLimit}, scope.has),
	}
}

// worker completes a worker's view for the feed.
func (s *Page) worker(v pool.WorkerView, now time.Time, rates map[string]workerRate) feedWorker {
	sw := feedWorker{WorkerView: v}
	sw.Status, sw.StatusText = workerStatus(v)
	if v.Isolated && !v.IsolatedUntil.IsZero() {
		sw.IsolationLeftMS = max(v.IsolatedUntil.Sub(now).Milliseconds(), 0)
	}
	if v.Isolated {
		sw.IsolationText = isolationLeft(v, now)
	}
	if at, ok := s.series.problemSince(v.ID); ok {
		sw.Since = &at
	}
	if v.Throttled {
		sw.ThrottleLeftMS = max(v.ThrottledUntil.Sub(now).Milliseconds(), 0)
	}
	if v.Breaker.State == breaker.StateOpen && !v.Breaker.RetryAt.IsZero() {
		sw.BreakerRetryInMS = max(v.Breaker.RetryAt.Sub(now).Milliseconds(), 0)
	}
	r := rates[v.ID]
	sw.RequestRate, sw.ErrorRate = r.requests, r.errors
	return sw
}

// stateTexts are the words the page shows for each worker state.
var stateTexts = map[string]string{
	"recovery_failed": "recovery failed",
	"open":            "breaker open",
	"half_open":       "half-open",
	"unhealthy":       "probe failing",
}

// workerStatus sums a worker up in one status (see pool.WorkerView.State)
// and the words that show it.
func workerStatus(v pool.WorkerView) (code, text string) {
	code = v.State()
	return code, cmp.Or(stateTexts[code], code)
}
