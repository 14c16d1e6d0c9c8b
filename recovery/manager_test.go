package recovery

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"
)

// attempts returns the Attempt field of errs, in order.
func attempts(errs []ContextualError) []int {
	out := make([]int, len(errs))
	for i, e := range errs {
		out[i] = e.Attempt
	}
	return out
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestManagerHistoryRing(t *testing.T) {
	tests := []struct {
		name   string
		limit  int
		record int
		want   []int // Attempt values returned, newest first
	}{
		{"empty", 3, 0, []int{}},
		{"below the limit", 5, 3, []int{3, 2, 1}},
		{"at the limit", 3, 3, []int{3, 2, 1}},
		{"wrapped once", 3, 4, []int{4, 3, 2}},
		{"wrapped many times", 4, 23, []int{23, 22, 21, 20}},
		{"limit of one", 1, 5, []int{5}},
		{"past the initial capacity", 40, 100, func() []int {
			var w []int
			for i := 100; i > 60; i-- {
				w = append(w, i)
			}
			return w
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewManager(withLimit(tt.limit))
			for i := 1; i <= tt.record; i++ {
				m.Record(ContextualError{Kind: KindIO, Attempt: i})
				if n := len(m.Errors(Filter{})); n > tt.limit {
					t.Fatalf("after %d records the history holds %d, limit %d", i, n, tt.limit)
				}
				if c := cap(m.history); c > tt.limit {
					t.Fatalf("after %d records the ring has capacity %d, limit %d", i, c, tt.limit)
				}
			}
			if got := attempts(m.Errors(Filter{})); !equalInts(got, tt.want) {
				t.Errorf("Errors() = %v, want %v", got, tt.want)
			}
			if got := m.Stats().TotalErrors; got != uint64(tt.record) {
				t.Errorf("TotalErrors = %d, want %d", got, tt.record)
			}
		})
	}
}

func TestManagerFilter(t *testing.T) {
	m := NewManager(limits)
	records := []ContextualError{
		{Attempt: 1, Kind: KindIO, Context: ErrorContext{Pool: "a", WorkerID: "w1"}},
		{Attempt: 2, Kind: KindTimeout, Context: ErrorContext{Pool: "a", WorkerID: "w2"}},
		{Attempt: 3, Kind: KindWorkerCreationFailed, Context: ErrorContext{Pool: "b", WorkerID: "w1"}},
		{Attempt: 4, Kind: KindThrottled, Context: ErrorContext{Pool: "b", WorkerID: "w3"}},
		{Attempt: 5, Kind: KindIsolationViolation, Context: ErrorContext{Pool: "a", WorkerID: "w1"}},
		{Attempt: 6, Kind: KindIO, Severity: SeverityHigh, Context: ErrorContext{Pool: "a", WorkerID: "w2"}},
	}
	for _, e := range records {
		m.Record(e)
	}
	tests := []struct {
		name string
		f    Filter
		want []int
	}{
		{"all, newest first", Filter{}, []int{6, 5, 4, 3, 2, 1}},
		{"limit", Filter{Limit: 2}, []int{6, 5}},
		{"limit above the count", Filter{Limit: 100}, []int{6, 5, 4, 3, 2, 1}},
		{"worker", Filter{Worker: "w1"}, []int{5, 3, 1}},
		{"pool", Filter{Pool: "b"}, []int{4, 3}},
		{"severity low (defaulted from the kind)", Filter{Severity: SeverityLow}, []int{2, 1}},
		{"severity high (explicit)", Filter{Severity: SeverityHigh}, []int{6}},
		{"severity critical (defaulted from the kind)", Filter{Severity: SeverityCritical}, []int{5, 3}},
		{"kind", Filter{Kind: KindIO}, []int{6, 1}},
		{"worker and pool", Filter{Worker: "w1", Pool: "a"}, []int{5, 1}},
		{"worker and limit", Filter{Worker: "w1", Limit: 1}, []int{5}},
		{"no match", Filter{Worker: "nobody"}, []int{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := attempts(m.Errors(tt.f)); !equalInts(got, tt.want) {
				t.Errorf("Errors(%+v) = %v, want %v", tt.f, got, tt.want)
			}
		})
	}
}

func TestManagerRecordFillsDefaults(t *testing.T) {
	m := NewManager(limits)
	before := time.Now()
	m.Record(ContextualError{Kind: KindHealthCheckFailed, Err: errors.New("probe: status 500")})
	at := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	m.Record(ContextualError{Kind: KindHTTP, Severity: SeverityCritical, Action: ActionIsolateWorker, Message: "kept", Timestamp: at})
	errs := m.Errors(Filter{})
	got, explicit := errs[1], errs[0]
	if got.Severity != SeverityMedium || got.Action != ActionIsolateWorker || got.Message != "probe: status 500" || got.Timestamp.Before(before) {
		t.Errorf("defaults not filled: %+v", got)
	}
	if explicit.Severity != SeverityCritical || explicit.Action != ActionIsolateWorker || explicit.Message != "kept" || !explicit.Timestamp.Equal(at) {
		t.Errorf("explicit fields overwritten: %+v", explicit)
	}
}

func TestTruncate(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		limit int
		want  string
	}{
		{"short", "abc", 10, "abc"},
		{"exactly the limit", "abcdefghij", 10, "abcdefghij"},
		{"ascii", "abcdefghijk", 10, "abcdefg…"},
		{"two-byte runes", strings.Repeat("é", 7), 10, "ééé…"},
		{"three-byte runes", strings.Repeat("世", 5), 10, "世世…"},
		{"four-byte rune at the cut", "ab😀😀😀", 10, "ab😀…"},
		{"limit below the ellipsis", "abcdef", 2, "ab"},
		{"limit zero", "abc", 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Truncate(tt.in, tt.limit)
			if got != tt.want {
				t.Errorf("Truncate(%q, %d) = %q, want %q", tt.in, tt.limit, got, tt.want)
			}
			if len(got) > tt.limit && len(tt.in) > tt.limit {
				t.Errorf("result has %d bytes, limit %d", len(got), tt.limit)
			}
			if !utf8.ValidString(got) {
				t.Errorf("result %q is not valid UTF-8", got)
			}
		})
	}
}

func TestManagerMessageLimit(t *testing.T) {
	m := NewManager(ManagerConfig{HistoryLimit: 10, MaxConcurrentRecovery: 1, MessageLimit: 16})
	long := strings.Repeat("ü", 20)
	m.Record(ContextualError{Kind: KindIO, Message: long, Context: ErrorContext{Metadata: map[string]string{"k": long}}})
	m.Record(ContextualError{Kind: KindIO, Err: errors.New(long)})
	for _, e := range m.Errors(Filter{}) {
		if len(e.Message) > 16 || !strings.HasSuffix(e.Message, "…") || !utf8.ValidString(e.Message) {
			t.Errorf("message %q (%d bytes) not cut to 16 bytes on a rune boundary", e.Message, len(e.Message))
		}
		if v, ok := e.Context.Metadata["k"]; ok && len(v) > 16 {
			t.Errorf("metadata value has %d bytes", len(v))
		}
	}
}

func TestManagerMetadata(t *testing.T) {
	tests := []struct {
		name string
		in   map[string]string
		want []string // keys kept
	}{
		{"nil", nil, nil},
		{"empty", map[string]string{}, nil},
		{"few", map[string]string{"b": "2", "a": "1"}, []string{"a", "b"}},
		{"too many keeps the smallest keys", func() map[string]string {
			md := map[string]string{}
			for i := 20; i > 0; i-- {
				md[fmt.Sprintf("k%02d", i)] = fmt.Sprint(i)
			}
			return md
		}(), []string{"k01", "k02", "k03", "k04", "k05", "k06", "k07", "k08"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewManager(limits)
			m.Record(ContextualError{Kind: KindIO, Context: ErrorContext{Metadata: tt.in}})
			for k := range tt.in {
				tt.in[k] = "changed by the caller"
			}
			got := m.Errors(Filter{})[0].Context.Metadata
			if tt.want == nil {
				if got != nil {
					t.Errorf("metadata = %v, want nil", got)
				}
				return
			}
			if len(got) != len(tt.want) {
				t.Fatalf("metadata = %v, want keys %v", got, tt.want)
			}
			for _, k := range tt.want {
				if v, ok := got[k]; !ok || v == "changed by the caller" {
					t.Errorf("metadata[%q] = %q, %v", k, v, ok)
				}
			}
			got["x"] = "mine"
			if _, ok := m.Errors(Filter{})[0].Context.Metadata["x"]; ok {
				t.Error("Errors returned the stored map")
			}
		})
	}
}

func TestManagerStats(t *testing.T) {
	m := NewManager(limits)
	s := m.Stats()
	if len(s.BySeverity) != 4 || len(s.ByKind) != len(allKinds()) {
		t.Fatalf("empty stats maps: %d severities, %d kinds", len(s.BySeverity), len(s.ByKind))
	}
	for _, name := range []string{"low", "medium", "high", "critical"} {
		if v, ok := s.BySeverity[name]; !ok || v != 0 {
			t.Errorf("BySeverity[%q] = %d, %v", name, v, ok)
		}
	}
	for _, k := range allKinds() {
		if v, ok := s.ByKind[k.String()]; !ok || v != 0 {
			t.Errorf("ByKind[%q] = %d, %v", k, v, ok)
		}
	}
	if _, ok := s.ByKind["none"]; ok {
		t.Error("ByKind has none")
	}

	m.Record(ContextualError{Kind: KindTimeout})
	m.Record(ContextualError{Kind: KindTimeout})
	m.Record(ContextualError{Kind: KindIsolationViolation})
	m.Record(ContextualError{Kind: KindCanceled})
	m.CountRetry()
	m.CountRetry()
	m.CountRetry()
	m.CountBreakerTrip()
	s = m.Stats()
	want := Statistics{TotalErrors: 4, Retries: 3, BreakerTrips: 1}
	if s.TotalErrors != want.TotalErrors || s.Retries != want.Retries || s.RecoveryAttempts != want.RecoveryAttempts ||
		s.RecoverySuccesses != want.RecoverySuccesses || s.BreakerTrips != want.BreakerTrips {
		t.Errorf("Stats() = %+v, want %+v", s, want)
	}
	if s.ByKind["timeout"] != 2 || s.ByKind["isolation_violation"] != 1 || s.ByKind["canceled"] != 1 || s.ByKind["io"] != 0 {
		t.Errorf("ByKind = %v", s.ByKind)
	}
	if s.BySeverity["low"] != 2 || s.BySeverity["critical"] != 1 || s.BySeverity["medium"] != 0 {
		t.Errorf("BySeverity = %v", s.BySeverity)
	}
}

func TestManagerReconfigure(t *testing.T) {
	m := NewManager(withLimit(5))
	for i := 1; i <= 7; i++ { // ring wrapped: holds 7..3
		m.Record(ContextualError{Attempt: i})
	}
	steps := []struct {
		name   string
		limit  int
		record []int
		want   []int
	}{
		{"shrink keeps the newest", 3, nil, []int{7, 6, 5}},
		{"records after a shrink", 3, []int{8}, []int{8, 7, 6}},
		{"grow keeps all", 6, []int{9, 10}, []int{10, 9, 8, 7, 6}},
		{"fill after growing", 6, []int{11, 12}, []int{12, 11, 10, 9, 8, 7}},
		{"same limit keeps all", 6, nil, []int{12, 11, 10, 9, 8, 7}},
		{"a missing limit is refused and changes nothing", 0, []int{13}, []int{13, 12, 11, 10, 9, 8}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			err := m.Reconfigure(withLimit(st.limit))
			if (err != nil) != (st.limit == 0) {
				t.Fatalf("Reconfigure(%d) = %v", st.limit, err)
			}
			for _, a := range st.record {
				m.Record(ContextualError{Attempt: a})
			}
			if got := attempts(m.Errors(Filter{})); !equalInts(got, st.want) {
				t.Errorf("Errors() = %v, want %v", got, st.want)
			}
		})
	}
	if m.Stats().TotalErrors != 13 {
		t.Errorf("TotalErrors = %d, want 13: counters must survive a reload", m.Stats().TotalErrors)
	}
}

// TestManagerMemoryBounded records a million errors and checks that neither
// the history nor the heap grows with them.
func TestManagerMemoryBounded(t *testing.T) {
	const limit, n = 1000, 1_000_000
	m := NewManager(withLimit(limit))
	record := func(i int) {
		e := ContextualError{
			Err:     errors.New("read: connection reset by peer"),
			Kind:    Kind(1 + i%(numKinds-1)),
			Message: strings.Repeat("m", 300), // cut to 256
			Context: ErrorContext{Pool: "p", WorkerID: "w", Operation: "attempt"},
			Attempt: i,
		}
		if i%4 == 0 {
			e.Context.Metadata = map[string]string{"method": "GET", "i": "x"}
		}
		m.Record(e)
	}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	for i := range limit { // fill the ring first
		record(i)
	}
	base := heap()
	for i := limit; i < n; i++ {
		record(i)
	}
	after := heap()
	if got := len(m.Errors(Filter{})); got != limit {
		t.Errorf("history holds %d errors, want %d", got, limit)
	}
	if got := m.Errors(Filter{Limit: 1})[0].Attempt; got != n-1 {
		t.Errorf("newest error is %d, want %d", got, n-1)
	}
	const slack = 4 << 20
	if after > base+slack {
		t.Errorf("heap grew from %d to %d bytes over %d records", base, after, n)
	}
	t.Logf("heap %d -> %d bytes", base, after)
}

func TestManagerRecordAllocs(t *testing.T) {
	m := NewManager(withLimit(10))
	e := ContextualError{Kind: KindHTTP, Status: 502, Message: "upstream status 502", Timestamp: time.Now(),
		Context: ErrorContext{Pool: "p", WorkerID: "w"}}
	for range 20 { // fill the ring
		m.Record(e)
	}
	if n := testing.AllocsPerRun(100, func() { m.Record(e) }); n != 0 {
		t.Errorf("Record allocates %v times", n)
	}
	e.Context.Metadata = map[string]string{"a": "b"}
	if n := testing.AllocsPerRun(100, func() { m.Record(e) }); n > 2 {
		t.Errorf("Record with metadata allocates %v times, want only the map copy", n)
	}
}

func TestManagerConcurrentUse(t *testing.T) {
	m := NewManager(withLimit(50))
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				m.Record(ContextualError{Kind: KindIO, Attempt: i, Context: ErrorContext{WorkerID: fmt.Sprint(g), Metadata: map[string]string{"i": "1"}}})
				if i%50 == 0 {
					m.Errors(Filter{Worker: fmt.Sprint(g)})
					m.Stats()
					m.Reconfigure(withLimit(40 + i%20))
				}
				m.CountRetry()
			}
		}()
	}
	wg.Wait()
	if s := m.Stats(); s.TotalErrors != 2000 || s.Retries != 2000 || s.ByKind["io"] != 2000 {
		t.Errorf("Stats() = %+v", s)
	}
}

func TestTryRecoverConcurrencyLimit(t *testing.T) {
	const limit = 3
	m := NewManager(ManagerConfig{HistoryLimit: 10, MaxConcurrentRecovery: limit, MessageLimit: 256})
	release := make(chan struct{})
	var started sync.WaitGroup
	var running, peak atomic.Int32
	block := func(ctx context.Context) error {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		started.Done()
		<-release
		running.Add(-1)
		return nil
	}
	ctx := context.Background()
	for i := range limit {
		started.Add(1)
		if !m.TryRecover(ctx, block) {
			t.Fatalf("call %d refused below the limit", i+1)
		}
	}
	started.Wait()
	if m.TryRecover(ctx, block) {
		t.Fatalf("call %d started above the limit of %d", limit+1, limit)
	}
	if got := m.Stats().RecoveryAttempts; got != limit {
		t.Errorf("RecoveryAttempts = %d, want %d: a refused call is not an attempt", got, limit)
	}
	close(release)
	m.Wait()
	if got := peak.Load(); got != limit {
		t.Errorf("peak concurrency %d, want %d", got, limit)
	}
	if s := m.Stats(); s.RecoveryAttempts != limit || s.RecoverySuccesses != limit {
		t.Errorf("after Wait: %+v", s)
	}
	// Slots are free again.
	started.Add(1)
	if !m.TryRecover(ctx, func(context.Context) error { started.Done(); return nil }) {
		t.Error("a slot did not come back")
	}
	m.Wait()
}

func TestTryRecoverOutcomes(t *testing.T) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name      string
		ctx       context.Context
		fn        func(context.Context) error
		started   bool
		successes uint64
		panics    int
	}{
		{"success", context.Background(), func(context.Context) error { return nil }, true, 1, 0},
		{"failure", context.Background(), func(context.Context) error { return errors.New("still down") }, true, 0, 0},
		{"panic", context.Background(), func(context.Context) error { panic("boom") }, true, 0, 1},
		{"context already done", canceled, func(context.Context) error { return nil }, false, 0, 0},
		{"nil function", context.Background(), nil, false, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var panics atomic.Int32
			var stack atomic.Value
			cfg := limits
			cfg.OnPanic = func(v any, s []byte) {
				panics.Add(1)
				stack.Store(fmt.Sprint(v) + string(s))
			}
			m := NewManager(cfg)
			if got := m.TryRecover(tt.ctx, tt.fn); got != tt.started {
				t.Fatalf("TryRecover = %v, want %v", got, tt.started)
			}
			m.Wait()
			s := m.Stats()
			wantAttempts := uint64(0)
			if tt.started {
				wantAttempts = 1
			}
			if s.RecoveryAttempts != wantAttempts || s.RecoverySuccesses != tt.successes {
				t.Errorf("attempts %d successes %d, want %d and %d", s.RecoveryAttempts, s.RecoverySuccesses, wantAttempts, tt.successes)
			}
			if int(panics.Load()) != tt.panics {
				t.Errorf("OnPanic called %d times, want %d", panics.Load(), tt.panics)
			}
			if tt.panics > 0 {
				if s, _ := stack.Load().(string); !strings.HasPrefix(s, "boom") || !strings.Contains(s, "goroutine") {
					t.Errorf("OnPanic got %q", s)
				}
			}
		})
	}
}

func TestWaitStopsOnCancel(t *testing.T) {
	m := NewManager(limits)
	ctx, cancel := context.WithCancel(context.Background())
	var sawCancel atomic.Bool
	for range 2 {
		m.TryRecover(ctx, func(ctx context.Context) error {
			<-ctx.Done()
			sawCancel.Store(true)
			return ctx.Err()
		})
	}
	cancel()
	m.Wait()
	if !sawCancel.Load() {
		t.Error("Wait returned before the recovery functions saw the cancellation")
	}
	if s := m.Stats(); s.RecoveryAttempts != 2 || s.RecoverySuccesses != 0 {
		t.Errorf("Stats() = %+v", s)
	}
}

func BenchmarkManagerRecord(b *testing.B) {
	m := NewManager(limits)
	e := ContextualError{Kind: KindHTTP, Status: 502, Message: "upstream status 502", Timestamp: time.Now(),
		Context: ErrorContext{Component: "proxy", Operation: "attempt", Pool: "p", WorkerID: "10.0.0.1:80"}, Attempt: 1}
	b.ReportAllocs()
	for b.Loop() {
		m.Record(e)
	}
}

func BenchmarkManagerRecordParallel(b *testing.B) {
	m := NewManager(limits)
	e := ContextualError{Kind: KindHTTP, Status: 502, Message: "upstream status 502",
		Context: ErrorContext{Component: "proxy", Operation: "attempt", Pool: "p", WorkerID: "10.0.0.1:80"}, Attempt: 1}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Record(e)
		}
	})
}

// A Manager without limits picks none of its own: it counts errors but
// keeps none and starts no recovery until it is given limits.
func TestManagerWithoutLimits(t *testing.T) {
	for name, m := range map[string]*Manager{"zero": new(Manager), "zero config": NewManager(ManagerConfig{})} {
		t.Run(name, func(t *testing.T) {
			m.Record(ContextualError{Kind: KindIO, Attempt: 1})
			if errs := m.Errors(Filter{}); len(errs) != 0 || m.Stats().TotalErrors != 1 {
				t.Errorf("kept %d errors, counted %d; want 0 kept, 1 counted", len(errs), m.Stats().TotalErrors)
			}
			if m.TryRecover(context.Background(), func(context.Context) error { return nil }) {
				t.Error("TryRecover started a recovery without a concurrency limit")
			}
			if err := m.Reconfigure(limits); err != nil {
				t.Fatal(err)
			}
			m.Record(ContextualError{Kind: KindIO, Attempt: 2})
			if got := attempts(m.Errors(Filter{})); !equalInts(got, []int{2}) {
				t.Errorf("after Reconfigure: Errors() = %v, want [2]", got)
			}
		})
	}
}

func TestManagerConfigValidate(t *testing.T) {
	if err := limits.Validate(); err != nil {
		t.Errorf("complete limits: %v", err)
	}
	for _, tc := range []struct {
		cfg  ManagerConfig
		want string
	}{
		{ManagerConfig{}, "history limit"},
		{ManagerConfig{HistoryLimit: 1}, "max concurrent recovery"},
		{ManagerConfig{HistoryLimit: 1, MaxConcurrentRecovery: 1}, "message limit"},
	} {
		if err := tc.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want it to name %q", tc.cfg, err, tc.want)
		}
	}
}

// limits are complete limits for tests.
var limits = ManagerConfig{HistoryLimit: 1000, MaxConcurrentRecovery: 4, MessageLimit: 256}

// withLimit returns limits with the given history limit.
func withLimit(n int) ManagerConfig {
	c := limits
	c.HistoryLimit = n
	return c
}
