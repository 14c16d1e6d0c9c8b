package pool

import (
	"context"
	"fmt"
	"runtime/debug"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"go.uber.org/zap"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/recovery"
)

// TickInterval is how often the pool's loop looks at isolation expiries
// and outlier detection, and runs its users' Tick.
const TickInterval = 250 * time.Millisecond

// User is one handler that serves the pool's workers: there is one per
// config that names the pool (two sites naming it, or the old and the
// new config during a reload). The pool's loop runs once whatever the
// number of users; it reports through the newest user and hands each
// user what concerns its own workers.
type User interface {
	// Reporter is how the pool logs, emits events and counts
	// transitions while this user is its newest.
	Reporter() Reporter
	// Restored is called once a worker is back from isolation; a user
	// that serves it restarts its proxy. It must not call Report or
	// Detach.
	Restored(w *Worker)
	// Tick runs the user's periodic work (hang detection, gauges) on
	// every tick of the pool's loop.
	Tick(now time.Time)
}

// Reporter is where a pool's logs, events and counts go.
type Reporter struct {
	Ctx    caddy.Context
	Events *caddyevents.App // nil: no events
	Logger *zap.Logger
	// Transition counts one worker transition (an event name) in the
	// metrics; nil: not counted.
	Transition func(pool, worker, event string)
	// BreakerState sets the breaker state gauge of a worker; nil: not
	// set.
	BreakerState func(pool, worker string, s breaker.State)
	// Error counts one classified error (see Book); nil: not counted.
	Error func(pool, worker string, k recovery.Kind, s recovery.Severity)
}

// Event names emitted through Caddy's events app.
const (
	EventBreakerOpened        = "breaker_opened"
	EventBreakerHalfOpen      = "breaker_half_open"
	EventBreakerClosed        = "breaker_closed"
	EventWorkerIsolated       = "worker_isolated"
	EventWorkerRestored       = "worker_restored"
	EventWorkerRecoveryFailed = "worker_recovery_failed"
)

// Attach makes u a user of the pool with the given workers, and starts
// the pool's loop if u is its first user. The newest user reports.
func (p *Pool) Attach(u User, workers []*Worker) {
	p.mu.Lock()
	if !slices.Contains(p.users, u) {
		p.users = append(p.users, u)
	}
	p.members[u] = workers
	start := p.stop == nil
	if start {
		ctx, cancel := context.WithCancel(context.Background())
		p.stop, p.done = cancel, make(chan struct{})
		go p.run(ctx, p.done)
	}
	p.mu.Unlock()
	p.syncMonitor()
}

// Attached reports whether the pool has a user: a config (running, or
// provisioned before it) serves it.
func (p *Pool) Attached() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.users) > 0
}

// SetWorkers replaces the workers of user u (dynamic upstreams change
// them at run time).
func (p *Pool) SetWorkers(u User, workers []*Worker) {
	p.mu.Lock()
	if _, ok := p.members[u]; !ok {
		p.mu.Unlock()
		return // not attached (yet, or any more)
	}
	p.members[u] = workers
	p.mu.Unlock()
	p.syncMonitor()
}

// Detach removes u from the pool's users; with the last one gone, the
// loop stops and Detach waits for it.
func (p *Pool) Detach(u User) {
	p.mu.Lock()
	p.users = slices.DeleteFunc(p.users, func(x User) bool { return x == u })
	delete(p.members, u)
	var stop func()
	var done chan struct{}
	if len(p.users) == 0 && p.stop != nil {
		stop, done = p.stop, p.done
		p.stop, p.done = nil, nil
	}
	p.mu.Unlock()
	if stop != nil {
		stop()
		if !p.loopEmitting.Load() {
			<-done
		}
		// else the loop may be the caller: a subscriber to an event it
		// emits, reloading the config; it returns once its emit does
		// (see flush), and does no more work meanwhile
	} else {
		// the loop may be handing u a tick it took before u left:
		// wait for it
		p.running.Lock()
		//lint:ignore SA2001 the empty critical section is the wait
		p.running.Unlock()
	}
	// so may a Report on another goroutine
	p.handing.Lock()
	//lint:ignore SA2001 the empty critical section is the wait
	p.handing.Unlock()
	p.syncMonitor()
}

// syncMonitor tells the isolation monitor about the workers of every
// user, each once, in the order the users came.
func (p *Pool) syncMonitor() {
	p.mu.Lock()
	var hs []*health.WorkerHealth
	seen := map[*Worker]bool{}
	for _, u := range p.users {
		for _, w := range p.members[u] {
			if !seen[w] {
				seen[w] = true
				hs = append(hs, w.Health)
			}
		}
	}
	p.mu.Unlock()
	p.Monitor.SetWorkers(hs)
}

// Workers returns the pool's workers: those of all its users, each once.
func (p *Pool) Workers() []*Worker {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*Worker
	for _, u := range p.users {
		for _, w := range p.members[u] {
			if !slices.Contains(out, w) {
				out = append(out, w)
			}
		}
	}
	return out
}

// snapshot returns the users, oldest first, and the newest one's
// reporter.
func (p *Pool) snapshot() ([]User, Reporter) {
	p.mu.Lock()
	defer p.mu.Unlock()
	users := slices.Clone(p.users)
	if len(users) == 0 {
		return nil, Reporter{Logger: zap.NewNop()}
	}
	return users, users[len(users)-1].Reporter()
}

// run is the pool's loop: breaker changes and the ticker.
func (p *Pool) run(ctx context.Context, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(TickInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
			for _, ch := range p.takeChanges() {
				p.safely("breaker_changes", func() { p.onBreakerChange(ch) })
			}
			p.safely("offered", p.applyOffered) // verdicts of other instances, without waiting for the tick
		case <-t.C:
			p.safely("ticker", p.tick)
		}
		p.flush()
		if ctx.Err() != nil {
			return // stopped, maybe by a subscriber to what flush emitted
		}
	}
}

// safely runs f, logging a panic instead of crashing the server or
// ending the loop. Detach waits for the f that is running. The events
// emitted meanwhile, by f or by anyone, wait in a queue that flush emits
// once f is done: Caddy runs event subscribers synchronously, and one
// that reloads the config calls Detach, which would wait for f forever.
func (p *Pool) safely(name string, f func()) {
	p.emitMu.Lock()
	p.looping = true
	p.emitMu.Unlock()
	p.running.Lock()
	defer p.running.Unlock()
	defer func() {
		if v := recover(); v != nil {
			_, rep := p.snapshot()
			rep.Logger.Error("pool loop panicked", zap.String("pool", p.Name),
				zap.String("loop", name), zap.Any("panic", v), zap.ByteString("stack", debug.Stack()))
		}
	}()
	f()
}

// flush emits the events queued while the loop worked (see safely), on
// the loop's goroutine, with no lock held.
func (p *Pool) flush() {
	p.emitMu.Lock()
	queue := p.pending
	p.pending, p.looping = nil, false
	p.emitMu.Unlock()
	if len(queue) == 0 {
		return
	}
	p.loopEmitting.Store(true)
	defer p.loopEmitting.Store(false)
	for _, e := range queue {
		e.rep.emit(e.name, e.data)
	}
}

// queuedEvent is an event waiting for the loop to finish its work.
type queuedEvent struct {
	rep  Reporter
	name string
	data map[string]any
}

// emit sends a Caddy event through rep, or queues it while the loop is at
// work (see safely).
func (p *Pool) emit(rep Reporter, name string, data map[string]any) {
	if rep.Events == nil {
		return
	}
	p.emitMu.Lock()
	if p.looping {
		p.pending = append(p.pending, queuedEvent{rep, name, data})
		p.emitMu.Unlock()
		return
	}
	p.emitMu.Unlock()
	rep.emit(name, data)
}

// tick runs isolation expiries and outlier detection, then each user's
// own periodic work.
func (p *Pool) tick() {
	p.applyOffered() // verdicts from storage or other instances
	for _, ev := range p.Monitor.Tick() {
		p.Report(ev)
	}
	users, _ := p.snapshot()
	now := p.now()
	for _, u := range users {
		u.Tick(now)
	}
}

// onBreakerChange logs one breaker transition (or several coalesced, see
// change), emits its event, tells the users, and isolates a worker whose
// breaker keeps opening.
func (p *Pool) onBreakerChange(ch change) {
	_, rep := p.snapshot()
	w := ch.w
	if rep.BreakerState != nil {
		rep.BreakerState(w.Pool, w.ID, ch.to)
	}
	fields := []zap.Field{zap.String("pool", w.Pool), zap.String("worker", w.ID),
		zap.Stringer("from", ch.from), zap.Stringer("to", ch.to)}
	data := map[string]any{"pool": w.Pool, "worker": w.ID, "upstream": w.Upstream, "from": ch.from.String()}
	if ch.n > 1 {
		// the breaker changed faster than the loop took its changes
		fields = append(fields, zap.Int("transitions", ch.n))
		data["transitions"] = ch.n
	}
	if ch.closed {
		w.Trips.Store(0)
	}
	for range ch.opens {
		p.Manager.CountBreakerTrip()
	}
	trips := w.Trips.Add(ch.opensAfterClose)
	switch ch.to {
	case breaker.StateOpen:
		if at := w.Breaker.RetryAt(); !at.IsZero() {
			data["until"] = at.UTC().Format(time.RFC3339Nano)
		}
		rep.Logger.Warn("breaker opened", append(fields, zap.Int32("trips_in_a_row", trips))...)
		p.emit(rep, EventBreakerOpened, data)
	case breaker.StateHalfOpen:
		rep.Logger.Info("breaker half-open", fields...)
		p.emit(rep, EventBreakerHalfOpen, data)
	case breaker.StateClosed:
		rep.Logger.Info("breaker closed", fields...)
		p.emit(rep, EventBreakerClosed, data)
	}
	if threshold := p.breakerTrips.Load(); ch.opensAfterClose > 0 && threshold > 0 && trips >= threshold {
		p.Isolate(w, health.ReasonBreaker, fmt.Sprintf("breaker opened %d times in a row", trips))
	}
}

// Isolate takes a worker out of rotation, unless max_percent forbids it,
// and reports it.
func (p *Pool) Isolate(w *Worker, reason health.Reason, detail string) bool {
	ev, ok := p.Monitor.Isolate(w.Health, reason, detail)
	if ok {
		p.Report(ev)
	}
	return ok
}

// Report logs, counts and emits an isolation transition, and hands a
// worker that came back to the users, which restart it. It is never
// called with a lock held.
func (p *Pool) Report(ev health.Event) {
	_, rep := p.snapshot()
	p.workerEvent(rep, ev)
	if ev.Type == health.EventIsolated || ev.Type == health.EventRestored {
		SignalVerdicts()
	}
	if ev.Type == health.EventRecoveryFailed {
		// isolated with no end: booked as an error too, its action
		// (isolate_worker) already done
		w := Ref{Pool: ev.Worker.Pool(), ID: ev.Worker.ID()}
		p.Book(Incident(recovery.KindWorkerRecoveryFailed, w, "health", "reinstatement", recovery.Truncate(ev.Reason, 200)))
	}
	if ev.Type != health.EventRestored {
		return
	}
	// the users of now, held until handed: Detach waits (only the
	// hand-off: subscribers to the events above may reload the config)
	p.handing.RLock()
	defer p.handing.RUnlock()
	users, _ := p.snapshot()
	for _, w := range p.Workers() {
		if w.Health == ev.Worker {
			for _, u := range users {
				u.Restored(w)
			}
			return
		}
	}
}

// emit sends a Caddy event; Emit runs subscribers synchronously, so it is
// never called with a lock held (see Pool.emit).
func (r Reporter) emit(name string, data map[string]any) {
	if r.Events != nil {
		r.Events.Emit(r.Ctx, name, data)
	}
}

// workerEvent logs an isolation transition through r, counts it and emits
// its Caddy event.
func (p *Pool) workerEvent(r Reporter, ev health.Event) {
	ev.Reason = recovery.Redact(ev.Reason) // it may quote an error
	data := map[string]any{
		"pool":     ev.Worker.Pool(),
		"worker":   ev.Worker.ID(),
		"upstream": ev.Worker.Upstream(),
		"reason":   ev.Reason,
	}
	fields := []zap.Field{
		zap.String("pool", ev.Worker.Pool()),
		zap.String("worker", ev.Worker.ID()),
		zap.String("reason", ev.Reason),
	}
	if !ev.Until.IsZero() {
		data["until"] = ev.Until.UTC().Format(time.RFC3339Nano)
		fields = append(fields, zap.Time("until", ev.Until))
	}
	var name string
	switch ev.Type {
	case health.EventIsolated:
		name = EventWorkerIsolated
		r.Logger.Warn("worker isolated", fields...)
	case health.EventRestored:
		name = EventWorkerRestored
		r.Logger.Info("worker restored", fields...)
	case health.EventRecoveryFailed:
		name = EventWorkerRecoveryFailed
		r.Logger.Error("worker recovery failed", fields...)
	default:
		return
	}
	if r.Transition != nil {
		r.Transition(ev.Worker.Pool(), ev.Worker.ID(), name)
	}
	p.emit(r, name, data)
}

// Coalesced returns how many breaker changes were merged into an earlier
// change of the same worker because the pool's loop fell behind (none is
// ever dropped).
func (p *Pool) Coalesced() uint64 { return p.coalesced.Load() }
