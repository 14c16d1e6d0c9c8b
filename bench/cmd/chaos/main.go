// Command chaos is Bifrost's chaos and benchmark suite. It starts fault
// injecting backends on 127.0.0.1, runs Caddy (built once from ./cmd/caddy,
// or given with -caddy) in front of them with each contender's Caddyfile,
// drives load through it while one backend (or all) misbehaves for a
// window, and compares in one run Bifrost, plain reverse_proxy and
// reverse_proxy tuned the way a competent operator would (and, where a
// backend is slow or hangs, Bifrost with hedged requests). It then
// compares Bifrost with plain reverse_proxy on the happy path (or, with
// -overhead-variant, Bifrost with hedging, both with health checks,
// Bifrost in a fleet against Bifrost alone, or two builds of Bifrost
// against each other), and writes the results as JSON and Markdown.
//
// Run it from the repository:
//
//	go run ./bench/cmd/chaos            # everything (about 15 minutes)
//	go run ./bench/cmd/chaos -quick     # shorter windows, for a look
//	go run ./bench/cmd/chaos -smoke     # CI: one scenario, Bifrost only; exits 1 on a failure
//	go run ./bench/cmd/chaos -only-overhead -overhead-variant fleet -overhead-load wrk
//	go run ./bench/cmd/chaos -only-overhead -clients 32 -overhead-schedule together
//	go run ./bench/cmd/chaos -only-overhead -overhead-variant builds -caddy /tmp/caddy-a -caddy-b /tmp/caddy-b
//
// See bench/BENCHMARKS.md for what each number means.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// options are the command-line flags.
type options struct {
	caddy       string
	quick       bool
	smoke       bool
	scenarios   string
	contenders  string
	tunedPolicy string
	timing      timing
	load        load
	poll        time.Duration
	overhead    overheadSettings
	noOverhead  bool
	// onlyOverhead skips the scenarios: the happy path alone.
	onlyOverhead bool
	out          string
	keep         bool
}

// preset holds the defaults that -quick and -smoke change.
type preset struct {
	timing     timing
	pairs      int
	duration   time.Duration
	warmup     time.Duration
	scenarios  string
	contenders string
	noOverhead bool
	out        string
	mode       string
}

var presets = map[string]preset{
	"full": {
		timing:   timing{Run: 22 * time.Second, FaultAt: 6 * time.Second, Window: 10 * time.Second, Outage: 5 * time.Second, Settle: 1500 * time.Millisecond},
		pairs:    19,
		duration: 3 * time.Second,
		warmup:   2 * time.Second,
		out:      "bench/results/latest",
		mode:     "full",
	},
	"quick": {
		timing:   timing{Run: 10 * time.Second, FaultAt: 2 * time.Second, Window: 5 * time.Second, Outage: 3 * time.Second, Settle: 1500 * time.Millisecond},
		pairs:    5,
		duration: 2 * time.Second,
		warmup:   time.Second,
		out:      "bench/results/quick",
		mode:     "quick",
	},
	"smoke": {
		timing:     timing{Run: 6 * time.Second, FaultAt: 1500 * time.Millisecond, Window: 3 * time.Second, Outage: 3 * time.Second, Settle: 1500 * time.Millisecond},
		scenarios:  "502",
		contenders: "bifrost",
		noOverhead: true,
		out:        "bench/results/smoke",
		mode:       "smoke",
	},
}

func main() {
	os.Exit(run())
}

// run is main with an exit code, so that deferred cleanup runs.
func run() int {
	opts, mode, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	procs := newProcSet()
	defer procs.killAll()

	report, err := suite(ctx, procs, opts, mode)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		if ctx.Err() != nil {
			return 130
		}
		return 1
	}
	if opts.smoke {
		return smokeVerdict(report)
	}
	return 0
}

// parseFlags reads the flags; flags not given take the defaults of the
// preset (-quick, -smoke, or the full suite).
func parseFlags(args []string) (options, preset, error) {
	var o options
	fs := flag.NewFlagSet("chaos", flag.ContinueOnError)
	fs.StringVar(&o.caddy, "caddy", "", "Caddy `binary` with Bifrost; default: build ./cmd/caddy once into a temporary directory")
	fs.BoolVar(&o.quick, "quick", false, "short runs and windows, for a quick look")
	fs.BoolVar(&o.smoke, "smoke", false, "CI smoke: scenario 502 on Bifrost only for a few seconds; exit 1 on any GET failure or duplicate POST")
	fs.StringVar(&o.scenarios, "scenarios", "", "comma-separated `names` of the scenarios to run (default all: "+scenarioNames()+")")
	fs.StringVar(&o.contenders, "contenders", "", "comma-separated contenders: bifrost, hedge, defaults, leastconn, plain, tuned, or all (default all, but hedge only in "+strings.Join(hedgeContender.DefaultScenarios, " and ")+", defaults and leastconn only in "+strings.Join(defaultsContender.DefaultScenarios, " and ")+")")
	fs.StringVar(&o.tunedPolicy, "tuned-policy", "least_conn", "lb_policy of the tuned reverse_proxy (round_robin or least_conn)")
	fs.DurationVar(&o.timing.Run, "run", 0, "length of each scenario run (default 22s; -quick 10s; -smoke 6s)")
	fs.DurationVar(&o.timing.FaultAt, "fault-at", 0, "when the fault starts in each run (default 6s; -quick 2s)")
	fs.DurationVar(&o.timing.Window, "window", 0, "how long the fault lasts (default 10s; -quick 5s; -smoke 3s)")
	fs.DurationVar(&o.timing.Outage, "outage", 0, "how long all backends are down in all-down (default 5s; -quick 3s)")
	fs.DurationVar(&o.timing.Settle, "settle", 0, "pause between Caddy being ready and the load (default 1.5s)")
	fs.Float64Var(&o.load.Rate, "rate", 200, "open-loop request rate per second of each scenario run")
	fs.Float64Var(&o.load.POSTShare, "post-share", 0.1, "share of POST requests")
	fs.DurationVar(&o.load.Timeout, "timeout", 5*time.Second, "client timeout of each request")
	fs.DurationVar(&o.poll, "poll", 100*time.Millisecond, "how often Bifrost's admin API is polled")
	fs.IntVar(&o.overhead.Pairs, "pairs", 0, "happy path: number of A/B run pairs (default 19; -quick 5; at least 5)")
	fs.DurationVar(&o.overhead.Duration, "overhead-run", 0, "happy path: length of each run (default 3s; -quick 2s)")
	fs.IntVar(&o.overhead.Clients, "clients", 16, "happy path: closed-loop clients, or wrk's connections")
	fs.StringVar(&o.overhead.Policy, "overhead-policy", "", "happy path: Bifrost's lb_policy (default: its own default, bifrost_p2c)")
	fs.StringVar(&o.overhead.Variant, "overhead-variant", overheadVariants[0].Name, "happy path: what A and B are: "+
		"defaults (A reverse_proxy, B Bifrost's defaults), hedge (B with retry { hedge auto }), "+
		"health (both with active health checks on /health every 1s), fleet (A Bifrost's defaults, B the same in a fleet, on a redis-server from PATH that the suite starts), "+
		"builds (A and B Bifrost's defaults: with -caddy-b, two builds of it)")
	fs.StringVar(&o.overhead.CaddyB, "caddy-b", "", "happy path: Caddy `binary` of side B, to compare two builds (default: -caddy's, for both sides)")
	fs.StringVar(&o.overhead.Load, "overhead-load", loadClosed, "happy path: load generator: closed (loadgen's closed loop of -clients clients) or wrk (wrk -t2 -c<clients> -d<run> --latency, from PATH, -t1 with -overhead-schedule together; whole-second runs)")
	fs.StringVar(&o.overhead.Schedule, "overhead-schedule", scheduleAlternate, "happy path: alternate (A and B back to back, A B, B A, ...) or together (each pair one round in which A and B are loaded at the same time, each by its own load generator of -clients clients)")
	fs.BoolVar(&o.noOverhead, "no-overhead", false, "skip the happy-path comparison")
	fs.BoolVar(&o.onlyOverhead, "only-overhead", false, "run the happy-path comparison alone, no scenario (-scenarios and -contenders are ignored)")
	fs.StringVar(&o.out, "out", "", "results `path` without extension, relative to the repository (default bench/results/latest; -quick bench/results/quick; -smoke bench/results/smoke)")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory with every Caddyfile and log")
	if err := fs.Parse(args); err != nil {
		return o, preset{}, err
	}
	if fs.NArg() > 0 {
		return o, preset{}, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	// Caddy runs in a directory of its own, where a relative path to its
	// binary would not lead to it
	for _, bin := range []*string{&o.caddy, &o.overhead.CaddyB} {
		if *bin != "" {
			abs, err := filepath.Abs(*bin)
			if err != nil {
				return o, preset{}, err
			}
			*bin = abs
		}
	}
	name := "full"
	switch {
	case o.smoke && o.quick:
		return o, preset{}, fmt.Errorf("-smoke and -quick exclude each other")
	case o.onlyOverhead && (o.smoke || o.noOverhead):
		return o, preset{}, fmt.Errorf("-only-overhead excludes -smoke and -no-overhead (which skip the happy path)")
	case o.smoke:
		name = "smoke"
	case o.quick:
		name = "quick"
	}
	p := presets[name]
	applyPreset(&o, p)
	return o, p, validate(o)
}

// applyPreset fills in the flags left at zero from p.
func applyPreset(o *options, p preset) {
	setDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	setDur(&o.timing.Run, p.timing.Run)
	setDur(&o.timing.FaultAt, p.timing.FaultAt)
	setDur(&o.timing.Window, p.timing.Window)
	setDur(&o.timing.Outage, p.timing.Outage)
	setDur(&o.timing.Settle, p.timing.Settle)
	setDur(&o.overhead.Duration, p.duration)
	o.overhead.Warmup = p.warmup
	if o.overhead.Pairs == 0 {
		o.overhead.Pairs = p.pairs
	}
	if o.scenarios == "" {
		o.scenarios = p.scenarios
	}
	if o.contenders == "" {
		o.contenders = p.contenders
	}
	o.noOverhead = o.noOverhead || p.noOverhead
	if o.out == "" {
		o.out = p.out
	}
}

// validate checks that every run is bounded and the schedule fits.
func validate(o options) error {
	t := o.timing
	switch {
	case t.Run <= 0 || t.Run > 10*time.Minute:
		return fmt.Errorf("-run must be in (0, 10m]")
	case t.FaultAt <= 0 || t.Window <= 0 || t.Outage <= 0:
		return fmt.Errorf("-fault-at, -window and -outage must be positive")
	case t.FaultAt+max(t.Window, t.Outage) >= t.Run:
		return fmt.Errorf("the fault (-fault-at %s + %s) must end before the run (-run %s)", t.FaultAt, max(t.Window, t.Outage), t.Run)
	case o.load.Rate <= 0 || o.load.Rate > 5000:
		return fmt.Errorf("-rate must be in (0, 5000]")
	case o.load.Timeout <= 0 || o.load.Timeout > time.Minute:
		return fmt.Errorf("-timeout must be in (0, 1m]")
	case !o.noOverhead && o.overhead.Pairs < 5:
		return fmt.Errorf("-pairs must be at least 5")
	case !o.noOverhead && (o.overhead.Duration <= 0 || o.overhead.Duration > 5*time.Minute):
		return fmt.Errorf("-overhead-run must be in (0, 5m]")
	case o.overhead.Clients <= 0 || o.overhead.Clients > 1024:
		return fmt.Errorf("-clients must be in [1, 1024]")
	case o.tunedPolicy != "round_robin" && o.tunedPolicy != "least_conn":
		return fmt.Errorf("-tuned-policy must be round_robin or least_conn")
	}
	if err := o.overhead.validate(); err != nil {
		return err
	}
	if _, err := selectScenarios(o.scenarios); err != nil {
		return err
	}
	_, err := selectContenders(o.contenders, o.tunedPolicy)
	return err
}

func scenarioNames() string {
	var names []string
	for _, s := range allScenarios {
		names = append(names, s.Name)
	}
	return strings.Join(names, ",")
}

// suite runs every selected scenario and contender, then the happy path,
// and writes the report.
func suite(ctx context.Context, procs *procSet, o options, p preset) (*Report, error) {
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05 ")+format+"\n", args...)
	}
	root, err := moduleRoot(ctx)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "bifrost-chaos-")
	if err != nil {
		return nil, err
	}
	defer removeAll(tmp, o.keep, logf)

	var tools overheadTools
	if !o.noOverhead {
		// before anything runs: a missing wrk or redis-server must not
		// cost the scenarios' minutes first
		if tools, err = findOverheadTools(o.overhead); err != nil {
			return nil, err
		}
	}
	bin := o.caddy
	if bin == "" {
		logf("building ./cmd/caddy into %s", tmp)
		if bin, err = buildCaddy(ctx, root, tmp); err != nil {
			return nil, err
		}
	}
	var scs []scenario
	if !o.onlyOverhead {
		scs, _ = selectScenarios(o.scenarios)
	}
	cs, _ := selectContenders(o.contenders, o.tunedPolicy)
	e := &env{caddy: bin, tmp: tmp, procs: procs, timing: o.timing, load: o.load, poll: o.poll, log: logf}

	report := &Report{
		Date:         time.Now(),
		Command:      commandLine(),
		Machine:      machineInfo(),
		Commit:       gitCommit(ctx, root),
		CaddyVersion: caddyVersion(ctx, bin),
		Mode:         p.mode,
		Timing:       o.timing,
		Load:         o.load,
		Contenders:   caddyfiles(o, scs, cs),
	}
	for _, sc := range scs {
		sr := ScenarioResult{Name: sc.Name, Description: sc.Description, Fault: sc.Fault.String(), AllBackends: sc.AllBackends, Extra: sc.Extra}
		for _, c := range contendersIn(sc, cs) {
			if ctx.Err() != nil {
				break
			}
			logf("scenario %s: %s", sc.Name, c.Label)
			rr := runScenario(ctx, e, sc, c)
			logf("  %s", oneLine(rr))
			sr.Runs = append(sr.Runs, rr)
		}
		report.Scenarios = append(report.Scenarios, sr)
	}
	if !o.noOverhead && ctx.Err() == nil {
		logf("happy path: %d pairs of %s runs, %s", o.overhead.Pairs, o.overhead.Duration, o.overhead.scheduleText())
		report.Overhead = runOverhead(ctx, e, o.overhead, tools)
		logf("%s", report.Overhead)
	}
	if ctx.Err() != nil {
		return nil, errors.New("interrupted: no results written")
	}
	report.evaluate()
	out := o.out
	if !filepath.IsAbs(out) {
		out = filepath.Join(root, out)
	}
	if err := report.write(out); err != nil {
		return report, err
	}
	logf("wrote %s.json and %s.md", out, out)
	return report, nil
}

// caddyfiles returns every proxy configuration the run uses, by
// contender, with placeholders for the addresses of the backends and
// services it starts: the scenarios' contenders and the happy path's
// sides.
func caddyfiles(o options, scs []scenario, cs []contender) map[string]string {
	out := map[string]string{}
	shown := staticUpstreams("<b1>", "<b2>", "<b3>")
	for _, sc := range scs {
		for _, c := range contendersIn(sc, cs) {
			if sc.Dynamic {
				out[c.Name+" (dynamic)"] = c.site(dynamicUpstreams("<port>", "<dns>"))
				continue
			}
			out[c.Name] = c.site(shown)
		}
	}
	if !o.noOverhead {
		v, _ := findOverheadVariant(o.overhead.Variant)
		a, b := v.sides(o.overhead.Policy, "redis://<redis>/0")
		out["happy path A: "+a.Label] = a.caddyfile(shown)
		out["happy path B: "+b.Label] = b.caddyfile(shown)
	}
	return out
}

// oneLine summarizes a run for the progress log.
func oneLine(rr RunResult) string {
	if rr.Error != "" {
		return "error: " + rr.Error
	}
	line := fmt.Sprintf("GET fail %d (window %d, first 2s %d, after %d), POST fail %d, p99 %s, amp %s, isolate %s, reinstate %s, dup POST %d",
		rr.Overall.GETFailures, rr.Window.GETFailures, rr.First2s.GETFailures, rr.After.GETFailures, rr.Overall.POSTFailures,
		fmtDur(rr.Window.P99), fmtRatio(rr.Amplification), fmtMSOr(rr.TimeToIsolateMS, "n/a"), fmtMSOr(rr.TimeToReinstateMS, "never"), rr.DuplicatePOSTs)
	if rr.AddedRequests != nil {
		line += "; fourth backend: " + addedLine(&rr)
	}
	return line
}

// smokeVerdict returns 1 if Bifrost showed a client-visible GET failure, a
// duplicate POST, or could not be measured, in any scenario run.
func smokeVerdict(r *Report) int {
	code := 0
	ran := false
	for _, s := range r.Scenarios {
		b := s.run("bifrost")
		if b == nil {
			continue
		}
		ran = true
		switch {
		case b.Error != "":
			fmt.Fprintf(os.Stderr, "smoke: %s: run failed: %s\n", s.Name, b.Error)
			code = 1
		case b.Overall.GETFailures > 0 || b.DuplicatePOSTs > 0:
			fmt.Fprintf(os.Stderr, "smoke: %s: Bifrost: %d GET failures (%s), %d duplicate POSTs\n",
				s.Name, b.Overall.GETFailures, fmtKinds(b.Overall.FailureKinds), b.DuplicatePOSTs)
			code = 1
		}
	}
	if !ran {
		fmt.Fprintln(os.Stderr, "smoke: Bifrost did not run")
		return 1
	}
	if code == 0 {
		fmt.Fprintln(os.Stderr, "smoke: ok")
	}
	return code
}

// commandLine is how the suite was invoked, for the report.
func commandLine() string {
	return strings.TrimSpace("go run ./bench/cmd/chaos " + strings.Join(os.Args[1:], " "))
}

func machineInfo() machine {
	return machine{CPUs: runtime.NumCPU(), CPUModel: cpuModel(), OS: runtime.GOOS, Arch: runtime.GOARCH, GoVersion: runtime.Version()}
}

// cpuModel reads the CPU model name from /proc/cpuinfo where there is one.
func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

// gitCommit returns the short commit of root, marked dirty if the tree has
// changes.
func gitCommit(ctx context.Context, root string) string {
	out, err := exec.CommandContext(ctx, "git", "-C", root, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return ""
	}
	commit := strings.TrimSpace(string(out))
	if st, err := exec.CommandContext(ctx, "git", "-C", root, "status", "--porcelain").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		commit += " (with uncommitted changes)"
	}
	return commit
}

// caddyVersion asks the binary for its version.
func caddyVersion(ctx context.Context, bin string) string {
	out, err := exec.CommandContext(ctx, bin, "version").Output()
	if err != nil {
		return ""
	}
	v, _, _ := strings.Cut(strings.TrimSpace(string(out)), " ")
	return v
}
