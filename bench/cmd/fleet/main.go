// Command fleet measures what sharing verdicts through Redis buys a fleet
// of Bifrost instances: three Caddy processes of the built binary share
// one redis-server and three backends, take open-loop load spread over
// the three, and one backend fails (refused, 502, hang, 429 with
// Retry-After) while one instance is restarted mid-fault. The same fault
// is then run against a single instance, without a fleet, taking the
// same total load. It reports:
//
//   - propagation: from the first instance taking the backend out to each
//     other instance seeing it out (polled on the admin API every 20 ms),
//     and to that instance's last request reaching the backend;
//   - requests that reach the failing backend, fleet-wide and single;
//   - for the hang, how long the requests of other instances that reached
//     the hung backend after the first isolation waited there;
//   - requests the restarted instance sends to the backend in its first
//     10 s;
//   - Redis operations per 1000 proxied requests in the happy path (INFO
//     commandstats), at two rates.
//
// It uses only 127.0.0.1 and kills every process it started on exit.
//
//	go run ./bench/cmd/fleet [-rate 300] [-run 18s] [-faults refused,502,hang,429]
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bifrost-proxy/bifrost/bench/faultserver"
	"github.com/bifrost-proxy/bifrost/bench/loadgen"
	"github.com/bifrost-proxy/bifrost/bench/redisserver"
	"github.com/bifrost-proxy/bifrost/pool"
)

// options are the command's flags.
type options struct {
	caddy        string
	redis        string
	rate         float64
	run          time.Duration
	faultAt      time.Duration
	restartAfter time.Duration
	happy        time.Duration
	faults       []string
	out          string
	keep         bool
}

// faults are the faults of the failing backend, by name.
var faults = map[string]faultserver.Behavior{
	"refused": faultserver.Refusing(),
	"502":     faultserver.Answering(http.StatusBadGateway, 0),
	"hang":    {Mode: faultserver.Hang},
	"429":     faultserver.Answering(http.StatusTooManyRequests, 30*time.Second),
}

// poolName names the pool in every instance.
const poolName = "bench"

func main() {
	var o options
	var faultList string
	flag.StringVar(&o.caddy, "caddy", "", "Caddy binary with Bifrost (default: build ./cmd/caddy)")
	flag.StringVar(&o.redis, "redis", "redis-server", "redis-server binary")
	flag.Float64Var(&o.rate, "rate", 300, "total requests per second, spread over the instances")
	flag.DurationVar(&o.run, "run", 18*time.Second, "length of each fault's run")
	flag.DurationVar(&o.faultAt, "fault-at", 2*time.Second, "when the backend starts failing in a run")
	flag.DurationVar(&o.restartAfter, "restart-after", 5*time.Second, "when the third instance is restarted, after the fault starts")
	flag.DurationVar(&o.happy, "happy", 8*time.Second, "length of each happy-path run")
	flag.StringVar(&faultList, "faults", "refused,502,hang,429", "faults to run, comma-separated")
	flag.StringVar(&o.out, "out", "", "also write the report (Markdown) to this file")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (Caddyfiles, logs)")
	flag.Parse()
	for _, f := range strings.Split(faultList, ",") {
		if _, ok := faults[f]; !ok {
			fmt.Fprintf(os.Stderr, "fleet: unknown fault %q (want refused, 502, hang or 429)\n", f)
			os.Exit(2)
		}
		o.faults = append(o.faults, f)
	}
	if o.faultAt+o.restartAfter+10*time.Second > o.run {
		fmt.Fprintln(os.Stderr, "fleet: -run must leave 10 s after -fault-at + -restart-after")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "fleet:", err)
		os.Exit(1)
	}
}

// procs are the processes started, killed on exit.
var procs struct {
	mu  sync.Mutex
	set map[*exec.Cmd]bool
}

func track(c *exec.Cmd, on bool) {
	procs.mu.Lock()
	defer procs.mu.Unlock()
	if procs.set == nil {
		procs.set = map[*exec.Cmd]bool{}
	}
	if on {
		procs.set[c] = true
	} else {
		delete(procs.set, c)
	}
}

func killAll() {
	procs.mu.Lock()
	defer procs.mu.Unlock()
	for c := range procs.set {
		_ = c.Process.Kill()
		_ = c.Wait()
	}
	procs.set = nil
}

// run runs every fault, fleet and single, then the happy path, and
// prints the report.
func run(ctx context.Context, o options) error {
	defer killAll()
	dir, err := os.MkdirTemp("", "bifrost-fleet-bench-")
	if err != nil {
		return err
	}
	if o.keep {
		fmt.Fprintln(os.Stderr, "work directory:", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	bin := o.caddy
	if bin == "" {
		bin = filepath.Join(dir, "caddy")
		fmt.Fprintln(os.Stderr, "building ./cmd/caddy")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/caddy")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("building caddy: %v\n%s", err, out)
		}
	}
	srv, err := redisserver.Start(ctx, o.redis, filepath.Join(dir, "redis"))
	if err != nil {
		return err
	}
	track(srv.Cmd, true)
	rd := &redis{addr: srv.Addr}
	var results []faultResult
	for _, f := range o.faults {
		fmt.Fprintf(os.Stderr, "fault %s: fleet of 3\n", f)
		fr, err := runFleet(ctx, o, bin, dir, rd, f)
		if err != nil {
			return fmt.Errorf("fault %s, fleet: %w", f, err)
		}
		fmt.Fprintf(os.Stderr, "fault %s: single instance\n", f)
		if fr.singleReached, err = runSingle(ctx, o, bin, dir, f); err != nil {
			return fmt.Errorf("fault %s, single: %w", f, err)
		}
		results = append(results, fr)
	}
	var happy []happyResult
	for _, rate := range []float64{o.rate, 2 * o.rate} {
		fmt.Fprintf(os.Stderr, "happy path at %.0f/s\n", rate)
		h, err := runHappy(ctx, o, bin, dir, rd, rate)
		if err != nil {
			return fmt.Errorf("happy path: %w", err)
		}
		happy = append(happy, h)
	}
	report := render(o, results, happy)
	fmt.Print(report)
	if o.out != "" {
		return os.WriteFile(o.out, []byte(report), 0o644)
	}
	return nil
}

// redis is the redis-server of the run.
type redis struct {
	addr string
}

// do sends one command to Redis and returns its answer, read whole (the
// few commands the bench needs, without a client library).
func (r *redis) do(args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", r.addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(c, b.String()); err != nil {
		return "", err
	}
	rd := bufio.NewReader(c)
	line, err := rd.ReadString('\n')
	if err != nil {
		return "", err
	}
	switch line[0] {
	case '+', ':':
		return strings.TrimSpace(line[1:]), nil
	case '-':
		return "", errors.New(strings.TrimSpace(line[1:]))
	case '$':
		n, err := strconv.Atoi(strings.TrimSpace(line[1:]))
		if err != nil || n < 0 {
			return "", err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(rd, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return "", fmt.Errorf("unexpected answer %q", line)
}

// calls returns the calls counted by INFO commandstats, but the bench's
// own (INFO, CONFIG, FLUSHALL).
func (r *redis) calls() (int64, map[string]int64, error) {
	info, err := r.do("INFO", "commandstats")
	if err != nil {
		return 0, nil, err
	}
	by := map[string]int64{}
	var total int64
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		name = strings.TrimPrefix(name, "cmdstat_")
		if name == "info" || strings.HasPrefix(name, "config") || name == "flushall" {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				by[name] += n
				total += n
			}
		}
	}
	return total, by, nil
}

// freePort returns a port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// instance is one Caddy process.
type instance struct {
	name        string
	bin, dir    string
	conf        string
	admin, site int
	cmd         *exec.Cmd
}

// newInstance writes the instance's Caddyfile: Bifrost with health
// checks every second on /health (as the chaos suite's Bifrost), a first
// isolation of a minute (instead of 10 s: the backend stays isolated
// through the restarted instance's first 10 s), storage in dir, and a
// fleet on redisAddr unless it is empty.
func newInstance(name, bin, dir, redisAddr string, upstreams []string) (*instance, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	admin, err := freePort()
	if err != nil {
		return nil, err
	}
	site, err := freePort()
	if err != nil {
		return nil, err
	}
	in := &instance{name: name, bin: bin, dir: dir, conf: filepath.Join(dir, "Caddyfile"), admin: admin, site: site}
	fleet := ""
	if redisAddr != "" {
		fleet = fmt.Sprintf("\tbifrost {\n\t\tfleet redis://%s/0 {\n\t\t\tsecret bench-secret\n\t\t\tinstance %s\n\t\t}\n\t}\n", redisAddr, name)
	}
	cfg := fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\thttp_port %d\n\tauto_https off\n\tstorage file_system %s\n%s}\n"+
		":%d {\n\tbifrost %s {\n\t\tname %s\n\t\thealth {\n\t\t\turi /health\n\t\t\tinterval 1s\n\t\t}\n"+
		"\t\tisolation {\n\t\t\tbase_time 1m\n\t\t}\n\t}\n}\n",
		admin, site, filepath.Join(dir, "storage"), fleet, site, strings.Join(upstreams, " "), poolName)
	return in, os.WriteFile(in.conf, []byte(cfg), 0o600)
}

// start runs the instance and waits until its admin API answers.
func (in *instance) start(ctx context.Context) error {
	logf, err := os.OpenFile(filepath.Join(in.dir, "caddy.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	in.cmd = exec.Command(in.bin, "run", "--config", in.conf, "--adapter", "caddyfile")
	in.cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+in.dir, "XDG_DATA_HOME="+in.dir, "HOME="+in.dir)
	in.cmd.Stdout, in.cmd.Stderr = logf, logf
	setDeathSignal(in.cmd)
	if err := in.cmd.Start(); err != nil {
		return err
	}
	track(in.cmd, true)
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/bifrost/workers", in.admin))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s did not start within 20s (log in %s)", in.name, in.dir)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop ends the instance with SIGTERM (it writes its state) and waits.
func (in *instance) stop() {
	if in.cmd == nil {
		return
	}
	_ = in.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = in.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = in.cmd.Process.Kill()
		<-done
	}
	track(in.cmd, false)
	in.cmd = nil
}

// out reports whether the instance has the worker out of rotation
// (isolated or throttled).
func (in *instance) out(upstream string) bool {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/bifrost/workers/%s", in.admin, pool.WorkerID(poolName, upstream)))
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var v pool.WorkerView
	if json.NewDecoder(resp.Body).Decode(&v) != nil {
		return false
	}
	return v.Isolated || v.Throttled
}

// addDelays adds the instance's histogram of fleet propagation delays
// (from its admin API's /metrics) to into.
func (in *instance) addDelays(into map[float64]float64) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", in.admin))
	if err != nil {
		return
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, `caddy_bifrost_fleet_propagation_seconds_bucket{le="`)
		if !ok {
			continue
		}
		le, val, ok := strings.Cut(rest, `"} `)
		if !ok {
			continue
		}
		bound, err1 := strconv.ParseFloat(le, 64)
		n, err2 := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err1 == nil && err2 == nil {
			into[bound] += n
		}
	}
}

// bucketQuantile returns the upper bound of the bucket that holds the
// q-quantile of a cumulative histogram, and the count.
func bucketQuantile(h map[float64]float64, q float64) (float64, float64) {
	bounds := make([]float64, 0, len(h))
	for b := range h {
		bounds = append(bounds, b)
	}
	sort.Float64s(bounds)
	if len(bounds) == 0 {
		return 0, 0
	}
	total := h[bounds[len(bounds)-1]]
	if total == 0 {
		return 0, 0
	}
	for _, b := range bounds {
		if h[b] >= q*total {
			return b, total
		}
	}
	return bounds[len(bounds)-1], total
}

// backends starts the three backends; the first is the one that fails.
func backends() ([]*faultserver.Server, []string, error) {
	var bs []*faultserver.Server
	var addrs []string
	for i := range 3 {
		b, err := faultserver.Start(faultserver.Options{Name: fmt.Sprintf("b%d", i)})
		if err != nil {
			return nil, nil, err
		}
		bs = append(bs, b)
		addrs = append(addrs, b.Addr())
	}
	return bs, addrs, nil
}

// faultResult is what one fault's runs measured.
type faultResult struct {
	fault string
	// first is the instance that took the backend out first.
	first string
	// seen is, per other instance, the time from the first one taking
	// the backend out to it seeing the backend out (-1: never).
	seen map[string]time.Duration
	// lastSent is, per other instance, the time from the first one
	// taking the backend out to its last request reaching the backend
	// (0 when none came after).
	lastSent map[string]time.Duration
	// reached counts requests reaching the backend from the fault on,
	// fleet-wide; singleReached the same for the single instance.
	reached, singleReached int
	// hangWaits are how long the requests of other instances that reached
	// the backend after the first isolation waited there (hang only).
	hangWaits []time.Duration
	// restartedSent counts requests the restarted instance sent to the
	// backend in its first 10 s; restartedOut says whether it had the
	// backend out at its first look.
	restartedSent int
	restartedOut  bool
	// sent and failed count client requests, the restarted instance's
	// while it was down left out.
	sent, failed int
	// delays is the instances' histogram of propagation delays
	// (caddy_bifrost_fleet_propagation_seconds): upper bound -> count,
	// cumulative, summed over the instances.
	delays map[float64]float64
}

// runFleet runs one fault on a fleet of three instances.
func runFleet(ctx context.Context, o options, bin, dir string, rd *redis, fault string) (faultResult, error) {
	fr := faultResult{fault: fault, seen: map[string]time.Duration{}, lastSent: map[string]time.Duration{}}
	if _, err := rd.do("FLUSHALL"); err != nil {
		return fr, err
	}
	bs, addrs, err := backends()
	if err != nil {
		return fr, err
	}
	defer func() {
		for _, b := range bs {
			_ = b.Close()
		}
	}()
	var ins []*instance
	for i := 1; i <= 3; i++ {
		in, err := newInstance(fmt.Sprintf("i%d", i), bin, filepath.Join(dir, "fleet-"+fault, fmt.Sprint(i)), rd.addr, addrs)
		if err != nil {
			return fr, err
		}
		if err := in.start(ctx); err != nil {
			return fr, err
		}
		defer in.stop()
		ins = append(ins, in)
	}
	start := time.Now()
	loads := make([]*loadgen.Result, len(ins))
	var wg sync.WaitGroup
	for i, in := range ins {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loads[i], _ = loadgen.Run(ctx, loadgen.Config{
				URL: fmt.Sprintf("http://127.0.0.1:%d/", in.site), Rate: o.rate / float64(len(ins)),
				Duration: o.run, Timeout: 5 * time.Second, IDPrefix: in.name,
			})
		}()
	}
	// the state of the backend on every instance, polled
	outAt := map[string]time.Time{}
	var outMu sync.Mutex
	var restarting atomic.Bool // i3 is no longer polled once its restart begins
	polling, polled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(polled)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-polling:
				return
			case <-tick.C:
			}
			for _, in := range ins {
				if in == ins[2] && restarting.Load() {
					continue
				}
				outMu.Lock()
				_, done := outAt[in.name]
				outMu.Unlock()
				if !done && in.out(addrs[0]) {
					outMu.Lock()
					outAt[in.name] = time.Now()
					outMu.Unlock()
				}
			}
		}
	}()
	sleepUntil(ctx, start.Add(o.faultAt))
	faultStart := time.Now()
	if err := bs[0].Set(faults[fault]); err != nil {
		return fr, err
	}
	sleepUntil(ctx, faultStart.Add(o.restartAfter))
	i3 := ins[2]
	restarting.Store(true)
	down := time.Now()
	i3.stop()
	if err := i3.start(ctx); err != nil {
		return fr, err
	}
	up := time.Now()
	fr.restartedOut = i3.out(addrs[0])
	wg.Wait()
	close(polling)
	<-polled
	_ = bs[0].Set(faultserver.Healthy()) // wakes hung requests
	fr.delays = map[float64]float64{}
	for _, in := range ins {
		in.addDelays(fr.delays)
	}

	// the first to take the backend out
	var first time.Time
	for name, at := range outAt {
		if first.IsZero() || at.Before(first) {
			first, fr.first = at, name
		}
	}
	for _, in := range ins {
		if in.name == fr.first {
			continue
		}
		if at, ok := outAt[in.name]; ok {
			fr.seen[in.name] = max(at.Sub(first), 0)
		} else if in != i3 {
			fr.seen[in.name] = -1
		}
	}
	for _, ev := range bs[0].Events() {
		if ev.Health || ev.Arrived.Before(faultStart) {
			continue
		}
		fr.reached++
		author, _, _ := strings.Cut(ev.ID, "-")
		if !first.IsZero() && author != fr.first && ev.Arrived.After(first) {
			if author != i3.name || ev.Arrived.Before(down) {
				fr.lastSent[author] = max(fr.lastSent[author], ev.Arrived.Sub(first))
			}
			if fault == "hang" {
				fr.hangWaits = append(fr.hangWaits, ev.Done.Sub(ev.Arrived))
			}
		}
		if author == i3.name && !ev.Arrived.Before(up) && ev.Arrived.Before(up.Add(10*time.Second)) {
			fr.restartedSent++
		}
	}
	for i, res := range loads {
		if res == nil {
			continue
		}
		for _, r := range res.Records {
			if ins[i] == i3 && !r.Intended.Before(down.Add(-time.Second)) && r.Intended.Before(up.Add(time.Second)) {
				continue
			}
			fr.sent++
			if r.Failed() {
				fr.failed++
			}
		}
	}
	return fr, nil
}

// runSingle runs one fault on a single instance without a fleet, taking
// the whole load, and returns the requests that reached the backend from
// the fault on.
func runSingle(ctx context.Context, o options, bin, dir, fault string) (int, error) {
	bs, addrs, err := backends()
	if err != nil {
		return 0, err
	}
	defer func() {
		for _, b := range bs {
			_ = b.Close()
		}
	}()
	in, err := newInstance("single", bin, filepath.Join(dir, "single-"+fault), "", addrs)
	if err != nil {
		return 0, err
	}
	if err := in.start(ctx); err != nil {
		return 0, err
	}
	defer in.stop()
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = loadgen.Run(ctx, loadgen.Config{URL: fmt.Sprintf("http://127.0.0.1:%d/", in.site), Rate: o.rate, Duration: o.run, Timeout: 5 * time.Second})
	}()
	sleepUntil(ctx, start.Add(o.faultAt))
	faultStart := time.Now()
	if err := bs[0].Set(faults[fault]); err != nil {
		return 0, err
	}
	<-done
	_ = bs[0].Set(faultserver.Healthy())
	n := 0
	for _, ev := range bs[0].Events() {
		if !ev.Health && !ev.Arrived.Before(faultStart) {
			n++
		}
	}
	return n, nil
}

// happyResult is one happy-path run.
type happyResult struct {
	rate     float64
	seconds  float64
	proxied  int64
	ops      int64
	byOp     map[string]int64
	failures int
}

// runHappy runs the fleet with healthy backends at rate and counts the
// Redis operations.
func runHappy(ctx context.Context, o options, bin, dir string, rd *redis, rate float64) (happyResult, error) {
	h := happyResult{rate: rate}
	if _, err := rd.do("FLUSHALL"); err != nil {
		return h, err
	}
	bs, addrs, err := backends()
	if err != nil {
		return h, err
	}
	defer func() {
		for _, b := range bs {
			_ = b.Close()
		}
	}()
	var ins []*instance
	for i := 1; i <= 3; i++ {
		in, err := newInstance(fmt.Sprintf("i%d", i), bin, filepath.Join(dir, fmt.Sprintf("happy-%.0f", rate), fmt.Sprint(i)), rd.addr, addrs)
		if err != nil {
			return h, err
		}
		if err := in.start(ctx); err != nil {
			return h, err
		}
		defer in.stop()
		ins = append(ins, in)
	}
	time.Sleep(3 * time.Second) // connected, first exchanges done
	if _, err := rd.do("CONFIG", "RESETSTAT"); err != nil {
		return h, err
	}
	var before int64
	for _, b := range bs {
		before += b.Stats().Requests
	}
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, in := range ins {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, _ := loadgen.Run(ctx, loadgen.Config{URL: fmt.Sprintf("http://127.0.0.1:%d/", in.site), Rate: rate / 3, Duration: o.happy, IDPrefix: in.name})
			if res == nil {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for _, r := range res.Records {
				if r.Failed() {
					h.failures++
				}
			}
		}()
	}
	wg.Wait()
	h.seconds = time.Since(start).Seconds()
	h.ops, h.byOp, err = rd.calls()
	if err != nil {
		return h, err
	}
	for _, b := range bs {
		h.proxied += b.Stats().Requests
	}
	h.proxied -= before
	return h, nil
}

// sleepUntil sleeps until t or ctx's end.
func sleepUntil(ctx context.Context, t time.Time) {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
	case <-timer.C:
	}
}

// quantile returns the q-quantile of ds (nearest rank), 0 when empty.
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*q+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// ms formats a duration in milliseconds.
func ms(d time.Duration) string { return fmt.Sprintf("%d ms", d.Milliseconds()) }

// render writes the report in Markdown.
func render(o options, rs []faultResult, hs []happyResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Fleet of 3 instances, one redis-server, 3 backends (b0 fails); open loop %.0f req/s in all, spread evenly; "+
		"fault at %s of %s runs; i3 restarted %s into the fault.\n\n", o.rate, o.faultAt, o.run, o.restartAfter)
	b.WriteString("| fault | first out | others see it out | others' last request to b0 after | b0 requests, fleet | b0 requests, single | ratio | restarted i3: out at start, requests to b0 in first 10 s | client failures |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|\n")
	var seen, last, waits []time.Duration
	for _, r := range rs {
		var sv, lv []string
		for _, name := range sortedKeys(r.seen) {
			d := r.seen[name]
			if d < 0 {
				sv = append(sv, name+": never")
				continue
			}
			sv = append(sv, name+": "+ms(d))
			seen = append(seen, d)
		}
		for _, name := range sortedKeys(r.lastSent) {
			lv = append(lv, name+": "+ms(r.lastSent[name]))
			last = append(last, r.lastSent[name])
		}
		waits = append(waits, r.hangWaits...)
		ratio := "-"
		if r.singleReached > 0 {
			ratio = fmt.Sprintf("%.2f×", float64(r.reached)/float64(r.singleReached))
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %d | %d | %s | %v, %d | %d of %d |\n", r.fault, orNone(r.first),
			orNone(strings.Join(sv, ", ")), orNone(strings.Join(lv, ", ")), r.reached, r.singleReached, ratio,
			r.restartedOut, r.restartedSent, r.failed, r.sent)
	}
	fmt.Fprintf(&b, "\nPropagation (first instance out → another sees it out, polled every 20 ms: 0 is within one poll), %d samples: p99 %s, max %s.\n", len(seen), ms(quantile(seen, .99)), ms(quantile(seen, 1)))
	all := map[float64]float64{}
	for _, r := range rs {
		for k, v := range r.delays {
			all[k] += v
		}
	}
	p99, n := bucketQuantile(all, .99)
	top, _ := bucketQuantile(all, 1)
	fmt.Fprintf(&b, "Propagation by the instances' own histogram (caddy_bifrost_fleet_propagation_seconds: an entry's issue to its arrival elsewhere), %.0f entries: p99 ≤ %g s, max ≤ %g s (bucket bounds).\n", n, p99, top)
	fmt.Fprintf(&b, "Last request of another instance reaching b0 after the first isolation, %d samples: p99 %s, max %s.\n", len(last), ms(quantile(last, .99)), ms(quantile(last, 1)))
	if slices.Contains(o.faults, "hang") {
		fmt.Fprintf(&b, "Hang: %d requests of other instances reached the hung b0 after the first isolation; longest wait there %s.\n", len(waits), ms(quantile(waits, 1)))
	}
	b.WriteString("\n| happy path | proxied requests | Redis ops | ops/s | ops per 1000 requests | client failures |\n|---|---|---|---|---|---|\n")
	for _, h := range hs {
		per := 0.0
		if h.proxied > 0 {
			per = float64(h.ops) * 1000 / float64(h.proxied)
		}
		fmt.Fprintf(&b, "| %.0f req/s, %.0f s | %d | %d (%s) | %.1f | %.2f | %d |\n", h.rate, h.seconds, h.proxied, h.ops, opsList(h.byOp), float64(h.ops)/h.seconds, per, h.failures)
	}
	return b.String()
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func opsList(m map[string]int64) string {
	var parts []string
	for _, k := range sortedKeys(m) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
