package bifrost

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Every reverse_proxy JSON field that Bifrost replaces lands on its
// equivalent, and is cleared: nothing is silently ignored.
func TestAdoptReverseProxyFields(t *testing.T) {
	var h Handler
	in := `{
		"upstreams": [{"dial": "127.0.0.1:1"}],
		"load_balancing": {"retries": 2, "try_duration": "3s", "try_interval": "100ms",
			"retry_match": [{"path": ["/idempotent/*"]}],
			"selection_policy": {"policy": "round_robin"}},
		"health_checks": {
			"active": {"path": "/hc", "port": 8081, "headers": {"X-Probe": ["1"]}, "method": "HEAD",
				"body": "ping", "follow_redirects": true, "interval": "2s", "timeout": "1s",
				"passes": 2, "fails": 4, "max_size": 1024, "expect_status": 204, "expect_body": "ok"},
			"passive": {"max_fails": 7, "fail_duration": "20s", "unhealthy_status": [500, 503],
				"unhealthy_request_count": 50}
		},
		"request_buffers": 4096
	}`
	// request_buffers applies to each try as it is: not mapped
	if err := json.Unmarshal([]byte(in), &h); err != nil {
		t.Fatal(err)
	}
	if err := h.adoptReverseProxyFields(); err != nil {
		t.Fatal(err)
	}
	wantRetry := &RetryConfig{Attempts: 3, TryDuration: caddy.Duration(3 * time.Second),
		BackoffInitial: caddy.Duration(100 * time.Millisecond),
		MatchRaw:       caddyhttp.RawMatcherSets{{"path": json.RawMessage(`["/idempotent/*"]`)}}}
	if !reflect.DeepEqual(h.Retry, wantRetry) {
		t.Errorf("retry = %+v\nwant %+v", h.Retry, wantRetry)
	}
	wantHealth := &HealthConfig{URI: "/hc", Port: 8081, Headers: http.Header{"X-Probe": {"1"}}, Method: "HEAD",
		Body: "ping", FollowRedirects: true, Interval: caddy.Duration(2 * time.Second),
		Timeout: caddy.Duration(time.Second), Passes: 2, Fails: 4, MaxSize: 1024, ExpectStatus: 204, ExpectBody: "ok"}
	if !reflect.DeepEqual(h.Health, wantHealth) {
		t.Errorf("health = %+v\nwant %+v", h.Health, wantHealth)
	}
	if want := (&BreakerConfig{Failures: 7, Window: caddy.Duration(20 * time.Second)}); !reflect.DeepEqual(h.Breaker, want) {
		t.Errorf("breaker = %+v, want %+v", h.Breaker, want)
	}
	if want := []ClassifyRule{{Status: "500", Kind: "http"}, {Status: "503", Kind: "http"}}; !reflect.DeepEqual(h.Classify, want) {
		t.Errorf("classify = %+v, want %+v", h.Classify, want)
	}
	if h.MaxRequests != 50 {
		t.Errorf("max_requests = %d, want 50", h.MaxRequests)
	}
	lb := h.LoadBalancing
	if h.RequestBuffers != 4096 {
		t.Errorf("request_buffers = %d, want it kept for the workers", h.RequestBuffers)
	}
	if h.HealthChecks != nil || lb.Retries != 0 || lb.TryDuration != 0 ||
		lb.TryInterval != 0 || lb.RetryMatchRaw != nil || lb.SelectionPolicyRaw == nil {
		t.Errorf("mapped reverse_proxy fields not cleared, or the selection policy lost: %+v %+v", lb, h.HealthChecks)
	}
	if _, err := h.resolve(); err != nil {
		t.Errorf("the mapped config is refused: %v", err)
	}
}

// A reverse_proxy field and its Bifrost equivalent both set, or a field
// without an equivalent, is refused at load with the field names.
func TestAdoptReverseProxyFieldsRefusals(t *testing.T) {
	cases := []struct{ name, handler, want string }{
		{"retries twice", `"load_balancing":{"retries":2},"retry":{"attempts":2}`, "load_balancing.retries and retry.attempts are both set: keep retry.attempts"},
		{"try_duration twice", `"load_balancing":{"try_duration":"1s"},"retry":{"try_duration":"2s"}`, "keep retry.try_duration"},
		{"try_interval twice", `"load_balancing":{"try_interval":"1s"},"retry":{"backoff_initial":"2s"}`, "keep retry.backoff_initial"},
		{"retry_match twice", `"load_balancing":{"retry_match":[{"method":["POST"]}]},"retry":{"match":[{"method":["PUT"]}]}`, "keep retry.match"},
		{"active and health", `"health_checks":{"active":{"uri":"/h"}},"health":{"uri":"/h"}`, "health_checks.active and health are both set: keep health"},
		{"max_fails twice", `"health_checks":{"passive":{"max_fails":2}},"breaker":{"failures":3}`, "keep breaker.failures"},
		{"fail_duration twice", `"health_checks":{"passive":{"fail_duration":"1s"}},"breaker":{"window":"2s"}`, "keep breaker.window"},
		{"request count twice", `"health_checks":{"passive":{"unhealthy_request_count":2}},"max_requests":3`, "keep max_requests"},
		{"unhealthy_latency", `"health_checks":{"passive":{"fail_duration":"10s","unhealthy_latency":"1s"}}`, "health_checks.passive.unhealthy_latency: not supported by bifrost; use retry.per_try_timeout"},
		{"duplicate disagrees", `"upstreams":[{"dial":"127.0.0.1:1"},{"dial":"127.0.0.1:1","max_requests":3}]`, "upstreams[1]: 127.0.0.1:1 is listed again with another max_requests than upstreams[0]"},
		{"bad retry_match", `"load_balancing":{"retry_match":[{"nosuchmatcher":{}}]}`, "retry: loading match"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			handler := `{"handler":"bifrost","upstreams":[{"dial":"127.0.0.1:1"}],` + tc.handler + `}`
			if strings.Contains(tc.handler, `"upstreams"`) {
				handler = `{"handler":"bifrost",` + tc.handler + `}`
			}
			cfg := `{"apps":{"http":{"servers":{"s":{"listen":["127.0.0.1:0"],"routes":[{"handle":[` + handler + `]}]}}}}}`
			var c caddy.Config
			if err := json.Unmarshal([]byte(cfg), &c); err != nil {
				t.Fatal(err)
			}
			err := caddy.Validate(&c)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// A reverse_proxy JSON handler renamed to bifrost keeps its meaning:
// load_balancing.retries bounds the tries, retry_match scopes them, and
// health_checks.active probes as configured.
func TestReverseProxyJSONBehaves(t *testing.T) {
	ups := []*backend{newBackend(t), newBackend(t), newBackend(t)}
	for _, b := range ups {
		b.set(status(http.StatusServiceUnavailable, "busy"))
	}
	tries := func(id string) int {
		n := 0
		for _, b := range ups {
			n += b.executions(id)
		}
		return n
	}
	hp := newProbeServer(t)
	loadJSON(t, []byte(fmt.Sprintf(`{
		"admin": {"listen": %q},
		"apps": {"http": {"servers": {"s": {"listen": [":9080"], "routes": [{"handle": [{
			"handler": "bifrost",
			"name": "rpjson",
			"upstreams": [{"dial": %q}, {"dial": %q}, {"dial": %q}],
			"load_balancing": {"selection_policy": {"policy": "first"}, "retries": 1,
				"retry_match": [{"path": ["/idempotent/*"]}]},
			"health_checks": {
				"active": {"uri": "/hc", "port": %d, "method": "OPTIONS", "headers": {"X-Probe": ["yes"]}, "interval": "100ms"},
				"passive": {"max_fails": 1000}
			}
		}]}]}}}}
	}`, testAdmin, ups[0].addr, ups[1].addr, ups[2].addr, hp.port)))

	// two tries (retries 1), not bifrost's default three
	code, _, _ := do(t, http.MethodGet, testSite+"/idempotent/x", nil, "X-Request-Id", "j1")
	if code != http.StatusServiceUnavailable || tries("j1") != 2 {
		t.Fatalf("got %d after %d tries; want the held 503 after two tries (load_balancing.retries 1)", code, tries("j1"))
	}
	// outside retry_match: one try
	code, _, _ = do(t, http.MethodGet, testSite+"/other", nil, "X-Request-Id", "j2")
	if code != http.StatusServiceUnavailable || tries("j2") != 1 {
		t.Fatalf("GET /other: got %d after %d tries; want one try (outside retry_match)", code, tries("j2"))
	}
	eventually(t, 10*time.Second, "a probe as health_checks.active says", func() bool {
		for _, s := range hp.requests() {
			if s.method == http.MethodOptions && s.path == "/hc" && s.header.Get("X-Probe") == "yes" {
				return true
			}
		}
		return false
	})
}

// An upstream listed twice is one worker with two shares of a positional
// policy's traffic, as in reverse_proxy.
func TestDuplicateUpstreamsWeigh(t *testing.T) {
	a, b := newBackend(t), newBackend(t)
	h := loadHandler(t, siteConfig([]string{a.addr, a.addr, b.addr}, `
		name dup
		lb_policy round_robin`))
	if len(h.workers) != 2 || len(h.upstreams) != 3 {
		t.Fatalf("%d workers over %d listings; want 2 workers, 3 listings", len(h.workers), len(h.upstreams))
	}
	for range 30 {
		if code, body := get(t, "/"); code != http.StatusOK {
			t.Fatalf("got %d %q", code, body)
		}
	}
	if a.hits.Load() != 20 || b.hits.Load() != 10 {
		t.Fatalf("a served %d, b %d; want 20 and 10 (a listed twice)", a.hits.Load(), b.hits.Load())
	}
	var workers []map[string]any
	adminJSON(t, http.MethodGet, "/bifrost/workers", &workers)
	n := 0
	for _, w := range workers {
		if w["pool"] == "dup" {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("admin API lists %d workers of the pool, want 2", n)
	}
}

// request_buffers applies to each try as in reverse_proxy, and a retry,
// which reads the body from Bifrost's copy, sends the same bytes: an inner
// request_buffers does not drain the body and leave the next worker an
// empty one, whether the body fits in its buffer or not.
func TestRequestBuffersApplyToEachTry(t *testing.T) {
	type seen struct {
		length int64
		body   string
	}
	got := make(chan seen, 8)
	record := func(code int) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			got <- seen{r.ContentLength, string(b)}
			w.WriteHeader(code)
		}
	}
	bad, good := rawBackend(t, record(http.StatusServiceUnavailable)), rawBackend(t, record(http.StatusOK))
	loadCaddyfile(t, siteConfig([]string{bad, good}, `
		name buffers
		lb_policy first
		max_fails 1000
		request_buffers 16
		retry {
			methods PUT
		}`))

	for _, c := range []struct{ body string }{{"0123456789"}, {strings.Repeat("x", 32)}} {
		// a reader without a length: the client streams it chunked
		if code, _, _ := doStream(t, http.MethodPut, testSite+"/", io.MultiReader(strings.NewReader(c.body))); code != http.StatusOK {
			t.Fatalf("%d-byte PUT: got %d, want the second worker's 200", len(c.body), code)
		}
		for i := range 2 {
			s := <-got
			if s.body != c.body {
				t.Fatalf("%d-byte PUT, try %d: upstream saw %d bytes %q (length %d); want the body",
					len(c.body), i+1, len(s.body), s.body, s.length)
			}
		}
	}
}
