package status

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/pool"
)

// The page says how long an isolated worker stays out as the CLI does:
// an isolation whose time is up reads "expired, waiting for a passing
// probe", never "under 1s left".
func TestFeedIsolationTextAsCLI(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	s := &Page{series: newSeries()}
	for _, tc := range []struct {
		snap health.Snapshot
		want string
	}{
		{health.Snapshot{Isolated: true, IsolatedUntil: now.Add(-3 * time.Minute)}, "expired, waiting for a passing probe"},
		{health.Snapshot{Isolated: true, ProbeHealthy: true, IsolatedUntil: now.Add(300 * time.Millisecond)}, "expired, returning"},
		{health.Snapshot{Isolated: true, IsolatedUntil: now.Add(90 * time.Second)}, "1m30s left"},
		{health.Snapshot{Isolated: true}, "until restored"},
		{health.Snapshot{}, ""},
	} {
		v := pool.WorkerView{Snapshot: tc.snap}
		if got := s.worker(v, now, nil).IsolationText; got != tc.want {
			t.Errorf("isolation text of %+v = %q, want %q", tc.snap, got, tc.want)
		}
		if got := detail(v, now); tc.want != "" && !strings.Contains(got, tc.want) {
			t.Errorf("the CLI says %q, the page %q", got, tc.want)
		}
	}
}

// A pool's outcomes count, over the samples' window (at most five
// minutes), the requests its clients got answers to, those that failed,
// and the failed tries of its workers.
func TestOutcomes(t *testing.T) {
	ss := newSeries()
	p := &pool.Pool{Name: "p"}
	a := testWorker("p", "a:80")
	t0 := time.Unix(1_000_000, 0)
	if o := ss.outcomes("p"); o.WindowMS != 0 {
		t.Fatalf("outcomes before any sample: %+v", o)
	}
	ss.sample(t0, []*pool.Worker{a}, p)
	if o := ss.outcomes("p"); o.WindowMS != 0 {
		t.Fatalf("outcomes after one sample: %+v, want none", o)
	}
	tries(a, 10, 4, t0)
	p.ClientRequests.Add(7)
	p.ClientFailures.Add(1)
	ss.sample(t0.Add(time.Second), []*pool.Worker{a}, p)
	o := ss.outcomes("p")
	if o != (outcomes{WindowMS: 1000, ClientRequests: 7, ClientErrors: 1, FailedTries: 4}) {
		t.Fatalf("outcomes = %+v", o)
	}
	// six minutes later, the first counts are out of the window
	for i := 2; i <= 361; i++ {
		ss.sample(t0.Add(time.Duration(i)*time.Second), []*pool.Worker{a}, p)
	}
	if o := ss.outcomes("p"); o.ClientRequests != 0 || o.FailedTries != 0 || o.WindowMS != 300_000 {
		t.Fatalf("outcomes six minutes on = %+v, want a 5 min window with nothing in it", o)
	}
}

// Before its first data the page says it is waiting, and says no "No
// errors recorded" (nor shows an empty table) that it does not know yet.
func TestPageSaysNothingBeforeData(t *testing.T) {
	raw, err := ui.ReadFile("statusui/index.html")
	if err != nil {
		t.Fatal(err)
	}
	html := string(raw)
	for _, m := range regexp.MustCompile(`<[^>]*>No errors recorded`).FindAllString(html, -1) {
		if !strings.Contains(m, " hidden") {
			t.Errorf("shown before any data: %s", m)
		}
	}
	for _, id := range []string{"by-severity", "by-kind", "errors"} {
		if !regexp.MustCompile(`<table id="` + id + `"[^>]* hidden>`).MatchString(html) {
			t.Errorf("table %s is shown before any data", id)
		}
	}
	if !strings.Contains(html, `id="problem-line" class="problem-line" role="status">Waiting for the first data`) {
		t.Error("the problem line does not say it waits for data")
	}
}
