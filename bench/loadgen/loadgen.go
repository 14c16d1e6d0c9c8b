// Package loadgen sends HTTP load to one URL and records every request:
// a closed loop of N clients (each sends its next request when the last
// one is done), or an open loop at a fixed rate, where each request is
// sent at its intended time whatever happened to the ones before and its
// latency is measured from that time, so that a stalled server shows up
// as latency and failures instead of being hidden by coordinated omission.
//
// A share of the requests can be POSTs; every request carries a unique id
// in the X-Request-Id header, so a backend can tell a duplicate execution.
// Every run is bounded in time and in count.
package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// RequestIDHeader carries each request's unique id.
const RequestIDHeader = "X-Request-Id"

// BackendHeader is read from answers to tell which backend served.
const BackendHeader = "X-Backend"

// Config describes a run.
type Config struct {
	// URL is the target of every request.
	URL string
	// Rate, when positive, selects the open loop: requests per second,
	// evenly spaced.
	Rate float64
	// Clients is the number of concurrent clients of the closed loop
	// (default 1); ignored by the open loop.
	Clients int
	// Duration bounds the run: no request is started after it. Required.
	Duration time.Duration
	// MaxRequests bounds the number of requests (default 1<<20).
	MaxRequests int
	// POSTShare is the share of requests sent as POST with a body, the
	// others are GETs; POSTs are spread evenly among the requests.
	POSTShare float64
	// BodySize is the size of a POST body (default 128).
	BodySize int
	// Timeout bounds each request, reading the answer included
	// (default 5s).
	Timeout time.Duration
	// MaxInFlight bounds the open loop's concurrent requests (default
	// 4096); a request due while the bound is reached is not sent and is
	// recorded as shed.
	MaxInFlight int
	// IDPrefix starts every request id (default "req").
	IDPrefix string
	// Client sends the requests; default a client of its own with
	// keep-alive connections, closed at the end of the run.
	Client *http.Client
}

// withDefaults checks c and fills in its defaults.
func (c Config) withDefaults() (Config, error) {
	if c.URL == "" {
		return c, errors.New("no url")
	}
	if c.Duration <= 0 {
		return c, errors.New("duration must be positive")
	}
	if c.Rate < 0 || c.POSTShare < 0 || c.POSTShare > 1 {
		return c, errors.New("rate must not be negative and post share must be in [0, 1]")
	}
	if c.Clients <= 0 {
		c.Clients = 1
	}
	if c.MaxRequests <= 0 {
		c.MaxRequests = 1 << 20
	}
	if c.BodySize <= 0 {
		c.BodySize = 128
	}
	if c.Timeout <= 0 {
		c.Timeout = 5 * time.Second
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 4096
	}
	if c.IDPrefix == "" {
		c.IDPrefix = "req"
	}
	return c, nil
}

// Record is one request and what became of it.
type Record struct {
	Seq    int    `json:"seq"`
	ID     string `json:"id"`
	Method string `json:"method"`
	// Intended is when the request was due: its scheduled time in the
	// open loop, its start in the closed loop.
	Intended time.Time `json:"intended"`
	// Latency runs from Intended to the end of the answer's body or the
	// error.
	Latency time.Duration `json:"latency"`
	// Status is the answer's status, 0 if none arrived.
	Status int `json:"status,omitempty"`
	// Err is the error that ended the request, "" if none.
	Err string `json:"err,omitempty"`
	// Backend is the answer's X-Backend header.
	Backend string `json:"backend,omitempty"`
	// Shed is true when the open loop did not send the request because
	// MaxInFlight requests were pending.
	Shed bool `json:"shed,omitempty"`
}

// End is when the request ended: its intended time plus its latency.
func (r Record) End() time.Time { return r.Intended.Add(r.Latency) }

// Failed reports whether the client saw a failure: an error, a request
// shed, or a status other than 2xx and 3xx.
func (r Record) Failed() bool {
	return r.Err != "" || r.Shed || r.Status < 200 || r.Status > 399
}

// Result is the outcome of a run.
type Result struct {
	// Start is the run's time zero; End is when its last request ended.
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	// Records holds every request, by intended time.
	Records []Record `json:"records"`
}

// Run sends the load that cfg describes and returns when every request has
// ended, or ctx is done (the requests under way are then canceled and
// recorded with their error).
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("loadgen: %w", err)
	}
	client := cfg.Client
	if client == nil {
		tr := NewTransport()
		defer tr.CloseIdleConnections()
		client = &http.Client{Transport: tr}
	}
	g := &generator{cfg: cfg, client: client, body: postBody(cfg.BodySize)}
	res := &Result{Start: time.Now()}
	if cfg.Rate > 0 {
		res.Records = g.open(ctx, res.Start)
	} else {
		res.Records = g.closed(ctx, res.Start)
	}
	res.End = time.Now()
	sort.Slice(res.Records, func(i, j int) bool { return res.Records[i].Seq < res.Records[j].Seq })
	return res, nil
}

// NewTransport returns a transport suited to load: many keep-alive
// connections to one host, no compression, no proxy from the environment.
func NewTransport() *http.Transport {
	return &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        4096,
		MaxIdleConnsPerHost: 4096,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}
}

// generator holds what the requests of a run share.
type generator struct {
	cfg    Config
	client *http.Client
	body   []byte
}

// postBody is the body of every POST.
func postBody(size int) []byte {
	return []byte(strings.Repeat("x", size))
}

// method returns the method of request seq: POSTs are spread evenly.
func (g *generator) method(seq int) string {
	share := g.cfg.POSTShare
	if share > 0 && int(float64(seq+1)*share) > int(float64(seq)*share) {
		return http.MethodPost
	}
	return http.MethodGet
}

// open sends requests at the configured rate until the duration or the
// count is reached.
func (g *generator) open(ctx context.Context, start time.Time) []Record {
	n := int(g.cfg.Duration.Seconds() * g.cfg.Rate)
	n = max(1, min(n, g.cfg.MaxRequests))
	interval := time.Duration(float64(time.Second) / g.cfg.Rate)
	recs := make([]Record, n)
	sem := make(chan struct{}, g.cfg.MaxInFlight)
	var wg sync.WaitGroup
	sent := 0
	timer := time.NewTimer(0)
	defer timer.Stop()
	for ; sent < n; sent++ {
		intended := start.Add(time.Duration(sent) * interval)
		if !sleepUntil(ctx, timer, intended) {
			break
		}
		select {
		case sem <- struct{}{}:
		default:
			recs[sent] = g.shed(sent, intended)
			continue
		}
		wg.Add(1)
		go func(seq int, intended time.Time) {
			defer wg.Done()
			defer func() { <-sem }()
			recs[seq] = g.do(ctx, seq, intended)
		}(sent, intended)
	}
	wg.Wait()
	return recs[:sent]
}

// sleepUntil waits until t; it returns false if ctx ended first.
func sleepUntil(ctx context.Context, timer *time.Timer, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer.Reset(d)
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// closed runs the clients of the closed loop.
func (g *generator) closed(ctx context.Context, start time.Time) []Record {
	deadline := start.Add(g.cfg.Duration)
	var next atomic.Int64
	perClient := make([][]Record, g.cfg.Clients)
	var wg sync.WaitGroup
	for c := range perClient {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				now := time.Now()
				if !now.Before(deadline) {
					return
				}
				seq := int(next.Add(1) - 1)
				if seq >= g.cfg.MaxRequests {
					return
				}
				perClient[c] = append(perClient[c], g.do(ctx, seq, now))
			}
		}()
	}
	wg.Wait()
	var recs []Record
	for _, rs := range perClient {
		recs = append(recs, rs...)
	}
	return recs
}

// shed records a request the open loop did not send.
func (g *generator) shed(seq int, intended time.Time) Record {
	return Record{Seq: seq, ID: g.id(seq), Method: g.method(seq), Intended: intended, Shed: true, Err: "shed: too many requests in flight"}
}

func (g *generator) id(seq int) string { return g.cfg.IDPrefix + "-" + strconv.Itoa(seq) }

// do sends request seq and reads its answer in full.
func (g *generator) do(ctx context.Context, seq int, intended time.Time) Record {
	rec := Record{Seq: seq, ID: g.id(seq), Method: g.method(seq), Intended: intended}
	ctx, cancel := context.WithTimeout(ctx, g.cfg.Timeout)
	defer cancel()
	var body io.Reader
	if rec.Method == http.MethodPost {
		body = bytes.NewReader(g.body)
	}
	req, err := http.NewRequestWithContext(ctx, rec.Method, g.cfg.URL, body)
	if err != nil {
		rec.Err = err.Error()
		return rec
	}
	req.Header.Set(RequestIDHeader, rec.ID)
	resp, err := g.client.Do(req)
	if err != nil {
		rec.Latency = time.Since(intended)
		rec.Err = ErrorKind(err)
		return rec
	}
	rec.Status = resp.StatusCode
	rec.Backend = resp.Header.Get(BackendHeader)
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	rec.Latency = time.Since(intended)
	if err != nil {
		rec.Err = "body: " + ErrorKind(err)
	}
	return rec
}

// ErrorKind names the cause of a request error in a word or two
// ("timeout", "refused", "reset", "eof", "canceled"), or returns the error
// text (at most 200 bytes) when it knows no shorter name.
func ErrorKind(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "eof"
	}
	s := err.Error()
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
