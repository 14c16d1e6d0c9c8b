package bifrost

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/recovery"
)

// resolveJSON resolves a handler's JSON configuration.
func resolveJSON(t *testing.T, js string) *resolved {
	t.Helper()
	var h Handler
	if err := json.Unmarshal([]byte(js), &h); err != nil {
		t.Fatal(err)
	}
	r, err := h.resolve()
	if err != nil {
		t.Fatalf("resolve: %v", err)
	}
	return r
}

// An empty configuration gives every package the values the README
// documents, complete: the packages have no defaults of their own to
// disagree with (they had: a breaker timeout of 30s, backoffs of 50ms/2s,
// a stdev factor of 1.9, an outlier interval of 10s).
func TestDefaultsAreTheDocumentedOnes(t *testing.T) {
	r := resolveJSON(t, `{"upstreams":[{"dial":"a:1"}],"health":{"uri":"/health"}}`)

	if want := (breaker.Settings{Failures: 5, MinRequests: 10, Successes: 3, Timeout: time.Second}); r.breaker != want {
		t.Errorf("breaker = %+v, want %+v", r.breaker, want)
	}
	if want := (recovery.Policy{Attempts: 3, Initial: 20 * time.Millisecond, Max: time.Second, Jitter: 0.5}); r.retry.policy != want {
		t.Errorf("retry policy = %+v, want %+v", r.retry.policy, want)
	}
	if r.retry.budget != 0.2 || r.retry.budgetMinPerSecond != 3 || r.retry.maxBody != 1<<20 ||
		r.retry.maxBodyTotal != 64<<20 || r.retry.maxHeld != 64<<10 || r.retry.hedge != nil {
		t.Errorf("retry = %+v", r.retry)
	}
	wantIso := health.IsolationSettings{
		BaseTime: 10 * time.Second, MaxTime: 5 * time.Minute, Jitter: 0.1, DecayAfter: 5 * time.Minute,
		MaxPercent: 50, SuccessRateMinRequests: 20, SuccessRateStdevFactor: 1, SuccessRateMinHosts: 3,
		DetectionInterval: 5 * time.Second, ProbationTime: 5 * time.Second, ProbationSuccesses: 5,
		MaxRecoveryAttempts: 3, ProbesConfigured: true,
	}
	if r.isolation.monitor != wantIso {
		t.Errorf("isolation = %+v, want %+v", r.isolation.monitor, wantIso)
	}
	if r.isolation.breakerTrips != 2 || r.isolation.hangAfter != 2*time.Second || r.isolation.hangCount != 1 {
		t.Errorf("breaker trips, hang threshold and requests = %d, %v, %d; want 2, 2s, 1",
			r.isolation.breakerTrips, r.isolation.hangAfter, r.isolation.hangCount)
	}
	wantProbe := health.ProbeSettings{Interval: 5 * time.Second, Timeout: 2 * time.Second, Passes: 2, Fails: 3, Jitter: 0.2, FastInterval: 1250 * time.Millisecond}
	if r.probe == nil || r.probe.settings != wantProbe || r.probe.expect != 2 || r.probe.maxSize != 64<<10 {
		t.Errorf("probe = %+v, want %+v, expect 2xx, max size 64KiB", r.probe, wantProbe)
	}
	if r.manager.HistoryLimit != 1000 {
		t.Errorf("error history limit = %d, want 1000", r.manager.HistoryLimit)
	}

	// and the README's table says the same
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range []string{
		"| `error_history_limit` | 1000 |",
		"| `breaker failures` | 5 |",
		"| `breaker timeout` | 1s |",
		"| `breaker successes` | 3 |",
		"| `retry attempts` | 3 |",
		"| `retry backoff` | 20ms 1s |",
		"| `retry jitter` | 0.5 |",
		"| `retry budget` | 0.2 |",
		"| `health interval` | 5s |",
		"| `health timeout` | 2s",
		"| `health passes` / `fails` | 2 / 3 |",
		"| `isolation base_time` | 10s |",
		"| `isolation max_time` | 5m |",
		"| `isolation max_percent` | 50 |",
		"| `isolation success_rate` | 20 1 |",
		"| `isolation outlier_interval` | 5s |",
		"| `isolation breaker_trips` | 2 |",
		"| `isolation hang_threshold` / `hang_requests` | 2s / 1 |",
		"| `isolation max_recovery_attempts` | 3 |",
	} {
		if !strings.Contains(string(readme), row) {
			t.Errorf("README has no row %q", row)
		}
	}
}

// Settings that depend on one another are resolved together: a short
// probe interval shortens the default timeout and the fast interval, and
// a long initial backoff raises the default cap.
func TestDefaultsFollowOtherSettings(t *testing.T) {
	r := resolveJSON(t, `{"upstreams":[{"dial":"a:1"}],"health":{"uri":"/h","interval":"1s"},"retry":{"backoff_initial":"3s"}}`)
	if s := r.probe.settings; s.Timeout != time.Second || s.FastInterval != 250*time.Millisecond {
		t.Errorf("probe timeout and fast interval = %v, %v; want 1s, 250ms", s.Timeout, s.FastInterval)
	}
	if p := r.retry.policy; p.Initial != 3*time.Second || p.Max != 3*time.Second {
		t.Errorf("backoff = %v..%v, want 3s..3s", p.Initial, p.Max)
	}
	r = resolveJSON(t, `{"upstreams":[{"dial":"a:1"}],"isolation":{"max_percent":0,"success_rate_min_requests":0},"retry":{"jitter":0}}`)
	if r.isolation.monitor.MaxPercent != 0 || r.isolation.monitor.SuccessRateMinRequests != 0 || r.retry.policy.Jitter != 0 {
		t.Errorf("explicit zeros not kept: max_percent %d, success_rate_min_requests %d, jitter %g",
			r.isolation.monitor.MaxPercent, r.isolation.monitor.SuccessRateMinRequests, r.retry.policy.Jitter)
	}
}

// The default policy and `lb_policy bifrost_p2c` without a decay have the
// same latency memory, the module's one default (they had 1s and 10s).
func TestDefaultPolicyDecayIsTheNamedPolicys(t *testing.T) {
	a := newBackend(t)
	for _, policy := range []string{"", "lb_policy bifrost_p2c"} {
		t.Run(policy, func(t *testing.T) {
			h := loadHandler(t, siteConfig([]string{a.addr}, policy))
			if h.p2c == nil {
				t.Fatal("the policy is not bifrost_p2c")
			}
			if d := h.p2c.Trackers().Settings().Decay; d != time.Second {
				t.Errorf("decay = %v, want the documented 1s", d)
			}
		})
	}
}
