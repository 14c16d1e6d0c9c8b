package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Report is everything one run of the suite measured; it is written as
// JSON and as Markdown.
type Report struct {
	Date         time.Time         `json:"date"`
	Command      string            `json:"command"`
	Machine      machine           `json:"machine"`
	Commit       string            `json:"commit,omitempty"`
	CaddyVersion string            `json:"caddy_version,omitempty"`
	Mode         string            `json:"mode"`
	Timing       timing            `json:"timing"`
	Load         load              `json:"load"`
	Scenarios    []ScenarioResult  `json:"scenarios"`
	Overhead     *OverheadResult   `json:"overhead,omitempty"`
	Targets      []target          `json:"targets"`
	Worse        []string          `json:"worse_than_tuned"`
	Problems     []string          `json:"problems"`
	Contenders   map[string]string `json:"contenders"`
}

// ScenarioResult is one scenario and every contender's run of it.
type ScenarioResult struct {
	Name        string      `json:"name"`
	Description string      `json:"description"`
	Fault       string      `json:"fault"`
	AllBackends bool        `json:"all_backends,omitempty"`
	Extra       bool        `json:"extra,omitempty"`
	Runs        []RunResult `json:"runs"`
}

// run returns the run of contender name, or nil.
func (s ScenarioResult) run(name string) *RunResult {
	for i := range s.Runs {
		if s.Runs[i].Contender == name {
			return &s.Runs[i]
		}
	}
	return nil
}

// target is one of the targets and whether this run met it; Met
// is nil when the run did not measure it.
type target struct {
	Target   string `json:"target"`
	Measured string `json:"measured"`
	Met      *bool  `json:"met"`
}

// machine describes where the suite ran.
type machine struct {
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
	GoVersion string `json:"go_version"`
}

// evaluate fills in the targets, the rows where Bifrost is worse than
// tuned reverse_proxy, and the problems.
func (r *Report) evaluate() {
	r.Targets = r.targets()
	r.Worse = append([]string{}, r.worseThanTuned()...)
	r.Problems = append([]string{}, r.problems()...)
}

// targets returns the happy path's targets. Issue 27's targets compare
// Bifrost's defaults with plain reverse_proxy: the defaults variant. Any
// other variant gets one row of its figures, without a verdict.
func (o *OverheadResult) targets() []target {
	if o == nil || o.Error != "" || len(o.Pairs) == 0 {
		return []target{{"Happy path throughput and p99 ratios", "not run", nil}}
	}
	enough := len(o.Pairs) >= 5
	objects, bytes := o.allocExcess()
	if o.Settings.Variant != overheadVariants[0].Name {
		measured := fmt.Sprintf("throughput %.3f× (middle half %.3f–%.3f), p99 %.3f× (%.3f–%.3f), CPU per request %.3f×, %+.1f objects and %+.0f B per request; %d pairs",
			o.MedianThroughputRatio, o.ThroughputQuartiles[0], o.ThroughputQuartiles[1], o.MedianP99Ratio, o.P99Quartiles[0], o.P99Quartiles[1], o.MedianCPURatio, objects, bytes, len(o.Pairs))
		return []target{{fmt.Sprintf("Happy path, variant %s: %s over %s (medians; issue 27's targets are for the defaults variant)", o.Settings.Variant, o.Settings.B, o.Settings.A), measured, nil}}
	}
	out := []target{
		{"Happy path: Bifrost ≥ 0.97× plain reverse_proxy throughput (median of ≥ 5 pairs)",
			fmt.Sprintf("%.3f× (%d pairs; middle half %.3f–%.3f)", o.MedianThroughputRatio, len(o.Pairs), o.ThroughputQuartiles[0], o.ThroughputQuartiles[1]), ptr(o.MedianThroughputRatio >= 0.97 && enough)},
		{"Happy path: Bifrost p99 ≤ 1.05× plain reverse_proxy p99 (median of ≥ 5 pairs)",
			fmt.Sprintf("%.3f× (%d pairs; middle half %.3f–%.3f)", o.MedianP99Ratio, len(o.Pairs), o.P99Quartiles[0], o.P99Quartiles[1]), ptr(o.MedianP99Ratio <= 1.05 && enough)},
	}
	if o.MedianCPURatio > 0 {
		out = append(out, target{"Happy path: Bifrost CPU per request ≤ 1.04× plain reverse_proxy's (median of ≥ 5 pairs)",
			fmt.Sprintf("%.3f×", o.MedianCPURatio), ptr(o.MedianCPURatio <= 1.04 && enough)})
	}
	if o.MedianAllocObjectsRatio > 0 {
		out = append(out, target{"Happy path: Bifrost allocates ≤ plain reverse_proxy + 4 objects and + 2 KiB per request (median of the pairs' differences)",
			fmt.Sprintf("%+.1f objects, %+.0f B", objects, bytes), ptr(objects <= 4 && bytes <= 2048 && enough)})
	}
	return out
}

// zeroGETScenarios are the faults after which no GET may fail.
var zeroGETScenarios = []string{"down", "502", "reset", "429", "flaky30"}

func (r *Report) targets() []target {
	var out []target
	out = append(out, r.Overhead.targets()...)
	out = append(out, target{"Bookkeeping ≤ 1 µs and 0 allocs per request", "not measured here: see the Go benchmarks in BENCHMARKS.md", nil})
	for _, name := range zeroGETScenarios {
		t := target{Target: fmt.Sprintf("Zero client-visible GET failures, one of three backends %s", name), Measured: "not run"}
		if b := r.bifrostRun(name); b != nil && b.Error == "" {
			t.Measured = fmt.Sprintf("%d of %d", b.Overall.GETFailures, b.Overall.GETRequests)
			t.Met = ptr(b.Overall.GETFailures == 0)
		}
		out = append(out, t)
	}
	if b := r.bifrostRun("dynamic"); b != nil && b.Error == "" {
		out = append(out,
			target{"Dynamic upstreams: zero client-visible GET failures while one of three fails and a fourth joins the DNS answer",
				fmt.Sprintf("%d of %d (window %d)", b.Overall.GETFailures, b.Overall.GETRequests, b.Window.GETFailures), ptr(b.Overall.GETFailures == 0)},
			target{"Dynamic upstreams: the fourth backend gets traffic once it joins",
				addedLine(b), ptr(b.AddedShare != nil && *b.AddedShare > 0 && b.AddedTriesBefore == 0)})
	}
	dup, runs := 0, 0
	for _, s := range r.Scenarios {
		if b := s.run("bifrost"); b != nil && b.Error == "" {
			dup += b.DuplicatePOSTs
			runs++
		}
	}
	if runs > 0 {
		out = append(out, target{"Zero duplicate POSTs in every scenario", fmt.Sprintf("%d in %d scenarios", dup, runs), ptr(dup == 0)})
	}
	out = append(out, backupTargets(r.bifrostRun(backupScenario))...)
	if b := r.bifrostRun("all-down"); b != nil && b.Error == "" {
		out = append(out,
			target{"All backends down: no failure once they are back", fmt.Sprintf("%d after the outage", b.After.Failures), ptr(b.After.Failures == 0)},
			target{"All backends down: amplification ≤ 1.2 during the outage", fmtRatio(b.Amplification), ptr(b.Amplification != nil && *b.Amplification <= 1.2)})
	}
	on := hungTarget(r.contenderRun("hang", "hedge"))
	on.Target = "Hung backend with hedging: 0 client failures and p99 ≤ 300 ms in the window"
	out = append(out, on)
	for _, c := range []contender{bifrostContender, defaultsContender, leastConnContender} {
		t := hangWaitTarget(r.contenderRun("hang", c.Name))
		t.Target = fmt.Sprintf("Hung backend without hedging, %s: 0 client failures and no request of the window waiting longer than %s (hang_threshold + 0.5 s)", c.Label, fmtDur(hangMaxWait))
		out = append(out, t)
	}
	for _, c := range []contender{bifrostContender, defaultsContender, leastConnContender} {
		t := target{Target: fmt.Sprintf("Slow endpoint, %s: no worker taken out, every slow GET run exactly once and none longer than its duration + 0.5 s", c.Label), Measured: "not run"}
		if b := r.contenderRun("slow-endpoint", c.Name); b != nil && b.Error == "" && b.Slow != nil {
			t.Measured, t.Met = slowLine(b.Slow), ptr(slowMet(b.Slow))
		}
		out = append(out, t)
	}
	return out
}

// hangMaxWait is the hang targets' bound on a request's wait: the default
// hang_threshold (2 s) plus 0.5 s.
const hangMaxWait = 2500 * time.Millisecond

// hangWaitTarget measures a hang target without hedging on run b: no
// client failure and no request of the window waiting longer than
// hangMaxWait.
func hangWaitTarget(b *RunResult) target {
	switch {
	case b == nil:
		return target{Measured: "not run"}
	case b.Error != "":
		return target{Measured: "run failed"}
	}
	w := b.Window
	return target{
		Measured: fmt.Sprintf("%d failures of %d requests (GET %d, POST %d), p99 %s, longest %s", w.Failures, w.Requests, w.GETFailures, w.POSTFailures, fmtDur(w.P99), fmtDur(w.Max)),
		Met:      ptr(w.Failures == 0 && w.Max <= hangMaxWait),
	}
}

// hungP99 is the hung-backend target's bound on the window's p99 (the
// target's text says it too).
const hungP99 = 300 * time.Millisecond

// hungTarget measures the hung-backend target on run b: no client failure
// (GET or POST) and p99 ≤ hungP99 among the window's requests.
func hungTarget(b *RunResult) target {
	switch {
	case b == nil:
		return target{Measured: "not run"}
	case b.Error != "":
		return target{Measured: "run failed"}
	}
	w := b.Window
	return target{
		Measured: fmt.Sprintf("%d failures of %d requests (GET %d, POST %d), p99 %s", w.Failures, w.Requests, w.GETFailures, w.POSTFailures, fmtDur(w.P99)),
		Met:      ptr(w.Failures == 0 && w.P99 <= hungP99),
	}
}

func (r *Report) bifrostRun(scenario string) *RunResult {
	return r.contenderRun(scenario, "bifrost")
}

// contenderRun returns the run of contender in scenario, or nil.
func (r *Report) contenderRun(scenario, contender string) *RunResult {
	for _, s := range r.Scenarios {
		if s.Name == scenario {
			return s.run(contender)
		}
	}
	return nil
}

// worseThanTuned lists, in words, every measure on which Bifrost did worse
// than tuned reverse_proxy, beyond a margin for noise.
func (r *Report) worseThanTuned() []string {
	var out []string
	for _, s := range r.Scenarios {
		b, t := s.run("bifrost"), s.run("tuned")
		if b == nil || t == nil || b.Error != "" || t.Error != "" {
			continue
		}
		for _, w := range compareRuns(b, t) {
			out = append(out, s.Name+": "+w)
		}
	}
	return out
}

// compareRuns returns the measures on which b is worse than t.
func compareRuns(b, t *RunResult) []string {
	var out []string
	count := func(what string, bv, tv int) {
		if bv > tv {
			out = append(out, fmt.Sprintf("%s %d vs %d", what, bv, tv))
		}
	}
	count("GET failures (whole run)", b.Overall.GETFailures, t.Overall.GETFailures)
	count("POST failures (whole run)", b.Overall.POSTFailures, t.Overall.POSTFailures)
	count("GET failures after the window", b.After.GETFailures, t.After.GETFailures)
	count("duplicate POSTs", b.DuplicatePOSTs, t.DuplicatePOSTs)
	latency := func(what string, bv, tv time.Duration, factor float64, slack time.Duration) {
		if float64(bv) > factor*float64(tv) && bv-tv > slack {
			out = append(out, fmt.Sprintf("%s %s vs %s", what, fmtDur(bv), fmtDur(tv)))
		}
	}
	latency("p50 in the window", b.Window.P50, t.Window.P50, 1.2, 2*time.Millisecond)
	latency("p99 in the window", b.Window.P99, t.Window.P99, 1.2, 10*time.Millisecond)
	latency("max in the window", b.Window.Max, t.Window.Max, 1.5, 100*time.Millisecond)
	frac := func(what string, bv, tv *float64, slack float64) {
		if bv != nil && tv != nil && *bv > *tv+slack {
			out = append(out, fmt.Sprintf("%s %s vs %s", what, fmtRatio(bv), fmtRatio(tv)))
		}
	}
	// one try per request is no amplification, even if the other
	// contender made fewer tries (by failing requests without one)
	if b.Amplification != nil && *b.Amplification > 1.05 {
		frac("amplification in the window", b.Amplification, t.Amplification, 0.05)
	}
	frac("faulty backend's share in the window", b.FaultyShare, t.FaultyShare, 0.05)
	switch bt, tt := b.TimeToReinstateMS, t.TimeToReinstateMS; {
	case bt == nil && tt != nil:
		out = append(out, fmt.Sprintf("time to reinstate: never vs %s", fmtMS(tt)))
	case bt != nil && tt != nil && *bt > *tt+1000:
		out = append(out, fmt.Sprintf("time to reinstate %s vs %s", fmtMS(bt), fmtMS(tt)))
	}
	return out
}

// problems lists what looks like a bug or a broken run: run errors,
// panics, failures before the fault, and a Bifrost contender executing a
// POST twice.
func (r *Report) problems() []string {
	var out []string
	for _, s := range r.Scenarios {
		for _, run := range s.Runs {
			if run.Error != "" {
				out = append(out, fmt.Sprintf("%s/%s: run error: %s", s.Name, run.Contender, run.Error))
			}
			for _, p := range run.Panics {
				out = append(out, fmt.Sprintf("%s/%s: panic: %s", s.Name, run.Contender, p))
			}
			if run.Error == "" && run.Before.Failures > 0 {
				out = append(out, fmt.Sprintf("%s/%s: %d client failures before the fault (%s)", s.Name, run.Contender, run.Before.Failures, fmtKinds(run.Before.FailureKinds)))
			}
			if run.Bifrost && run.DuplicatePOSTs > 0 {
				out = append(out, fmt.Sprintf("%s/%s: %d duplicate POST executions (ids %s)", s.Name, run.Contender, run.DuplicatePOSTs, strings.Join(run.DuplicatePOSTIDs, ", ")))
			}
		}
	}
	if r.Overhead != nil && r.Overhead.Error != "" {
		out = append(out, "overhead: "+r.Overhead.Error)
	}
	return out
}

// write writes the report to base+".json" and base+".md".
func (r *Report) write(base string) error {
	if err := os.MkdirAll(filepath.Dir(base), 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding results: %w", err)
	}
	if err := os.WriteFile(base+".json", append(js, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(base+".md", []byte(r.markdown()), 0o644)
}

// markdown renders the report as Markdown tables.
func (r *Report) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Bifrost chaos and benchmark results (%s)\n\n", r.Mode)
	fmt.Fprintf(&b, "- Date: %s\n", r.Date.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "- Machine: %d CPUs (`nproc`), %s, %s/%s, %s\n", r.Machine.CPUs, r.Machine.CPUModel, r.Machine.OS, r.Machine.Arch, r.Machine.GoVersion)
	if r.Commit != "" || r.CaddyVersion != "" {
		fmt.Fprintf(&b, "- Code: commit %s, Caddy %s\n", r.Commit, r.CaddyVersion)
	}
	fmt.Fprintf(&b, "- Command: `%s`\n", r.Command)
	fmt.Fprintf(&b, "- Load: open loop, %.0f requests/s, %.0f%% POST, client timeout %s; each run %s, fault from %s for %s (all-down: %s), 3 backends\n\n",
		r.Load.Rate, r.Load.POSTShare*100, r.Load.Timeout, r.Timing.Run, r.Timing.FaultAt, r.Timing.Window, r.Timing.Outage)

	r.markdownTargets(&b)
	r.markdownWorse(&b)
	r.markdownProblems(&b)
	for _, s := range r.Scenarios {
		markdownScenario(&b, s)
	}
	if r.Overhead != nil {
		markdownOverhead(&b, r.Overhead)
	}
	return b.String()
}

func (r *Report) markdownTargets(b *strings.Builder) {
	b.WriteString("## Targets\n\n| target | measured | met |\n|---|---|---|\n")
	for _, t := range r.Targets {
		met := "n/a"
		if t.Met != nil {
			met = map[bool]string{true: "yes", false: "**no**"}[*t.Met]
		}
		fmt.Fprintf(b, "| %s | %s | %s |\n", t.Target, t.Measured, met)
	}
	b.WriteString("\n")
}

func (r *Report) markdownWorse(b *strings.Builder) {
	b.WriteString("## Where Bifrost is worse than tuned reverse_proxy\n\n")
	if len(r.Worse) == 0 {
		b.WriteString("Nowhere, within the noise margins (see BENCHMARKS.md).\n\n")
		return
	}
	for _, w := range r.Worse {
		fmt.Fprintf(b, "- %s\n", w)
	}
	b.WriteString("\n")
}

func (r *Report) markdownProblems(b *strings.Builder) {
	if len(r.Problems) == 0 {
		return
	}
	b.WriteString("## Problems\n\n")
	for _, p := range r.Problems {
		fmt.Fprintf(b, "- %s\n", p)
	}
	b.WriteString("\n")
}

func markdownScenario(b *strings.Builder, s ScenarioResult) {
	extra := ""
	if s.Extra {
		extra = " (extra)"
	}
	fmt.Fprintf(b, "## %s%s: %s\n\nFault: %s.\n\n", s.Name, extra, s.Description, s.Fault)
	b.WriteString("| contender | GET failures window / first 2 s / after | POST failures window / after | p50 / p99 / max in window | amplification | faulty share | isolated after | reinstated after | duplicate POSTs |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|\n")
	var kinds []string
	for _, run := range s.Runs {
		if run.Error != "" {
			fmt.Fprintf(b, "| %s | run failed: %s |||||||| \n", run.Label, strings.ReplaceAll(run.Error, "|", "/"))
			continue
		}
		iso := "n/a"
		if run.Bifrost {
			iso = fmtMSOr(run.TimeToIsolateMS, "never")
		}
		share := "n/a"
		if run.FaultyShare != nil {
			share = fmt.Sprintf("%.1f%%", *run.FaultyShare*100)
		}
		fmt.Fprintf(b, "| %s | %d / %d / %d | %d / %d | %s / %s / %s | %s | %s | %s | %s | %d |\n",
			run.Label,
			run.Window.GETFailures, run.First2s.GETFailures, run.After.GETFailures,
			run.Window.POSTFailures, run.After.POSTFailures,
			fmtDur(run.Window.P50), fmtDur(run.Window.P99), fmtDur(run.Window.Max),
			fmtRatio(run.Amplification), share, iso, fmtMSOr(run.TimeToReinstateMS, "never"), run.DuplicatePOSTs)
		if k := fmtKinds(run.Overall.FailureKinds); k != "" {
			kinds = append(kinds, fmt.Sprintf("%s: %s", run.Label, k))
		}
	}
	if len(kinds) > 0 {
		fmt.Fprintf(b, "\nFailures by cause (whole run): %s.\n", strings.Join(kinds, "; "))
	}
	for _, run := range s.Runs {
		if run.Error == "" && run.Slow != nil {
			fmt.Fprintf(b, "\n%s: %s.\n", run.Label, slowLine(run.Slow))
		}
	}
	for _, run := range s.Runs {
		if run.Error == "" && run.AddedAtMS != nil {
			fmt.Fprintf(b, "\n%s: the fourth backend joined the DNS answer %s into the run; %s.\n", run.Label, fmtMS(run.AddedAtMS), addedLine(&run))
		}
	}
	if line := shareAfterLine(s); line != "" {
		fmt.Fprintf(b, "\nFaulty backend's share of the tries after the window (before the fault): %s.\n", line)
	}
	for _, bf := range s.Runs {
		if !bf.Bifrost || bf.Error != "" || bf.IsolatedAs == "" {
			continue
		}
		fmt.Fprintf(b, "\n%s's admin API showed the faulty worker out of rotation as: %s", bf.Label, bf.IsolatedAs)
		if bf.TimeBackInRotationMS != nil {
			fmt.Fprintf(b, "; back in rotation %s after the window", fmtMS(bf.TimeBackInRotationMS))
		}
		b.WriteString(".\n")
	}
	b.WriteString("\n")
}

// addedLine describes the traffic of the dynamic scenario's fourth
// backend.
func addedLine(r *RunResult) string {
	if r.AddedAtMS == nil {
		return "never added"
	}
	share := func(v *float64) string {
		if v == nil {
			return "n/a"
		}
		return fmt.Sprintf("%.1f%%", *v*100)
	}
	var n int64
	if r.AddedRequests != nil {
		n = *r.AddedRequests
	}
	s := fmt.Sprintf("first try %s after it joined, %s of the tries for the rest of the window, %s after the window, %d requests in all",
		fmtMSOr(r.AddedFirstTryMS, "never"), share(r.AddedShare), share(r.AddedShareAfter), n)
	if r.AddedTriesBefore > 0 {
		s += fmt.Sprintf(" (and %d tries before it joined)", r.AddedTriesBefore)
	}
	return s
}

// shareAfterLine lists each contender's faulty share after the window,
// with the share before the fault in parentheses.
func shareAfterLine(s ScenarioResult) string {
	var parts []string
	for _, run := range s.Runs {
		if run.Error != "" || run.FaultyShareAfter == nil || run.FaultyShareBefore == nil {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %.1f%% (%.1f%%)", run.Label, *run.FaultyShareAfter*100, *run.FaultyShareBefore*100))
	}
	return strings.Join(parts, ", ")
}

// markdownOverhead writes the happy path's section: one row per pair, B
// against A, and the medians.
func markdownOverhead(b *strings.Builder, o *OverheadResult) {
	s := o.Settings
	fmt.Fprintf(b, "## Happy path (variant %s): %s vs %s\n\n", s.Variant, s.B, s.A)
	if o.Error != "" {
		fmt.Fprintf(b, "Run failed: %s\n\n", o.Error)
		return
	}
	var load, schedule string
	switch {
	case s.Load == loadWrk && s.together():
		load = fmt.Sprintf("One wrk per proxy, %d thread and %d connections each", s.wrkThreads(), s.Clients)
	case s.Load == loadWrk:
		load = fmt.Sprintf("wrk, %d threads and %d connections", s.wrkThreads(), s.Clients)
	case s.together():
		load = fmt.Sprintf("One closed loop of %d clients per proxy", s.Clients)
	default:
		load = fmt.Sprintf("Closed loop, %d clients", s.Clients)
	}
	if s.together() {
		schedule = "A and B loaded at the same time: a pair is one run of both at once, and each process's CPU time and allocations are read around that common window"
	} else {
		schedule = "the runs of a pair are back to back, A first in odd pairs and B first in even ones (A, B, B, A, ...)"
	}
	fmt.Fprintf(b, "A is %s, B is %s. %s, %s per run after a %s warm-up, 3 healthy backends; %s.\n\n",
		s.A, s.B, load, s.Duration, s.Warmup, schedule)
	b.WriteString("| pair | first | A req/s | B req/s | throughput ratio | A p99 | B p99 | p99 ratio | A CPU/10k | B CPU/10k | CPU ratio | A allocs/req | B allocs/req | A B/req | B B/req |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for i, p := range o.Pairs {
		first := "A"
		switch {
		case s.together():
			first = "both"
		case p.BFirst:
			first = "B"
		}
		fmt.Fprintf(b, "| %d | %s | %.0f | %.0f | %.3f | %.2fms | %.2fms | %.3f | %.3fs | %.3fs | %.3f | %.1f | %.1f | %.0f | %.0f |\n", i+1, first, p.A.Throughput, p.B.Throughput, p.ThroughputRatio,
			p.A.P99MS, p.B.P99MS, p.P99Ratio, p.A.CPUSecondsPer10k, p.B.CPUSecondsPer10k, p.CPURatio,
			p.A.AllocObjectsPerRequest, p.B.AllocObjectsPerRequest, p.A.AllocBytesPerRequest, p.B.AllocBytesPerRequest)
	}
	fmt.Fprintf(b, "| **median** | | | | **%.3f** | | | **%.3f** | | | **%.3f** | | **%.3f×** | | **%.3f×** |\n", o.MedianThroughputRatio, o.MedianP99Ratio, o.MedianCPURatio, o.MedianAllocObjectsRatio, o.MedianAllocBytesRatio)
	fmt.Fprintf(b, "| middle half | | | | %.3f–%.3f | | | %.3f–%.3f | | | | | | | |\n\n", o.ThroughputQuartiles[0], o.ThroughputQuartiles[1], o.P99Quartiles[0], o.P99Quartiles[1])
	b.WriteString("CPU/10k is each Caddy process's CPU time (user and system, from /proc) during its run per 10 000 requests: the proxy's own cost, which the throughput ratio understates because the load generator and the backends share the CPUs. allocs/req and B/req are the objects and bytes its Go heap allocated during the run (Mallocs and TotalAlloc of the memstats in the admin API's /debug/vars, read before and after) per request.\n\n")
}

// fmtDur formats a latency for a table.
func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.0fms", ms(d))
	default:
		return fmt.Sprintf("%.1fms", ms(d))
	}
}

func fmtMS(v *float64) string { return fmtDur(time.Duration(*v * float64(time.Millisecond))) }

func fmtMSOr(v *float64, none string) string {
	if v == nil {
		return none
	}
	return fmtMS(v)
}

func fmtRatio(v *float64) string {
	if v == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", *v)
}

// fmtKinds formats failure counts by cause, most frequent first.
func fmtKinds(k map[string]int) string {
	type kv struct {
		k string
		v int
	}
	var all []kv
	for key, v := range k {
		all = append(all, kv{key, v})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].v > all[j].v || all[i].v == all[j].v && all[i].k < all[j].k })
	var parts []string
	for _, e := range all {
		parts = append(parts, fmt.Sprintf("%s ×%d", e.k, e.v))
	}
	return strings.Join(parts, ", ")
}
