package selection

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// testPool returns n available upstreams, built the way Caddy's own
// selection policy tests build theirs: a Host of their own and no
// breaker, so Available is true.
func testPool(n int) reverseproxy.UpstreamPool {
	pool := make(reverseproxy.UpstreamPool, n)
	for i := range pool {
		pool[i] = &reverseproxy.Upstream{Host: new(reverseproxy.Host), Dial: fmt.Sprintf("10.0.%d.%d:80", i/250, i%250+1)}
	}
	return pool
}

// newTestP2C returns a provisioned policy reading clock.
func newTestP2C(t testing.TB, clock *fakeClock) *P2C {
	p := new(P2C)
	if err := p.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	if clock != nil {
		p.now = clock.now
	}
	return p
}

// switchCB is a reverseproxy.CircuitBreaker whose state the test sets.
type switchCB struct{ down atomic.Bool }

func (c *switchCB) OK() bool                      { return !c.down.Load() }
func (*switchCB) RecordMetric(int, time.Duration) {}

// noTransport stands in for the transport of a handler that never proxies.
type noTransport struct{}

func (noTransport) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, fmt.Errorf("not used")
}

// switchablePool returns n upstreams whose availability the test controls
// through the returned breakers. Upstream.Available consults a breaker that
// only Handler.Provision can attach, and a handler has one breaker for all
// its upstreams, so each upstream gets a provisioned reverse_proxy handler
// of its own, as Bifrost's workers do. Dial addresses are unique to the
// test, because Caddy shares host state by address across handlers.
func switchablePool(t *testing.T, n int) (reverseproxy.UpstreamPool, []*switchCB) {
	// Handler.Provision needs a context with a config (for the events
	// app); ProvisionContext is Caddy's way to make one in tests.
	base, err := caddy.ProvisionContext(&caddy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(base)
	t.Cleanup(cancel)
	pool := make(reverseproxy.UpstreamPool, n)
	cbs := make([]*switchCB, n)
	for i := range n {
		cbs[i] = new(switchCB)
		h := &reverseproxy.Handler{
			Upstreams: reverseproxy.UpstreamPool{{Dial: fmt.Sprintf("%s-%d:80", t.Name(), i)}},
			CB:        cbs[i],
			Transport: noTransport{},
		}
		if err := h.Provision(ctx); err != nil {
			t.Fatalf("provisioning handler %d: %v", i, err)
		}
		t.Cleanup(func() { _ = h.Cleanup() })
		pool[i] = h.Upstreams[0]
	}
	return pool, cbs
}

func TestP2CChoosesCheaper(t *testing.T) {
	type state struct {
		latency  time.Duration // observed once at t0; 0 means no observation
		inflight int           // started at t0
		hungFor  time.Duration // > 0: one more request started that long before now
	}
	tests := []struct {
		name string
		a, b state
		want int // index of the upstream that must win every pick
	}{
		{"lower latency wins", state{latency: 10 * time.Millisecond}, state{latency: time.Millisecond}, 1},
		{"load multiplies latency", state{latency: time.Millisecond, inflight: 5}, state{latency: 2 * time.Millisecond}, 1},
		{"slow but idle beats fast but swamped", state{latency: 2 * time.Millisecond}, state{latency: time.Millisecond, inflight: 3}, 0},
		{"a hang loses before any timeout", state{latency: time.Millisecond, hungFor: 20 * time.Millisecond}, state{latency: 5 * time.Millisecond, inflight: 1}, 1},
		{"no observation: the rival's latency, so load decides", state{inflight: 1}, state{latency: 50 * time.Millisecond}, 1},
		{"no observation and idle: a new worker earns traffic", state{}, state{latency: time.Millisecond, inflight: 1}, 0},
		{"no observations at all: load decides", state{inflight: 2}, state{inflight: 1}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := fakeClock{t0}
			p := newTestP2C(t, &clock)
			pool := testPool(2)
			for i, s := range []state{tc.a, tc.b} {
				tr := p.tracker(pool[i].Dial)
				if s.latency > 0 {
					observeAt(tr, t0, s.latency)
				}
				for range s.inflight {
					tr.Start(t0)
				}
				if s.hungFor > 0 {
					tr.Start(t0.Add(-s.hungFor))
				}
			}
			for range 100 {
				if got := p.Select(pool, nil, nil); got != pool[tc.want] {
					t.Fatalf("picked %s, want %s", got.Dial, pool[tc.want].Dial)
				}
			}
		})
	}
}

func TestP2CNeverPicksUnavailable(t *testing.T) {
	tests := []struct {
		name string
		n    int
		down []int
	}{
		{"all available", 5, nil},
		{"some down", 5, []int{0, 3}},
		{"one left", 5, []int{0, 1, 2, 4}},
		{"two left of many (scan fallback)", 60, downExcept(60, 17, 42)},
		{"one left of many", 60, downExcept(60, 33)},
		{"none left", 5, []int{0, 1, 2, 3, 4}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool, cbs := switchablePool(t, tc.n)
			for _, i := range tc.down {
				cbs[i].down.Store(true)
			}
			p := newTestP2C(t, nil)
			// Feed the down ones as the cheapest, so only availability
			// keeps them out; the others have equal costs.
			for _, i := range tc.down {
				observeAt(p.tracker(pool[i].Dial), time.Now(), time.Microsecond)
			}
			seen := map[*reverseproxy.Upstream]int{}
			for range 2000 {
				got := p.Select(pool, nil, nil)
				if got == nil {
					continue
				}
				if !got.Available() {
					t.Fatalf("picked unavailable upstream %s", got.Dial)
				}
				seen[got]++
			}
			available := tc.n - len(tc.down)
			if len(seen) != available {
				t.Errorf("picked %d distinct upstreams, want all %d available ones", len(seen), available)
			}
		})
	}
}

// downExcept returns the indexes 0..n-1 without up.
func downExcept(n int, up ...int) []int {
	var out []int
	for i := range n {
		if !slices.Contains(up, i) {
			out = append(out, i)
		}
	}
	return out
}

func TestP2CUniformWithoutSignal(t *testing.T) {
	// With nothing to tell upstreams apart, picks must be spread evenly:
	// the pair sampling is unbiased, with or without unavailable ones.
	pool, cbs := switchablePool(t, 6)
	cbs[1].down.Store(true)
	cbs[4].down.Store(true)
	p := newTestP2C(t, nil)
	counts := make([]int, len(pool))
	const picks = 40_000
	for range picks {
		got := p.Select(pool, nil, nil)
		counts[slices.Index(pool, got)]++
	}
	for i, c := range counts {
		want := picks / 4
		if i == 1 || i == 4 {
			want = 0
		}
		if d := c - want; d > picks/50 || d < -picks/50 {
			t.Errorf("upstream %d got %d picks, want about %d (all: %v)", i, c, want, counts)
		}
	}
}

// sim drives a policy with injected time: requests arrive at a fixed
// interval, go where Select sends them, and are answered after their
// upstream's current latency (never, if it is negative: a hang).
type sim struct {
	clock   fakeClock
	p       *P2C
	pool    reverseproxy.UpstreamPool
	latency []time.Duration
	pending []simRequest

	// failRatio, if set, is the share of each upstream's answers that
	// are failures, drawn from rng.
	failRatio []float64
	rng       *rand.Rand // the policy's draws and the failures: seeded
}

// simSeed seeds each simulation's random numbers, so that a run is
// reproducible.
const simSeed = 1

type simRequest struct {
	due    time.Time
	up     int
	token  int64
	lat    time.Duration
	failed bool
}

// newSim returns a simulation whose upstreams have been observed once at
// their latency, so that their costs start apart.
func newSim(t testing.TB, latency ...time.Duration) *sim {
	s := &sim{clock: fakeClock{t0}, pool: testPool(len(latency)), latency: latency}
	s.rng = rand.New(rand.NewPCG(simSeed, simSeed))
	s.p = newTestP2C(t, &s.clock)
	s.p.rng = s.rng
	for i, u := range s.pool {
		if latency[i] > 0 {
			observeAt(s.p.tracker(u.Dial), t0, latency[i])
		}
	}
	return s
}

// run sends n requests, one every interval, and returns how many went to
// each upstream.
func (s *sim) run(n int, interval time.Duration) []int {
	counts := make([]int, len(s.pool))
	for range n {
		now := s.clock.advance(interval)
		s.answer(now)
		up := slices.Index(s.pool, s.p.Select(s.pool, nil, nil))
		counts[up]++
		tr := s.p.tracker(s.pool[up].Dial)
		r := simRequest{up: up, token: tr.Start(now), lat: s.latency[up]}
		if s.failRatio != nil {
			r.failed = s.rng.Float64() < s.failRatio[up]
		}
		if r.lat >= 0 {
			r.due = now.Add(r.lat)
			s.pending = append(s.pending, r)
		}
	}
	return counts
}

// answer completes, in order, every request due by now.
func (s *sim) answer(now time.Time) {
	slices.SortFunc(s.pending, func(a, b simRequest) int { return a.due.Compare(b.due) })
	n := 0
	for _, r := range s.pending {
		if r.due.After(now) {
			break
		}
		s.p.tracker(s.pool[r.up].Dial).Done(r.token, r.due, r.lat, r.failed)
		n++
	}
	s.pending = s.pending[n:]
}

func TestP2CSlowUpstreamShare(t *testing.T) {
	tests := []struct {
		name     string
		slow     time.Duration
		interval time.Duration
	}{
		{"10× slower, 500 req/s", 10 * time.Millisecond, 2 * time.Millisecond},
		{"10× slower, 2000 req/s", 10 * time.Millisecond, 500 * time.Microsecond},
		{"+300ms, 500 req/s", 301 * time.Millisecond, 2 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, time.Millisecond, time.Millisecond, tc.slow)
			const picks = 10_000
			counts := s.run(picks, tc.interval)
			if share := float64(counts[2]) / picks; share >= 0.05 {
				t.Errorf("slow upstream got %.1f%% of picks (%v), want < 5%%", 100*share, counts)
			}
			t.Logf("picks: %v", counts)
		})
	}
}

func TestP2CRecoveredUpstreamEarnsTrafficBack(t *testing.T) {
	s := newSim(t, time.Millisecond, time.Millisecond, 300*time.Millisecond)
	const interval = 2 * time.Millisecond
	// 30s of the slow phase.
	slow := s.run(15_000, interval)
	if share := float64(slow[2]) / 15_000; share >= 0.01 {
		t.Errorf("slow phase: slow upstream got %.2f%% of picks (%v)", 100*share, slow)
	}
	// It recovers. The decay brings it back: within two minutes it is
	// tried again, answers fast, and serves its share of the traffic.
	s.latency[2] = time.Millisecond
	s.run(60_000, interval)
	late := s.run(15_000, interval)
	if share := float64(late[2]) / 15_000; share < 0.25 {
		t.Errorf("after recovery: upstream got %.1f%% of picks (%v), want about a third", 100*share, late)
	}
	t.Logf("slow phase %v, after recovery %v", slow, late)
}

// TestP2CFlakyUpstreamShare: an upstream that fails 30% of its requests
// as fast as its peers answer keeps little traffic through its failure
// share, although each success ends the avoidance of its last failure;
// once it stops failing it earns its third back within seconds.
func TestP2CFlakyUpstreamShare(t *testing.T) {
	s := newSim(t, 2*time.Millisecond, 2*time.Millisecond, 2*time.Millisecond)
	s.failRatio = []float64{0, 0, 0.3}
	const interval = 2 * time.Millisecond // 500 req/s
	s.run(500, interval)                  // its first second
	flaky := s.run(5000, interval)        // ten seconds
	if share := float64(flaky[2]) / 5000; share >= 0.02 {
		t.Errorf("flaky upstream got %.1f%% of picks (%v), want < 2%%", 100*share, flaky)
	}
	s.failRatio[2] = 0
	s.run(1500, interval) // three seconds
	late := s.run(2500, interval)
	if share := float64(late[2]) / 2500; share < 0.25 {
		t.Errorf("after recovery: upstream got %.1f%% of picks (%v), want about a third", 100*share, late)
	}
	t.Logf("flaky phase %v, after recovery %v", flaky, late)
}

func TestP2CHungUpstreamGetsNoNewRequests(t *testing.T) {
	s := newSim(t, time.Millisecond, time.Millisecond, time.Millisecond)
	s.run(1000, 2*time.Millisecond)
	// It hangs from now on: its requests are never answered.
	s.latency[2] = -1
	first := s.run(50, 2*time.Millisecond) // its first 100ms
	after := s.run(5000, 2*time.Millisecond)
	if first[2] > 3 {
		t.Errorf("hung upstream got %d requests in its first 100ms, want at most 3", first[2])
	}
	if after[2] != 0 {
		t.Errorf("hung upstream got %d requests after its first 100ms, want 0", after[2])
	}
	if got := s.p.tracker(s.pool[2].Dial).Stuck(s.clock.now(), 100*time.Millisecond); got != first[2] {
		t.Errorf("Stuck = %d, want the %d hung requests", got, first[2])
	}
}

func TestP2CWithoutProvision(t *testing.T) {
	// A policy built in Go and never provisioned still works.
	var p P2C
	pool := testPool(3)
	if p.Select(pool, nil, nil) == nil {
		t.Fatal("Select returned nil on an available pool")
	}
	tr := p.tracker(pool[0].Dial)
	if tr == nil || p.Trackers().Get(pool[0].Dial) != tr {
		t.Fatal("Tracker did not register its tracker")
	}
	if p.Trackers().Settings().Decay != DefaultDecay {
		t.Error("unprovisioned policy does not use the default decay")
	}
}

func TestP2CEmptyAndSingle(t *testing.T) {
	p := newTestP2C(t, nil)
	if p.Select(nil, nil, nil) != nil {
		t.Error("Select on an empty pool returned an upstream")
	}
	pool := testPool(1)
	if p.Select(pool, nil, nil) != pool[0] {
		t.Error("Select on a pool of one did not return it")
	}
}

func TestPickTwo(t *testing.T) {
	// PickTwo over plain values: both indices satisfy ok and differ, -1
	// stands for "none", and every ordered pair of the allowed items is
	// about equally likely, whether draws or the scan found them.
	tests := []struct {
		name    string
		n       int
		allowed []int
	}{
		{"empty", 0, nil},
		{"none allowed", 4, nil},
		{"one allowed", 4, []int{2}},
		{"single item", 1, []int{0}},
		{"all of four", 4, []int{0, 1, 2, 3}},
		{"two of many (scan fallback)", 80, []int{5, 71}},
		{"three of six", 6, []int{0, 2, 5}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			items := make([]int, tc.n)
			for i := range items {
				items[i] = i
			}
			ok := func(i int) bool { return slices.Contains(tc.allowed, i) }
			pairs := map[[2]int]int{}
			const picks = 24_000
			for range picks {
				a, b := PickTwo(items, ok)
				switch {
				case len(tc.allowed) == 0:
					if a != -1 || b != -1 {
						t.Fatalf("PickTwo = %d, %d with nothing allowed, want -1, -1", a, b)
					}
					continue
				case a < 0 || !ok(items[a]):
					t.Fatalf("PickTwo's first index %d is not allowed", a)
				case len(tc.allowed) == 1:
					if b != -1 {
						t.Fatalf("PickTwo's second index = %d with one item allowed, want -1", b)
					}
				case b < 0 || b == a || !ok(items[b]):
					t.Fatalf("PickTwo = %d, %d: the second must be another allowed item", a, b)
				}
				pairs[[2]int{a, b}]++
			}
			if len(tc.allowed) < 2 {
				return
			}
			k := len(tc.allowed)
			want := picks / (k * (k - 1))
			if len(pairs) != k*(k-1) {
				t.Errorf("saw %d ordered pairs, want %d: %v", len(pairs), k*(k-1), pairs)
			}
			for p, c := range pairs {
				if d := c - want; d > want/5 || d < -want/5 {
					t.Errorf("pair %v picked %d times, want about %d (all: %v)", p, c, want, pairs)
				}
			}
		})
	}
}
