package status

import "strings"

// route is what a request to the status page asks for.
type route int

const (
	routeNone     route = iota // outside Prefix: for the next handler
	routePage                  // the HTML page
	routeRedirect              // the page, without its trailing slash
	routeAsset                 // an embedded asset
	routeState                 // the JSON feed
	routeAction                // an operator action
	routeNotFound              // under the API or assets, but no such thing
)

// target is a routed request: the route and its parameters.
type target struct {
	route  route
	asset  string // routeAsset: the file name
	worker string // routeAction: the worker id
	action string // routeAction: isolate, restore or reset
}

// routePath maps a request path to what it asks for. With a prefix,
// the path must be the prefix or lie under it, and the rest is matched
// exactly; without, the mount point is derived from the path's end (see
// Page).
func routePath(prefix, path string) target {
	if prefix != "" {
		if path == prefix {
			return target{route: routeRedirect}
		}
		rest, ok := strings.CutPrefix(path, prefix+"/")
		if !ok {
			return target{route: routeNone}
		}
		if rest == "" {
			return target{route: routePage}
		}
		if t, ok := routeSuffix(strings.Split(rest, "/"), true); ok {
			return t
		}
		return target{route: routeNotFound}
	}
	if t, ok := routeSuffix(strings.Split(path, "/"), false); ok {
		return t
	}
	if path == "" || strings.HasSuffix(path, "/") {
		return target{route: routePage}
	}
	return target{route: routeRedirect}
}

// routeSuffix recognizes the feed, action and asset paths in segs, the
// segments of a path, and reports whether it found one. When exact, segs
// is the path below the mount point; otherwise the mount point is what
// precedes the last "api" segment followed by "state" or "workers", or
// the "assets" segment before the last one.
func routeSuffix(segs []string, exact bool) (target, bool) {
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
			return target{route: routeState}, true
		case len(rest) == 3 && rest[0] == "workers" && rest[1] != "" && rest[2] != "":
			return target{route: routeAction, worker: rest[1], action: rest[2]}, true
		}
		return target{route: routeNotFound}, true
	}
	isAsset := n >= 2 && segs[n-2] == "assets" && segs[n-1] != ""
	if exact {
		isAsset = isAsset && n == 2
	}
	if isAsset {
		if _, ok := assets[segs[n-1]]; ok {
			return target{route: routeAsset, asset: segs[n-1]}, true
		}
		return target{route: routeNotFound}, true
	}
	return target{}, false
}
