package selection

import (
	"fmt"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

var sizes = []int{3, 30, 300}

// BenchmarkP2CSelect is one pick with every upstream fed, as under the
// bifrost handler: two tracker lookups, two cost reads, one clock read.
// Every third upstream has a request in flight, so the oldest-request scan
// runs too.
func BenchmarkP2CSelect(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("upstreams=%d", n), func(b *testing.B) {
			p := newTestP2C(b, nil)
			pool := testPool(n)
			now := time.Now()
			for i, u := range pool {
				tr := p.tracker(u.Dial)
				observeAt(tr, now, time.Duration(i%7+1)*time.Millisecond)
				if i%3 == 0 {
					tr.Start(now)
				}
			}
			b.ReportAllocs()
			for b.Loop() {
				if p.Select(pool, nil, nil) == nil {
					b.Fatal("no upstream")
				}
			}
		})
	}
}

// BenchmarkP2CSelectPlain is one pick under plain reverse_proxy: nothing is
// fed, so the policy compares Caddy's request counts only.
func BenchmarkP2CSelectPlain(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("upstreams=%d", n), func(b *testing.B) {
			p := newTestP2C(b, nil)
			pool := testPool(n)
			b.ReportAllocs()
			for b.Loop() {
				if p.Select(pool, nil, nil) == nil {
					b.Fatal("no upstream")
				}
			}
		})
	}
}

// BenchmarkP2CSelectParallel is BenchmarkP2CSelect from all CPUs at once,
// with each pick's request started and finished as the bifrost handler
// would: the contended case.
func BenchmarkP2CSelectParallel(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("upstreams=%d", n), func(b *testing.B) {
			p := newTestP2C(b, nil)
			pool := testPool(n)
			for _, u := range pool {
				observeAt(p.tracker(u.Dial), time.Now(), time.Millisecond)
			}
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					u := p.Select(pool, nil, nil)
					tr := p.tracker(u.Dial)
					now := time.Now()
					tr.Done(tr.Start(now), now, time.Millisecond, false)
				}
			})
		})
	}
}

// BenchmarkCaddyRandomSelect is Caddy's random policy on the same pools,
// for comparison.
func BenchmarkCaddyRandomSelect(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("upstreams=%d", n), func(b *testing.B) {
			pool := testPool(n)
			var policy reverseproxy.RandomSelection
			b.ReportAllocs()
			for b.Loop() {
				if policy.Select(pool, nil, nil) == nil {
					b.Fatal("no upstream")
				}
			}
		})
	}
}

// BenchmarkTrackerStartDone is the feeding cost of one try.
func BenchmarkTrackerStartDone(b *testing.B) {
	tr := NewTracker(Settings{})
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		tr.Done(tr.Start(now), now, time.Millisecond, false)
	}
}
