package status

import (
	"testing"
	"time"

	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/pool"
)

// testWorker is a worker's shared state with only what the status
// series reads.
func testWorker(poolName, dial string) *pool.Worker {
	id := pool.WorkerID(poolName, dial)
	return &pool.Worker{ID: id, Pool: poolName, Upstream: dial, Health: health.NewWorkerHealth(poolName, id, dial)}
}

// tries records n tries of ws, the first fails of them failed.
func tries(ws *pool.Worker, n, fails int, now time.Time) {
	for i := range n {
		ws.Health.BeginRequest()
		if i < fails {
			ws.Health.RecordFailure(now)
		} else {
			ws.Health.RecordSuccess(now)
		}
		ws.Health.EndRequest()
	}
}

func TestSeries(t *testing.T) {
	ss := newSeries()
	a, b := testWorker("p", "a:80"), testWorker("p", "b:80")
	c := testWorker("q", "c:80")
	t0 := time.Unix(1_000_000, 0)

	ss.sample(t0, []*pool.Worker{a, b})
	if v := ss.view(""); len(v.Times) != 0 {
		t.Fatalf("a rate needs two samples, got %+v", v)
	}

	tries(a, 10, 0, t0)
	tries(b, 4, 2, t0)
	ss.sample(t0.Add(2*time.Second), []*pool.Worker{a, b})
	total, inP := ss.view(""), ss.view("p")
	if len(total.Times) != 1 || total.Requests[0] != 7 || total.Errors[0] != 1 {
		t.Fatalf("total after 14 tries and 2 failures in 2s = %+v, want 7 req/s and 1 err/s", total)
	}
	if len(inP.Times) != 1 || inP.Requests[0] != 7 || inP.Times[0] != t0.Add(2*time.Second).UnixMilli() {
		t.Fatalf("pool p = %+v", inP)
	}
	if r := ss.workerRates()[b.ID]; r.requests != 2 || r.errors != 1 {
		t.Fatalf("rates of b = %+v, want 2 and 1", r)
	}

	// a second sampler (a reload overlap, another page) a moment later
	// does not thicken the series
	ss.sample(t0.Add(2500*time.Millisecond), []*pool.Worker{a, b})
	if n := len(ss.view("").Times); n != 1 {
		t.Fatalf("sample 0.5s after the last one was kept: %d points", n)
	}

	// b goes away and pool q arrives: b is forgotten, q starts at 0
	tries(c, 5, 5, t0)
	ss.sample(t0.Add(3*time.Second), []*pool.Worker{a, c})
	if _, ok := ss.workerRates()[b.ID]; ok {
		t.Fatal("rates of a removed worker are still reported")
	}
	if q := ss.view("q"); len(q.Times) != 1 || q.Requests[0] != 0 || q.Errors[0] != 0 {
		t.Fatalf("new pool q counted its worker's past: %+v", q)
	}
	if len(ss.tracks) != 2 {
		t.Fatalf("%d worker tracks, want 2", len(ss.tracks))
	}

	// a pool that goes away loses its series; the total keeps going
	ss.sample(t0.Add(4*time.Second), []*pool.Worker{c})
	if p := ss.view("p"); len(p.Times) != 0 {
		t.Fatalf("removed pool p still has a series: %+v", p)
	}

	// the rings are bounded
	for i := range 2 * seriesLen {
		ss.sample(t0.Add(time.Duration(5+i)*time.Second), []*pool.Worker{c})
	}
	v := ss.view("")
	if len(v.Times) != seriesLen || len(v.Requests) != seriesLen || len(v.Errors) != seriesLen {
		t.Fatalf("total has %d points, want %d", len(v.Times), seriesLen)
	}
	for i := 1; i < len(v.Times); i++ {
		if v.Times[i] <= v.Times[i-1] {
			t.Fatalf("series not oldest first at %d: %d then %d", i, v.Times[i-1], v.Times[i])
		}
	}
	if len(ss.tracks[c].counts) != rateWindow+1 {
		t.Fatal("worker track is not bounded")
	}
}
