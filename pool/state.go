package pool

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/recovery"
	"github.com/bifrost-proxy/bifrost/selection"
)

// registry holds what must survive a config reload: one *Worker per worker
// and one *Pool per pool. A worker's key is its pool name and upstream dial
// address ("w|<pool>|<dial>"): a reload that keeps both keeps the worker's
// breaker, isolation, health history and selection tracker, and two sites
// that name the same pool share its workers. A pool's key is "p|<pool>".
// Every Acquire is matched by one Release.
var registry = caddy.NewUsagePool()

func workerKey(pool, dial string) string { return "w|" + pool + "|" + dial }
func poolKey(pool string) string         { return "p|" + pool }

// WorkerID makes the URL-safe id of a worker from its pool and dial
// address: characters other than letters, digits, '.', '-' and '_' become
// '-', so "api" and "127.0.0.1:9001" give "api_127.0.0.1-9001".
func WorkerID(pool, dial string) string {
	clean := func(s string) string {
		return strings.Map(func(r rune) rune {
			switch {
			case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_':
				return r
			}
			return '-'
		}, s)
	}
	return clean(pool) + "_" + clean(dial)
}

// Worker is the part of a worker that outlives a config: its breaker, its
// health record and its selection tracker. It is shared by every handler
// that uses the same pool and upstream. It must not be copied.
type Worker struct {
	ID       string
	IDValue  any // ID, boxed once for the replacer
	Pool     string
	Upstream string

	Breaker *breaker.Breaker
	Health  *health.WorkerHealth

	// Trips counts breaker openings since the breaker last closed; enough
	// of them in a row isolate the worker.
	Trips atomic.Int32

	// MaxRequests is the worker's concurrency limit (0: none), set by
	// the newest config.
	MaxRequests atomic.Int64

	// Slots counts the tries in flight that hold one of the MaxRequests
	// slots, in every config (see TakeSlot).
	Slots atomic.Int64

	// Backup is set on a backup worker (the backup subdirective) by the
	// newest config.
	Backup atomic.Bool

	// tracker holds the latency, failure share and requests in flight
	// that selection and hang detection read; it is replaced only when a
	// config changes its settings.
	tracker atomic.Pointer[workerTracker]

	// pending are the breaker's changes not yet taken by the pool's loop,
	// in order, at most maxPending (guarded by the pool's changesMu).
	pending []change
}

// workerTracker is a tracker with the settings it was made with.
type workerTracker struct {
	t *selection.Tracker
	s selection.Settings
}

// Tracker returns the worker's selection tracker.
func (w *Worker) Tracker() *selection.Tracker { return w.tracker.Load().t }

// setTracker gives the worker a new tracker with settings s, unless its
// tracker has them already.
func (w *Worker) setTracker(s selection.Settings) {
	if cur := w.tracker.Load(); cur == nil || cur.s != s {
		w.tracker.Store(&workerTracker{t: selection.NewTracker(s), s: s})
	}
}

// Destruct implements caddy.Destructor.
func (*Worker) Destruct() error { return nil }

// change is one breaker transition, handed from the breaker's state-change
// hook (which runs under the breaker's lock) to the pool's loop; or, when
// a worker's breaker changes faster than the loop takes its changes,
// several of them coalesced (n > 1): from is the first one's, to the last
// one's, and the counts keep what the loop needs of the others.
type change struct {
	w        *Worker
	from, to breaker.State
	// n is the number of transitions it stands for, opens how many of
	// them opened the breaker, closed whether one of them closed it, and
	// opensAfterClose how many opened it after the last close (all of
	// them if none closed it): the trips in a row they add.
	n               int
	opens           int32
	closed          bool
	opensAfterClose int32
}

// newChange returns the change of w's breaker from from to to.
func newChange(w *Worker, from, to breaker.State) change {
	c := change{w: w, from: from, to: to, n: 1}
	switch to {
	case breaker.StateOpen:
		c.opens, c.opensAfterClose = 1, 1
	case breaker.StateClosed:
		c.closed = true
	}
	return c
}

// merge adds the later change x of the same worker to c.
func (c *change) merge(x change) {
	c.to = x.to
	c.n += x.n
	c.opens += x.opens
	if x.closed {
		c.closed = true
		c.opensAfterClose = x.opensAfterClose
	} else {
		c.opensAfterClose += x.opensAfterClose
	}
}

// maxPending is how many changes of one worker wait for the pool's loop
// one by one; beyond that, the latest ones are coalesced into the last.
const maxPending = 8

// breakerChanged is the state-change hook of w's breaker: it queues the
// change for the pool's loop and wakes it. It runs under the breaker's
// lock, so it never blocks on the loop: a change is never dropped, and
// what waits is bounded by the workers (each with at most maxPending
// changes).
func (p *Pool) breakerChanged(w *Worker, from, to breaker.State) {
	c := newChange(w, from, to)
	p.changesMu.Lock()
	switch n := len(w.pending); {
	case n == 0:
		p.dirty = append(p.dirty, w)
		w.pending = append(w.pending, c)
	case n < maxPending:
		w.pending = append(w.pending, c)
	default:
		w.pending[n-1].merge(c)
		p.coalesced.Add(1)
	}
	p.changesMu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default: // the loop is woken already
	}
}

// takeChanges returns the breaker changes waiting for the loop: each
// worker's in order, the workers in the order their first change came.
func (p *Pool) takeChanges() []change {
	p.changesMu.Lock()
	defer p.changesMu.Unlock()
	var out []change
	for _, w := range p.dirty {
		out = append(out, w.pending...)
		clear(w.pending)
		w.pending = w.pending[:0]
	}
	clear(p.dirty)
	p.dirty = p.dirty[:0]
	return out
}

// Pool is the part of a pool that outlives a config: its isolation
// monitor, error history, retry budget and the memory its requests' body
// copies hold, and the one loop that handles its breaker changes and
// isolation timers (see Attach).
type Pool struct {
	Name    string
	Monitor *health.Monitor
	Manager *recovery.Manager
	Latency LatencyRing // recent successful try latencies (hedge delay)
	Replay  BodyMemory  // what request body copies hold (retry.max_body_total)

	// DynamicErr is the error of the dynamic source while its lookups
	// fail, nil otherwise (admin API, status page).
	DynamicErr atomic.Pointer[string]

	// ClientRequests and ClientFailures count the requests the pool's
	// handlers answered, and those whose answer to the client was a
	// failure (an upstream's failure passed on, a proxy error, a degraded
	// answer), whatever the tries before it: the status page shows what
	// clients saw apart from failed tries. Requests the client cancelled
	// are in neither. They are sharded: every request adds to them.
	ClientRequests, ClientFailures Counter

	// Breaker transitions leave the breakers' locks through the workers'
	// pending changes (see breakerChanged): dirty lists the workers with
	// some, in order, and wake tells the loop. Nothing is dropped and no
	// request waits for the loop; coalesced counts the changes merged
	// because one worker's breaker outran the loop.
	changesMu sync.Mutex
	dirty     []*Worker
	wake      chan struct{}
	coalesced atomic.Uint64

	// budget caps the pool's retries; nil (every retry allowed) until
	// the first config sets it (see SetBudget)
	budget atomic.Pointer[recovery.Budget]

	// breakerTrips is how many breaker openings in a row isolate a
	// worker, as the newest config says.
	breakerTrips atomic.Int32

	running sync.Mutex // held by the loop while it works

	// emitMu guards looping and pending: while the loop works, events
	// wait in pending, and the loop emits them once it is done (see
	// safely); loopEmitting is set while it does.
	emitMu       sync.Mutex
	looping      bool
	pending      []queuedEvent
	loopEmitting atomic.Bool
	// handing is read-held by Report while it hands a restored worker
	// to the users, on whatever goroutine: Detach waits for it, so a
	// user it let go gets no more Restored calls
	handing sync.RWMutex

	mu      sync.Mutex
	users   []User             // oldest first; the last one reports
	members map[User][]*Worker // each user's workers
	dynamic []string           // see Dynamic
	stop    func()             // stops the loop; nil while none runs
	done    chan struct{}      // closed when the loop has returned
	now     func() time.Time   // the loop's clock
}

// Acquire takes one reference to the pool named name, creating it if
// needed; Release gives it back.
func Acquire(name string) (*Pool, error) {
	v, _, err := registry.LoadOrNew(poolKey(name), func() (caddy.Destructor, error) {
		return &Pool{
			Name:    name,
			Monitor: health.NewMonitor(health.IsolationSettings{}, nil, nil),
			Manager: recovery.NewManager(recovery.ManagerConfig{}),
			wake:    make(chan struct{}, 1),
			members: map[User][]*Worker{},
			now:     time.Now,
		}, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*Pool), nil
}

// Release gives back one reference taken by Acquire.
func (p *Pool) Release() error {
	_, err := registry.Delete(poolKey(p.Name))
	return err
}

// Destruct implements caddy.Destructor; a pool holds no resources that
// outlive its last reference besides memory (its loop stops with its
// last user).
func (*Pool) Destruct() error { return nil }

// Budget returns the pool's retry budget (nil before SetBudget: every
// retry allowed).
func (p *Pool) Budget() *recovery.Budget { return p.budget.Load() }

// SetBudget sets the pool's retry budget: its ratio of retries to
// requests and retries per second always allowed. The first call also
// fixes its sliding window; later ones keep the window and its counts.
func (p *Pool) SetBudget(ratio float64, minPerSecond int, window time.Duration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if b := p.budget.Load(); b != nil {
		return b.Update(ratio, minPerSecond)
	}
	b, err := recovery.NewBudget(ratio, minPerSecond, window)
	if err != nil {
		return err
	}
	p.budget.Store(b)
	return nil
}

// SetBreakerTrips sets how many breaker openings in a row isolate a
// worker.
func (p *Pool) SetBreakerTrips(n int) { p.breakerTrips.Store(int32(n)) }

// AcquireWorker takes one reference to the shared state of the pool's
// worker for dial, creating it if needed (its breaker with settings bs),
// and applies the tracker settings of the config that acquires it: a
// surviving tracker is kept unless its settings changed. A surviving
// breaker is left as it is: the caller applies its config's breaker
// settings with Breaker.Update once that config runs (a breaker whose
// settings changed starts over closed, which a config that then fails to
// load must not do to the running one's). ReleaseWorker gives the
// reference back.
func (p *Pool) AcquireWorker(dial string, bs breaker.Settings, ts selection.Settings) (*Worker, error) {
	v, loaded, err := registry.LoadOrNew(workerKey(p.Name, dial), func() (caddy.Destructor, error) {
		w := &Worker{
			ID:       WorkerID(p.Name, dial),
			Pool:     p.Name,
			Upstream: dial,
			Health:   health.NewWorkerHealth(p.Name, WorkerID(p.Name, dial), dial),
		}
		w.IDValue = w.ID
		var err error
		w.Breaker, err = breaker.New(w.ID, bs, func(from, to breaker.State) {
			p.breakerChanged(w, from, to)
		})
		if err != nil {
			return nil, err
		}
		w.setTracker(ts)
		return w, nil
	})
	if err != nil {
		return nil, err
	}
	w := v.(*Worker)
	if loaded {
		// the breaker's settings are the caller's to apply (UpdateBreaker)
		// once its config runs: a new breaker starts closed, which a
		// config that fails to load must not do to the running one's
		w.setTracker(ts)
	}
	return w, nil
}

// ReleaseWorker gives back one reference taken by AcquireWorker, and
// reports whether any is left.
func (p *Pool) ReleaseWorker(w *Worker) (held bool, err error) {
	deleted, err := registry.Delete(workerKey(p.Name, w.Upstream))
	return !deleted, err
}

// Held reports whether any config still holds the worker's state.
func Held(w *Worker) bool {
	_, ok := registry.References(workerKey(w.Pool, w.Upstream))
	return ok
}

// Dynamic returns the addresses of the pool's dynamic workers as last
// seen, with which the next config starts.
func (p *Pool) Dynamic() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dynamic
}

// SetDynamic records the addresses of the pool's dynamic workers.
func (p *Pool) SetDynamic(dials []string) {
	p.mu.Lock()
	p.dynamic = dials
	p.mu.Unlock()
}

// Interface guards
var (
	_ caddy.Destructor = (*Pool)(nil)
	_ caddy.Destructor = (*Worker)(nil)
)
