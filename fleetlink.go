package bifrost

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/bifrost-proxy/bifrost/fleet"
	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/pool"
)

// This file links the bifrost app to the fleet: it publishes this
// instance's verdicts as they change, merges the other instances' into
// decisions (fleet.Merge) and hands those to the pools' loops
// (pool.Offer). It runs on the app's loop and the fleet's goroutine,
// never on a request's path.

// FleetConfig configures the sharing of workers' verdicts with other
// Caddy instances through Redis or Valkey.
type FleetConfig struct {
	// URL is the store's address: redis:// or rediss://, with an ACL
	// user and password and a database number if needed; with
	// ?master_name=NAME (and more sentinels as &addr=host:port) it names
	// Sentinels, with several &addr=host:port or ?cluster=true the seed
	// nodes of a Cluster. Its passwords are never logged nor shown.
	URL string `json:"url"`
	// Secret signs every entry (HMAC-SHA256); required. Entries without
	// a good signature are ignored.
	Secret string `json:"secret,omitempty"`
	// Instance names this instance in the fleet; default: Caddy's
	// instance id.
	Instance string `json:"instance,omitempty"`
	// Quorum is how many distinct instances (this one included) must
	// hold an automatic isolation or a throttle before another
	// instance's applies here; default 1. Operators' actions apply at
	// once.
	Quorum int `json:"quorum,omitempty"`
}

// Caddy event names of the fleet.
const (
	EventFleetConnected    = "fleet_connected"
	EventFleetDisconnected = "fleet_disconnected"
	EventFleetAdopted      = "fleet_verdict_adopted"
)

// sharedFleets holds one fleet connection per process and configuration,
// shared by every config (a reload keeps it).
var sharedFleets = caddy.NewUsagePool()

// sharedFleet is a fleet connection in sharedFleets.
type sharedFleet struct {
	f *fleet.Fleet
	// reconciled is set once the isolations taken from the fleet before
	// a restart (read from storage) were checked against the fleet
	reconciled atomic.Bool

	mu       sync.Mutex
	restores map[string]time.Time // worker|action -> the remote restore or reset carried out, once per process
}

// firstRestore reports whether the remote restore (or reset: k ends in
// "|reset") of worker k issued at issued is new to this process, and
// records it.
func (s *sharedFleet) firstRestore(k string, issued time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.restores[k].Equal(issued) {
		return false
	}
	s.restores[k] = issued
	return true
}

// Destruct closes the connection.
func (s *sharedFleet) Destruct() error { return s.f.Close() }

// currentLink is the fleet link of the newest running app, which the
// admin API shows and the fleet's callbacks report through.
var currentLink atomic.Pointer[fleetLink]

// fleetLink is the app's side of the fleet.
type fleetLink struct {
	f        *fleet.Fleet
	shared   *sharedFleet
	key      string
	instance string
	quorum   int
	logger   *zap.Logger
	ctx      caddy.Context
	events   *caddyevents.App

	removeObserver func()

	mu        sync.Mutex
	decisions []fleet.Decision
	throttles map[string]time.Time // worker -> a throttle taken from the fleet
	announced map[string]string    // worker -> the adopted isolation announced
}

// newFleetLink checks the fleet's configuration and takes the process's
// connection for it.
func newFleetLink(ctx caddy.Context, fc *FleetConfig, logger *zap.Logger) (*fleetLink, error) {
	repl := caddy.NewReplacer()
	secret := repl.ReplaceKnown(fc.Secret, "")
	if strings.TrimSpace(secret) == "" {
		return nil, errors.New("a fleet needs a secret (secret <value>, e.g. {env.BIFROST_FLEET_SECRET}): every entry is signed with it, and refused otherwise")
	}
	rawURL := repl.ReplaceKnown(fc.URL, "")
	if rawURL == "" {
		return nil, errors.New("a fleet needs the store's URL (redis://host:port/db)")
	}
	instance := repl.ReplaceKnown(fc.Instance, "")
	if instance == "" {
		id, err := caddy.InstanceID()
		if err != nil {
			return nil, fmt.Errorf("no instance name given and Caddy's instance id unavailable: %v", err)
		}
		instance = id.String()
	}
	if fc.Quorum < 0 {
		return nil, fmt.Errorf("quorum must be at least 1, got %d", fc.Quorum)
	}
	sum := sha256.Sum256([]byte(rawURL + "\x00" + secret + "\x00" + instance))
	key := "fleet|" + hex.EncodeToString(sum[:])
	l := &fleetLink{
		key: key, instance: instance, quorum: max(fc.Quorum, 1), logger: logger, ctx: ctx,
		throttles: map[string]time.Time{}, announced: map[string]string{},
	}
	if ev, err := ctx.App("events"); err == nil {
		l.events, _ = ev.(*caddyevents.App)
	}
	v, _, err := sharedFleets.LoadOrNew(key, func() (caddy.Destructor, error) {
		f, err := fleet.New(fleet.Config{
			URL: rawURL, Secret: []byte(secret), Instance: instance,
			Logger:       logger.Named("fleet"),
			OnConnection: fleetConnection,
			OnEntry:      fleetEntry,
			OnRejected:   fleetRejected,
		})
		if err != nil {
			return nil, err
		}
		return &sharedFleet{f: f, restores: map[string]time.Time{}}, nil // started by the app (not by caddy validate)
	})
	if err != nil {
		return nil, err
	}
	l.shared = v.(*sharedFleet)
	l.f = l.shared.f
	initFleetMetrics(ctx, logger)
	return l, nil
}

// start makes the link the current one and observes operators' actions.
func (l *fleetLink) start() {
	currentLink.Store(l)
	l.removeObserver = pool.ObserveActions(l.operatorAction)
	l.f.Start()
}

// close lets go of the connection (closed with its last config).
func (l *fleetLink) close() error {
	if l.removeObserver != nil {
		l.removeObserver()
	}
	currentLink.CompareAndSwap(l, nil)
	_, err := sharedFleets.Delete(l.key)
	return err
}

// updated is signalled when the other instances' entries changed.
func (l *fleetLink) updated() <-chan struct{} { return l.f.Updated() }

// operatorAction publishes an operator's restore or reset at once, for
// every instance (an isolation is published by the next exchange).
func (l *fleetLink) operatorAction(w *pool.Worker, action string, _ time.Duration, _ string) {
	switch action {
	case "restore":
		l.f.Publish(fleet.Entry{Pool: w.Pool, Upstream: w.Upstream, Kind: fleet.KindRestore, Reason: "restored by an operator on " + l.instance})
	case "reset":
		l.f.Publish(fleet.Entry{Pool: w.Pool, Upstream: w.Upstream, Kind: fleet.KindReset, Reason: "reset by an operator on " + l.instance})
	}
}

// exchange publishes this instance's verdicts that changed, and hands
// the fleet's decisions to the pools. It runs on the app's loop.
func (l *fleetLink) exchange(now time.Time) {
	pools := pool.All()
	l.publishOwn(pools, now)
	ds := fleet.Merge(l.f.Entries(), l.instance, l.quorum, now)
	l.mu.Lock()
	l.decisions = ds
	l.mu.Unlock()
	l.offer(pools, ds, now)
	if l.f.Synced() && l.shared.reconciled.CompareAndSwap(false, true) {
		l.reconcile(pools, ds)
	}
	if fleetMetrics.verdicts != nil {
		fleetMetrics.verdicts.Set(float64(len(ds)))
	}
}

// workerKey names a worker across the fleet.
func workerKey(poolName, upstream string) string { return poolName + "|" + upstream }

// publishOwn publishes the verdicts of this instance that changed since
// the last exchange: its own isolations (not those from the fleet),
// else its own throttles, and clears those that ended.
func (l *fleetLink) publishOwn(pools []*pool.Pool, now time.Time) {
	l.mu.Lock()
	adoptedThrottles := l.throttles
	l.mu.Unlock()
	seen := map[string]bool{}
	for _, p := range pools {
		for _, v := range p.Verdicts(now) {
			k := workerKey(p.Name, v.Upstream)
			e := fleet.Entry{Pool: p.Name, Upstream: v.Upstream}
			switch {
			case v.Isolation != nil && pool.FleetAuthor(v.Isolation.Reason) == "" && !v.Isolation.RecoveryFailed:
				iso := v.Isolation
				e.Kind, e.Reason, e.Until, e.Ejections, e.Operator = fleet.KindIsolated, iso.Reason, iso.Until, iso.Ejections, iso.Operator
			case !v.ThrottledUntil.IsZero() && !v.ThrottledUntil.Equal(adoptedThrottles[k]):
				e.Kind, e.Until = fleet.KindThrottled, v.ThrottledUntil
			default:
				continue
			}
			e.Reason = truncateText(e.Reason)
			seen[k] = true
			if old, ok := l.f.Own(p.Name, v.Upstream); ok && sameVerdict(old, e) {
				continue
			}
			l.f.Publish(e)
		}
	}
	// the process's entries (an earlier config's too) that ended; an
	// operator's restore or reset stays for the others until its end
	for _, old := range l.f.OwnEntries() {
		if old.Kind == fleet.KindRestore || old.Kind == fleet.KindReset || seen[workerKey(old.Pool, old.Upstream)] {
			continue
		}
		l.f.Publish(fleet.Entry{Pool: old.Pool, Upstream: old.Upstream, Kind: fleet.KindClear})
	}
}

// truncateText bounds a reason to what the fleet accepts.
func truncateText(s string) string {
	if len(s) <= fleet.MaxText {
		return s
	}
	return s[:fleet.MaxText]
}

// sameVerdict reports whether two entries of this instance say the same.
func sameVerdict(a, b fleet.Entry) bool {
	return a.Kind == b.Kind && a.Reason == b.Reason && a.Until.Equal(b.Until) &&
		a.Ejections == b.Ejections && a.Operator == b.Operator
}

// offer hands the fleet's decisions to the pools' loops: an isolation to
// a worker that is not isolated, a throttle that extends the worker's,
// and each remote restore once.
func (l *fleetLink) offer(pools []*pool.Pool, ds []fleet.Decision, now time.Time) {
	byName := make(map[string]*pool.Pool, len(pools))
	for _, p := range pools {
		byName[p.Name] = p
	}
	offers := map[*pool.Pool][]pool.Verdict{}
	throttles := map[string]time.Time{}
	for _, d := range ds {
		p := byName[d.Pool]
		if p == nil {
			continue
		}
		k := workerKey(d.Pool, d.Upstream)
		v := pool.Verdict{Upstream: d.Upstream, Issued: now}
		if r := d.Restore; r != nil && l.shared.firstRestore(k, r.Issued) {
			l.auditRemote("restore", r)
			offers[p] = append(offers[p], pool.Verdict{Upstream: d.Upstream, Restore: true, Issued: r.Issued})
		}
		if r := d.Reset; r != nil && l.shared.firstRestore(k+"|"+fleet.KindReset, r.Issued) {
			l.auditRemote("reset", r)
			offers[p] = append(offers[p], pool.Verdict{Upstream: d.Upstream, Reset: true, Issued: r.Issued})
		}
		if iso := d.Isolation; iso != nil {
			v.Issued = iso.Issued
			v.Isolation = &health.Verdict{
				Until:     iso.Until,
				Reason:    pool.FleetReason(iso.Reason, iso.Author),
				Ejections: iso.Ejections,
				Operator:  iso.Operator,
			}
		}
		if t := d.Throttle; t != nil {
			v.ThrottledUntil = t.Until
			throttles[k] = t.Until
		}
		if v.Isolation != nil || !v.ThrottledUntil.IsZero() {
			offers[p] = append(offers[p], v)
		}
	}
	l.mu.Lock()
	l.throttles = throttles
	l.mu.Unlock()
	for p, vs := range offers {
		p.Offer(vs)
	}
	l.announce(pools)
}

// auditRemote logs an operator's action on another instance that this
// one carries out, with the instance that did it.
func (l *fleetLink) auditRemote(action string, e *fleet.Entry) {
	l.logger.Info("operator action from the fleet", zap.String("action", action),
		zap.String("pool", e.Pool), zap.String("upstream", e.Upstream),
		zap.String("by_instance", e.Author), zap.Time("issued", e.Issued))
}

// reconcile ends, once per process, the isolations taken from the fleet
// that the fleet no longer decides: those kept in storage across a
// restart while their authors withdrew them or an operator restored the
// worker elsewhere. It runs at the first exchange after the fleet read
// the whole store; from then on an adopted isolation lasts until its end.
func (l *fleetLink) reconcile(pools []*pool.Pool, ds []fleet.Decision) {
	decided := map[string]bool{}
	for _, d := range ds {
		if d.Isolation != nil {
			decided[workerKey(d.Pool, d.Upstream)] = true
		}
	}
	for _, p := range pools {
		var vs []pool.Verdict
		for _, w := range p.Workers() {
			iso, ok := w.Health.Verdict()
			if !ok || pool.FleetAuthor(iso.Reason) == "" || decided[workerKey(p.Name, w.Upstream)] {
				continue
			}
			l.logger.Info("ending an isolation kept from the fleet, which no longer holds it",
				zap.String("pool", p.Name), zap.String("worker", w.ID), zap.String("reason", iso.Reason))
			vs = append(vs, pool.Verdict{Upstream: w.Upstream, Restore: true})
		}
		p.Offer(vs)
	}
}

// announce logs, counts and emits each isolation taken from the fleet
// once it is in effect.
func (l *fleetLink) announce(pools []*pool.Pool) {
	for _, p := range pools {
		for _, w := range p.Workers() {
			k := workerKey(p.Name, w.Upstream)
			iso, ok := w.Health.Verdict()
			fromFleet := ok && pool.FleetAuthor(iso.Reason) != ""
			l.mu.Lock()
			prev := l.announced[k]
			if !fromFleet {
				delete(l.announced, k)
			} else {
				l.announced[k] = iso.Reason
			}
			l.mu.Unlock()
			if !fromFleet || prev == iso.Reason {
				continue
			}
			l.logger.Info("worker isolated by the fleet", zap.String("pool", p.Name), zap.String("worker", w.ID),
				zap.String("reason", iso.Reason), zap.Time("until", iso.Until))
			if l.events != nil {
				l.events.Emit(l.ctx, EventFleetAdopted, map[string]any{
					"pool": p.Name, "worker": w.ID, "upstream": w.Upstream, "reason": iso.Reason,
				})
			}
		}
	}
}

// FleetView is the answer of GET /bifrost/fleet.
type FleetView struct {
	// Enabled is false when no fleet is configured.
	Enabled   bool              `json:"enabled"`
	Instance  string            `json:"instance,omitempty"`
	Connected bool              `json:"connected"`
	Store     string            `json:"store,omitempty"`
	LastError string            `json:"last_error,omitempty"`
	Quorum    int               `json:"quorum,omitempty"`
	Peers     []FleetPeer       `json:"peers"`
	Verdicts  []FleetVerdict    `json:"verdicts"`
	Rejected  map[string]uint64 `json:"rejected"`
	Dropped   uint64            `json:"dropped"`
}

// FleetPeer is an instance seen in the fleet.
type FleetPeer struct {
	Instance      string    `json:"instance"`
	LastHeartbeat time.Time `json:"last_heartbeat"`
}

// FleetVerdict is one decision of the fleet for this instance.
type FleetVerdict struct {
	Pool     string    `json:"pool"`
	Upstream string    `json:"upstream"`
	Kind     string    `json:"kind"`
	Author   string    `json:"author"`
	AgreedBy []string  `json:"agreed_by"`
	Until    time.Time `json:"until,omitzero"`
}

// fleetView returns the current fleet's view.
func fleetView() FleetView {
	l := currentLink.Load()
	if l == nil {
		return FleetView{Peers: []FleetPeer{}, Verdicts: []FleetVerdict{}, Rejected: map[string]uint64{}}
	}
	st := l.f.Status()
	v := FleetView{
		Enabled: true, Instance: st.Instance, Connected: st.Connected, Store: st.Store, LastError: st.LastError,
		Quorum: l.quorum, Peers: []FleetPeer{}, Verdicts: []FleetVerdict{}, Rejected: st.Rejected, Dropped: st.Dropped,
	}
	for inst, at := range st.Peers {
		v.Peers = append(v.Peers, FleetPeer{Instance: inst, LastHeartbeat: at})
	}
	sortPeers(v.Peers)
	l.mu.Lock()
	ds := l.decisions
	l.mu.Unlock()
	for _, d := range ds {
		if d.Isolation != nil {
			kind := "isolated"
			if d.Isolation.Operator {
				kind = "operator_isolated"
			}
			v.Verdicts = append(v.Verdicts, FleetVerdict{Pool: d.Pool, Upstream: d.Upstream, Kind: kind,
				Author: d.Isolation.Author, AgreedBy: d.AgreedBy, Until: d.Isolation.Until})
		}
		if d.Throttle != nil {
			v.Verdicts = append(v.Verdicts, FleetVerdict{Pool: d.Pool, Upstream: d.Upstream, Kind: "throttled",
				Author: d.Throttle.Author, AgreedBy: []string{d.Throttle.Author}, Until: d.Throttle.Until})
		}
	}
	return v
}

// sortPeers sorts peers by instance.
func sortPeers(ps []FleetPeer) {
	for i := 1; i < len(ps); i++ {
		for j := i; j > 0 && ps[j].Instance < ps[j-1].Instance; j-- {
			ps[j], ps[j-1] = ps[j-1], ps[j]
		}
	}
}

// fleetMetrics are the fleet's Prometheus collectors, created once and
// registered into every config's registry.
var fleetMetrics struct {
	once      sync.Once
	connected prometheus.Gauge
	verdicts  prometheus.Gauge
	delay     prometheus.Histogram
	rejected  *prometheus.CounterVec
}

// initFleetMetrics creates the fleet's collectors once and registers
// them into ctx's registry.
func initFleetMetrics(ctx caddy.Context, logger *zap.Logger) {
	fleetMetrics.once.Do(func() {
		fleetMetrics.connected = prometheus.NewGauge(prometheus.GaugeOpts(metricOpts("fleet_connected", "1 while the fleet's store answers, else 0.")))
		fleetMetrics.verdicts = prometheus.NewGauge(prometheus.GaugeOpts(metricOpts("fleet_verdicts", "Verdicts of other instances that apply here now.")))
		o := metricOpts("fleet_propagation_seconds", "Time from another instance's verdict to its arrival here.")
		fleetMetrics.delay = prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: o.Namespace, Subsystem: o.Subsystem, Name: o.Name, Help: o.Help,
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		})
		fleetMetrics.rejected = prometheus.NewCounterVec(prometheus.CounterOpts(
			metricOpts("fleet_rejected_total", "Fleet entries ignored, by reason (malformed, unsigned, bad_signature, future, out_of_range)."),
		), []string{"reason"})
	})
	reg := ctx.GetMetricsRegistry()
	if reg == nil {
		return
	}
	for _, c := range []prometheus.Collector{fleetMetrics.connected, fleetMetrics.verdicts, fleetMetrics.delay, fleetMetrics.rejected} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				logger.Error("registering fleet metrics", zap.Error(err))
			}
		}
	}
}

// fleetConnection counts and emits a change of the fleet's connection.
func fleetConnection(up bool) {
	name, val := EventFleetDisconnected, 0.0
	if up {
		name, val = EventFleetConnected, 1
	}
	if fleetMetrics.connected != nil {
		fleetMetrics.connected.Set(val)
	}
	if l := currentLink.Load(); l != nil && l.events != nil {
		l.events.Emit(l.ctx, name, map[string]any{"instance": l.instance, "store": l.f.Store()})
	}
}

// fleetEntry records the propagation delay of an entry that arrived.
func fleetEntry(_ fleet.Entry, delay time.Duration) {
	if fleetMetrics.delay != nil {
		fleetMetrics.delay.Observe(max(delay, 0).Seconds())
	}
}

// fleetRejected counts a rejected entry.
func fleetRejected(reason string) {
	if fleetMetrics.rejected != nil {
		fleetMetrics.rejected.WithLabelValues(reason).Inc()
	}
}
