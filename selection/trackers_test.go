package selection

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestTrackers(t *testing.T) {
	ts := NewTrackers(Settings{MaxTrackers: 3})

	if ts.Get("a:80") != nil {
		t.Fatal("Get created an entry")
	}
	a := ts.GetOrCreate("a:80")
	if a == nil || ts.GetOrCreate("a:80") != a || ts.Get("a:80") != a {
		t.Fatal("GetOrCreate does not return one tracker per dial address")
	}
	ts.GetOrCreate("b:80")
	ts.GetOrCreate("c:80")
	if got := ts.GetOrCreate("d:80"); got != nil {
		t.Error("GetOrCreate went past MaxTrackers")
	}
	if ts.Len() != 3 {
		t.Errorf("Len = %d, want 3", ts.Len())
	}

	if !ts.Remove("b:80") || ts.Remove("b:80") {
		t.Error("Remove did not report the removal exactly once")
	}
	if ts.Len() != 2 || ts.Get("a:80") != a {
		t.Error("Remove dropped a kept tracker")
	}
	// A tracker that was removed keeps working for whoever holds it.
	c := ts.GetOrCreate("c:80")
	ts.Remove("c:80")
	c.Done(c.Start(t0), t0, time.Millisecond, false)

	if s := ts.Settings(); s.Decay != DefaultDecay || s.MaxTrackers != 3 {
		t.Errorf("Settings = %+v", s)
	}
}

func TestTrackersSettingsReachTrackers(t *testing.T) {
	ts := NewTrackers(Settings{Decay: time.Second, Initial: 5 * time.Millisecond})
	tr := ts.GetOrCreate("a:80")
	if got := tr.Cost(t0); got != 5*ms {
		t.Errorf("Cost = %v, want the registry's initial latency", got)
	}
	observeAt(tr, t0, 100*time.Millisecond)
	if got, _ := tr.Estimate(t0.Add(time.Second)); !near(float64(got), 100*ms/2.718281828459045) {
		t.Errorf("Estimate = %v, want the registry's decay applied", got)
	}
}

func TestNilTrackers(t *testing.T) {
	var ts *Trackers
	if ts.Get("a") != nil || ts.GetOrCreate("a") != nil || ts.Remove("a") || ts.Len() != 0 {
		t.Error("a nil registry is not empty")
	}
	if ts.Settings().Decay != DefaultDecay {
		t.Error("a nil registry has no default settings")
	}
}

func TestTrackersConcurrent(t *testing.T) {
	ts := NewTrackers(Settings{})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				dial := fmt.Sprintf("10.0.0.%d:80", i%20)
				tr := ts.GetOrCreate(dial)
				tr.Done(tr.Start(time.Now()), time.Now(), time.Millisecond, false)
				_ = ts.Get(dial).Cost(time.Now())
				if g == 0 && i%50 == 0 {
					ts.Remove(dial)
				}
			}
		})
	}
	wg.Wait()
	if n := ts.Len(); n > 20 {
		t.Errorf("Len = %d, want at most 20", n)
	}
}
