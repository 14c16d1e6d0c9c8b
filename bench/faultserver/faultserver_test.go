package faultserver

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// start starts a server that the test closes.
func start(t *testing.T, opts Options) *Server {
	t.Helper()
	if opts.Name == "" {
		opts.Name = "b1"
	}
	s, err := Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// result is what a client saw.
type result struct {
	status int
	header http.Header
	body   string
	err    error
}

// do sends one request with a fresh connection and reads the whole answer.
func do(t *testing.T, ctx context.Context, s *Server, method, path, id string) result {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, s.URL()+path, strings.NewReader("payload"))
	if err != nil {
		t.Fatal(err)
	}
	if id != "" {
		req.Header.Set(RequestIDHeader, id)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return result{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return result{status: resp.StatusCode, header: resp.Header, body: string(b), err: err}
}

func get(t *testing.T, s *Server, path string) result {
	t.Helper()
	return do(t, context.Background(), s, http.MethodGet, path, "")
}

func set(t *testing.T, s *Server, b Behavior) {
	t.Helper()
	if err := s.Set(b); err != nil {
		t.Fatal(err)
	}
}

// waitInFlight waits until n requests are being handled; the bound only
// keeps a broken test from running forever.
func waitInFlight(t *testing.T, s *Server, n int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for s.InFlight() != n {
		if time.Now().After(deadline) {
			t.Fatalf("in flight: %d, want %d", s.InFlight(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestOKCountsByMethodAndProbesApart(t *testing.T) {
	s := start(t, Options{BodySize: 64})
	r := get(t, s, "/")
	if r.err != nil || r.status != 200 {
		t.Fatalf("got %d %v", r.status, r.err)
	}
	if len(r.body) != 64 || r.header.Get(BackendHeader) != "b1" {
		t.Fatalf("body %q, backend %q", r.body, r.header.Get(BackendHeader))
	}
	do(t, context.Background(), s, http.MethodPost, "/", "p1")
	get(t, s, "/health")
	st := s.Stats()
	if st.Requests != 2 || st.Probes != 1 || st.ByMethod["GET"] != 1 || st.ByMethod["POST"] != 1 {
		t.Fatalf("stats %+v", st)
	}
	if st.ByOutcome["answered"] != 2 {
		t.Fatalf("outcomes %v", st.ByOutcome)
	}
	evs := s.Events()
	if len(evs) != 3 || !evs[0].Success() || evs[2].Health != true {
		t.Fatalf("events %+v", evs)
	}
}

func TestDuplicatesPerMethodAndID(t *testing.T) {
	a := start(t, Options{Name: "a"})
	b := start(t, Options{Name: "b"})
	ctx := context.Background()
	do(t, ctx, a, http.MethodPost, "/", "x")
	do(t, ctx, a, http.MethodPost, "/", "x")
	do(t, ctx, a, http.MethodPost, "/", "y")
	do(t, ctx, b, http.MethodPost, "/", "y")
	do(t, ctx, a, http.MethodGet, "/", "x")

	if d := a.Duplicates(http.MethodPost); len(d) != 1 || d["x"] != 2 {
		t.Fatalf("duplicates on a: %v", d)
	}
	if n := a.Received(http.MethodGet, "x"); n != 1 {
		t.Fatalf("GET x received %d times", n)
	}
	all := b.IDCounts(http.MethodPost, a.IDCounts(http.MethodPost, nil))
	if all["x"] != 2 || all["y"] != 2 || len(all) != 2 {
		t.Fatalf("merged counts %v", all)
	}
	a.ResetCounters()
	if st := a.Stats(); st.Requests != 0 || len(a.Events()) != 0 || len(a.Duplicates("POST")) != 0 {
		t.Fatalf("after reset: %+v", st)
	}
}

func TestDownRefusesThenComesBackOnTheSamePort(t *testing.T) {
	s := start(t, Options{})
	addr := s.Addr()
	set(t, s, Refusing())
	r := get(t, s, "/")
	if !errors.Is(r.err, syscall.ECONNREFUSED) {
		t.Fatalf("down: got %d %v, want connection refused", r.status, r.err)
	}
	set(t, s, Healthy())
	if s.Addr() != addr {
		t.Fatalf("address changed: %s -> %s", addr, s.Addr())
	}
	if r := get(t, s, "/"); r.err != nil || r.status != 200 {
		t.Fatalf("back up: got %d %v", r.status, r.err)
	}
}

func TestStatusSetsRetryAfterFor429And503(t *testing.T) {
	s := start(t, Options{})
	for _, tc := range []struct {
		code       int
		retryAfter string
	}{{429, "2"}, {503, "2"}, {502, ""}, {500, ""}} {
		set(t, s, Answering(tc.code, 1500*time.Millisecond))
		r := get(t, s, "/")
		if r.err != nil || r.status != tc.code || r.header.Get("Retry-After") != tc.retryAfter {
			t.Errorf("%d: got %d %q %v", tc.code, r.status, r.header.Get("Retry-After"), r.err)
		}
	}
}

func TestFlakyFailsTheGivenShare(t *testing.T) {
	s := start(t, Options{})
	count := func(p float64, n int) (fails int) {
		set(t, s, FlakyBy(p))
		for range n {
			if r := get(t, s, "/"); r.status == 502 {
				fails++
			} else if r.status != 200 {
				t.Fatalf("flaky: got %d %v", r.status, r.err)
			}
		}
		return fails
	}
	if f := count(0, 20); f != 0 {
		t.Errorf("p=0: %d failures", f)
	}
	if f := count(1, 20); f != 20 {
		t.Errorf("p=1: %d failures of 20", f)
	}
	// 200 draws at p=0.5: all on one side has a chance of 2^-199
	if f := count(0.5, 200); f == 0 || f == 200 {
		t.Errorf("p=0.5: %d failures of 200", f)
	}
}

func TestSlowAnswersAfterTheDelay(t *testing.T) {
	s := start(t, Options{})
	set(t, s, SlowBy(20*time.Millisecond))
	begin := time.Now()
	r := get(t, s, "/")
	if r.err != nil || r.status != 200 {
		t.Fatalf("got %d %v", r.status, r.err)
	}
	if took := time.Since(begin); took < 20*time.Millisecond {
		t.Fatalf("answered after %v, before the delay", took)
	}
}

// The slow path waits its ms parameter whatever the mode, then answers
// as the mode says; the rest of the server answers at once meanwhile.
func TestSlowPathWaitsThenAnswers(t *testing.T) {
	s := start(t, Options{})
	begin := time.Now()
	done := make(chan result, 1)
	go func() { done <- do(t, context.Background(), s, http.MethodGet, "/slow?ms=150", "s1") }()
	if r := get(t, s, "/"); r.err != nil || r.status != 200 {
		t.Fatalf("the rest of the server: %d %v", r.status, r.err)
	}
	r := <-done
	if r.err != nil || r.status != 200 {
		t.Fatalf("slow path: %d %v", r.status, r.err)
	}
	if took := time.Since(begin); took < 150*time.Millisecond {
		t.Fatalf("the slow path answered after %v, before its 150ms", took)
	}
	if n := s.Received(http.MethodGet, "s1"); n != 1 {
		t.Fatalf("the slow request was counted %d times", n)
	}
	set(t, s, Answering(503, 0))
	if r := get(t, s, "/slow?ms=1"); r.status != 503 {
		t.Fatalf("after the wait the mode answers: got %d %v", r.status, r.err)
	}
}

func TestHangUntilReleased(t *testing.T) {
	s := start(t, Options{})
	set(t, s, Behavior{Mode: Hang})
	done := make(chan result, 1)
	go func() { done <- get(t, s, "/") }()
	waitInFlight(t, s, 1)
	set(t, s, Healthy())
	if r := <-done; r.err != nil || r.status != 200 {
		t.Fatalf("released: got %d %v", r.status, r.err)
	}
}

func TestHangUntilTheClientGivesUp(t *testing.T) {
	s := start(t, Options{})
	set(t, s, Behavior{Mode: Hang})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan result, 1)
	go func() { done <- do(t, ctx, s, http.MethodGet, "/", "h") }()
	waitInFlight(t, s, 1)
	cancel()
	if r := <-done; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("got %d %v, want canceled", r.status, r.err)
	}
	waitInFlight(t, s, 0)
	if evs := s.Events(); len(evs) != 1 || evs[0].Outcome != Abandoned || evs[0].ID != "h" {
		t.Fatalf("events %+v", evs)
	}
}

func TestCloseEndsHungRequests(t *testing.T) {
	s, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	set(t, s, Behavior{Mode: Hang})
	done := make(chan result, 1)
	go func() { done <- get(t, s, "/") }()
	waitInFlight(t, s, 1)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if r := <-done; r.err == nil {
		t.Fatalf("got %d, want an error", r.status)
	}
	if err := s.Set(Healthy()); err == nil {
		t.Fatal("set after close: no error")
	}
}

func TestResetBeforeAnswering(t *testing.T) {
	s := start(t, Options{})
	set(t, s, Behavior{Mode: ResetBefore})
	r := do(t, context.Background(), s, http.MethodPost, "/", "r1")
	if r.err == nil {
		t.Fatalf("got %d, want an error", r.status)
	}
	if s.Received(http.MethodPost, "r1") != 1 {
		t.Fatal("the reset request was not counted as received")
	}
	if evs := s.Events(); len(evs) != 1 || evs[0].Outcome != Reset {
		t.Fatalf("events %+v", evs)
	}
}

func TestResetMidBody(t *testing.T) {
	s := start(t, Options{BodySize: 1000})
	set(t, s, Behavior{Mode: ResetMidBody})
	r := get(t, s, "/")
	if r.status != 200 || r.err == nil || len(r.body) >= 1000 {
		t.Fatalf("got %d, %d body bytes, %v; want 200, a short body and an error", r.status, len(r.body), r.err)
	}
}

func TestJunkIsNotHTTP(t *testing.T) {
	s := start(t, Options{})
	set(t, s, Behavior{Mode: Junk})
	if r := get(t, s, "/"); r.err == nil {
		t.Fatalf("got %d, want an error", r.status)
	}
}

func TestLyingHealth(t *testing.T) {
	s := start(t, Options{})
	set(t, s, Answering(502, 0))
	if r := get(t, s, "/health"); r.status != 502 {
		t.Fatalf("honest health: got %d", r.status)
	}
	b := Answering(502, 0)
	b.LyingHealth = true
	set(t, s, b)
	if r := get(t, s, "/health"); r.status != 200 {
		t.Fatalf("lying health: got %d", r.status)
	}
	if r := get(t, s, "/"); r.status != 502 {
		t.Fatalf("traffic: got %d", r.status)
	}
}

func TestEventLogIsBounded(t *testing.T) {
	s := start(t, Options{MaxEvents: 2})
	for range 3 {
		get(t, s, "/")
	}
	if st := s.Stats(); len(s.Events()) != 2 || st.DroppedEvents != 1 || st.Requests != 3 {
		t.Fatalf("events %d, stats %+v", len(s.Events()), st)
	}
	off := start(t, Options{MaxEvents: -1})
	do(t, context.Background(), off, http.MethodPost, "/", "z")
	if len(off.Events()) != 0 || off.Received(http.MethodPost, "z") != 0 || off.Stats().Requests != 1 {
		t.Fatal("MaxEvents -1 kept events or ids")
	}
}

func TestRefusesNonLoopbackAndBadBehavior(t *testing.T) {
	if _, err := Start(Options{Addr: "0.0.0.0:0"}); err == nil {
		t.Error("listening on 0.0.0.0: no error")
	}
	s := start(t, Options{})
	for _, b := range []Behavior{{Mode: Junk + 1}, {Status: 99}, {FailRatio: 2}, {Delay: -1}} {
		if err := s.Set(b); err == nil {
			t.Errorf("%+v: no error", b)
		}
	}
}

func TestBehaviorString(t *testing.T) {
	b := Answering(429, 2*time.Second)
	b.LyingHealth = true
	for _, tc := range []struct {
		b    Behavior
		want string
	}{
		{Healthy(), "ok"},
		{Refusing(), "down"},
		{b, "status 429 (Retry-After 2s), health lies"},
		{SlowBy(300 * time.Millisecond), "slow +300ms"},
		{FlakyBy(0.3), "flaky 30% 502"},
	} {
		if got := tc.b.String(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
}
