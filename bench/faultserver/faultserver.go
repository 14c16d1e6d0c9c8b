// Package faultserver provides real HTTP backends on 127.0.0.1 whose
// behaviour switches at run time, to inject faults behind a proxy: answer,
// refuse connections, answer a failure status, hang, answer slowly, reset
// the connection before or during the response, fail a share of requests,
// answer junk, or keep a lying health endpoint.
//
// Every Server counts what it received, per method and per request id (the
// X-Request-Id header), and keeps a bounded log of events, so that a
// benchmark can tell which backend served what, when, and whether a
// non-idempotent request was executed twice.
package faultserver

import (
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// RequestIDHeader carries the id a load generator gives each request.
const RequestIDHeader = "X-Request-Id"

// BackendHeader names the server in every answer it makes.
const BackendHeader = "X-Backend"

// Options configures a Server.
type Options struct {
	// Name identifies the server in BackendHeader and in reports.
	Name string
	// Addr is where to listen; default "127.0.0.1:0" (a free port). Only
	// loopback addresses are accepted.
	Addr string
	// HealthPath is the health endpoint; default "/health". Requests to
	// it are counted as probes, not as traffic.
	HealthPath string
	// SlowPath is an endpoint that is slow by nature, whatever the
	// mode: a request to it waits the milliseconds of its "ms" query
	// parameter (at most MaxSlow), then is handled as the mode says, so
	// that a healthy server has a slow endpoint (a report, a long poll).
	// Default "/slow".
	SlowPath string
	// BodySize is the size of a successful answer's body; default 256.
	BodySize int
	// MaxEvents bounds the event log and the per-id counts; default
	// 1<<20. Negative keeps neither (counters only).
	MaxEvents int
}

// Outcome is what a Server did with one request.
type Outcome uint8

// The outcomes of a request.
const (
	// Answered: a complete answer was written (see Event.Status).
	Answered Outcome = iota
	// Reset: the connection was reset (before or during the answer).
	Reset
	// Abandoned: the client went away while the server hung or slept.
	Abandoned
	// Garbled: junk was written instead of HTTP.
	Garbled
)

var outcomeNames = [...]string{Answered: "answered", Reset: "reset", Abandoned: "abandoned", Garbled: "junk"}

// String returns the name of the outcome.
func (o Outcome) String() string {
	if int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return fmt.Sprintf("outcome(%d)", uint8(o))
}

// MarshalText encodes the outcome as its name.
func (o Outcome) MarshalText() ([]byte, error) { return []byte(o.String()), nil }

// Event is one request a Server received.
type Event struct {
	// Arrived is when its headers were read; Done is when the server
	// decided its outcome, just before the client could see it.
	Arrived time.Time `json:"arrived"`
	Done    time.Time `json:"done"`
	Method  string    `json:"method"`
	ID      string    `json:"id,omitempty"`
	// Health is true for a request to the health path.
	Health  bool    `json:"health,omitempty"`
	Outcome Outcome `json:"outcome"`
	// Status is the status answered, 0 when there was none.
	Status int `json:"status,omitempty"`
}

// Success reports whether the request got a complete 2xx answer.
func (e Event) Success() bool { return e.Outcome == Answered && e.Status >= 200 && e.Status < 300 }

// Stats are a Server's counters.
type Stats struct {
	// Requests counts traffic (every request but health probes).
	Requests int64 `json:"requests"`
	// Probes counts requests to the health path.
	Probes int64 `json:"probes"`
	// ByMethod and ByOutcome split Requests.
	ByMethod  map[string]int64 `json:"by_method"`
	ByOutcome map[string]int64 `json:"by_outcome"`
	// DroppedEvents counts events not logged because the log was full.
	DroppedEvents int64 `json:"dropped_events,omitempty"`
}

// Server is an HTTP backend with switchable behaviour. Its methods are
// safe for concurrent use.
type Server struct {
	opts Options
	addr string
	body []byte

	inFlight atomic.Int64

	mu      sync.Mutex
	beh     Behavior
	srv     *http.Server
	served  chan struct{} // closed when srv.Serve has returned
	release chan struct{} // closed to wake hung requests when Hang ends
	closed  bool
	rng     *rand.Rand

	stats  Stats
	events []Event
	ids    map[string]int // traffic per request id, "METHOD id" keys
}

// Start listens on opts.Addr and serves until Close.
func Start(opts Options) (*Server, error) {
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if err := checkLoopback(opts.Addr); err != nil {
		return nil, err
	}
	if opts.HealthPath == "" {
		opts.HealthPath = "/health"
	}
	if opts.SlowPath == "" {
		opts.SlowPath = "/slow"
	}
	if opts.BodySize <= 0 {
		opts.BodySize = 256
	}
	if opts.MaxEvents == 0 {
		opts.MaxEvents = 1 << 20
	}
	s := &Server{
		opts:    opts,
		body:    okBody(opts.Name, opts.BodySize),
		release: make(chan struct{}),
		rng:     rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		stats:   Stats{ByMethod: map[string]int64{}, ByOutcome: map[string]int64{}},
		ids:     map[string]int{},
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", opts.Addr, err)
	}
	s.addr = ln.Addr().String()
	s.serve(ln)
	return s, nil
}

// checkLoopback refuses an address that is not on the loopback interface.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("address %q is not a loopback address", addr)
	}
	return nil
}

// okBody builds the body of a successful answer.
func okBody(name string, size int) []byte {
	b := []byte("ok " + name + "\n")
	if len(b) >= size {
		return b[:size]
	}
	return append(b, []byte(strings.Repeat(".", size-len(b)-1)+"\n")...)
}

// serve starts an http.Server on ln; it must be called with mu held or
// before the Server is shared.
func (s *Server) serve(ln net.Listener) {
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	served := make(chan struct{})
	s.srv, s.served = srv, served
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
}

// stop closes the http.Server and every connection, and waits until its
// accept loop is gone: only then is the listening socket really closed
// (the runtime closes it when the last Accept returns), so that connects
// are refused rather than accepted and reset. It must be called with mu
// held.
func (s *Server) stop() error {
	err := s.srv.Close()
	<-s.served
	s.srv, s.served = nil, nil
	return err
}

// Addr returns the host:port the server listens on; it stays the same
// across Down and back.
func (s *Server) Addr() string { return s.addr }

// URL returns the server's base URL.
func (s *Server) URL() string { return "http://" + s.addr }

// Name returns the server's name.
func (s *Server) Name() string { return s.opts.Name }

// Behavior returns the current behaviour.
func (s *Server) Behavior() Behavior {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.beh
}

// Set switches the behaviour. Entering Down closes the listener and every
// open connection; leaving it listens again on the same port. Leaving Hang
// wakes the hung requests, which then answer as b says.
func (s *Server) Set(b Behavior) error {
	if err := b.validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("server closed")
	}
	prev := s.beh
	s.beh = b
	if prev.Mode == Hang && b.Mode != Hang {
		close(s.release)
		s.release = make(chan struct{})
	}
	switch {
	case b.Mode == Down && s.srv != nil:
		if err := s.stop(); err != nil {
			return fmt.Errorf("closing %s: %w", s.addr, err)
		}
	case b.Mode != Down && s.srv == nil:
		ln, err := relisten(s.addr)
		if err != nil {
			s.beh = prev
			return err
		}
		s.serve(ln)
	}
	return nil
}

// relisten listens on addr again, retrying for a short while if the port
// is still held.
func relisten(addr string) (net.Listener, error) {
	var err error
	for range 50 {
		var ln net.Listener
		if ln, err = net.Listen("tcp", addr); err == nil {
			return ln, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil, fmt.Errorf("listening again on %s: %w", addr, err)
}

// Close stops the server, closes every connection and wakes hung requests.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	close(s.release)
	if s.srv == nil {
		return nil
	}
	return s.stop()
}

// InFlight returns the number of requests being handled now, hung ones
// included.
func (s *Server) InFlight() int64 { return s.inFlight.Load() }

// Stats returns a copy of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.ByMethod = make(map[string]int64, len(s.stats.ByMethod))
	for k, v := range s.stats.ByMethod {
		st.ByMethod[k] = v
	}
	st.ByOutcome = make(map[string]int64, len(s.stats.ByOutcome))
	for k, v := range s.stats.ByOutcome {
		st.ByOutcome[k] = v
	}
	return st
}

// Events returns a copy of the event log, in the order the requests were
// finished with.
func (s *Server) Events() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Event(nil), s.events...)
}

// Received returns how many times the server received traffic with the
// request id id and method method.
func (s *Server) Received(method, id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ids[method+" "+id]
}

// Duplicates returns the request ids of method that this server received
// more than once, with the number of times it received each.
func (s *Server) Duplicates(method string) map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	prefix := method + " "
	for k, n := range s.ids {
		if n > 1 && strings.HasPrefix(k, prefix) {
			out[k[len(prefix):]] = n
		}
	}
	return out
}

// IDCounts returns, for every request id of method this server received,
// how many times it did; it merges into into (which may be nil) and
// returns it, so that the counts of several servers add up.
func (s *Server) IDCounts(method string, into map[string]int) map[string]int {
	if into == nil {
		into = map[string]int{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	prefix := method + " "
	for k, n := range s.ids {
		if strings.HasPrefix(k, prefix) {
			into[k[len(prefix):]] += n
		}
	}
	return into
}

// ResetCounters forgets every count and event.
func (s *Server) ResetCounters() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats = Stats{ByMethod: map[string]int64{}, ByOutcome: map[string]int64{}}
	s.events = nil
	s.ids = map[string]int{}
}

// snapshot returns what a new request needs: the behaviour, the channel
// that ends a hang, and a random draw for Flaky mode.
func (s *Server) snapshot() (Behavior, <-chan struct{}, float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.beh, s.release, s.rng.Float64()
}

// record counts one request and logs its event.
func (s *Server) record(ev Event) {
	ev.Done = time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if ev.Health {
		s.stats.Probes++
	} else {
		s.stats.Requests++
		s.stats.ByMethod[ev.Method]++
		s.stats.ByOutcome[ev.Outcome.String()]++
	}
	if s.opts.MaxEvents < 0 {
		return
	}
	if len(s.events) >= s.opts.MaxEvents {
		s.stats.DroppedEvents++
		return
	}
	s.events = append(s.events, ev)
	if !ev.Health && ev.ID != "" {
		s.ids[ev.Method+" "+ev.ID]++
	}
}

// ServeHTTP reads the request in full, then behaves as the current
// behaviour says.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	ev := Event{
		Arrived: time.Now(),
		Method:  r.Method,
		ID:      r.Header.Get(RequestIDHeader),
		Health:  r.URL.Path == s.opts.HealthPath,
	}
	_, _ = io.Copy(io.Discard, r.Body)
	if !ev.Health && r.URL.Path == s.opts.SlowPath && !s.slowWait(r) {
		s.finish(&ev, Abandoned, 0)
		return
	}
	b, release, draw := s.snapshot()
	if ev.Health && b.LyingHealth {
		s.answer(w, &ev, http.StatusOK, b)
		return
	}
	s.behave(w, r, &ev, b, release, draw)
}

// MaxSlow bounds the wait of a request to the slow path.
const MaxSlow = time.Minute

// slowWait waits as long as a request to the slow path asks (its "ms"
// query parameter, bounded by MaxSlow; none or a bad one: no wait) and
// reports whether the client was still there at the end.
func (s *Server) slowWait(r *http.Request) bool {
	n, err := strconv.Atoi(r.URL.Query().Get("ms"))
	if err != nil || n <= 0 {
		return true
	}
	t := time.NewTimer(min(time.Duration(n)*time.Millisecond, MaxSlow))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

// behave carries out behaviour b for one request. Every path records the
// outcome before the client can see it, so that a client that has its
// answer finds it counted.
func (s *Server) behave(w http.ResponseWriter, r *http.Request, ev *Event, b Behavior, release <-chan struct{}, draw float64) {
	switch b.Mode {
	case OK:
		s.answer(w, ev, http.StatusOK, b)
	case Status:
		s.answer(w, ev, b.status(), b)
	case Flaky:
		code := http.StatusOK
		if draw < b.FailRatio {
			code = b.status()
		}
		s.answer(w, ev, code, b)
	case Slow:
		t := time.NewTimer(b.Delay)
		defer t.Stop()
		select {
		case <-t.C:
			s.answer(w, ev, http.StatusOK, b)
		case <-r.Context().Done():
			s.finish(ev, Abandoned, 0)
		}
	case Hang:
		select {
		case <-release:
			nb, nrel, ndraw := s.snapshot()
			if nb.Mode == Hang {
				// still hanging: the server is closing
				s.finish(ev, Abandoned, 0)
				return
			}
			s.behave(w, r, ev, nb, nrel, ndraw)
		case <-r.Context().Done():
			s.finish(ev, Abandoned, 0)
		}
	case ResetBefore, Down:
		// Down: a request that raced the listener's closing.
		s.finish(ev, Reset, 0)
		hijackAndReset(w, nil)
	case ResetMidBody:
		s.finish(ev, Reset, http.StatusOK)
		hijackAndReset(w, s.partialResponse())
	case Junk:
		s.finish(ev, Garbled, 0)
		hijackAndWrite(w, []byte("\x00\x01\x02 this is not HTTP \xff\xfe\r\n\r\n"))
	}
}

// answer writes a complete answer with status code.
func (s *Server) answer(w http.ResponseWriter, ev *Event, code int, b Behavior) {
	h := w.Header()
	h.Set(BackendHeader, s.opts.Name)
	h.Set("Content-Type", "text/plain; charset=utf-8")
	if retryAfterApplies(code) {
		secs := int((b.retryAfter() + time.Second - 1) / time.Second)
		h.Set("Retry-After", strconv.Itoa(secs))
	}
	body := s.body
	if code != http.StatusOK {
		body = []byte(fmt.Sprintf("%d %s from %s\n", code, http.StatusText(code), s.opts.Name))
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	s.finish(ev, Answered, code)
	w.WriteHeader(code)
	_, _ = w.Write(body)
}

// finish sets the outcome of a request and records it.
func (s *Server) finish(ev *Event, o Outcome, status int) {
	ev.Outcome, ev.Status = o, status
	s.record(*ev)
}

// partialResponse is a 200 whose body stops halfway.
func (s *Server) partialResponse() []byte {
	head := fmt.Sprintf("HTTP/1.1 200 OK\r\n%s: %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n",
		BackendHeader, s.opts.Name, len(s.body))
	return append([]byte(head), s.body[:len(s.body)/2]...)
}

// hijackAndReset takes over the connection, writes prefix (if any) and
// resets it: linger 0 makes Close send a RST instead of a FIN.
func hijackAndReset(w http.ResponseWriter, prefix []byte) {
	conn, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	if len(prefix) > 0 {
		_, _ = buf.Write(prefix)
		_ = buf.Flush()
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// hijackAndWrite takes over the connection, writes data and closes it.
func hijackAndWrite(w http.ResponseWriter, data []byte) {
	conn, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	_, _ = buf.Write(data)
	_ = buf.Flush()
	_ = conn.Close()
}
