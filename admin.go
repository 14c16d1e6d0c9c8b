package bifrost

import (
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
//	GET  /bifrost/fleet                   the fleet: instance, connection, peers, verdicts, rejected entries
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

// handle routes one admin request.
func (a *adminAPI) handle(w http.ResponseWriter, r *http.Request) error {
	parts := strings.Split(strings.Trim(strings.TrimPrefix(r.URL.Path, "/bifrost/"), "/"), "/")
	switch {
	case len(parts) == 1 && parts[0] == "workers":
		if err := allow(r, http.MethodGet); err != nil {
			return err
		}
		return pool.WriteJSON(w, http.StatusOK, pool.WorkerViews(""))
	case len(parts) == 2 && parts[0] == "workers":
		if err := allow(r, http.MethodGet); err != nil {
			return err
		}
		ws, err := lookupWorker(parts[1])
		if err != nil {
			return err
		}
		return pool.WriteJSON(w, http.StatusOK, pool.ViewOf(ws, time.Now()))
	case len(parts) == 3 && parts[0] == "workers":
		if err := allow(r, http.MethodPost); err != nil {
			return err
		}
		ws, err := lookupWorker(parts[1])
		if err != nil {
			return err
		}
		if err := pool.Operate(ws, parts[2], r); err != nil {
			return err
		}
		return pool.WriteJSON(w, http.StatusOK, pool.ViewOf(ws, time.Now()))
	case len(parts) == 1 && parts[0] == "stats":
		if err := allow(r, http.MethodGet); err != nil {
			return err
		}
		return pool.WriteJSON(w, http.StatusOK, pool.Stats(nil))
	case len(parts) == 1 && parts[0] == "fleet":
		if err := allow(r, http.MethodGet); err != nil {
			return err
		}
		return pool.WriteJSON(w, http.StatusOK, fleetView())
	case len(parts) == 1 && parts[0] == "errors":
		if err := allow(r, http.MethodGet); err != nil {
			return err
		}
		f, err := parseErrorFilter(r)
		if err != nil {
			return err
		}
		return pool.WriteJSON(w, http.StatusOK, pool.Errors(f, nil))
	}
	return pool.RequestError(http.StatusNotFound, "no such bifrost endpoint: %s", r.URL.Path)
}

// parseErrorFilter reads the query of GET /bifrost/errors.
func parseErrorFilter(r *http.Request) (recovery.Filter, error) {
	q := r.URL.Query()
	f := recovery.Filter{Limit: 100, Worker: q.Get("worker"), Pool: q.Get("pool")}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100000 {
			return f, pool.RequestError(http.StatusBadRequest, "limit: %q is not a number between 1 and 100000", v)
		}
		f.Limit = n
	}
	if v := q.Get("severity"); v != "" {
		s, err := recovery.ParseSeverity(v)
		if err != nil {
			return f, pool.RequestError(http.StatusBadRequest, "severity: %v", err)
		}
		f.Severity = s
	}
	if v := q.Get("kind"); v != "" {
		k, err := recovery.ParseKind(v)
		if err != nil {
			return f, pool.RequestError(http.StatusBadRequest, "kind: %v", err)
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
	return nil, pool.RequestError(http.StatusNotFound, "unknown worker %q", id)
}

// allow refuses other methods with a JSON 405.
func allow(r *http.Request, method string) error {
	if r.Method != method {
		return pool.RequestError(http.StatusMethodNotAllowed, "method %s not allowed, use %s", r.Method, method)
	}
	return nil
}

// Interface guards
var (
	_ caddy.AdminRouter = (*adminAPI)(nil)
)
