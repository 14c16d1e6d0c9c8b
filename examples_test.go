package bifrost

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// The examples are what people copy. Each one adapts, the production
// JSON is the adaptation of its Caddyfile, and none of them, on a server
// that listens beyond loopback, tells clients which upstream answered or
// offers the status page's operator actions without authentication.
func TestExamples(t *testing.T) {
	files, err := filepath.Glob("examples/*/Caddyfile")
	if err != nil || len(files) == 0 {
		t.Fatalf("no example Caddyfiles found (%v)", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(filepath.Dir(file)), func(t *testing.T) {
			src, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			js, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(src, map[string]any{"filename": file})
			if err != nil {
				t.Fatalf("adapting %s: %v", file, err)
			}
			var cfg map[string]any
			if err := json.Unmarshal(js, &cfg); err != nil {
				t.Fatal(err)
			}
			checkExampleServers(t, file, cfg)

			jsonFile := filepath.Join(filepath.Dir(file), "caddy.json")
			raw, err := os.ReadFile(jsonFile)
			if os.IsNotExist(err) {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var want map[string]any
			if err := json.Unmarshal(raw, &want); err != nil {
				t.Fatalf("%s: %v", jsonFile, err)
			}
			if !reflect.DeepEqual(cfg, want) {
				t.Errorf("%s is not the adaptation of %s; regenerate it with `caddy adapt --pretty`:\n%s", jsonFile, file, js)
			}
			checkExampleServers(t, jsonFile, want)
		})
	}
}

// checkExampleServers checks every HTTP server of an example config.
func checkExampleServers(t *testing.T, file string, cfg map[string]any) {
	t.Helper()
	apps, _ := cfg["apps"].(map[string]any)
	httpApp, _ := apps["http"].(map[string]any)
	servers, _ := httpApp["servers"].(map[string]any)
	if len(servers) == 0 {
		t.Fatalf("%s: no HTTP servers", file)
	}
	for name, v := range servers {
		srv, _ := v.(map[string]any)
		if loopbackOnly(srv["listen"]) {
			continue // a local demo may show its internals
		}
		for _, p := range exampleProblems(srv, false) {
			t.Errorf("%s: server %s (listening beyond loopback): %s", file, name, p)
		}
	}
}

// loopbackOnly reports whether every listen address is a loopback IP.
func loopbackOnly(listen any) bool {
	addrs, _ := listen.([]any)
	if len(addrs) == 0 {
		return false
	}
	for _, a := range addrs {
		s, _ := a.(string)
		host, _, err := net.SplitHostPort(strings.TrimPrefix(s, "tcp/"))
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			return false
		}
	}
	return true
}

// exampleProblems walks a piece of server config and lists response
// headers that carry which worker or upstream answered, and status pages
// with actions that no earlier authentication handler of their route
// protects. authed tells whether an enclosing route authenticates.
func exampleProblems(v any, authed bool) []string {
	var out []string
	switch v := v.(type) {
	case []any:
		for _, e := range v {
			out = append(out, exampleProblems(e, authed)...)
		}
	case map[string]any:
		switch v["handler"] {
		case "bifrost_status":
			if v["actions"] == true && !authed {
				out = append(out, "status page with actions and no authentication before it")
			}
		case "headers":
			b, _ := json.Marshal(v["response"])
			if s := string(b); strings.Contains(s, "{http.bifrost.worker}") || strings.Contains(s, "{http.reverse_proxy.upstream.") {
				out = append(out, "response header names the upstream: "+s)
			}
		}
		for k, e := range v {
			if k != "handle" {
				out = append(out, exampleProblems(e, authed)...)
				continue
			}
			// a route's handlers run in order: those after an
			// authentication handler are protected by it
			hs, _ := e.([]any)
			a := authed
			for _, h := range hs {
				out = append(out, exampleProblems(h, a)...)
				if m, _ := h.(map[string]any); m["handler"] == "authentication" {
					a = true
				}
			}
		}
	}
	return out
}
