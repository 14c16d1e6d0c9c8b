package status

import (
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func TestRouteHosts(t *testing.T) {
	ab, b := caddyhttp.MatchHost{"B.example", "a.example"}, caddyhttp.MatchHost{"b.example"}
	for _, tc := range []struct {
		name string
		sets caddyhttp.MatcherSets
		want string
	}{
		{"no matcher", nil, ""},
		{"a path only", caddyhttp.MatcherSets{{caddyhttp.MatchPath{"/x"}}}, ""},
		{"hosts, sorted and lower case", caddyhttp.MatcherSets{{&ab, caddyhttp.MatchPath{"/x"}}}, "a.example,b.example"},
		{"hosts over sets, once each", caddyhttp.MatcherSets{{&ab}, {b}}, "a.example,b.example"},
		{"a set without a host matches any host", caddyhttp.MatcherSets{{&ab}, {caddyhttp.MatchPath{"/x"}}}, ""},
	} {
		if got := routeHosts(tc.sets); got != tc.want {
			t.Errorf("%s: routeHosts = %q, want %q", tc.name, got, tc.want)
		}
	}
}
