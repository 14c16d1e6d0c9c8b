package loadgen

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/bifrost-proxy/bifrost/bench/faultserver"
)

func backend(t *testing.T, b faultserver.Behavior) *faultserver.Server {
	t.Helper()
	s, err := faultserver.Start(faultserver.Options{Name: "b1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if err := s.Set(b); err != nil {
		t.Fatal(err)
	}
	return s
}

func run(t *testing.T, ctx context.Context, cfg Config) *Result {
	t.Helper()
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestOpenLoopSendsOnScheduleWithUniqueIDs(t *testing.T) {
	s := backend(t, faultserver.Healthy())
	res := run(t, context.Background(), Config{URL: s.URL(), Rate: 200, Duration: 100 * time.Millisecond, POSTShare: 0.25, IDPrefix: "t"})
	if len(res.Records) != 20 {
		t.Fatalf("%d records, want 20", len(res.Records))
	}
	posts := 0
	ids := map[string]bool{}
	for i, r := range res.Records {
		if r.Seq != i || r.Failed() || r.Backend != "b1" {
			t.Fatalf("record %d: %+v", i, r)
		}
		if want := res.Start.Add(time.Duration(i) * 5 * time.Millisecond); !r.Intended.Equal(want) {
			t.Fatalf("record %d intended at %v, want %v", i, r.Intended.Sub(res.Start), want.Sub(res.Start))
		}
		if r.Method == http.MethodPost {
			posts++
		}
		if ids[r.ID] {
			t.Fatalf("id %s used twice", r.ID)
		}
		ids[r.ID] = true
		if s.Received(r.Method, r.ID) != 1 {
			t.Fatalf("backend received %s %s %d times", r.Method, r.ID, s.Received(r.Method, r.ID))
		}
	}
	if posts != 5 {
		t.Fatalf("%d POSTs, want 5", posts)
	}
	if st := s.Stats(); st.ByMethod["POST"] != 5 || st.ByMethod["GET"] != 15 {
		t.Fatalf("backend stats %+v", st)
	}
}

func TestClosedLoopIsBoundedInCount(t *testing.T) {
	s := backend(t, faultserver.Healthy())
	res := run(t, context.Background(), Config{URL: s.URL(), Clients: 4, Duration: time.Minute, MaxRequests: 10})
	if len(res.Records) != 10 || s.Stats().Requests != 10 {
		t.Fatalf("%d records, %d received; want 10", len(res.Records), s.Stats().Requests)
	}
	for i, r := range res.Records {
		if r.Seq != i || r.Failed() {
			t.Fatalf("record %d: %+v", i, r)
		}
	}
}

func TestFailuresAreRecorded(t *testing.T) {
	s := backend(t, faultserver.Answering(502, 0))
	res := run(t, context.Background(), Config{URL: s.URL(), Clients: 1, Duration: time.Minute, MaxRequests: 3})
	for _, r := range res.Records {
		if !r.Failed() || r.Status != 502 || FailureKind(r) != "502" {
			t.Fatalf("record %+v", r)
		}
	}
	if err := s.Set(faultserver.Refusing()); err != nil {
		t.Fatal(err)
	}
	res = run(t, context.Background(), Config{URL: s.URL(), Clients: 1, Duration: time.Minute, MaxRequests: 1})
	if r := res.Records[0]; r.Err != "refused" || !r.Failed() {
		t.Fatalf("record %+v", r)
	}
}

func TestTimeoutAndShed(t *testing.T) {
	s := backend(t, faultserver.Behavior{Mode: faultserver.Hang})
	res := run(t, context.Background(), Config{URL: s.URL(), Rate: 1000, Duration: 20 * time.Millisecond, Timeout: time.Second, MaxInFlight: 1})
	sum := Summarize(res.Records, time.Time{}, time.Time{})
	if res.Records[0].Err != "timeout" || sum.Shed != len(res.Records)-1 || sum.Failures != len(res.Records) {
		t.Fatalf("first %+v, summary %+v", res.Records[0], sum)
	}
}

func TestCancelStopsTheRun(t *testing.T) {
	s := backend(t, faultserver.Healthy())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res := run(t, ctx, Config{URL: s.URL(), Rate: 10, Duration: time.Hour})
	if len(res.Records) != 0 {
		t.Fatalf("%d records after cancel", len(res.Records))
	}
	res = run(t, ctx, Config{URL: s.URL(), Clients: 2, Duration: time.Hour})
	if len(res.Records) != 0 {
		t.Fatalf("%d records after cancel", len(res.Records))
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []Config{
		{Duration: time.Second},
		{URL: "http://127.0.0.1:1"},
		{URL: "http://127.0.0.1:1", Duration: time.Second, POSTShare: 2},
		{URL: "http://127.0.0.1:1", Duration: time.Second, Rate: -1},
	} {
		if _, err := Run(context.Background(), c); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
}

func TestSummarize(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	recs := []Record{
		{Method: "GET", Intended: at(0), Latency: 10 * time.Millisecond, Status: 200},
		{Method: "GET", Intended: at(100), Latency: 20 * time.Millisecond, Status: 502},
		{Method: "POST", Intended: at(200), Latency: 30 * time.Millisecond, Err: "reset"},
		{Method: "POST", Intended: at(300), Latency: 40 * time.Millisecond, Status: 201},
		{Method: "GET", Intended: at(1500), Latency: 50 * time.Millisecond, Status: 200},
	}
	s := Summarize(recs, t0, at(1000))
	if s.Requests != 4 || s.Failures != 2 || s.GETFailures != 1 || s.POSTFailures != 1 || s.GETRequests != 2 || s.POSTRequests != 2 {
		t.Fatalf("counts %+v", s)
	}
	if s.P50 != 20*time.Millisecond || s.P99 != 40*time.Millisecond || s.Max != 40*time.Millisecond {
		t.Fatalf("latencies %v %v %v", s.P50, s.P99, s.Max)
	}
	if s.Throughput != 2 || s.FailureKinds["502"] != 1 || s.FailureKinds["reset"] != 1 {
		t.Fatalf("throughput %v, kinds %v", s.Throughput, s.FailureKinds)
	}
	if all := Summarize(recs, time.Time{}, time.Time{}); all.Requests != 5 || all.Max != 50*time.Millisecond {
		t.Fatalf("open bounds: %+v", all)
	}
	if w := FailuresPerWindow(recs, t0, at(2000), time.Second); len(w) != 2 || w[0] != 2 || w[1] != 0 {
		t.Fatalf("windows %v", w)
	}
	if last, ok := LastFailure(recs, t0, time.Time{}); !ok || !last.Equal(at(200)) {
		t.Fatalf("last failure %v %v", last, ok)
	}
	if _, ok := LastFailure(recs, at(250), time.Time{}); ok {
		t.Fatal("last failure after 250ms found")
	}
}

func TestPercentile(t *testing.T) {
	d := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{0, 1}, {0.5, 5}, {0.9, 9}, {0.99, 10}, {1, 10}} {
		if got := Percentile(d, tc.p); got != tc.want {
			t.Errorf("p%v: got %v, want %v", tc.p, got, tc.want)
		}
	}
	if Percentile(nil, 0.5) != 0 {
		t.Error("percentile of nothing is not 0")
	}
}

func TestMethodSpreadsPOSTsEvenly(t *testing.T) {
	g := &generator{cfg: Config{POSTShare: 0.1}}
	posts := 0
	for i := range 100 {
		if g.method(i) == http.MethodPost {
			posts++
		}
	}
	if posts != 10 {
		t.Fatalf("%d POSTs of 100 at share 0.1", posts)
	}
}

func TestSummarizeWhere(t *testing.T) {
	t0 := time.Unix(1000, 0)
	recs := []Record{
		{Method: "GET", Intended: t0, Latency: 3 * time.Second, Status: 200},
		{Method: "POST", Intended: t0.Add(time.Second), Latency: time.Millisecond, Status: 502},
	}
	if end := recs[0].End(); !end.Equal(t0.Add(3 * time.Second)) {
		t.Fatalf("end %v", end)
	}
	inFlightAt2s := func(r Record) bool {
		return r.Intended.Before(t0.Add(2*time.Second)) && r.End().After(t0.Add(2*time.Second))
	}
	s := SummarizeWhere(recs, inFlightAt2s, time.Time{}, time.Time{})
	if s.Requests != 1 || s.GETRequests != 1 || s.Failures != 0 || s.Max != 3*time.Second {
		t.Fatalf("summary %+v", s)
	}
}
