package bifrost

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"go.uber.org/zap"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/recovery"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI is the `admin.api.bifrost` module: Bifrost's endpoints on
// Caddy's admin API. Like every admin module it has no configuration; it
// reads the package-level worker and pool state, so it reports on every
// bifrost handler of the running config.
//
// Worker ids are URL-safe: the pool name and the upstream address joined
// by '_', with every character other than letters, digits, '.', '-' and
// '_' replaced by '-' (pool "api", upstream "10.0.0.5:8080" gives
// "api_10.0.0.5-8080").
//
//	GET  /bifrost/workers                 every worker
//	GET  /bifrost/workers/{id}            one worker
//	POST /bifrost/workers/{id}/isolate    take it out ([?duration=30s] or {"duration":"30s"})
//	POST /bifrost/workers/{id}/restore    bring it back now
//	POST /bifrost/workers/{id}/reset      close its breaker and clear its counts
//	GET  /bifrost/stats                   error statistics and worker counts
//	GET  /bifrost/errors                  recent errors, newest first (?limit=&worker=&pool=&severity=&kind=)
type adminAPI struct {
	ctx    caddy.Context
	events *caddyevents.App
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.bifrost",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Provision keeps what operator actions need to log and emit events.
func (a *adminAPI) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	a.logger = ctx.Logger()
	if app, err := ctx.App("events"); err == nil {
		a.events, _ = app.(*caddyevents.App)
	}
	return nil
}

// Routes returns the admin routes; the subtree is routed in handle so that
// every error, including 404 and 405, is a JSON APIError.
func (a *adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/bifrost/", Handler: caddy.AdminHandlerFunc(a.handle)}}
}

// maxAdminBody bounds the body of an operator request.
const maxAdminBody = 4 << 10

// handle routes one admin request.
func (a *adminAPI) handle(w http.ResponseWriter, r *http.Request) error {
	parts := strings.Split(strings.Trim(strings.TrimPrefix(r.URL.Path, "/bifrost/"), "/"), "/")
	switch {
	case len(parts) == 1 && parts[0] == "workers":
		if err := allow(r, http.MethodGet); err != nil {
			return err
		}
		return writeJSON(w, workerViews(""))
	case len(parts) == 2 && parts[0] == "workers":
		if err := allow(r, http.MethodGet); err != nil {
			return err
		}
		ws, err := lookupWorker(parts[1])
		if err != nil {
			return err
		}
		return writeJSON(w, viewOf(ws, time.Now()))
	case len(parts) == 3 && parts[0] == "workers":
		if err := allow(r, http.MethodPost); err != nil {
			return err
		}
		ws, err := lookupWorker(parts[1])
		if err != nil {
			return err
		}
		return a.act(w, r, ws, parts[2])
	case len(parts) == 1 && parts[0] == "stats":
		if err := allow(r, http.MethodGet); err != nil {
			return err
		}
		return writeJSON(w, collectStats())
	case len(parts) == 1 && parts[0] == "errors":
		if err := allow(r, http.MethodGet); err != nil {
			return err
		}
		f, err := parseErrorFilter(r)
		if err != nil {
			return err
		}
		return writeJSON(w, collectErrors(f))
	}
	return apiError(http.StatusNotFound, "no such bifrost endpoint: %s", r.URL.Path)
}

// act performs an operator action on a worker.
func (a *adminAPI) act(w http.ResponseWriter, r *http.Request, ws *workerState, action string) error {
	var (
		d      time.Duration
		reason string
	)
	if action == "isolate" {
		var err error
		if d, reason, err = parseIsolateRequest(r); err != nil {
			return err
		}
	}
	if err := operatorAction(a.ctx, a.events, a.logger, ws, action, d, reason); err != nil {
		return err
	}
	return writeJSON(w, viewOf(ws, time.Now()))
}

// operatorAction performs an operator action on a worker, for the admin
// API and the status page: "isolate" takes it out for d (until restored
// when d is 0) with the given reason, "restore" brings it back now, and
// "reset" closes its breaker and clears its counts. Its errors are
// caddy.APIError values.
func operatorAction(ctx caddy.Context, events *caddyevents.App, logger *zap.Logger, ws *workerState, action string, d time.Duration, reason string) error {
	ps := poolOf(ws.pool)
	if ps == nil {
		return apiError(http.StatusNotFound, "worker %s has no active pool", ws.id)
	}
	switch action {
	case "isolate":
		if ev, ok := ps.monitor.IsolateFor(ws.health, d, reason); ok {
			emitWorkerEvent(ctx, events, logger, ev)
		}
	case "restore":
		if ev, ok := ps.monitor.Restore(ws.health); ok {
			emitWorkerEvent(ctx, events, logger, ev)
		}
	case "reset":
		ws.breaker.Reset()
		ws.trips.Store(0)
	default:
		return apiError(http.StatusNotFound, "unknown worker action %q (want isolate, restore or reset)", action)
	}
	logger.Info("operator action", zap.String("action", action), zap.String("worker", ws.id))
	return nil
}

// maxIsolateDuration caps the duration of an operator's isolation, from
// the admin API or the status page: a slip of the keyboard (or a page
// someone else reached) must not take a worker out for years. Without a
// duration, an isolation lasts until the worker is restored, which is
// explicit and visible.
const maxIsolateDuration = 24 * time.Hour

// parseIsolateRequest reads the optional duration and reason of an
// isolate request, from the query or a JSON body.
func parseIsolateRequest(r *http.Request) (time.Duration, string, error) {
	var body struct {
		Duration string `json:"duration"`
		Reason   string `json:"reason"`
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, maxAdminBody+1))
	if err != nil {
		return 0, "", apiError(http.StatusBadRequest, "reading body: %v", err)
	}
	if len(data) > maxAdminBody {
		return 0, "", apiError(http.StatusRequestEntityTooLarge, "body larger than %d bytes", maxAdminBody)
	}
	if len(strings.TrimSpace(string(data))) > 0 {
		dec := json.NewDecoder(strings.NewReader(string(data)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil {
			return 0, "", apiError(http.StatusBadRequest, "body: %v", err)
		}
	}
	if q := r.URL.Query().Get("duration"); q != "" {
		body.Duration = q
	}
	var d time.Duration
	if body.Duration != "" {
		d, err = caddy.ParseDuration(body.Duration)
		if err != nil || d <= 0 {
			return 0, "", apiError(http.StatusBadRequest, "duration: %q is not a positive duration", body.Duration)
		}
		if d > maxIsolateDuration {
			return 0, "", apiError(http.StatusBadRequest, "duration: %q is longer than the limit of 24h for an operator isolation", body.Duration)
		}
	}
	reason := "isolated by an operator"
	if body.Reason != "" {
		reason = truncate(body.Reason, 200)
	}
	return d, reason, nil
}

// parseErrorFilter reads the query of GET /bifrost/errors.
func parseErrorFilter(r *http.Request) (recovery.Filter, error) {
	q := r.URL.Query()
	f := recovery.Filter{Limit: 100, Worker: q.Get("worker"), Pool: q.Get("pool")}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100000 {
			return f, apiError(http.StatusBadRequest, "limit: %q is not a number between 1 and 100000", v)
		}
		f.Limit = n
	}
	if v := q.Get("severity"); v != "" {
		s, err := recovery.ParseSeverity(v)
		if err != nil {
			return f, apiError(http.StatusBadRequest, "severity: %v", err)
		}
		f.Severity = s
	}
	if v := q.Get("kind"); v != "" {
		k, err := recovery.ParseKind(v)
		if err != nil {
			return f, apiError(http.StatusBadRequest, "kind: %v", err)
		}
		f.Kind = k
	}
	return f, nil
}

// workerView is a worker as the admin API and status page show it.
type workerView struct {
	health.Snapshot
	Breaker breakerView `json:"breaker"`
}

// breakerView is a breaker's state.
type breakerView struct {
	State    breaker.State  `json:"state"`
	Counts   breaker.Counts `json:"counts"`
	Trips    uint64         `json:"trips"`
	OpenedAt time.Time      `json:"opened_at,omitzero"`
	RetryAt  time.Time      `json:"retry_at,omitzero"`
}

func viewOf(ws *workerState, now time.Time) workerView {
	return workerView{
		Snapshot: ws.health.Snapshot(now),
		Breaker: breakerView{
			State:    ws.breaker.State(),
			Counts:   ws.breaker.Counts(),
			Trips:    ws.breaker.Trips(),
			OpenedAt: ws.breaker.OpenedAt(),
			RetryAt:  ws.breaker.RetryAt(),
		},
	}
}

// allWorkers returns every worker of the running configs, sorted by id.
func allWorkers() []*workerState {
	var out []*workerState
	states.Range(func(_, v any) bool {
		if ws, ok := v.(*workerState); ok {
			out = append(out, ws)
		}
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// allPools returns every pool of the running configs, sorted by name.
func allPools() []*poolState {
	var out []*poolState
	states.Range(func(_, v any) bool {
		if ps, ok := v.(*poolState); ok {
			out = append(out, ps)
		}
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

func poolOf(name string) *poolState {
	for _, ps := range allPools() {
		if ps.name == name {
			return ps
		}
	}
	return nil
}

func lookupWorker(id string) (*workerState, error) {
	for _, ws := range allWorkers() {
		if ws.id == id {
			return ws, nil
		}
	}
	return nil, apiError(http.StatusNotFound, "unknown worker %q", id)
}

// workerViews returns the views of every worker, or of one pool's.
func workerViews(pool string) []workerView {
	now := time.Now()
	out := []workerView{}
	for _, ws := range allWorkers() {
		if pool == "" || ws.pool == pool {
			out = append(out, viewOf(ws, now))
		}
	}
	return out
}

// statsView is the answer of GET /bifrost/stats: the seed's
// ErrorStatistics summed over pools, and per pool.
type statsView struct {
	recovery.Statistics
	HealthyWorkers  int                  `json:"healthy_workers"`
	IsolatedWorkers int                  `json:"isolated_workers"`
	TotalWorkers    int                  `json:"total_workers"`
	Pools           map[string]poolStats `json:"pools"`
}

// poolStats is one pool's share of statsView.
type poolStats struct {
	recovery.Statistics
	HealthyWorkers  int `json:"healthy_workers"`
	IsolatedWorkers int `json:"isolated_workers"`
	TotalWorkers    int `json:"total_workers"`
	// DynamicError is the error of the pool's dynamic upstream source
	// while its lookups fail (the last workers are kept meanwhile).
	DynamicError string `json:"dynamic_error,omitempty"`
}

func collectStats() statsView {
	out := newStatsView()
	for _, ps := range allPools() {
		healthy, isolated, total := ps.monitor.Counts()
		pst := poolStats{Statistics: ps.manager.Stats(), HealthyWorkers: healthy, IsolatedWorkers: isolated, TotalWorkers: total}
		if msg := ps.dynamicErr.Load(); msg != nil {
			pst.DynamicError = *msg
		}
		out.add(ps.name, pst)
	}
	return out
}

// newStatsView returns empty statistics, ready for add.
func newStatsView() statsView {
	return statsView{
		Statistics: recovery.Statistics{BySeverity: map[string]uint64{}, ByKind: map[string]uint64{}},
		Pools:      map[string]poolStats{},
	}
}

// add counts the statistics of one pool into the totals.
func (v *statsView) add(name string, ps poolStats) {
	v.Pools[name] = ps
	v.TotalErrors += ps.TotalErrors
	v.Retries += ps.Retries
	v.RecoveryAttempts += ps.RecoveryAttempts
	v.RecoverySuccesses += ps.RecoverySuccesses
	v.BreakerTrips += ps.BreakerTrips
	for k, n := range ps.BySeverity {
		v.BySeverity[k] += n
	}
	for k, n := range ps.ByKind {
		v.ByKind[k] += n
	}
	v.HealthyWorkers += ps.HealthyWorkers
	v.IsolatedWorkers += ps.IsolatedWorkers
	v.TotalWorkers += ps.TotalWorkers
}

// collectErrors merges the pools' histories, newest first.
func collectErrors(f recovery.Filter) []recovery.ContextualError {
	out := []recovery.ContextualError{}
	for _, ps := range allPools() {
		out = append(out, ps.manager.Errors(f)...)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Timestamp.After(out[j].Timestamp) })
	if f.Limit > 0 && len(out) > f.Limit {
		out = out[:f.Limit]
	}
	return out
}

// emitWorkerEvent logs an isolation transition, counts it and emits its
// Caddy event; it is never called with a lock held.
func emitWorkerEvent(ctx caddy.Context, events *caddyevents.App, logger *zap.Logger, ev health.Event) {
	data := map[string]any{
		"pool":     ev.Worker.Pool(),
		"worker":   ev.Worker.ID(),
		"upstream": ev.Worker.Upstream(),
		"reason":   ev.Reason,
	}
	fields := []zap.Field{
		zap.String("pool", ev.Worker.Pool()),
		zap.String("worker", ev.Worker.ID()),
		zap.String("reason", ev.Reason),
	}
	if !ev.Until.IsZero() {
		data["until"] = ev.Until.UTC().Format(time.RFC3339Nano)
		fields = append(fields, zap.Time("until", ev.Until))
	}
	var name string
	switch ev.Type {
	case health.EventIsolated:
		name = eventWorkerIsolated
		logger.Warn("worker isolated", fields...)
	case health.EventRestored:
		name = eventWorkerRestored
		logger.Info("worker restored", fields...)
	case health.EventRecoveryFailed:
		name = eventWorkerRecoveryFailed
		logger.Error("worker recovery failed", fields...)
	default:
		return
	}
	(&poolMetrics{pool: ev.Worker.Pool()}).transition(ev.Worker.ID(), name)
	if events != nil {
		events.Emit(ctx, name, data)
	}
}

// allow refuses other methods with a JSON 405.
func allow(r *http.Request, method string) error {
	if r.Method != method {
		return apiError(http.StatusMethodNotAllowed, "method %s not allowed, use %s", r.Method, method)
	}
	return nil
}

// apiError builds the error Caddy's admin server answers as JSON. It must
// be returned as is: Caddy finds it with a type assertion, not errors.As.
func apiError(status int, format string, args ...any) error {
	return caddy.APIError{HTTPStatus: status, Err: fmt.Errorf(format, args...)}
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: errors.New("encoding response")}
	}
	return nil
}

// Interface guards
var (
	_ caddy.AdminRouter = (*adminAPI)(nil)
	_ caddy.Provisioner = (*adminAPI)(nil)
)
