package main

import (
	"context"
	"expvar"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bifrost-proxy/bifrost/bench/faultserver"
	"github.com/bifrost-proxy/bifrost/bench/loadgen"
)

func TestRenderCaddyfile(t *testing.T) {
	cf := caddyConfig{Port: 8080, Admin: 2019, Dir: "/tmp/x", DebugLog: "/tmp/x/tries.log", Site: bifrostContender.site(staticUpstreams("127.0.0.1:1", "127.0.0.1:2"))}
	got := cf.render()
	for _, want := range []string{
		"admin 127.0.0.1:2019", "default_bind 127.0.0.1", "persist_config off", "auto_https off",
		"output file /tmp/x/tries.log", "include http.handlers.reverse_proxy http.handlers.bifrost",
		"http://127.0.0.1:8080 {", "\tbifrost 127.0.0.1:1 127.0.0.1:2 {", "\t\t\turi /health",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("Caddyfile lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "log default") {
		t.Error("the default log taken without DebugAll")
	}
	// the dynamic scenario: every logger's debug lines, in the default log
	cf.DebugAll = true
	all := cf.render()
	if !strings.Contains(all, "\tlog default {\n\t\toutput file /tmp/x/tries.log") || !strings.Contains(all, "level DEBUG") ||
		strings.Contains(all, "include") || strings.Contains(all, "log tries") {
		t.Errorf("DebugAll log:\n%s", all)
	}
	cf.DebugAll = false
	cf.DebugLog = ""
	if strings.Contains(cf.render(), "log tries") {
		t.Error("debug log configured without DebugLog")
	}
}

func TestTunedContender(t *testing.T) {
	site := tunedContender("round_robin").site(staticUpstreams("a:1", "b:2", "c:3"))
	for _, want := range []string{
		"reverse_proxy a:1 b:2 c:3", "lb_policy round_robin", "lb_retries 2", "lb_try_duration 1s",
		"method GET HEAD", "{rp.status_code}", "fail_duration 10s", "max_fails 3", "unhealthy_status 5xx",
		"health_uri /health", "health_interval 1s",
	} {
		if !strings.Contains(site, want) {
			t.Errorf("tuned site lacks %q:\n%s", want, site)
		}
	}
}

func TestSelect(t *testing.T) {
	cs, err := selectContenders("tuned,bifrost", "least_conn")
	if err != nil || len(cs) != 2 || cs[0].Name != "bifrost" || cs[1].Name != "tuned" {
		t.Fatalf("contenders %v %v", cs, err)
	}
	if _, err := selectContenders("nginx", "least_conn"); err == nil {
		t.Error("unknown contender accepted")
	}
	ss, err := selectScenarios("all-down, 502")
	if err != nil || len(ss) != 2 || ss[0].Name != "502" || !ss[1].AllBackends {
		t.Fatalf("scenarios %v %v", ss, err)
	}
	if _, err := selectScenarios("meteor"); err == nil {
		t.Error("unknown scenario accepted")
	}
	if all, _ := selectScenarios(""); len(all) != len(allScenarios) {
		t.Error("default does not select every scenario")
	}
}

// contenderNames returns the names of the contenders of cs that run in
// each scenario, by scenario.
func contenderNames(cs []contender) map[string]string {
	out := map[string]string{}
	for _, sc := range allScenarios {
		var names []string
		for _, c := range contendersIn(sc, cs) {
			names = append(names, c.Name)
		}
		out[sc.Name] = strings.Join(names, ",")
	}
	return out
}

func TestSelectHedge(t *testing.T) {
	// variants is each contender with default scenarios: it runs in the
	// default run only there
	variants := map[string][]string{
		"hedge":     {"slow300", "hang"},
		"defaults":  {"hang", "slow-endpoint"},
		"leastconn": {"hang", "slow-endpoint"},
	}
	order := []string{"bifrost", "hedge", "defaults", "leastconn", "plain", "tuned"}
	for _, tc := range []struct {
		list string
		// named is the contenders the list selects; in the default run
		// ("") variants run only in their scenarios
		named []string
	}{
		{"", order},
		{"all", order},
		{"bifrost,plain", []string{"bifrost", "plain"}},
		{"hedge", []string{"hedge"}},
		{"tuned,hedge", []string{"hedge", "tuned"}},
		{"leastconn,defaults", []string{"defaults", "leastconn"}},
	} {
		cs, err := selectContenders(tc.list, "least_conn")
		if err != nil {
			t.Fatalf("%q: %v", tc.list, err)
		}
		for sc, got := range contenderNames(cs) {
			var want []string
			for _, name := range tc.named {
				if only, ok := variants[name]; ok && tc.list == "" && !slices.Contains(only, sc) {
					continue
				}
				if sc == backupScenario && (name == "plain" || name == "tuned") {
					continue // reverse_proxy has no backups
				}
				want = append(want, name)
			}
			if got != strings.Join(want, ",") {
				t.Errorf("-contenders %q, scenario %s: %s, want %s", tc.list, sc, got, strings.Join(want, ","))
			}
		}
	}
	if _, err := selectContenders("hedge,nginx", "least_conn"); err == nil || !strings.Contains(err.Error(), "hedge") {
		t.Errorf("unknown contender: %v", err)
	}
	// the default run's rule names real scenarios, and is not changed
	// for the other runs by a selection
	for _, c := range []contender{hedgeContender, defaultsContender, leastConnContender} {
		for _, name := range c.DefaultScenarios {
			if _, err := selectScenarios(name); err != nil {
				t.Errorf("%s's default scenario %q: %v", c.Name, name, err)
			}
		}
	}
	if _, err := selectContenders("hedge", "least_conn"); err != nil || len(hedgeContender.DefaultScenarios) == 0 {
		t.Error("selecting hedge by name changed the default rule")
	}
	// no -contenders: the default run; -smoke: Bifrost alone
	if o, _, err := parseFlags(nil); err != nil || o.contenders != "" {
		t.Errorf("default contenders %q %v", o.contenders, err)
	}
	o, _, err := parseFlags([]string{"-smoke"})
	cs, _ := selectContenders(o.contenders, o.tunedPolicy)
	if err != nil || contenderNames(cs)["502"] != "bifrost" {
		t.Errorf("smoke contenders %v %v", cs, err)
	}
}

func TestHedgeContender(t *testing.T) {
	ups := staticUpstreams("a:1", "b:2", "c:3")
	bif, hedge := bifrostContender.site(ups), hedgeContender.site(ups)
	retry := "\tretry {\n\t\thedge auto\n\t}\n"
	if !strings.Contains(hedge, retry) || strings.Replace(hedge, retry, "", 1) != bif {
		t.Errorf("hedge site is not Bifrost's plus hedging:\n%s\nvs\n%s", hedge, bif)
	}
	if bif != "bifrost a:1 b:2 c:3 {\n\thealth {\n\t\turi /health\n\t\tinterval 1s\n\t}\n}" {
		t.Errorf("Bifrost's site changed:\n%s", bif)
	}
	if !hedgeContender.Bifrost || hedgeContender.Name == bifrostContender.Name {
		t.Error("hedge is not a Bifrost contender of its own")
	}
}

// TestDynamicSites checks that every contender renders the dynamic
// scenario's source as a `dynamic a` subdirective inside its block, with no
// static upstream, and keeps the rest of its configuration.
func TestDynamicSites(t *testing.T) {
	ups := dynamicUpstreams("8080", "127.0.0.1:5353")
	want := "\tdynamic a " + dynamicName + " 8080 {\n\t\tresolvers 127.0.0.1:5353\n\t\trefresh 1s\n\t}\n"
	for _, c := range []contender{bifrostContender, hedgeContender, plainContender, tunedContender("least_conn")} {
		site := c.site(ups)
		head, _, _ := strings.Cut(site, "\n")
		if head != "bifrost {" && head != "reverse_proxy {" {
			t.Errorf("%s: first line %q, want the directive with no upstream", c.Name, head)
		}
		if !strings.Contains(site, want) || !strings.HasSuffix(site, "\n}") {
			t.Errorf("%s: site lacks the dynamic source:\n%s", c.Name, site)
		}
		// the same site with static upstreams, less the source
		static := c.site(staticUpstreams("a:1"))
		if c.Name != "plain" {
			if got := strings.Replace(strings.Replace(site, want, "", 1), head, strings.TrimSuffix(head, " {")+" a:1 {", 1); got != static {
				t.Errorf("%s: dynamic site less its source differs from the static one:\n%s\nvs\n%s", c.Name, got, static)
			}
		}
	}
	if got := plainContender.site(ups); got != "reverse_proxy {\n"+want+"}" {
		t.Errorf("plain dynamic site:\n%s", got)
	}
	if got := plainContender.site(staticUpstreams("a:1", "b:2")); got != "reverse_proxy a:1 b:2" {
		t.Errorf("plain static site: %q", got)
	}
	tuned := tunedContender("least_conn").site(ups)
	if !strings.Contains(tuned, "\texpression `{rp.status_code} in [429, 500, 502, 503, 504]`") {
		t.Errorf("tuned site lost its retry expression:\n%s", tuned)
	}
}

// TestDynamicScenario checks the dynamic scenario's place in the
// selection: in the default run with Bifrost, plain and tuned (hedge
// only if named), and not in the smoke run.
func TestDynamicScenario(t *testing.T) {
	ss, err := selectScenarios("dynamic")
	if err != nil || len(ss) != 1 || !ss[0].Dynamic || ss[0].AllBackends || ss[0].Fault.String() != faultserver.Answering(502, 0).String() {
		t.Fatalf("dynamic scenario %+v %v", ss, err)
	}
	for _, sc := range allScenarios {
		if sc.Dynamic != (sc.Name == "dynamic") {
			t.Errorf("scenario %s: Dynamic %v", sc.Name, sc.Dynamic)
		}
	}
	cs, _ := selectContenders("", "least_conn")
	if got := contenderNames(cs)["dynamic"]; got != "bifrost,plain,tuned" {
		t.Errorf("default run's dynamic contenders %s", got)
	}
	o, _, _ := parseFlags([]string{"-smoke"})
	if ss, _ := selectScenarios(o.scenarios); len(ss) != 1 || ss[0].Dynamic {
		t.Errorf("smoke scenarios %+v", ss)
	}
}

// TestDNSServerAndLoopbackBackends runs the dynamic scenario's plumbing:
// four backends on 127.0.0.2-5 sharing a port, and the DNS server's
// answer before and after the fourth joins, as a resolver sees it.
func TestDNSServerAndLoopbackBackends(t *testing.T) {
	bs, err := startLoopbackBackends(4, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer closeBackends(bs)
	if got := hosts(bs); strings.Join(got, ",") != "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5" {
		t.Fatalf("hosts %v", got)
	}
	_, port, _ := net.SplitHostPort(bs[0].Addr())
	for _, b := range bs {
		if _, p, _ := net.SplitHostPort(b.Addr()); p != port {
			t.Fatalf("ports differ: %v", addrs(bs))
		}
	}
	srv, err := startDNS(dynamicName, hosts(bs[:3])...)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.close()
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", srv.addr)
	}}
	lookup := func() string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ips, err := r.LookupIP(ctx, "ip4", dynamicName)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, ip := range ips {
			out = append(out, ip.String())
		}
		sort.Strings(out)
		return strings.Join(out, ",")
	}
	if got := lookup(); got != "127.0.0.2,127.0.0.3,127.0.0.4" {
		t.Errorf("first answer %s", got)
	}
	srv.setA(hosts(bs)...)
	if got := lookup(); got != "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5" {
		t.Errorf("answer after the join %s", got)
	}
}

// TestAddedSide checks the fourth backend's figures: its first try and
// share are counted from when it joined, tries before are reported.
func TestAddedSide(t *testing.T) {
	b, err := faultserver.Start(faultserver.Options{Name: "b4", MaxEvents: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	in := analysisInput{start: t0, faultEnd: at(1000), added: b, addedAt: at(400)}
	for i, tr := range []struct {
		ms   int
		addr string
	}{{100, b.Addr()}, {200, "x:1"}, {500, "x:1"}, {600, b.Addr()}, {700, "x:1"}, {800, "x:1"}, {900, b.Addr()}, {1100, b.Addr()}, {1200, "x:1"}} {
		in.tries = append(in.tries, upstreamTry{Start: at(tr.ms), Upstream: tr.addr, ID: string(rune('a' + i))})
	}
	var rr RunResult
	addedSide(&rr, in)
	switch {
	case rr.AddedAtMS == nil || *rr.AddedAtMS != 400:
		t.Errorf("added at %v", rr.AddedAtMS)
	case rr.AddedFirstTryMS == nil || *rr.AddedFirstTryMS != 200:
		t.Errorf("first try %v", rr.AddedFirstTryMS)
	case rr.AddedShare == nil || *rr.AddedShare != 0.4:
		t.Errorf("share %v", rr.AddedShare)
	case rr.AddedShareAfter == nil || *rr.AddedShareAfter != 0.5:
		t.Errorf("share after %v", rr.AddedShareAfter)
	case rr.AddedTriesBefore != 1:
		t.Errorf("tries before %d", rr.AddedTriesBefore)
	}
	if line := addedLine(&rr); !strings.Contains(line, "40.0% of the tries") || !strings.Contains(line, "1 tries before") {
		t.Errorf("line %q", line)
	}
}

func TestParseFlagsPresets(t *testing.T) {
	o, p, err := parseFlags([]string{"-smoke"})
	if err != nil {
		t.Fatal(err)
	}
	if p.mode != "smoke" || o.scenarios != "502" || o.contenders != "bifrost" || !o.noOverhead || o.out != "bench/results/smoke" {
		t.Fatalf("smoke options %+v", o)
	}
	o, _, err = parseFlags([]string{"-quick", "-window", "4s", "-pairs", "6"})
	if err != nil {
		t.Fatal(err)
	}
	if o.timing.Window != 4*time.Second || o.timing.Run != 10*time.Second || o.overhead.Pairs != 6 {
		t.Fatalf("quick options %+v", o)
	}
	for _, args := range [][]string{
		{"-smoke", "-quick"},
		{"-pairs", "3"},
		{"-run", "5s"},
		{"-rate", "0"},
		{"-tuned-policy", "random"},
		{"-scenarios", "nope"},
		{"extra"},
	} {
		if _, _, err := parseFlags(args); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}

func TestReadTries(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tries.log")
	log := `{"level":"debug","ts":1700000000.5,"logger":"http.handlers.bifrost","msg":"upstream roundtrip","upstream":"127.0.0.1:1","duration":0.25,"request":{"method":"GET","headers":{"X-Request-Id":["r-1"]}},"error":"dial tcp: connection refused"}
{"level":"debug","ts":1700000001,"logger":"http.handlers.reverse_proxy","msg":"upstream roundtrip","upstream":"127.0.0.1:2","duration":0.001,"request":{"method":"POST","headers":{"X-Request-Id":["r-2"]}},"status":200}
{"level":"warn","ts":1700000002,"logger":"http.handlers.bifrost","msg":"worker isolated","worker":"p_127.0.0.1-1","reason":"probe_failed"}
{"level":"debug","ts":1700000003,"logger":"http.handlers.bifrost.health","msg":"probe failed"}
not json
`
	if err := os.WriteFile(path, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	tries, notes, err := readTries(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(tries) != 2 || len(notes) != 1 {
		t.Fatalf("tries %+v, notes %+v", tries, notes)
	}
	if tr := tries[0]; tr.ID != "r-1" || tr.Method != "GET" || tr.Err == "" || !tr.Start.Equal(time.Unix(1700000000, 250e6)) {
		t.Fatalf("first try %+v", tr)
	}
	if tries[1].Status != 200 || notes[0].Msg != "worker isolated" || !strings.Contains(notes[0].Detail, "reason=probe_failed") {
		t.Fatalf("second try %+v, note %+v", tries[1], notes[0])
	}
}

func TestWorkerStatus(t *testing.T) {
	var w workerStatus
	w.Healthy, w.ProbeHealthy, w.Breaker.State = true, true, "closed"
	if !w.inRotation() || w.describe() != "in rotation" {
		t.Fatalf("healthy worker: %v %q", w.inRotation(), w.describe())
	}
	w.Breaker.State = "open"
	if w.inRotation() || w.describe() != "breaker open" {
		t.Fatalf("open breaker: %v %q", w.inRotation(), w.describe())
	}
	t0 := time.Unix(100, 0)
	changes := []stateChange{
		{Time: t0, Upstream: "a", InRotation: true},
		{Time: t0.Add(time.Second), Upstream: "a", InRotation: false, State: "breaker open"},
		{Time: t0.Add(3 * time.Second), Upstream: "a", InRotation: true},
	}
	if c, ok := firstOut(changes, "a", t0); !ok || !c.Time.Equal(t0.Add(time.Second)) {
		t.Fatalf("first out %v %v", c, ok)
	}
	if inRotationAt(changes, "a", t0.Add(2*time.Second)) || !inRotationAt(changes, "b", t0) {
		t.Fatal("in rotation at")
	}
	if c, ok := firstIn(changes, "a", t0.Add(2*time.Second)); !ok || !c.Time.Equal(t0.Add(3*time.Second)) {
		t.Fatalf("first in %v %v", c, ok)
	}
}

func TestAnalyzeCountsDuplicatesAndAmplification(t *testing.T) {
	b, err := faultserver.Start(faultserver.Options{Name: "b1"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// two executions of POST p-1 on the backend
	res, err := loadgen.Run(t.Context(), loadgen.Config{URL: b.URL(), Clients: 1, Duration: time.Minute, MaxRequests: 2, POSTShare: 1, IDPrefix: "p"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = loadgen.Run(t.Context(), loadgen.Config{URL: b.URL(), Clients: 1, Duration: time.Minute, MaxRequests: 1, POSTShare: 1, IDPrefix: "p"})
	if err != nil {
		t.Fatal(err)
	}
	recs := res.Records
	start := recs[0].Intended.Add(-time.Second)
	end := time.Now().Add(time.Second)
	tries := []upstreamTry{{Start: recs[0].Intended, Upstream: b.Addr()}, {Start: recs[0].Intended, Upstream: "other"}, {Start: recs[1].Intended, Upstream: b.Addr()}}
	var rr RunResult
	analyze(&rr, analysisInput{
		records: recs, start: start, end: end, faultStart: start, faultEnd: end,
		backends: []*faultserver.Server{b}, faulty: []*faultserver.Server{b}, tries: tries,
	})
	if rr.DuplicatePOSTs != 1 || len(rr.DuplicatePOSTIDs) != 1 || rr.DuplicatePOSTIDs[0] != "p-0" {
		t.Fatalf("duplicates %d %v", rr.DuplicatePOSTs, rr.DuplicatePOSTIDs)
	}
	if rr.Amplification == nil || *rr.Amplification != 1.5 || rr.FaultyShare == nil || *rr.FaultyShare < 0.66 || *rr.FaultyShare > 0.67 {
		t.Fatalf("amplification %v, share %v", rr.Amplification, rr.FaultyShare)
	}
	if rr.Window.Requests != 2 || rr.Window.Failures != 0 {
		t.Fatalf("window %+v", rr.Window)
	}
	var broken RunResult
	analyze(&broken, analysisInput{start: start})
	if broken.Error == "" {
		t.Fatal("no error for a run without a fault window")
	}
}

func TestCompareRunsAndTargets(t *testing.T) {
	b := RunResult{Contender: "bifrost", Label: "Bifrost", Bifrost: true}
	tu := RunResult{Contender: "tuned", Label: "tuned"}
	b.Overall.GETFailures, tu.Overall.GETFailures = 3, 1
	b.Window.P99, tu.Window.P99 = 500*time.Millisecond, 300*time.Millisecond
	b.TimeToReinstateMS, tu.TimeToReinstateMS = ptr(9000.0), ptr(1000.0)
	b.Amplification, tu.Amplification = ptr(1.0), ptr(1.02)
	worse := compareRuns(&b, &tu)
	joined := strings.Join(worse, "\n")
	for _, want := range []string{"GET failures (whole run) 3 vs 1", "p99 in the window 500ms vs 300ms", "time to reinstate 9.00s vs 1.00s"} {
		if !strings.Contains(joined, want) {
			t.Errorf("missing %q in %q", want, joined)
		}
	}
	if strings.Contains(joined, "amplification") {
		t.Error("lower amplification reported as worse")
	}

	r := &Report{Scenarios: []ScenarioResult{{Name: "502", Runs: []RunResult{b, tu}}}}
	r.evaluate()
	if len(r.Worse) != len(worse) || !strings.HasPrefix(r.Worse[0], "502: ") {
		t.Fatalf("worse %v", r.Worse)
	}
	var met *bool
	for _, tg := range r.Targets {
		if strings.Contains(tg.Target, "backends 502") {
			met = tg.Met
		}
	}
	if met == nil || *met {
		t.Fatal("target for 502 not reported as missed")
	}
	md := r.markdown()
	for _, want := range []string{"## Targets", "| Bifrost | 0 / 0 / 0 |", "**no**", "## Where Bifrost is worse"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
}

func TestHungTargets(t *testing.T) {
	row := func(r *Report, prefix string) target {
		t.Helper()
		for _, tg := range r.Targets {
			if strings.HasPrefix(tg.Target, prefix) {
				return tg
			}
		}
		t.Fatalf("no target %q in %+v", prefix, r.Targets)
		return target{}
	}
	r := &Report{Scenarios: []ScenarioResult{{Name: "502", Runs: []RunResult{{Contender: "bifrost", Bifrost: true}}}}}
	r.evaluate()
	if on := row(r, "Hung backend with hedging"); on.Measured != "not run" || on.Met != nil {
		t.Errorf("hedging row without a hang run: %+v", on)
	}
	if off := row(r, "Hung backend without hedging"); off.Measured != "not run" {
		t.Errorf("hedging-off row without a hang run: %+v", off)
	}
	if slow := row(r, "Slow endpoint"); slow.Measured != "not run" || slow.Met != nil {
		t.Errorf("slow-endpoint row without its run: %+v", slow)
	}

	b := RunResult{Contender: "bifrost", Label: "Bifrost", Bifrost: true, IsolatedAs: "isolated (probe_failed)", TimeToIsolateMS: ptr(1200.0)}
	b.Window.Requests, b.Window.Failures, b.Window.GETFailures, b.Window.POSTFailures, b.Window.P99, b.Window.Max = 2000, 30, 25, 5, 5*time.Second, 5*time.Second
	d := RunResult{Contender: "defaults", Label: "Bifrost (defaults)", Bifrost: true}
	d.Window.Requests, d.Window.P99, d.Window.Max = 2000, 5*time.Millisecond, 2400*time.Millisecond
	h := RunResult{Contender: "hedge", Label: "Bifrost (hedging)", Bifrost: true, IsolatedAs: "breaker open", TimeToIsolateMS: ptr(800.0)}
	h.Window.Requests, h.Window.P99, h.Window.P50 = 2000, 250*time.Millisecond, 50*time.Second
	tu := RunResult{Contender: "tuned", Label: "reverse_proxy (tuned)"}
	tu.Window.P99, tu.Window.P50 = 5*time.Second, time.Millisecond
	slowOK := &SlowResult{DelayMS: 8000, GETs: 9, MaxMS: 8100, Executions: 9}
	slowBad := &SlowResult{DelayMS: 8000, GETs: 9, MaxMS: 18400, Executions: 22, NotOnce: 9, Isolations: 1}
	r = &Report{Scenarios: []ScenarioResult{
		{Name: "hang", Runs: []RunResult{b, h, d, tu}},
		{Name: "slow-endpoint", Runs: []RunResult{
			{Contender: "bifrost", Label: "Bifrost", Bifrost: true, Slow: slowBad},
			{Contender: "defaults", Label: "Bifrost (defaults)", Bifrost: true, Slow: slowOK},
		}},
	}}
	r.evaluate()
	on, off := row(r, "Hung backend with hedging: 0 client failures and p99 ≤ 300 ms"), row(r, "Hung backend without hedging, Bifrost:")
	if on.Met == nil || !*on.Met || on.Measured != "0 failures of 2000 requests (GET 0, POST 0), p99 250ms" {
		t.Errorf("hedging row %+v", on)
	}
	if off.Met == nil || *off.Met || off.Measured != "30 failures of 2000 requests (GET 25, POST 5), p99 5.00s, longest 5.00s" {
		t.Errorf("hedging-off row %+v", off)
	}
	if def := row(r, "Hung backend without hedging, Bifrost (defaults):"); def.Met == nil || !*def.Met {
		t.Errorf("defaults row %+v", def)
	}
	if lc := row(r, "Hung backend without hedging, Bifrost (least_conn):"); lc.Measured != "not run" {
		t.Errorf("least_conn row without its run %+v", lc)
	}
	if slow := row(r, "Slow endpoint, Bifrost:"); slow.Met == nil || *slow.Met || !strings.Contains(slow.Measured, "run 22 times in all (9 not exactly once)") {
		t.Errorf("slow-endpoint row of a run that moved the slow GETs: %+v", slow)
	}
	if slow := row(r, "Slow endpoint, Bifrost (defaults):"); slow.Met == nil || !*slow.Met {
		t.Errorf("slow-endpoint row of a good run: %+v", slow)
	}
	// the list of where Bifrost is worse is about the bifrost contender
	// alone (hedge's p50 is far worse than tuned's here)
	for _, w := range r.Worse {
		if strings.Contains(w, "p50") {
			t.Errorf("hedge compared with tuned: %v", r.Worse)
		}
	}
	md := r.markdown()
	for _, want := range []string{
		"| Bifrost (hedging) | 0 / 0 / 0 | 0 / 0 | 50.00s / 250ms / 0.0ms | n/a | n/a | 800ms |",
		"| Bifrost | 25 / 0 / 0 | 5 / 0 | 0.0ms / 5.00s / 5.00s | n/a | n/a | 1.20s |",
		"| reverse_proxy (tuned) | 0 / 0 / 0 | 0 / 0 | 1.0ms / 5.00s / 0.0ms | n/a | n/a | n/a |",
		"Bifrost's admin API showed the faulty worker out of rotation as: isolated (probe_failed).",
		"Bifrost (hedging)'s admin API showed the faulty worker out of rotation as: breaker open.",
		"| Hung backend with hedging: 0 client failures and p99 ≤ 300 ms in the window | 0 failures of 2000 requests (GET 0, POST 0), p99 250ms | yes |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

func TestMedianAndFormat(t *testing.T) {
	if median([]float64{3, 1, 2}) != 2 || median([]float64{4, 1, 2, 3}) != 2.5 || median(nil) != 0 {
		t.Fatal("median")
	}
	// quartiles of 1..5 by linear interpolation between ranks: 2 and 4;
	// of 1..4: 1.75 and 3.25
	if q := quartiles([]float64{5, 1, 4, 2, 3}); q != [2]float64{2, 4} {
		t.Errorf("quartiles(1..5) = %v, want [2 4]", q)
	}
	if q := quartiles([]float64{4, 3, 2, 1}); q != [2]float64{1.75, 3.25} {
		t.Errorf("quartiles(1..4) = %v, want [1.75 3.25]", q)
	}
	if q := quartiles([]float64{7}); q != [2]float64{7, 7} {
		t.Errorf("quartiles of one value = %v, want [7 7]", q)
	}
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{{1500 * time.Microsecond, "1.5ms"}, {42 * time.Millisecond, "42ms"}, {2500 * time.Millisecond, "2.50s"}} {
		if got := fmtDur(tc.d); got != tc.want {
			t.Errorf("fmtDur(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
	if got := fmtKinds(map[string]int{"502": 3, "timeout": 5}); got != "timeout ×5, 502 ×3" {
		t.Errorf("fmtKinds: %q", got)
	}
}

// debugVarsPort serves this process's expvar at /debug/vars, as Caddy's
// admin API does, for the test's life, and returns the server's port.
func debugVarsPort(t *testing.T) int {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("/debug/vars", expvar.Handler())
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// readAllocs reads the allocator's totals from expvar's memstats, as
// Caddy's admin API serves them at /debug/vars, and they only grow.
func TestReadAllocsFromDebugVars(t *testing.T) {
	p := &caddyProc{admin: debugVarsPort(t)}
	a, err := readAllocs(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	keep := make([][]byte, 0, 100)
	for range 100 {
		keep = append(keep, make([]byte, 1024))
	}
	b, err := readAllocs(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	if a.Mallocs == 0 || a.TotalAlloc == 0 || b.Mallocs < a.Mallocs+100 || b.TotalAlloc < a.TotalAlloc+100*1024 {
		t.Fatalf("allocation totals %+v then %+v (after %d allocations of 1 KiB)", a, b, len(keep))
	}
}

// TestBackupScenario checks the backup scenario's plumbing: Bifrost
// contenders only, the backup line in the site, and its measure from the
// client's records.
func TestBackupScenario(t *testing.T) {
	ss, err := selectScenarios(backupScenario)
	if err != nil || len(ss) != 1 || !ss[0].Backup || !ss[0].AllBackends {
		t.Fatalf("backup scenario %+v %v", ss, err)
	}
	cs, _ := selectContenders("", "least_conn")
	if got := contenderNames(cs)[backupScenario]; got != "bifrost" {
		t.Errorf("default run's backup contenders %s", got)
	}
	ups := staticUpstreams("a:1", "b:2")
	ups.Backup = []string{"c:3"}
	if site := bifrostContender.site(ups); !strings.HasPrefix(site, "bifrost a:1 b:2 {") || !strings.Contains(site, "\tbackup c:3\n") {
		t.Errorf("site:\n%s", site)
	}
	b, err := faultserver.Start(faultserver.Options{Name: "b4", MaxEvents: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	in := analysisInput{start: t0, faultStart: at(1000), faultEnd: at(2000), backup: b}
	for _, r := range []struct {
		ms      int
		backend string
		status  int
	}{{500, "b1", 200}, {1100, "b4", 200}, {1500, "b4", 200}, {1900, "b1", 502}, {2100, "b4", 200}, {2400, "b2", 200}, {2600, "b1", 200}, {3000, "b3", 200}} {
		in.records = append(in.records, loadgen.Record{Intended: at(r.ms), Backend: r.backend, Status: r.status})
	}
	var rr RunResult
	backupSide(&rr, in)
	switch br := rr.Backup; {
	case br == nil || br.Share == nil || *br.Share != 1:
		t.Errorf("share %+v", br)
	case br.ShareAfter == nil || *br.ShareAfter != 0.25:
		t.Errorf("share after %v", *br.ShareAfter)
	case br.LastAfterMS == nil || *br.LastAfterMS != 100:
		t.Errorf("last after %v", br.LastAfterMS)
	}
	rr.Overall.Requests = 8
	if ts := backupTargets(&rr); len(ts) != 3 || ts[2].Met == nil || !*ts[2].Met {
		t.Errorf("targets %+v", ts)
	}
}

// TestParseFlagsOverhead checks the happy path's flags: the defaults,
// and that a bad value is refused with an error naming its flag.
func TestParseFlagsOverhead(t *testing.T) {
	o, _, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.overhead.Variant != "defaults" || o.overhead.Load != loadClosed || o.overhead.Schedule != scheduleAlternate || o.onlyOverhead {
		t.Errorf("default happy path %+v, only %v", o.overhead, o.onlyOverhead)
	}
	for _, v := range overheadVariants {
		args := []string{"-only-overhead", "-overhead-variant", v.Name, "-overhead-load", "wrk", "-overhead-run", "2s"}
		o, _, err := parseFlags(args)
		if err != nil || o.overhead.Variant != v.Name || o.overhead.Load != loadWrk || !o.onlyOverhead {
			t.Errorf("%v: %+v %v", args, o.overhead, err)
		}
	}
	// the binaries are run from Caddy's own directory: relative paths
	// become absolute
	exe := filepath.Join(t.TempDir(), "caddy")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(wd, exe)
	if err != nil {
		t.Fatal(err)
	}
	o, _, err = parseFlags([]string{"-caddy", rel, "-caddy-b", rel})
	if err != nil || o.caddy != exe || o.overhead.CaddyB != exe {
		t.Errorf("-caddy and -caddy-b %s: %q and %q, %v; want both %s", rel, o.caddy, o.overhead.CaddyB, err, exe)
	}
	o, _, err = parseFlags([]string{"-overhead-schedule", "together", "-overhead-load", "wrk", "-clients", "1"})
	if err != nil || o.overhead.Schedule != scheduleTogether || o.overhead.wrkThreads() != 1 {
		t.Errorf("together with wrk on 1 connection (one wrk thread each): %+v %v", o.overhead, err)
	}
	for _, tc := range []struct {
		args []string
		want string // in the error
	}{
		{[]string{"-overhead-variant", "nope"}, `-overhead-variant "nope" (want defaults, hedge, health, fleet, builds)`},
		{[]string{"-caddy-b", "/nonexistent/caddy"}, `-caddy-b "/nonexistent/caddy" is not an executable file`},
		{[]string{"-caddy-b", "."}, `/bench/cmd/chaos" is not an executable file`}, // named by its absolute path
		{[]string{"-overhead-variant", ""}, "-overhead-variant"},
		{[]string{"-overhead-load", "open"}, `-overhead-load "open" (want closed or wrk)`},
		{[]string{"-overhead-load", "wrk", "-overhead-run", "1500ms"}, "whole seconds"},
		{[]string{"-overhead-load", "wrk", "-clients", "1"}, "-clients"},
		{[]string{"-overhead-schedule", "both"}, `-overhead-schedule "both" (want alternate or together)`},
		{[]string{"-overhead-schedule", ""}, "-overhead-schedule"},
		{[]string{"-only-overhead", "-no-overhead"}, "-only-overhead"},
		{[]string{"-only-overhead", "-smoke"}, "-only-overhead"},
	} {
		_, _, err := parseFlags(tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one with %q", tc.args, err, tc.want)
		}
	}
}

// TestOverheadVariantCaddyfiles checks each variant's two Caddyfiles, as
// rendered for Caddy: each side has its variant's settings and no other
// variant's.
func TestOverheadVariantCaddyfiles(t *testing.T) {
	const fleetURL = "redis://127.0.0.1:6399/0"
	// every variant's settings, by the text that gives each away
	settings := map[string][]string{
		"hedge":  {"hedge"},
		"health": {"health", "interval"},
		"fleet":  {"fleet", "secret", "redis://"},
		"policy": {"lb_policy"},
	}
	for _, tc := range []struct {
		variant        string
		policy         string
		labelA, labelB string
		// the settings each side has, and text it must contain
		hasA, hasB   []string
		wantA, wantB []string
	}{
		{variant: "defaults", labelA: "reverse_proxy", labelB: "Bifrost (defaults)",
			wantA: []string{"\treverse_proxy a:1 b:2 c:3\n"}, wantB: []string{"\tbifrost a:1 b:2 c:3\n"}},
		{variant: "defaults", policy: "least_conn", labelA: "reverse_proxy", labelB: "Bifrost (defaults, lb_policy least_conn)",
			hasB: []string{"policy"}, wantB: []string{"\t\tlb_policy least_conn\n"}},
		{variant: "hedge", labelA: "reverse_proxy", labelB: "Bifrost (hedge auto)",
			hasB: []string{"hedge"}, wantB: []string{"\tbifrost a:1 b:2 c:3 {\n\t\tretry {\n\t\t\thedge auto\n\t\t}\n\t}\n"}},
		{variant: "health", labelA: "reverse_proxy (health checks)", labelB: "Bifrost (health checks)",
			hasA: []string{"health"}, hasB: []string{"health"},
			wantA: []string{"\treverse_proxy a:1 b:2 c:3 {\n\t\thealth_uri /health\n\t\thealth_interval 1s\n\t}\n"},
			wantB: []string{"\tbifrost a:1 b:2 c:3 {\n\t\thealth {\n\t\t\turi /health\n\t\t\tinterval 1s\n\t\t}\n\t}\n"}},
		{variant: "fleet", labelA: "Bifrost (no fleet)", labelB: "Bifrost (fleet)",
			hasB:  []string{"fleet"},
			wantA: []string{"\tbifrost a:1 b:2 c:3\n"},
			wantB: []string{"\tbifrost {\n\t\tfleet " + fleetURL + " {\n\t\t\tsecret bench-secret\n\t\t}\n\t}\n}\n", "\tbifrost a:1 b:2 c:3\n"}},
	} {
		v, err := findOverheadVariant(tc.variant)
		if err != nil {
			t.Fatal(err)
		}
		a, b := v.sides(tc.policy, fleetURL)
		if a.Label != tc.labelA || b.Label != tc.labelB {
			t.Errorf("%s: labels %q and %q, want %q and %q", tc.variant, a.Label, b.Label, tc.labelA, tc.labelB)
		}
		for _, side := range []struct {
			name string
			c    contender
			has  []string
			want []string
		}{{"A", a, tc.hasA, tc.wantA}, {"B", b, tc.hasB, tc.wantB}} {
			cf := caddyConfig{Port: 8080, Admin: 2019, Dir: "/tmp/x", Global: side.c.Global, Site: side.c.site(staticUpstreams("a:1", "b:2", "c:3"))}
			got := cf.render()
			for _, want := range side.want {
				if !strings.Contains(got, want) {
					t.Errorf("%s %s lacks %q:\n%s", tc.variant, side.name, want, got)
				}
			}
			for setting, words := range settings {
				for _, w := range words {
					if !slices.Contains(side.has, setting) && strings.Contains(got, w) {
						t.Errorf("%s %s has %q (%s):\n%s", tc.variant, side.name, w, setting, got)
					}
				}
			}
		}
	}
	if v, _ := findOverheadVariant("fleet"); !v.Fleet {
		t.Error("the fleet variant starts no Redis")
	}
}

// The happy path looks wrk and redis-server up on PATH before anything
// runs, only when its flags need them, and says which flag does.
func TestFindOverheadTools(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	if tools, err := findOverheadTools(overheadSettings{Variant: "health", Load: loadClosed}); err != nil || tools != (overheadTools{}) {
		t.Errorf("closed loop, no fleet: %+v %v", tools, err)
	}
	if _, err := findOverheadTools(overheadSettings{Variant: "defaults", Load: loadWrk}); err == nil || !strings.Contains(err.Error(), "-overhead-load wrk: wrk not found") {
		t.Errorf("wrk missing: %v", err)
	}
	if _, err := findOverheadTools(overheadSettings{Variant: "fleet", Load: loadClosed}); err == nil || !strings.Contains(err.Error(), "-overhead-variant fleet: redis-server not found") {
		t.Errorf("redis-server missing: %v", err)
	}
}

// wrkSample is what wrk 4.1 prints with --latency when some requests
// failed: the socket errors and non-2xx/3xx lines come only then.
const wrkSample = `Running 3s test @ http://127.0.0.1:40123/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   812.35us  640.12us  21.07ms   91.44%
    Req/Sec    10.21k     1.02k   12.48k    71.67%
  Latency Distribution
     50%  655.00us
     75%    0.98ms
     90%    1.42ms
     99%    3.12ms
  60993 requests in 3.00s, 8.72MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 45
Requests/sec:  20311.47
Transfer/sec:      2.90MB
`

func TestParseWrk(t *testing.T) {
	r, err := parseWrk(wrkSample)
	if err != nil {
		t.Fatal(err)
	}
	want := wrkResult{Requests: 60993, RequestsPerSec: 20311.47, P50: 655 * time.Microsecond, P99: 3120 * time.Microsecond, Non2xx: 45, SocketErrors: 5}
	if r != want {
		t.Fatalf("parsed %+v, want %+v", r, want)
	}
	run := r.run()
	if run.Requests != 60993 || run.Failures != 50 || run.P50MS != 0.655 || run.P99MS != 3.12 {
		t.Errorf("run %+v", run)
	}
	// the throughput counts 2xx and 3xx responses only
	if wantTP := 20311.47 * (60993 - 45) / 60993.0; run.Throughput < wantTP-1e-6 || run.Throughput > wantTP+1e-6 {
		t.Errorf("throughput %v, want %v", run.Throughput, wantTP)
	}

	// no failure: no such lines; latencies in seconds
	clean := strings.NewReplacer("     99%    3.12ms", "     99%    1.50s",
		"  Socket errors: connect 0, read 2, write 0, timeout 3\n", "", "  Non-2xx or 3xx responses: 45\n", "").Replace(wrkSample)
	r, err = parseWrk(clean)
	if err != nil || r.Non2xx != 0 || r.SocketErrors != 0 || r.P99 != 1500*time.Millisecond || r.run().Failures != 0 {
		t.Errorf("clean run %+v %v", r, err)
	}

	for name, out := range map[string]string{
		"no --latency":     wrkSample[:strings.Index(wrkSample, "  Latency Distribution")] + wrkSample[strings.Index(wrkSample, "  60993 requests"):],
		"no Requests/sec":  strings.Replace(wrkSample, "Requests/sec:  20311.47\n", "", 1),
		"no requests line": strings.Replace(wrkSample, "  60993 requests in 3.00s, 8.72MB read\n", "", 1),
		"unknown unit":     strings.Replace(wrkSample, "655.00us", "655.00ns", 1),
		"bad socket line":  strings.Replace(wrkSample, "timeout 3", "timeout three", 1),
		"empty":            "",
	} {
		if _, err := parseWrk(out); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// A variant other than defaults has its sides' labels in the report, and
// one row of figures among the targets without a verdict (issue 27's
// targets are for Bifrost's defaults against reverse_proxy).
func TestOverheadReportNamesTheSides(t *testing.T) {
	run := func(tp, p99 float64) overheadRun {
		return overheadRun{Throughput: tp, P99MS: p99, Requests: 1000, CPUPerRequestUS: 50, CPUSecondsPer10k: 0.5, AllocObjectsPerRequest: 200, AllocBytesPerRequest: 9000}
	}
	o := &OverheadResult{Settings: overheadSettings{Variant: "fleet", Load: loadWrk, Schedule: scheduleAlternate, A: "Bifrost (no fleet)", B: "Bifrost (fleet)", Clients: 16, Duration: time.Second}}
	for i := range 5 {
		o.Pairs = append(o.Pairs, newOverheadPair(run(1000, 2), run(990, 2.1), i%2 == 1))
	}
	o.summarize()
	if o.MedianThroughputRatio != 0.99 || o.MedianP99Ratio != 1.05 {
		t.Fatalf("medians %+v", o)
	}
	ts := o.targets()
	if len(ts) != 1 || ts[0].Met != nil || !strings.Contains(ts[0].Target, "variant fleet: Bifrost (fleet) over Bifrost (no fleet)") || !strings.Contains(ts[0].Measured, "throughput 0.990×") {
		t.Errorf("targets %+v", ts)
	}
	var b strings.Builder
	markdownOverhead(&b, o)
	for _, want := range []string{"## Happy path (variant fleet): Bifrost (fleet) vs Bifrost (no fleet)", "A is Bifrost (no fleet), B is Bifrost (fleet). wrk, 2 threads and 16 connections", "| 2 | B | 1000 | 990 | 0.990 |"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, b.String())
		}
	}
	if s := o.String(); !strings.Contains(s, "variant fleet, wrk load, alternate schedule; B Bifrost (fleet) over A Bifrost (no fleet)") {
		t.Errorf("summary %q", s)
	}
	// the defaults variant keeps issue 27's targets, with verdicts
	o.Settings.Variant = "defaults"
	if ts := o.targets(); len(ts) != 4 || ts[0].Met == nil {
		t.Errorf("defaults targets %+v", ts)
	}
}

// Alternate pairs are two rounds of one proxy each, A first in even pairs
// (counted from 0) and B first in odd ones; together pairs are one round
// of both.
func TestOverheadRounds(t *testing.T) {
	alt := overheadSettings{Schedule: scheduleAlternate}
	tog := overheadSettings{Schedule: scheduleTogether}
	for _, tc := range []struct {
		s      overheadSettings
		i      int
		want   [][]int
		bFirst bool
	}{
		{alt, 0, [][]int{{0}, {1}}, false},
		{alt, 1, [][]int{{1}, {0}}, true},
		{alt, 2, [][]int{{0}, {1}}, false},
		{tog, 0, [][]int{{0, 1}}, false},
		{tog, 1, [][]int{{0, 1}}, false},
	} {
		if got := tc.s.rounds(tc.i); !slices.EqualFunc(got, tc.want, slices.Equal) || tc.s.bFirst(tc.i) != tc.bFirst {
			t.Errorf("%s pair %d: rounds %v, B first %v; want %v, %v", tc.s.Schedule, tc.i, got, tc.s.bFirst(tc.i), tc.want, tc.bFirst)
		}
	}
	if alt.wrkThreads() != 2 || tog.wrkThreads() != 1 {
		t.Errorf("wrk threads: alternate %d, together %d", alt.wrkThreads(), tog.wrkThreads())
	}
}

// The report says how the pairs were run: a together pair has no first
// run, and each proxy had its own load generator.
func TestOverheadReportNamesTheSchedule(t *testing.T) {
	run := overheadRun{Throughput: 1000, P99MS: 2, Requests: 1000, CPUPerRequestUS: 50}
	for _, tc := range []struct {
		s    overheadSettings
		want []string
	}{
		{overheadSettings{Schedule: scheduleTogether, Load: loadClosed, Clients: 32},
			[]string{"One closed loop of 32 clients per proxy", "A and B loaded at the same time", "| 1 | both |"}},
		{overheadSettings{Schedule: scheduleTogether, Load: loadWrk, Clients: 32},
			[]string{"One wrk per proxy, 1 thread and 32 connections each", "A and B loaded at the same time"}},
		{overheadSettings{Schedule: scheduleAlternate, Load: loadClosed, Clients: 32},
			[]string{"Closed loop, 32 clients", "back to back", "| 2 | B |"}},
	} {
		o := &OverheadResult{Settings: tc.s}
		for i := range 2 {
			o.Pairs = append(o.Pairs, newOverheadPair(run, run, tc.s.bFirst(i)))
		}
		var b strings.Builder
		markdownOverhead(&b, o)
		for _, want := range tc.want {
			if !strings.Contains(b.String(), want) {
				t.Errorf("%s %s: markdown lacks %q:\n%s", tc.s.Schedule, tc.s.Load, want, b.String())
			}
		}
		if s := o.String(); !strings.Contains(s, tc.s.Schedule+" schedule") {
			t.Errorf("summary %q lacks the schedule", s)
		}
	}
}

// measured loads its proxies at the same time and reads each process's
// CPU time and allocations around the common window, per request of its
// own run; a load's error is the round's.
func TestMeasuredLoadsTogether(t *testing.T) {
	admin := debugVarsPort(t)
	// both sides are this process, told apart by their proxy port
	self, err := os.FindProcess(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	a := &caddyProc{cmd: &exec.Cmd{Process: self}, admin: admin, port: 1}
	b := &caddyProc{cmd: &exec.Cmd{Process: self}, admin: admin, port: 2}

	var started sync.WaitGroup
	started.Add(2)
	var keep [][]byte
	var mu sync.Mutex
	load := func(ctx context.Context, p *caddyProc, d time.Duration) (overheadRun, error) {
		started.Done()
		started.Wait() // returns only once both loads run
		mu.Lock()
		for range 1000 {
			keep = append(keep, make([]byte, 64))
		}
		mu.Unlock()
		// some CPU time, so that the window has a tick of it
		cpu0, _ := processCPU(os.Getpid())
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
			if c, err := processCPU(os.Getpid()); err != nil || c-cpu0 >= 20*time.Millisecond {
				break
			}
		}
		return overheadRun{Requests: 1000 * p.port, Throughput: float64(p.port)}, nil
	}
	done := make(chan struct{})
	var runs []overheadRun
	go func() {
		defer close(done)
		runs, err = measured(context.Background(), []*caddyProc{a, b}, time.Second, load)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the two loads did not run at the same time")
	}
	if err != nil || len(runs) != 2 {
		t.Fatalf("runs %+v, error %v", runs, err)
	}
	for i, r := range runs {
		if r.Requests != 1000*(i+1) || r.AllocObjectsPerRequest <= 0 || r.AllocBytesPerRequest <= 0 {
			t.Errorf("run %d: %+v", i, r)
		}
		if runtime.GOOS == "linux" && r.CPUPerRequestUS <= 0 {
			t.Errorf("run %d: no CPU time: %+v", i, r)
		}
	}
	// the same process over (nearly) the same window, and B's run twice
	// the requests: B's CPU per request is about half A's
	if runtime.GOOS == "linux" && runs[1].CPUPerRequestUS >= runs[0].CPUPerRequestUS {
		t.Errorf("CPU per request: A %.1f µs, B %.1f µs on twice the requests", runs[0].CPUPerRequestUS, runs[1].CPUPerRequestUS)
	}

	failing := func(ctx context.Context, p *caddyProc, d time.Duration) (overheadRun, error) {
		if p == b {
			return overheadRun{}, fmt.Errorf("wrk on B failed")
		}
		return overheadRun{Requests: 1}, nil
	}
	if _, err := measured(context.Background(), []*caddyProc{a, b}, time.Second, failing); err == nil || !strings.Contains(err.Error(), "wrk on B failed") {
		t.Errorf("a failing load: error %v", err)
	}
}
