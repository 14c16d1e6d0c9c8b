// Package bifrost is a Caddy module that puts error recovery in front of a
// reverse proxy's upstreams: each upstream becomes an isolated worker with
// its own reverse_proxy handler and circuit breaker, failures are classified
// by kind and severity, safe requests are retried on another worker with
// backoff, failing workers are isolated and reinstated, and everything is
// visible through Caddy's admin API, metrics, events and logs.
package bifrost

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/pool"
	"github.com/bifrost-proxy/bifrost/recovery"
	"github.com/bifrost-proxy/bifrost/selection"
	_ "github.com/bifrost-proxy/bifrost/status"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler is a drop-in replacement for `reverse_proxy` that treats each
// upstream as an isolated worker: every worker has its own reverse_proxy
// handler (own transport and connection pool) and its own circuit breaker;
// failed tries are classified, safe requests are retried on another worker
// with exponential backoff and jitter, failing workers are isolated for a
// growing time and reinstated, and when no worker can serve, the Fallback
// response or a 503 with Retry-After is returned.
//
// Every reverse_proxy field is accepted and applied to each worker, except
// the ones Bifrost replaces, which are mapped onto its own when the handler
// is provisioned: `load_balancing.retries`, `try_duration`, `try_interval`
// and `retry_match` onto Retry, `health_checks.active` onto Health,
// `health_checks.passive` onto Breaker, Classify and MaxRequests (its
// `unhealthy_latency` is refused: see Retry.PerTryTimeout); setting a
// field both ways is an error. `request_buffers` applies to each try as
// in reverse_proxy: every try reads the request body from its start,
// from the copy Bifrost keeps for retries (see Retry.MaxBody).
// `circuit_breaker` is not supported (see Breaker).
// `dynamic_upstreams` is: each address its source returns is a worker of
// its own (see DynamicRetireAfter and DynamicMaxWorkers), alongside the
// static upstreams if any. `load_balancing.selection_policy` selects among available
// workers. An upstream listed more than once is one worker that the
// selection policy sees once per listing, as reverse_proxy users weigh
// upstreams.
//
// This handler provides these placeholders, describing the whole request
// rather than its last try; they are read from the request's state when
// used, so a deferred header operation sees the try whose response is
// written and an access log the request as it ended:
//
// Placeholder | Description
// ------------|-------------
// `{http.bifrost.worker}` | id of the worker that answered (or was tried last)
// `{http.bifrost.attempts}` | number of tries made
// `{http.bifrost.error_kind}` | kind of the last classified failure
// `{http.bifrost.error_severity}` | severity of the last classified failure
// `{http.bifrost.recovery_action}` | recovery action taken for the last failure
type Handler struct {
	reverseproxy.Handler

	// Name identifies the pool in the admin API, metrics, events and
	// logs, and is the key under which worker state survives config
	// reloads. Default: "pool-" followed by a hash of the upstream
	// addresses, which is stable as long as the upstreams are.
	Name string `json:"name,omitempty"`

	// Breaker configures each worker's circuit breaker.
	Breaker *BreakerConfig `json:"breaker,omitempty"`

	// Retry configures retries across workers.
	Retry *RetryConfig `json:"retry,omitempty"`

	// Health configures active health probes of each worker.
	Health *HealthConfig `json:"health,omitempty"`

	// Isolation configures how failing workers are taken out of rotation
	// and brought back.
	Isolation *IsolationConfig `json:"isolation,omitempty"`

	// Classify overrides how response statuses are classified, in order;
	// an exact status wins over a class.
	Classify []ClassifyRule `json:"classify,omitempty"`

	// Fallback is written when no worker can serve a request. Without it,
	// the handler returns a 503 error with Retry-After set from the
	// soonest expected recovery, which `handle_errors` can catch.
	Fallback *FallbackConfig `json:"fallback,omitempty"`

	// Backup declares backup upstreams, which take traffic only when the
	// primary upstreams cannot serve it.
	Backup *BackupConfig `json:"backup,omitempty"`

	// MaxRequests limits the requests in flight to one worker (a
	// bulkhead): a full worker is skipped, and when every worker is full
	// the request gets the pool's 503; the limit is never exceeded.
	// Default: 0 (no limit).
	MaxRequests int `json:"max_requests,omitempty"`

	// ErrorHistoryLimit is the number of recent classified errors kept per
	// pool for the admin API. Default: 1000.
	ErrorHistoryLimit int `json:"error_history_limit,omitempty"`

	// DynamicRetireAfter is how long a worker of `dynamic_upstreams` is
	// kept after its source stopped returning its address. It takes no
	// new requests meanwhile; if the address comes back in that time,
	// the worker comes back with its breaker, isolation and ejection
	// count. Once the time has passed it retires: its requests in flight
	// finish, then its proxy, transport, probes and metric series go.
	// Default: 30s.
	DynamicRetireAfter caddy.Duration `json:"dynamic_retire_after,omitempty"`

	// DynamicMaxWorkers bounds the workers of `dynamic_upstreams` in this
	// pool, those waiting to retire included. Addresses beyond it are left
	// out (logged at warn level, once per refresh that hits it), so that a
	// source returning thousands of addresses cannot exhaust memory.
	// Default: 256.
	DynamicMaxWorkers int `json:"dynamic_max_workers,omitempty"`

	ctx      caddy.Context
	bgCancel context.CancelFunc
	bg       *sync.WaitGroup
	logger   *zap.Logger
	events   *caddyevents.App
	poolName string
	pool     *pool.Pool
	// set is the worker set that requests use, swapped whole when
	// dynamic upstreams change; a request takes one snapshot and keeps
	// it (see workerSet).
	// (a pointer: the Handler is copied by value before Provision)
	set *atomic.Pointer[workerSet]
	// workers and upstreams are the static workers and their listings
	// (an upstream listed twice is listed twice), fixed at Provision.
	workers    []*worker
	upstreams  reverseproxy.UpstreamPool
	dyn        *dynamicPool // nil without dynamic_upstreams
	selector   reverseproxy.Selector
	classifier *recovery.Classifier
	policy     recovery.Policy
	methods    []string
	retryOn    retryOn
	maxBody    int64
	// maxBodyTotal is the pool's bound on body copies (see replayMemory)
	maxBodyTotal int64
	maxHeld      int64
	perTry       time.Duration
	hedge        *HedgeConfig // with defaults applied; nil when off
	// reuseState is set when no part of a request outlives its handler
	// (no per-try timer; a hedged race ends before its handler does), so
	// its state can be reused.
	reuseState bool
	p2c        *selection.P2C // the selection policy, when it learns latencies
	// directP2C allows the default policy's choice to be made over the
	// workers directly when a set's trackers are the policy's (see
	// workerSet.direct and choose).
	directP2C bool
	hangAfter time.Duration
	hangCount int
	cfg       *resolved // the configuration, resolved once by Provision
	// committed is set once this config's settings apply to the shared
	// state of its pool and workers (see commit)
	committed *atomic.Bool
	// states are the workers' shared states this handler acquired,
	// each released once in Cleanup
	states   []*pool.Worker
	metrics  *poolMetrics
	proxyCfg []byte // the workers' shared reverse_proxy JSON, for restarts
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.bifrost",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets up the workers, their shared state and the background
// loops.
func (h *Handler) Provision(ctx caddy.Context) error {
	eventsApp, err := ctx.App("events")
	if err != nil {
		return fmt.Errorf("getting events app: %w", err)
	}
	h.events, _ = eventsApp.(*caddyevents.App)
	h.ctx = ctx
	h.logger = ctx.Logger()
	h.set = new(atomic.Pointer[workerSet])

	if err := h.adoptReverseProxyFields(); err != nil {
		return err
	}
	cfg, err := h.resolve()
	if err != nil {
		return err
	}
	h.useResolved(cfg)

	h.poolName = h.Name
	if h.poolName == "" {
		h.poolName = defaultPoolName(h.Upstreams, h.DynamicUpstreamsRaw)
	}
	if err := h.claimWorkerIDs(ctx); err != nil {
		return err
	}
	h.logDefaults()

	// the selection policy picks among workers; the workers' own proxies
	// always use their single upstream. The default weighs each worker's
	// latency and load (power of two choices over peak-EWMA cost).
	if h.selector, err = defaultPolicy(ctx); err != nil {
		return err
	}
	if h.LoadBalancing != nil && h.LoadBalancing.SelectionPolicyRaw != nil {
		mod, err := ctx.LoadModule(h.LoadBalancing, "SelectionPolicyRaw")
		if err != nil {
			return fmt.Errorf("loading load balancing selection policy: %w", err)
		}
		h.selector = mod.(reverseproxy.Selector)
	} else if h.LoadBalancing != nil && h.LoadBalancing.SelectionPolicy != nil {
		h.selector = h.LoadBalancing.SelectionPolicy
	}

	if p2c, ok := h.selector.(*selection.P2C); ok {
		h.p2c = p2c
	}

	if err := h.provisionRetryMatch(ctx); err != nil {
		return err
	}

	// shared pool state, then the workers; every acquired key is
	// recorded at once so Cleanup can release it whatever fails next
	ps, err := pool.Acquire(h.poolName)
	if err != nil {
		return err
	}
	h.pool = ps
	// A pool that a running config uses keeps its settings until this
	// config runs: a reload that fails later (another module's Provision
	// or Validate, an app that does not start) must leave the running
	// config as it was, and `caddy validate` must change nothing. A pool
	// that no running config uses takes them now.
	h.committed = new(atomic.Bool)
	if ps.Attached() {
		if err := h.events.On("started", commitOnStart{h}); err != nil {
			return fmt.Errorf("subscribing to the config's start: %w", err)
		}
	} else {
		if err := h.applyPoolSettings(); err != nil {
			return err
		}
		h.committed.Store(true)
	}

	h.metrics = newPoolMetrics(ctx, h.poolName, h.logger)

	if err := h.provisionWorkers(ctx); err != nil {
		return err
	}
	// goroutines last, bound to a context that Cleanup cancels
	bgCtx, cancel := context.WithCancel(ctx)
	h.bgCancel = cancel
	h.bg = new(sync.WaitGroup)
	if err := h.provisionDynamic(ctx, bgCtx); err != nil {
		return err
	}
	h.publishSet()
	h.pool.Attach(h, h.set.Load().shared())
	app, err := appOf(ctx)
	if err != nil {
		return err
	}
	app.restoreState(h.pool) // the verdicts kept from before a restart
	h.startBackground(bgCtx)
	return nil
}

// provisionWorkers builds one worker per upstream: its shared state (new,
// or carried over from an earlier config with the new settings applied)
// and its own provisioned reverse_proxy handler.
func (h *Handler) provisionWorkers(ctx caddy.Context) error {
	cfg, err := workerProxyConfig(h.Handler)
	if err != nil {
		return err
	}
	h.proxyCfg = cfg
	bs := h.cfg.breaker
	byDial := make(map[string]*worker, len(h.Upstreams))
	ups := h.Upstreams
	if h.Backup != nil {
		// backups are workers like the others, marked as such
		ups = append(slices.Clip(ups), h.Backup.upstreams()...)
	}
	for i, up := range ups {
		if wk := byDial[up.Dial]; wk != nil {
			// listed again: the same worker, one more share for the
			// selection policy (see checkDuplicateUpstreams)
			h.upstreams = append(h.upstreams, wk.up)
			continue
		}
		ws, err := h.acquireWorkerState(up.Dial, bs)
		if err != nil {
			return fmt.Errorf("upstream %d (%s): %w", i, up.Dial, err)
		}
		h.states = append(h.states, ws)
		w := &worker{Worker: ws, ps: h.pool, tracker: ws.Tracker(), backup: i >= len(h.Upstreams), connsMax: connsLimit(h.TransportRaw)}
		if h.committed.Load() {
			ws.Backup.Store(w.backup)
		}
		rp, err := newWorkerProxy(cfg, up, w)
		if err != nil {
			return fmt.Errorf("upstream %d (%s): %w", i, up.Dial, err)
		}
		w.proxy.Store(rp)
		if err := rp.Provision(ctx); err != nil {
			h.recordCritical(ws, recovery.KindWorkerCreationFailed, err)
			return fmt.Errorf("upstream %d (%s): provisioning worker: %w", i, up.Dial, err)
		}
		w.provisioned = true
		h.shareTracker(w)
		h.metrics.bind(w)
		w.up = rp.Upstreams[0]
		h.workers = append(h.workers, w)
		h.upstreams = append(h.upstreams, w.up)
		byDial[up.Dial] = w
	}
	h.directP2C = h.p2c != nil
	return nil
}

// acquireWorkerState loads or creates the shared state of one worker,
// taking one reference that the caller must release, and applies this
// config's settings to it.
func (h *Handler) acquireWorkerState(dial string, bs breaker.Settings) (*pool.Worker, error) {
	ws, err := h.pool.AcquireWorker(dial, bs, h.trackerSettings())
	if err != nil {
		return nil, err
	}
	if h.committed.Load() {
		h.applyWorkerSettings(ws)
	}
	return ws, nil
}

// applyWorkerSettings applies this config's settings to a worker's
// shared state (see commit).
func (h *Handler) applyWorkerSettings(ws *pool.Worker) {
	ws.MaxRequests.Store(int64(h.MaxRequests))
	if err := ws.Breaker.Update(h.cfg.breaker); err != nil {
		// resolve checked them: not expected
		h.logger.Error("applying the breaker's settings", zap.String("worker", ws.ID), zap.Error(err))
	}
	// probe state is left alone: the last checker of the worker forgets
	// it when it stops (see health.WorkerHealth.AddProber)
}

// commit applies this config's settings to the shared state of its pool
// and workers, once the config runs (see Provision).
func (h *Handler) commit() {
	if h.committed.Swap(true) {
		return
	}
	if err := h.applyPoolSettings(); err != nil {
		// resolve checked them: not expected
		h.logger.Error("applying the pool's settings", zap.String("pool", h.poolName), zap.Error(err))
	}
	for _, wk := range h.set.Load().workers {
		h.applyWorkerSettings(wk.Worker)
		wk.Backup.Store(wk.backup)
	}
}

// commitOnStart commits a handler's settings when Caddy reports its
// config started.
type commitOnStart struct{ h *Handler }

// Handle implements caddyevents.Handler.
func (c commitOnStart) Handle(context.Context, caddy.Event) error {
	c.h.commit()
	return nil
}

// trackerSettings are the settings of the workers' selection trackers:
// the P2C policy's when it is the one selecting, the defaults otherwise
// (latency and hang tracking work whatever the policy).
func (h *Handler) trackerSettings() selection.Settings {
	if h.p2c != nil {
		return h.p2c.Trackers().Settings()
	}
	return selection.Settings{}
}

// shareTracker makes the worker's shared tracker, which outlives configs,
// the one the P2C policy reads for its upstream.
func (h *Handler) shareTracker(w *worker) {
	if h.p2c != nil && !h.p2c.Trackers().Put(w.Upstream, w.tracker) {
		h.logger.Warn("selection policy's tracker registry is full", zap.String("worker", w.ID))
	}
}

// Validate checks nothing again: Caddy provisions a module before it
// validates it (`caddy validate` too), and Provision resolved and checked
// the whole configuration once. A handler that was not provisioned is
// checked here.
func (h *Handler) Validate() error {
	if h.cfg != nil {
		return nil
	}
	_, err := h.resolve()
	return err
}

// Cleanup stops the background loops, cleans up the workers' proxies
// (Caddy does not: they were not loaded as modules), releases exactly the
// shared state this handler acquired, and removes its metric series. It is
// safe after a partial Provision.
func (h *Handler) Cleanup() error {
	if h.pool != nil {
		h.pool.Detach(h)
	}
	if h.bgCancel != nil {
		h.bgCancel()
	}
	if h.bg != nil {
		h.bg.Wait()
	}
	if h.pool != nil {
		h.pool.Manager.Wait()
	}
	var errs []error
	for _, w := range h.workers {
		if !w.provisioned {
			continue
		}
		w.mu.Lock()
		proxies := append(w.retired, w.proxy.Load())
		w.mu.Unlock()
		for _, rp := range proxies {
			if err := rp.Cleanup(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, ws := range h.states {
		if _, err := h.pool.ReleaseWorker(ws); err != nil {
			errs = append(errs, err)
		}
	}
	if h.dyn != nil {
		// after the static keys: a dynamic worker's series go when
		// no config has its state any more
		errs = append(errs, h.dyn.close())
	}
	if h.metrics != nil {
		h.metrics.forget(h.workers)
	}
	if h.pool != nil {
		if err := h.pool.Release(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// defaultPoolName derives a pool name from the upstream addresses and the
// dynamic source's configuration, so that it stays the same across reloads
// that keep them.
func defaultPoolName(ups reverseproxy.UpstreamPool, dynamic json.RawMessage) string {
	dials := make([]string, 0, len(ups)+1)
	for _, u := range ups {
		if u != nil {
			dials = append(dials, u.Dial)
		}
	}
	sort.Strings(dials)
	if dynamic != nil {
		// the source's configuration, as the adapter wrote it
		dials = append(dials, "dynamic:"+string(dynamic))
	}
	sum := fnv.New32a()
	_, _ = sum.Write([]byte(strings.Join(dials, ",")))
	return "pool-" + strconv.FormatUint(uint64(sum.Sum32()), 16)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
