package bifrost

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// FuzzCaddyfile feeds arbitrary subdirectives to the bifrost block: the
// parser must never panic or hang, and a rejection must name its line.
func FuzzCaddyfile(f *testing.F) {
	for _, seed := range []string{
		"breaker {\n failures 3\n timeout 10s\n}",
		"retry {\n attempts 2\n backoff 10ms 1s\n on 5xx connect_failure\n hedge auto max 2\n}",
		"health {\n uri /health\n expect_status 2xx\n}",
		"isolation {\n max_percent 50%\n success_rate 20 1.5\n}",
		"classify {\n status 5xx http retry\n}",
		"fallback {\n status 503\n body \"down\"\n header X y\n}",
		"lb_retries 2\nmax_fails 3\nunhealthy_status 5",
		"header_up X-A {host}\ntransport http {\n dial_timeout 1s\n}",
		"breaker {\n failure_ratio 0.5 min",
		"}}}{{{",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, block string) {
		cfg := ":8080 {\n\tbifrost 127.0.0.1:9001 {\n" + block + "\n\t}\n}\n"
		js, err := adapt(cfg)
		if err != nil {
			// Input that Caddy's own lexer rejects (an open heredoc or
			// quote), or whose braces close the bifrost directive or the
			// site early, never reaches our parser: Caddy reports it in
			// its own words. Everything else was rejected by a directive
			// parser and must say where.
			if intactDirective(cfg) && !strings.Contains(err.Error(), "Caddyfile:") {
				t.Fatalf("error without a position: %v", err)
			}
			return
		}
		// whatever the adapter accepts must decode into the handler
		var c struct {
			Apps struct {
				HTTP struct {
					Servers map[string]struct {
						Routes []struct {
							Handle []json.RawMessage `json:"handle"`
						} `json:"routes"`
					} `json:"servers"`
				} `json:"http"`
			} `json:"apps"`
		}
		if err := json.Unmarshal(js, &c); err != nil {
			t.Fatalf("adapted JSON does not decode: %v", err)
		}
	})
}

// FuzzHandlerJSON decodes arbitrary JSON into the handler and validates
// it: no panic, and a rejection is an error, never a crash later.
func FuzzHandlerJSON(f *testing.F) {
	for _, seed := range []string{
		`{"upstreams":[{"dial":"127.0.0.1:1"}]}`,
		`{"upstreams":[{"dial":"a:1"},{"dial":"a:1"}]}`,
		`{"upstreams":[{"dial":"a:1"}],"breaker":{"failure_ratio":1.5}}`,
		`{"upstreams":[{"dial":"a:1"}],"retry":{"attempts":-1,"jitter":2,"hedge":{"percentile":101}}}`,
		`{"upstreams":[{"dial":"a:1"}],"classify":[{"status":"9xx","kind":"x"}]}`,
		`{"upstreams":[{"dial":"a:1"}],"isolation":{"max_percent":-3}}`,
		`{"upstreams":[null]}`,
		`{}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var h Handler
		if err := json.Unmarshal(data, &h); err != nil {
			return
		}
		r, err := h.resolve()
		if err != nil {
			return
		}
		// an accepted config gives every package complete settings
		if err := r.retry.policy.Validate(); err != nil {
			t.Fatalf("accepted config gives an incomplete retry policy: %v", err)
		}
		if err := r.isolation.monitor.Validate(); err != nil {
			t.Fatalf("accepted config gives incomplete isolation settings: %v", err)
		}
	})
}

// FuzzAdmin sends arbitrary methods, paths, queries and bodies to the
// admin routes of a running config: every answer is a success or a 4xx
// APIError with a message, never a panic.
func FuzzAdmin(f *testing.F) {
	for _, seed := range []struct{ method, target, body string }{
		{"GET", "/bifrost/workers", ""},
		{"GET", "/bifrost/workers/fuzz_127.0.0.1-1", ""},
		{"POST", "/bifrost/workers/fuzz_127.0.0.1-1/isolate?duration=10ms", `{"reason":"x"}`},
		{"POST", "/bifrost/workers/fuzz_127.0.0.1-1/restore", ""},
		{"GET", "/bifrost/errors?limit=5&severity=low&kind=http", ""},
		{"DELETE", "/bifrost/stats", ""},
		{"GET", "/bifrost//workers///", ""},
	} {
		f.Add(seed.method, seed.target, seed.body)
	}
	// One config serves every input (each fuzzing process loads its own);
	// operator actions log and emit events through its pool.
	loadJSON(f, []byte(`{"admin":{"listen":"`+testAdmin+`"},"apps":{"http":{"servers":{"s":{"listen":["127.0.0.1:9080"],
		"routes":[{"handle":[{"handler":"bifrost","name":"fuzz","upstreams":[{"dial":"127.0.0.1:1"}]}]}]}}}}}`))
	api := new(adminAPI)
	f.Fuzz(func(t *testing.T, method, target, body string) {
		if !validMethod(method) || !strings.HasPrefix(target, "/") {
			return
		}
		req, err := http.NewRequest(method, "http://localhost:2999"+target, strings.NewReader(body))
		if err != nil {
			return
		}
		rec := httptest.NewRecorder()
		err = api.handle(rec, req)
		if err == nil {
			return
		}
		ae, ok := err.(caddy.APIError)
		if !ok || ae.HTTPStatus < 400 || ae.HTTPStatus > 499 || ae.Err == nil || ae.Err.Error() == "" {
			t.Fatalf("%s %s: %#v", method, target, err)
		}
	})
}

// validMethod reports whether m is a token net/http accepts as a method.
func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for _, r := range m {
		if r <= ' ' || r >= 0x7f || strings.ContainsRune("()<>@,;:\\\"/[]?={}", r) {
			return false
		}
	}
	return true
}

// intactDirective reports whether Caddy's parser reads cfg as the one site
// ":8080" holding one directive, bifrost: only then does an adapt error come
// from a directive's parser rather than from Caddy's lexer or site parser.
func intactDirective(cfg string) bool {
	blocks, err := caddyfile.Parse("Caddyfile", []byte(cfg))
	if err != nil || len(blocks) != 1 {
		return false
	}
	b := blocks[0]
	return len(b.Keys) == 1 && b.Keys[0].Text == ":8080" &&
		len(b.Segments) == 1 && b.Segments[0].Directive() == "bifrost"
}
