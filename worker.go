package bifrost

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/bifrost-proxy/bifrost/pool"
	"github.com/bifrost-proxy/bifrost/selection"
)

// worker is one upstream of one Handler: the shared state plus this
// config's own provisioned reverse_proxy handler with a single upstream,
// so that each worker has its own transport and connection pool.
type worker struct {
	*pool.Worker

	ps          *pool.Pool
	proxy       atomic.Pointer[reverseproxy.Handler] // replaced by a restart
	up          *reverseproxy.Upstream               // proxy.Upstreams[0], what selection policies see
	tracker     *selection.Tracker                   // the shared state's tracker as this config found it
	series      *workerSeries                        // hot-path metric series; nil without metrics
	waiting     waitingTries                         // tries a hang can take back
	provisioned bool

	// throttles is the worker's current run of throttled answers (see
	// throttlesWorker).
	throttles throttleRun

	// backup is set on a backup worker, which requests choose only
	// when the primaries cannot serve (see chooseSet)
	backup bool
	// connsMax is its transport's max_conns_per_host when each
	// connection carries one request (see connsLimit), else 0
	connsMax int64

	// configLogged is set once a config failure (KindConfig) of the
	// worker was logged with its fix; later ones are logged at debug.
	configLogged atomic.Bool

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
	if wt := w.ps.Monitor.Weight(w.Health); wt < 1 {
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
	if w.Full() || w.connsFull() {
		return false
	}
	return w.Breaker.Ready() && w.Health.AvailableNow()
}

// out reports whether the worker is out of rotation (retiring, breaker
// open, isolated, throttled): not merely full. Panic mode is for a pool
// whose workers are out; a pool whose workers are full is saturated.
func (w *worker) out() bool {
	if w.dyn != nil && w.dyn.closing.Load() {
		return true
	}
	return !w.Breaker.Ready() || !w.Health.AvailableNow()
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
)
