package bifrost

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/recovery"
	"github.com/bifrost-proxy/bifrost/selection"
)

// states holds what must survive a config reload: one *workerState per
// worker and one *poolState per pool. A worker's key is its pool name and
// upstream dial address ("w|<pool>|<dial>"): a reload that keeps both keeps
// the worker's breaker, isolation and health history, and two sites that
// name the same pool share its workers. A pool's key is "p|<pool>". Each
// Handler stores its keys in Provision and deletes exactly those in Cleanup.
var states = caddy.NewUsagePool()

func workerKey(pool, dial string) string { return "w|" + pool + "|" + dial }
func poolKey(pool string) string         { return "p|" + pool }

// workerID makes the URL-safe id of a worker from its pool and dial
// address: characters other than letters, digits, '.', '-' and '_' become
// '-', so "api" and "127.0.0.1:9001" give "api_127.0.0.1-9001".
func workerID(pool, dial string) string {
	clean := func(s string) string {
		return strings.Map(func(r rune) rune {
			switch {
			case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_':
				return r
			}
			return '-'
		}, s)
	}
	return clean(pool) + "_" + clean(dial)
}

// workerState is the part of a worker that outlives a config: its breaker
// and its health record. It is shared by every Handler that uses the same
// pool and upstream. It must not be copied.
type workerState struct {
	id       string
	idValue  any // id, boxed once for the replacer
	pool     string
	upstream string

	breaker *breaker.Breaker
	health  *health.WorkerHealth

	// trips counts breaker openings since the breaker last closed; enough
	// of them in a row isolate the worker.
	trips atomic.Int32

	// maxRequests is the worker's concurrency limit (0: none), updated on
	// every provision.
	maxRequests atomic.Int64
}

// breakerChange is one breaker transition, handed from gobreaker's
// state-change hook (which runs under the breaker's lock) to a goroutine
// that logs it, emits events and escalates to isolation.
type breakerChange struct {
	ws       *workerState
	from, to breaker.State
}

// poolState is the part of a pool that outlives a config.
type poolState struct {
	name    string
	monitor *health.Monitor
	manager *recovery.Manager
	budget  *recovery.Budget
	latency latencyRing  // recent successful try latencies (hedge delay)
	replay  replayMemory // what request body copies hold (retry.max_body_total)

	// changes carries breaker transitions out of the breakers' locks; a
	// full channel drops the event (counted), never blocks a request.
	changes chan breakerChange
	dropped atomic.Uint64

	mu      sync.Mutex
	workers []*workerState // the pool's workers in the newest config
	// dynamic are the addresses of the pool's dynamic workers as last
	// seen, with which the next config starts (see provisionDynamic)
	dynamic []string

	// dynamicErr is the error of the dynamic source while its lookups
	// fail, "" otherwise (admin API, status page)
	dynamicErr atomic.Pointer[string]
}

// newPoolState builds the shared state of a pool.
func newPoolState(name string) *poolState {
	return &poolState{
		name:    name,
		monitor: health.NewMonitor(health.IsolationSettings{}, nil, nil),
		manager: recovery.NewManager(recovery.ManagerConfig{}),
		budget:  recovery.NewBudget(defaultBudget, 0, 0),
		changes: make(chan breakerChange, 256),
	}
}

// Destruct implements caddy.Destructor; a pool holds no resources that
// outlive its last reference besides memory.
func (*poolState) Destruct() error { return nil }

// Destruct implements caddy.Destructor.
func (*workerState) Destruct() error { return nil }

// setWorkers records the pool's workers in the newest config and tells the
// isolation monitor about them.
func (ps *poolState) setWorkers(ws []*workerState) {
	hs := make([]*health.WorkerHealth, len(ws))
	for i, w := range ws {
		hs[i] = w.health
	}
	ps.mu.Lock()
	ps.workers = ws
	ps.mu.Unlock()
	ps.monitor.SetWorkers(hs)
}

// worker is one upstream of one Handler: the shared state plus this
// config's own provisioned reverse_proxy handler with a single upstream,
// so that each worker has its own transport and connection pool.
type worker struct {
	*workerState

	ps          *poolState
	proxy       atomic.Pointer[reverseproxy.Handler] // replaced by a restart
	up          *reverseproxy.Upstream               // proxy.Upstreams[0], what selection policies see
	tracker     *selection.Tracker                   // latency, load and hangs
	series      *workerSeries                        // hot-path metric series; nil without metrics
	waiting     waitingTries                         // tries a hang can take back
	provisioned bool

	// throttles counts the worker's 429 answers in a row (see
	// throttlesWorker).
	throttles atomic.Int32

	mu       sync.Mutex
	retired  []*reverseproxy.Handler // replaced proxies, cleaned up with the handler
	restarts int                     // guarded by mu

	// dyn is set on a worker of a dynamic upstream source: its own
	// context (its proxies' modules are loaded in it and cleaned up with
	// it when the worker retires) and its retirement state.
	dyn *dynamicLife
}

// maxRestarts bounds the restarts of one worker in one config: each keeps
// its replaced proxy until Cleanup.
const maxRestarts = 8

// OK implements reverseproxy.CircuitBreaker: Caddy's selection policies
// call it through Upstream.Available, so they skip a worker whose breaker
// is open, that is isolated or throttled, or that is full. A worker that
// is ramping up after reinstatement (slow start) is offered only to its
// current share of selections.
func (w *worker) OK() bool {
	if !w.available() {
		return false
	}
	if wt := w.ps.monitor.Weight(w.health); wt < 1 {
		return rand.Float64() < wt
	}
	return true
}

// RecordMetric implements reverseproxy.CircuitBreaker. Caddy calls it only
// when a response arrived, never on transport errors, so Bifrost records
// every outcome in its own request loop instead.
func (*worker) RecordMetric(int, time.Duration) {}

// available reports whether the worker may take a new request now. It
// reads the clock only when a breaker is open or a throttle was set.
func (w *worker) available() bool {
	if w.dyn != nil && w.dyn.closing.Load() {
		return false
	}
	if max := w.maxRequests.Load(); max > 0 && w.health.InFlight() >= max {
		return false
	}
	return w.breaker.Ready() && w.health.AvailableNow()
}

// selectable reports whether a selection policy may choose the worker, as
// reverse_proxy's Upstream.Available does (it calls OK).
func (w *worker) selectable() bool { return w.up.Available() }

// candidate is the worker as the P2C policy compares it.
func (w *worker) candidate() selection.Candidate {
	return selection.Candidate{Tracker: w.tracker, Requests: int64(w.up.NumRequests())}
}

// firstUpstream is the selection policy of each worker's own proxy: the
// worker has exactly one upstream, and Bifrost has already decided that it
// is the one to use, so it is returned even if Caddy would consider it
// unavailable at that instant.
type firstUpstream struct{}

// Select implements reverseproxy.Selector.
func (firstUpstream) Select(pool reverseproxy.UpstreamPool, _ *http.Request, _ http.ResponseWriter) *reverseproxy.Upstream {
	if len(pool) == 0 {
		return nil
	}
	return pool[0]
}

// workerProxyConfig returns the JSON of the reverse_proxy handler shared by
// every worker: the user's reverse_proxy configuration without the parts
// Bifrost replaces (selection, retries, health checks, circuit breaker,
// upstreams). Request buffering stays: each try hands its worker a body
// read from its start (see requestBody), which the worker's proxy may
// buffer as reverse_proxy's request_buffers says.
func workerProxyConfig(rp reverseproxy.Handler) ([]byte, error) {
	rp.Upstreams = nil
	rp.DynamicUpstreamsRaw = nil
	rp.LoadBalancing = nil
	rp.HealthChecks = nil
	rp.CBRaw = nil
	if rp.TransportRaw == nil {
		// An explicit transport is loaded through the context and
		// cleaned up with it; the implicit default one is not, and
		// would leak its keep-alive connections on every reload.
		rp.TransportRaw = json.RawMessage(`{"protocol":"http"}`)
	}
	b, err := json.Marshal(rp)
	if err != nil {
		return nil, fmt.Errorf("encoding worker proxy config: %w", err)
	}
	return b, nil
}

// newWorkerProxy builds a worker's own reverse_proxy handler from the
// shared JSON and one upstream.
func newWorkerProxy(cfg []byte, up *reverseproxy.Upstream, cb reverseproxy.CircuitBreaker) (*reverseproxy.Handler, error) {
	rp := new(reverseproxy.Handler)
	if err := json.Unmarshal(cfg, rp); err != nil {
		return nil, fmt.Errorf("decoding worker proxy config: %w", err)
	}
	rp.Upstreams = reverseproxy.UpstreamPool{{Dial: up.Dial, MaxRequests: up.MaxRequests}}
	rp.LoadBalancing = &reverseproxy.LoadBalancing{SelectionPolicy: firstUpstream{}}
	rp.CB = cb
	return rp, nil
}

// Interface guards
var (
	_ reverseproxy.CircuitBreaker = (*worker)(nil)
	_ reverseproxy.Selector       = firstUpstream{}
	_ caddy.Destructor            = (*poolState)(nil)
	_ caddy.Destructor            = (*workerState)(nil)
)
