package bifrost

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/goleak"

	"github.com/bifrost-proxy/bifrost/pool"
)

// No goroutine of a bifrost handler (background loops, probes, hedges,
// the workers' transports) outlives the config that started it.
func TestNoGoroutineOutlivesCleanup(t *testing.T) {
	a, b := newBackend(t), newBackend(t)
	hung := newBackend(t)
	hung.set(hang)
	empty := []byte(fmt.Sprintf(`{"admin":{"listen":%q}}`, testAdmin))
	if err := caddy.Load(empty, true); err != nil {
		t.Fatal(err)
	}
	client.CloseIdleConnections()
	time.Sleep(100 * time.Millisecond)
	opts := goleak.IgnoreCurrent()

	loadCaddyfile(t, siteConfig([]string{a.addr, b.addr, hung.addr}, `
		name leak
		lb_policy round_robin
		health {
			uri /health
			interval 20ms
		}
		retry {
			hedge 5ms
		}`))
	for range 30 {
		if code, _ := get(t, "/"); code != http.StatusOK {
			t.Fatalf("got %d", code)
		}
	}
	if err := caddy.Load(empty, true); err != nil {
		t.Fatal(err)
	}
	client.CloseIdleConnections()
	goleak.VerifyNone(t, opts,
		// Caddy's own, restarted by every config load
		goleak.IgnoreAnyFunction("github.com/caddyserver/caddy/v2.replaceLocalAdminServer.func2"),
		goleak.IgnoreAnyFunction("github.com/caddyserver/certmagic.keepLockfileFresh"))
}

// Reloading the config through the admin API 25 times under steady GET
// load, with one of three backends failing, loses no request, keeps the
// failing worker's state and leaves the goroutine count flat.
func TestReloadUnderLoad(t *testing.T) {
	a, b, bad := newBackend(t), newBackend(t), newBackend(t)
	bad.set(status(http.StatusBadGateway, "bad"))
	cfg := func(i int) []byte {
		// a grace period, so that the old server lets the requests it
		// is serving finish: with 1ns, Caddy itself closes their
		// connections on every reload, whatever the handler
		js, err := adapt(fmt.Sprintf("{\n\tadmin %s\n\thttp_port 9080\n\tauto_https off\n\tgrace_period 10s\n}\n", testAdmin) +
			siteConfig([]string{a.addr, b.addr, bad.addr}, fmt.Sprintf(`
				name reloadload
				lb_policy round_robin
				header_up X-Generation %d
				breaker {
					timeout 1m
				}`, i)))
		if err != nil {
			t.Fatal(err)
		}
		return js
	}
	loadJSON(t, cfg(0))
	for range 20 {
		get(t, "/")
	}
	ws := workerOf(t, "reloadload", bad.addr)
	eventually(t, 2*time.Second, "the failing worker's breaker to open", func() bool { return ws.Breaker.State().String() == "open" })

	// a GET whose connection to Caddy is reset is sent again: Caddy's
	// listener handover on a reload resets a few, with any handler; every
	// request that reaches Bifrost must be answered 200
	stop := startLoadWith(t, 4, 0, true)

	time.Sleep(200 * time.Millisecond)
	runtime.GC()
	goroutinesBefore := runtime.NumGoroutine()
	for i := 1; i <= 25; i++ {
		code, body, _ := do(t, http.MethodPost, "http://"+testAdmin+"/load", cfg(i), "Content-Type", "application/json")
		if code != http.StatusOK {
			t.Fatalf("reload %d: %d %s", i, code, body)
		}
		time.Sleep(40 * time.Millisecond)
	}
	sent, failed := stop()
	if failed != 0 {
		t.Fatalf("%d of %d requests failed during 25 reloads", failed, sent)
	}
	if st := workerOf(t, "reloadload", bad.addr).Breaker.State(); st.String() != "open" {
		t.Errorf("failing worker's breaker is %s after the reloads, want it kept open", st)
	}
	client.CloseIdleConnections()
	eventually(t, 3*time.Second, "goroutines to settle", func() bool {
		runtime.GC()
		return runtime.NumGoroutine() <= goroutinesBefore+10
	})
	t.Logf("%d requests, 0 failed, during 25 reloads; goroutines %d before, %d after", sent, goroutinesBefore, runtime.NumGoroutine())
}

// hostile starts a raw TCP server that answers every connection with
// what the given function writes, once it has read the request's head;
// requestLine is the head's first line (without its line end).
func hostile(t *testing.T, answer func(c net.Conn, requestLine string)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				// read the request head before answering
				br := bufio.NewReader(c)
				var first string
				for {
					line, err := br.ReadString('\n')
					if first == "" {
						first = strings.TrimSpace(line)
					}
					if err != nil || line == "\r\n" {
						break
					}
				}
				answer(c, first)
			}()
		}
	}()
	return ln.Addr().String()
}

// Hostile upstreams are handled within bounds: the client gets the
// healthy worker's answer, and held-back responses never grow past their
// cap.
func TestHostileUpstreams(t *testing.T) {
	good := newBackend(t)
	cases := []struct {
		name   string
		answer func(c net.Conn)
	}{
		{"non-HTTP bytes", func(c net.Conn) { _, _ = c.Write([]byte("\x00\x01garbage that is not HTTP\r\n\r\n")) }},
		{"huge headers", func(c net.Conn) {
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Big: ")
			chunk := strings.Repeat("a", 1<<16)
			for range 256 { // 16 MiB of header
				if _, err := io.WriteString(c, chunk); err != nil {
					return
				}
			}
		}},
		{"endless body on 503", func(c net.Conn) {
			_, _ = io.WriteString(c, "HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n")
			chunk := fmt.Sprintf("%x\r\n%s\r\n", 1<<14, strings.Repeat("x", 1<<14))
			for {
				if _, err := io.WriteString(c, chunk); err != nil {
					return
				}
			}
		}},
		{"100 MB body on 500", func(c net.Conn) {
			_, _ = fmt.Fprintf(c, "HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n", 100<<20)
			buf := make([]byte, 1<<16)
			for range (100 << 20) / len(buf) {
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}},
		{"trickle", func(c net.Conn) {
			for _, b := range []byte("HTTP/1.1 200 OK\r\n") {
				if _, err := c.Write([]byte{b}); err != nil {
					return
				}
				time.Sleep(time.Second)
			}
		}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			addr := hostile(t, func(c net.Conn, _ string) { tc.answer(c) })
			poolName := fmt.Sprintf("hostile%d", i)
			loadCaddyfile(t, siteConfig([]string{addr, good.addr}, fmt.Sprintf(`
				name %s
				lb_policy first
				retry {
					per_try_timeout 500ms
				}
				transport http {
					max_response_header 1MB
				}`, poolName)))
			var before runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			for j := range 3 {
				code, body := get(t, "/")
				if code != http.StatusOK || !strings.HasPrefix(body, "ok from") {
					t.Fatalf("request %d: got %d %.60q", j, code, body)
				}
			}
			var after runtime.MemStats
			runtime.ReadMemStats(&after)
			if grown := int64(after.HeapInuse) - int64(before.HeapInuse); grown > 32<<20 {
				t.Fatalf("heap grew by %d MiB", grown>>20)
			}
		})
	}
}

// The /metrics series count stays constant whatever clients send: labels
// come from the config, never from requests.
func TestMetricSeriesBounded(t *testing.T) {
	a, bad := newBackend(t), newBackend(t)
	bad.set(status(http.StatusInternalServerError, "x"))
	loadCaddyfile(t, siteConfig([]string{a.addr, bad.addr}, `
		name series
		breaker {
			failures 1000000
		}`))
	// warm up until every series this config can have exists: both
	// outcomes on both workers, and the gauges after a tick
	for i := range 200 {
		do(t, http.MethodGet, fmt.Sprintf("%s/path-%d?q=%d", testSite, i, i), nil, "X-Id", fmt.Sprint(i))
	}
	time.Sleep(3 * pool.TickInterval)
	first := scrape(t)
	for i := range 500 {
		do(t, http.MethodGet, fmt.Sprintf("%s/other-%d?z=%d", testSite, i, i), nil, "User-Agent", fmt.Sprint("agent-", i))
	}
	time.Sleep(3 * pool.TickInterval)
	second := scrape(t)
	for k := range second {
		if _, ok := first[k]; !ok {
			t.Errorf("new series after varied requests: %s", k)
		}
		for _, leak := range []string{"path-", "other-", "agent-", "q=", "z="} {
			if strings.Contains(k, leak) {
				t.Errorf("series labelled with request data: %s", k)
			}
		}
	}
}

// Admin handlers answer hostile input with JSON 4xx errors, never a panic
// (the fuzz target explores this further).
func TestAdminBadInput(t *testing.T) {
	a := newBackend(t)
	loadCaddyfile(t, siteConfig([]string{a.addr}, `name badadmin`))
	api := new(adminAPI)
	id := pool.WorkerID("badadmin", a.addr)
	cases := []struct{ method, target, body string }{
		{"GET", "/bifrost/workers/%2e%2e", ""},
		{"GET", "/bifrost/workers/" + id + "/x/y/z", ""},
		{"POST", "/bifrost/workers/" + id + "/isolate", "{"},
		{"POST", "/bifrost/workers/" + id + "/isolate", `{"duration":"1h","extra":1}`},
		{"POST", "/bifrost/workers/" + id + "/isolate", strings.Repeat("x", 10000)},
		{"POST", "/bifrost/workers/" + id + "/isolate?duration=1e309h", ""},
		{"PUT", "/bifrost/errors", ""},
		{"GET", "/bifrost/errors?limit=999999999999", ""},
	}
	for _, tc := range cases {
		req := httptest.NewRequest(tc.method, tc.target, strings.NewReader(tc.body))
		rec := httptest.NewRecorder()
		err := api.handle(rec, req)
		ae, ok := err.(caddy.APIError)
		if !ok || ae.HTTPStatus < 400 || ae.HTTPStatus > 499 {
			t.Errorf("%s %s: %v (%d), want a 4xx APIError", tc.method, tc.target, err, rec.Code)
		}
	}
}

// A token in the health URI's query stays out of everything a failing
// probe is reported through: isolation reasons, the error history and
// the logs (events are logged too). net/http's errors quote the URL.
func TestProbeURLQueryIsRedacted(t *testing.T) {
	const secret = "s3cr3t-t0ken"
	a, b := newBackend(t), newBackend(t)
	slow := newBackend(t)
	slow.setHealth(hang)
	dead := deadAddr(t)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	js, err := adapt(fmt.Sprintf("{\n\tadmin %s\n\thttp_port 9080\n\tauto_https off\n\tgrace_period 1ns\n\tlog {\n\t\toutput file %s\n\t\tlevel DEBUG\n\t}\n}\n", testAdmin, logFile) +
		siteConfig([]string{a.addr, b.addr, slow.addr, dead}, `
			name secret
			health {
				uri /health?token=`+secret+`
				interval 250ms
				timeout 200ms
				fails 1
			}
			isolation {
				max_percent 100
			}`))
	if err != nil {
		t.Fatal(err)
	}
	loadJSON(t, js)
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := os.ReadFile(logFile)
			t.Logf("log:\n%s", logs)
		}
	})
	for _, addr := range []string{dead, slow.addr} {
		ws := workerOf(t, "secret", addr)
		eventually(t, 5*time.Second, "isolation of "+addr, func() bool { return ws.Health.Isolated() })
		reason := ws.Health.Snapshot(time.Now()).IsolationReason
		if !strings.Contains(reason, "/health?redacted") {
			t.Errorf("isolation reason of %s = %q, want the probe URL with its query redacted", addr, reason)
		}
	}
	for _, path := range []string{"/bifrost/workers", "/bifrost/errors"} {
		_, body, _ := do(t, http.MethodGet, "http://"+testAdmin+path, nil)
		if strings.Contains(body, secret) {
			t.Errorf("%s shows the health URI's token: %s", path, body)
		}
		if !strings.Contains(body, "redacted") {
			t.Errorf("%s does not show the probe failures: %s", path, body)
		}
	}
	logs, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(logs), "probe failed") {
		t.Fatalf("the log has no probe failure:\n%s", logs)
	}
	for _, line := range strings.Split(string(logs), "\n") {
		if strings.Contains(line, secret) {
			t.Errorf("a log line shows the health URI's token: %s", line)
		}
	}
}
