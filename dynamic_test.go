package bifrost

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/bifrost-proxy/bifrost/pool"
)

// testDNS is a DNS server on 127.0.0.1 answering A and SRV queries from
// maps the test changes; AAAA queries get an empty answer. With fail set
// it answers SERVFAIL.
type testDNS struct {
	addr    string
	server  *dns.Server
	tcp     *dns.Server // for answers too long for UDP
	fail    atomic.Bool
	queries atomic.Int64

	mu  sync.Mutex
	a   map[string][]string  // name (fqdn) -> IPv4 addresses
	srv map[string][]dns.SRV // name (fqdn) -> records
}

func newTestDNS(t *testing.T) *testDNS {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	d := &testDNS{addr: pc.LocalAddr().String(), a: map[string][]string{}, srv: map[string][]dns.SRV{}}
	started := make(chan struct{}, 2)
	notify := func() { started <- struct{}{} }
	d.server = &dns.Server{PacketConn: pc, Handler: d, NotifyStartedFunc: notify}
	d.tcp = &dns.Server{Listener: ln, Handler: d, NotifyStartedFunc: notify}
	go func() { _ = d.server.ActivateAndServe() }()
	go func() { _ = d.tcp.ActivateAndServe() }()
	<-started
	<-started
	t.Cleanup(d.stop)
	return d
}

// stop shuts the server down: lookups then time out.
func (d *testDNS) stop() {
	_ = d.server.Shutdown()
	_ = d.tcp.Shutdown()
}

// setA sets the A records of name.
func (d *testDNS) setA(name string, ips ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.a[dns.Fqdn(name)] = ips
}

// setSRV sets the SRV records of name: targets and ports.
func (d *testDNS) setSRV(name string, recs ...dns.SRV) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.srv[dns.Fqdn(name)] = recs
}

func (d *testDNS) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	d.queries.Add(1)
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if d.fail.Load() {
		m.Rcode = dns.RcodeServerFailure
		_ = w.WriteMsg(m)
		return
	}
	d.mu.Lock()
	for _, q := range req.Question {
		hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: 1}
		switch q.Qtype {
		case dns.TypeA:
			hdr.Rrtype = dns.TypeA
			for _, ip := range d.a[q.Name] {
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.ParseIP(ip)})
			}
		case dns.TypeSRV:
			hdr.Rrtype = dns.TypeSRV
			for _, r := range d.srv[q.Name] {
				rec := r
				rec.Hdr = hdr
				m.Answer = append(m.Answer, &rec)
			}
		}
	}
	d.mu.Unlock()
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		// too long for the client's buffer: truncated, it asks again
		// over TCP
		size := dns.MinMsgSize
		if o := req.IsEdns0(); o != nil {
			size = int(o.UDPSize())
		}
		m.Truncate(size)
	}
	_ = w.WriteMsg(m)
}

// newBackendAt is newBackend on a given address.
func newBackendAt(t *testing.T, addr string) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{t: t, ln: ln, addr: ln.Addr().String(), ids: map[string]int{}}
	b.set(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "ok from %s", b.addr) })
	b.srv = &http.Server{Handler: http.HandlerFunc(b.serve), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = b.srv.Serve(ln) }()
	t.Cleanup(b.close)
	return b
}

// loopbackBackends starts n backends on 127.0.0.2, 127.0.0.3, ... sharing
// one port, as the workers of one A record do.
func loopbackBackends(t *testing.T, n int) (port string, bs []*backend) {
	t.Helper()
	first := newBackendAt(t, "127.0.0.2:0")
	_, port, _ = net.SplitHostPort(first.addr)
	bs = append(bs, first)
	for i := 1; i < n; i++ {
		bs = append(bs, newBackendAt(t, fmt.Sprintf("127.0.0.%d:%s", i+2, port)))
	}
	return port, bs
}

// fastDynamic makes the dynamic loop ask its source every 50ms for the
// rest of the test.
func fastDynamic(t *testing.T) {
	old := dynamicRefreshInterval
	dynamicRefreshInterval = 50 * time.Millisecond
	t.Cleanup(func() { dynamicRefreshInterval = old })
}

// dynamicDials returns the addresses of h's dynamic workers in use.
func dynamicDials(h *Handler) []string {
	var out []string
	for _, w := range h.set.Load().workers {
		if w.dyn != nil {
			out = append(out, w.Upstream)
		}
	}
	return out
}

// hasDial reports whether the running set of h has a worker for dial.
func hasDial(h *Handler, dial string) bool {
	for _, w := range h.set.Load().workers {
		if w.Upstream == dial {
			return true
		}
	}
	return false
}

// served sends n requests and returns how many each body named.
func served(t *testing.T, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		code, body := get(t, "/")
		if code != http.StatusOK {
			t.Fatalf("status %d: %s", code, body)
		}
		got[strings.TrimPrefix(body, "ok from ")]++
	}
	return got
}

// Addresses of an A record become workers alongside a static upstream; a
// new address gets traffic, one that goes away gets none and retires, and
// with it its worker state and its metric series.
func TestDynamicAWorkersComeAndGo(t *testing.T) {
	fastDynamic(t)
	srv := newTestDNS(t)
	port, bs := loopbackBackends(t, 3)
	static := newBackend(t)
	name := "app-come-go.workers.test"
	srv.setA(name, "127.0.0.2", "127.0.0.3")

	h := loadHandler(t, fmt.Sprintf(`
:9080 {
	bifrost %s {
		name dyn
		dynamic a %s %s {
			refresh 50ms
			resolvers %s
		}
		dynamic_retire_after 300ms
	}
}`, static.addr, name, port, srv.addr))

	first, second, third := bs[0].addr, bs[1].addr, bs[2].addr
	eventually(t, 10*time.Second, "the A record's two workers", func() bool {
		return hasDial(h, first) && hasDial(h, second)
	})
	got := served(t, 60)
	if got[first] == 0 || got[second] == 0 || got[static.addr] == 0 || got[third] != 0 {
		t.Fatalf("served %v; want the static upstream and the first two addresses, not the third", got)
	}

	srv.setA(name, "127.0.0.2", "127.0.0.3", "127.0.0.4")
	eventually(t, 10*time.Second, "a third worker", func() bool { return hasDial(h, third) })
	if got := served(t, 60); got[third] == 0 {
		t.Fatalf("served %v; the new address got nothing", got)
	}

	srv.setA(name, "127.0.0.3", "127.0.0.4")
	eventually(t, 10*time.Second, "the first address out of the set", func() bool { return !hasDial(h, first) })
	if got := served(t, 60); got[first] != 0 {
		t.Fatalf("served %v; the removed address still got requests", got)
	}
	id := pool.WorkerID("dyn", first)
	eventually(t, 10*time.Second, "the removed worker retired", func() bool {
		_, err := lookupWorker(id)
		return err != nil
	})
	if n := testutil.CollectAndCount(collectors.requests); n == 0 {
		t.Fatal("no request series at all")
	}
	for _, vec := range []interface{ DeleteLabelValues(...string) bool }{collectors.latency} {
		if vec.DeleteLabelValues("dyn", id) {
			t.Fatal("the retired worker's latency series was still there")
		}
	}
	if collectors.requests.DeleteLabelValues("dyn", id, "success") {
		t.Fatal("the retired worker's request series was still there")
	}
	if !collectors.requests.DeleteLabelValues("dyn", pool.WorkerID("dyn", second), "success") {
		t.Fatal("a worker in use has no request series (the check above proves nothing)")
	}
}

// A worker whose address leaves and comes back before it retired is the
// same worker: isolated and with its ejection count. A failing address is
// isolated while the others serve every request.
func TestDynamicAddressBackKeepsState(t *testing.T) {
	fastDynamic(t)
	srv := newTestDNS(t)
	port, bs := loopbackBackends(t, 3)
	bad := bs[0]
	bad.set(status(http.StatusInternalServerError, "broken"))
	name := "app-back.workers.test"
	srv.setA(name, "127.0.0.2", "127.0.0.3", "127.0.0.4")

	h := loadHandler(t, fmt.Sprintf(`
:9080 {
	bifrost {
		name back
		dynamic a %s %s {
			refresh 50ms
			resolvers %s
		}
		breaker {
			failures 2
		}
		isolation {
			breaker_trips 1
			base_time 1m
		}
	}
}`, name, port, srv.addr))
	eventually(t, 10*time.Second, "three workers", func() bool { return len(dynamicDials(h)) == 3 })

	ws := workerOf(t, "back", bad.addr)
	eventually(t, 10*time.Second, "the failing worker isolated", func() bool {
		if code, body := get(t, "/"); code != http.StatusOK {
			t.Fatalf("status %d (%s): the failing worker's requests must be retried on the others", code, body)
		}
		return ws.Health.Isolated()
	})
	ejections := ws.Health.Snapshot(time.Now()).Ejections
	if ejections == 0 {
		t.Fatal("isolated without an ejection")
	}
	var before *worker
	for _, w := range h.set.Load().workers {
		if w.Upstream == bad.addr {
			before = w
		}
	}

	srv.setA(name, "127.0.0.3", "127.0.0.4")
	eventually(t, 10*time.Second, "the failing address out", func() bool { return !hasDial(h, bad.addr) })
	srv.setA(name, "127.0.0.2", "127.0.0.3", "127.0.0.4")
	eventually(t, 10*time.Second, "the failing address back", func() bool { return hasDial(h, bad.addr) })

	var after *worker
	for _, w := range h.set.Load().workers {
		if w.Upstream == bad.addr {
			after = w
		}
	}
	if after != before {
		t.Fatal("the address came back as a new worker; want the same one")
	}
	snap := workerOf(t, "back", bad.addr).Health.Snapshot(time.Now())
	if !snap.Isolated || snap.Ejections != ejections {
		t.Fatalf("back: isolated %v, ejections %d; want still isolated with %d", snap.Isolated, snap.Ejections, ejections)
	}
	var views []pool.WorkerView
	adminJSON(t, http.MethodGet, "/bifrost/workers", &views)
	if len(views) != 3 {
		t.Fatalf("admin API lists %d workers, want 3", len(views))
	}
}

// SRV records (targets and ports) become workers; a record removed is
// no longer used.
func TestDynamicSRV(t *testing.T) {
	fastDynamic(t)
	srv := newTestDNS(t)
	a, b := newBackend(t), newBackend(t)
	portOf := func(bk *backend) uint16 {
		_, p, _ := net.SplitHostPort(bk.addr)
		n, _ := strconv.Atoi(p)
		return uint16(n)
	}
	// the targets are names: the workers' transport resolves them
	// through the test server too
	name := "_api._tcp.srv.workers.test"
	target := "host.srv.workers.test."
	srv.setA(target, "127.0.0.1")
	srv.setSRV(name,
		dns.SRV{Target: target, Port: portOf(a), Priority: 1, Weight: 1},
		dns.SRV{Target: target, Port: portOf(b), Priority: 1, Weight: 1})

	h := loadHandler(t, fmt.Sprintf(`
:9080 {
	bifrost {
		name srv
		dynamic srv %s {
			refresh 50ms
			resolvers %s
		}
		dynamic_retire_after 200ms
		transport http {
			resolvers %s
		}
	}
}`, name, srv.addr, srv.addr))
	eventually(t, 10*time.Second, "two SRV workers", func() bool { return len(dynamicDials(h)) == 2 })
	got := served(t, 40)
	if len(got) != 2 {
		t.Fatalf("served %v (workers %v); want both SRV targets", got, dynamicDials(h))
	}

	srv.setSRV(name, dns.SRV{Target: target, Port: portOf(b), Priority: 1, Weight: 1})
	eventually(t, 10*time.Second, "one SRV worker", func() bool { return len(dynamicDials(h)) == 1 })
	before := a.hits.Load()
	served(t, 20)
	if a.hits.Load() != before {
		t.Fatal("the removed SRV target still got requests")
	}
}

// A lookup that fails (SERVFAIL, then no DNS server at all) keeps the
// last workers, which go on serving, and is reported; the next good
// answer is applied.
func TestDynamicLookupFailureKeepsLastSet(t *testing.T) {
	fastDynamic(t)
	srv := newTestDNS(t)
	port, bs := loopbackBackends(t, 2)
	name := "app-fail.workers.test"
	srv.setA(name, "127.0.0.2", "127.0.0.3")

	h := loadHandler(t, fmt.Sprintf(`
:9080 {
	bifrost {
		name fail
		dynamic a %s %s {
			refresh 50ms
			resolvers %s
			dial_timeout 200ms
		}
		dynamic_retire_after 100ms
	}
}`, name, port, srv.addr))
	eventually(t, 10*time.Second, "two workers", func() bool { return len(dynamicDials(h)) == 2 })

	srv.fail.Store(true)
	eventually(t, 10*time.Second, "the failure reported", func() bool { return h.pool.DynamicErr.Load() != nil })
	var stats pool.StatsView
	adminJSON(t, http.MethodGet, "/bifrost/stats", &stats)
	if stats.Pools["fail"].DynamicError == "" {
		t.Fatalf("GET /bifrost/stats shows no dynamic_error during SERVFAIL: %+v", stats.Pools["fail"])
	}
	time.Sleep(300 * time.Millisecond) // past the retirement time: nothing may retire
	if got := served(t, 20); got[bs[0].addr] == 0 || got[bs[1].addr] == 0 {
		t.Fatalf("served %v during SERVFAIL; want both last workers", got)
	}

	srv.fail.Store(false)
	srv.setA(name, "127.0.0.3")
	eventually(t, 10*time.Second, "the next good answer applied", func() bool {
		return len(dynamicDials(h)) == 1 && h.pool.DynamicErr.Load() == nil
	})

	srv.stop()
	eventually(t, 15*time.Second, "the failure reported again", func() bool { return h.pool.DynamicErr.Load() != nil })
	if got := served(t, 10); got[bs[1].addr] != 10 {
		t.Fatalf("served %v with no DNS server; want the last worker", got)
	}
}

// Addresses churning by the thousand (20 answers of 50: Caddy's resolver
// asks over UDP only, so an answer must fit in one datagram) leave
// goroutines, workers, states, trackers and metric series bounded;
// dynamic_max_workers caps the pool.
func TestDynamicChurnBounded(t *testing.T) {
	fastDynamic(t)
	srv := newTestDNS(t)
	name := "app-churn.workers.test"
	const size, batches, maxWorkers = 50, 20, 60
	batch := func(i, n int) []string {
		ips := make([]string, n)
		for j := range ips {
			ips[j] = fmt.Sprintf("127.1.%d.%d", i, j+1)
		}
		return ips
	}
	srv.setA(name, batch(0, size)...)
	h := loadHandler(t, fmt.Sprintf(`
:9080 {
	bifrost {
		name churn
		dynamic a %s 9 {
			refresh 50ms
			resolvers %s
		}
		dynamic_retire_after 100ms
		dynamic_max_workers %d
	}
}`, name, srv.addr, maxWorkers))
	eventually(t, 20*time.Second, "the first batch", func() bool { return len(dynamicDials(h)) == size })
	runtime.GC()
	baseline := runtime.NumGoroutine()

	countStates := func() (n int) {
		for _, ws := range pool.AllWorkers() {
			if ws.Pool == "churn" {
				n++
			}
		}
		return n
	}
	for i := 1; i < batches; i++ {
		srv.setA(name, batch(i, size)...)
		want := fmt.Sprintf("127.1.%d.1:9", i)
		eventually(t, 20*time.Second, "batch "+strconv.Itoa(i), func() bool { return hasDial(h, want) })
		if n := countStates(); n > maxWorkers {
			t.Fatalf("batch %d: %d worker states in the pool, more than dynamic_max_workers", i, n)
		}
	}
	eventually(t, 20*time.Second, "the last batch alone", func() bool {
		return len(dynamicDials(h)) == size && countStates() == size
	})
	if n := h.p2c.Trackers().Len(); n != size {
		t.Fatalf("%d latency trackers, want %d", n, size)
	}
	if n := testutil.CollectAndCount(collectors.latency); n > size {
		t.Fatalf("%d latency series after churning %d addresses, want at most the %d workers in use", n, size*batches, size)
	}
	eventually(t, 10*time.Second, "goroutines back to the baseline", func() bool {
		runtime.GC()
		return runtime.NumGoroutine() <= baseline+5
	})

	// the cap: 70 addresses at once give dynamic_max_workers workers
	srv.setA(name, batch(100, 70)...)
	eventually(t, 20*time.Second, "the pool capped", func() bool { return hasDial(h, "127.1.100.1:9") })
	time.Sleep(300 * time.Millisecond)
	if n := len(dynamicDials(h)); n != maxWorkers {
		t.Fatalf("%d dynamic workers for 70 addresses, want dynamic_max_workers (%d)", n, maxWorkers)
	}
}

// A dynamic worker logs and counts as a static one does: its proxy's logs
// carry the handler's name (so a `log` filter on http.handlers.bifrost
// includes them) and reverse_proxy's upstream gauge reaches Caddy's
// /metrics. (Provisioned in a context of its own, it logged through
// Caddy's default logger, and counted into that context's registry, which
// nothing scrapes.)
func TestDynamicWorkerLogsAndCountsAsStatic(t *testing.T) {
	fastDynamic(t)
	srv := newTestDNS(t)
	port, bs := loopbackBackends(t, 1)
	name := "logs.workers.test"
	srv.setA(name, "127.0.0.2")
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	cfg := fmt.Sprintf(`{
	admin %s
	http_port 9080
	https_port 9443
	auto_https off
	skip_install_trust
	grace_period 1ns
	log {
		output file %s
		format json
		level DEBUG
	}
}
:9080 {
	bifrost {
		name dynlog
		dynamic a %s %s {
			refresh 50ms
			resolvers %s
		}
	}
}`, testAdmin, logFile, name, port, srv.addr)
	js, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatal(err)
	}
	loadJSON(t, js)
	h := runningHandler(t)
	dial := bs[0].addr
	eventually(t, 10*time.Second, "the dynamic worker", func() bool { return hasDial(h, dial) })
	if code, body := get(t, "/"); code != http.StatusOK {
		t.Fatalf("status %d: %s", code, body)
	}

	// the proxy's own debug log of the round trip, under the handler's name
	var logger string
	eventually(t, 5*time.Second, "the dynamic worker's round-trip log", func() bool {
		b, _ := os.ReadFile(logFile)
		for line := range strings.SplitSeq(string(b), "\n") {
			var entry struct {
				Logger, Msg, Upstream string
			}
			if json.Unmarshal([]byte(line), &entry) == nil && entry.Msg == "upstream roundtrip" && entry.Upstream == dial {
				logger = entry.Logger
				return true
			}
		}
		return false
	})
	if logger != "http.handlers.bifrost" {
		t.Errorf("the dynamic worker's proxy logs as %q; want http.handlers.bifrost, as a static worker's", logger)
	}

	code, body, _ := do(t, http.MethodGet, "http://"+testAdmin+"/metrics", nil)
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d", code)
	}
	if want := fmt.Sprintf(`caddy_reverse_proxy_upstreams_healthy{upstream=%q} 1`, dial); !strings.Contains(body, want) {
		t.Fatalf("/metrics has no %s", want)
	}
}

// A request that no worker could take (a dynamic source with no address
// yet) shows 0 attempts, as one tried shows its tries.
func TestPlaceholdersWithoutATry(t *testing.T) {
	srv := newTestDNS(t)
	loadHandler(t, fmt.Sprintf(`
:9080 {
	bifrost {
		name notry
		dynamic a nothing.workers.test 9 {
			resolvers %s
		}
		fallback {
			status 503
			body "attempts={http.bifrost.attempts}"
		}
	}
}`, srv.addr))
	code, body := get(t, "/")
	if code != http.StatusServiceUnavailable || body != "attempts=0" {
		t.Fatalf("got %d %q, want 503 \"attempts=0\"", code, body)
	}
}
