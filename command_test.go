package bifrost

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/pool"
)

// `caddy bifrost status` reaches an admin API on a unix socket, the form
// the README recommends, and prints what upstreams and operators wrote
// without letting a terminal act on it.
func TestStatusCommandUnixSocket(t *testing.T) {
	a := newBackend(t)
	sock := filepath.Join(t.TempDir(), "admin.sock")
	admin := "unix/" + sock
	loadJSON(t, []byte(fmt.Sprintf(`{
	"admin": {"listen": %q},
	"apps": {"http": {"servers": {"s": {
		"listen": [":9080"],
		"routes": [{"handle": [{"handler": "bifrost", "name": "unixcli", "upstreams": [{"dial": %q}]}]}]
	}}}}
}`, admin, a.addr)))
	id := pool.WorkerID("unixcli", a.addr)

	// an isolation reason with a screen clear, a window title, a carriage
	// return, a right-to-left override and a line break
	reason := "\x1b[2J\x1b]0;pwned\x07\rspoof\u202eevil\nnext"
	body, _ := json.Marshal(map[string]string{"duration": "1h", "reason": reason})
	resp, err := caddycmd.AdminAPIRequest(admin, http.MethodPost, "/bifrost/workers/"+id+"/isolate", nil, bytes.NewReader(body))
	if err != nil {
		t.Fatalf("isolating over the unix socket: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	var out bytes.Buffer
	if err := printStatus(&out, admin, 5*time.Second); err != nil {
		t.Fatalf("caddy bifrost status --address %s: %v", admin, err)
	}
	text := out.String()
	if !strings.Contains(text, id) || !strings.Contains(text, "isolated") {
		t.Fatalf("output lacks the isolated worker:\n%s", text)
	}
	if strings.ContainsAny(text, "\x1b\x07\r\u202e") {
		t.Errorf("output carries terminal control characters: %q", text)
	}
	if lines := strings.Count(text, "\n"); lines != 2 {
		t.Errorf("output has %d lines, want a header and one worker: %q", lines, text)
	}
	if !strings.Contains(text, `\x1b[2J\x1b]0;pwned\a\rspoof\u202eevil\nnext (`) || !strings.Contains(text, " left)") {
		t.Errorf("reason not shown escaped, with its time left:\n%s", text)
	}

	// a unix socket nobody listens on is unreachable, not a bad address
	err = printStatus(&out, "unix/"+filepath.Join(t.TempDir(), "none.sock"), time.Second)
	if err == nil || !strings.Contains(err.Error(), "cannot reach Caddy's admin API") {
		t.Fatalf("unreachable unix socket: %v", err)
	}
}

func TestStatusCommandDetail(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	for _, tc := range []struct {
		name string
		w    pool.WorkerView
		want string
	}{
		{"isolated, time left", pool.WorkerView{Snapshot: health.Snapshot{Isolated: true, IsolationReason: "probe failing", IsolatedUntil: now.Add(90 * time.Second)}},
			"probe failing (1m30s left)"},
		{"isolated, expired", pool.WorkerView{Snapshot: health.Snapshot{Isolated: true, IsolationReason: "probe failing", IsolatedUntil: now.Add(-time.Second)}},
			"probe failing (expired, waiting for a passing probe)"},
		{"isolated, under a second", pool.WorkerView{Snapshot: health.Snapshot{Isolated: true, ProbeHealthy: true, IsolationReason: "x", IsolatedUntil: now.Add(400 * time.Millisecond)}},
			"x (expired, returning)"},
		{"isolated until restored", pool.WorkerView{Snapshot: health.Snapshot{Isolated: true, IsolationReason: "operator"}},
			"operator (until restored)"},
		{"throttled, expired", pool.WorkerView{Snapshot: health.Snapshot{Throttled: true, ThrottledUntil: now.Add(-time.Second)}},
			"throttled (ending now)"},
		{"throttled", pool.WorkerView{Snapshot: health.Snapshot{Throttled: true, ThrottledUntil: now.Add(1500 * time.Millisecond)}},
			"throttled (1.5s left)"},
		{"breaker, retry passed", pool.WorkerView{Breaker: pool.BreakerView{State: breaker.StateOpen, RetryAt: now.Add(-time.Second)}},
			"breaker half-opens at its next request"},
		{"breaker", pool.WorkerView{Breaker: pool.BreakerView{State: breaker.StateOpen, RetryAt: now.Add(2 * time.Second)}},
			"breaker half-opens in 2s"},
		{"healthy", pool.WorkerView{}, ""},
	} {
		if got := detail(tc.w, now); got != tc.want {
			t.Errorf("%s: detail = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestTermSafe(t *testing.T) {
	for in, want := range map[string]string{
		"api_10.0.0.5-8080":       "api_10.0.0.5-8080",
		"dial tcp: refused":       "dial tcp: refused",
		"naïve 日本 ✓":              "naïve 日本 ✓",
		"\x1b[31mred\x1b[0m":      `\x1b[31mred\x1b[0m`,
		"a\tb\r\nc\x00d\x7f":      `a\tb\r\nc\x00d\x7f`,
		"\u009b2J csi":            `\u009b2J csi`,
		"left\u202eright\u2066x":  `left\u202eright\u2066x`,
		"zero\u200bwidth\ufeffok": `zero\u200bwidth\ufeffok`,
	} {
		if got := termSafe(in); got != want {
			t.Errorf("termSafe(%q) = %s, want %s", in, got, want)
		}
	}
}
