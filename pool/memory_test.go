package pool

import (
	"sync"
	"testing"
	"time"
)

func TestLatencyRingPercentile(t *testing.T) {
	var lr LatencyRing
	lr.Refresh(50)
	if got := lr.Percentile(); got != 0 {
		t.Fatalf("Percentile of an empty ring = %v", got)
	}
	for i := 1; i <= 19; i++ {
		lr.Observe(time.Duration(i) * time.Millisecond)
	}
	lr.Refresh(50)
	if got := lr.Percentile(); got != 0 {
		t.Fatalf("Percentile with 19 samples = %v, want 0", got)
	}
	lr.Observe(20 * time.Millisecond)
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{
		{0, 1 * time.Millisecond},
		{50, 11 * time.Millisecond},
		{90, 19 * time.Millisecond},
		{99, 20 * time.Millisecond},
		{100, 20 * time.Millisecond},
	} {
		lr.Refresh(tc.p)
		if got := lr.Percentile(); got != tc.want {
			t.Errorf("p%v over 1..20ms = %v, want %v", tc.p, got, tc.want)
		}
	}

	// the ring keeps the newest latencySamples
	var ring LatencyRing
	for i := 1; i <= latencySamples+100; i++ {
		ring.Observe(time.Duration(i) * time.Millisecond)
	}
	ring.Refresh(0)
	if got, want := ring.Percentile(), 101*time.Millisecond; got != want {
		t.Fatalf("smallest kept latency = %v, want %v", got, want)
	}
	ring.Refresh(100)
	if got, want := ring.Percentile(), time.Duration(latencySamples+100)*time.Millisecond; got != want {
		t.Fatalf("largest kept latency = %v, want %v", got, want)
	}
}

func TestLatencyRingConcurrent(t *testing.T) {
	var lr LatencyRing
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				lr.Observe(time.Duration(g*1000+i) * time.Microsecond)
				if i%50 == 0 {
					lr.Refresh(90)
					_ = lr.Percentile()
				}
			}
		}()
	}
	wg.Wait()
	lr.Refresh(90)
	if got := lr.Percentile(); got <= 0 || got >= 4*time.Millisecond {
		t.Fatalf("p90 = %v, want within the observed range", got)
	}
}

func TestBodyMemoryLimit(t *testing.T) {
	var m BodyMemory
	if m.Take(1) {
		t.Fatal("Take(1) under a zero limit succeeded")
	}
	if !m.Take(0) {
		t.Fatal("Take(0) failed")
	}
	m.SetLimit(100)
	if !m.Take(60) || !m.Take(40) {
		t.Fatal("takes up to the limit failed")
	}
	if m.Used() != 100 {
		t.Fatalf("Used() = %d, want 100", m.Used())
	}
	if m.Take(1) {
		t.Fatal("a take beyond the limit succeeded")
	}
	if m.Used() != 100 {
		t.Fatalf("a refused take changed Used() to %d", m.Used())
	}
	m.Free(40)
	if m.Take(41) {
		t.Fatal("a take beyond what was freed succeeded")
	}
	if !m.Take(40) {
		t.Fatal("a take of what was freed failed")
	}
	// a lower limit refuses new takes, keeps what is held
	m.SetLimit(50)
	if m.Take(1) || m.Used() != 100 {
		t.Fatalf("after lowering the limit: Used() = %d", m.Used())
	}
	m.Free(100)
	if m.Used() != 0 || !m.Take(50) {
		t.Fatal("after freeing everything, the lower limit does not apply")
	}

	var unlimited *BodyMemory
	if !unlimited.Take(1 << 40) {
		t.Fatal("a nil BodyMemory refused a take")
	}
	unlimited.Free(1 << 40) // no panic
}

func TestBodyMemoryConcurrent(t *testing.T) {
	const (
		limit      = 1000
		goroutines = 8
		rounds     = 2000
	)
	var m BodyMemory
	m.SetLimit(limit)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var peak int64
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := int64(g%4*100 + 50)
			for range rounds {
				if m.Take(n) {
					if u := m.Used(); u > limit {
						mu.Lock()
						peak = max(peak, u)
						mu.Unlock()
					}
					m.Free(n)
				}
			}
		}()
	}
	wg.Wait()
	if peak > limit {
		t.Fatalf("Used() reached %d over the limit %d", peak, limit)
	}
	if got := m.Used(); got != 0 {
		t.Fatalf("Used() = %d after every take was freed", got)
	}
}
