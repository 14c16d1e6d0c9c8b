package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// contender is one proxy configuration under test; all of them run on
// the same Caddy binary.
type contender struct {
	// Name is the short id used in flags and JSON.
	Name string
	// Label is the name shown in tables.
	Label string
	// Bifrost is true for a Bifrost contender, whose admin API is polled.
	Bifrost bool
	// DefaultScenarios, if not empty, are the only scenarios the
	// contender runs in when -contenders is not given: it is a variant
	// that only matters there. Named with -contenders (or "all") it runs
	// in every selected scenario. selectContenders clears it then.
	DefaultScenarios []string
	// site returns the proxy directive for upstreams.
	site func(u upstreams) string
	// Global is the contender's own global options (Caddyfile lines, one
	// tab deep inside the global block), such as the bifrost app's fleet;
	// nil for none.
	Global []string
}

// upstreams is where a contender's upstreams come from: fixed addresses,
// and/or the lines of a `dynamic` subdirective (one tab deep inside the
// directive's block).
type upstreams struct {
	Static  []string
	Dynamic []string
	// Backup are backup upstreams (Bifrost's `backup` subdirective).
	Backup []string
}

// staticUpstreams is a fixed list of addresses.
func staticUpstreams(addrs ...string) upstreams { return upstreams{Static: addrs} }

// args is the directive's arguments: the static addresses after a space,
// or "".
func (u upstreams) args() string {
	if len(u.Static) == 0 {
		return ""
	}
	return " " + strings.Join(u.Static, " ")
}

// dynamicA is the subdirective that takes the upstreams from the A
// records of name, on port, asked of the DNS server at resolver every
// refresh.
func dynamicA(name, port, resolver string, refresh time.Duration) []string {
	return []string{
		fmt.Sprintf("dynamic a %s %s {", name, port),
		"\tresolvers " + resolver,
		"\trefresh " + refresh.String(),
		"}",
	}
}

// block writes directive with u's arguments and a block holding u's
// dynamic lines then lines (each one tab deep), or no block when both are
// empty.
func block(directive string, u upstreams, lines ...string) string {
	all := append(append([]string{}, u.Dynamic...), lines...)
	if len(u.Backup) > 0 {
		all = append(all, "backup "+strings.Join(u.Backup, " "))
	}
	if len(all) == 0 {
		return directive + u.args()
	}
	var b strings.Builder
	b.WriteString(directive + u.args() + " {\n")
	for _, line := range all {
		b.WriteString("\t" + line + "\n")
	}
	b.WriteString("}")
	return b.String()
}

// caddyfile is c's part of a Caddyfile in front of u, for the report: its
// global options in a global block, if it has any, then its site.
func (c contender) caddyfile(u upstreams) string {
	if len(c.Global) == 0 {
		return c.site(u)
	}
	return "{\n\t" + strings.Join(c.Global, "\n\t") + "\n}\n" + c.site(u)
}

// runsIn reports whether c runs in scenario sc.
func (c contender) runsIn(sc scenario) bool {
	if sc.Backup && !c.Bifrost {
		return false // reverse_proxy has no backup upstreams
	}
	return len(c.DefaultScenarios) == 0 || slices.Contains(c.DefaultScenarios, sc.Name)
}

// Subdirectives shared by several contenders (Caddyfile lines, one tab
// deep inside the directive's block). The backends answer health probes
// on /health (faultserver's default health path).
var (
	// bifrostHealth is Bifrost's active health checks every second.
	bifrostHealth = []string{"health {", "\turi /health", "\tinterval 1s", "}"}
	// plainHealth is reverse_proxy's active health checks every second.
	plainHealth = []string{"health_uri /health", "health_interval 1s"}
	// bifrostHedge is Bifrost's hedged requests, after the pool's p95.
	bifrostHedge = []string{"retry {", "\thedge auto", "}"}
)

// bifrostSite is the site of the Bifrost contenders: active health checks
// on /health every second, every other setting at its default, plus the
// subdirectives in extra (Caddyfile lines, one tab deep).
func bifrostSite(u upstreams, extra ...string) string {
	return block("bifrost", u, slices.Concat(bifrostHealth, extra)...)
}

// The contenders, in the order of the tables.
var (
	bifrostContender = contender{
		Name:    "bifrost",
		Label:   "Bifrost",
		Bifrost: true,
		site:    func(u upstreams) string { return bifrostSite(u) },
	}
	// hedgeContender is bifrostContender with hedged requests on (the
	// one difference), to answer the hung-backend target with hedging on
	// and off side by side. Hedging only changes anything where a
	// backend is slow to answer, so by default it runs only there.
	hedgeContender = contender{
		Name:             "hedge",
		Label:            "Bifrost (hedging)",
		Bifrost:          true,
		DefaultScenarios: []string{"slow300", "hang"},
		site:             func(u upstreams) string { return bifrostSite(u, bifrostHedge...) },
	}
	// defaultsContender is Bifrost as a new user writes it: no setting
	// at all, so no health block, and a hang is found by its suspicion
	// probe alone (HEAD /). It matters where a backend hangs or is slow.
	defaultsContender = contender{
		Name:             "defaults",
		Label:            "Bifrost (defaults)",
		Bifrost:          true,
		DefaultScenarios: []string{"hang", "slow-endpoint"},
		site:             func(u upstreams) string { return block("bifrost", u) },
	}
	// leastConnContender is defaultsContender with lb_policy least_conn,
	// which sends a hung worker one request and then avoids it: a single
	// request waits there, and the pool keeps answering around it.
	leastConnContender = contender{
		Name:             "leastconn",
		Label:            "Bifrost (least_conn)",
		Bifrost:          true,
		DefaultScenarios: []string{"hang", "slow-endpoint"},
		site:             func(u upstreams) string { return block("bifrost", u, "lb_policy least_conn") },
	}
	plainContender = contender{
		Name:  "plain",
		Label: "reverse_proxy",
		site:  func(u upstreams) string { return block("reverse_proxy", u) },
	}
)

// tunedContender is reverse_proxy configured the way a competent operator
// would: a load-aware policy, retries on another upstream (transport
// errors and failure statuses, for GET and HEAD only), passive health
// that takes a failing upstream out for 10 s, and active health checks.
func tunedContender(policy string) contender {
	return contender{
		Name:  "tuned",
		Label: "reverse_proxy (tuned)",
		site: func(u upstreams) string {
			return block("reverse_proxy", u, slices.Concat([]string{
				"lb_policy " + policy,
				"lb_retries 2",
				"lb_try_duration 1s",
				"lb_retry_match {",
				"\tmethod GET HEAD",
				"}",
				"lb_retry_match {",
				"\tmethod GET HEAD",
				"\texpression `{rp.status_code} in [429, 500, 502, 503, 504]`",
				"}",
				"fail_duration 10s",
				"max_fails 3",
				"unhealthy_status 5xx",
			}, plainHealth)...)
		},
	}
}

// overheadBifrost is Bifrost for the happy path: its defaults, with
// lb_policy policy if given, plus the subdirectives in extra. what says
// how it differs from its defaults, for its label.
func overheadBifrost(what, policy string, extra ...string) contender {
	lines := extra
	if policy != "" {
		what += ", lb_policy " + policy
		lines = slices.Concat([]string{"lb_policy " + policy}, extra)
	}
	return contender{
		Name:    "bifrost",
		Label:   "Bifrost (" + what + ")",
		Bifrost: true,
		site:    func(u upstreams) string { return block("bifrost", u, lines...) },
	}
}

// fleetSecret is the secret the fleet variant's instance signs its
// verdicts with.
const fleetSecret = "bench-secret"

// fleetGlobal is the global option that makes Caddy's bifrost app join
// the fleet whose store is the Redis server at url.
func fleetGlobal(url string) []string {
	return []string{"bifrost {", "\tfleet " + url + " {", "\t\tsecret " + fleetSecret, "\t}", "}"}
}

// overheadVariant is one happy-path comparison: what its sides A and B
// are. Both run on the same binary in front of the same three healthy
// backends, and B is measured against A.
type overheadVariant struct {
	// Name is the value of -overhead-variant.
	Name string
	// Fleet is true when B joins a fleet, whose Redis server the happy
	// path then starts.
	Fleet bool
	// sides returns A and B. policy is Bifrost's lb_policy ("" for its
	// default); fleet is the Redis URL of the fleet, "" unless Fleet.
	sides func(policy, fleet string) (a, b contender)
}

// overheadVariants are the happy path's comparisons, the first one the
// default.
var overheadVariants = []overheadVariant{
	{
		// Bifrost as a new user writes it against plain reverse_proxy
		Name: "defaults",
		sides: func(policy, _ string) (contender, contender) {
			return plainContender, overheadBifrost("defaults", policy)
		},
	},
	{
		// what hedging costs while no backend is slow
		Name: "hedge",
		sides: func(policy, _ string) (contender, contender) {
			return plainContender, overheadBifrost("hedge auto", policy, bifrostHedge...)
		},
	},
	{
		// both with active health checks every second
		Name: "health",
		sides: func(policy, _ string) (contender, contender) {
			plain := contender{
				Name:  "plain",
				Label: "reverse_proxy (health checks)",
				site:  func(u upstreams) string { return block("reverse_proxy", u, plainHealth...) },
			}
			return plain, overheadBifrost("health checks", policy, bifrostHealth...)
		},
	},
	{
		// what a fleet costs while no worker fails: Bifrost against
		// itself, B in a fleet of one
		Name:  "fleet",
		Fleet: true,
		sides: func(policy, fleet string) (contender, contender) {
			b := overheadBifrost("fleet", policy)
			b.Global = fleetGlobal(fleet)
			return overheadBifrost("no fleet", policy), b
		},
	},
	{
		// two builds of Bifrost against each other (-caddy-b): what a
		// change to the request path costs, or, with one build, how far
		// apart two identical sides measure
		Name: "builds",
		sides: func(policy, _ string) (contender, contender) {
			return overheadBifrost("defaults, build A", policy), overheadBifrost("defaults, build B", policy)
		},
	},
}

// overheadVariantNames lists the variants' names for flag help and
// errors.
func overheadVariantNames() string {
	names := make([]string, len(overheadVariants))
	for i, v := range overheadVariants {
		names[i] = v.Name
	}
	return strings.Join(names, ", ")
}

// findOverheadVariant returns the variant called name; an unknown name is
// an error naming the flag and the variants.
func findOverheadVariant(name string) (overheadVariant, error) {
	for _, v := range overheadVariants {
		if v.Name == name {
			return v, nil
		}
	}
	return overheadVariant{}, fmt.Errorf("unknown -overhead-variant %q (want %s)", name, overheadVariantNames())
}

// selectContenders returns the contenders named in list (comma-separated),
// in table order; "all" selects every one in every scenario. "" (the
// default run) selects every one too, but a contender with
// DefaultScenarios runs only in those; named in list, or with "all", it
// runs in every scenario.
func selectContenders(list, tunedPolicy string) ([]contender, error) {
	all := []contender{bifrostContender, hedgeContender, defaultsContender, leastConnContender, plainContender, tunedContender(tunedPolicy)}
	cs, err := selectNamed(all, func(c contender) string { return c.Name }, list, "contender", "bifrost, hedge, defaults, leastconn, plain, tuned")
	if err != nil || list == "" {
		return cs, err
	}
	out := make([]contender, len(cs))
	for i, c := range cs {
		c.DefaultScenarios = nil
		out[i] = c
	}
	return out, nil
}

// contendersIn returns the contenders of cs that run in scenario sc, in
// table order.
func contendersIn(sc scenario, cs []contender) []contender {
	var out []contender
	for _, c := range cs {
		if c.runsIn(sc) {
			out = append(out, c)
		}
	}
	return out
}

// selectNamed returns the items of all named in list (comma-separated),
// in the order of all; "" or "all" selects every one. An unknown name is
// an error that says what was expected.
func selectNamed[T any](all []T, name func(T) string, list, what, valid string) ([]T, error) {
	if list == "" || list == "all" {
		return all, nil
	}
	want := map[string]bool{}
	for _, n := range strings.Split(list, ",") {
		want[strings.TrimSpace(n)] = true
	}
	var out []T
	for _, item := range all {
		if want[name(item)] {
			out = append(out, item)
			delete(want, name(item))
		}
	}
	for n := range want {
		return nil, fmt.Errorf("unknown %s %q (want %s)", what, n, valid)
	}
	return out, nil
}
