package pool

import (
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/recovery"
)

// breakerPool is a pool with a worker w whose breaker walks through its
// states quickly and a sentinel for barrier; with both attached, automatic
// isolation has room for one.
func breakerPool(t *testing.T, trips int) (p *Pool, w, sentinel *Worker) {
	t.Helper()
	p = newPool(t)
	p.SetBreakerTrips(trips)
	w = newWorker(t, p, "10.0.0.1:80", fastBreaker)
	sentinel = newWorker(t, p, "10.0.0.3:80", slowBreaker)
	return p, w, sentinel
}

// reopen turns an open fastBreaker half-open, then open again: one more
// opening without a close in between.
func reopen(t *testing.T, w *Worker) {
	t.Helper()
	halfOpen(t, w)
	w.Breaker.Trip()
}

func TestBreakerOpeningTwiceInARowIsolates(t *testing.T) {
	p, w, sentinel := breakerPool(t, 2)
	u := newUser("u")
	attach(t, p, u, w, sentinel)

	// the first opening, through a failed request
	pass, err := w.Breaker.Allow()
	if err != nil {
		t.Fatalf("Allow: %v", err)
	}
	pass.Done(breaker.Failure)
	barrier(t, u, sentinel)
	if got := w.Trips.Load(); got != 1 {
		t.Fatalf("Trips = %d after one opening, want 1", got)
	}
	if isolated(w) {
		t.Fatal("isolated after one opening")
	}

	reopen(t, w)
	barrier(t, u, sentinel)
	if !isolated(w) {
		t.Fatal("not isolated after two openings in a row")
	}
	if got := w.Trips.Load(); got != 2 {
		t.Fatalf("Trips = %d, want 2", got)
	}
	if n := u.countTransitions(w.ID, EventWorkerIsolated); n != 1 {
		t.Fatalf("worker_isolated counted %d times, want 1", n)
	}
	if r := w.Health.Snapshot(time.Now()).IsolationReason; !strings.HasPrefix(r, string(health.ReasonBreaker)) ||
		!strings.Contains(r, "breaker opened 2 times in a row") {
		t.Fatalf("isolation reason = %q", r)
	}
	iso := u.logs.FilterMessage("worker isolated").All()
	if len(iso) != 1 || iso[0].Level != zapcore.WarnLevel || iso[0].ContextMap()["worker"] != w.ID ||
		iso[0].ContextMap()["pool"] != p.Name {
		t.Fatalf("worker isolated log entries = %v", iso)
	}
	if _, ok := iso[0].ContextMap()["until"]; !ok {
		t.Fatal("the isolation's log entry has no until")
	}

	// a third opening while isolated: no second isolation
	reopen(t, w)
	barrier(t, u, sentinel)
	if n := u.countTransitions(w.ID, EventWorkerIsolated); n != 1 {
		t.Fatalf("worker_isolated counted %d times after a third opening, want 1", n)
	}
	if got, want := u.statesOf(w.ID), []breaker.State{
		breaker.StateOpen, breaker.StateHalfOpen, breaker.StateOpen, breaker.StateHalfOpen, breaker.StateOpen,
	}; !slices.Equal(got, want) {
		t.Fatalf("BreakerState hook got %v, want %v", got, want)
	}
	for _, c := range u.stateList() {
		if c.pool != p.Name {
			t.Fatalf("BreakerState hook got pool %q, want %q", c.pool, p.Name)
		}
	}
	// logged in order with the count of openings
	var trips []int32
	for _, e := range u.logs.FilterMessage("breaker opened").All() {
		if e.ContextMap()["worker"] == w.ID {
			trips = append(trips, e.ContextMap()["trips_in_a_row"].(int32))
		}
	}
	if !slices.Equal(trips, []int32{1, 2, 3}) {
		t.Fatalf("breaker opened log entries count %v, want [1 2 3]", trips)
	}
	if n := u.logCount("breaker half-open", w.ID); n != 2 {
		t.Fatalf("%d breaker half-open entries, want 2", n)
	}
	// w opened 3 times, the sentinel once per barrier
	if got := p.Manager.Stats().BreakerTrips; got != 3+3 {
		t.Fatalf("BreakerTrips = %d, want 6", got)
	}
}

func TestBreakerCloseResetsTheCount(t *testing.T) {
	p, w, sentinel := breakerPool(t, 2)
	u := newUser("u")
	attach(t, p, u, w, sentinel)

	w.Breaker.Trip()
	halfOpen(t, w)
	// a successful probe closes it
	pass, err := w.Breaker.Allow()
	if err != nil {
		t.Fatalf("Allow: %v", err)
	}
	pass.Done(breaker.Success)
	w.Breaker.Trip()
	barrier(t, u, sentinel)
	if isolated(w) {
		t.Fatal("isolated although the breaker closed between its openings")
	}
	if got := w.Trips.Load(); got != 1 {
		t.Fatalf("Trips = %d, want 1 (the close reset it)", got)
	}
	if got, want := u.statesOf(w.ID), []breaker.State{
		breaker.StateOpen, breaker.StateHalfOpen, breaker.StateClosed, breaker.StateOpen,
	}; !slices.Equal(got, want) {
		t.Fatalf("BreakerState hook got %v, want %v", got, want)
	}
	if n := u.logCount("breaker closed", w.ID); n != 1 {
		t.Fatalf("%d breaker closed entries, want 1", n)
	}
	if n := u.countTransitions(w.ID, EventWorkerIsolated); n != 0 {
		t.Fatalf("worker_isolated counted %d times, want 0", n)
	}
}

func TestBreakerTripsZeroNeverIsolates(t *testing.T) {
	p, w, sentinel := breakerPool(t, 0)
	u := newUser("u")
	attach(t, p, u, w, sentinel)
	w.Breaker.Trip()
	for range 3 {
		reopen(t, w)
	}
	barrier(t, u, sentinel)
	if got := w.Trips.Load(); got != 4 {
		t.Fatalf("Trips = %d, want 4", got)
	}
	if isolated(w) {
		t.Fatal("isolated with breaker trips off")
	}
}

func TestBreakerIsolationWithinMaxPercent(t *testing.T) {
	// two workers: at most one may be isolated automatically
	p, w, sentinel := breakerPool(t, 1)
	u := newUser("u")
	attach(t, p, u, w, sentinel)
	if _, ok := p.Monitor.IsolateFor(sentinel.Health, 0, "operator"); !ok {
		t.Fatal("IsolateFor refused")
	}
	w.Breaker.Trip()
	barrier(t, u, sentinel)
	if u.logCount("breaker opened", w.ID) != 1 {
		t.Fatal("the opening was not handled")
	}
	if isolated(w) {
		t.Fatal("isolated beyond max_percent")
	}
	if n := u.countTransitions(w.ID, EventWorkerIsolated); n != 0 {
		t.Fatalf("refused isolation counted %d times", n)
	}
}

func TestNewestUserReports(t *testing.T) {
	p, w, sentinel := breakerPool(t, 0)
	older, newer := newUser("older"), newUser("newer")
	attach(t, p, older, w, sentinel)
	attach(t, p, newer, w, sentinel)

	w.Breaker.Trip()
	barrier(t, newer, sentinel)
	if got := newer.statesOf(w.ID); !slices.Equal(got, []breaker.State{breaker.StateOpen}) {
		t.Fatalf("newest user's hook got %v", got)
	}
	if got := older.stateList(); len(got) != 0 {
		t.Fatalf("older user's hook got %v", got)
	}
	if n := newer.logCount("breaker opened", w.ID); n != 1 {
		t.Fatalf("newest user's logger has %d breaker opened entries, want 1", n)
	}
	if n := older.logs.Len(); n != 0 {
		t.Fatalf("older user's logger has %d entries", n)
	}

	// the newest leaves: the older one reports again
	p.Detach(newer)
	w.Breaker.Reset()
	barrier(t, older, sentinel)
	if got := older.statesOf(w.ID); !slices.Equal(got, []breaker.State{breaker.StateClosed}) {
		t.Fatalf("remaining user's hook got %v", got)
	}
	if got := newer.statesOf(w.ID); len(got) != 1 {
		t.Fatalf("detached user's hook got %v", got)
	}
}

func TestReportRestoredGoesToEveryUser(t *testing.T) {
	p := newPool(t)
	w1 := newWorker(t, p, "10.0.0.1:80", slowBreaker)
	w2 := newWorker(t, p, "10.0.0.2:80", slowBreaker)
	a, b := newUser("a"), newUser("b")
	attach(t, p, a, w1)
	attach(t, p, b, w1, w2)

	p.Report(restoreEvent(t, p, w2))
	for _, u := range []*fakeUser{a, b} {
		if got := u.restoredList(); len(got) != 1 || got[0] != w2 {
			t.Fatalf("user %s restored %v, want [%s]", u.name, ids(got), w2.ID)
		}
	}
	if n := b.countTransitions(w2.ID, EventWorkerRestored); n != 1 {
		t.Fatalf("newest user counted worker_restored %d times, want 1", n)
	}
	if n := a.countTransitions(w2.ID, EventWorkerRestored); n != 0 {
		t.Fatalf("older user counted worker_restored %d times", n)
	}
	if n := b.logCount("worker restored", w2.ID); n != 1 {
		t.Fatalf("%d worker restored entries, want 1", n)
	}

	// a worker none of the users serves is reported, not handed out
	q := newPool(t)
	stray := newWorker(t, q, "10.0.0.9:80", slowBreaker)
	p.Report(health.Event{Type: health.EventRestored, Worker: stray.Health, Reason: "test"})
	if got := b.restoredList(); len(got) != 1 {
		t.Fatalf("users restored %v, want only %s", ids(got), w2.ID)
	}
	if n := b.countTransitions(stray.ID, EventWorkerRestored); n != 1 {
		t.Fatalf("stray restore counted %d times, want 1", n)
	}

	// an isolation is reported and hands nothing out
	ev, ok := p.Monitor.IsolateFor(w1.Health, time.Minute, "")
	if !ok {
		t.Fatal("IsolateFor refused")
	}
	p.Report(ev)
	if n := b.countTransitions(w1.ID, EventWorkerIsolated); n != 1 {
		t.Fatalf("worker_isolated counted %d times, want 1", n)
	}
	if got := a.restoredList(); len(got) != 1 {
		t.Fatalf("an isolation restored %v", ids(got))
	}

	// an event of no known type is ignored
	before := b.logs.Len()
	p.Report(health.Event{Worker: w1.Health})
	if b.logs.Len() != before || len(b.transitionList()) != 3 {
		t.Fatal("an event of no type was reported")
	}
}

func TestReportRecoveryFailedBooksAnError(t *testing.T) {
	p := newPool(t)
	s := testIsolation
	s.MaxRecoveryAttempts = 1
	setIsolation(t, p, s)
	w := newWorker(t, p, "10.0.0.1:80", slowBreaker)
	other := newWorker(t, p, "10.0.0.2:80", slowBreaker)
	u := newUser("u")
	attach(t, p, u, w, other)

	// reinstated, then failing on probation with no attempt left
	restoreEvent(t, p, w)
	ev, ok := p.Monitor.OnResult(w.Health, true)
	if !ok || ev.Type != health.EventRecoveryFailed {
		t.Fatalf("OnResult = %v, %v; want a recovery-failed event", ev.Type, ok)
	}
	p.Report(ev)

	errs := p.Manager.Errors(recovery.Filter{Kind: recovery.KindWorkerRecoveryFailed})
	if len(errs) != 1 {
		t.Fatalf("%d worker_recovery_failed errors in the history, want 1", len(errs))
	}
	ce := errs[0]
	if ce.Context.Pool != p.Name || ce.Context.WorkerID != w.ID || ce.Context.Component != "health" ||
		ce.Context.Operation != "reinstatement" || ce.Severity != recovery.SeverityCritical ||
		ce.Message != ev.Reason {
		t.Fatalf("booked error = %+v", ce)
	}
	if got := u.errorList(); len(got) != 1 || got[0] != (bookedError{p.Name, w.ID, recovery.KindWorkerRecoveryFailed, recovery.SeverityCritical}) {
		t.Fatalf("Error hook got %v", got)
	}
	if n := u.countTransitions(w.ID, EventWorkerRecoveryFailed); n != 1 {
		t.Fatalf("worker_recovery_failed counted %d times, want 1", n)
	}
	entries := u.logs.FilterMessage("worker recovery failed").All()
	if len(entries) != 1 || entries[0].Level != zapcore.ErrorLevel {
		t.Fatalf("recovery failed log entries = %v", entries)
	}
	if got := u.restoredList(); len(got) != 0 {
		t.Fatalf("recovery failed restored %v", ids(got))
	}

	// a long reason is cut
	p.Report(health.Event{Type: health.EventRecoveryFailed, Worker: w.Health, Reason: strings.Repeat("x", 1000)})
	errs = p.Manager.Errors(recovery.Filter{Kind: recovery.KindWorkerRecoveryFailed, Limit: 1})
	if n := len(errs[0].Message); n > 200 || n < 100 {
		t.Fatalf("a 1000-byte reason was booked as %d bytes, want at most 200", n)
	}
}

func TestIsolateReportsOnce(t *testing.T) {
	p := newPool(t)
	w := newWorker(t, p, "10.0.0.1:80", slowBreaker)
	other := newWorker(t, p, "10.0.0.2:80", slowBreaker)
	u := newUser("u")
	attach(t, p, u, w, other)

	if !p.Isolate(w, health.ReasonCritical, "test") {
		t.Fatal("Isolate refused")
	}
	if p.Isolate(w, health.ReasonCritical, "again") {
		t.Fatal("Isolate of an isolated worker succeeded")
	}
	if p.Isolate(other, health.ReasonCritical, "beyond max_percent") {
		t.Fatal("Isolate beyond max_percent succeeded")
	}
	if n := u.countTransitions(w.ID, EventWorkerIsolated); n != 1 {
		t.Fatalf("worker_isolated counted %d times, want 1", n)
	}
	if n := len(u.transitionList()); n != 1 {
		t.Fatalf("%d transitions counted, want 1", n)
	}
}

func TestBookAndIncident(t *testing.T) {
	p := newPool(t)
	w := newWorker(t, p, "10.0.0.1:80", slowBreaker)
	before := time.Now()
	ce := Incident(recovery.KindHealthCheckFailed, w.Ref(), "health", "probe", "connection refused")
	if ce.Kind != recovery.KindHealthCheckFailed || ce.Severity != recovery.KindHealthCheckFailed.Severity() ||
		ce.Action != recovery.KindHealthCheckFailed.SuggestedRecovery() || ce.Message != "connection refused" ||
		ce.Context.Component != "health" || ce.Context.Operation != "probe" ||
		ce.Context.Pool != p.Name || ce.Context.WorkerID != w.ID ||
		ce.Timestamp.Before(before) || ce.Timestamp.After(time.Now()) {
		t.Fatalf("Incident = %+v", ce)
	}
	if r := w.Ref(); r != (Ref{Pool: p.Name, ID: w.ID}) {
		t.Fatalf("Ref = %+v", r)
	}

	// no user: booked, counted nowhere
	p.Book(ce)
	if got := p.Manager.Stats().TotalErrors; got != 1 {
		t.Fatalf("TotalErrors = %d, want 1", got)
	}

	older, newer := newUser("older"), newUser("newer")
	attach(t, p, older, w)
	attach(t, p, newer, w)
	p.Book(Incident(recovery.KindTimeout, w.Ref(), "health", "hang_detection", "hung"))
	if got := newer.errorList(); len(got) != 1 || got[0] != (bookedError{p.Name, w.ID, recovery.KindTimeout, recovery.KindTimeout.Severity()}) {
		t.Fatalf("newest user's Error hook got %v", got)
	}
	if got := older.errorList(); len(got) != 0 {
		t.Fatalf("older user's Error hook got %v", got)
	}
	errs := p.Manager.Errors(recovery.Filter{})
	if len(errs) != 2 || errs[0].Kind != recovery.KindTimeout || errs[1].Kind != recovery.KindHealthCheckFailed {
		t.Fatalf("history = %v", errs)
	}
}

// TestNoBreakerChangeIsLost makes more breaker changes than the loop can
// take at once while it is stopped (the channel it had dropped changes past
// 256): a worker's changes are coalesced, never dropped, so the close after
// an opening still resets its trips in a row, and its next opening does not
// isolate it.
func TestNoBreakerChangeIsLost(t *testing.T) {
	p, w, sentinel := breakerPool(t, 2)
	filler := newWorker(t, p, "10.0.0.2:80", slowBreaker)
	// no loop yet: a burst of 255 changes of another worker, then w opens
	// and closes
	for range 127 {
		filler.Breaker.Trip()
		filler.Breaker.Reset()
	}
	filler.Breaker.Trip()
	w.Breaker.Trip()
	w.Breaker.Reset()

	u := newUser("u")
	attach(t, p, u, w, sentinel, filler)
	eventually(t, 10*time.Second, "w's opening reached the loop", func() bool { return slices.Contains(u.statesOf(w.ID), breaker.StateOpen) })
	barrier(t, u, sentinel)
	if got := w.Trips.Load(); got != 0 {
		t.Fatalf("Trips = %d after an opening and a close, want 0", got)
	}
	if got := filler.Trips.Load(); got != 1 {
		t.Errorf("filler's Trips = %d after its last close and one opening, want 1", got)
	}
	if got := p.Manager.Stats().BreakerTrips; got != 128+1+1 {
		t.Errorf("breaker trips counted = %d, want all %d (the barrier's included)", got, 128+1+1)
	}
	if states := u.statesOf(w.ID); states[len(states)-1] != breaker.StateClosed {
		t.Errorf("w's last reported state is not closed: %v", states)
	}

	// one more opening is the first in a row
	w.Breaker.Trip()
	barrier(t, u, sentinel)
	if got := w.Trips.Load(); got != 1 {
		t.Fatalf("Trips = %d, want 1", got)
	}
	if isolated(w) {
		t.Fatal("isolated after one opening in a row: a close was lost")
	}
}
