package bifrost

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/bifrost-proxy/bifrost/pool"
)

// The directive is ordered before bifrost: a matcher-scoped status page
// next to a catch-all bifrost gets its requests.
func TestStatusCaddyfileOrder(t *testing.T) {
	js, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(`:9080 {
	bifrost 127.0.0.1:1
	bifrost_status /status/* {
		actions
	}
}`), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatal(err)
	}
	s := string(js)
	page, proxy := strings.Index(s, `"handler":"bifrost_status"`), strings.Index(s, `"handler":"bifrost"`)
	if page < 0 || proxy < 0 || page > proxy {
		t.Fatalf("bifrost_status is not ordered before bifrost:\n%s", js)
	}
	if !strings.Contains(s, `"actions":true`) {
		t.Fatalf("actions lost in adaptation:\n%s", js)
	}

}

// statusFeedJSON is the part of the feed the tests read.
type statusFeedJSON struct {
	Now       time.Time `json:"now"`
	Actions   bool      `json:"actions"`
	RefreshMS int64     `json:"refresh_ms"`
	Stats     struct {
		TotalErrors  uint64            `json:"total_errors"`
		BySeverity   map[string]uint64 `json:"by_severity"`
		ByKind       map[string]uint64 `json:"by_kind"`
		TotalWorkers int               `json:"total_workers"`
	} `json:"stats"`
	Pools []struct {
		Name    string             `json:"name"`
		Workers []statusWorkerJSON `json:"workers"`
		Series  seriesJSON         `json:"series"`
	} `json:"pools"`
	Series seriesJSON `json:"series"`
	Errors []struct {
		Time     time.Time `json:"time"`
		Kind     string    `json:"kind"`
		Severity string    `json:"severity"`
		Worker   string    `json:"worker"`
		Message  string    `json:"message"`
	} `json:"errors"`
}

type statusWorkerJSON struct {
	ID              string  `json:"id"`
	Upstream        string  `json:"upstream"`
	Healthy         bool    `json:"healthy"`
	Isolated        bool    `json:"isolated"`
	IsolationReason string  `json:"isolation_reason"`
	IsolationLeftMS int64   `json:"isolation_left_ms"`
	Status          string  `json:"status"`
	StatusText      string  `json:"status_text"`
	Requests        uint64  `json:"requests"`
	RequestRate     float64 `json:"request_rate"`
	Breaker         struct {
		State  string         `json:"state"`
		Counts map[string]int `json:"counts"`
	} `json:"breaker"`
}

type seriesJSON struct {
	StepMS   int64     `json:"step_ms"`
	Times    []int64   `json:"t"`
	Requests []float64 `json:"requests"`
	Errors   []float64 `json:"errors"`
}

// statusState fetches and decodes the feed at path.
func statusState(t *testing.T, path string) statusFeedJSON {
	t.Helper()
	code, body, hdr := do(t, http.MethodGet, testSite+path, nil)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, code, body)
	}
	if ct := hdr.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("GET %s: content type %q", path, ct)
	}
	var f statusFeedJSON
	if err := json.Unmarshal([]byte(body), &f); err != nil {
		t.Fatalf("GET %s: %v: %s", path, err, body)
	}
	return f
}

// statusWorkerOf finds a worker in a feed.
func statusWorkerOf(t *testing.T, f statusFeedJSON, pool, id string) statusWorkerJSON {
	t.Helper()
	for _, p := range f.Pools {
		if p.Name != pool {
			continue
		}
		for _, w := range p.Workers {
			if w.ID == id {
				return w
			}
		}
	}
	t.Fatalf("worker %s of pool %s not in the feed", id, pool)
	return statusWorkerJSON{}
}

// assertStatusHeaders checks the headers every status page answer has.
func assertStatusHeaders(t *testing.T, what string, hdr http.Header) {
	t.Helper()
	if got := hdr.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("%s: X-Content-Type-Options %q", what, got)
	}
	if csp := hdr.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") ||
		!strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") ||
		strings.Contains(csp, "unsafe") {
		t.Errorf("%s: Content-Security-Policy %q", what, csp)
	}
}

// assertJSONError checks a JSON error answer.
func assertJSONError(t *testing.T, what string, code, wantCode int, body string, hdr http.Header, wantMsg string) {
	t.Helper()
	if code != wantCode {
		t.Fatalf("%s: status %d, want %d (%s)", what, code, wantCode, body)
	}
	if ct := hdr.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: content type %q", what, ct)
	}
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil || !strings.Contains(e.Error, wantMsg) {
		t.Errorf("%s: body %s, want a JSON error containing %q", what, body, wantMsg)
	}
	assertStatusHeaders(t, what, hdr)
}

// The status page served by real Caddy in front of real bifrost workers:
// content types, caching, methods, the feed, and operator actions with
// their same-origin check.
func TestStatusHandler(t *testing.T) {
	a, b, c := newBackend(t), newBackend(t), newBackend(t)
	for _, be := range []*backend{a, b, c} {
		be.set(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/fail" {
				w.WriteHeader(http.StatusInternalServerError)
				return
			}
			_, _ = io.WriteString(w, "ok")
		})
	}
	loadCaddyfile(t, fmt.Sprintf(`:9080 {
	handle /ro/* {
		bifrost_status
	}
	handle /rw* {
		bifrost_status {
			actions
		}
	}
	handle_path /hp/* {
		bifrost_status
	}
	handle /px* {
		route {
			bifrost_status {
				prefix /px
			}
			respond "passed on" 200
		}
	}
	handle {
		bifrost %s %s %s {
			name statustest
			breaker {
				failures 1000
			}
		}
	}
}
`, a.addr, b.addr, c.addr))
	idB := pool.WorkerID("statustest", b.addr)
	origin := []string{"Origin", testSite}

	t.Run("page", func(t *testing.T) {
		for _, path := range []string{"/ro/", "/rw/", "/hp/", "/px/", "/rw/any/depth/"} {
			code, body, hdr := do(t, http.MethodGet, testSite+path, nil)
			if code != http.StatusOK || !strings.Contains(body, `<script src="assets/status.js" defer></script>`) {
				t.Fatalf("GET %s: %d %.200s", path, code, body)
			}
			if ct := hdr.Get("Content-Type"); ct != "text/html; charset=utf-8" {
				t.Errorf("GET %s: content type %q", path, ct)
			}
			if cc := hdr.Get("Cache-Control"); cc != "no-store" {
				t.Errorf("GET %s: Cache-Control %q", path, cc)
			}
			assertStatusHeaders(t, "GET "+path, hdr)
		}
		code, body, hdr := do(t, http.MethodHead, testSite+"/ro/", nil)
		if code != http.StatusOK || body != "" || hdr.Get("Content-Type") != "text/html; charset=utf-8" {
			t.Errorf("HEAD /ro/: %d %q %v", code, body, hdr)
		}
		for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
			code, body, hdr := do(t, m, testSite+"/ro/", nil, origin...)
			assertJSONError(t, m+" /ro/", code, http.StatusMethodNotAllowed, body, hdr, "not allowed")
			if allow := hdr.Get("Allow"); allow != "GET, HEAD" {
				t.Errorf("%s /ro/: Allow %q", m, allow)
			}
		}
	})

	t.Run("redirect to the trailing slash", func(t *testing.T) {
		noFollow := &http.Client{
			Timeout:       5 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
		for path, want := range map[string]string{"/rw": "./rw/", "/rw?x=1": "./rw/?x=1", "/px": "./px/"} {
			resp, err := noFollow.Get(testSite + path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != want {
				t.Errorf("GET %s: %d Location %q, want 301 %q", path, resp.StatusCode, resp.Header.Get("Location"), want)
			}
		}
	})

	t.Run("assets", func(t *testing.T) {
		for path, ct := range map[string]string{
			"/ro/assets/status.js":  "text/javascript; charset=utf-8",
			"/ro/assets/status.css": "text/css; charset=utf-8",
			"/hp/assets/status.css": "text/css; charset=utf-8",
			"/px/assets/status.js":  "text/javascript; charset=utf-8",
		} {
			code, body, hdr := do(t, http.MethodGet, testSite+path, nil)
			if code != http.StatusOK || len(body) < 100 {
				t.Fatalf("GET %s: %d, %d bytes", path, code, len(body))
			}
			if got := hdr.Get("Content-Type"); got != ct {
				t.Errorf("GET %s: content type %q, want %q", path, got, ct)
			}
			etag := hdr.Get("ETag")
			if !strings.HasPrefix(etag, `"`) || hdr.Get("Cache-Control") != "no-cache" {
				t.Errorf("GET %s: ETag %q, Cache-Control %q", path, etag, hdr.Get("Cache-Control"))
			}
			assertStatusHeaders(t, "GET "+path, hdr)
			code, body, _ = do(t, http.MethodGet, testSite+path, nil, "If-None-Match", etag)
			if code != http.StatusNotModified || body != "" {
				t.Errorf("GET %s with If-None-Match: %d, %d bytes", path, code, len(body))
			}
		}
		code, body, hdr := do(t, http.MethodGet, testSite+"/ro/assets/evil.js", nil)
		assertJSONError(t, "GET unknown asset", code, http.StatusNotFound, body, hdr, "no such")
		code, body, hdr = do(t, http.MethodPost, testSite+"/ro/assets/status.js", nil)
		assertJSONError(t, "POST asset", code, http.StatusMethodNotAllowed, body, hdr, "not allowed")
	})

	t.Run("feed", func(t *testing.T) {
		// the sampler turns the workers' counters into rates once a
		// second, from the second time it sees a worker: wait until it
		// saw them, then send traffic, and some failures carrying
		// credentials that must never show up in the feed
		eventually(t, 5*time.Second, "the sampler to see the workers", func() bool {
			for _, p := range statusState(t, "/ro/api/state").Pools {
				if p.Name == "statustest" && len(p.Series.Times) > 0 {
					return true
				}
			}
			return false
		})
		for range 20 {
			if code, _ := get(t, "/"); code != http.StatusOK {
				t.Fatalf("proxied GET: %d", code)
			}
		}
		for range 3 {
			do(t, http.MethodGet, testSite+"/fail", nil,
				"Authorization", "Bearer secret-token-123", "Cookie", "session=secret-cookie-456")
		}

		var f statusFeedJSON
		sawTraffic := func() bool {
			for _, p := range f.Pools {
				for _, n := range p.Series.Requests {
					if p.Name == "statustest" && n > 0 {
						return true
					}
				}
			}
			return false
		}
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			if f = statusState(t, "/ro/api/state"); sawTraffic() {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the series never showed the traffic: %+v", f)
			}
		}
		if f.Actions || f.RefreshMS != 1000 || f.Now.IsZero() {
			t.Errorf("feed header: actions %v, refresh %d, now %v", f.Actions, f.RefreshMS, f.Now)
		}
		if f.Stats.TotalWorkers < 3 || f.Stats.TotalErrors == 0 || f.Stats.ByKind["http"] == 0 || len(f.Stats.BySeverity) == 0 {
			t.Errorf("stats %+v", f.Stats)
		}
		var workers []statusWorkerJSON
		for _, p := range f.Pools {
			if p.Name == "statustest" {
				workers = p.Workers
			}
		}
		if len(workers) != 3 {
			t.Fatalf("pool statustest has %d workers in the feed, want 3", len(workers))
		}
		var rate float64
		for _, w := range workers {
			rate += w.RequestRate
			if w.Status != "healthy" || w.StatusText != "healthy" || !w.Healthy || w.Breaker.State != "closed" || w.Upstream == "" || w.Requests == 0 {
				t.Errorf("worker %+v", w)
			}
		}
		if rate <= 0 {
			t.Errorf("no worker shows a request rate after the traffic: %+v", workers)
		}
		if len(f.Errors) == 0 || len(f.Errors) > 50 {
			t.Fatalf("%d errors in the feed", len(f.Errors))
		}
		for i, e := range f.Errors {
			if e.Kind == "" || e.Severity == "" || e.Worker == "" || e.Message == "" {
				t.Errorf("error %d: %+v", i, e)
			}
			if i > 0 && e.Time.After(f.Errors[i-1].Time) {
				t.Errorf("errors not newest first at %d", i)
			}
		}
		if len(f.Series.Times) == 0 || len(f.Series.Times) != len(f.Series.Requests) || f.Series.StepMS != 1000 {
			t.Errorf("total series %+v", f.Series)
		}

		code, body, hdr := do(t, http.MethodGet, testSite+"/ro/api/state", nil)
		if code != http.StatusOK || hdr.Get("Cache-Control") != "no-store" {
			t.Errorf("feed: %d, Cache-Control %q", code, hdr.Get("Cache-Control"))
		}
		assertStatusHeaders(t, "feed", hdr)
		for _, secret := range []string{"secret-token-123", "secret-cookie-456", "Authorization", "Cookie"} {
			if strings.Contains(body, secret) {
				t.Errorf("feed contains %q", secret)
			}
		}
		code, body, hdr = do(t, http.MethodHead, testSite+"/ro/api/state", nil)
		if code != http.StatusOK || body != "" || hdr.Get("Content-Type") != "application/json" {
			t.Errorf("HEAD feed: %d %q %q", code, body, hdr.Get("Content-Type"))
		}
		for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch} {
			code, body, hdr := do(t, m, testSite+"/ro/api/state", nil, origin...)
			assertJSONError(t, m+" feed", code, http.StatusMethodNotAllowed, body, hdr, "not allowed")
		}
		if f := statusState(t, "/rw/api/state"); !f.Actions {
			t.Error("feed of the page with actions says they are disabled")
		}
		statusState(t, "/hp/api/state")
		statusState(t, "/px/api/state")
		code, body, hdr = do(t, http.MethodGet, testSite+"/px/x/api/state", nil)
		assertJSONError(t, "GET outside the exact prefix", code, http.StatusNotFound, body, hdr, "no such")
		// with a prefix, other paths go to the next handler
		if code, body := get(t, "/pxother"); code != http.StatusOK || body != "passed on" {
			t.Errorf("GET /pxother: %d %q, want the next handler's answer", code, body)
		}
		code, body, hdr = do(t, http.MethodGet, testSite+"/ro/api/state/more", nil)
		assertJSONError(t, "GET below the feed", code, http.StatusNotFound, body, hdr, "no such")
	})

	t.Run("actions refused", func(t *testing.T) {
		for _, m := range []string{http.MethodGet, http.MethodPut, http.MethodDelete} {
			code, body, hdr := do(t, m, testSite+"/rw/api/workers/"+idB+"/isolate", nil, origin...)
			assertJSONError(t, m+" action", code, http.StatusMethodNotAllowed, body, hdr, "use POST")
			if hdr.Get("Allow") != http.MethodPost {
				t.Errorf("%s action: Allow %q", m, hdr.Get("Allow"))
			}
		}
		for _, path := range []string{"/ro/", "/hp/", "/px/"} {
			code, body, hdr := do(t, http.MethodPost, testSite+path+"api/workers/"+idB+"/isolate", nil,
				"Origin", testSite, "Sec-Fetch-Site", "same-origin")
			assertJSONError(t, "action on a read-only page "+path, code, http.StatusForbidden, body, hdr, "actions are disabled")
		}
		for _, hdr := range [][]string{
			nil,
			{"Origin", "http://evil.example"},
			{"Origin", "http://127.0.0.1:9081"},
			{"Origin", "null"},
			{"Sec-Fetch-Site", "cross-site"},
			{"Sec-Fetch-Site", "same-site"},
			{"Sec-Fetch-Site", "cross-site", "Origin", testSite},
		} {
			code, body, h := do(t, http.MethodPost, testSite+"/rw/api/workers/"+idB+"/isolate", nil, hdr...)
			assertJSONError(t, fmt.Sprintf("action with %q", hdr), code, http.StatusForbidden, body, h, "refused")
		}
		if f := statusState(t, "/rw/api/state"); statusWorkerOf(t, f, "statustest", idB).Isolated {
			t.Fatal("a refused action isolated the worker")
		}
		code, body, hdr := do(t, http.MethodPost, testSite+"/rw/api/workers/statustest_nope/isolate", nil, origin...)
		assertJSONError(t, "unknown worker", code, http.StatusNotFound, body, hdr, "unknown worker")
		code, body, hdr = do(t, http.MethodPost, testSite+"/rw/api/workers/"+idB+"/explode", nil, origin...)
		assertJSONError(t, "unknown action", code, http.StatusNotFound, body, hdr, "unknown worker action")
		code, body, hdr = do(t, http.MethodPost, testSite+"/rw/api/workers/"+idB+"/isolate", []byte(`{"duration":"-1s"}`), origin...)
		assertJSONError(t, "negative duration", code, http.StatusBadRequest, body, hdr, "duration")
		code, body, hdr = do(t, http.MethodPost, testSite+"/rw/api/workers/"+idB+"/isolate", []byte(`{"duration":`), origin...)
		assertJSONError(t, "bad JSON", code, http.StatusBadRequest, body, hdr, "body")
	})

	t.Run("actions allowed from the same origin", func(t *testing.T) {
		code, body, hdr := do(t, http.MethodPost, testSite+"/rw/api/workers/"+idB+"/isolate",
			[]byte(`{"duration":"1m","reason":"maintenance from the status page"}`),
			"Origin", testSite, "Content-Type", "application/json")
		if code != http.StatusOK || hdr.Get("Content-Type") != "application/json" || hdr.Get("Cache-Control") != "no-store" {
			t.Fatalf("isolate: %d %s %v", code, body, hdr)
		}
		var w statusWorkerJSON
		if err := json.Unmarshal([]byte(body), &w); err != nil || w.ID != idB || w.Status != "isolated" {
			t.Fatalf("isolate answered %s (%v)", body, err)
		}

		f := statusState(t, "/ro/api/state")
		got := statusWorkerOf(t, f, "statustest", idB)
		if !got.Isolated || got.Status != "isolated" || got.StatusText != "isolated" ||
			!strings.Contains(got.IsolationReason, "maintenance from the status page") ||
			got.IsolationLeftMS <= 50_000 || got.IsolationLeftMS > 60_000 {
			t.Fatalf("after isolate, the feed shows %+v", got)
		}
		// the same shared state as the admin API
		var admin pool.WorkerView
		if code := adminJSON(t, http.MethodGet, "/bifrost/workers/"+idB, &admin); code != http.StatusOK || !admin.Isolated {
			t.Fatalf("admin API: %d %+v", code, admin)
		}

		// a browser's fetch sends Sec-Fetch-Site
		code, body, _ = do(t, http.MethodPost, testSite+"/rw/api/workers/"+idB+"/reset", nil, "Sec-Fetch-Site", "same-origin")
		if code != http.StatusOK {
			t.Fatalf("reset: %d %s", code, body)
		}
		code, body, _ = do(t, http.MethodPost, testSite+"/rw/api/workers/"+idB+"/restore", nil,
			"Sec-Fetch-Site", "same-origin", "Origin", testSite)
		if code != http.StatusOK {
			t.Fatalf("restore: %d %s", code, body)
		}
		got = statusWorkerOf(t, statusState(t, "/ro/api/state"), "statustest", idB)
		if got.Isolated || got.Status != "healthy" || got.IsolationLeftMS != 0 {
			t.Fatalf("after restore, the feed shows %+v", got)
		}

		// isolate until restored: no time left is given
		code, body, _ = do(t, http.MethodPost, testSite+"/rw/api/workers/"+idB+"/isolate", nil, origin...)
		if code != http.StatusOK {
			t.Fatalf("isolate until restored: %d %s", code, body)
		}
		got = statusWorkerOf(t, statusState(t, "/ro/api/state"), "statustest", idB)
		if !got.Isolated || got.IsolationLeftMS != 0 {
			t.Fatalf("after isolate without duration, the feed shows %+v", got)
		}
		if code, body, _ = do(t, http.MethodPost, testSite+"/rw/api/workers/"+idB+"/restore", nil, origin...); code != http.StatusOK {
			t.Fatalf("restore: %d %s", code, body)
		}
	})
}

// doHost sends a request to the test server for the site named host.
func doHost(t *testing.T, method, host, path string, body []byte, hdr ...string) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = strings.NewReader(string(body))
	}
	req, err := http.NewRequest(method, testSite+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host + ":9080"
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s%s: %v", method, host, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// feedOf fetches and decodes the feed of the status page of site host.
func feedOf(t *testing.T, host, path string) (statusFeedJSON, string) {
	t.Helper()
	code, body := doHost(t, http.MethodGet, host, path, nil)
	if code != http.StatusOK {
		t.Fatalf("GET %s%s: %d %s", host, path, code, body)
	}
	var f statusFeedJSON
	if err := json.Unmarshal([]byte(body), &f); err != nil {
		t.Fatalf("GET %s%s: %v: %s", host, path, err, body)
	}
	return f, body
}

// feedPools lists the pool names of a feed.
func feedPools(f statusFeedJSON) string {
	var names []string
	for _, p := range f.Pools {
		names = append(names, p.Name)
	}
	return strings.Join(names, ",")
}

// A status page shows and acts on its own site's pools only, unless
// `pools` names others: sites on one server do not see each other's
// workers, upstreams, errors or traffic.
func TestStatusPageScope(t *testing.T) {
	a, b, c := newBackend(t), newBackend(t), newBackend(t)
	b.set(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		_, _ = io.WriteString(w, "ok")
	})
	loadCaddyfile(t, fmt.Sprintf(`
&(backend_c) {
	bifrost %s {
		name site_c
	}
}
http://a.localhost {
	handle /status/* {
		bifrost_status {
			actions
		}
	}
	handle {
		bifrost %s {
			name site_a
		}
	}
}
http://b.localhost {
	bifrost %s {
		name site_b
	}
}
http://c.localhost {
	handle /status/* {
		bifrost_status
	}
	handle {
		invoke backend_c
	}
}
http://ops.localhost {
	bifrost_status {
		pools site_b
		actions
	}
}
http://all.localhost {
	bifrost_status {
		pools *
	}
}
`, c.addr, a.addr, b.addr))
	idA, idB := pool.WorkerID("site_a", a.addr), pool.WorkerID("site_b", b.addr)
	// an error in site b, with b's upstream address in its message
	if code, _ := doHost(t, http.MethodPost, "b.localhost", "/fail", nil); code != http.StatusInternalServerError {
		t.Fatalf("b: %d", code)
	}

	f, body := feedOf(t, "a.localhost", "/status/api/state")
	if got := feedPools(f); got != "site_a" {
		t.Errorf("site a's page shows pools %q, want site_a", got)
	}
	for _, leak := range []string{b.addr, "site_b", c.addr, "site_c"} {
		if strings.Contains(body, leak) {
			t.Errorf("site a's feed contains %q:\n%s", leak, body)
		}
	}
	if f.Stats.TotalWorkers != 1 || f.Stats.TotalErrors != 0 || len(f.Errors) != 0 {
		t.Errorf("site a's totals count other sites: %+v, %d errors", f.Stats, len(f.Errors))
	}
	if f, _ := feedOf(t, "c.localhost", "/status/api/state"); feedPools(f) != "site_c" {
		t.Errorf("site c's page (its bifrost in a named route) shows pools %q, want site_c", feedPools(f))
	}
	f, _ = feedOf(t, "ops.localhost", "/api/state")
	if feedPools(f) != "site_b" || f.Stats.TotalErrors != 1 || len(f.Errors) != 1 {
		t.Errorf("the page with `pools site_b` shows %q, %d errors", feedPools(f), len(f.Errors))
	}
	if f, _ := feedOf(t, "all.localhost", "/api/state"); feedPools(f) != "site_a,site_b,site_c" {
		t.Errorf("the page with `pools *` shows %q", feedPools(f))
	}

	// another site's worker is unknown to a page's actions, whatever
	// the duration; its own workers are not
	for _, tc := range []struct{ host, path, id string }{
		{"a.localhost", "/status/api/workers/", idB},
		{"ops.localhost", "/api/workers/", idA},
	} {
		code, body := doHost(t, http.MethodPost, tc.host, tc.path+tc.id+"/isolate", []byte(`{"duration":"1000000h"}`),
			"Origin", "http://"+tc.host+":9080")
		if code != http.StatusNotFound || !strings.Contains(body, "unknown worker") {
			t.Errorf("%s isolating %s: %d %s, want 404 unknown worker", tc.host, tc.id, code, body)
		}
	}
	if workerOf(t, "site_b", b.addr).Health.Snapshot(time.Now()).Isolated || workerOf(t, "site_a", a.addr).Health.Snapshot(time.Now()).Isolated {
		t.Fatal("a page isolated another site's worker")
	}
	code, body := doHost(t, http.MethodPost, "a.localhost", "/status/api/workers/"+idA+"/isolate", []byte(`{"duration":"25h"}`),
		"Origin", "http://a.localhost:9080")
	if code != http.StatusBadRequest || !strings.Contains(body, "limit of 24h") {
		t.Errorf("site a isolating its own worker for 25h: %d %s, want 400 naming the limit", code, body)
	}
	code, body = doHost(t, http.MethodPost, "a.localhost", "/status/api/workers/"+idA+"/isolate", []byte(`{"duration":"1m"}`),
		"Origin", "http://a.localhost:9080")
	if code != http.StatusOK {
		t.Fatalf("site a isolating its own worker: %d %s", code, body)
	}
	if code, body := doHost(t, http.MethodPost, "a.localhost", "/status/api/workers/"+idA+"/restore", nil,
		"Sec-Fetch-Site", "same-origin"); code != http.StatusOK {
		t.Fatalf("site a restoring its own worker: %d %s", code, body)
	}

	// traffic of site b shows in the series of the pages that show b,
	// not in site a's
	eventually(t, 20*time.Second, "site b's traffic in the series", func() bool {
		doHost(t, http.MethodGet, "b.localhost", "/", nil)
		f, _ := feedOf(t, "ops.localhost", "/api/state")
		return slices.ContainsFunc(f.Series.Requests, func(r float64) bool { return r > 0 })
	})
	f, _ = feedOf(t, "a.localhost", "/status/api/state")
	if slices.ContainsFunc(f.Series.Requests, func(r float64) bool { return r > 0 }) || len(f.Series.Times) == 0 {
		t.Errorf("site a's series shows other sites' traffic (or none at all): %+v", f.Series)
	}
}
