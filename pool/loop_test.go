package pool

import (
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bifrost-proxy/bifrost/health"
)

// running reports whether the pool has a loop (started and not stopped).
func running(p *Pool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stop != nil
}

func TestAttachStartsOneLoopForAllUsers(t *testing.T) {
	p := newPool(t)
	w := newWorker(t, p, "10.0.0.1:80", slowBreaker)
	users := []*fakeUser{newUser("a"), newUser("b"), newUser("c")}
	base := baseline(t)

	for _, u := range users {
		attach(t, p, u, w)
	}
	if !running(p) {
		t.Fatal("no loop after Attach")
	}
	// every user is ticked by the one loop
	for _, u := range users {
		waitTicks(t, u, 2)
	}
	if n := loops(); n != 1 {
		t.Fatalf("%d loops run for 3 users, want 1", n)
	}
	settleGoroutines(t, base+1, "one loop for 3 users")

	// attaching a user again changes nothing
	p.Attach(users[0], []*Worker{w})
	if n := loops(); n != 1 {
		t.Fatalf("%d loops run after a repeated Attach, want 1", n)
	}
	p.mu.Lock()
	nusers := len(p.users)
	p.mu.Unlock()
	if nusers != 3 {
		t.Fatalf("users = %d after a repeated Attach, want 3", nusers)
	}
}

func TestDetachNonLastUserKeepsLoop(t *testing.T) {
	p := newPool(t)
	w := newWorker(t, p, "10.0.0.1:80", slowBreaker)
	other := newWorker(t, p, "10.0.0.2:80", slowBreaker)
	a, b := newUser("a"), newUser("b")
	base := baseline(t)
	attach(t, p, a, w, other)
	attach(t, p, b, w, other)
	waitTicks(t, a, 1)

	p.Detach(a)
	if !running(p) {
		t.Fatal("Detach of a user that is not the last stopped the loop")
	}
	ticks := a.ticks.Load()
	waitTicks(t, b, 3)
	if got := a.ticks.Load(); got != ticks {
		t.Fatalf("detached user got %d more ticks", got-ticks)
	}
	if n := loops(); n != 1 {
		t.Fatalf("%d loops run, want 1", n)
	}
	settleGoroutines(t, base+1, "the loop still runs")

	// a worker back from isolation goes to the remaining user only
	if _, ok := p.Monitor.IsolateFor(w.Health, 0, "test"); !ok {
		t.Fatal("IsolateFor refused")
	}
	if err := Act(w, "restore", 0, ""); err != nil {
		t.Fatal(err)
	}
	if got := b.restoredList(); len(got) != 1 || got[0] != w {
		t.Fatalf("remaining user restored %v, want [%s]", got, w.ID)
	}
	if got := a.restoredList(); len(got) != 0 {
		t.Fatalf("detached user got Restored(%v)", got)
	}
}

func TestDetachLastStopsLoopAndWaits(t *testing.T) {
	p := newPool(t)
	w := newWorker(t, p, "10.0.0.1:80", slowBreaker)
	a, b := newUser("a"), newUser("b")
	base := baseline(t)
	p.Attach(a, []*Worker{w})
	p.Attach(b, []*Worker{w})
	waitTicks(t, b, 1)

	p.Detach(a)
	p.Detach(b)
	if running(p) {
		t.Fatal("the loop still runs after its last user left")
	}
	// Detach waited for the loop: it has closed done, and its goroutine
	// is on its way out
	settleGoroutines(t, base, "the loop's goroutine to end")

	// a clock that is not the stopped loop: another pool's user
	clock := newUser("clock")
	q := newPool(t)
	attach(t, q, clock)
	ta, tb := a.ticks.Load(), b.ticks.Load()
	waitTicks(t, clock, 3)
	if a.ticks.Load() != ta || b.ticks.Load() != tb {
		t.Fatal("users were ticked after the last Detach returned")
	}
	if got := p.Workers(); len(got) != 0 {
		t.Fatalf("Workers() = %v after every user left", got)
	}
	if _, _, total := p.Monitor.Counts(); total != 0 {
		t.Fatalf("monitor knows %d workers after every user left", total)
	}
}

func TestDetachWaitsForRunningTick(t *testing.T) {
	for _, last := range []bool{false, true} {
		name := "not last"
		if last {
			name = "last"
		}
		t.Run(name, func(t *testing.T) {
			p := newPool(t)
			a, b := newUser("a"), newUser("b")
			entered, release := make(chan struct{}), make(chan struct{})
			var once bool
			a.onTick = func() {
				if !once {
					once = true
					close(entered)
					<-release
				}
			}
			attach(t, p, a)
			if !last {
				attach(t, p, b)
			}
			var released sync.Once
			unblock := func() { released.Do(func() { close(release) }) }
			t.Cleanup(unblock) // runs before the Detach of attach, even on failure
			<-entered          // the loop is inside a's Tick

			returned := make(chan struct{})
			go func() {
				p.Detach(a)
				close(returned)
			}()
			select {
			case <-returned:
				t.Fatal("Detach returned while the loop was still ticking its user")
			case <-time.After(50 * time.Millisecond):
			}
			unblock()
			select {
			case <-returned:
			case <-time.After(10 * time.Second):
				t.Fatal("Detach did not return once the tick ended")
			}
			if running(p) == last {
				t.Fatalf("loop running = %v after Detach (last user: %v)", running(p), last)
			}
		})
	}
}

func TestAttachAfterLastDetachStartsNewLoop(t *testing.T) {
	p := newPool(t)
	a := newUser("a")
	base := baseline(t)
	for round := range 3 {
		p.Attach(a, nil)
		if !running(p) {
			t.Fatalf("round %d: no loop after Attach", round)
		}
		waitTicks(t, a, 1)
		settleGoroutines(t, base+1, "one loop")
		p.Detach(a)
		settleGoroutines(t, base, "no loop")
	}
}

func TestBreakerChangesWaitForTheNextLoop(t *testing.T) {
	// changes made while no loop runs are kept in the channel and handled
	// by the next loop
	p := newPool(t)
	w := newWorker(t, p, "10.0.0.1:80", slowBreaker)
	w.Breaker.Trip()
	u := newUser("u")
	attach(t, p, u, w)
	eventually(t, 10*time.Second, "the open breaker counted", func() bool { return w.Trips.Load() == 1 })
}

func TestLoopSurvivesPanicInTick(t *testing.T) {
	p := newPool(t)
	u := newUser("u")
	var n int
	u.onTick = func() {
		n++
		if n == 1 {
			panic("boom")
		}
	}
	attach(t, p, u)
	waitTicks(t, u, 2) // the first tick panicked before counting
	entries := u.logs.FilterMessage("pool loop panicked").All()
	if len(entries) != 1 {
		t.Fatalf("%d panic log entries, want 1", len(entries))
	}
	if m := entries[0].ContextMap(); m["pool"] != p.Name || m["loop"] != "ticker" || m["panic"] != "boom" {
		t.Fatalf("panic entry fields = %v", m)
	}
}

func TestWorkersAndMonitorFollowUsers(t *testing.T) {
	p := newPool(t)
	w1 := newWorker(t, p, "10.0.0.1:80", slowBreaker)
	w2 := newWorker(t, p, "10.0.0.2:80", slowBreaker)
	w3 := newWorker(t, p, "10.0.0.3:80", slowBreaker)
	w4 := newWorker(t, p, "10.0.0.4:80", slowBreaker)
	a, b, stranger := newUser("a"), newUser("b"), newUser("stranger")

	total := func() int {
		_, _, n := p.Monitor.Counts()
		return n
	}
	check := func(step string, want ...*Worker) {
		t.Helper()
		if got := p.Workers(); !slices.Equal(got, want) {
			t.Fatalf("%s: Workers() = %v, want %v", step, ids(got), ids(want))
		}
		if got := total(); got != len(want) {
			t.Fatalf("%s: monitor knows %d workers, want %d", step, got, len(want))
		}
		// the monitor acts on exactly these workers
		for _, w := range []*Worker{w1, w2, w3, w4} {
			ev, ok := p.Monitor.IsolateFor(w.Health, 0, "membership probe")
			if ok != slices.Contains(want, w) {
				t.Fatalf("%s: monitor member(%s) = %v", step, w.ID, ok)
			}
			if ok {
				if _, ok := p.Monitor.Restore(ev.Worker); !ok {
					t.Fatalf("%s: restore %s refused", step, w.ID)
				}
			}
		}
	}

	attach(t, p, a, w1, w2)
	check("a attached", w1, w2)
	attach(t, p, b, w2, w3) // w2 is shared: once
	check("b attached", w1, w2, w3)

	p.SetWorkers(b, []*Worker{w4, w2})
	check("b's workers replaced", w1, w2, w4)

	member := func(u User) bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		_, ok := p.members[u]
		return ok
	}
	p.SetWorkers(stranger, []*Worker{w3})
	check("SetWorkers of a user not attached", w1, w2, w4)
	if member(stranger) {
		t.Fatal("SetWorkers recorded the workers of a user not attached")
	}

	p.Detach(a)
	check("a detached", w4, w2)

	p.SetWorkers(a, []*Worker{w1}) // detached: nothing
	check("SetWorkers after Detach", w4, w2)
	if member(a) {
		t.Fatal("SetWorkers recorded the workers of a detached user")
	}

	p.Detach(b)
	check("b detached")
}

func ids(ws []*Worker) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.ID)
	}
	return out
}

// isolated reports whether w is isolated now.
func isolated(w *Worker) bool { return w.Health.Isolated() }

// restoreEvent isolates w by operator and restores it, returning the
// restore event (not reported).
func restoreEvent(t *testing.T, p *Pool, w *Worker) health.Event {
	t.Helper()
	if _, ok := p.Monitor.IsolateFor(w.Health, 0, "test"); !ok {
		t.Fatal("IsolateFor refused")
	}
	ev, ok := p.Monitor.Restore(w.Health)
	if !ok {
		t.Fatal("Restore refused")
	}
	return ev
}

func TestDetachWaitsForRestoredInFlight(t *testing.T) {
	// Report runs on any goroutine (a probe, a request, the admin API):
	// a user that Detach has let go must not be handed a restored worker
	// by a Report that began before
	p := newPool(t)
	w := newWorker(t, p, "10.0.0.1:80", slowBreaker)
	a, b := newUser("a"), newUser("b")
	entered, release := make(chan struct{}), make(chan struct{})
	a.onRestored = func(*Worker) {
		close(entered)
		<-release
	}
	var detached atomic.Bool
	var late atomic.Int32
	b.onRestored = func(*Worker) {
		if detached.Load() {
			late.Add(1)
		}
	}
	attach(t, p, a, w)
	attach(t, p, b, w)
	var released sync.Once
	unblock := func() { released.Do(func() { close(release) }) }
	t.Cleanup(unblock)

	ev := restoreEvent(t, p, w)
	reported := make(chan struct{})
	go func() {
		p.Report(ev) // a first (oldest), then b
		close(reported)
	}()
	<-entered

	returned := make(chan struct{})
	go func() {
		p.Detach(b)
		detached.Store(true)
		close(returned)
	}()
	select {
	case <-returned:
	case <-time.After(50 * time.Millisecond):
	}
	unblock()
	for _, ch := range []chan struct{}{reported, returned} {
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatal("Report or Detach did not return")
		}
	}
	if n := late.Load(); n != 0 {
		t.Fatalf("a user got Restored %d time(s) after its Detach returned", n)
	}
	if got := a.restoredList(); len(got) != 1 {
		t.Fatalf("the remaining user restored %v, want [%s]", ids(got), w.ID)
	}
}
