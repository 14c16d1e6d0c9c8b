package bifrost

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/bifrost-proxy/bifrost/pool"
)

// handlerNames returns the pool names of the bifrost handlers of an
// adapted config, in route order (subroutes included).
func handlerNames(t *testing.T, js []byte) []string {
	t.Helper()
	var names []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if v["handler"] == "bifrost" {
				name, _ := v["name"].(string)
				names = append(names, name)
			}
			for _, k := range []string{"apps", "http", "servers", "routes", "handle", "srv0", "srv1"} {
				if c, ok := v[k]; ok {
					walk(c)
				}
			}
		case []any:
			for _, c := range v {
				walk(c)
			}
		}
	}
	var cfg any
	if err := json.Unmarshal(js, &cfg); err != nil {
		t.Fatal(err)
	}
	walk(cfg)
	slices.Sort(names)
	return names
}

// upstreamsOf returns an upstream pool of the given dial addresses.
func upstreamsOf(dials ...string) reverseproxy.UpstreamPool {
	var ups reverseproxy.UpstreamPool
	for _, d := range dials {
		ups = append(ups, &reverseproxy.Upstream{Dial: d})
	}
	return ups
}

// Without `name`, the Caddyfile names a pool after its site address and
// its directive's matcher; a second pool that would get the same name
// with other upstreams gets its upstreams' hash appended; the same
// Caddyfile always gives the same names; `name` wins. The names are the
// running pools' names.
func TestDefaultPoolNames(t *testing.T) {
	a, b, c := newBackend(t), newBackend(t), newBackend(t)
	caddyfile := fmt.Sprintf(`{
	admin %s
	http_port 9080
	auto_https off
	grace_period 1ns
}
http://127.0.0.1:9080 {
	bifrost /api/* %[2]s
	handle /static/* {
		bifrost %[3]s
	}
	handle {
		bifrost %[4]s
	}
}
:9081 {
	bifrost @all %[2]s {
		name mine
	}
	@all path *
	bifrost %[2]s
}
`, testAdmin, a.addr, b.addr, c.addr)
	js, err := adapt(caddyfile)
	if err != nil {
		t.Fatal(err)
	}
	got := handlerNames(t, js)
	hashC := strings.TrimPrefix(defaultPoolName(upstreamsOf(c.addr), nil), "pool-")
	want := []string{"127.0.0.1-9080-api", "127.0.0.1-9080", "127.0.0.1-9080-" + hashC, "mine", "port-9081"}
	slices.Sort(want)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("pool names %q, want %q", got, want)
	}
	again, err := adapt(caddyfile)
	if err != nil {
		t.Fatal(err)
	}
	if g := handlerNames(t, again); strings.Join(g, " ") != strings.Join(got, " ") {
		t.Fatalf("a second adaptation named the pools %q, the first %q", g, got)
	}
	for _, n := range got {
		if err := checkPoolName(n); err != nil {
			t.Errorf("default name %q: %v", n, err)
		}
	}

	loadJSON(t, js)
	for _, n := range want {
		if pool.Named(n) == nil {
			t.Errorf("no running pool named %q", n)
		}
	}
}

// JSON pool names are checked as the Caddyfile's are: a name with '/',
// '|', a space, ESC or BEL is refused, naming the field.
func TestPoolNameCheckedInJSON(t *testing.T) {
	addr := newBackend(t).addr
	for _, name := range []string{"a/b", "a|b", "a b", "red\x1b[31m", "bell\x07", "rtl\u202eoverride"} {
		jsName, _ := json.Marshal(name)
		js := fmt.Sprintf(`{"admin":{"listen":%q},"apps":{"http":{"servers":{"s":{"listen":[":9080"],"routes":[{"handle":[{"handler":"bifrost","name":%s,"upstreams":[{"dial":%q}]}]}]}}}}}`,
			testAdmin, jsName, addr)
		err := caddy.Load([]byte(js), true)
		if err == nil {
			_ = caddy.Load([]byte(`{"admin":{"listen":"`+testAdmin+`"}}`), true)
			t.Errorf("name %q: config loaded, want it refused", name)
			continue
		}
		if !strings.Contains(err.Error(), "name: ") {
			t.Errorf("name %q: error does not name the field: %v", name, err)
		}
	}
	for _, name := range []string{"team:a", "naïve", "api.v2_blue-1"} {
		h := &Handler{Name: name}
		h.Upstreams = upstreamsOf(addr)
		if _, err := h.resolve(); err != nil {
			t.Errorf("name %q refused: %v", name, err)
		}
	}
}

// Pools `team:a` and `team-a` with the same upstream would give their
// workers the same id: the config is refused, naming both pools.
func TestWorkerIDCollisionRefused(t *testing.T) {
	addr := newBackend(t).addr
	js, err := adapt(fmt.Sprintf(`{
	admin %s
	http_port 9080
	auto_https off
}
:9080 {
	handle /a/* {
		bifrost %[2]s {
			name team:a
		}
	}
	handle {
		bifrost %[2]s {
			name team-a
		}
	}
}
`, testAdmin, addr))
	if err != nil {
		t.Fatal(err)
	}
	err = caddy.Load(js, true)
	if err == nil {
		_ = caddy.Load([]byte(`{"admin":{"listen":"`+testAdmin+`"}}`), true)
		t.Fatal("config with colliding worker ids loaded, want it refused")
	}
	for _, s := range []string{`"team:a"`, `"team-a"`, addr, pool.WorkerID("team-a", addr)} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error does not name %s: %v", s, err)
		}
	}

	// the same pool in two routes is one worker, not a collision
	loadCaddyfile(t, fmt.Sprintf(`:9080 {
	handle /a/* {
		bifrost %[1]s {
			name team-a
		}
	}
	handle {
		bifrost %[1]s {
			name team-a
		}
	}
}
`, addr))
}
