package status

import (
	"testing"
	"time"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/pool"
)

func TestDetail(t *testing.T) {
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
