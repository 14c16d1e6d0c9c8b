package selection

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	caddy.RegisterModule(new(P2C))
}

// drawAttempts is how many random draws Select makes to find an available
// candidate before it falls back to scanning the pool. Draws cost one
// Available call each; the scan costs one per upstream, so it is kept for
// pools that are mostly unavailable.
const drawAttempts = 4

// P2C is a latency- and load-aware selection policy, the default of
// Bifrost: it picks two different available upstreams at random ("power of
// two choices") and sends the request to the one with the lower cost,
//
//	max(latency estimate, age of its oldest unanswered request) × (requests in flight + 1)
//
// The latency estimate is a peak EWMA: a slow answer raises it at once, fast
// answers lower it over time (and each by at least a sixteenth of the way,
// so a busy upstream's lone hiccup is soon forgotten), and without answers
// it decays towards zero,
// so an upstream that was avoided for being slow is tried again after a
// while and wins its traffic back as soon as it answers fast. The age term
// makes an upstream whose requests go unanswered (a hang) more expensive at
// once, before any timeout fires.
//
// Latencies are fed by Bifrost's `bifrost` handler, which reports every try
// to the policy's trackers. Under plain `reverse_proxy`, which reports
// nothing, the policy knows only the number of active requests per upstream
// (the count `least_conn` uses) and behaves like `random_choose 2`: the less
// loaded of two random available upstreams. Either way the load is the
// larger of the two counts it has, the tracker's and Caddy's.
//
// An upstream with no latency observations yet is given the estimate of the
// other candidate, so a new or recovered upstream competes on load alone.
// Ties go to either candidate at random. Picking costs no allocation.
//
// Latency state belongs to the policy instance: it starts afresh when the
// configuration is reloaded, and is learned again within the first answers.
type P2C struct {
	// How quickly latency history is forgotten: the time constant of each
	// upstream's latency estimate (default 1s, DefaultDecay, the same as
	// the bifrost handler's default policy). Without answers, an
	// upstream's estimate falls to 37% of its value in this time, so an
	// upstream that was avoided for being N times slower than its peers
	// is tried again after about ln(N) × decay (e.g. 300× slower: about
	// 6 × decay); answers faster than the estimate pull it down at the
	// same rate, or by a sixteenth of the way each if that is more.
	// Shorter values recover faster and follow noise more.
	Decay caddy.Duration `json:"decay,omitempty"`

	once     sync.Once
	trackers *Trackers
	now      func() time.Time // injected by tests; nil means time.Now
	rng      *rand.Rand       // injected by single-goroutine tests; nil means the global source
}

// CaddyModule returns the Caddy module information.
func (*P2C) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.selection_policies.bifrost_p2c",
		New: func() caddy.Module { return new(P2C) },
	}
}

// Provision sets up p.
func (p *P2C) Provision(caddy.Context) error {
	if p.Decay == 0 {
		p.Decay = caddy.Duration(DefaultDecay)
	}
	p.once.Do(p.setup)
	return nil
}

// Validate ensures that p's configuration is valid.
func (p *P2C) Validate() error {
	if p.Decay < 0 {
		return fmt.Errorf("decay must be positive, got %s", time.Duration(p.Decay))
	}
	return nil
}

// setup creates the tracker registry. It runs once, from Provision or from
// the first use of a P2C built in Go without provisioning.
func (p *P2C) setup() {
	p.trackers = NewTrackers(Settings{Decay: time.Duration(p.Decay)})
}

// tracker returns the tracker of the upstream with the given dial address
// (its Dial as configured), creating it if needed. The caller feeds it with
// Start and Done around each try; see the package documentation. Call it
// only for configured upstreams: the registry is bounded, and returns nil
// (a valid tracker that records nothing) once full.
func (p *P2C) tracker(dial string) *Tracker {
	p.once.Do(p.setup)
	return p.trackers.GetOrCreate(dial)
}

// Trackers returns the policy's tracker registry, for removing stale
// entries or reading them.
func (p *P2C) Trackers() *Trackers {
	p.once.Do(p.setup)
	return p.trackers
}

// Select returns the cheaper of two random available upstreams, the only
// one if just one is available, or nil if none is.
func (p *P2C) Select(pool reverseproxy.UpstreamPool, _ *http.Request, _ http.ResponseWriter) *reverseproxy.Upstream {
	p.once.Do(p.setup)
	ia, ib := pickTwo(p.rng, pool, available)
	switch {
	case ia < 0:
		return nil
	case ib >= 0 && p.cheaper(pool[ib], pool[ia]):
		return pool[ib]
	}
	return pool[ia]
}

// cheaper reports whether sending the request to a costs less than to b.
// On a tie it returns false: Select passes its second draw as a, so that
// ties go to the first draw, itself random.
func (p *P2C) cheaper(a, b *reverseproxy.Upstream) bool {
	ca := Candidate{p.trackers.Get(a.Dial), numRequests(a)}
	cb := Candidate{p.trackers.Get(b.Dial), numRequests(b)}
	if ca.Tracker == nil && cb.Tracker == nil {
		// Plain reverse_proxy: nothing is fed, and costs with equal
		// latencies compare as the loads do (no clock needed).
		return ca.Requests < cb.Requests
	}
	return p.Cheaper(ca, cb, p.clock())
}

// Candidate is one side of a comparison: an upstream's tracker (nil if it
// has none) and Caddy's count of its active requests.
type Candidate struct {
	Tracker  *Tracker
	Requests int64
}

// Cheaper reports whether a costs less than b at now; on a tie it returns
// false. Select compares its second draw to its first this way. A handler
// that owns the policy's trackers can make Select's choice itself with
// PickTwo and Cheaper, without looking its upstreams' trackers up by
// address.
func (p *P2C) Cheaper(a, b Candidate, now time.Time) bool {
	va, vb := a.Tracker.view(now), b.Tracker.view(now)
	va.inflight = max(va.inflight, a.Requests)
	vb.inflight = max(vb.inflight, b.Requests)
	switch {
	case va.known && !vb.known:
		vb.latency = va.latency
	case vb.known && !va.known:
		va.latency = vb.latency
	case !va.known && !vb.known:
		va.latency = float64(p.Trackers().Settings().Initial)
		vb.latency = va.latency
	}
	return costOf(va) < costOf(vb)
}

func (p *P2C) clock() time.Time {
	if p.now != nil {
		return p.now()
	}
	return time.Now()
}

// numRequests returns Caddy's count of active requests to u, which every
// handler dialing the same address shares.
func numRequests(u *reverseproxy.Upstream) int64 {
	if u.Host == nil {
		return 0
	}
	return int64(u.NumRequests())
}

// available reports whether u may be selected.
func available(u *reverseproxy.Upstream) bool {
	return u != nil && u.Available()
}

// PickTwo returns the indices of two different items for which ok
// reports true, each pair equally likely, in random order; b is -1 if only
// one is, and both are -1 if none is. It draws at random first, so a
// mostly available pool costs a few ok calls whatever its size, and falls
// back to a reservoir scan when draws keep hitting unavailable items.
// Rejected draws and the scan both sample uniformly among the available
// items, so their mix does too.
func PickTwo[T any](items []T, ok func(T) bool) (a, b int) {
	return pickTwo(nil, items, ok)
}

// pickTwo is PickTwo drawing from rng, or from math/rand/v2's global
// source when rng is nil.
func pickTwo[T any](rng *rand.Rand, items []T, ok func(T) bool) (a, b int) {
	n := len(items)
	if n == 0 {
		return -1, -1
	}
	a = -1
	for range drawAttempts {
		if i := intN(rng, n); ok(items[i]) {
			a = i
			break
		}
	}
	if a < 0 {
		if a = scanOne(rng, items, ok, -1); a < 0 {
			return -1, -1
		}
	}
	if n == 1 {
		return a, -1
	}
	for range drawAttempts {
		j := intN(rng, n-1)
		if j >= a {
			j++ // skip a: j is uniform over the others
		}
		if ok(items[j]) {
			return a, j
		}
	}
	return a, scanOne(rng, items, ok, a)
}

// scanOne returns the index of an item other than skip for which ok
// reports true, chosen uniformly by reservoir sampling, or -1 if there is
// none.
func scanOne[T any](rng *rand.Rand, items []T, ok func(T) bool, skip int) int {
	chosen, seen := -1, 0
	for i, it := range items {
		if i == skip || !ok(it) {
			continue
		}
		seen++
		if intN(rng, seen) == 0 {
			chosen = i
		}
	}
	return chosen
}

// intN returns a random number in [0,n) from rng, or from math/rand/v2's
// global source when rng is nil.
func intN(rng *rand.Rand, n int) int {
	if rng != nil {
		return rng.IntN(n)
	}
	return rand.IntN(n) //nolint:gosec // load balancing, not security
}

// UnmarshalCaddyfile sets up the module from Caddyfile tokens. Syntax:
//
//	lb_policy bifrost_p2c [<decay>]
//
// decay is a duration (default 1s); see the Decay field.
func (p *P2C) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume policy name
	if d.NextArg() {
		dur, err := caddy.ParseDuration(d.Val())
		if err != nil {
			return d.Errf("invalid decay '%s': %v", d.Val(), err)
		}
		if dur <= 0 {
			return d.Errf("invalid decay '%s': must be positive", d.Val())
		}
		p.Decay = caddy.Duration(dur)
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("bifrost_p2c takes no block; unrecognized subdirective '%s'", d.Val())
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*P2C)(nil)
	_ caddy.Validator       = (*P2C)(nil)
	_ caddyfile.Unmarshaler = (*P2C)(nil)
	_ reverseproxy.Selector = (*P2C)(nil)
)
