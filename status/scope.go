package status

import (
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/bifrost-proxy/bifrost/pool"
)

// poolSet is the set of pools a page shows.
type poolSet struct {
	all   bool
	pools map[string]bool
}

// has reports whether the pool named pool is in the scope.
func (sc poolSet) has(pool string) bool { return sc.all || sc.pools[pool] }

// scopeOnce is a page's scope, found once.
type scopeOnce struct {
	once sync.Once
	set  poolSet
}

// poolScope returns the pools the page shows, finding them from the
// request's server at the first request when Pools is not set.
func (s *Page) poolScope(r *http.Request) poolSet {
	s.scope.once.Do(func() {
		srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
		pools, found := sitePools(srv, s)
		if !found {
			s.logger.Warn("status page not found in its server's routes; it shows no pool until `pools` names them")
		}
		s.scope.set = poolSet{pools: pools}
	})
	return s.scope.set
}

// sitePools returns the pool names of the bifrost handlers that serve the
// same site as page in srv (see Page.Pools), and whether page was
// found in srv's routes.
func sitePools(srv *caddyhttp.Server, page *Page) (map[string]bool, bool) {
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
	page  *Page
	found bool
	pools []string
	named map[string]bool // named routes walked, so each is walked once
}

// handlers walks a route's handlers and the routes they hold.
func (w *routeWalk) handlers(hs []caddyhttp.MiddlewareHandler) {
	for _, mh := range hs {
		switch h := mh.(type) {
		case *Page:
			w.found = w.found || h == w.page
		case pool.User:
			if name, ok := pool.NameOf(h); ok {
				w.pools = append(w.pools, name)
			}
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
