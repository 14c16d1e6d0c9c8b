package health

import (
	"testing"
	"time"
)

// Adopt takes up a kept or remote isolation: within MaxPercent for an
// automatic one, capped at MaxTime, ejections growing to the larger
// count; an operator's ignores MaxPercent; ended ones and automatic ones
// without an end are refused; Verdict reads it back.
func TestAdopt(t *testing.T) {
	p := newPool(3, IsolationSettings{}) // 50%: 1 of 3
	now := p.clk.Now()
	far := now.Add(time.Hour)
	ev, ok := p.m.Adopt(p.ws[0], Verdict{Until: far, Reason: "probe_failed: elsewhere", Ejections: 4}, time.Hour)
	if !ok || ev.Type != EventIsolated || !ev.Until.Equal(now.Add(5*time.Minute)) {
		t.Fatalf("adopt: %+v %v, want isolated until MaxTime from now", ev, ok)
	}
	v, ok := p.ws[0].Verdict()
	if !ok || v.Ejections != 4 || v.Operator || v.Reason != "probe_failed: elsewhere" {
		t.Errorf("verdict %+v %v", v, ok)
	}
	if _, ok := p.m.Adopt(p.ws[1], Verdict{Until: far, Reason: "x"}, time.Hour); ok {
		t.Error("a second automatic isolation adopted beyond MaxPercent")
	}
	if _, ok := p.m.Adopt(p.ws[1], Verdict{Until: now.Add(-time.Second), Reason: "operator: x", Operator: true}, time.Hour); ok {
		t.Error("an ended verdict adopted")
	}
	if _, ok := p.m.Adopt(p.ws[0], Verdict{Until: far, Reason: "operator: x", Operator: true}, time.Hour); ok {
		t.Error("adopted over an isolation")
	}
	ev, ok = p.m.Adopt(p.ws[1], Verdict{Until: now.Add(48 * time.Hour), Reason: "operator: maintenance", Operator: true}, time.Hour)
	if !ok || !ev.Until.Equal(now.Add(time.Hour)) {
		t.Errorf("operator verdict: %+v %v, want adopted beyond MaxPercent, capped at the operator limit", ev, ok)
	}
	if v, _ := p.ws[1].Verdict(); !v.Operator {
		t.Errorf("operator verdict read back as %+v", v)
	}
	p2 := newPool(3, IsolationSettings{MaxPercent: 100})
	if _, ok := p2.m.Adopt(p2.ws[0], Verdict{Reason: "probe_failed"}, time.Hour); ok {
		t.Error("an automatic verdict without an end adopted")
	}
	// the adopted isolation ends as a local one does
	p.clk.Advance(5*time.Minute + time.Second)
	if evs := p.m.Tick(); len(evs) != 1 || evs[0].Type != EventRestored || evs[0].Worker != p.ws[0] {
		t.Errorf("tick after the end: %+v, want w0 restored", evs)
	}
}
