package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/bifrost-proxy/bifrost/fleet/fleettest"
)

func TestQuantile(t *testing.T) {
	ds := []time.Duration{5, 1, 4, 2, 3}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 3}, {0.99, 5}, {1, 5}, {0, 1}} {
		if got := quantile(ds, tc.q); got != tc.want {
			t.Errorf("quantile(%v) = %v, want %v", tc.q, got, tc.want)
		}
	}
	if got := quantile(nil, 0.99); got != 0 {
		t.Errorf("quantile of nothing = %v", got)
	}
}

// calls counts the commands others sent, not the bench's own.
func TestRedisCalls(t *testing.T) {
	srv := fleettest.Start(t)
	r := &redis{addr: fmt.Sprintf("127.0.0.1:%d", srv.Port())}
	if _, err := r.do("CONFIG", "RESETSTAT"); err != nil {
		t.Fatal(err)
	}
	c := srv.Client("")
	for range 3 {
		c.HSet(t.Context(), "k", "f", "v")
	}
	c.HGetAll(t.Context(), "k")
	if _, err := r.do("FLUSHALL"); err != nil {
		t.Fatal(err)
	}
	total, by, err := r.calls()
	if err != nil {
		t.Fatal(err)
	}
	if by["hset"] != 3 || by["hgetall"] != 1 || by["flushall"] != 0 {
		t.Errorf("calls %d %v, want 3 hset and 1 hgetall, the bench's own left out", total, by)
	}
}

func TestBucketQuantile(t *testing.T) {
	h := map[float64]float64{0.005: 90, 0.01: 99, 0.025: 100, 0.05: 100}
	if b, n := bucketQuantile(h, .99); b != 0.01 || n != 100 {
		t.Errorf("p99 bucket %v of %v, want 0.01 of 100", b, n)
	}
	if b, _ := bucketQuantile(h, 1); b != 0.025 {
		t.Errorf("max bucket %v, want 0.025", b)
	}
	if b, n := bucketQuantile(map[float64]float64{}, .99); b != 0 || n != 0 {
		t.Errorf("empty: %v %v", b, n)
	}
}
