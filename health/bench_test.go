package health

import (
	"testing"
	"time"
)

// The request path of one try: the numbers a proxied request pays.

func BenchmarkRequestPath(b *testing.B) {
	w := NewWorkerHealth("p", "w", "u")
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		w.BeginRequest()
		w.RecordSuccess(now)
		w.EndRequest()
	}
}

func BenchmarkRequestPathParallel(b *testing.B) {
	w := NewWorkerHealth("p", "w", "u")
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			w.BeginRequest()
			w.RecordSuccess(now)
			w.EndRequest()
		}
	})
}

func BenchmarkRecordFailure(b *testing.B) {
	w := NewWorkerHealth("p", "w", "u")
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		w.RecordFailure(now)
	}
}

func BenchmarkAvailable(b *testing.B) {
	w := NewWorkerHealth("p", "w", "u")
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		_ = w.Available(now)
	}
}

func BenchmarkWeight(b *testing.B) {
	for _, tc := range []struct {
		name    string
		ramping bool
	}{{"steady", false}, {"ramping", true}} {
		b.Run(tc.name, func(b *testing.B) {
			m := NewMonitor(isolation(IsolationSettings{SlowStart: time.Hour}), nil, nil)
			w := NewWorkerHealth("p", "w", "u")
			m.SetWorkers([]*WorkerHealth{w, NewWorkerHealth("p", "w2", "u")})
			if tc.ramping {
				m.IsolateFor(w, 0, "")
				m.Restore(w)
			}
			b.ReportAllocs()
			for b.Loop() {
				_ = m.Weight(w)
			}
		})
	}
}

func BenchmarkOnResult(b *testing.B) {
	m := NewMonitor(isolation(IsolationSettings{}), nil, nil)
	w := NewWorkerHealth("p", "w", "u")
	m.SetWorkers([]*WorkerHealth{w})
	b.ReportAllocs()
	for b.Loop() {
		_, _ = m.OnResult(w, false)
	}
}

func BenchmarkTick100Workers(b *testing.B) {
	m := NewMonitor(isolation(IsolationSettings{SuccessRateMinRequests: 10, DetectionInterval: time.Nanosecond}), nil, nil)
	ws := make([]*WorkerHealth, 100)
	for i := range ws {
		ws[i] = NewWorkerHealth("p", "w", "u")
	}
	m.SetWorkers(ws)
	b.ReportAllocs()
	for b.Loop() {
		_ = m.Tick()
	}
}

func BenchmarkSnapshot(b *testing.B) {
	w := NewWorkerHealth("p", "w", "u")
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		_ = w.Snapshot(now)
	}
}
