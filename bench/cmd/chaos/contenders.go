package main

import (
	"fmt"
	"slices"
	"strings"
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
	site func(upstreams []string) string
}

// runsIn reports whether c runs in scenario sc.
func (c contender) runsIn(sc scenario) bool {
	return len(c.DefaultScenarios) == 0 || slices.Contains(c.DefaultScenarios, sc.Name)
}

// bifrostSite is the site of the Bifrost contenders: active health checks
// on /health every second, every other setting at its default, plus the
// subdirectives in extra (Caddyfile lines, one tab deep).
func bifrostSite(ups []string, extra ...string) string {
	var b strings.Builder
	b.WriteString("bifrost " + strings.Join(ups, " ") + " {\n\thealth {\n\t\turi /health\n\t\tinterval 1s\n\t}\n")
	for _, line := range extra {
		b.WriteString("\t" + line + "\n")
	}
	b.WriteString("}")
	return b.String()
}

// The contenders, in the order of the tables.
var (
	bifrostContender = contender{
		Name:    "bifrost",
		Label:   "Bifrost",
		Bifrost: true,
		site:    func(ups []string) string { return bifrostSite(ups) },
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
		site:             func(ups []string) string { return bifrostSite(ups, "retry {", "\thedge auto", "}") },
	}
	plainContender = contender{
		Name:  "plain",
		Label: "reverse_proxy",
		site:  func(ups []string) string { return "reverse_proxy " + strings.Join(ups, " ") },
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
		site: func(ups []string) string {
			return fmt.Sprintf(`reverse_proxy %s {
	lb_policy %s
	lb_retries 2
	lb_try_duration 1s
	lb_retry_match {
		method GET HEAD
	}
	lb_retry_match {
		method GET HEAD
		expression `+"`{rp.status_code} in [429, 500, 502, 503, 504]`"+`
	}
	fail_duration 10s
	max_fails 3
	unhealthy_status 5xx
	health_uri /health
	health_interval 1s
}`, strings.Join(ups, " "), policy)
		},
	}
}

// overheadBifrost is Bifrost for the happy-path comparison against plain
// reverse_proxy: its defaults only, or with lb_policy policy if given.
func overheadBifrost(policy string) contender {
	return contender{
		Name:    "bifrost",
		Label:   "Bifrost (defaults)",
		Bifrost: true,
		site: func(ups []string) string {
			if policy == "" {
				return "bifrost " + strings.Join(ups, " ")
			}
			return fmt.Sprintf("bifrost %s {\n\tlb_policy %s\n}", strings.Join(ups, " "), policy)
		},
	}
}

// selectContenders returns the contenders named in list (comma-separated),
// in table order; "all" selects every one in every scenario. "" (the
// default run) selects every one too, but a contender with
// DefaultScenarios runs only in those; named in list, or with "all", it
// runs in every scenario.
func selectContenders(list, tunedPolicy string) ([]contender, error) {
	all := []contender{bifrostContender, hedgeContender, plainContender, tunedContender(tunedPolicy)}
	cs, err := selectNamed(all, func(c contender) string { return c.Name }, list, "contender", "bifrost, hedge, plain, tuned")
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
