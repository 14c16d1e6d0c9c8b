package recovery

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// handlerError mimics caddyhttp.HandlerError: a value type with an Err field
// and an Unwrap method.
type handlerError struct {
	Err        error
	StatusCode int
}

func (e handlerError) Error() string { return fmt.Sprintf("%d: %v", e.StatusCode, e.Err) }
func (e handlerError) Unwrap() error { return e.Err }

// dialError mimics reverseproxy.DialError: it wraps without Unwrap.
type dialError struct{ error }

// tryHTTP sends req with client and builds the Attempt the way the root
// package does: Dialed and Wrote from an httptrace.ClientTrace, and a body
// read error (if any) as the attempt's error.
func tryHTTP(t *testing.T, client *http.Client, req *http.Request) Attempt {
	t.Helper()
	var dialed, wrote atomic.Bool
	trace := &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { dialed.Store(true) },
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			if info.Err == nil {
				wrote.Store(true)
			}
		},
	}
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
	resp, err := client.Do(req)
	var a Attempt
	if err == nil {
		a.Status, a.Header = resp.StatusCode, resp.Header
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	a.Err, a.Dialed, a.Wrote = err, dialed.Load(), wrote.Load()
	return a
}

// newClient returns a client without keep-alives whose idle connections
// are closed when the test ends.
func newClient(t *testing.T, tr *http.Transport) *http.Client {
	t.Helper()
	if tr == nil {
		tr = &http.Transport{}
	}
	tr.DisableKeepAlives = true
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// rawServer starts a TCP server that hands every connection to handle and
// returns its address. It stops when the test ends.
func rawServer(t *testing.T, handle func(c *net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			handle(c.(*net.TCPConn))
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

// readRequest reads one request head from c.
func readRequest(c net.Conn) {
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil || line == "\r\n" {
			return
		}
	}
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// hangingServer returns a server whose handler blocks until the test ends,
// and a channel that receives once per request that reached it.
func hangingServer(t *testing.T) (*httptest.Server, <-chan struct{}) {
	t.Helper()
	release := make(chan struct{})
	arrived := make(chan struct{}, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	return srv, arrived
}

// quietTLSServer is an httptest TLS server that does not log handshake
// failures.
func quietTLSServer(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

func mustGet(t *testing.T, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// TestClassifyRealErrors classifies error values produced by real dials and
// HTTP exchanges on loopback.
func TestClassifyRealErrors(t *testing.T) {
	type want struct {
		kind    Kind
		sent    bool
		failure bool
	}
	tests := []struct {
		name    string
		attempt func(t *testing.T) Attempt
		want    want
	}{
		{
			name: "refused dial",
			attempt: func(t *testing.T) Attempt {
				_, err := net.Dial("tcp", closedAddr(t))
				if !errors.Is(err, syscall.ECONNREFUSED) {
					t.Fatalf("dial error is not ECONNREFUSED: %v", err)
				}
				return Attempt{Err: err}
			},
			want: want{KindConnection, false, true},
		},
		{
			name: "client body over its limit through an http client",
			attempt: func(t *testing.T) Attempt {
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					_, _ = io.Copy(io.Discard, r.Body)
				}))
				t.Cleanup(srv.Close)
				body := http.MaxBytesReader(nil, io.NopCloser(strings.NewReader(strings.Repeat("x", 64<<10))), 1024)
				req, err := http.NewRequest(http.MethodPost, srv.URL, body)
				if err != nil {
					t.Fatal(err)
				}
				req.ContentLength = -1
				a := tryHTTP(t, newClient(t, nil), req)
				var mbe *http.MaxBytesError
				if !errors.As(a.Err, &mbe) {
					t.Fatalf("the round trip's error is not the body's *http.MaxBytesError: %v", a.Err)
				}
				return a
			},
			// it counts against no worker (ActionIgnore), so Failure
			// stays what it is for any failed try
			want: want{KindResourceLimit, true, true},
		},
		{
			name: "refused dial inside a handler error",
			attempt: func(t *testing.T) Attempt {
				_, err := net.Dial("tcp", closedAddr(t))
				return Attempt{Err: handlerError{Err: err, StatusCode: 502}}
			},
			want: want{KindConnection, false, true},
		},
		{
			name: "refused dial hidden in a dial error without Unwrap",
			attempt: func(t *testing.T) Attempt {
				_, err := net.Dial("tcp", closedAddr(t))
				return Attempt{Err: handlerError{Err: dialError{err}, StatusCode: 502}}
			},
			want: want{KindConnection, false, true},
		},
		{
			name: "refused through an http client",
			attempt: func(t *testing.T) Attempt {
				return tryHTTP(t, newClient(t, nil), mustGet(t, "http://"+closedAddr(t)+"/"))
			},
			want: want{KindConnection, false, true},
		},
		{
			name: "dial timeout (1ns)",
			attempt: func(t *testing.T) Attempt {
				d := net.Dialer{Timeout: time.Nanosecond}
				_, err := d.Dial("tcp", closedAddr(t))
				if err == nil {
					t.Fatal("dial succeeded")
				}
				return Attempt{Err: err}
			},
			want: want{KindTimeout, false, true},
		},
		{
			name: "dial with an expired context deadline",
			attempt: func(t *testing.T) Attempt {
				ctx, cancel := context.WithDeadline(context.Background(), time.Unix(1, 0))
				defer cancel()
				var d net.Dialer
				_, err := d.DialContext(ctx, "tcp", closedAddr(t))
				return Attempt{Err: err}
			},
			want: want{KindTimeout, false, true},
		},
		{
			name: "response header timeout",
			attempt: func(t *testing.T) Attempt {
				srv, _ := hangingServer(t)
				c := newClient(t, &http.Transport{ResponseHeaderTimeout: 20 * time.Millisecond})
				a := tryHTTP(t, c, mustGet(t, srv.URL))
				if !a.Dialed || !a.Wrote {
					t.Fatalf("trace: dialed=%v wrote=%v", a.Dialed, a.Wrote)
				}
				return a
			},
			want: want{KindTimeout, true, true},
		},
		{
			name: "per-try context deadline",
			attempt: func(t *testing.T) Attempt {
				srv, _ := hangingServer(t)
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
				defer cancel()
				a := tryHTTP(t, newClient(t, nil), mustGet(t, srv.URL).WithContext(ctx))
				if !errors.Is(a.Err, context.DeadlineExceeded) {
					t.Fatalf("error is not a deadline: %v", a.Err)
				}
				return a
			},
			want: want{KindTimeout, true, true},
		},
		{
			name: "connection reset after the request was read",
			attempt: func(t *testing.T) Attempt {
				addr := rawServer(t, func(c *net.TCPConn) {
					readRequest(c)
					c.SetLinger(0) // close with RST
					c.Close()
				})
				a := tryHTTP(t, newClient(t, nil), mustGet(t, "http://"+addr+"/"))
				if !errors.Is(a.Err, syscall.ECONNRESET) {
					t.Fatalf("error is not ECONNRESET: %v", a.Err)
				}
				return a
			},
			want: want{KindIO, true, true},
		},
		{
			name: "early close (io.EOF)",
			attempt: func(t *testing.T) Attempt {
				addr := rawServer(t, func(c *net.TCPConn) {
					readRequest(c)
					c.Close()
				})
				a := tryHTTP(t, newClient(t, nil), mustGet(t, "http://"+addr+"/"))
				if !errors.Is(a.Err, io.EOF) {
					t.Fatalf("error is not io.EOF: %v", a.Err)
				}
				return a
			},
			want: want{KindIO, true, true},
		},
		{
			name: "body cut short (io.ErrUnexpectedEOF after a 200)",
			attempt: func(t *testing.T) Attempt {
				addr := rawServer(t, func(c *net.TCPConn) {
					readRequest(c)
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
					c.Close()
				})
				a := tryHTTP(t, newClient(t, nil), mustGet(t, "http://"+addr+"/"))
				if a.Status != 200 || !errors.Is(a.Err, io.ErrUnexpectedEOF) {
					t.Fatalf("status %d, error %v; want 200 and unexpected EOF", a.Status, a.Err)
				}
				return a
			},
			want: want{KindIO, true, true},
		},
		{
			name: "tls unknown authority",
			attempt: func(t *testing.T) Attempt {
				srv := quietTLSServer(t)
				a := tryHTTP(t, newClient(t, nil), mustGet(t, srv.URL))
				var cve *tls.CertificateVerificationError
				if !errors.As(a.Err, &cve) {
					t.Fatalf("error is not a certificate verification error: %v", a.Err)
				}
				return a
			},
			want: want{KindIsolationViolation, false, true},
		},
		{
			name: "tls wrong host name",
			attempt: func(t *testing.T) Attempt {
				srv := quietTLSServer(t)
				pool := x509.NewCertPool()
				pool.AddCert(srv.Certificate())
				tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "not-this-host.test"}}
				a := tryHTTP(t, newClient(t, tr), mustGet(t, srv.URL))
				var he x509.HostnameError
				if !errors.As(a.Err, &he) {
					t.Fatalf("error is not a host name error: %v", a.Err)
				}
				return a
			},
			want: want{KindIsolationViolation, false, true},
		},
		{
			name: "client canceled",
			attempt: func(t *testing.T) Attempt {
				srv, arrived := hangingServer(t)
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				go func() { <-arrived; cancel() }()
				return tryHTTP(t, newClient(t, nil), mustGet(t, srv.URL).WithContext(ctx))
			},
			want: want{KindCanceled, true, false},
		},
	}
	var c *Classifier // nil: the defaults
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := tt.attempt(t)
			got := c.Classify(a, time.Now())
			if got.Kind != tt.want.kind || got.Sent != tt.want.sent || got.Failure != tt.want.failure {
				t.Fatalf("Classify(%v, dialed=%v, wrote=%v) = kind %v sent %v failure %v; want kind %v sent %v failure %v",
					a.Err, a.Dialed, a.Wrote, got.Kind, got.Sent, got.Failure, tt.want.kind, tt.want.sent, tt.want.failure)
			}
			if got.Severity != got.Kind.Severity() || got.Action != got.Kind.SuggestedRecovery() || got.Delay != got.Kind.RecoveryDelay() {
				t.Errorf("classification %+v does not carry the defaults of its kind", got)
			}
		})
	}
}

// TestClassifyErrorRules covers the error rules with constructed errors,
// including trace states real servers do not produce on demand.
func TestClassifyErrorRules(t *testing.T) {
	opErr := func(op string, errno syscall.Errno) error {
		return &net.OpError{Op: op, Net: "tcp", Err: os.NewSyscallError(op, errno)}
	}
	tests := []struct {
		name string
		a    Attempt
		kind Kind
		sent bool
	}{
		{"canceled beats everything", Attempt{Err: fmt.Errorf("x: %w", errors.Join(context.Canceled, io.EOF)), Dialed: true}, KindCanceled, true},
		{"canceled before a connection", Attempt{Err: context.Canceled}, KindCanceled, false},
		{"deadline exceeded alone", Attempt{Err: context.DeadlineExceeded}, KindTimeout, false},
		{"os deadline exceeded", Attempt{Err: fmt.Errorf("read: %w", os.ErrDeadlineExceeded), Dialed: true, Wrote: true}, KindTimeout, true},
		{"timeout while writing the request", Attempt{Err: os.ErrDeadlineExceeded, Dialed: true}, KindTimeout, true},
		{"refused, caller without a trace says dialed", Attempt{Err: opErr("connect", syscall.ECONNREFUSED), Dialed: true}, KindConnection, false},
		{"dns failure, caller without a trace says dialed", Attempt{Err: &net.DNSError{Err: "no such host", Name: "x.invalid"}, Dialed: true}, KindConnection, false},
		{"tls failure inside a joined error", Attempt{Err: errors.Join(errors.New("handshake"), &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}})}, KindIsolationViolation, false},
		{"net timeout inside a joined error", Attempt{Err: errors.Join(io.EOF, &net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}), Dialed: true}, KindTimeout, true},
		{"host unreachable", Attempt{Err: opErr("connect", syscall.EHOSTUNREACH)}, KindConnection, false},
		{"network unreachable", Attempt{Err: opErr("connect", syscall.ENETUNREACH)}, KindConnection, false},
		{"dns not found", Attempt{Err: &net.OpError{Op: "dial", Err: &net.DNSError{Err: "no such host", Name: "x.invalid", IsNotFound: true}}}, KindConnection, false},
		{"dns timeout", Attempt{Err: &net.DNSError{Err: "timeout", Name: "x.invalid", IsTimeout: true}}, KindTimeout, false},
		{"tls invalid certificate", Attempt{Err: x509.CertificateInvalidError{Reason: x509.Expired}}, KindIsolationViolation, false},
		{"tls unknown authority by pointer", Attempt{Err: &x509.UnknownAuthorityError{}}, KindIsolationViolation, false},
		{"reset before the request was written", Attempt{Err: opErr("write", syscall.ECONNRESET), Dialed: true}, KindConnection, true},
		{"broken pipe before a connection", Attempt{Err: opErr("write", syscall.EPIPE)}, KindConnection, false},
		{"broken pipe after writing", Attempt{Err: opErr("read", syscall.EPIPE), Dialed: true, Wrote: true}, KindIO, true},
		{"eof before writing", Attempt{Err: io.EOF, Dialed: true}, KindConnection, true},
		{"other error, no connection", Attempt{Err: errors.New("proxy: no such upstream")}, KindConnection, false},
		{"other error on a connection", Attempt{Err: errors.New("net/http: invalid header field value"), Dialed: true}, KindWorker, true},
		{"socket error on a connection", Attempt{Err: &net.OpError{Op: "read", Net: "tcp", Err: errors.New("no buffer space")}, Dialed: true}, KindIO, true},
		{"worker panic", Attempt{Err: fmt.Errorf("%w: panic: boom", ErrWorker), Dialed: true, Wrote: true}, KindWorker, true},
		{"HTTP answer to a TLS dial", Attempt{Err: tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}, Dialed: true}, KindConfig, false},
		{"TLS alert in the handshake", Attempt{Err: &net.OpError{Op: "remote error", Err: errors.New("tls: certificate required")}, Dialed: true}, KindConfig, false},
		{"TLS alert (QUIC)", Attempt{Err: tls.AlertError(120), Dialed: true}, KindConfig, false},
		{"HTTP/1 answer to h2c", Attempt{Err: errors.New("http2: frame too large"), Dialed: true, Wrote: true}, KindConfig, false},
		{"HTTP/2 answer to HTTP/1", Attempt{Err: errors.New("net/http: HTTP/1.x transport connection broken: malformed HTTP response \"\\x00\\x00\\x12\\x04\""), Dialed: true, Wrote: true}, KindConfig, false},
		{"junk answer", Attempt{Err: errors.New("net/http: HTTP/1.x transport connection broken: malformed HTTP response \"garbage\""), Dialed: true, Wrote: true}, KindWorker, true},
		{"error wins over status", Attempt{Err: io.ErrUnexpectedEOF, Status: 200, Dialed: true, Wrote: true}, KindIO, true},
		{"client body over its limit, as Caddy's request_body wraps it", Attempt{Err: fmt.Errorf("writing body: %w", handlerError{Err: &http.MaxBytesError{Limit: 1024}, StatusCode: 413}), Dialed: true}, KindResourceLimit, true},
		{"client body over its limit, in a joined error", Attempt{Err: errors.Join(io.ErrUnexpectedEOF, &http.MaxBytesError{Limit: 1})}, KindResourceLimit, false},
	}
	var c Classifier
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := c.Classify(tt.a, time.Now())
			if got.Kind != tt.kind || got.Sent != tt.sent {
				t.Errorf("Classify = kind %v sent %v; want kind %v sent %v", got.Kind, got.Sent, tt.kind, tt.sent)
			}
		})
	}
}

func TestClassifyStatus(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ra := func(v string) http.Header { return http.Header{"Retry-After": {v}} }
	type want struct {
		kind    Kind
		action  Action
		delay   time.Duration
		failure bool
	}
	tests := []struct {
		name   string
		c      *Classifier
		status int
		header http.Header
		want   want
	}{
		{"200", nil, 200, nil, want{KindNone, ActionNone, 0, false}},
		{"204 with retry-after", nil, 204, ra("5"), want{KindNone, ActionNone, 0, false}},
		{"302", nil, 302, nil, want{KindNone, ActionNone, 0, false}},
		{"404", nil, 404, nil, want{KindNone, ActionNone, 0, false}},
		{"no status, no error", nil, 0, nil, want{KindNone, ActionNone, 0, false}},
		{"421 misdirected", nil, 421, nil, want{KindConfig, ActionSkipWorker, DelayCritical, true}},
		{"421 by a rule", &Classifier{Rules: []Rule{{Status: 421, Kind: KindConfig}}}, 421, nil, want{KindConfig, ActionIsolateWorker, DelayCritical, true}},
		{"500", nil, 500, nil, want{KindHTTP, ActionRetry, 0, true}},
		{"501 is deterministic", nil, 501, nil, want{KindNone, ActionNone, 0, false}},
		{"502", nil, 502, nil, want{KindHTTP, ActionRetry, 0, true}},
		{"502 with retry-after", nil, 502, ra("3"), want{KindHTTP, ActionRetry, 3 * time.Second, true}},
		{"503 without retry-after", nil, 503, nil, want{KindHTTP, ActionRetry, 0, true}},
		{"503 with retry-after seconds", nil, 503, ra("7"), want{KindThrottled, ActionThrottle, 7 * time.Second, true}},
		{"503 with retry-after date", nil, 503, ra(now.Add(45 * time.Second).Format(http.TimeFormat)), want{KindThrottled, ActionThrottle, 45 * time.Second, true}},
		{"503 with garbage retry-after", nil, 503, ra("soon"), want{KindHTTP, ActionRetry, 0, true}},
		{"503 with negative retry-after", nil, 503, ra("-5"), want{KindHTTP, ActionRetry, 0, true}},
		{"504", nil, 504, nil, want{KindHTTP, ActionRetry, 0, true}},
		{"505 is deterministic", nil, 505, nil, want{KindNone, ActionNone, 0, false}},
		{"599", nil, 599, nil, want{KindHTTP, ActionRetry, 0, true}},
		{"429 without retry-after", nil, 429, nil, want{KindThrottled, ActionThrottle, time.Second, true}},
		{"429 with retry-after", nil, 429, ra("30"), want{KindThrottled, ActionThrottle, 30 * time.Second, true}},
		{"429 with huge retry-after is capped", nil, 429, ra("999999999999999999999"), want{KindThrottled, ActionThrottle, DefaultMaxRetryAfter, true}},
		{"429 capped by MaxRetryAfter", &Classifier{MaxRetryAfter: 10 * time.Second}, 429, ra("30"), want{KindThrottled, ActionThrottle, 10 * time.Second, true}},
		{"rule: 404 is an http failure", &Classifier{Rules: []Rule{{Status: 404, Kind: KindHTTP}}}, 404, nil, want{KindHTTP, ActionRetry, 0, true}},
		{"rule: 500 with an action", &Classifier{Rules: []Rule{{Status: 500, Kind: KindHTTP, Action: ActionIsolateWorker}}}, 500, nil, want{KindHTTP, ActionIsolateWorker, 0, true}},
		{"rule: throttle on a kind without a delay", &Classifier{Rules: []Rule{{Status: 500, Kind: KindHTTP, Action: ActionThrottle}}}, 500, nil, want{KindHTTP, ActionThrottle, DelayThrottled, true}},
		{"rule: throttle keeps a retry-after", &Classifier{Rules: []Rule{{Status: 500, Kind: KindHTTP, Action: ActionThrottle}}}, 500, ra("9"), want{KindHTTP, ActionThrottle, 9 * time.Second, true}},
		{"rule: ignore is a failure held against nobody", &Classifier{Rules: []Rule{{Status: 500, Kind: KindHTTP, Action: ActionIgnore}}}, 500, nil, want{KindHTTP, ActionIgnore, 0, true}},
		{"rule: 429 is fine", &Classifier{Rules: []Rule{{Status: 429, Kind: KindNone}}}, 429, ra("30"), want{KindNone, ActionNone, 0, false}},
		{"rule: 503 is not throttling even with retry-after", &Classifier{Rules: []Rule{{Status: 503, Kind: KindHTTP}}}, 503, ra("4"), want{KindHTTP, ActionRetry, 4 * time.Second, true}},
		{"rule: 5xx throttled uses retry-after", &Classifier{Rules: []Rule{{Class: 5, Kind: KindThrottled}}}, 502, ra("2"), want{KindThrottled, ActionThrottle, 2 * time.Second, true}},
		{"rule: exact beats an earlier class", &Classifier{Rules: []Rule{{Class: 5, Kind: KindIO}, {Status: 502, Kind: KindNone}}}, 502, nil, want{KindNone, ActionNone, 0, false}},
		{"rule: class applies to other codes", &Classifier{Rules: []Rule{{Class: 5, Kind: KindIO}, {Status: 502, Kind: KindNone}}}, 500, nil, want{KindIO, ActionReconnect, 0, true}},
		{"rule: class makes 501 a failure", &Classifier{Rules: []Rule{{Class: 5, Kind: KindHTTP}}}, 501, nil, want{KindHTTP, ActionRetry, 0, true}},
		{"rule: first exact match wins", &Classifier{Rules: []Rule{{Status: 500, Kind: KindTimeout}, {Status: 500, Kind: KindIO}}}, 500, nil, want{KindTimeout, ActionRetry, DelayTransient, true}},
		{"rule: first class match wins", &Classifier{Rules: []Rule{{Class: 4, Kind: KindIsolationViolation}, {Class: 4, Kind: KindIO}}}, 418, nil, want{KindIsolationViolation, ActionForceShutdown, DelayCritical, true}},
		{"rule: other statuses keep defaults", &Classifier{Rules: []Rule{{Status: 404, Kind: KindHTTP}}}, 502, nil, want{KindHTTP, ActionRetry, 0, true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.c.Classify(Attempt{Status: tt.status, Header: tt.header, Dialed: true, Wrote: true}, now)
			g := want{got.Kind, got.Action, got.Delay, got.Failure}
			if g != tt.want {
				t.Errorf("Classify(%d) = %+v, want %+v", tt.status, g, tt.want)
			}
			if got.Severity != got.Kind.Severity() {
				t.Errorf("severity %v, want %v", got.Severity, got.Kind.Severity())
			}
			// a 421 was not processed (RFC 9110 §15.5.20): never sent
			if wantSent := tt.status != 0 && tt.status != 421; got.Sent != wantSent {
				t.Errorf("sent = %v for status %d", got.Sent, tt.status)
			}
		})
	}
}

// TestClassifyStatusFromServer checks statuses and Retry-After as an HTTP
// client receives them.
func TestClassifyStatusFromServer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ra := r.URL.Query().Get("ra"); ra != "" {
			w.Header().Set("Retry-After", ra)
		}
		var code int
		fmt.Sscan(strings.TrimPrefix(r.URL.Path, "/"), &code)
		w.WriteHeader(code)
	}))
	t.Cleanup(srv.Close)
	client := newClient(t, nil)
	tests := []struct {
		path  string
		kind  Kind
		delay time.Duration
	}{
		{"/200", KindNone, 0},
		{"/502", KindHTTP, 0},
		{"/503", KindHTTP, 0},
		{"/503?ra=12", KindThrottled, 12 * time.Second},
		{"/429", KindThrottled, DelayThrottled},
		{"/429?ra=1", KindThrottled, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			a := tryHTTP(t, client, mustGet(t, srv.URL+tt.path))
			got := (*Classifier)(nil).Classify(a, time.Now())
			if got.Kind != tt.kind || got.Delay != tt.delay || !got.Sent {
				t.Errorf("Classify = %+v, want kind %v delay %v sent", got, tt.kind, tt.delay)
			}
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"0", 0, true},
		{"120", 2 * time.Minute, true},
		{"  5 ", 5 * time.Second, true},
		{now.Add(time.Hour).Format(http.TimeFormat), time.Hour, true},
		{now.Add(30 * time.Second).Format(time.RFC850), 30 * time.Second, true},
		{now.Add(10 * time.Second).Format(time.ANSIC), 10 * time.Second, true},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
		{"9223372036", time.Duration(9223372036) * time.Second, true},
		{"9223372037", time.Duration(1<<63 - 1), true},
		{"99999999999999999999999", time.Duration(1<<63 - 1), true},
		{"", 0, false},
		{"-5", 0, false},
		{"+5", 0, false},
		{"1.5", 0, false},
		{"5s", 0, false},
		{"soon", 0, false},
		{"Mon, 32 Foo 2026 99:00:00 GMT", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, ok := ParseRetryAfter(tt.in, now)
			if got != tt.want || ok != tt.ok {
				t.Errorf("ParseRetryAfter(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestParseRule(t *testing.T) {
	tests := []struct {
		status, kind, action string
		want                 Rule
		err                  string // substring; "" means success
	}{
		{"429", "throttled", "", Rule{Status: 429, Kind: KindThrottled}, ""},
		{"5xx", "http", "isolate_worker", Rule{Class: 5, Kind: KindHTTP, Action: ActionIsolateWorker}, ""},
		{"418", "http", "restart_worker", Rule{Status: 418, Kind: KindHTTP, Action: ActionRestartWorker}, ""},
		{"413", "resource_limit_exceeded", "", Rule{Status: 413, Kind: KindResourceLimit}, ""},
		{"500", "http", "skip_worker", Rule{Status: 500, Kind: KindHTTP, Action: ActionSkipWorker}, ""},
		{"500", "http", "expand_pool", Rule{Status: 500, Kind: KindHTTP, Action: ActionExpandPool}, ""},
		{"500", "http", "force_shutdown", Rule{Status: 500, Kind: KindHTTP, Action: ActionForceShutdown}, ""},
		{"500", "connection_pool_exhausted", "", Rule{Status: 500, Kind: KindPoolExhausted}, ""},
		{"421", "config", "", Rule{Status: 421, Kind: KindConfig}, ""},
		{"5xx", "worker", "restart_worker", Rule{Class: 5, Kind: KindWorker, Action: ActionRestartWorker}, ""},
		{"500", "http", "bogus", Rule{}, `unknown recovery action "bogus" (valid: none, retry, reconnect, restart_worker, throttle, isolate_worker, ignore, skip_worker, expand_pool, force_shutdown)`},
		{"500", "http", "none", Rule{}, `action "none" is not an action`},
		{"404", "none", "isolate_worker", Rule{}, `kind "none" makes the status a success`},
		{"500", "worker_creation_failed", "", Rule{}, `kind "worker_creation_failed" cannot`},
		{"500", "worker_recovery_failed", "", Rule{}, `kind "worker_recovery_failed" cannot`},
		{"4XX", "http", "", Rule{Class: 4, Kind: KindHTTP}, ""},
		{"503", "none", "", Rule{Status: 503, Kind: KindNone}, ""},
		{"100", "io", "retry", Rule{Status: 100, Kind: KindIO, Action: ActionRetry}, ""},
		{"599", "http", "", Rule{Status: 599, Kind: KindHTTP}, ""},
		{"600", "http", "", Rule{}, `invalid status "600"`},
		{"99", "http", "", Rule{}, `invalid status "99"`},
		{"+500", "http", "", Rule{}, `invalid status "+500"`},
		{"6xx", "http", "", Rule{}, `invalid status "6xx"`},
		{"5x", "http", "", Rule{}, `invalid status "5x"`},
		{"", "http", "", Rule{}, `invalid status ""`},
		{"500", "broken", "", Rule{}, `unknown error kind "broken"`},
		{"500", "canceled", "", Rule{}, `kind "canceled" cannot`},
		{"500", "http", "explode", Rule{}, `unknown recovery action "explode"`},
	}
	for _, tt := range tests {
		t.Run(tt.status+" "+tt.kind+" "+tt.action, func(t *testing.T) {
			got, err := ParseRule(tt.status, tt.kind, tt.action)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ParseRule = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestClassifyAllocs(t *testing.T) {
	rules := &Classifier{Rules: []Rule{{Status: 404, Kind: KindHTTP}, {Class: 5, Kind: KindHTTP}}}
	tests := []struct {
		name string
		c    *Classifier
		a    Attempt
	}{
		{"success, defaults", nil, Attempt{Status: 200, Dialed: true, Wrote: true}},
		{"success, rules", rules, Attempt{Status: 200, Header: http.Header{"Content-Type": {"text/plain"}}}},
		{"502, defaults", nil, Attempt{Status: 502}},
		{"502 with headers, rules", rules, Attempt{Status: 502, Header: http.Header{"Content-Type": {"text/plain"}}}},
		{"429 with retry-after seconds", nil, Attempt{Status: 429, Header: http.Header{"Retry-After": {"3"}}}},
		{"reset after writing", nil, Attempt{Err: &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, Dialed: true, Wrote: true}},
		{"refused dial", nil, Attempt{Err: &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}}},
	}
	now := time.Now()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n := testing.AllocsPerRun(100, func() { tt.c.Classify(tt.a, now) }); n != 0 {
				t.Errorf("Classify allocates %v times per call", n)
			}
		})
	}
}

func BenchmarkClassifySuccess(b *testing.B) {
	c := &Classifier{Rules: []Rule{{Status: 404, Kind: KindHTTP}}}
	a := Attempt{Status: 200, Header: http.Header{"Content-Type": {"text/plain"}}, Dialed: true, Wrote: true}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		c.Classify(a, now)
	}
}

func BenchmarkClassifyStatus502(b *testing.B) {
	c := &Classifier{Rules: []Rule{{Status: 404, Kind: KindHTTP}}}
	a := Attempt{Status: 502, Header: http.Header{"Content-Type": {"text/plain"}}, Dialed: true, Wrote: true}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		c.Classify(a, now)
	}
}

func BenchmarkClassifyReset(b *testing.B) {
	a := Attempt{Err: &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, Dialed: true, Wrote: true}
	now := time.Now()
	var c *Classifier
	b.ReportAllocs()
	for b.Loop() {
		c.Classify(a, now)
	}
}
