package bifrost

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// loadLogged runs a Caddyfile site body with Caddy's log in a file at
// DEBUG and returns a function that reads the log's JSON lines.
func loadLogged(t *testing.T, sites string) func() []map[string]any {
	t.Helper()
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	js, err := adapt(fmt.Sprintf("{\n\tadmin %s\n\thttp_port 9080\n\tauto_https off\n\tgrace_period 1ns\n\tlog {\n\t\toutput file %s\n\t\tlevel DEBUG\n\t}\n}\n", testAdmin, logFile) + sites)
	if err != nil {
		t.Fatal(err)
	}
	loadJSON(t, js)
	return func() []map[string]any {
		raw, _ := os.ReadFile(logFile)
		var out []map[string]any
		for _, line := range strings.Split(string(raw), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil {
				out = append(out, m)
			}
		}
		return out
	}
}

// linesWithMsg returns the log lines with the message msg.
func linesWithMsg(lines []map[string]any, msg string) []map[string]any {
	var out []map[string]any
	for _, l := range lines {
		if l["msg"] == msg {
			out = append(out, l)
		}
	}
	return out
}

// reverse_proxy accepts health_interval and health_timeout without
// health_uri and runs no active checks, and ignores unhealthy_latency
// without fail_duration: bifrost accepts them too, runs no probes, and
// says at provision what it ignored. unhealthy_latency with fail_duration
// (reverse_proxy's passive checks on) is still refused.
func TestIgnoredReverseProxySettingsWarn(t *testing.T) {
	a, b := newBackend(t), newBackend(t)
	logs := loadLogged(t, siteConfig([]string{a.addr, b.addr}, `
		name ignored
		health_interval 1s
		health_timeout 500ms
		unhealthy_latency 2s`))
	h := runningHandler(t)
	if h.cfg.probe != nil {
		t.Fatal("active probes configured without a health uri")
	}
	if code, _ := get(t, "/"); code != 200 {
		t.Fatalf("GET: %d", code)
	}
	var warn []map[string]any
	eventually(t, 10*time.Second, "the warning in the log", func() bool {
		warn = linesWithMsg(logs(), "ignoring reverse_proxy settings that have no effect")
		return len(warn) == 2
	})
	got := fmt.Sprint(warn[0]["fields"], warn[1]["fields"])
	for _, f := range []string{"health_checks.active.interval", "health_checks.active.timeout", "health_checks.passive.unhealthy_latency"} {
		if !strings.Contains(got, f) {
			t.Errorf("the warnings do not name %s: %s", f, got)
		}
	}
	for _, w := range warn {
		if w["level"] != "warn" {
			t.Errorf("logged at %v, want warn", w["level"])
		}
	}

	if _, err := adapt(siteConfig([]string{a.addr}, `
		fail_duration 10s
		unhealthy_latency 2s`)); err == nil || !strings.Contains(err.Error(), "unhealthy_latency is not supported") {
		t.Fatalf("unhealthy_latency with fail_duration: %v, want it refused", err)
	}
}

// Each handler logs once, at provision, the defaults it runs with that
// differ from reverse_proxy's, and only those the config leaves unset.
func TestDefaultsThatDifferAreLogged(t *testing.T) {
	a, b := newBackend(t), newBackend(t)
	logs := loadLogged(t, fmt.Sprintf(`:9080 {
	handle /tuned/* {
		bifrost %[1]s %[2]s {
			name tuned
			lb_policy round_robin
			lb_retries 0
			health_uri /health
			health_passes 1
			health_fails 1
		}
	}
	handle {
		bifrost %[1]s %[2]s {
			name defaults
			health_uri /health
		}
	}
}
`, a.addr, b.addr))
	const msg = "defaults that differ from reverse_proxy's (set them to silence this)"
	var lines []map[string]any
	eventually(t, 10*time.Second, "the defaults line", func() bool {
		lines = linesWithMsg(logs(), msg)
		return len(lines) > 0
	})
	if len(lines) != 1 {
		t.Fatalf("%d lines %q, want 1 (the tuned handler sets every default): %v", len(lines), msg, lines)
	}
	l := lines[0]
	if l["pool"] != "defaults" {
		t.Fatalf("line for pool %v, want defaults", l["pool"])
	}
	for _, k := range []string{"lb_policy", "retry.attempts", "health.passes", "health.fails"} {
		if v, ok := l[k].(string); !ok || !strings.Contains(v, "reverse_proxy") {
			t.Errorf("field %s = %v, want the default and reverse_proxy's", k, l[k])
		}
	}
}
