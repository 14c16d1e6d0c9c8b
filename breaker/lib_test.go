//go:build bk_cur || bk_gob

package breaker

import (
	"testing"
	"time"
)

func TestWindow(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		in                   time.Duration
		wantInterval, wantBP time.Duration
	}{
		{name: "ten buckets", in: time.Second, wantInterval: time.Second, wantBP: 100 * time.Millisecond},
		{name: "rounded down to buckets", in: 105, wantInterval: 100, wantBP: 10},
		{name: "too short for buckets", in: 9, wantInterval: 9, wantBP: 0},
		{name: "largest", in: maxWindow, wantInterval: maxWindow / 10 * 10, wantBP: maxWindow / 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			interval, bp := window(tc.in)
			if interval != tc.wantInterval || bp != tc.wantBP {
				t.Errorf("window(%v) = %v, %v; want %v, %v", tc.in, interval, bp, tc.wantInterval, tc.wantBP)
			}
			// The library rounds the interval up to a multiple of the
			// bucket period; that must neither overflow nor change it.
			if bp > 0 && (interval+bp-1)/bp*bp != interval {
				t.Errorf("library rounding changes interval %v", interval)
			}
		})
	}
}
