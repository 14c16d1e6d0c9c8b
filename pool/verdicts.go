package pool

import (
	"cmp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bifrost-proxy/bifrost/health"
)

// Verdict is what Bifrost keeps of one worker beyond its process: its
// isolation and its throttle, as kept in storage across a restart or
// shared with other instances (see the bifrost app). Breaker counts,
// latencies and requests in flight are local traffic views and are not
// part of it. It is a plain value.
type Verdict struct {
	// Upstream is the worker's dial address; with the pool's name it
	// names the worker in every instance.
	Upstream string
	// Isolation is the worker's isolation; nil when it has none.
	Isolation *health.Verdict
	// ThrottledUntil is the end of the worker's throttle (a Retry-After);
	// zero when it has none.
	ThrottledUntil time.Time
	// Restore asks for the worker's isolation to end now, as an operator's
	// restore on another instance.
	Restore bool
	// Reset asks for the worker's breaker to close and its counts to
	// clear, as an operator's reset on another instance (see Act).
	Reset bool
	// Issued is when the verdict was made; of verdicts that compete for
	// the places max_percent leaves, the oldest win.
	Issued time.Time
}

// Verdicts returns the verdicts of the pool's workers at now: the
// isolations, and the throttles that have not ended, by upstream.
func (p *Pool) Verdicts(now time.Time) []Verdict {
	var out []Verdict
	for _, w := range p.Workers() {
		v := Verdict{Upstream: w.Upstream}
		if iso, ok := w.Health.Verdict(); ok {
			v.Isolation = &iso
		}
		if tu := w.Health.ThrottledUntil(); now.Before(tu) {
			v.ThrottledUntil = tu
		}
		if v.Isolation != nil || !v.ThrottledUntil.IsZero() {
			out = append(out, v)
		}
	}
	return out
}

// Apply applies verdicts to the pool's workers, oldest first (an
// operator's last of those issued together), and
// returns how many changed a worker: a throttle extends the worker's, an
// isolation is adopted within the pool's isolation limits (see
// health.Monitor.Adopt) and reported as the pool reports its own, a
// restore ends the worker's isolation, and a reset closes its breaker
// and clears its counts. Verdicts naming an upstream the
// pool does not have are dropped. It is never called with a lock held.
func (p *Pool) Apply(vs []Verdict) int {
	byDial := map[string]*Worker{}
	for _, w := range p.Workers() {
		byDial[w.Upstream] = w
	}
	vs = slices.Clone(vs)
	// oldest first; of verdicts issued together, the automatic ones
	// before operators', which max_percent does not limit but which
	// take places from the automatic ones
	slices.SortStableFunc(vs, func(a, b Verdict) int {
		if c := a.Issued.Compare(b.Issued); c != 0 {
			return c
		}
		return cmp.Compare(operatorRank(a), operatorRank(b))
	})
	now := p.now()
	n := 0
	for _, v := range vs {
		w := byDial[v.Upstream]
		if w == nil {
			continue
		}
		if v.Reset {
			w.Breaker.Reset()
			w.Trips.Store(0)
			n++
			continue
		}
		if v.Restore {
			if ev, ok := p.Monitor.Restore(w.Health); ok {
				p.Report(ev)
				n++
			}
			continue
		}
		if now.Before(v.ThrottledUntil) && w.Health.ThrottledUntil().Before(v.ThrottledUntil) {
			w.Health.Throttle(v.ThrottledUntil)
			n++
		}
		if v.Isolation != nil {
			if ev, ok := p.Monitor.Adopt(w.Health, *v.Isolation, MaxIsolateDuration); ok {
				p.Report(ev)
				n++
			}
		}
	}
	return n
}

// fleetMark follows the reason of an isolation taken from the fleet,
// with the instance that issued it (see FleetReason).
const fleetMark = " [fleet: "

// FleetReason returns the reason of an isolation taken from the fleet:
// the author's reason, marked with the author.
func FleetReason(reason, author string) string { return reason + fleetMark + author + "]" }

// FleetAuthor returns the instance an isolation's reason says it was
// taken from, and "" for an isolation of this instance.
func FleetAuthor(reason string) string {
	i := strings.LastIndex(reason, fleetMark)
	if i < 0 || !strings.HasSuffix(reason, "]") {
		return ""
	}
	return reason[i+len(fleetMark) : len(reason)-1]
}

// operatorRank is 1 for an operator's isolation, 0 for other verdicts.
func operatorRank(v Verdict) int {
	if v.Isolation != nil && v.Isolation.Operator {
		return 1
	}
	return 0
}

// offers holds the verdicts offered to each pool (*Pool to *offerBox)
// until its loop applies them.
var offers sync.Map

// maxOffered bounds the verdicts waiting for a pool's loop; older ones
// are dropped first.
const maxOffered = 1024

// offerBox is the verdicts waiting for one pool's loop.
type offerBox struct {
	mu sync.Mutex
	vs []Verdict
}

// Offer hands verdicts to the pool's loop, which applies them (see
// Apply) at once, woken. It never blocks on the loop.
func (p *Pool) Offer(vs []Verdict) {
	if len(vs) == 0 {
		return
	}
	v, _ := offers.LoadOrStore(p, new(offerBox))
	box := v.(*offerBox)
	box.mu.Lock()
	box.vs = append(box.vs, vs...)
	if over := len(box.vs) - maxOffered; over > 0 {
		box.vs = slices.Delete(box.vs, 0, over)
	}
	box.mu.Unlock()
	if p.wake != nil {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// verdictsChanged is signalled when a worker's verdict changed in this
// process (an isolation began or ended, a throttle began).
var verdictsChanged = make(chan struct{}, 1)

// VerdictsChanged is signalled when a worker's verdict changed in this
// process, so that the bifrost app publishes it to the fleet without
// waiting for its next turn. Signals are coalesced: one may stand for
// several changes.
func VerdictsChanged() <-chan struct{} { return verdictsChanged }

// SignalVerdicts says that a worker's verdict changed (see
// VerdictsChanged). It never blocks: it may run on a request's path.
func SignalVerdicts() {
	select {
	case verdictsChanged <- struct{}{}:
	default:
	}
}

// applyOffered applies the verdicts offered since the last tick; the
// pool's loop calls it.
func (p *Pool) applyOffered() {
	v, ok := offers.LoadAndDelete(p)
	if !ok {
		return
	}
	box := v.(*offerBox)
	box.mu.Lock()
	vs := box.vs
	box.vs = nil
	box.mu.Unlock()
	p.Apply(vs)
}

// ActionObserver is told of every operator action (see Act) after it was
// done: the worker, the action, and for "isolate" its duration and
// reason.
type ActionObserver func(w *Worker, action string, d time.Duration, reason string)

// actionObserver is the current ActionObserver; nil: none.
var actionObserver atomic.Pointer[ActionObserver]

// ObserveActions makes f the observer of operator actions, replacing any
// other, and returns a function that removes it again unless another
// replaced it meanwhile.
func ObserveActions(f ActionObserver) (remove func()) {
	p := &f
	actionObserver.Store(p)
	return func() { actionObserver.CompareAndSwap(p, nil) }
}

// observed tells the observer of operator actions about one.
func observed(w *Worker, action string, d time.Duration, reason string) {
	if f := actionObserver.Load(); f != nil {
		(*f)(w, action, d, reason)
	}
}
