package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"sort"
	"time"

	"github.com/bifrost-proxy/bifrost/bench/loadgen"
)

// overheadSettings describes the happy-path comparison.
type overheadSettings struct {
	Pairs    int           `json:"pairs"`
	Duration time.Duration `json:"duration"`
	Warmup   time.Duration `json:"warmup"`
	Clients  int           `json:"clients"`
	// Policy is Bifrost's lb_policy; "" is its default.
	Policy string `json:"bifrost_policy,omitempty"`
}

// overheadRun is one closed-loop run against one proxy.
type overheadRun struct {
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

// overheadPair is a run of plain reverse_proxy (A) and one of Bifrost (B),
// back to back, and B's ratios to A.
type overheadPair struct {
	// BifrostFirst is set when B ran before A: pairs alternate the
	// order, so that whatever one run leaves behind (garbage to collect,
	// warm caches) weighs on both proxies alike.
	BifrostFirst    bool        `json:"bifrost_first,omitempty"`
	Plain           overheadRun `json:"plain"`
	Bifrost         overheadRun `json:"bifrost"`
	ThroughputRatio float64     `json:"throughput_ratio"`
	P99Ratio        float64     `json:"p99_ratio"`
	CPURatio        float64     `json:"cpu_ratio,omitempty"`
	// AllocBytesRatio and AllocObjectsRatio are B's bytes and objects
	// allocated per request over A's.
	AllocBytesRatio   float64 `json:"alloc_bytes_ratio,omitempty"`
	AllocObjectsRatio float64 `json:"alloc_objects_ratio,omitempty"`
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
	// MedianCPURatio is the median of Bifrost's CPU time per request over
	// plain's: the proxy's own cost, which the throughput ratio
	// understates because the load generator and the backends share the
	// CPUs.
	MedianCPURatio float64 `json:"median_cpu_ratio,omitempty"`
	// MedianAllocBytesRatio and MedianAllocObjectsRatio are the medians
	// of the pairs' allocation ratios (bytes and objects per request).
	MedianAllocBytesRatio   float64 `json:"median_alloc_bytes_ratio,omitempty"`
	MedianAllocObjectsRatio float64 `json:"median_alloc_objects_ratio,omitempty"`
	Error                   string  `json:"error,omitempty"`
}

// runOverhead compares Bifrost (defaults) with plain reverse_proxy in
// front of the same three healthy backends: both Caddy processes run side
// by side and take turns, A B B A A B ..., so that drift in the machine's
// load hits both alike, and neither always runs second.
func runOverhead(ctx context.Context, e *env, s overheadSettings) *OverheadResult {
	out := &OverheadResult{Settings: s}
	backends, err := startBackends(backendCount, -1)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	defer closeBackends(backends)
	plain, err := e.startProxy(ctx, filepath.Join(e.tmp, "overhead", "plain"), plainContender, staticUpstreams(addrs(backends)...), false)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	defer plain.stop()
	bif, err := e.startProxy(ctx, filepath.Join(e.tmp, "overhead", "bifrost"), overheadBifrost(s.Policy), staticUpstreams(addrs(backends)...), false)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	defer bif.stop()

	tr := loadgen.NewTransport()
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	for _, p := range []*caddyProc{plain, bif} {
		if _, err := closedLoop(ctx, client, p, s.Clients, s.Warmup); err != nil {
			out.Error = err.Error()
			return out
		}
	}
	for i := range s.Pairs {
		first, second := plain, bif
		if i%2 == 1 {
			first, second = bif, plain
		}
		r1, err := closedLoop(ctx, client, first, s.Clients, s.Duration)
		if err != nil {
			out.Error = err.Error()
			return out
		}
		r2, err := closedLoop(ctx, client, second, s.Clients, s.Duration)
		if err != nil {
			out.Error = err.Error()
			return out
		}
		a, b := r1, r2
		if i%2 == 1 {
			a, b = r2, r1
		}
		pair := overheadPair{BifrostFirst: i%2 == 1, Plain: a, Bifrost: b, ThroughputRatio: safeDiv(b.Throughput, a.Throughput), P99Ratio: safeDiv(b.P99MS, a.P99MS), CPURatio: safeDiv(b.CPUPerRequestUS, a.CPUPerRequestUS),
			AllocBytesRatio: safeDiv(b.AllocBytesPerRequest, a.AllocBytesPerRequest), AllocObjectsRatio: safeDiv(b.AllocObjectsPerRequest, a.AllocObjectsPerRequest)}
		out.Pairs = append(out.Pairs, pair)
		e.log("overhead pair %d/%d: plain %.0f req/s p99 %.2fms %.3fs CPU/10k req %.0f B %.1f allocs/req, bifrost %.0f req/s p99 %.2fms %.3fs CPU/10k req %.0f B %.1f allocs/req: ratio %.3f, p99 ratio %.3f, CPU ratio %.3f, allocs ratio %.3f",
			i+1, s.Pairs, a.Throughput, a.P99MS, a.CPUSecondsPer10k, a.AllocBytesPerRequest, a.AllocObjectsPerRequest,
			b.Throughput, b.P99MS, b.CPUSecondsPer10k, b.AllocBytesPerRequest, b.AllocObjectsPerRequest,
			pair.ThroughputRatio, pair.P99Ratio, pair.CPURatio, pair.AllocObjectsRatio)
	}
	var tps, p99s, cpus, bytes, objects []float64
	for _, p := range out.Pairs {
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
	out.MedianThroughputRatio, out.MedianP99Ratio, out.MedianCPURatio = median(tps), median(p99s), median(cpus)
	out.MedianAllocBytesRatio, out.MedianAllocObjectsRatio = median(bytes), median(objects)
	out.ThroughputQuartiles, out.P99Quartiles = quartiles(tps), quartiles(p99s)
	return out
}

// closedLoop runs clients for d against p and summarizes the run.
func closedLoop(ctx context.Context, client *http.Client, p *caddyProc, clients int, d time.Duration) (overheadRun, error) {
	mem0, memErr := readAllocs(ctx, p)
	cpu0, cpuErr := processCPU(p.cmd.Process.Pid)
	res, err := loadgen.Run(ctx, loadgen.Config{URL: p.proxyURL(), Clients: clients, Duration: d, Client: client, Timeout: 5 * time.Second, IDPrefix: "happy"})
	if err != nil {
		return overheadRun{}, err
	}
	cpu1, err := processCPU(p.cmd.Process.Pid)
	if cpuErr == nil {
		cpuErr = err
	}
	mem1, err := readAllocs(ctx, p)
	if memErr == nil {
		memErr = err
	}
	if ctx.Err() != nil {
		return overheadRun{}, ctx.Err()
	}
	s := loadgen.Summarize(res.Records, time.Time{}, time.Time{})
	run := overheadRun{
		Throughput: float64(s.Requests-s.Failures) / res.End.Sub(res.Start).Seconds(),
		P50MS:      ms(s.P50),
		P99MS:      ms(s.P99),
		Requests:   s.Requests,
		Failures:   s.Failures,
	}
	if cpuErr == nil && s.Requests > 0 {
		run.CPUPerRequestUS = float64((cpu1 - cpu0).Microseconds()) / float64(s.Requests)
		run.CPUSecondsPer10k = (cpu1 - cpu0).Seconds() * 10_000 / float64(s.Requests)
	}
	if memErr == nil && s.Requests > 0 {
		run.AllocBytesPerRequest = float64(mem1.TotalAlloc-mem0.TotalAlloc) / float64(s.Requests)
		run.AllocObjectsPerRequest = float64(mem1.Mallocs-mem0.Mallocs) / float64(s.Requests)
	}
	return run, nil
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
// and bytes allocated per request, Bifrost's less plain's.
func (o *OverheadResult) allocExcess() (objects, bytes float64) {
	var os, bs []float64
	for _, p := range o.Pairs {
		if p.AllocObjectsRatio > 0 {
			os = append(os, p.Bifrost.AllocObjectsPerRequest-p.Plain.AllocObjectsPerRequest)
			bs = append(bs, p.Bifrost.AllocBytesPerRequest-p.Plain.AllocBytesPerRequest)
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

func safeDiv(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// String describes the result in one line.
func (o *OverheadResult) String() string {
	if o.Error != "" {
		return "overhead: " + o.Error
	}
	return fmt.Sprintf("overhead: median throughput ratio %.3f (middle half %.3f–%.3f), median p99 ratio %.3f (%.3f–%.3f), median CPU-per-request ratio %.3f, median allocation ratios per request %.3f (bytes) and %.3f (objects) over %d pairs",
		o.MedianThroughputRatio, o.ThroughputQuartiles[0], o.ThroughputQuartiles[1], o.MedianP99Ratio, o.P99Quartiles[0], o.P99Quartiles[1], o.MedianCPURatio,
		o.MedianAllocBytesRatio, o.MedianAllocObjectsRatio, len(o.Pairs))
}
