package pool

import (
	"testing"
	"time"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/selection"
)

func TestWorkerID(t *testing.T) {
	for _, tc := range []struct{ pool, dial, want string }{
		{"api", "127.0.0.1:9001", "api_127.0.0.1-9001"},
		{"my pool/v2", "[::1]:80", "my-pool-v2_---1--80"},
		{"A-b_c.d", "host.example:443", "A-b_c.d_host.example-443"},
		{"café", "unix//run/s.sock", "caf-_unix--run-s.sock"},
		{"", "", "_"},
	} {
		if got := WorkerID(tc.pool, tc.dial); got != tc.want {
			t.Errorf("WorkerID(%q, %q) = %q, want %q", tc.pool, tc.dial, got, tc.want)
		}
	}
}

func TestAcquireWorkerSharesState(t *testing.T) {
	p := newPool(t)
	bs := breaker.Settings{Failures: 3, Successes: 1, Timeout: time.Hour}
	ts := selection.Settings{Decay: time.Second}
	w := newWorker(t, p, "10.0.0.1:80", bs)
	if w.ID != WorkerID(p.Name, "10.0.0.1:80") || w.IDValue != any(w.ID) || w.Pool != p.Name || w.Upstream != "10.0.0.1:80" {
		t.Fatalf("worker = %+v", w)
	}
	if w.Health.ID() != w.ID || w.Health.Pool() != p.Name || w.Health.Upstream() != w.Upstream {
		t.Fatalf("health record names %s/%s/%s", w.Health.Pool(), w.Health.ID(), w.Health.Upstream())
	}
	w.Breaker.Trip()
	tracker := w.Tracker()

	// a reload with the same breaker settings keeps the breaker's state
	again, err := p.AcquireWorker("10.0.0.1:80", bs, selection.Settings{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = p.ReleaseWorker(again) })
	if again != w {
		t.Fatal("a second acquire of the same dial made a new worker")
	}
	if w.Breaker.State() != breaker.StateOpen || w.Breaker.Trips() != 1 {
		t.Fatalf("breaker after a second acquire: %v, trips %d", w.Breaker.State(), w.Breaker.Trips())
	}

	// one with other breaker settings leaves the breaker as it is: the
	// config that acquires it applies them once it runs, which a config
	// that fails to load never does
	bs2 := breaker.Settings{Failures: 7, Successes: 1, Timeout: time.Hour}
	other, err := p.AcquireWorker("10.0.0.1:80", bs2, selection.Settings{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = p.ReleaseWorker(other) })
	if other != w {
		t.Fatal("an acquire with other breaker settings made a new worker")
	}
	if w.Breaker.State() != breaker.StateOpen || w.Breaker.Settings() != bs {
		t.Fatalf("breaker after an acquire with other settings: %v, %+v; want it open, with the settings it had", w.Breaker.State(), w.Breaker.Settings())
	}
	if err := w.Breaker.Update(bs2); err != nil {
		t.Fatal(err)
	}
	if w.Breaker.State() != breaker.StateClosed || w.Breaker.Trips() != 1 {
		t.Fatalf("breaker after new settings: %v, trips %d; want closed, trips kept", w.Breaker.State(), w.Breaker.Trips())
	}
	if got := w.Breaker.Settings().Failures; got != 7 {
		t.Fatalf("breaker failures = %d after a reload, want the new 7", got)
	}
	if w.Tracker() != tracker {
		t.Fatal("the tracker was replaced although its settings are the same")
	}

	// new tracker settings: a new tracker
	third, err := p.AcquireWorker("10.0.0.1:80", bs2, ts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = p.ReleaseWorker(third) })
	if third != w || w.Tracker() == tracker || w.Tracker() == nil {
		t.Fatal("the tracker was kept although its settings changed")
	}
	tracker = w.Tracker()
	fourth, err := p.AcquireWorker("10.0.0.1:80", bs2, ts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = p.ReleaseWorker(fourth) })
	if w.Tracker() != tracker {
		t.Fatal("the tracker was replaced by the same settings")
	}

	// another dial, or the same dial in another pool, is another worker
	if other := newWorker(t, p, "10.0.0.2:80", bs); other == w {
		t.Fatal("two dials share a worker")
	}
	q := newPool(t)
	if other := newWorker(t, q, "10.0.0.1:80", bs); other == w || other.Pool != q.Name {
		t.Fatal("two pools share a worker")
	}
}

func TestReleaseWorkerCountsReferences(t *testing.T) {
	p := newPool(t)
	w, err := p.AcquireWorker("10.0.0.1:80", slowBreaker, selection.Settings{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.AcquireWorker("10.0.0.1:80", slowBreaker, selection.Settings{}); err != nil {
		t.Fatal(err)
	}
	if !Held(w) || Lookup(w.ID) != w {
		t.Fatal("an acquired worker is not held")
	}
	held, err := p.ReleaseWorker(w)
	if err != nil || !held {
		t.Fatalf("first of two releases: held %v, err %v; want held", held, err)
	}
	if !Held(w) || Lookup(w.ID) != w {
		t.Fatal("a worker with one reference left is not held")
	}
	held, err = p.ReleaseWorker(w)
	if err != nil || held {
		t.Fatalf("last release: held %v, err %v; want not held", held, err)
	}
	if Held(w) || Lookup(w.ID) != nil {
		t.Fatal("a released worker is still held")
	}

	// acquired again: a new worker, with fresh state
	w.Breaker.Trip()
	fresh := newWorker(t, p, "10.0.0.1:80", slowBreaker)
	if fresh == w || fresh.Breaker.State() != breaker.StateClosed {
		t.Fatal("a worker acquired after its last release kept the old state")
	}
}

func TestAcquireReleasePool(t *testing.T) {
	name := uniqueName(t)
	p, err := Acquire(name)
	if err != nil {
		t.Fatal(err)
	}
	q, err := Acquire(name)
	if err != nil {
		t.Fatal(err)
	}
	if p != q {
		t.Fatal("two acquires of one name made two pools")
	}
	if p.Name != name || p.Monitor == nil || p.Manager == nil || p.Budget() != nil {
		t.Fatalf("pool = %+v", p)
	}
	if Named(name) != p {
		t.Fatal("Named does not find an acquired pool")
	}
	if err := p.Release(); err != nil {
		t.Fatal(err)
	}
	if Named(name) != p {
		t.Fatal("a pool with a reference left is gone")
	}
	if err := q.Release(); err != nil {
		t.Fatal(err)
	}
	if Named(name) != nil {
		t.Fatal("a released pool is still named")
	}
	r, err := Acquire(name)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Release()
	if r == p {
		t.Fatal("a pool acquired after its last release is the old one")
	}
}

func TestDynamicAndCoalesced(t *testing.T) {
	p := newPool(t)
	if got := p.Dynamic(); got != nil {
		t.Fatalf("Dynamic() = %v before any SetDynamic", got)
	}
	p.SetDynamic([]string{"10.0.0.1:80", "10.0.0.2:80"})
	if got := p.Dynamic(); len(got) != 2 || got[1] != "10.0.0.2:80" {
		t.Fatalf("Dynamic() = %v", got)
	}

	// with no loop to take them, a worker's changes wait, the latest
	// coalesced past maxPending, never blocking the breaker
	w := newWorker(t, p, "10.0.0.1:80", fastBreaker)
	for range maxPending {
		w.Breaker.Trip()
		w.Breaker.Reset()
	}
	if got, want := p.Coalesced(), uint64(maxPending); got != want {
		t.Fatalf("Coalesced() = %d after %d changes, want %d", got, 2*maxPending, want)
	}
	chs := p.takeChanges()
	if len(chs) != maxPending {
		t.Fatalf("%d changes waiting, want %d", len(chs), maxPending)
	}
	last := chs[maxPending-1]
	// the 8th change (a close) and the 8 after it
	if last.n != maxPending+1 || last.opens != int32(maxPending/2) || !last.closed || last.opensAfterClose != 0 ||
		last.from != breaker.StateOpen || last.to != breaker.StateClosed {
		t.Fatalf("coalesced change = %+v", last)
	}
	if len(p.takeChanges()) != 0 {
		t.Fatal("changes taken twice")
	}
}
