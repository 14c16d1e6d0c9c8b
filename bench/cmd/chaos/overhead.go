package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/bifrost-proxy/bifrost/bench/loadgen"
	"github.com/bifrost-proxy/bifrost/bench/redisserver"
)

// The values of -overhead-load: how the happy path drives its load.
const (
	// loadClosed is loadgen's closed loop, -clients clients.
	loadClosed = "closed"
	// loadWrk is wrk, -clients connections on two threads.
	loadWrk = "wrk"
)

// The values of -overhead-schedule: how a pair's runs of A and B are laid
// out in time.
const (
	// scheduleAlternate runs A and B back to back, alternating which goes
	// first: A B, B A, A B, ...
	scheduleAlternate = "alternate"
	// scheduleTogether loads A and B at the same time, each by its own
	// load generator, so that both see the same machine.
	scheduleTogether = "together"
)

// overheadSettings describes the happy-path comparison.
type overheadSettings struct {
	// Variant is what A and B are (-overhead-variant, see
	// overheadVariants).
	Variant string `json:"variant"`
	// A and B are the labels of the two sides, set when the comparison
	// starts.
	A string `json:"a,omitempty"`
	B string `json:"b,omitempty"`
	// Load is loadClosed or loadWrk (-overhead-load).
	Load string `json:"load"`
	// Schedule is scheduleAlternate or scheduleTogether
	// (-overhead-schedule).
	Schedule string        `json:"schedule"`
	Pairs    int           `json:"pairs"`
	Duration time.Duration `json:"duration"`
	Warmup   time.Duration `json:"warmup"`
	Clients  int           `json:"clients"`
	// Policy is Bifrost's lb_policy; "" is its default.
	Policy string `json:"bifrost_policy,omitempty"`
	// CaddyB is side B's Caddy binary (-caddy-b); "" is side A's.
	CaddyB string `json:"caddy_b,omitempty"`
}

// validate checks the variant, the schedule and the load, and that wrk
// can run the runs: wrk takes whole seconds and at least one connection
// per thread.
func (s overheadSettings) validate() error {
	if _, err := findOverheadVariant(s.Variant); err != nil {
		return err
	}
	if s.CaddyB != "" {
		if fi, err := os.Stat(s.CaddyB); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return fmt.Errorf("-caddy-b %q is not an executable file", s.CaddyB)
		}
	}
	switch s.Schedule {
	case scheduleAlternate, scheduleTogether:
	default:
		return fmt.Errorf("unknown -overhead-schedule %q (want %s or %s)", s.Schedule, scheduleAlternate, scheduleTogether)
	}
	switch s.Load {
	case loadClosed:
		return nil
	case loadWrk:
	default:
		return fmt.Errorf("unknown -overhead-load %q (want %s or %s)", s.Load, loadClosed, loadWrk)
	}
	for _, d := range []time.Duration{s.Duration, s.Warmup} {
		if d%time.Second != 0 {
			return fmt.Errorf("-overhead-load wrk runs whole seconds: -overhead-run %s, warm-up %s", s.Duration, s.Warmup)
		}
	}
	if s.Clients < s.wrkThreads() {
		return fmt.Errorf("-overhead-load wrk needs -clients of at least %d (one connection per thread)", s.wrkThreads())
	}
	return nil
}

// together reports whether A and B are loaded at the same time.
func (s overheadSettings) together() bool { return s.Schedule == scheduleTogether }

// wrkThreads is each wrk's -t: one thread per core of the two-core
// machines the suite is run on when one proxy is loaded at a time, one
// each when two wrk share them.
func (s overheadSettings) wrkThreads() int {
	if s.together() {
		return 1
	}
	return 2
}

// rounds returns the rounds of pair i, one after the other: the sides
// (0 for A, 1 for B) each round loads, all at the same time. Alternate
// pairs are two rounds of one side, A first in even pairs (counted from
// 0) and B first in odd ones; together pairs are one round of both.
func (s overheadSettings) rounds(i int) [][]int {
	switch {
	case s.together():
		return [][]int{{0, 1}}
	case i%2 == 1:
		return [][]int{{1}, {0}}
	default:
		return [][]int{{0}, {1}}
	}
}

// bFirst reports whether B runs before A in pair i, alone.
func (s overheadSettings) bFirst(i int) bool {
	first := s.rounds(i)[0]
	return len(first) == 1 && first[0] == 1
}

// overheadTools are the programs the happy path runs besides Caddy,
// found on PATH before anything runs; "" for one it does not need.
type overheadTools struct {
	wrk, redis string
}

// findOverheadTools finds wrk for -overhead-load wrk and redis-server for
// a variant with a fleet; a missing one is an error that says which flag
// needs it.
func findOverheadTools(s overheadSettings) (overheadTools, error) {
	var t overheadTools
	var err error
	if s.Load == loadWrk {
		if t.wrk, err = exec.LookPath("wrk"); err != nil {
			return t, fmt.Errorf("-overhead-load wrk: wrk not found on PATH (install it, e.g. apt-get install wrk): %w", err)
		}
	}
	if v, _ := findOverheadVariant(s.Variant); v.Fleet {
		if t.redis, err = exec.LookPath("redis-server"); err != nil {
			return t, fmt.Errorf("-overhead-variant %s: redis-server not found on PATH (install it, e.g. apt-get install redis-server): %w", s.Variant, err)
		}
	}
	return t, nil
}

// overheadRun is one run of load against one proxy.
type overheadRun struct {
	// Throughput is the 2xx and 3xx responses per second.
	Throughput float64 `json:"throughput"`
	P50MS      float64 `json:"p50_ms"`
	P99MS      float64 `json:"p99_ms"`
	Requests   int     `json:"requests"`
	Failures   int     `json:"failures"`
	// CPUPerRequestUS is the proxy process's CPU time (user and system)
	// during the run divided by its requests, in µs; 0 where it cannot
	// be read (Linux only).
	CPUPerRequestUS float64 `json:"cpu_us_per_request,omitempty"`
	// CPUSecondsPer10k is the same CPU time per 10 000 requests, in
	// seconds.
	CPUSecondsPer10k float64 `json:"cpu_s_per_10k,omitempty"`
	// AllocBytesPerRequest and AllocObjectsPerRequest are what the
	// proxy process's Go heap allocated during the run (TotalAlloc and
	// Mallocs of its memstats, read from the admin API's /debug/vars
	// before and after) divided by its requests; 0 where they could not
	// be read. The two reads of /debug/vars are in them too: a few
	// hundred objects, against the run's hundreds of thousands.
	AllocBytesPerRequest   float64 `json:"alloc_bytes_per_request,omitempty"`
	AllocObjectsPerRequest float64 `json:"alloc_objects_per_request,omitempty"`
}

// overheadPair is a run of A and one of B, back to back or at the same
// time (see overheadSettings.Schedule), and B's ratios to A.
type overheadPair struct {
	// BFirst is set when B ran before A: back to back, pairs alternate
	// the order, so that whatever one run leaves behind (garbage to
	// collect, warm caches) weighs on both proxies alike.
	BFirst          bool        `json:"b_first,omitempty"`
	A               overheadRun `json:"a"`
	B               overheadRun `json:"b"`
	ThroughputRatio float64     `json:"throughput_ratio"`
	P99Ratio        float64     `json:"p99_ratio"`
	CPURatio        float64     `json:"cpu_ratio,omitempty"`
	// AllocBytesRatio and AllocObjectsRatio are B's bytes and objects
	// allocated per request over A's.
	AllocBytesRatio   float64 `json:"alloc_bytes_ratio,omitempty"`
	AllocObjectsRatio float64 `json:"alloc_objects_ratio,omitempty"`
}

// newOverheadPair computes B's ratios to A.
func newOverheadPair(a, b overheadRun, bFirst bool) overheadPair {
	return overheadPair{
		BFirst: bFirst, A: a, B: b,
		ThroughputRatio:   safeDiv(b.Throughput, a.Throughput),
		P99Ratio:          safeDiv(b.P99MS, a.P99MS),
		CPURatio:          safeDiv(b.CPUPerRequestUS, a.CPUPerRequestUS),
		AllocBytesRatio:   safeDiv(b.AllocBytesPerRequest, a.AllocBytesPerRequest),
		AllocObjectsRatio: safeDiv(b.AllocObjectsPerRequest, a.AllocObjectsPerRequest),
	}
}

// OverheadResult is the happy-path comparison.
type OverheadResult struct {
	Settings              overheadSettings `json:"settings"`
	Pairs                 []overheadPair   `json:"pairs"`
	MedianThroughputRatio float64          `json:"median_throughput_ratio"`
	MedianP99Ratio        float64          `json:"median_p99_ratio"`
	// The middle half of the pairs' ratios (first and third quartiles):
	// how far a single pair may stray from the median on this machine.
	ThroughputQuartiles [2]float64 `json:"throughput_ratio_quartiles"`
	P99Quartiles        [2]float64 `json:"p99_ratio_quartiles"`
	// MedianCPURatio is the median of B's CPU time per request over A's:
	// the proxy's own cost, which the throughput ratio understates
	// because the load generator and the backends share the CPUs.
	MedianCPURatio float64 `json:"median_cpu_ratio,omitempty"`
	// MedianAllocBytesRatio and MedianAllocObjectsRatio are the medians
	// of the pairs' allocation ratios (bytes and objects per request).
	MedianAllocBytesRatio   float64 `json:"median_alloc_bytes_ratio,omitempty"`
	MedianAllocObjectsRatio float64 `json:"median_alloc_objects_ratio,omitempty"`
	Error                   string  `json:"error,omitempty"`
}

// runOverhead compares the two sides of the variant s.Variant (by
// default Bifrost's defaults, B, against plain reverse_proxy, A) in front
// of the same three healthy backends: both Caddy processes run side by
// side and either take turns, A B B A A B ..., so that drift in the
// machine's load hits both alike, and neither always runs second, or
// (s.Schedule together) are loaded at the same time, so that both see the
// same machine.
func runOverhead(ctx context.Context, e *env, s overheadSettings, tools overheadTools) *OverheadResult {
	out := &OverheadResult{Settings: s}
	if err := out.compare(ctx, e, tools); err != nil {
		out.Error = err.Error()
	}
	return out
}

// compare is runOverhead's work: it starts what the variant needs, runs
// the pairs into o.Pairs and sums them up.
func (o *OverheadResult) compare(ctx context.Context, e *env, tools overheadTools) error {
	s := &o.Settings
	v, err := findOverheadVariant(s.Variant)
	if err != nil {
		return err
	}
	dir := filepath.Join(e.tmp, "overhead")
	fleet := ""
	if v.Fleet {
		rd, err := redisserver.Start(ctx, tools.redis, filepath.Join(dir, "redis"))
		if err != nil {
			return err
		}
		e.procs.add(rd.Cmd)
		defer func() {
			rd.Stop()
			e.procs.remove(rd.Cmd)
		}()
		fleet = rd.URL()
	}
	ca, cb := v.sides(s.Policy, fleet)
	s.A, s.B = ca.Label, cb.Label
	e.log("happy path, variant %s, %s load, %s: A is %s, B is %s", s.Variant, s.Load, s.scheduleText(), s.A, s.B)

	backends, err := startBackends(backendCount, -1)
	if err != nil {
		return err
	}
	defer closeBackends(backends)
	ups := staticUpstreams(addrs(backends)...)
	a, err := e.startProxy(ctx, filepath.Join(dir, "a"), ca, ups, false)
	if err != nil {
		return err
	}
	defer a.stop()
	b, err := e.startProxyOn(ctx, cmp.Or(s.CaddyB, e.caddy), filepath.Join(dir, "b"), cb, ups, false)
	if err != nil {
		return err
	}
	defer b.stop()

	tr := loadgen.NewTransport()
	defer tr.CloseIdleConnections()
	load := closedLoop(&http.Client{Transport: tr}, s.Clients)
	if s.Load == loadWrk {
		load = wrkLoad(e.procs, tools.wrk, s.wrkThreads(), s.Clients)
	}
	sides := [2]*caddyProc{a, b}
	if s.Warmup > 0 {
		// the warm-up loads the proxies the way the pairs do
		if _, err := s.runPair(ctx, 0, sides, s.Warmup, load); err != nil {
			return err
		}
	}
	for i := range s.Pairs {
		runs, err := s.runPair(ctx, i, sides, s.Duration, load)
		if err != nil {
			return err
		}
		pair := newOverheadPair(runs[0], runs[1], s.bFirst(i))
		o.Pairs = append(o.Pairs, pair)
		e.log("overhead pair %d/%d: A %s, B %s: ratio %.3f, p99 ratio %.3f, CPU ratio %.3f, allocs ratio %.3f",
			i+1, s.Pairs, pair.A, pair.B, pair.ThroughputRatio, pair.P99Ratio, pair.CPURatio, pair.AllocObjectsRatio)
	}
	o.summarize()
	return nil
}

// runPair runs pair i's rounds (see rounds) against sides, A and B, each
// round for d, and returns A's run and B's.
func (s overheadSettings) runPair(ctx context.Context, i int, sides [2]*caddyProc, d time.Duration, load loadFunc) ([2]overheadRun, error) {
	var runs [2]overheadRun
	for _, round := range s.rounds(i) {
		ps := make([]*caddyProc, len(round))
		for j, side := range round {
			ps[j] = sides[side]
		}
		rs, err := measured(ctx, ps, d, load)
		if err != nil {
			return runs, err
		}
		for j, side := range round {
			runs[side] = rs[j]
		}
	}
	return runs, nil
}

// scheduleText says how the runs of a pair are laid out, for the log and
// the report.
func (s overheadSettings) scheduleText() string {
	if s.together() {
		return "A and B loaded at the same time"
	}
	return "A and B back to back"
}

// String describes a run in a few figures, for the progress log.
func (r overheadRun) String() string {
	s := fmt.Sprintf("%.0f req/s p99 %.2fms %.3fs CPU/10k req %.0f B %.1f allocs/req", r.Throughput, r.P99MS, r.CPUSecondsPer10k, r.AllocBytesPerRequest, r.AllocObjectsPerRequest)
	if r.Failures > 0 {
		s += fmt.Sprintf(" (%d failures)", r.Failures)
	}
	return s
}

// summarize computes the medians and quartiles of the pairs' ratios.
func (o *OverheadResult) summarize() {
	var tps, p99s, cpus, bytes, objects []float64
	for _, p := range o.Pairs {
		tps = append(tps, p.ThroughputRatio)
		p99s = append(p99s, p.P99Ratio)
		if p.CPURatio > 0 {
			cpus = append(cpus, p.CPURatio)
		}
		if p.AllocObjectsRatio > 0 {
			bytes = append(bytes, p.AllocBytesRatio)
			objects = append(objects, p.AllocObjectsRatio)
		}
	}
	o.MedianThroughputRatio, o.MedianP99Ratio, o.MedianCPURatio = median(tps), median(p99s), median(cpus)
	o.MedianAllocBytesRatio, o.MedianAllocObjectsRatio = median(bytes), median(objects)
	o.ThroughputQuartiles, o.P99Quartiles = quartiles(tps), quartiles(p99s)
}

// loadFunc drives load against p for d and returns the client's side of
// the run: throughput, latencies, requests and failures.
type loadFunc func(ctx context.Context, p *caddyProc, d time.Duration) (overheadRun, error)

// closedLoop is loadgen's closed loop: clients clients on client, each
// sending its next request when the last one is answered.
func closedLoop(client *http.Client, clients int) loadFunc {
	return func(ctx context.Context, p *caddyProc, d time.Duration) (overheadRun, error) {
		res, err := loadgen.Run(ctx, loadgen.Config{URL: p.proxyURL(), Clients: clients, Duration: d, Client: client, Timeout: 5 * time.Second, IDPrefix: "happy"})
		if err != nil {
			return overheadRun{}, err
		}
		s := loadgen.Summarize(res.Records, time.Time{}, time.Time{})
		return overheadRun{
			Throughput: float64(s.Requests-s.Failures) / res.End.Sub(res.Start).Seconds(),
			P50MS:      ms(s.P50),
			P99MS:      ms(s.P99),
			Requests:   s.Requests,
			Failures:   s.Failures,
		}, nil
	}
}

// wrkLoad is wrk (the binary bin) with threads threads and clients
// connections.
func wrkLoad(procs *procSet, bin string, threads, clients int) loadFunc {
	return func(ctx context.Context, p *caddyProc, d time.Duration) (overheadRun, error) {
		r, err := runWrk(ctx, procs, bin, p.proxyURL(), threads, clients, d)
		return r.run(), err
	}
}

// measured loads every proxy of ps at the same time for d, each by its
// own load generator, and returns their runs in the order of ps, each with
// its process's CPU time and heap allocations per request over that
// common window. The allocations are read first and last, outside the
// window of the CPU times.
func measured(ctx context.Context, ps []*caddyProc, d time.Duration, load loadFunc) ([]overheadRun, error) {
	ms := make([]*meter, len(ps))
	for i, p := range ps {
		ms[i] = &meter{p: p}
	}
	for _, m := range ms {
		m.readAllocs(ctx, &m.mem0)
	}
	for _, m := range ms {
		m.readCPU(&m.cpu0)
	}
	runs := make([]overheadRun, len(ps))
	errs := make([]error, len(ps))
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runs[i], errs[i] = load(ctx, p, d)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for _, m := range ms {
		m.readCPU(&m.cpu1)
	}
	for _, m := range ms {
		m.readAllocs(ctx, &m.mem1)
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	for i, m := range ms {
		m.perRequest(&runs[i])
	}
	return runs, nil
}

// meter holds one process's CPU time and allocation totals at the start
// and the end of a run.
type meter struct {
	p          *caddyProc
	cpu0, cpu1 time.Duration
	mem0, mem1 allocCounts
	// cpuErr and memErr are the first error reading each; a run whose
	// reads failed has no CPU time or allocations (Linux only, admin
	// API up).
	cpuErr, memErr error
}

// readCPU reads the process's CPU time into at.
func (m *meter) readCPU(at *time.Duration) {
	var err error
	*at, err = processCPU(m.p.cmd.Process.Pid)
	m.cpuErr = cmp.Or(m.cpuErr, err)
}

// readAllocs reads the process's allocation totals into at.
func (m *meter) readAllocs(ctx context.Context, at *allocCounts) {
	var err error
	*at, err = readAllocs(ctx, m.p)
	m.memErr = cmp.Or(m.memErr, err)
}

// perRequest adds to run the CPU time and allocations between the two
// reads, per request, where both reads succeeded.
func (m *meter) perRequest(run *overheadRun) {
	if run.Requests == 0 {
		return
	}
	if m.cpuErr == nil {
		cpu := m.cpu1 - m.cpu0
		run.CPUPerRequestUS = float64(cpu.Microseconds()) / float64(run.Requests)
		run.CPUSecondsPer10k = cpu.Seconds() * 10_000 / float64(run.Requests)
	}
	if m.memErr == nil {
		run.AllocBytesPerRequest = float64(m.mem1.TotalAlloc-m.mem0.TotalAlloc) / float64(run.Requests)
		run.AllocObjectsPerRequest = float64(m.mem1.Mallocs-m.mem0.Mallocs) / float64(run.Requests)
	}
}

// allocCounts are the Go allocator's running totals of a process, from
// its memstats.
type allocCounts struct {
	Mallocs    uint64 // objects allocated
	TotalAlloc uint64 // bytes allocated
}

// readAllocs reads p's allocation totals from its admin API's /debug/vars
// (expvar's memstats).
func readAllocs(ctx context.Context, p *caddyProc) (allocCounts, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.adminURL()+"/debug/vars", nil)
	if err != nil {
		return allocCounts{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return allocCounts{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return allocCounts{}, fmt.Errorf("%s/debug/vars: status %d", p.adminURL(), resp.StatusCode)
	}
	var vars struct {
		MemStats *allocCounts `json:"memstats"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&vars); err != nil {
		return allocCounts{}, fmt.Errorf("%s/debug/vars: %w", p.adminURL(), err)
	}
	if vars.MemStats == nil {
		return allocCounts{}, fmt.Errorf("%s/debug/vars: no memstats", p.adminURL())
	}
	return *vars.MemStats, nil
}

// allocExcess returns the medians of the pairs' differences in objects
// and bytes allocated per request, B's less A's.
func (o *OverheadResult) allocExcess() (objects, bytes float64) {
	var os, bs []float64
	for _, p := range o.Pairs {
		if p.AllocObjectsRatio > 0 {
			os = append(os, p.B.AllocObjectsPerRequest-p.A.AllocObjectsPerRequest)
			bs = append(bs, p.B.AllocBytesPerRequest-p.A.AllocBytesPerRequest)
		}
	}
	return median(os), median(bs)
}

// median returns the median of xs (the mean of the middle two for an
// even count), 0 for none.
func median(xs []float64) float64 {
	return quantile(xs, 0.5)
}

// quartiles returns the first and third quartiles of xs.
func quartiles(xs []float64) [2]float64 {
	return [2]float64{quantile(xs, 0.25), quantile(xs, 0.75)}
}

// quantile returns the q-quantile of xs, interpolating linearly between
// the closest ranks; 0 for none.
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	pos := q * float64(len(s)-1)
	i := int(pos)
	if i+1 >= len(s) {
		return s[len(s)-1]
	}
	return s[i] + (s[i+1]-s[i])*(pos-float64(i))
}

// safeDiv returns a/b, or 0 when b is 0 (a run that measured nothing).
func safeDiv(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// String describes the result in one line.
func (o *OverheadResult) String() string {
	head := fmt.Sprintf("overhead (variant %s, %s load, %s schedule; B %s over A %s)", o.Settings.Variant, o.Settings.Load, o.Settings.Schedule, o.Settings.B, o.Settings.A)
	if o.Error != "" {
		return head + ": " + o.Error
	}
	return fmt.Sprintf("%s: median throughput ratio %.3f (middle half %.3f–%.3f), median p99 ratio %.3f (%.3f–%.3f), median CPU-per-request ratio %.3f, median allocation ratios per request %.3f (bytes) and %.3f (objects) over %d pairs",
		head, o.MedianThroughputRatio, o.ThroughputQuartiles[0], o.ThroughputQuartiles[1], o.MedianP99Ratio, o.P99Quartiles[0], o.P99Quartiles[1], o.MedianCPURatio,
		o.MedianAllocBytesRatio, o.MedianAllocObjectsRatio, len(o.Pairs))
}
