package bifrost

import (
	"errors"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/pool"
	"github.com/bifrost-proxy/bifrost/recovery"
)

// collectors are Bifrost's Prometheus collectors. They are created once
// and registered into the registry of every config load (Caddy makes a new
// one each time), so counts carry on across reloads. Every label comes from
// the configuration (pool, worker) or a fixed set of values (outcome, kind,
// severity, action, state, event, result): never from a request.
var collectors struct {
	once        sync.Once
	requests    *prometheus.CounterVec
	errors      *prometheus.CounterVec
	retries     *prometheus.CounterVec
	hedges      *prometheus.CounterVec
	degraded    *prometheus.CounterVec
	recoveries  *prometheus.CounterVec
	transitions *prometheus.CounterVec
	probes      *prometheus.CounterVec
	breaker     *prometheus.GaugeVec
	healthy     *prometheus.GaugeVec
	isolated    *prometheus.GaugeVec
	backup      *prometheus.GaugeVec
	latency     *prometheus.HistogramVec
}

func initCollectors() {
	collectors.requests = workerCounter("requests_total", "Tries sent to workers, by outcome (success, failure, canceled).", "outcome")
	collectors.errors = workerCounter("errors_total", "Classified worker failures, by kind and severity.", "kind", "severity")
	collectors.retries = workerCounter("retries_total", "Retries after a failed try on the worker.")
	collectors.hedges = workerCounter("hedges_total", "Hedged tries sent to the worker.")
	collectors.recoveries = workerCounter("recovery_actions_total", "Recovery actions carried out on workers.", "action")
	collectors.transitions = workerCounter("worker_transitions_total", "Isolation transitions of workers, by event name.", "event")
	collectors.probes = workerCounter("probes_total", "Active health probes, by result (pass, fail).", "result")
	collectors.breaker = workerGauge("breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.")
	collectors.healthy = workerGauge("worker_healthy", "1 if the worker can take requests now, else 0.")
	collectors.isolated = workerGauge("worker_isolated", "1 if the worker is isolated, else 0.")
	collectors.backup = workerGauge("worker_backup", "1 if the worker is a backup, which takes traffic only when the primaries cannot, else 0.")
	o := metricOpts("attempt_duration_seconds", "Duration of tries against workers, until the response was written or failed.")
	collectors.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: o.Namespace, Subsystem: o.Subsystem, Name: o.Name, Help: o.Help,
		Buckets: prometheus.DefBuckets,
	}, workerLabels())
	// the one series that is not a worker's
	collectors.degraded = prometheus.NewCounterVec(prometheus.CounterOpts(
		metricOpts("degraded_total", "Requests no worker could serve (fallback or 503)."),
	), []string{"pool"})
}

// metricOpts names the collector caddy_bifrost_<name>.
func metricOpts(name, help string) prometheus.Opts {
	return prometheus.Opts{Namespace: "caddy", Subsystem: "bifrost", Name: name, Help: help}
}

// workerLabels returns the labels of a worker's series: pool, worker, then
// more.
func workerLabels(more ...string) []string {
	return append([]string{"pool", "worker"}, more...)
}

// workerCounter makes a counter of workers' series.
func workerCounter(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts(metricOpts(name, help)), workerLabels(labels...))
}

// workerGauge makes a gauge of workers' series.
func workerGauge(name, help string) *prometheus.GaugeVec {
	return prometheus.NewGaugeVec(prometheus.GaugeOpts(metricOpts(name, help)), workerLabels())
}

// poolMetrics records one handler's metrics. Its methods are safe on a
// nil receiver.
type poolMetrics struct {
	pool string
}

// newPoolMetrics registers the collectors into the config's registry.
func newPoolMetrics(ctx caddy.Context, pool string, logger *zap.Logger) *poolMetrics {
	collectors.once.Do(initCollectors)
	reg := ctx.GetMetricsRegistry()
	if reg == nil {
		return &poolMetrics{pool: pool}
	}
	for _, c := range []prometheus.Collector{
		collectors.requests, collectors.errors, collectors.retries, collectors.hedges, collectors.degraded,
		collectors.recoveries, collectors.transitions, collectors.probes,
		collectors.breaker, collectors.healthy, collectors.isolated, collectors.backup, collectors.latency,
	} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				logger.Error("registering metrics", zap.Error(err))
			}
		}
	}
	return &poolMetrics{pool: pool}
}

// workerSeries are a worker's hot-path series, looked up once in
// Provision so that a request costs no label hashing.
type workerSeries struct {
	success, failure, canceled prometheus.Counter
	latency                    prometheus.Observer
}

// bind looks up the hot-path series of a worker.
func (m *poolMetrics) bind(wk *worker) {
	if m == nil || collectors.requests == nil {
		return
	}
	wk.series = &workerSeries{
		success:  collectors.requests.WithLabelValues(m.pool, wk.ID, "success"),
		failure:  collectors.requests.WithLabelValues(m.pool, wk.ID, "failure"),
		canceled: collectors.requests.WithLabelValues(m.pool, wk.ID, "canceled"),
		latency:  collectors.latency.WithLabelValues(m.pool, wk.ID),
	}
}

func (m *poolMetrics) request(wk *worker, cls recovery.Classification) {
	if m == nil || wk.series == nil {
		return
	}
	switch {
	case cls.Kind == recovery.KindCanceled:
		wk.series.canceled.Inc()
	case cls.Failure:
		wk.series.failure.Inc()
	default:
		wk.series.success.Inc()
	}
}

func (m *poolMetrics) retry(wk *worker) {
	if m == nil {
		return
	}
	collectors.retries.WithLabelValues(m.pool, wk.ID).Inc()
}

func (m *poolMetrics) hedge(wk *worker) {
	if m == nil {
		return
	}
	collectors.hedges.WithLabelValues(m.pool, wk.ID).Inc()
}

func (m *poolMetrics) degradedRequest() {
	if m == nil {
		return
	}
	collectors.degraded.WithLabelValues(m.pool).Inc()
}

func (m *poolMetrics) recovery(id string, a recovery.Action) {
	if m == nil {
		return
	}
	collectors.recoveries.WithLabelValues(m.pool, id, a.String()).Inc()
}

func (m *poolMetrics) transition(id, event string) {
	if m == nil {
		return
	}
	collectors.transitions.WithLabelValues(m.pool, id, event).Inc()
}

func (m *poolMetrics) probe(id string, pass bool) {
	if m == nil {
		return
	}
	result := "fail"
	if pass {
		result = "pass"
	}
	collectors.probes.WithLabelValues(m.pool, id, result).Inc()
}

func (m *poolMetrics) latency(wk *worker, d time.Duration) {
	if m == nil || wk.series == nil {
		return
	}
	wk.series.latency.Observe(d.Seconds())
}

func (m *poolMetrics) breakerState(id string, s breaker.State) {
	if m == nil {
		return
	}
	v := 0.0
	switch s {
	case breaker.StateHalfOpen:
		v = 1
	case breaker.StateOpen:
		v = 2
	}
	collectors.breaker.WithLabelValues(m.pool, id).Set(v)
}

// workerGauges refreshes a worker's state gauges.
func (m *poolMetrics) workerGauges(wk *worker) {
	if m == nil {
		return
	}
	m.breakerState(wk.ID, wk.Breaker.State())
	collectors.healthy.WithLabelValues(m.pool, wk.ID).Set(boolGauge(wk.available()))
	collectors.isolated.WithLabelValues(m.pool, wk.ID).Set(boolGauge(wk.Health.Isolated()))
	collectors.backup.WithLabelValues(m.pool, wk.ID).Set(boolGauge(wk.backup))
}

// forget deletes the series of workers that no config uses any more.
func (m *poolMetrics) forget(workers []*worker) {
	if m == nil || collectors.requests == nil {
		return
	}
	for _, wk := range workers {
		if pool.Held(wk.Worker) {
			continue // a newer config still has this worker
		}
		labels := prometheus.Labels{"pool": m.pool, "worker": wk.ID}
		for _, vec := range []interface {
			DeletePartialMatch(prometheus.Labels) int
		}{
			collectors.requests, collectors.errors, collectors.retries, collectors.hedges, collectors.recoveries,
			collectors.transitions, collectors.probes, collectors.breaker, collectors.healthy,
			collectors.isolated, collectors.backup, collectors.latency,
		} {
			vec.DeletePartialMatch(labels)
		}
	}
}

// countTransition counts one worker transition of a pool (its reporter's
// hook, see Handler.Reporter).
func countTransition(poolName, worker, event string) {
	(&poolMetrics{pool: poolName}).transition(worker, event)
}

// setBreakerState sets a worker's breaker state gauge (its pool's
// reporter's hook).
func setBreakerState(poolName, worker string, s breaker.State) {
	(&poolMetrics{pool: poolName}).breakerState(worker, s)
}

// countError counts one classified error of a pool (its reporter's hook).
func countError(poolName, worker string, k recovery.Kind, s recovery.Severity) {
	collectors.errors.WithLabelValues(poolName, worker, k.String(), s.String()).Inc()
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
