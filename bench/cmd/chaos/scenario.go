package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/bifrost-proxy/bifrost/bench/faultserver"
	"github.com/bifrost-proxy/bifrost/bench/loadgen"
)

// scenario is one fault, applied to one backend of three (or to all) for
// a window in the middle of a run.
type scenario struct {
	Name        string
	Description string
	Fault       faultserver.Behavior
	// AllBackends applies the fault to every backend, for the outage
	// duration instead of the window.
	AllBackends bool
	// Extra marks scenarios beyond the ones the targets are about.
	Extra bool
	// Dynamic takes the upstreams from `dynamic a` through the suite's
	// DNS server instead of listing them: the name resolves to the three
	// backends (127.0.0.2 to 127.0.0.4, one port), and a fourth
	// (127.0.0.5) joins the answer a quarter into the window.
	Dynamic bool
	// Slow adds the slow-endpoint load (see slowBurst) when the window
	// starts, over a trickle of load instead of the suite's rate.
	Slow bool
	// Backup adds a fourth backend as a backup upstream (`backup`),
	// which the fault never touches; only Bifrost has backups, so only
	// its contenders run the scenario.
	Backup bool
}

// lyingHealth502 answers 502 to traffic while /health says 200.
var lyingHealth502 = func() faultserver.Behavior {
	b := faultserver.Answering(502, 0)
	b.LyingHealth = true
	return b
}()

// allScenarios lists every scenario, in table order.
var allScenarios = []scenario{
	{Name: "down", Description: "one backend's port closed: connects refused", Fault: faultserver.Refusing()},
	{Name: "502", Description: "one backend answers 502 to everything (health included)", Fault: faultserver.Answering(502, 0)},
	{Name: "reset", Description: "one backend reads each request, then resets the connection", Fault: faultserver.Behavior{Mode: faultserver.ResetBefore}},
	{Name: "429", Description: "one backend answers 429 with Retry-After: 2", Fault: faultserver.Answering(429, 2*time.Second)},
	{Name: "flaky30", Description: "one backend fails 30% of requests (health included) with 502", Fault: faultserver.FlakyBy(0.3)},
	{Name: "slow300", Description: "one backend answers 300 ms late", Fault: faultserver.SlowBy(300 * time.Millisecond)},
	{Name: "hang", Description: "one backend reads requests and never answers (until the window ends)", Fault: faultserver.Behavior{Mode: faultserver.Hang}},
	{Name: "slow-endpoint", Description: fmt.Sprintf("every backend healthy, with a slow endpoint: %d concurrent GETs of /slow (%s each, four fifths of the window if shorter) and a burst of %d ordinary GETs when the window starts, over %d requests a second", slowGETs, slowDelay, burstGETs, slowLoadRate), Fault: faultserver.Behavior{}, Slow: true},
	{Name: "dynamic", Description: "upstreams from `dynamic a`: one of three answers 502 (health included) while a fourth joins the DNS answer", Fault: faultserver.Answering(502, 0), Dynamic: true},
	{Name: "all-down", Description: "every backend's port closed for the outage", Fault: faultserver.Refusing(), AllBackends: true},
	{Name: backupScenario, Description: "every primary's port closed for the outage, with a fourth backend as `backup`", Fault: faultserver.Refusing(), AllBackends: true, Backup: true},
	{Name: "reset-mid-body", Description: "one backend sends headers and half the body, then resets", Fault: faultserver.Behavior{Mode: faultserver.ResetMidBody}, Extra: true},
	{Name: "junk", Description: "one backend answers bytes that are not HTTP", Fault: faultserver.Behavior{Mode: faultserver.Junk}, Extra: true},
	{Name: "502-lying-health", Description: "one backend answers 502 while its /health says 200", Fault: lyingHealth502, Extra: true},
}

// selectScenarios returns the scenarios named in list (comma-separated),
// in table order; "" or "all" selects every one.
func selectScenarios(list string) ([]scenario, error) {
	return selectNamed(allScenarios, func(s scenario) string { return s.Name }, list, "scenario", scenarioNames())
}

// timing is the schedule of a scenario run.
type timing struct {
	Run     time.Duration `json:"run"`
	FaultAt time.Duration `json:"fault_at"`
	Window  time.Duration `json:"window"`
	Outage  time.Duration `json:"outage"`
	Settle  time.Duration `json:"settle"`
}

// window is how long sc's fault lasts.
func (t timing) window(sc scenario) time.Duration {
	if sc.AllBackends {
		return t.Outage
	}
	return t.Window
}

// load is the client load of every scenario run.
type load struct {
	Rate      float64       `json:"rate"`
	POSTShare float64       `json:"post_share"`
	Timeout   time.Duration `json:"timeout"`
}

// env is what every run shares.
type env struct {
	caddy  string
	tmp    string
	procs  *procSet
	timing timing
	load   load
	poll   time.Duration
	log    func(format string, args ...any)
}

// backendCount is the size of every pool.
const backendCount = 3

// startBackends starts n healthy fault servers.
func startBackends(n, maxEvents int) ([]*faultserver.Server, error) {
	var out []*faultserver.Server
	for i := range n {
		s, err := faultserver.Start(faultserver.Options{Name: fmt.Sprintf("b%d", i+1), MaxEvents: maxEvents})
		if err != nil {
			closeBackends(out)
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func closeBackends(bs []*faultserver.Server) {
	for _, b := range bs {
		_ = b.Close()
	}
}

func addrs(bs []*faultserver.Server) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = b.Addr()
	}
	return out
}

// The dynamic scenario's DNS name and how often the source looks it up.
const (
	dynamicName    = "backends.chaos.test"
	dynamicRefresh = time.Second
)

// startLoopbackBackends starts n healthy fault servers on 127.0.0.2,
// 127.0.0.3, ... sharing one port, as the A records of one name must: the
// port free on the first address is tried on the others, a few times
// over.
func startLoopbackBackends(n, maxEvents int) ([]*faultserver.Server, error) {
	var lastErr error
	for range 10 {
		var out []*faultserver.Server
		port := "0"
		for i := range n {
			s, err := faultserver.Start(faultserver.Options{
				Name: fmt.Sprintf("b%d", i+1), Addr: net.JoinHostPort(fmt.Sprintf("127.0.0.%d", i+2), port), MaxEvents: maxEvents,
			})
			if err != nil {
				lastErr = err
				break
			}
			out = append(out, s)
			_, port, _ = net.SplitHostPort(s.Addr())
		}
		if len(out) == n {
			return out, nil
		}
		closeBackends(out)
	}
	return nil, fmt.Errorf("no port free on 127.0.0.2-127.0.0.%d: %w", n+1, lastErr)
}

// hosts returns the IP addresses of bs.
func hosts(bs []*faultserver.Server) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i], _, _ = net.SplitHostPort(b.Addr())
	}
	return out
}

// dynamicUpstreams is the dynamic scenario's source: the A records of
// dynamicName on port, asked of resolver.
func dynamicUpstreams(port, resolver string) upstreams {
	return upstreams{Dynamic: dynamicA(dynamicName, port, resolver, dynamicRefresh)}
}

// runScenario runs sc against contender c on fresh backends and a fresh
// Caddy, and measures it.
func runScenario(ctx context.Context, e *env, sc scenario, c contender) RunResult {
	rr := RunResult{Contender: c.Name, Label: c.Label, Bifrost: c.Bifrost}
	var backends []*faultserver.Server
	var err error
	switch {
	case sc.Dynamic:
		backends, err = startLoopbackBackends(backendCount+1, 0)
	case sc.Backup:
		backends, err = startBackends(backendCount+1, 0)
	default:
		backends, err = startBackends(backendCount, 0)
	}
	if err != nil {
		rr.Error = err.Error()
		return rr
	}
	defer closeBackends(backends)
	faulty := backends[:1]
	if sc.AllBackends {
		faulty = backends
	}
	ups := staticUpstreams(addrs(backends)...)
	var backup *faultserver.Server
	if sc.Backup {
		backup, faulty = backends[backendCount], backends[:backendCount]
		ups = staticUpstreams(addrs(faulty)...)
		ups.Backup = []string{backup.Addr()}
	}
	var join *joinSchedule
	if sc.Dynamic {
		// the name resolves to the first three; the fourth joins later
		srv, err := startDNS(dynamicName, hosts(backends[:backendCount])...)
		if err != nil {
			rr.Error = err.Error()
			return rr
		}
		defer srv.close()
		_, port, _ := net.SplitHostPort(backends[0].Addr())
		ups = dynamicUpstreams(port, srv.addr)
		join = &joinSchedule{dns: srv, ips: hosts(backends), at: e.timing.FaultAt + e.timing.window(sc)/4, added: backends[backendCount]}
	}

	dir := filepath.Join(e.tmp, sc.Name, c.Name)
	proc, err := e.startProxy(ctx, dir, c, ups, true)
	if err != nil {
		rr.Error = err.Error()
		return rr
	}
	defer proc.stop()
	rr.LogDir = dir

	// let the first health checks pass, then count from zero
	if !sleepCtx(ctx, e.timing.Settle) {
		rr.Error = "interrupted"
		return rr
	}
	for _, b := range backends {
		b.ResetCounters()
	}
	in, err := e.drive(ctx, sc, c, proc, faulty, join)
	if err != nil {
		rr.Error = err.Error()
		return rr
	}
	in.backends, in.faulty, in.allFaulty, in.backup = backends, faulty, sc.AllBackends, backup
	if join != nil {
		in.added, in.addedAt = join.added, join.done
	}

	proc.stop() // flushes and closes the log before it is read
	if in.tries, in.notes, err = readTries(proc.debugLog); err != nil {
		rr.Error = err.Error()
	}
	in.panics = scanPanics(proc.stderrPath, 20)
	analyze(&rr, in)
	return rr
}

// joinSchedule adds a backend to the DNS answer at a time of the run.
type joinSchedule struct {
	dns   *dnsServer
	ips   []string // the answer from then on
	at    time.Duration
	added *faultserver.Server
	done  time.Time // when the answer changed; zero if it never did
}

// run changes the answer at start+at unless ctx ends first.
func (j *joinSchedule) run(ctx context.Context, start time.Time) {
	if sleepCtx(ctx, time.Until(start.Add(j.at))) {
		j.dns.setA(j.ips...)
		j.done = time.Now()
	}
}

// drive sends the load through proc while the fault comes and goes on
// faulty (and join, if not nil, adds a backend to the DNS answer),
// polling Bifrost's admin API if c is Bifrost.
func (e *env) drive(ctx context.Context, sc scenario, c contender, proc *caddyProc, faulty []*faultserver.Server, join *joinSchedule) (analysisInput, error) {
	var in analysisInput
	var stopPolling func() ([]stateChange, int)
	if c.Bifrost {
		stopPolling = startPolling(ctx, proc.adminURL(), e.poll)
	}
	fs := newFaultSchedule(faulty, sc.Fault, e.timing.FaultAt, e.timing.window(sc))
	start := time.Now()
	go fs.run(ctx, start)
	rate := e.load.Rate
	var slow chan *SlowResult
	if sc.Slow {
		rate = slowLoadRate
		slow = make(chan *SlowResult, 1)
		go func() {
			slow <- slowBurst(ctx, proc.proxyURL(), start.Add(e.timing.FaultAt), slowDelayFor(e.timing.window(sc)), sc.Name+"-"+c.Name)
		}()
	}
	joined := make(chan struct{})
	go func() {
		defer close(joined)
		if join != nil {
			join.run(ctx, start)
		}
	}()
	res, err := loadgen.Run(ctx, loadgen.Config{
		URL:       proc.proxyURL(),
		Rate:      rate,
		Duration:  e.timing.Run,
		POSTShare: e.load.POSTShare,
		Timeout:   e.load.Timeout,
		IDPrefix:  sc.Name + "-" + c.Name,
	})
	fs.wait()
	<-joined
	if slow != nil {
		in.slow = <-slow
	}
	if stopPolling != nil {
		in.changes, in.pollErrors = stopPolling()
		in.polled = true
	}
	switch {
	case err != nil:
		return in, err
	case ctx.Err() != nil:
		return in, errors.New("interrupted")
	case fs.err != nil:
		return in, fs.err
	}
	in.records, in.start, in.end = res.Records, res.Start, res.End
	in.faultStart, in.faultEnd = fs.started, fs.ended
	return in, nil
}

// startPolling polls Bifrost's admin API in the background until the
// returned function is called; that function returns the state changes
// seen and the number of failed polls.
func startPolling(ctx context.Context, adminURL string, every time.Duration) func() ([]stateChange, int) {
	pl := newPoller(adminURL, every)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		pl.run(ctx)
	}()
	return func() ([]stateChange, int) {
		cancel()
		<-done
		return pl.result()
	}
}

// startProxy starts Caddy with contender c in front of ups; debug keeps
// the upstream-roundtrip log.
func (e *env) startProxy(ctx context.Context, dir string, c contender, ups upstreams, debug bool) (*caddyProc, error) {
	return e.startProxyOn(ctx, e.caddy, dir, c, ups, debug)
}

// startProxyOn is startProxy with the Caddy binary bin.
func (e *env) startProxyOn(ctx context.Context, bin, dir string, c contender, ups upstreams, debug bool) (*caddyProc, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	admin, err := freePort()
	if err != nil {
		return nil, err
	}
	cf := caddyConfig{Port: port, Admin: admin, Dir: dir, Global: c.Global, Site: c.site(ups)}
	if debug {
		cf.DebugLog = filepath.Join(dir, "tries.log")
		cf.DebugAll = len(ups.Dynamic) > 0
	}
	return startCaddy(ctx, e.procs, bin, dir, cf)
}

// faultSchedule applies a fault to some backends for a window and records
// when it really started and ended.
type faultSchedule struct {
	backends []*faultserver.Server
	fault    faultserver.Behavior
	at, dur  time.Duration

	done           chan struct{}
	started, ended time.Time
	err            error
}

func newFaultSchedule(bs []*faultserver.Server, f faultserver.Behavior, at, dur time.Duration) *faultSchedule {
	return &faultSchedule{backends: bs, fault: f, at: at, dur: dur, done: make(chan struct{})}
}

// run applies the fault at start+at and lifts it at start+at+dur; if ctx
// ends first, it lifts the fault at once.
func (fs *faultSchedule) run(ctx context.Context, start time.Time) {
	defer close(fs.done)
	if !sleepCtx(ctx, time.Until(start.Add(fs.at))) {
		return
	}
	fs.started = time.Now()
	fs.err = fs.setAll(fs.fault)
	sleepCtx(ctx, time.Until(fs.started.Add(fs.dur)))
	fs.ended = time.Now()
	if err := fs.setAll(faultserver.Healthy()); err != nil && fs.err == nil {
		fs.err = err
	}
}

func (fs *faultSchedule) setAll(b faultserver.Behavior) error {
	for _, s := range fs.backends {
		if err := s.Set(b); err != nil {
			return fmt.Errorf("backend %s: %w", s.Name(), err)
		}
	}
	return nil
}

// wait waits until the fault is lifted.
func (fs *faultSchedule) wait() { <-fs.done }

// sleepCtx sleeps for d; it returns false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func joinErr(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// removeAll removes the suite's temporary directory unless keep.
func removeAll(dir string, keep bool, log func(string, ...any)) {
	if keep {
		log("kept logs and configs in %s", dir)
		return
	}
	_ = os.RemoveAll(dir)
}
