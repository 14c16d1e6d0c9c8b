package bifrost

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/http"
	"net/url"
	"runtime/debug"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/pool"
	"github.com/bifrost-proxy/bifrost/recovery"
)

func init() {
	caddy.RegisterModule(StatusPage{})
	httpcaddyfile.RegisterHandlerDirective("bifrost_status", parseStatusCaddyfile)
	// Ordered right after `metrics`, the last standard directive before
	// `reverse_proxy`, so it lands before `bifrost` (which is ordered
	// before `reverse_proxy`) whichever init runs first: a site can mount
	// the page with a matcher next to a catch-all `bifrost`. The third
	// argument must be a standard directive; naming `bifrost` panics.
	httpcaddyfile.RegisterDirectiveOrder("bifrost_status", httpcaddyfile.After, "metrics")
}

// StatusPage serves Bifrost's status page: one HTML page that shows the
// pools of its site (see Pools), their workers (state in colour and in words,
// breaker state and counts, isolation reason and time left, requests in
// flight, request and error rates), error totals by severity and kind, the
// most recent classified errors, and requests and errors per second over
// the last five minutes. The page polls a JSON feed every second, so it
// stays live without reloading, and it keeps working across config
// reloads. All assets are embedded: it works on an offline network.
//
// Mount it on any route, for example:
//
//	handle /bifrost* {
//		bifrost_status
//	}
//
// Relative to the path where it is mounted, it serves:
//
// Path | Answer
// -----|-------
// `/` | the page (a path without its trailing slash is redirected to it)
// `/assets/status.js`, `/assets/status.css` | the page's script and style sheet
// `/api/state` | the JSON feed the page reads
// `/api/workers/{id}/isolate`, `/restore`, `/reset` | operator actions (POST), only with Actions
//
// Without Prefix, the mount point is derived from each request's path: a
// path whose last `api` segment is followed by `state` or `workers` is a
// feed or action path, one ending in `assets/<file>` is an asset, and any
// other path shows the page. The page only uses relative URLs, so this
// works under any prefix, including behind `handle_path` or
// `uri strip_prefix`.
//
// The feed has the same worker objects as the admin API's
// `GET /bifrost/workers`, plus a `status` for each, and never contains
// request headers, cookies or credentials. Every response carries
// `X-Content-Type-Options: nosniff` and a Content-Security-Policy that
// allows nothing but the page's own script, style sheet and feed; the page
// and the feed are `Cache-Control: no-store`, the assets are revalidated
// with an ETag.
//
// The page is read-only unless Actions is enabled. Put it behind
// authentication (e.g. `basic_auth`) on any network you do not trust: it
// shows upstream addresses and error messages, and with Actions anyone
// who reaches it can take workers out.
type StatusPage struct {
	// Prefix is the path prefix where the page is mounted, e.g.
	// "/status", as this handler sees the path (after any prefix a
	// `handle_path` stripped). When set, only paths under it are served
	// (others go to the next handler), and the API and assets are
	// matched exactly below it. Default: empty, the mount point is
	// derived from each request's path (see above).
	Prefix string `json:"prefix,omitempty"`

	// Actions enables operator actions on the page: isolate a worker
	// (for a chosen duration or until restored), restore it, and reset
	// its breaker. They are POST requests that must come from the page's
	// own origin (by the Sec-Fetch-Site or Origin header); others are
	// refused with 403. Default: false, the page is read-only and action
	// requests are refused with 403.
	Actions bool `json:"actions,omitempty"`

	// Pools names the pools the page shows and acts on; `["*"]` means
	// every pool of the running config, as the admin API shows them. A
	// worker of another pool is answered 404, like an unknown one, and
	// stays out of the totals, series and recent errors.
	//
	// Default: the pools of the bifrost handlers of the page's own site.
	// Those are the handlers in the same HTTP server whose top-level
	// route matches the same host names as the route that holds the page
	// (walking subroutes, `handle_errors` routes and invoked named
	// routes). A Caddyfile site block is one such route, so this is the
	// site block's pools; in a server whose routes match no host names
	// (a lone site like `:8080`), it is the whole server. A site on
	// another host or port never shows up. The scope is found at the
	// first request, not in Provision: only then are all the server's
	// handlers provisioned and the server known (Caddy passes it in the
	// request's context). Pools are matched by name, so two sites that
	// name the same pool, and share its workers, both show it. Name the
	// pools to show, on an operations host say, pools that other sites
	// serve.
	Pools []string `json:"pools,omitempty"`

	ctx    caddy.Context
	logger *zap.Logger
	events *caddyevents.App
	series *statusSeries
	held   bool // whether Provision acquired the series from statusStates
	cancel context.CancelFunc
	wg     *sync.WaitGroup // the sampler; a pointer, the module is copied by value in CaddyModule
	scope  *statusScopeOnce
}

// statusScope is the set of pools a page shows.
type statusScope struct {
	all   bool
	pools map[string]bool
}

// has reports whether the pool named pool is in the scope.
func (sc statusScope) has(pool string) bool { return sc.all || sc.pools[pool] }

// statusScopeOnce is a page's scope, found once.
type statusScopeOnce struct {
	once  sync.Once
	scope statusScope
}

// CaddyModule returns the Caddy module information.
func (StatusPage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.bifrost_status",
		New: func() caddy.Module { return new(StatusPage) },
	}
}

// Provision sets up the page and starts its time-series sampler.
func (s *StatusPage) Provision(ctx caddy.Context) error {
	eventsApp, err := ctx.App("events")
	if err != nil {
		return fmt.Errorf("getting events app: %w", err)
	}
	s.events, _ = eventsApp.(*caddyevents.App)
	s.ctx = ctx
	s.logger = ctx.Logger()
	s.Prefix = strings.TrimSuffix(s.Prefix, "/")
	s.scope = new(statusScopeOnce)
	if len(s.Pools) > 0 {
		sc := statusScope{pools: map[string]bool{}}
		for _, name := range s.Pools {
			sc.all = sc.all || name == "*"
			sc.pools[name] = true
		}
		s.scope.once.Do(func() { s.scope.scope = sc })
	}

	v, _, err := statusStates.LoadOrNew(statusSeriesKey, func() (caddy.Destructor, error) {
		return newStatusSeries(), nil
	})
	if err != nil {
		return err
	}
	s.held = true
	s.series = v.(*statusSeries)

	// last, the sampler, bound to a context that Cleanup cancels
	bg, cancel := context.WithCancel(ctx)
	s.cancel = cancel
	s.wg = new(sync.WaitGroup)
	s.wg.Add(1)
	go s.sampleLoop(bg)
	return nil
}

// Validate checks the configuration.
func (s *StatusPage) Validate() error {
	if s.Prefix != "" && (!strings.HasPrefix(s.Prefix, "/") || strings.ContainsAny(s.Prefix, "*?#")) {
		return fmt.Errorf("prefix must be a path starting with '/' and without '*', '?' or '#', got %q", s.Prefix)
	}
	for i, name := range s.Pools {
		if name == "" {
			return fmt.Errorf("pools[%d] is empty", i)
		}
		if name == "*" && len(s.Pools) > 1 {
			return errors.New("pools: \"*\" (every pool) cannot be combined with pool names")
		}
	}
	return nil
}

// poolScope returns the pools the page shows, finding them from the
// request's server at the first request when Pools is not set.
func (s *StatusPage) poolScope(r *http.Request) statusScope {
	s.scope.once.Do(func() {
		srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
		pools, found := sitePools(srv, s)
		if !found {
			s.logger.Warn("status page not found in its server's routes; it shows no pool until `pools` names them")
		}
		s.scope.scope = statusScope{pools: pools}
	})
	return s.scope.scope
}

// sitePools returns the pool names of the bifrost handlers that serve the
// same site as page in srv (see StatusPage.Pools), and whether page was
// found in srv's routes.
func sitePools(srv *caddyhttp.Server, page *StatusPage) (map[string]bool, bool) {
	pools := map[string]bool{}
	if srv == nil {
		return pools, false
	}
	lists := []caddyhttp.RouteList{srv.Routes}
	if srv.Errors != nil {
		lists = append(lists, srv.Errors.Routes)
	}
	type site struct {
		hosts string
		walk  *routeWalk
	}
	var sites []site
	pageHosts := map[string]bool{}
	for _, rl := range lists {
		for i := range rl {
			w := &routeWalk{srv: srv, page: page, named: map[string]bool{}}
			w.handlers(rl[i].Handlers)
			hosts := routeHosts(rl[i].MatcherSets)
			sites = append(sites, site{hosts, w})
			if w.found {
				pageHosts[hosts] = true
			}
		}
	}
	for _, st := range sites {
		if pageHosts[st.hosts] {
			for _, name := range st.walk.pools {
				pools[name] = true
			}
		}
	}
	return pools, len(pageHosts) > 0
}

// routeHosts returns the host names a top-level route is limited to, as
// one sorted, comma-separated string; "" for a route that matches any
// host (no matcher set, or one without a host matcher).
func routeHosts(sets caddyhttp.MatcherSets) string {
	var hosts []string
	for _, set := range sets {
		found := false
		for _, m := range set {
			var mh caddyhttp.MatchHost
			switch m := m.(type) {
			case *caddyhttp.MatchHost:
				mh = *m
			case caddyhttp.MatchHost:
				mh = m
			default:
				continue
			}
			found = true
			for _, h := range mh {
				hosts = append(hosts, strings.ToLower(h))
			}
		}
		if !found {
			return ""
		}
	}
	sort.Strings(hosts)
	return strings.Join(slices.Compact(hosts), ",")
}

// routeWalk collects the pools of the bifrost handlers in a tree of
// routes, and whether a status page is in it.
type routeWalk struct {
	srv   *caddyhttp.Server
	page  *StatusPage
	found bool
	pools []string
	named map[string]bool // named routes walked, so each is walked once
}

// handlers walks a route's handlers and the routes they hold.
func (w *routeWalk) handlers(hs []caddyhttp.MiddlewareHandler) {
	for _, mh := range hs {
		switch h := mh.(type) {
		case *StatusPage:
			w.found = w.found || h == w.page
		case *Handler:
			w.pools = append(w.pools, h.poolName)
		case *caddyhttp.Subroute:
			w.routes(h.Routes)
			if h.Errors != nil {
				w.routes(h.Errors.Routes)
			}
		case *caddyhttp.Invoke:
			if r := w.srv.NamedRoutes[h.Name]; r != nil && !w.named[h.Name] {
				w.named[h.Name] = true
				w.handlers(r.Handlers)
			}
		}
	}
}

// routes walks a list of routes.
func (w *routeWalk) routes(rl caddyhttp.RouteList) {
	for i := range rl {
		w.handlers(rl[i].Handlers)
	}
}

// Cleanup stops the sampler and releases the shared time series. It is
// safe after a partial Provision.
func (s *StatusPage) Cleanup() error {
	if s.cancel != nil {
		s.cancel()
	}
	if s.wg != nil {
		s.wg.Wait()
	}
	if s.held {
		s.held = false
		if _, err := statusStates.Delete(statusSeriesKey); err != nil {
			return err
		}
	}
	return nil
}

// statusRoute is what a request to the status page asks for.
type statusRoute int

const (
	routeNone     statusRoute = iota // outside Prefix: for the next handler
	routePage                        // the HTML page
	routeRedirect                    // the page, without its trailing slash
	routeAsset                       // an embedded asset
	routeState                       // the JSON feed
	routeAction                      // an operator action
	routeNotFound                    // under the API or assets, but no such thing
)

// statusTarget is a routed request: the route and its parameters.
type statusTarget struct {
	route  statusRoute
	asset  string // routeAsset: the file name
	worker string // routeAction: the worker id
	action string // routeAction: isolate, restore or reset
}

// routeStatus maps a request path to what it asks for. With a prefix,
// the path must be the prefix or lie under it, and the rest is matched
// exactly; without, the mount point is derived from the path's end (see
// StatusPage).
func routeStatus(prefix, path string) statusTarget {
	if prefix != "" {
		if path == prefix {
			return statusTarget{route: routeRedirect}
		}
		rest, ok := strings.CutPrefix(path, prefix+"/")
		if !ok {
			return statusTarget{route: routeNone}
		}
		if rest == "" {
			return statusTarget{route: routePage}
		}
		if t, ok := routeSuffix(strings.Split(rest, "/"), true); ok {
			return t
		}
		return statusTarget{route: routeNotFound}
	}
	if t, ok := routeSuffix(strings.Split(path, "/"), false); ok {
		return t
	}
	if path == "" || strings.HasSuffix(path, "/") {
		return statusTarget{route: routePage}
	}
	return statusTarget{route: routeRedirect}
}

// routeSuffix recognizes the feed, action and asset paths in segs, the
// segments of a path, and reports whether it found one. When exact, segs
// is the path below the mount point; otherwise the mount point is what
// precedes the last "api" segment followed by "state" or "workers", or
// the "assets" segment before the last one.
func routeSuffix(segs []string, exact bool) (statusTarget, bool) {
	n := len(segs)
	api := -1
	switch {
	case exact && n >= 1 && segs[0] == "api":
		api = 0
	case !exact:
		for i := n - 2; i >= 0; i-- {
			if segs[i] == "api" && (segs[i+1] == "state" || segs[i+1] == "workers") {
				api = i
				break
			}
		}
	}
	if api >= 0 {
		switch rest := segs[api+1:]; {
		case len(rest) == 1 && rest[0] == "state":
			return statusTarget{route: routeState}, true
		case len(rest) == 3 && rest[0] == "workers" && rest[1] != "" && rest[2] != "":
			return statusTarget{route: routeAction, worker: rest[1], action: rest[2]}, true
		}
		return statusTarget{route: routeNotFound}, true
	}
	isAsset := n >= 2 && segs[n-2] == "assets" && segs[n-1] != ""
	if exact {
		isAsset = isAsset && n == 2
	}
	if isAsset {
		if _, ok := statusAssets[segs[n-1]]; ok {
			return statusTarget{route: routeAsset, asset: segs[n-1]}, true
		}
		return statusTarget{route: routeNotFound}, true
	}
	return statusTarget{}, false
}

// statusCSP allows the page nothing but its own script, style sheet and
// feed: no inline script or style, no framing, no plugins, no forms.
const statusCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// ServeHTTP serves the page, its assets, its feed and its actions.
func (s *StatusPage) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	t := routeStatus(s.Prefix, r.URL.Path)
	if t.route == routeNone {
		return next.ServeHTTP(w, r)
	}
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", statusCSP)
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")

	switch t.route {
	case routeAction:
		return s.serveAction(w, r, t.worker, t.action)
	case routeNotFound:
		return statusError(w, http.StatusNotFound, "no such status page resource")
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		return statusError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed, use GET", r.Method))
	}
	switch t.route {
	case routeRedirect:
		if p := browserPath(r); !strings.HasSuffix(p, "/") {
			return redirectToSlash(w, r, p)
		}
		// a stripped prefix left no slash, but the browser's path ends
		// with one: the page's relative URLs resolve fine
	case routeAsset:
		return serveAsset(w, r, statusAssets[t.asset])
	case routeState:
		return writeStatusJSON(w, http.StatusOK, s.feed(time.Now(), s.poolScope(r)))
	}
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(statusIndex)))
	_, _ = w.Write(statusIndex)
	return nil
}

// browserPath returns the escaped path the browser asked for: that of
// Caddy's original request, before any rewrite or stripped prefix.
func browserPath(r *http.Request) string {
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && orig.URL != nil {
		return orig.URL.EscapedPath()
	}
	return r.URL.EscapedPath()
}

// redirectToSlash sends the browser from the page's path without its
// trailing slash, p, to the path with it, so that the page's relative
// URLs resolve below the mount point. The Location is relative, so it is
// right whatever prefix a proxy in front added or removed.
func redirectToSlash(w http.ResponseWriter, r *http.Request, p string) error {
	loc := "./" + p[strings.LastIndex(p, "/")+1:] + "/"
	if r.URL.RawQuery != "" {
		loc += "?" + r.URL.RawQuery
	}
	w.Header().Set("Location", loc)
	w.WriteHeader(http.StatusMovedPermanently)
	return nil
}

// serveAsset serves an embedded asset, revalidated with its ETag.
func serveAsset(w http.ResponseWriter, r *http.Request, a statusAsset) error {
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("Content-Type", a.contentType)
	w.Header().Set("ETag", a.etag)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
	return nil
}

// serveAction performs an operator action requested from the page.
func (s *StatusPage) serveAction(w http.ResponseWriter, r *http.Request, id, action string) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return statusError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed, use POST", r.Method))
	}
	if !s.Actions {
		return statusError(w, http.StatusForbidden, "operator actions are disabled; enable them with `actions` in the bifrost_status block")
	}
	if err := sameOrigin(r); err != nil {
		s.logger.Info("status page action refused",
			zap.String("worker", id), zap.String("action", action),
			zap.String("remote_addr", r.RemoteAddr), zap.Error(err))
		return statusError(w, http.StatusForbidden, err.Error())
	}
	ws, err := lookupWorker(id)
	if err != nil {
		return statusAPIError(w, err)
	}
	if !s.poolScope(r).has(ws.Pool) {
		// another site's worker: as unknown as one that does not exist
		return statusError(w, http.StatusNotFound, fmt.Sprintf("unknown worker %q", id))
	}
	var (
		d      time.Duration
		reason string
	)
	if action == "isolate" {
		if d, reason, err = parseIsolateRequest(r); err != nil {
			return statusAPIError(w, err)
		}
	}
	if err := operatorAction(ws, action, d, reason); err != nil {
		return statusAPIError(w, err)
	}
	now := time.Now()
	return writeStatusJSON(w, http.StatusOK, s.worker(pool.ViewOf(ws, now), now, s.series.workerRates()))
}

// sameOrigin refuses a request that a browser did not send from the
// page's own origin. Browsers set Sec-Fetch-Site, which no page can
// forge; without it, the Origin header must name this host. A request
// with neither (curl, scripts) is refused too: the admin API is the
// interface for those.
func sameOrigin(r *http.Request) error {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" {
		if site != "same-origin" {
			return fmt.Errorf("cross-origin request refused (Sec-Fetch-Site: %s)", site)
		}
		return nil
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return errors.New("request without Origin or Sec-Fetch-Site refused; actions must come from the status page")
	}
	u, err := url.Parse(origin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || !strings.EqualFold(u.Host, r.Host) {
		return errors.New("cross-origin request refused (Origin does not match the host)")
	}
	return nil
}

// statusError writes a JSON error. The page reads these bodies, so the
// handler writes them itself instead of returning a caddyhttp.Error.
func statusError(w http.ResponseWriter, code int, msg string) error {
	return writeStatusJSON(w, code, map[string]string{"error": msg})
}

// statusAPIError writes one of the admin helpers' errors.
func statusAPIError(w http.ResponseWriter, err error) error {
	var ae caddy.APIError
	if errors.As(err, &ae) && ae.Err != nil {
		return statusError(w, ae.HTTPStatus, ae.Err.Error())
	}
	return statusError(w, http.StatusInternalServerError, "internal error")
}

// writeStatusJSON writes v as the JSON answer.
func writeStatusJSON(w http.ResponseWriter, code int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, fmt.Errorf("encoding status: %w", err))
	}
	b = append(b, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(code)
	_, _ = w.Write(b)
	return nil
}

// statusErrorLimit is the number of recent errors the feed carries.
const statusErrorLimit = 50

// statusFeed is the JSON the page reads.
type statusFeed struct {
	// Now is the server's time; the page computes ages from it, not
	// from the browser's clock.
	Now time.Time `json:"now"`
	// Actions tells the page whether operator actions are enabled.
	Actions bool `json:"actions"`
	// RefreshMS is how often the page should poll.
	RefreshMS int64                      `json:"refresh_ms"`
	Stats     pool.StatsView             `json:"stats"`
	Pools     []statusPool               `json:"pools"`
	Series    seriesView                 `json:"series"`
	Errors    []recovery.ContextualError `json:"errors"`
}

// statusPool is one pool in the feed.
type statusPool struct {
	Name    string         `json:"name"`
	Stats   pool.PoolStats `json:"stats"`
	Workers []statusWorker `json:"workers"`
	Series  seriesView     `json:"series"`
}

// statusWorker is a worker in the feed: the admin API's view plus its
// status in one word, the times left, and its rates.
type statusWorker struct {
	pool.WorkerView

	// Status sums the worker up: healthy, half_open, open (breaker
	// open), throttled, unhealthy (probe failing), isolated or
	// recovery_failed; StatusText is the same in words.
	Status     string `json:"status"`
	StatusText string `json:"status_text"`

	IsolationLeftMS  int64 `json:"isolation_left_ms,omitempty"`
	ThrottleLeftMS   int64 `json:"throttle_left_ms,omitempty"`
	BreakerRetryInMS int64 `json:"breaker_retry_in_ms,omitempty"`

	// RequestRate and ErrorRate are tries and failed tries per second
	// over the last few seconds.
	RequestRate float64 `json:"request_rate"`
	ErrorRate   float64 `json:"error_rate"`
}

// feed builds the JSON feed of the pools in scope.
func (s *StatusPage) feed(now time.Time, scope statusScope) statusFeed {
	stats := pool.Stats(scope.has)
	rates := s.series.workerRates()
	byPool := map[string][]statusWorker{}
	for _, v := range pool.WorkerViews("") {
		if scope.has(v.Pool) {
			byPool[v.Pool] = append(byPool[v.Pool], s.worker(v, now, rates))
		}
	}
	names := make([]string, 0, len(stats.Pools))
	for name := range stats.Pools {
		names = append(names, name)
	}
	for name := range byPool {
		if _, ok := stats.Pools[name]; !ok {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	pools := make([]statusPool, 0, len(names))
	for _, name := range names {
		ws := byPool[name]
		if ws == nil {
			ws = []statusWorker{}
		}
		pools = append(pools, statusPool{Name: name, Stats: stats.Pools[name], Workers: ws, Series: s.series.view(name)})
	}
	return statusFeed{
		Now:       now,
		Actions:   s.Actions,
		RefreshMS: statusStep.Milliseconds(),
		Stats:     stats,
		Pools:     pools,
		Series:    s.series.sum(scope),
		Errors:    pool.Errors(recovery.Filter{Limit: statusErrorLimit}, scope.has),
	}
}

// worker completes a worker's view for the feed.
func (s *StatusPage) worker(v pool.WorkerView, now time.Time, rates map[string]workerRate) statusWorker {
	sw := statusWorker{WorkerView: v}
	sw.Status, sw.StatusText = workerStatus(v)
	if v.Isolated && !v.IsolatedUntil.IsZero() {
		sw.IsolationLeftMS = max(v.IsolatedUntil.Sub(now).Milliseconds(), 0)
	}
	if v.Throttled {
		sw.ThrottleLeftMS = max(v.ThrottledUntil.Sub(now).Milliseconds(), 0)
	}
	if v.Breaker.State == breaker.StateOpen && !v.Breaker.RetryAt.IsZero() {
		sw.BreakerRetryInMS = max(v.Breaker.RetryAt.Sub(now).Milliseconds(), 0)
	}
	r := rates[v.ID]
	sw.RequestRate, sw.ErrorRate = r.requests, r.errors
	return sw
}

// statusTexts are the words the page shows for each worker state.
var statusTexts = map[string]string{
	"recovery_failed": "recovery failed",
	"open":            "breaker open",
	"half_open":       "half-open",
	"unhealthy":       "probe failing",
}

// workerStatus sums a worker up in one status (see pool.WorkerView.State)
// and the words that show it.
func workerStatus(v pool.WorkerView) (code, text string) {
	code = v.State()
	return code, cmp.Or(statusTexts[code], code)
}

// The time series: one point per statusStep, statusSeriesLen points.
const (
	statusStep      = time.Second
	statusSeriesLen = 300
	// statusRateWindow is the number of steps a worker's rates are
	// averaged over.
	statusRateWindow = 5
	statusSeriesKey  = "series"
)

// statusStates holds the time series shared by every StatusPage, so that
// it survives config reloads (the new config acquires it before the old
// one releases it) and goes away with the last status page.
var statusStates = caddy.NewUsagePool()

// statusSeries samples the workers' request and failure counters once per
// step into bounded rings: one for all pools together and one per pool,
// plus a short window per worker for its current rates. Workers are
// tracked by identity, so a worker that is removed and added again starts
// from its new counters. It is safe for concurrent use.
type statusSeries struct {
	mu     sync.Mutex
	last   time.Time // time of the last sample; zero before the first
	gen    uint64    // sample count, to prune what a sample did not see
	total  statusRing
	pools  map[string]*statusRing
	tracks map[*pool.Worker]*workerTrack
	rates  map[string]workerRate // by worker id, from the last sample
}

// newStatusSeries returns an empty series.
func newStatusSeries() *statusSeries {
	return &statusSeries{
		pools:  map[string]*statusRing{},
		tracks: map[*pool.Worker]*workerTrack{},
		rates:  map[string]workerRate{},
	}
}

// Destruct implements caddy.Destructor; the series holds only memory.
func (*statusSeries) Destruct() error { return nil }

// statusPoint is one point of a series: rates over the step ending at t.
type statusPoint struct {
	t                time.Time
	requests, errors float64
}

// statusRing is a bounded series, oldest point overwritten first.
type statusRing struct {
	pts  [statusSeriesLen]statusPoint
	n    int // points stored
	next int // slot of the next point
}

// push adds a point, dropping the oldest when the ring is full.
func (r *statusRing) push(p statusPoint) {
	r.pts[r.next] = p
	r.next = (r.next + 1) % len(r.pts)
	if r.n < len(r.pts) {
		r.n++
	}
}

// workerCount is a worker's counters at one time.
type workerCount struct {
	t               time.Time
	requests, fails uint64
}

// workerTrack is a worker's last few counters.
type workerTrack struct {
	counts [statusRateWindow + 1]workerCount
	n      int
	next   int
	gen    uint64
}

// push adds a sample, dropping the oldest when the window is full.
func (tr *workerTrack) push(c workerCount) {
	tr.counts[tr.next] = c
	tr.next = (tr.next + 1) % len(tr.counts)
	if tr.n < len(tr.counts) {
		tr.n++
	}
}

// newest returns the last sample; the track has at least one.
func (tr *workerTrack) newest() workerCount {
	return tr.counts[(tr.next+len(tr.counts)-1)%len(tr.counts)]
}

// oldest returns the first sample still in the window.
func (tr *workerTrack) oldest() workerCount {
	return tr.counts[(tr.next+len(tr.counts)-tr.n)%len(tr.counts)]
}

// rate returns the worker's rates over its window.
func (tr *workerTrack) rate() workerRate {
	o, n := tr.oldest(), tr.newest()
	secs := n.t.Sub(o.t).Seconds()
	if secs <= 0 {
		return workerRate{}
	}
	return workerRate{
		requests: round2(float64(delta(n.requests, o.requests)) / secs),
		errors:   round2(float64(delta(n.fails, o.fails)) / secs),
	}
}

// workerRate is a worker's tries and failed tries per second.
type workerRate struct{ requests, errors float64 }

// delta is the growth of a counter; one that went backwards counts from 0.
func delta(cur, prev uint64) uint64 {
	if cur < prev {
		return cur
	}
	return cur - prev
}

// round2 rounds to two decimals, enough for rates and smaller JSON.
func round2(f float64) float64 { return math.Round(f*100) / 100 }

// sample reads the workers' counters at time now. Every status page of
// the running configs calls it once per step; a call less than 90% of a
// step after the previous sample is ignored, so that overlapping samplers
// (during a reload, or with several pages) do not thicken the series.
func (ss *statusSeries) sample(now time.Time, workers []*pool.Worker) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if !ss.last.IsZero() && now.Sub(ss.last) < statusStep*9/10 {
		return
	}
	first := ss.last.IsZero()
	secs := now.Sub(ss.last).Seconds()
	ss.last = now
	ss.gen++

	type sums struct{ requests, fails uint64 }
	pools := map[string]*sums{}
	rates := make(map[string]workerRate, len(workers))
	for _, ws := range workers {
		snap := ws.Health.Snapshot(now)
		c := workerCount{t: now, requests: snap.Requests, fails: snap.Failures}
		ps := pools[ws.Pool]
		if ps == nil {
			ps = new(sums)
			pools[ws.Pool] = ps
		}
		tr := ss.tracks[ws]
		if tr == nil {
			tr = new(workerTrack)
			ss.tracks[ws] = tr
		} else {
			prev := tr.newest()
			ps.requests += delta(c.requests, prev.requests)
			ps.fails += delta(c.fails, prev.fails)
		}
		tr.push(c)
		tr.gen = ss.gen
		rates[ws.ID] = tr.rate()
	}
	for ws, tr := range ss.tracks {
		if tr.gen != ss.gen {
			delete(ss.tracks, ws)
		}
	}
	ss.rates = rates
	for name := range ss.pools {
		if pools[name] == nil {
			delete(ss.pools, name)
		}
	}
	if first || secs <= 0 {
		return // a rate needs two samples
	}
	var total sums
	for name, ps := range pools {
		ring := ss.pools[name]
		if ring == nil {
			ring = new(statusRing)
			ss.pools[name] = ring
		}
		ring.push(statusPoint{t: now, requests: round2(float64(ps.requests) / secs), errors: round2(float64(ps.fails) / secs)})
		total.requests += ps.requests
		total.fails += ps.fails
	}
	ss.total.push(statusPoint{t: now, requests: round2(float64(total.requests) / secs), errors: round2(float64(total.fails) / secs)})
}

// workerRates returns the rates of the last sample, by worker id. The map
// is replaced, never modified, after it is returned.
func (ss *statusSeries) workerRates() map[string]workerRate {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.rates
}

// seriesView is a series in the feed: parallel arrays, oldest first, of
// sample times (Unix milliseconds) and of requests and errors per second
// (tries and failed tries of the workers) over the step ending then.
type seriesView struct {
	StepMS   int64     `json:"step_ms"`
	Times    []int64   `json:"t"`
	Requests []float64 `json:"requests"`
	Errors   []float64 `json:"errors"`
}

// view returns a pool's series, or the total with pool "".
func (ss *statusSeries) view(pool string) seriesView {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	r := &ss.total
	if pool != "" {
		r = ss.pools[pool]
	}
	v := seriesView{StepMS: statusStep.Milliseconds(), Times: []int64{}, Requests: []float64{}, Errors: []float64{}}
	if r == nil {
		return v
	}
	for i := range r.n {
		p := r.pts[(r.next+len(r.pts)-r.n+i)%len(r.pts)]
		v.Times = append(v.Times, p.t.UnixMilli())
		v.Requests = append(v.Requests, p.requests)
		v.Errors = append(v.Errors, p.errors)
	}
	return v
}

// sum returns the series of the pools in scope added up: the total with
// every pool, else the pools' points summed by sample time (every pool's
// ring gets its points from the same samples).
func (ss *statusSeries) sum(scope statusScope) seriesView {
	if scope.all {
		return ss.view("")
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	type rates struct{ requests, errors float64 }
	byTime := map[int64]*rates{}
	for name, r := range ss.pools {
		if !scope.has(name) {
			continue
		}
		for i := range r.n {
			p := r.pts[(r.next+len(r.pts)-r.n+i)%len(r.pts)]
			t := p.t.UnixMilli()
			if byTime[t] == nil {
				byTime[t] = new(rates)
			}
			byTime[t].requests += p.requests
			byTime[t].errors += p.errors
		}
	}
	times := append([]int64{}, slices.Sorted(maps.Keys(byTime))...)
	times = times[max(len(times)-statusSeriesLen, 0):]
	v := seriesView{StepMS: statusStep.Milliseconds(), Times: times, Requests: make([]float64, len(times)), Errors: make([]float64, len(times))}
	for i, t := range times {
		v.Requests[i], v.Errors[i] = round2(byTime[t].requests), round2(byTime[t].errors)
	}
	return v
}

// sampleLoop samples the counters once per step until ctx is done.
func (s *StatusPage) sampleLoop(ctx context.Context) {
	defer s.wg.Done()
	defer func() {
		if v := recover(); v != nil {
			s.logger.Error("status sampler panicked", zap.Any("panic", v), zap.ByteString("stack", debug.Stack()))
		}
	}()
	s.series.sample(time.Now(), pool.AllWorkers())
	t := time.NewTicker(statusStep)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.series.sample(time.Now(), pool.AllWorkers())
		}
	}
}

// statusUI holds the page and its assets.
//
//go:embed statusui/index.html statusui/status.js statusui/status.css
var statusUI embed.FS

// statusAsset is an embedded asset, ready to serve.
type statusAsset struct {
	body        []byte
	contentType string
	etag        string
}

// statusIndex is the page; statusAssets are its script and style sheet,
// by file name.
var (
	statusIndex  = mustReadStatusUI("index.html")
	statusAssets = map[string]statusAsset{
		"status.js":  newStatusAsset("status.js", "text/javascript; charset=utf-8"),
		"status.css": newStatusAsset("status.css", "text/css; charset=utf-8"),
	}
)

// newStatusAsset loads an embedded asset and computes its ETag.
func newStatusAsset(name, contentType string) statusAsset {
	body := mustReadStatusUI(name)
	sum := sha256.Sum256(body)
	return statusAsset{body: body, contentType: contentType, etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
}

// mustReadStatusUI reads an embedded file; the embed directive guarantees
// it exists, so a failure is a build defect.
func mustReadStatusUI(name string) []byte {
	b, err := statusUI.ReadFile("statusui/" + name)
	if err != nil {
		panic("bifrost: embedded status page file missing: " + name)
	}
	return b
}

// parseStatusCaddyfile sets up the status page from Caddyfile tokens.
func parseStatusCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	s := new(StatusPage)
	if err := s.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return s, nil
}

// UnmarshalCaddyfile sets up the status page from Caddyfile tokens.
// Syntax:
//
//	bifrost_status {
//	    prefix <path>
//	    actions
//	    pools <name...>|*
//	}
//
// Every subdirective is optional; see StatusPage's fields.
func (s *StatusPage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for d.NextBlock(0) {
		sub := d.Val()
		if seen[sub] {
			return d.Errf("%s already specified", sub)
		}
		seen[sub] = true
		switch sub {
		case "prefix":
			if !d.NextArg() {
				return d.ArgErr()
			}
			s.Prefix = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
			if err := s.Validate(); err != nil {
				return d.Err(err.Error())
			}
		case "actions":
			if d.NextArg() {
				return d.ArgErr()
			}
			s.Actions = true
		case "pools":
			s.Pools = d.RemainingArgs()
			if len(s.Pools) == 0 {
				return d.ArgErr()
			}
			if err := s.Validate(); err != nil {
				return d.Err(err.Error())
			}
		default:
			return d.Errf("unrecognized bifrost_status subdirective %s", sub)
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*StatusPage)(nil)
	_ caddy.Validator             = (*StatusPage)(nil)
	_ caddy.CleanerUpper          = (*StatusPage)(nil)
	_ caddyhttp.MiddlewareHandler = (*StatusPage)(nil)
	_ caddyfile.Unmarshaler       = (*StatusPage)(nil)
	_ caddy.Destructor            = (*statusSeries)(nil)
)
