package bifrost

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/bifrost-proxy/bifrost/pool"
	"github.com/bifrost-proxy/bifrost/recovery"
)

// Dynamic upstreams: each address that the `dynamic_upstreams` source
// returns is a worker like a static one (own reverse_proxy handler,
// breaker, health, probes, metrics), created when it is first seen, kept
// while the source returns it, and retired DynamicRetireAfter after it
// disappeared, once its requests in flight have finished. Its state is
// keyed by its address in `states`, as a static worker's, so an address
// that comes back before it retired keeps its breaker, isolation and
// ejection count, and a reload keeps it too.
//
// The source is asked by one background loop per handler, never on the
// request path: Caddy's sources allocate a new slice on every call, and a
// request must not wait on a lookup. Requests read the workers from an
// immutable workerSet that the loop swaps whole when they change.

const (
	// dynamicLookupTimeout bounds one call to the source.
	dynamicLookupTimeout = 5 * time.Second
	// dynamicFirstWait bounds how long a request waits for the first
	// lookup when the pool has no worker yet.
	dynamicFirstWait = 5 * time.Second
)

// Event names of the dynamic source.
const (
	eventDynamicFailed    = "dynamic_upstreams_failed"
	eventDynamicRecovered = "dynamic_upstreams_recovered"
)

// dynamicRefreshInterval is how often the source is asked (a variable
// for tests). Caddy's sources cache their lookups for their own `refresh`
// time, so this only bounds how late a change they learnt is applied.
var dynamicRefreshInterval = time.Second

var (
	errNoDynamicUpstreams = errors.New("the dynamic upstream source returned no upstreams")
	errWorkerRetired      = errors.New("worker retired")
)

// workerSet is the set of workers that requests choose from: the static
// workers, then the dynamic ones in the order the source returned them.
// It is never changed once published: a request takes one snapshot
// (Handler.currentSet) and uses it throughout.
type workerSet struct {
	workers    []*worker
	upstreams  reverseproxy.UpstreamPool // what the selection policy sees (a static upstream listed twice is there twice)
	byUpstream map[*reverseproxy.Upstream]*worker
	// direct is set when every worker's tracker is the default policy's
	// own, so that its choice can be made over the workers (chooseIn)
	direct bool
	// pending is set while the pool has no worker because the first
	// lookup of its dynamic source has not finished
	pending bool
	// primary is the view of the set without its backup workers, which
	// requests choose from while the primaries can serve (see
	// chooseSet); nil when the set has no backup
	primary *workerSet
}

// publishSet builds the worker set from the static workers and the
// dynamic ones, swaps it in, and tells the isolation monitor. It is called
// by Provision, then only by the dynamic refresh loop.
func (h *Handler) publishSet() {
	var dyn []*worker
	pending := false
	if h.dyn != nil {
		dyn = h.dyn.order
		pending = !h.dyn.isReady.Load()
	}
	n := len(h.workers) + len(dyn)
	s := &workerSet{
		workers:    make([]*worker, 0, n),
		upstreams:  make(reverseproxy.UpstreamPool, 0, len(h.upstreams)+len(dyn)),
		byUpstream: make(map[*reverseproxy.Upstream]*worker, n),
	}
	s.workers = append(append(s.workers, h.workers...), dyn...)
	s.upstreams = append(s.upstreams, h.upstreams...)
	for _, w := range dyn {
		s.upstreams = append(s.upstreams, w.up)
	}
	for _, w := range s.workers {
		s.byUpstream[w.up] = w
	}
	s.direct = h.p2c != nil && !slices.ContainsFunc(s.workers, func(w *worker) bool {
		return w.tracker != h.p2c.Trackers().Get(w.up.Dial)
	})
	s.pending = pending && n == 0
	s.primary = primaryView(s)
	h.set.Store(s)
	h.pool.SetWorkers(h, s.shared())
}

// shared returns the shared states of the set's workers.
func (s *workerSet) shared() []*pool.Worker {
	out := make([]*pool.Worker, len(s.workers))
	for i, w := range s.workers {
		out[i] = w.Worker
	}
	return out
}

// currentSet returns the worker set a request uses. Only while a dynamic
// pool has no worker because its first lookup is still running does it
// wait for that lookup, bounded by the request and dynamicFirstWait.
func (h *Handler) currentSet(ctx context.Context) *workerSet {
	s := h.set.Load()
	if !s.pending {
		return s
	}
	t := time.NewTimer(dynamicFirstWait)
	defer t.Stop()
	select {
	case <-h.dyn.ready:
	case <-ctx.Done():
	case <-t.C:
	}
	return h.set.Load()
}

// dynamicLife is what a dynamic worker has beyond a static one.
type dynamicLife struct {
	// ctx is its own context: its proxies are provisioned in it, and
	// cancel cleans up the modules they loaded (their transports)
	ctx    caddy.Context
	cancel context.CancelFunc
	// stopProbes stops its active probes and waits for them; nil without
	stopProbes func()

	// inFlight counts its tries, closing is set when it retires: a try
	// that sees closing backs out, and the worker is cleaned up once
	// inFlight is zero (see enter)
	inFlight atomic.Int64
	closing  atomic.Bool

	gone      time.Time // when the source stopped returning it; zero while it does (refresh loop only)
	finalized bool      // guarded by worker.mu: its proxies were cleaned up
}

// enter books a try of the worker, unless it is a dynamic worker that is
// retiring; leave ends it. For a static worker both are a nil check.
func (w *worker) enter() bool {
	d := w.dyn
	if d == nil {
		return true
	}
	d.inFlight.Add(1)
	if d.closing.Load() {
		d.inFlight.Add(-1)
		return false
	}
	return true
}

// leave ends a try booked by enter.
func (w *worker) leave() {
	if w.dyn != nil {
		w.dyn.inFlight.Add(-1)
	}
}

// dynamicPool keeps a handler's dynamic workers. Apart from ready and
// isReady, its fields belong to Provision, then to the refresh loop, then
// to Cleanup once the loop has ended.
type dynamicPool struct {
	h      *Handler
	source reverseproxy.UpstreamSource
	retire time.Duration
	max    int
	probes *probeConfig // nil without active health checks

	ready   chan struct{} // closed once the first lookup finished
	isReady atomic.Bool

	known    map[string]*worker // by address: in use, or gone and not retired yet
	order    []*worker          // in use, in the source's order
	draining []*worker          // retired, waiting for their requests to end
	failing  bool
	failures int
	capped   bool
}

// provisionDynamic loads the dynamic upstream source, if any, and starts
// with the dynamic workers the pool had in the previous config, so that a
// reload keeps them (and their state) without waiting for a lookup. It
// does no lookup: `caddy validate` provisions, offline.
func (h *Handler) provisionDynamic(ctx caddy.Context, bgCtx context.Context) error {
	if h.DynamicUpstreamsRaw == nil && h.DynamicUpstreams == nil {
		return nil
	}
	if h.DynamicUpstreamsRaw != nil {
		mod, err := ctx.LoadModule(h, "DynamicUpstreamsRaw")
		if err != nil {
			return fmt.Errorf("loading dynamic_upstreams source: %w", err)
		}
		h.DynamicUpstreams = mod.(reverseproxy.UpstreamSource)
	}
	d := &dynamicPool{
		h:      h,
		source: h.DynamicUpstreams,
		retire: h.cfg.dynamicRetire,
		max:    h.cfg.dynamicMax,
		ready:  make(chan struct{}),
		known:  make(map[string]*worker),
		probes: h.cfg.probe,
	}
	h.dyn = d
	last := slices.Clone(h.pool.Dynamic())
	for _, dial := range last {
		if len(d.known) >= d.max {
			break
		}
		if w := d.add(bgCtx, dial); w != nil {
			d.order = append(d.order, w)
		}
	}
	return nil
}

// run asks the source for its upstreams every dynamicRefreshInterval
// until ctx is done. It starts once this handler's config is the running
// one: creating a worker loads modules through the config's context, which
// Caddy may still be using to provision the rest of the config.
func (d *dynamicPool) run(ctx context.Context) {
	wait := time.NewTicker(20 * time.Millisecond)
	for !configActive(d.h.ctx) {
		select {
		case <-ctx.Done():
			wait.Stop()
			return
		case <-wait.C:
		}
	}
	wait.Stop()
	t := time.NewTicker(dynamicRefreshInterval)
	defer t.Stop()
	for {
		d.refresh(ctx, time.Now())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// refresh asks the source once and applies its answer: new addresses
// become workers, missing ones are marked gone, and workers gone for
// longer than the retirement time retire. A failed lookup (or an empty
// answer) keeps the workers as they are and is reported.
func (d *dynamicPool) refresh(ctx context.Context, now time.Time) {
	ups, err := d.lookup(ctx)
	if ctx.Err() != nil {
		return // the config is going away
	}
	if err == nil && len(ups) == 0 {
		err = errNoDynamicUpstreams
	}
	changed := false
	if err != nil {
		d.failed(err)
	} else {
		d.recovered()
		changed = d.apply(ctx, ups, now)
	}
	d.sweep(now)
	first := !d.isReady.Load()
	if first {
		d.isReady.Store(true)
	}
	if changed || first {
		d.h.publishSet()
		dials := make([]string, len(d.order))
		for i, w := range d.order {
			dials[i] = w.Upstream
		}
		d.h.pool.SetDynamic(dials)
	}
	if first {
		close(d.ready)
	}
}

// lookup calls the source with a request of its own: global placeholders
// ({env.*}) in the source's fields are replaced, request placeholders are
// empty (the source is not asked per request).
func (d *dynamicPool) lookup(ctx context.Context) (ups []*reverseproxy.Upstream, err error) {
	ctx, cancel := context.WithTimeout(ctx, dynamicLookupTimeout)
	defer cancel()
	ctx = context.WithValue(ctx, caddy.ReplacerCtxKey, caddy.NewReplacer())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "/", nil)
	if err != nil {
		return nil, err
	}
	defer func() {
		if v := recover(); v != nil {
			ups, err = nil, fmt.Errorf("dynamic upstream source panicked: %v", v)
		}
	}()
	return d.source.GetUpstreams(req)
}

// apply brings the workers in line with a successful answer and reports
// whether the workers in use changed.
func (d *dynamicPool) apply(ctx context.Context, ups []*reverseproxy.Upstream, now time.Time) bool {
	dials := make([]string, 0, len(ups))
	seen := make(map[string]struct{}, len(ups))
	for _, up := range ups {
		if up == nil || up.Dial == "" {
			continue
		}
		if _, dup := seen[up.Dial]; !dup {
			seen[up.Dial] = struct{}{}
			dials = append(dials, up.Dial)
		}
	}
	// first what went away, so that room can be made for what is new
	for dial, w := range d.known {
		if _, ok := seen[dial]; !ok && w.dyn.gone.IsZero() {
			w.dyn.gone = now
			d.h.logger.Info("dynamic worker gone from its source; retiring it unless it comes back",
				zap.String("pool", d.h.poolName), zap.String("worker", w.ID), zap.Duration("retire_after", d.retire))
		}
	}
	order := make([]*worker, 0, len(dials))
	left := 0
	for _, dial := range dials {
		w := d.known[dial]
		if w == nil {
			if len(d.known) >= d.max && !d.evictGone(seen) {
				left++
				continue
			}
			if w = d.add(ctx, dial); w == nil {
				continue
			}
		} else if !w.dyn.gone.IsZero() {
			w.dyn.gone = time.Time{}
			d.h.logger.Info("dynamic worker back", zap.String("pool", d.h.poolName), zap.String("worker", w.ID))
		}
		order = append(order, w)
	}
	if left > 0 && !d.capped {
		d.h.logger.Warn("dynamic_max_workers reached: addresses left out",
			zap.String("pool", d.h.poolName), zap.Int("max", d.max), zap.Int("left_out", left))
	}
	d.capped = left > 0
	changed := !slices.Equal(order, d.order)
	d.order = order
	return changed
}

// evictGone makes room for a new address by retiring, at once, the
// worker that has been gone longest (none that the current answer
// returns); it reports whether there was one.
func (d *dynamicPool) evictGone(seen map[string]struct{}) bool {
	var oldest *worker
	for dial, w := range d.known {
		if _, ok := seen[dial]; ok || w.dyn.gone.IsZero() {
			continue
		}
		if oldest == nil || w.dyn.gone.Before(oldest.dyn.gone) {
			oldest = w
		}
	}
	if oldest == nil {
		return false
	}
	d.retireWorker(oldest)
	return true
}

// sweep retires the workers gone for the retirement time, and cleans up
// the retired ones whose requests have all ended.
func (d *dynamicPool) sweep(now time.Time) {
	for _, w := range d.known {
		if !w.dyn.gone.IsZero() && now.Sub(w.dyn.gone) >= d.retire {
			d.retireWorker(w)
		}
	}
	kept := d.draining[:0]
	for _, w := range d.draining {
		if !d.finish(w) {
			kept = append(kept, w)
		}
	}
	clear(d.draining[len(kept):])
	d.draining = kept
}

// finish cleans up a retired worker if none of its tries is left, and
// reports whether it did.
func (d *dynamicPool) finish(w *worker) bool {
	if w.dyn.inFlight.Load() > 0 {
		return false
	}
	if err := d.finalize(w); err != nil {
		d.h.logger.Error("cleaning up a retired worker", zap.String("worker", w.ID), zap.Error(err))
	}
	return true
}

// retireWorker takes a worker out for good: it takes no new try, and is
// cleaned up at once if it has none in flight, else once they have ended
// (see sweep). It is not in use (gone).
func (d *dynamicPool) retireWorker(w *worker) {
	delete(d.known, w.Upstream)
	w.dyn.closing.Store(true)
	d.h.logger.Info("dynamic worker retired", zap.String("pool", d.h.poolName), zap.String("worker", w.ID))
	if !d.finish(w) {
		d.draining = append(d.draining, w)
	}
}

// add creates the worker of a new address, or returns nil (logged and
// recorded) if it could not be provisioned.
func (d *dynamicPool) add(ctx context.Context, dial string) *worker {
	h := d.h
	ws, err := h.acquireWorkerState(dial, h.cfg.breaker)
	if err != nil {
		h.logger.Error("creating dynamic worker", zap.String("pool", h.poolName), zap.String("upstream", dial), zap.Error(err))
		return nil
	}
	// Its own context: the modules its proxy loads (its transport) are
	// cleaned up, and forgotten, when it retires, instead of piling up
	// in the config's context as addresses come and go.
	pctx, cancel := caddy.NewContext(h.ctx)
	w := &worker{Worker: ws, ps: h.pool, tracker: ws.Tracker(), dyn: &dynamicLife{ctx: pctx, cancel: cancel}, connsMax: connsLimit(h.TransportRaw)}
	rp, err := newWorkerProxy(h.proxyCfg, &reverseproxy.Upstream{Dial: dial}, w)
	if err == nil {
		w.proxy.Store(rp)
		provisionMu.Lock()
		err = provisionDynamicProxy(h.ctx, pctx, rp)
		provisionMu.Unlock()
		if err != nil {
			_ = rp.Cleanup()
		}
	}
	if err != nil {
		h.recordCritical(ws, recovery.KindWorkerCreationFailed, fmt.Errorf("provisioning dynamic worker: %w", err))
		cancel()
		_, _ = h.pool.ReleaseWorker(ws)
		return nil
	}
	w.provisioned = true
	w.up = rp.Upstreams[0]
	h.shareTracker(w)
	h.metrics.bind(w)
	if d.probes != nil {
		d.startProbes(ctx, w)
	}
	d.known[dial] = w
	h.logger.Info("dynamic worker added", zap.String("pool", h.poolName), zap.String("worker", w.ID))
	return w
}

// provisionProxy provisions a new proxy of wk (a restart): in the
// handler's context, or for a dynamic worker as provisionDynamicProxy
// does, so that its modules go when the worker retires.
func (h *Handler) provisionProxy(wk *worker, rp *reverseproxy.Handler) error {
	if wk.dyn != nil {
		return provisionDynamicProxy(h.ctx, wk.dyn.ctx, rp)
	}
	return rp.Provision(h.ctx)
}

// provisionDynamicProxy provisions the proxy of a dynamic worker as a
// static worker's is provisioned, in the handler's context cfg (its
// logger, named after the handler, and Caddy's metrics registry, where
// reverse_proxy counts its upstreams), except for two things that follow
// the worker's own context life: the transport is loaded into life,
// whose cancellation cleans it up when the worker retires, and the proxy's
// background work (reverse_proxy's upstream gauge updater) ends with
// life. (Provisioned in life alone, the proxy logged without the
// handler's name and counted into life's own registry, which no one
// scrapes.) The handlers of handle_response routes, if any, are loaded
// into cfg like a static worker's and go with the config.
func provisionDynamicProxy(cfg, life caddy.Context, rp *reverseproxy.Handler) error {
	if rp.TransportRaw != nil {
		mod, err := life.LoadModule(rp, "TransportRaw")
		if err != nil {
			return fmt.Errorf("loading transport: %v", err)
		}
		rp.Transport = mod.(http.RoundTripper)
		// the transport's default buffer sizes, as reverse_proxy applies
		// them when it loads the transport itself
		if bt, ok := rp.Transport.(reverseproxy.BufferedTransport); ok {
			req, resp := bt.DefaultBufferSizes()
			if rp.RequestBuffers == 0 {
				rp.RequestBuffers = req
			}
			if rp.ResponseBuffers == 0 {
				rp.ResponseBuffers = resp
			}
		}
	}
	ctx := cfg
	ctx.Context = life.Context
	return rp.Provision(ctx)
}

// startProbes runs the active probes of one dynamic worker until it
// retires (or ctx is done).
func (d *dynamicPool) startProbes(ctx context.Context, w *worker) {
	c, err := d.probes.checker(d.h, []*worker{w})
	if err != nil {
		d.h.logger.Error("active health checks disabled for a dynamic worker", zap.String("worker", w.ID), zap.Error(err))
		return
	}
	pctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	w.Health.AddProber()
	d.h.goSafe(pctx, "dynamic_probes", func(ctx context.Context) {
		defer close(done)
		defer w.Health.RemoveProber()
		c.Run(ctx)
	})
	w.dyn.stopProbes = func() {
		cancel()
		<-done
	}
}

// finalize cleans up a retired worker: its probes, its proxies and their
// transports, its reference to the shared state, its latency tracker and,
// once no config has its state, its metric series.
func (d *dynamicPool) finalize(w *worker) error {
	h := d.h
	if w.dyn.stopProbes != nil {
		w.dyn.stopProbes()
	}
	w.mu.Lock()
	w.dyn.finalized = true
	proxies := append(w.retired, w.proxy.Load())
	w.retired = nil
	w.mu.Unlock()
	var errs []error
	for _, rp := range proxies {
		if rp != nil {
			errs = append(errs, rp.Cleanup())
		}
	}
	w.dyn.cancel()
	if _, err := h.pool.ReleaseWorker(w.Worker); err != nil {
		errs = append(errs, err)
	}
	if h.p2c != nil && d.known[w.Upstream] == nil {
		h.p2c.Trackers().Remove(w.Upstream)
	}
	h.metrics.forget([]*worker{w})
	return errors.Join(errs...)
}

// close cleans up every dynamic worker, in use or not, when the handler
// is cleaned up; the refresh loop has ended.
func (d *dynamicPool) close() error {
	var errs []error
	for _, w := range d.known {
		w.dyn.closing.Store(true)
		d.draining = append(d.draining, w)
	}
	clear(d.known)
	for _, w := range d.draining {
		errs = append(errs, d.finalize(w))
	}
	d.draining, d.order = nil, nil
	return errors.Join(errs...)
}

// failed reports a failed lookup: once when the source starts failing
// (error log, event, admin API and status page), then every minute
// while it goes on. The workers stay as they were.
func (d *dynamicPool) failed(err error) {
	h := d.h
	d.failures++
	msg := recovery.Truncate(err.Error(), 300)
	h.pool.DynamicErr.Store(&msg)
	if d.failing {
		if d.failures%60 == 0 {
			h.logger.Warn("dynamic upstreams lookups still failing; keeping the last workers",
				zap.String("pool", h.poolName), zap.Int("failures", d.failures), zap.Int("workers", len(d.order)), zap.Error(err))
		}
		return
	}
	d.failing = true
	h.logger.Error("dynamic upstreams lookup failed; keeping the last workers",
		zap.String("pool", h.poolName), zap.Int("workers", len(d.order)), zap.Error(err))
	h.emit(eventDynamicFailed, map[string]any{"pool": h.poolName, "error": msg, "workers": len(d.order)})
}

// recovered reports a successful lookup after failed ones.
func (d *dynamicPool) recovered() {
	if !d.failing {
		return
	}
	h := d.h
	h.logger.Info("dynamic upstreams lookup recovered", zap.String("pool", h.poolName), zap.Int("failed_lookups", d.failures))
	h.emit(eventDynamicRecovered, map[string]any{"pool": h.poolName, "failed_lookups": d.failures})
	d.failing, d.failures = false, 0
	h.pool.DynamicErr.Store(nil)
}
