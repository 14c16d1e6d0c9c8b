package bifrost

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/recovery"
)

// newTLSBackend starts a TLS server on 127.0.0.1 with httptest's
// self-signed certificate, answering "tls ok"; configure, if set, changes
// its TLS settings before it starts.
func newTLSBackend(t *testing.T, configure func(*tls.Config)) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "tls ok")
	}))
	srv.TLS = new(tls.Config)
	if configure != nil {
		configure(srv.TLS)
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// firstError returns the newest booked error of a worker, failing the
// test when there is none.
func firstError(t *testing.T, poolName, dial string) recovery.ContextualError {
	t.Helper()
	errs := errorsOf(poolName, dial)
	if len(errs) == 0 {
		t.Fatalf("no error booked for %s", dial)
	}
	return errs[0]
}

// configErrorOf returns the first config error booked for the worker of
// dial in poolName, if any.
func configErrorOf(poolName, dial string) (recovery.ContextualError, bool) {
	for _, e := range errorsOf(poolName, dial) {
		if e.Kind == recovery.KindConfig {
			return e, true
		}
	}
	return recovery.ContextualError{}, false
}

// The proxy and the upstream disagreeing on how to talk is a config
// failure (high): an HTTP answer to a TLS dial, a TLS handshake the
// upstream refuses (a client certificate it requires), an HTTP/1 answer
// to h2c. The request goes on to a worker that talks as configured, and
// the worker is isolated for the longest ejection time, its reason
// saying what to fix.
func TestConfigMismatchIsConfigKind(t *testing.T) {
	plain := newBackend(t)
	good := newTLSBackend(t, nil)
	wantsCert := newTLSBackend(t, func(c *tls.Config) { c.ClientAuth = tls.RequireAnyClientCert })
	goodH2C := newBackend(t) // answers HTTP/1 only
	cases := []struct {
		name, bad, good, transport, fix string
	}{
		{"HTTP answer to TLS", plain.addr, good.Listener.Addr().String(), "tls\n\t\t\ttls_insecure_skip_verify", "plain HTTP"},
		{"client certificate refused", wantsCert.Listener.Addr().String(), good.Listener.Addr().String(), "tls\n\t\t\ttls_insecure_skip_verify", "TLS versions"},
		{"HTTP/1 answer to h2c", goodH2C.addr, "", "versions h2c", "HTTP version"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			poolName := fmt.Sprintf("cfgmismatch%d", i)
			ups := []string{tc.bad}
			if tc.good != "" {
				ups = append(ups, tc.good)
			}
			h := loadHandler(t, siteConfig(ups, fmt.Sprintf(`
		name %s
		lb_policy first
		transport http {
			%s
		}`, poolName, tc.transport)))
			wk := workerAt(t, h, tc.bad)
			code, body := get(t, "/")
			if tc.good != "" && (code != http.StatusOK || body != "tls ok") {
				t.Fatalf("got %d %q, want the good worker's answer", code, body)
			}
			// Go's HTTP/2 client may report an h2c mismatch as a
			// connection that "could not be established", when its read
			// loop closed the connection (on the HTTP/1 answer) before the
			// request was written: a busy machine's race. A later request
			// on a new connection sees the mismatch itself.
			e, ok := configErrorOf(poolName, tc.bad)
			for i := 0; !ok && i < 10; i++ {
				_, _ = get(t, "/")
				e, ok = configErrorOf(poolName, tc.bad)
			}
			if !ok {
				t.Fatalf("no config error booked for %s in 11 requests: %+v", tc.bad, errorsOf(poolName, tc.bad))
			}
			if e.Kind != recovery.KindConfig || e.Severity != recovery.SeverityHigh || e.Action != recovery.ActionIsolateWorker {
				t.Fatalf("booked %s/%s/%s (%s), want config/high/isolate_worker", e.Kind, e.Severity, e.Action, e.Message)
			}
			if tc.good == "" {
				return // a pool of one keeps its worker (max_percent)
			}
			eventually(t, 5*time.Second, "the worker isolated", wk.Health.Isolated)
			snap := wk.Health.Snapshot(time.Now())
			if !strings.HasPrefix(snap.IsolationReason, "config_mismatch: ") || !strings.Contains(snap.IsolationReason, tc.fix) {
				t.Errorf("isolation reason %q, want config_mismatch with the fix (%q)", snap.IsolationReason, tc.fix)
			}
			if left := time.Until(snap.IsolatedUntil); left < 4*time.Minute {
				t.Errorf("isolated for %s more, want the longest ejection (max_time 5m)", left)
			}
		})
	}
}

// A 421 Misdirected Request says the request was not processed: it is a
// config failure, and the request goes to another worker whatever its
// method, a POST included, when its body can be sent again (here: it has
// none; a POST's body is not copied, so one with a body gets the 421).
func TestMisdirectedRequestGoesElsewhere(t *testing.T) {
	misdirected, other := newBackend(t), newBackend(t)
	misdirected.set(status(http.StatusMisdirectedRequest, "not here"))
	h := loadHandler(t, siteConfig([]string{misdirected.addr, other.addr}, `
		name misdirected
		lb_policy first
		retry {
			on connect_failure
			methods GET PUT
		}`))
	code, body, _ := do(t, http.MethodPost, testSite+"/", nil, "X-Request-Id", "post-421")
	if code != http.StatusOK || !strings.Contains(body, other.addr) {
		t.Fatalf("POST got %d %q, want the other worker's answer", code, body)
	}
	if n := other.executions("post-421"); n != 1 {
		t.Fatalf("the other worker got the POST %d times, want once", n)
	}
	// a PUT's body is copied (retry methods): it goes on whole
	code, body, _ = do(t, http.MethodPut, testSite+"/", []byte("payload"))
	if code != http.StatusOK || !strings.Contains(body, other.addr) || string(other.lastBody()) != "payload" {
		t.Fatalf("PUT got %d %q (body %q at the other worker)", code, body, other.lastBody())
	}
	e := firstError(t, "misdirected", misdirected.addr)
	if e.Kind != recovery.KindConfig || e.Status != http.StatusMisdirectedRequest || e.Action != recovery.ActionSkipWorker {
		t.Fatalf("booked %+v, want a config failure with status 421 and skip_worker", e)
	}
	// a 421 may be about one client's Host: it holds nothing against
	// the worker, which stays in rotation
	if n := misdirected.hits.Load(); n != 2 {
		t.Errorf("the misdirected worker saw %d requests, want 2", n)
	}
	if wk := workerAt(t, h, misdirected.addr); wk.Health.Isolated() || wk.Health.ConsecutiveFailures() != 0 {
		t.Error("a 421 counted against its worker")
	}
}

// A panic inside a worker's own proxy (here a handle_response route) is
// a worker failure (medium, restart_worker): the request goes to another
// worker, and the worker's proxy is provisioned again.
func TestPanicInTryIsWorkerKind(t *testing.T) {
	teapot, other := newBackend(t), newBackend(t)
	teapot.set(status(http.StatusTeapot, "short and stout"))
	js, err := adapt("{\n\tadmin " + testAdmin + "\n\thttp_port 9080\n\tauto_https off\n\tgrace_period 1ns\n}\n" +
		siteConfig([]string{teapot.addr, other.addr}, `
		name workerpanic
		lb_policy first
		@teapot status 418
		handle_response @teapot {
			respond "PANIC"
		}`))
	if err != nil {
		t.Fatal(err)
	}
	loadPanickingOn418(t, js)
	h := runningHandler(t)
	wk := workerAt(t, h, teapot.addr)
	first := wk.proxy.Load()
	code, body := get(t, "/")
	if code != http.StatusOK || !strings.Contains(body, other.addr) {
		t.Fatalf("got %d %q, want the other worker's answer", code, body)
	}
	e := firstError(t, "workerpanic", teapot.addr)
	if e.Kind != recovery.KindWorker || e.Severity != recovery.SeverityMedium || e.Action != recovery.ActionRestartWorker {
		t.Fatalf("booked %s/%s/%s (%s), want worker/medium/restart_worker", e.Kind, e.Severity, e.Action, e.Message)
	}
	eventually(t, 5*time.Second, "the worker's proxy restarted", func() bool { return wk.proxy.Load() != first })
}

// A transport error that no other kind explains (here an answer whose
// Content-Length is not a number) is a worker failure too.
func TestUnexplainedTransportErrorIsWorkerKind(t *testing.T) {
	garbled := hostile(t, func(c net.Conn, _ string) {
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\nhello")
	})
	other := newBackend(t)
	loadCaddyfile(t, siteConfig([]string{garbled, other.addr}, `
		name garbled
		lb_policy first`))
	if code, body := get(t, "/"); code != http.StatusOK || !strings.Contains(body, other.addr) {
		t.Fatalf("got %d %q, want the other worker's answer", code, body)
	}
	if e := firstError(t, "garbled", garbled); e.Kind != recovery.KindWorker {
		t.Fatalf("booked %s (%s), want worker", e.Kind, e.Message)
	}
}

// max_body_total reached: the request goes without a retry copy, and
// that is booked as resource_limit_exceeded (high), against no worker.
func TestBodyMemoryFullIsResourceLimit(t *testing.T) {
	b := newBackend(t)
	h := loadHandler(t, siteConfig([]string{b.addr}, `
		name bodytotal
		retry {
			methods PUT
			max_body_total 1KiB
		}`))
	code, _, _ := do(t, http.MethodPut, testSite+"/", []byte(strings.Repeat("x", 4096)))
	if code != http.StatusOK {
		t.Fatalf("PUT got %d", code)
	}
	e := firstError(t, "bodytotal", b.addr)
	if e.Kind != recovery.KindResourceLimit || e.Severity != recovery.SeverityHigh || e.Action != recovery.ActionIgnore {
		t.Fatalf("booked %s/%s/%s, want resource_limit_exceeded/high/ignore", e.Kind, e.Severity, e.Action)
	}
	wk := workerAt(t, h, b.addr)
	if wk.Health.ConsecutiveFailures() != 0 || wk.Breaker.State() != breaker.StateClosed {
		t.Error("the limit was held against the worker")
	}
}

// skip_worker sends the request to another worker at once, whatever
// `retry on` lists, and holds the answer against nobody: a breaker that
// one failure would open stays closed.
func TestSkipWorkerCountsAgainstNobody(t *testing.T) {
	busy, other := newBackend(t), newBackend(t)
	busy.set(status(http.StatusServiceUnavailable, "busy"))
	h := loadHandler(t, siteConfig([]string{busy.addr, other.addr}, `
		name skip503
		lb_policy first
		breaker {
			failures 1
		}
		retry {
			on connect_failure
		}
		classify {
			status 503 http skip_worker
		}`))
	wk := workerAt(t, h, busy.addr)
	for i := range 3 {
		if code, body := get(t, "/"); code != http.StatusOK || !strings.Contains(body, other.addr) {
			t.Fatalf("request %d got %d %q, want the other worker's answer", i, code, body)
		}
	}
	if n := busy.hits.Load(); n != 3 {
		t.Errorf("the skipped worker got %d requests, want 3 (it stays in rotation)", n)
	}
	if wk.Breaker.State() != breaker.StateClosed || wk.Health.ConsecutiveFailures() != 0 || wk.Health.Isolated() {
		t.Errorf("skip_worker counted against the worker: breaker %s, %d failures", wk.Breaker.State(), wk.Health.ConsecutiveFailures())
	}
	if e := firstError(t, "skip503", busy.addr); e.Action != recovery.ActionSkipWorker {
		t.Errorf("booked action %s, want skip_worker", e.Action)
	}
}

// force_shutdown stops the worker for good, ignoring max_percent: its
// probes keep passing and it stays out until an operator restores it.
// It is loud: an error log, the worker_shutdown event, a metric, and the
// reason in the worker's state.
func TestForceShutdownStaysOutUntilRestored(t *testing.T) {
	teapot, other := newBackend(t), newBackend(t)
	teapot.set(status(http.StatusTeapot, "short and stout"))
	loadWithEventLog(t, siteConfig([]string{teapot.addr, other.addr}, `
		name shutdown418
		lb_policy first
		health {
			uri /health
			interval 50ms
			passes 1
		}
		isolation {
			max_percent 0
		}
		classify {
			status 418 http force_shutdown
		}`))
	h := runningHandler(t)
	wk := workerAt(t, h, teapot.addr)
	if code, _ := get(t, "/"); code != http.StatusTeapot {
		t.Fatalf("got %d, want the upstream's 418 (418 is not retried)", code)
	}
	eventually(t, 5*time.Second, "the worker shut down", wk.Health.Isolated)
	snap := wk.Health.Snapshot(time.Now())
	if !strings.HasPrefix(snap.IsolationReason, "force_shutdown: http (status 418)") || !snap.IsolatedUntil.IsZero() {
		t.Fatalf("isolation %q until %v, want force_shutdown with no end", snap.IsolationReason, snap.IsolatedUntil)
	}
	eventually(t, 5*time.Second, "the worker_shutdown event", func() bool { return len(eventsNamed("worker_shutdown", wk.ID)) == 1 })
	eventually(t, 5*time.Second, "the force_shutdown metric", func() bool {
		return scrape(t)["caddy_bifrost_recovery_actions_total,action=force_shutdown,pool=shutdown418,worker="+wk.ID] == 1
	})
	// its probes pass, many times over: it stays out
	probes := scrape(t)["caddy_bifrost_probes_total,pool=shutdown418,result=pass,worker="+wk.ID]
	eventually(t, 5*time.Second, "more passing probes", func() bool {
		return scrape(t)["caddy_bifrost_probes_total,pool=shutdown418,result=pass,worker="+wk.ID] >= probes+5
	})
	teapot.set(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "fixed") })
	for i := range 3 {
		if code, body := get(t, "/"); code != http.StatusOK || !strings.Contains(body, other.addr) {
			t.Fatalf("request %d got %d %q, want the other worker while it is shut down", i, code, body)
		}
	}
	if !wk.Health.Isolated() {
		t.Fatal("the worker came back on its own")
	}
	if code := adminJSON(t, http.MethodPost, "/bifrost/workers/"+wk.ID+"/restore", nil); code != http.StatusOK {
		t.Fatalf("restore: %d", code)
	}
	eventually(t, 5*time.Second, "the restored worker serving", func() bool {
		_, body := get(t, "/")
		return body == "fixed"
	})
}

// A TLS upstream whose certificate fails verification is an
// isolation_violation, shut down by default (force_shutdown) whatever
// max_percent allows, and panic mode never picks it: with every other
// worker out, the pool answers 503 rather than send a request to it.
func TestIsolationViolationShutsDown(t *testing.T) {
	trusted := newTLSBackend(t, nil) // httptest's certificate, trusted below
	cert := selfSigned(t)
	var handshakes atomic.Int64 // TLS handshakes the impostor was asked for
	impostor := newTLSBackend(t, func(c *tls.Config) {
		c.Certificates = []tls.Certificate{cert}
		c.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
			handshakes.Add(1)
			return nil, nil
		}
	})
	pemFile := filepath.Join(t.TempDir(), "trusted.pem")
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: trusted.Certificate().Raw})
	if err := os.WriteFile(pemFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	bad, good := impostor.Listener.Addr().String(), trusted.Listener.Addr().String()
	h := loadHandler(t, siteConfig([]string{bad, good}, fmt.Sprintf(`
		name impostor
		lb_policy first
		transport http {
			tls_trust_pool file %s
		}
		breaker {
			failures 1
		}
		isolation {
			max_percent 0
		}`, pemFile)))
	wk := workerAt(t, h, bad)
	if code, body := get(t, "/"); code != http.StatusOK || body != "tls ok" {
		t.Fatalf("got %d %q, want the trusted worker's answer", code, body)
	}
	e := firstError(t, "impostor", bad)
	if e.Kind != recovery.KindIsolationViolation || e.Action != recovery.ActionForceShutdown {
		t.Fatalf("booked %s/%s, want isolation_violation/force_shutdown", e.Kind, e.Action)
	}
	eventually(t, 5*time.Second, "the impostor shut down", wk.Health.ShutDown)
	// the trusted worker goes away: the pool is out, and panic mode
	// still does not send a request to the impostor
	trusted.Close()
	for range 3 {
		get(t, "/")
	}
	if n := handshakes.Load(); n != 1 {
		t.Errorf("the impostor saw %d handshakes, want 1", n)
	}
}

// selfSigned returns a certificate for 127.0.0.1 that nobody trusts.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "impostor"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// max_requests is a limit also when every worker is full: many slow
// requests at once never put more than max_requests in flight on a
// backend; those that find every worker full get a 503 that
// handle_errors can catch, booked as connection_pool_exhausted.
func TestMaxRequestsIsALimitWhenEveryWorkerIsFull(t *testing.T) {
	var backends [2]*backend
	var inFlight, peak [2]atomic.Int64
	release := make(chan struct{})
	for i := range backends {
		backends[i] = newBackend(t)
		backends[i].set(func(w http.ResponseWriter, r *http.Request) {
			n := inFlight[i].Add(1)
			defer inFlight[i].Add(-1)
			for {
				p := peak[i].Load()
				if n <= p || peak[i].CompareAndSwap(p, n) {
					break
				}
			}
			select {
			case <-release:
			case <-time.After(12 * time.Second):
			}
			fmt.Fprint(w, "done")
		})
	}
	loadCaddyfile(t, fmt.Sprintf(`:9080 {
	bifrost %s %s {
		name saturated
		max_requests 2
	}
	handle_errors {
		respond "caught {err.status_code}" {err.status_code}
	}
}
`, backends[0].addr, backends[1].addr))
	const clients = 20
	var wg sync.WaitGroup
	codes := make(chan string, clients)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, body := getAsync("/")
			codes <- fmt.Sprintf("%d %s", code, body)
		}()
	}
	// wait until the backends are full, and every other request answered
	eventually(t, 10*time.Second, "both backends full", func() bool {
		return inFlight[0].Load() == 2 && inFlight[1].Load() == 2
	})
	eventually(t, 10*time.Second, "the requests beyond the limit answered", func() bool { return len(codes) == clients-4 })
	close(release)
	wg.Wait()
	close(codes)
	ok, caught := 0, 0
	for c := range codes {
		switch c {
		case "200 done":
			ok++
		case "503 caught 503":
			caught++
		default:
			t.Errorf("answer %q", c)
		}
	}
	if ok != 4 || caught != clients-4 {
		t.Errorf("%d answered, %d got the 503; want 4 and %d", ok, caught, clients-4)
	}
	for i := range backends {
		if p := peak[i].Load(); p > 2 {
			t.Errorf("backend %d had %d requests in flight, above max_requests 2", i, p)
		}
	}
	if e := firstError(t, "saturated", backends[0].addr); e.Kind != recovery.KindPoolExhausted {
		if e2 := firstError(t, "saturated", backends[1].addr); e2.Kind != recovery.KindPoolExhausted {
			t.Errorf("booked %s and %s, want connection_pool_exhausted", e.Kind, e2.Kind)
		}
	}
}

// A worker whose transport has max_conns_per_host connections busy is
// full too: the next request goes to a worker with room instead of
// waiting in the transport for a connection.
func TestMaxConnsPerHostFullWorkerIsSkipped(t *testing.T) {
	slow, other := newBackend(t), newBackend(t)
	release := make(chan struct{})
	slow.set(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-time.After(12 * time.Second): // the test failed before releasing it
		}
		fmt.Fprint(w, "slow")
	})
	loadCaddyfile(t, siteConfig([]string{slow.addr, other.addr}, `
		name connsfull
		lb_policy first
		transport http {
			max_conns_per_host 1
		}`))
	done := make(chan int, 1)
	go func() {
		code, _ := getAsync("/slow")
		done <- code
	}()
	eventually(t, 5*time.Second, "the first worker busy", func() bool { return slow.hits.Load() == 1 })
	code, body := get(t, "/")
	close(release)
	if code != http.StatusOK || !strings.Contains(body, other.addr) {
		t.Fatalf("with the first worker's connection busy: got %d %q, want the other worker", code, body)
	}
	if code := <-done; code != http.StatusOK {
		t.Fatalf("the slow request got %d", code)
	}
}

// getAsync sends a GET of path from a goroutine of its own: it reports
// the status and body, or status 0 and the error, and never fails the
// test from that goroutine.
func getAsync(path string) (int, string) {
	resp, err := client.Get(testSite + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// max_conns_per_host makes a worker full only where a connection carries
// one request at a time.
func TestConnsLimit(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want int64
	}{
		{`{"protocol":"http","max_conns_per_host":4}`, 4},
		{`{"protocol":"http","max_conns_per_host":4,"tls":{}}`, 0},
		{`{"protocol":"http","max_conns_per_host":4,"tls":{},"versions":["1.1"]}`, 4},
		{`{"protocol":"http","max_conns_per_host":4,"versions":["h2c","2"]}`, 0},
		{`{"protocol":"http"}`, 0},
		{`{"protocol":"fastcgi","max_conns_per_host":4}`, 0},
		{``, 0},
	} {
		if got := connsLimit([]byte(tc.raw)); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.raw, got, tc.want)
		}
	}
}
