package bifrost

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

var update = flag.Bool("update", false, "rewrite the expected JSON of the golden adapt tests")

// adapt runs Caddy's Caddyfile adapter on cfg.
func adapt(cfg string) ([]byte, error) {
	js, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), map[string]any{"filename": "Caddyfile"})
	return js, err
}

// Golden adapt tests: each file in testdata/caddyfile_adapt is a Caddyfile,
// a line of dashes, and the JSON it must adapt to. Each adapted config must
// also be accepted by Caddy (provisioned and validated) and survive a JSON
// round trip of the handler unchanged.
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob("testdata/caddyfile_adapt/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			raw, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			parts := strings.SplitN(string(raw), "----------\n", 2)
			if len(parts) != 2 {
				t.Fatalf("%s: no ---------- separator", file)
			}
			js, err := adapt(parts[0])
			if err != nil {
				t.Fatalf("adapt: %v", err)
			}
			var pretty bytes.Buffer
			if err := json.Indent(&pretty, js, "", "\t"); err != nil {
				t.Fatal(err)
			}
			pretty.WriteByte('\n')
			if *update {
				if err := os.WriteFile(file, []byte(parts[0]+"----------\n"+pretty.String()), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if pretty.String() != parts[1] {
				t.Fatalf("adapted JSON differs from the golden file (run go test -run TestCaddyfileAdapt -update to accept)\ngot:\n%s\nwant:\n%s", pretty.String(), parts[1])
			}

			var cfg caddy.Config
			if err := json.Unmarshal(js, &cfg); err != nil {
				t.Fatal(err)
			}
			if err := caddy.Validate(&cfg); err != nil {
				t.Fatalf("caddy rejects the adapted config: %v", err)
			}
			assertHandlersRoundTrip(t, js)
		})
	}
}

// assertHandlersRoundTrip decodes every bifrost handler of an adapted
// config into a Handler and encodes it again: nothing may be lost.
func assertHandlersRoundTrip(t *testing.T, js []byte) {
	t.Helper()
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if x["handler"] == "bifrost" {
				in, _ := json.Marshal(x)
				var h Handler
				if err := json.Unmarshal(in, &h); err != nil {
					t.Fatalf("decoding handler: %v", err)
				}
				out, _ := json.Marshal(h)
				var a, b map[string]any
				_ = json.Unmarshal(in, &a)
				_ = json.Unmarshal(out, &b)
				delete(a, "handler")
				ja, _ := json.Marshal(a)
				jb, _ := json.Marshal(b)
				if !bytes.Equal(ja, jb) {
					t.Fatalf("handler JSON does not round-trip:\nin:  %s\nout: %s", ja, jb)
				}
				return
			}
			for _, e := range x {
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	var root any
	_ = json.Unmarshal(js, &root)
	walk(root)
}

// Bad Caddyfiles are refused with a message naming what is wrong, and the
// file and line.
func TestCaddyfileErrors(t *testing.T) {
	cases := []struct {
		name, body, want string
		line             string
	}{
		{"unknown breaker option", "breaker {\n\t\tfailurez 3\n\t}", `unrecognized breaker subdirective "failurez"`, "Caddyfile:4"},
		{"failures not a number", "breaker {\n\t\tfailures many\n\t}", `failures: "many" is not an integer`, "Caddyfile:4"},
		{"negative failures", "breaker {\n\t\tfailures -1\n\t}", "failures must not be negative", "Caddyfile:4"},
		{"ratio above one", "breaker {\n\t\tfailure_ratio 1.5\n\t}", "failure_ratio must be between 0 and 1", "Caddyfile:"},
		{"ratio min keyword", "breaker {\n\t\tfailure_ratio 0.5 max 3\n\t}", "expected 'min <n>'", "Caddyfile:4"},
		{"bad breaker timeout", "breaker {\n\t\ttimeout soon\n\t}", `timeout: bad duration "soon"`, "Caddyfile:4"},
		{"negative window", "breaker {\n\t\twindow -5s\n\t}", "window must not be negative", "Caddyfile:4"},
		{"duplicate breaker", "breaker {\n\t}\n\tbreaker {\n\t}", "breaker already specified", "Caddyfile:5"},
		{"zero attempts", "retry {\n\t\tattempts 0\n\t}", "attempts must be at least 1", "Caddyfile:4"},
		{"jitter above one", "retry {\n\t\tjitter 2\n\t}", "jitter must be between 0 and 1", "Caddyfile:"},
		{"budget above one", "retry {\n\t\tbudget 1.2\n\t}", "budget must be between 0 and 1", "Caddyfile:"},
		{"backoff inverted", "retry {\n\t\tbackoff 2s 1s\n\t}", "backoff initial 2s is above its maximum 1s", "Caddyfile:"},
		{"unknown retry condition", "retry {\n\t\ton sometimes\n\t}", `unknown retry condition "sometimes"`, "Caddyfile:4"},
		{"bad max_body", "retry {\n\t\tmax_body lots\n\t}", `max_body: bad size "lots"`, "Caddyfile:4"},
		{"retry no args", "retry {\n\t\tmethods\n\t}", "wrong argument count", "Caddyfile:4"},
		{"unknown retry option", "retry {\n\t\thedgehog 1\n\t}", `unrecognized retry subdirective "hedgehog"`, "Caddyfile:4"},
		{"health uri relative", "health {\n\t\turi health\n\t}", "uri must start with '/'", "Caddyfile:"},
		{"health bad regexp", "health {\n\t\texpect_body (\n\t}", "expect_body", "Caddyfile:"},
		{"health bad status", "health {\n\t\texpect_status 9xx\n\t}", "is not a status code or class", "Caddyfile:4"},
		{"isolation percent", "isolation {\n\t\tmax_percent 150\n\t}", "max_percent must be between 0 and 100", "Caddyfile:"},
		{"isolation base above max", "isolation {\n\t\tbase_time 10m\n\t\tmax_time 1m\n\t}", "base_time 10m0s is above max_time 1m0s", "Caddyfile:"},
		{"isolation unknown", "isolation {\n\t\tforever yes\n\t}", `unrecognized isolation subdirective "forever"`, "Caddyfile:4"},
		{"classify bad kind", "classify {\n\t\tstatus 500 explosion\n\t}", "explosion", "Caddyfile:4"},
		{"classify bad status", "classify {\n\t\tstatus 7xx http\n\t}", "7xx", "Caddyfile:4"},
		{"classify other", "classify {\n\t\theader X http\n\t}", `unrecognized classify subdirective "header"`, "Caddyfile:4"},
		{"fallback status", "fallback {\n\t\tstatus 42\n\t}", "fallback: status must be between 100 and 599", "Caddyfile:"},
		{"fallback header args", "fallback {\n\t\theader X\n\t}", "wrong argument count", "Caddyfile:4"},
		{"name twice", "name a\n\tname b", "name already specified", "Caddyfile:4"},
		{"name with slash", "name a/b", "must not contain", "Caddyfile:3"},
		{"lb_retry_match with retry block", "lb_retry_match {\n\t\tmethod POST\n\t}\n\tretry {\n\t\tattempts 2\n\t}", "lb_retry_match conflicts with the retry block: use 'retry match' only", "Caddyfile:"},
		{"retry match empty", "retry {\n\t\tmatch\n\t}", "match: at least one matcher is required", "Caddyfile:4"},
		{"retry match unknown matcher", "retry {\n\t\tmatch wibble x\n\t}", "getting matcher module 'wibble'", "Caddyfile:4"},
		{"unhealthy_latency refused", "fail_duration 10s\n\tunhealthy_latency 1s", "use 'retry { per_try_timeout <duration> }'", "Caddyfile:4"},
		{"health_headers with health block", "health_headers {\n\t\tX y\n\t}\n\thealth {\n\t\turi /h\n\t}", "health_headers conflicts with the health block: use 'health header' only", "Caddyfile:"},
		{"health_port not a port", "health_port 70000", `health_port: "70000" is not a port number`, "Caddyfile:3"},
		{"health_upstream malformed", "health_upstream checker", `health_upstream: "checker" must be host:port`, "Caddyfile:3"},
		{"health_port with health_upstream", "health_uri /h\n\thealth_upstream 127.0.0.1:9\n\thealth_port 8", "port and upstream cannot both be set", "Caddyfile:"},
		{"health_follow_redirects arg", "health_follow_redirects yes", "wrong argument count", "Caddyfile:3"},
		{"health_method twice", "health_method GET\n\thealth_method HEAD", "health_method already specified", "Caddyfile:4"},
		{"health method bad", "health {\n\t\tmethod \"GE T\"\n\t}", "is not an HTTP method", "Caddyfile:"},
		{"health header no field", "health {\n\t\theader\n\t}", "wrong argument count", "Caddyfile:4"},
		{"lb_retries with retry block", "lb_retries 2\n\tretry {\n\t\tattempts 3\n\t}", "lb_retries conflicts with the retry block", "Caddyfile:"},
		{"max_fails with breaker block", "max_fails 2\n\tbreaker {\n\t}", "max_fails conflicts with the breaker block", "Caddyfile:"},
		{"unknown reverse_proxy option", "frobnicate 1", "unrecognized subdirective frobnicate", "Caddyfile:3"},
		{"block args", "breaker 5 {\n\t}", "wrong argument count", "Caddyfile:3"},
		// settings that would otherwise be ignored or changed at run time
		{"health without uri", "health {\n\t\tinterval 1s\n\t}", "health: uri is required", "Caddyfile:5"},
		{"isolation max_time below default base", "isolation {\n\t\tmax_time 5s\n\t}", "max_time 5s is below the default base_time 10s", "Caddyfile:5"},
		{"isolation base_time above default max", "isolation {\n\t\tbase_time 10m\n\t}", "base_time 10m0s is above the default max_time 5m0s", "Caddyfile:5"},
		{"isolation off with hang settings", "isolation {\n\t\tmax_percent 0\n\t\thang_requests 5\n\t}", "max_percent 0 turns automatic isolation off", "Caddyfile:6"},
		{"hedge with one attempt", "retry {\n\t\tattempts 1\n\t\thedge auto\n\t}", "hedge needs attempts of at least 2", "Caddyfile:6"},
		{"hedge percentile with fixed delay", "retry {\n\t\thedge 5ms percentile 90\n\t}", "does nothing with a fixed delay", "Caddyfile:5"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ":8080 {\n\tbifrost 127.0.0.1:9001 {\n\t" + tc.body + "\n\t}\n}\n"
			_, err := adapt(cfg)
			if err == nil {
				t.Fatalf("accepted:\n%s", cfg)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.line) {
				t.Fatalf("error %q should contain %q and %q", err, tc.want, tc.line)
			}
		})
	}
}

// Bad JSON configs are refused by Provision or Validate with a message
// naming the field.
func TestJSONConfigErrors(t *testing.T) {
	cases := []struct{ name, handler, want string }{
		{"no upstreams", `{"handler":"bifrost"}`, "upstreams: at least one upstream is required"},
		{"empty dial", `{"handler":"bifrost","upstreams":[{"dial":""}]}`, "upstreams[0]: dial address is empty"},
		{"lb retries", `{"handler":"bifrost","upstreams":[{"dial":"127.0.0.1:1"}],"load_balancing":{"retries":-2}}`, "load_balancing.retries must not be negative"},
		{"health checks", `{"handler":"bifrost","upstreams":[{"dial":"127.0.0.1:1"}],"health_checks":{"passive":{"fail_duration":"10s","unhealthy_latency":"1s"}}}`, "use retry.per_try_timeout"},
		{"circuit breaker", `{"handler":"bifrost","upstreams":[{"dial":"127.0.0.1:1"}],"circuit_breaker":{"type":"x"}}`, "circuit_breaker"},
		{"ratio", `{"handler":"bifrost","upstreams":[{"dial":"127.0.0.1:1"}],"breaker":{"failure_ratio":2}}`, "breaker: failure_ratio must be between 0 and 1, got 2"},
		{"negative timeout", `{"handler":"bifrost","upstreams":[{"dial":"127.0.0.1:1"}],"breaker":{"timeout":"-1s"}}`, "breaker: window and timeout must not be negative"},
		{"wrong type", `{"handler":"bifrost","upstreams":[{"dial":"127.0.0.1:1"}],"retry":{"attempts":"three"}}`, "attempts"},
		{"unknown field", `{"handler":"bifrost","upstreams":[{"dial":"127.0.0.1:1"}],"retry":{"atempts":3}}`, "atempts"},
		{"negative max_requests", `{"handler":"bifrost","upstreams":[{"dial":"127.0.0.1:1"}],"max_requests":-1}`, "max_requests must not be negative"},
		{"bad classify", `{"handler":"bifrost","upstreams":[{"dial":"127.0.0.1:1"}],"classify":[{"status":"5xx","kind":"boom"}]}`, "classify[0]"},
		{"max percent", `{"handler":"bifrost","upstreams":[{"dial":"127.0.0.1:1"}],"isolation":{"max_percent":101}}`, "isolation: max_percent must be between 0 and 100, got 101"},
		// settings that would otherwise be ignored or changed at run time
		{"health without uri", `{"handler":"bifrost","upstreams":[{"dial":"127.0.0.1:1"}],"health":{"fails":2}}`, "health: uri is required"},
		{"max_time below default base", `{"handler":"bifrost","upstreams":[{"dial":"127.0.0.1:1"}],"isolation":{"max_time":"5s"}}`, "isolation: max_time 5s is below the default base_time 10s"},
		{"outlier tuning with detection off", `{"handler":"bifrost","upstreams":[{"dial":"127.0.0.1:1"}],"isolation":{"success_rate_min_requests":0,"success_rate_stdev_factor":2}}`, "which success_rate_min_requests 0 turns off"},
		{"isolation off with detection on", `{"handler":"bifrost","upstreams":[{"dial":"127.0.0.1:1"}],"isolation":{"max_percent":0,"success_rate_min_requests":10}}`, "isolation: max_percent 0 turns automatic isolation off"},
		{"min_requests without ratio", `{"handler":"bifrost","upstreams":[{"dial":"127.0.0.1:1"}],"breaker":{"min_requests":5}}`, "breaker: min_requests applies to failure_ratio only"},
		{"backoff max below default initial", `{"handler":"bifrost","upstreams":[{"dial":"127.0.0.1:1"}],"retry":{"backoff_max":"10ms"}}`, "retry: backoff maximum 10ms is below the default initial backoff 20ms"},
		{"hedge with one attempt", `{"handler":"bifrost","upstreams":[{"dial":"127.0.0.1:1"}],"retry":{"attempts":1,"hedge":{}}}`, "retry: hedge needs attempts of at least 2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := `{"apps":{"http":{"servers":{"s":{"listen":["127.0.0.1:0"],"routes":[{"handle":[` + tc.handler + `]}]}}}}}`
			var c caddy.Config
			err := json.Unmarshal([]byte(cfg), &c)
			if err == nil {
				err = caddy.Validate(&c)
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q should contain %q", err, tc.want)
			}
		})
	}
}
