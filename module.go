// Package bifrost is a Caddy module that puts error recovery in front of a
// reverse proxy's upstreams: each upstream becomes an isolated worker with
// its own reverse_proxy handler and circuit breaker, failures are classified
// by kind and severity, safe requests are retried on another worker with
// backoff, failing workers are isolated and reinstated, and everything is
// visible through Caddy's admin API, metrics, events and logs.
package bifrost

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
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
	"github.com/bifrost-proxy/bifrost/health"
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

	// MaxRequests limits the requests in flight to one worker (a
	// bulkhead); a full worker is skipped. Default: 0 (no limit).
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
	// (no racing tries, no per-try timer), so its state can be reused.
	reuseState bool
	p2c        *selection.P2C // the selection policy, when it learns latencies
	// directP2C allows the default policy's choice to be made over the
	// workers directly when a set's trackers are the policy's (see
	// workerSet.direct and choose).
	directP2C bool
	hangAfter time.Duration
	hangCount int
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
	if err := h.validateConfig(); err != nil {
		return err
	}

	h.poolName = h.Name
	if h.poolName == "" {
		h.poolName = defaultPoolName(h.Upstreams, h.DynamicUpstreamsRaw)
	}

	// the selection policy picks among workers; the workers' own proxies
	// always use their single upstream. The default weighs each worker's
	// latency and load (power of two choices over peak-EWMA cost).
	h.selector = &selection.P2C{Decay: caddy.Duration(defaultP2CDecay)}
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

	if err := h.provisionPolicies(); err != nil {
		return err
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
	h.applyPoolSettings()

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
	h.startBackground(bgCtx)
	if provisioned != nil {
		provisioned(h)
	}
	return nil
}

// provisioned, when set (by tests and benchmarks only), is called with
// every handler that finished provisioning.
var provisioned func(*Handler)

// provisionPolicies turns the configuration into the settings the request
// loop reads.
func (h *Handler) provisionPolicies() error {
	rc := RetryConfig{}
	if h.Retry != nil {
		rc = *h.Retry
	}
	jitter := 0.5
	if rc.Jitter != nil {
		jitter = *rc.Jitter
	}
	initial, maxDelay := time.Duration(rc.BackoffInitial), time.Duration(rc.BackoffMax)
	if initial == 0 {
		initial = defaultBackoffInitial
	}
	if maxDelay == 0 {
		maxDelay = max(defaultBackoffMax, initial)
	}
	h.policy = recovery.Policy{
		Attempts:    rc.Attempts,
		Initial:     initial,
		Max:         maxDelay,
		Jitter:      jitter,
		TryDuration: time.Duration(rc.TryDuration),
	}.WithDefaults()
	// WithDefaults reads a zero jitter as "unset"; an explicit 0 stands
	h.policy.Jitter = jitter
	if err := h.policy.Validate(); err != nil {
		return fmt.Errorf("retry: %w", err)
	}
	h.methods = rc.Methods
	if len(h.methods) == 0 {
		h.methods = defaultRetryMethods
	}
	h.retryOn = defaultRetryConditions
	if len(rc.On) > 0 {
		h.retryOn = retryOn{}
		for _, s := range rc.On {
			c, err := parseRetryCondition(s)
			if err != nil {
				return fmt.Errorf("retry: %w", err)
			}
			h.retryOn = h.retryOn.with(c)
		}
	}
	h.maxBody = defaultMaxBody
	if rc.MaxBody != nil {
		h.maxBody = *rc.MaxBody
	}
	h.maxBodyTotal = cmp.Or(rc.MaxBodyTotal, defaultMaxBodyTotal)
	h.maxHeld = rc.MaxHeldResponse
	if h.maxHeld == 0 {
		h.maxHeld = defaultMaxHeldResponse
	}
	h.perTry = time.Duration(rc.PerTryTimeout)
	h.hedge = nil
	if rc.Hedge != nil {
		hc := *rc.Hedge
		hc.Max = cmp.Or(hc.Max, 1)
		hc.Percentile = cmp.Or(hc.Percentile, defaultHedgePercentile)
		h.hedge = &hc
	}
	h.reuseState = h.hedge == nil && h.perTry == 0

	h.classifier = &recovery.Classifier{}
	for i, cr := range h.Classify {
		rule, err := recovery.ParseRule(cr.Status, cr.Kind, cr.Action)
		if err != nil {
			return fmt.Errorf("classify[%d]: %w", i, err)
		}
		h.classifier.Rules = append(h.classifier.Rules, rule)
	}
	return nil
}

// applyPoolSettings applies this config's settings to the pool state,
// which may have survived from an earlier config.
func (h *Handler) applyPoolSettings() {
	ic := IsolationConfig{}
	if h.Isolation != nil {
		ic = *h.Isolation
	}
	is := health.IsolationSettings{
		BaseTime:               time.Duration(ic.BaseTime),
		MaxTime:                time.Duration(ic.MaxTime),
		MaxPercent:             defaultMaxPercent,
		SuccessRateMinRequests: defaultOutlierRequests,
		SuccessRateStdevFactor: cmp.Or(ic.SuccessRateStdevFactor, defaultStdevFactor),
		SlowStart:              time.Duration(ic.SlowStart),
		DetectionInterval:      cmp.Or(time.Duration(ic.OutlierInterval), defaultOutlierInterval),
		MaxRecoveryAttempts:    ic.MaxRecoveryAttempts,
		ProbesConfigured:       h.Health.active(),
	}
	if ic.MaxPercent != nil {
		is.MaxPercent = *ic.MaxPercent
		if is.MaxPercent == 0 {
			is.MaxPercent = health.NoAutomaticIsolation
		}
	}
	if ic.SuccessRateMinRequests != nil {
		is.SuccessRateMinRequests = *ic.SuccessRateMinRequests
	}
	h.pool.Monitor.Update(is.WithDefaults())
	h.hangAfter = cmp.Or(time.Duration(ic.HangThreshold), defaultHangThreshold)
	h.hangCount = cmp.Or(ic.HangRequests, defaultHangRequests)
	h.pool.SetBreakerTrips(cmp.Or(ic.BreakerTrips, defaultBreakerTrips))

	limit := h.ErrorHistoryLimit
	if limit == 0 {
		limit = defaultHistoryLimit
	}
	h.pool.Manager.Reconfigure(recovery.ManagerConfig{
		HistoryLimit:        limit,
		MaxRecoveryAttempts: ic.MaxRecoveryAttempts,
	})

	budget := defaultBudget
	if h.Retry != nil && h.Retry.Budget > 0 {
		budget = h.Retry.Budget
	}
	h.pool.Budget.Update(budget, 0)
	h.pool.Replay.SetLimit(h.maxBodyTotal)
}

// breakerSettings converts the breaker block.
func (h *Handler) breakerSettings() breaker.Settings {
	bc := BreakerConfig{}
	if h.Breaker != nil {
		bc = *h.Breaker
	}
	return breaker.Settings{
		Failures:     uint32(bc.Failures),
		FailureRatio: bc.FailureRatio,
		MinRequests:  uint32(bc.MinRequests),
		Window:       time.Duration(bc.Window),
		Successes:    uint32(bc.Successes),
		Timeout:      cmp.Or(time.Duration(bc.Timeout), defaultBreakerTimeout),
	}.WithDefaults()
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
	bs := h.breakerSettings()
	byDial := make(map[string]*worker, len(h.Upstreams))
	for i, up := range h.Upstreams {
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
		w := &worker{Worker: ws, ps: h.pool, tracker: ws.Tracker()}
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
	ws.MaxRequests.Store(int64(h.MaxRequests))
	return ws, nil
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

// Validate checks the configuration; it is pure and fast.
func (h *Handler) Validate() error {
	return h.validateConfig()
}

// validateConfig refuses configurations Bifrost cannot serve, naming the
// field and, for reverse_proxy features it replaces, the equivalent.
func (h *Handler) validateConfig() error {
	dynamic := h.DynamicUpstreamsRaw != nil || h.DynamicUpstreams != nil
	if len(h.Upstreams) == 0 && !dynamic {
		return errors.New("upstreams: at least one upstream is required, or dynamic_upstreams")
	}
	if h.DynamicRetireAfter < 0 {
		return fmt.Errorf("dynamic_retire_after must not be negative, got %s", time.Duration(h.DynamicRetireAfter))
	}
	if h.DynamicMaxWorkers < 0 {
		return fmt.Errorf("dynamic_max_workers must not be negative, got %d", h.DynamicMaxWorkers)
	}
	if !dynamic && (h.DynamicRetireAfter != 0 || h.DynamicMaxWorkers != 0) {
		return errors.New("dynamic_retire_after and dynamic_max_workers apply only with dynamic_upstreams")
	}
	for i, up := range h.Upstreams {
		if up == nil || up.Dial == "" {
			return fmt.Errorf("upstreams[%d]: dial address is empty", i)
		}
	}
	if lb := h.LoadBalancing; lb != nil {
		switch {
		case lb.Retries != 0:
			return errors.New("load_balancing.retries: use retry.attempts instead")
		case lb.TryDuration != 0:
			return errors.New("load_balancing.try_duration: use retry.try_duration instead")
		case lb.TryInterval != 0:
			return errors.New("load_balancing.try_interval: use retry.backoff_initial instead")
		case len(lb.RetryMatchRaw) > 0:
			return errors.New("load_balancing.retry_match: use retry.methods and retry.on instead")
		}
	}
	if h.HealthChecks != nil {
		return errors.New("health_checks: use the health, breaker and isolation blocks instead")
	}
	if h.CBRaw != nil {
		return errors.New("circuit_breaker: each worker has its own breaker; configure it with the breaker block")
	}
	if h.MaxRequests < 0 {
		return fmt.Errorf("max_requests must not be negative, got %d", h.MaxRequests)
	}
	if h.ErrorHistoryLimit < 0 {
		return fmt.Errorf("error_history_limit must not be negative, got %d", h.ErrorHistoryLimit)
	}
	if h.Breaker != nil {
		if err := h.Breaker.validate(); err != nil {
			return err
		}
	}
	if h.Retry != nil {
		if err := h.Retry.validate(); err != nil {
			return err
		}
	}
	if h.Health != nil {
		if err := h.Health.validate(); err != nil {
			return err
		}
	}
	if h.Isolation != nil {
		if err := h.Isolation.validate(); err != nil {
			return err
		}
	}
	if h.Fallback != nil {
		if err := h.Fallback.validate(); err != nil {
			return err
		}
	}
	for i, cr := range h.Classify {
		if _, err := recovery.ParseRule(cr.Status, cr.Kind, cr.Action); err != nil {
			return fmt.Errorf("classify[%d]: %w", i, err)
		}
	}
	return nil
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
