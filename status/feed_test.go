package status

import (
	"testing"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/pool"
)

func TestWorkerStatus(t *testing.T) {
	for _, tc := range []struct {
		name       string
		v          pool.WorkerView
		code, text string
	}{
		{"healthy", pool.WorkerView{Snapshot: health.Snapshot{Healthy: true, ProbeHealthy: true}}, "healthy", "healthy"},
		{"half-open", pool.WorkerView{Snapshot: health.Snapshot{ProbeHealthy: true}, Breaker: pool.BreakerView{State: breaker.StateHalfOpen}}, "half_open", "half-open"},
		{"open", pool.WorkerView{Snapshot: health.Snapshot{ProbeHealthy: true, Throttled: true}, Breaker: pool.BreakerView{State: breaker.StateOpen}}, "open", "breaker open"},
		{"throttled", pool.WorkerView{Snapshot: health.Snapshot{ProbeHealthy: true, Throttled: true}, Breaker: pool.BreakerView{State: breaker.StateHalfOpen}}, "throttled", "throttled"},
		{"probe failing", pool.WorkerView{Snapshot: health.Snapshot{}}, "unhealthy", "probe failing"},
		{"isolated", pool.WorkerView{Snapshot: health.Snapshot{Isolated: true, ProbeHealthy: true}, Breaker: pool.BreakerView{State: breaker.StateOpen}}, "isolated", "isolated"},
		{"recovery failed", pool.WorkerView{Snapshot: health.Snapshot{Isolated: true, RecoveryFailed: true}}, "recovery_failed", "recovery failed"},
	} {
		if code, text := workerStatus(tc.v); code != tc.code || text != tc.text {
			t.Errorf("%s: workerStatus = %q, %q; want %q, %q", tc.name, code, text, tc.code, tc.text)
		}
	}
}
