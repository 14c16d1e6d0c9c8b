package status

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Page{})
	httpcaddyfile.RegisterHandlerDirective("bifrost_status", parseCaddyfile)
	// Ordered right after `metrics`, the last standard directive before
	// `reverse_proxy`, so it lands before `bifrost` (which is ordered
	// before `reverse_proxy`) whichever init runs first: a site can mount
	// the page with a matcher next to a catch-all `bifrost`. The third
	// argument must be a standard directive; naming `bifrost` panics.
	httpcaddyfile.RegisterDirectiveOrder("bifrost_status", httpcaddyfile.After, "metrics")
}

// Page serves Bifrost's status page: one HTML page that shows the
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
type Page struct {
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

	logger *zap.Logger
	series *series
	held   bool // whether Provision acquired the series from seriesPool
	cancel context.CancelFunc
	wg     *sync.WaitGroup // the sampler; a pointer, the module is copied by value in CaddyModule
	scope  *scopeOnce
}

// CaddyModule returns the Caddy module information.
func (Page) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.bifrost_status",
		New: func() caddy.Module { return new(Page) },
	}
}

// Provision sets up the page and starts its time-series sampler.
func (s *Page) Provision(ctx caddy.Context) error {
	s.logger = ctx.Logger()
	s.Prefix = strings.TrimSuffix(s.Prefix, "/")
	s.scope = new(scopeOnce)
	if len(s.Pools) > 0 {
		sc := poolSet{pools: map[string]bool{}}
		for _, name := range s.Pools {
			sc.all = sc.all || name == "*"
			sc.pools[name] = true
		}
		s.scope.once.Do(func() { s.scope.set = sc })
	}

	v, _, err := seriesPool.LoadOrNew(seriesKey, func() (caddy.Destructor, error) {
		return newSeries(), nil
	})
	if err != nil {
		return err
	}
	s.held = true
	s.series = v.(*series)

	// last, the sampler, bound to a context that Cleanup cancels
	bg, cancel := context.WithCancel(ctx)
	s.cancel = cancel
	s.wg = new(sync.WaitGroup)
	s.wg.Add(1)
	go s.sampleLoop(bg)
	return nil
}

// Validate checks the configuration.
func (s *Page) Validate() error {
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

// Cleanup stops the sampler and releases the shared time series. It is
// safe after a partial Provision.
func (s *Page) Cleanup() error {
	if s.cancel != nil {
		s.cancel()
	}
	if s.wg != nil {
		s.wg.Wait()
	}
	if s.held {
		s.held = false
		if _, err := seriesPool.Delete(seriesKey); err != nil {
			return err
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Page)(nil)
	_ caddy.Validator             = (*Page)(nil)
	_ caddy.CleanerUpper          = (*Page)(nil)
	_ caddyhttp.MiddlewareHandler = (*Page)(nil)
	_ caddyfile.Unmarshaler       = (*Page)(nil)
)
