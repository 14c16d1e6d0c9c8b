package status

import "testing"

func TestRoutePath(t *testing.T) {
	for _, tc := range []struct {
		prefix, path string
		want         target
	}{
		// derived mount point
		{"", "/", target{route: routePage}},
		{"", "", target{route: routePage}},
		{"", "/bifrost/", target{route: routePage}},
		{"", "/a/b/c/", target{route: routePage}},
		{"", "/bifrost", target{route: routeRedirect}},
		{"", "/bifrost/api/state", target{route: routeState}},
		{"", "/api/state", target{route: routeState}},
		{"", "/api/status/api/state", target{route: routeState}},
		{"", "/api/status/", target{route: routePage}},
		{"", "/s/api/workers/p_127.0.0.1-80/isolate", target{route: routeAction, worker: "p_127.0.0.1-80", action: "isolate"}},
		{"", "/s/api/workers/x/restore", target{route: routeAction, worker: "x", action: "restore"}},
		{"", "/s/api/workers/x", target{route: routeNotFound}},
		{"", "/s/api/workers//reset", target{route: routeNotFound}},
		{"", "/s/api/state/extra", target{route: routeNotFound}},
		{"", "/s/assets/status.js", target{route: routeAsset, asset: "status.js"}},
		{"", "/s/assets/status.css", target{route: routeAsset, asset: "status.css"}},
		{"", "/s/assets/other.js", target{route: routeNotFound}},
		{"", "/s/assets/", target{route: routePage}},
		// explicit prefix
		{"/status", "/status", target{route: routeRedirect}},
		{"/status", "/status/", target{route: routePage}},
		{"/status", "/status/api/state", target{route: routeState}},
		{"/status", "/status/api/workers/x/reset", target{route: routeAction, worker: "x", action: "reset"}},
		{"/status", "/status/assets/status.js", target{route: routeAsset, asset: "status.js"}},
		{"/status", "/status/x/api/state", target{route: routeNotFound}},
		{"/status", "/status/x/assets/status.js", target{route: routeNotFound}},
		{"/status", "/status/api/nope", target{route: routeNotFound}},
		{"/status", "/status/index.html", target{route: routeNotFound}},
		{"/status", "/statusx", target{route: routeNone}},
		{"/status", "/other/api/state", target{route: routeNone}},
	} {
		if got := routePath(tc.prefix, tc.path); got != tc.want {
			t.Errorf("routePath(%q, %q) = %+v, want %+v", tc.prefix, tc.path, got, tc.want)
		}
	}
}
