package bifrost

import (
	"testing"
	"time"
)

// TestWaitingTriesTakeBack checks that a take-back moves every try that
// waited past the threshold, and none that left, answered, or waited
// less, and that it moves each at most once.
func TestWaitingTriesTakeBack(t *testing.T) {
	var wt waitingTries
	now := time.Now()
	body := &requestBody{} // no body: replayable
	type reg struct {
		tw       *tryWriter
		canceled bool
	}
	regs := make([]*reg, 20)
	for i := range regs {
		r := &reg{tw: new(tryWriter)}
		start := now.Add(-time.Minute)
		if i%5 == 0 {
			start = now // too recent for the threshold below
		}
		wt.add(r.tw, start, body, func() { r.canceled = true })
		regs[i] = r
	}
	wt.remove(regs[1].tw)                 // ended: never taken back
	regs[2].tw.phase.Store(phaseAnswered) // answered: not waiting any more

	want := 0
	for i := range regs {
		if i%5 != 0 && i != 1 && i != 2 {
			want++
		}
	}
	if got := wt.takeBack(now, time.Second); got != want {
		t.Errorf("took back %d tries, want %d", got, want)
	}
	for i, r := range regs {
		wantCanceled := i%5 != 0 && i != 1 && i != 2
		if r.canceled != wantCanceled || r.tw.hung.Load() != wantCanceled {
			t.Errorf("try %d: canceled %v, hung %v, want %v", i, r.canceled, r.tw.hung.Load(), wantCanceled)
		}
	}
	// a second look finds nothing left to take back
	if got := wt.takeBack(now, time.Second); got != 0 {
		t.Errorf("second take-back moved %d tries", got)
	}
}
