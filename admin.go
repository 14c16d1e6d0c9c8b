package bifrost

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/bifrost-proxy/bifrost/pool"
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
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.bifrost",
		New: func() caddy.Module { return new(adminAPI) },
	}
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
		return writeJSON(w, pool.WorkerViews(""))
	case len(parts) == 2 && parts[0] == "workers":
		if err := allow(r, http.MethodGet); err != nil {
			return err
		}
		ws, err := lookupWorker(parts[1])
		if err != nil {
			return err
		}
		return writeJSON(w, pool.ViewOf(ws, time.Now()))
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
		return writeJSON(w, pool.Stats(nil))
	case len(parts) == 1 && parts[0] == "errors":
		if err := allow(r, http.MethodGet); err != nil {
			return err
		}
		f, err := parseErrorFilter(r)
		if err != nil {
			return err
		}
		return writeJSON(w, pool.Errors(f, nil))
	}
	return apiError(http.StatusNotFound, "no such bifrost endpoint: %s", r.URL.Path)
}

// act performs an operator action on a worker.
func (a *adminAPI) act(w http.ResponseWriter, r *http.Request, ws *pool.Worker, action string) error {
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
	if err := operatorAction(ws, action, d, reason); err != nil {
		return err
	}
	return writeJSON(w, pool.ViewOf(ws, time.Now()))
}

// operatorAction performs an operator action (see pool.Act), turning its
// errors into the admin API's.
func operatorAction(ws *pool.Worker, action string, d time.Duration, reason string) error {
	switch err := pool.Act(ws, action, d, reason); {
	case errors.Is(err, pool.ErrNoPool):
		return apiError(http.StatusNotFound, "worker %s has no active pool", ws.ID)
	case errors.Is(err, pool.ErrUnknownAction):
		return apiError(http.StatusNotFound, "unknown worker action %q (want isolate, restore or reset)", action)
	case err != nil:
		return apiError(http.StatusBadRequest, "%v", err)
	}
	return nil
}

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
		if d > pool.MaxIsolateDuration {
			return 0, "", apiError(http.StatusBadRequest, "duration: %q is longer than the limit of 24h for an operator isolation", body.Duration)
		}
	}
	reason := "isolated by an operator"
	if body.Reason != "" {
		reason = recovery.Truncate(body.Reason, 200)
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

// lookupWorker finds a worker by id, or answers 404.
func lookupWorker(id string) (*pool.Worker, error) {
	if ws := pool.Lookup(id); ws != nil {
		return ws, nil
	}
	return nil, apiError(http.StatusNotFound, "unknown worker %q", id)
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
)
