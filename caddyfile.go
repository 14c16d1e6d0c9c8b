package bifrost

import (
	"net"
	"net/http"
	"reflect"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"

	"github.com/bifrost-proxy/bifrost/recovery"
)

func init() {
	httpcaddyfile.RegisterDirective("bifrost", parseDirective)
	httpcaddyfile.RegisterDirectiveOrder("bifrost", httpcaddyfile.Before, "reverse_proxy")
}

// parseDirective is what httpcaddyfile.RegisterHandlerDirective would
// register, plus a readable default pool name: it reads the directive's
// own matcher token before the route takes it away.
func parseDirective(h httpcaddyfile.Helper) ([]httpcaddyfile.ConfigValue, error) {
	if !h.Next() {
		return nil, h.ArgErr()
	}
	var matcher string
	if h.NextArg() {
		matcher = h.Val()
	}
	h.Reset()
	h.Next()
	matcherSet, err := h.ExtractMatcherSet()
	if err != nil {
		return nil, err
	}
	b, err := parseCaddyfile(h)
	if err != nil {
		return nil, err
	}
	if b.Name == "" {
		b.Name = defaultCaddyfileName(h, matcher, b)
	}
	return h.NewRoute(matcherSet, b), nil
}

// parseCaddyfile sets up the handler from Caddyfile tokens.
func parseCaddyfile(h httpcaddyfile.Helper) (*Handler, error) {
	b := new(Handler)
	if err := b.unmarshal(h.Dispenser, &h); err != nil {
		return nil, err
	}
	return b, nil
}

// defaultNamesKey keys, in the adapter's state, the default pool names
// given so far in this Caddyfile and the upstreams of each.
const defaultNamesKey = "bifrost.default_pool_names"

// defaultCaddyfileName names the pool of a bifrost directive without
// `name` after where it serves: the site's first address and the
// directive's own path or named matcher, e.g. `example.com-api` for
// `bifrost /api/* ...` in `example.com { }`, `port-8080` for the site
// `:8080`. A second directive that would get the same name with other
// upstreams gets the hash of its upstreams appended (`example.com-
// 1a2b3c4d`), so two pools never share a name by accident; directives
// with the same name and upstreams share the pool, as they did with the
// hash alone. The name depends only on the Caddyfile, so every instance
// with the same Caddyfile gets the same names. Without a site address to
// read, the handler keeps its JSON default (see defaultPoolName).
func defaultCaddyfileName(h httpcaddyfile.Helper, matcher string, b *Handler) string {
	site := siteName(firstSiteKey(h))
	if site == "" || h.State == nil {
		return ""
	}
	name := site
	if route := routeName(matcher); route != "" {
		name += "-" + route
	}
	upstreams := defaultPoolName(b.Upstreams, b.DynamicUpstreamsRaw)
	names, _ := h.State[defaultNamesKey].(map[string]string)
	if names == nil {
		names = make(map[string]string)
		h.State[defaultNamesKey] = names
	}
	if ups, taken := names[name]; taken && ups != upstreams {
		name += "-" + strings.TrimPrefix(upstreams, "pool-")
	}
	names[name] = upstreams
	return name
}

// firstSiteKey returns the first address of the site block the helper
// parses. httpcaddyfile keeps the block unexported; it is read (never
// written) by reflection, and a Caddy whose Helper no longer has it gives
// "", which leaves the name to the JSON default. TestDefaultPoolNames
// fails if that happens.
func firstSiteKey(h httpcaddyfile.Helper) string {
	block := reflect.ValueOf(h).FieldByName("parentBlock")
	if !block.IsValid() || block.Kind() != reflect.Struct {
		return ""
	}
	keys := block.FieldByName("Keys")
	if !keys.IsValid() || keys.Kind() != reflect.Slice || keys.Len() == 0 {
		return ""
	}
	key := keys.Index(0)
	if key.Kind() != reflect.Struct {
		return ""
	}
	text := key.FieldByName("Text")
	if !text.IsValid() || text.Kind() != reflect.String {
		return ""
	}
	return text.String()
}

// siteName makes a site address into the first part of a pool name:
// scheme dropped, a port kept after a dash, a site without a host
// named after its port.
func siteName(addr string) string {
	addr = strings.TrimPrefix(strings.TrimPrefix(addr, "https://"), "http://")
	if strings.HasPrefix(addr, ":") {
		addr = "port" + addr
	}
	return nameSafe(addr)
}

// routeName makes a directive's matcher token into the route part of a
// pool name: `/api/*` is `api`, `@static` is `static`; `*`, `/` and a
// token that is no matcher (an upstream) give "".
func routeName(matcher string) string {
	switch {
	case strings.HasPrefix(matcher, "@"):
		return nameSafe(matcher[1:])
	case strings.HasPrefix(matcher, "/"):
		return nameSafe(matcher)
	}
	return ""
}

// nameSafe keeps letters, digits, '.', '_' and '-' (what worker ids
// keep, see pool.WorkerID), makes each run of anything else one '-', trims
// separators from both ends and caps the length.
func nameSafe(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			b.WriteRune(r)
			dash = false
		case !dash:
			b.WriteByte('-')
			dash = true
		}
	}
	out := strings.Trim(b.String(), "-._")
	if len(out) > 64 {
		out = strings.TrimRight(out[:64], "-._")
	}
	return out
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Every
// reverse_proxy subdirective is accepted and applied to each worker; the
// ones below are Bifrost's own. Syntax:
//
//	bifrost [<upstreams...>] {
//	    # every reverse_proxy subdirective: to, transport, header_up, lb_policy, ...
//
//	    name <pool>
//	    max_requests <n>
//	    error_history_limit <n>
//	    backup <upstreams...>
//	    backup min_primary <n>
//
//	    breaker {
//	        failures <n>
//	        failure_ratio <ratio> [min <n>]
//	        window <duration>
//	        successes <n>
//	        timeout <duration>
//	    }
//
//	    retry {
//	        attempts <n>
//	        backoff <initial> [<max>]
//	        jitter <0..1>
//	        try_duration <duration>
//	        per_try_timeout <duration>
//	        budget <ratio>
//	        methods <METHOD...>
//	        on <condition...>
//	        max_body <size>
//	        max_held_response <size>
//	        hedge <delay|auto> [max <n>] [percentile <p>]
//	        match <matcher...>
//	    }
//
//	    health {
//	        uri <path>
//	        interval <duration>
//	        timeout <duration>
//	        expect_status <code|1xx-5xx>
//	        expect_body <regexp>
//	        passes <n>
//	        fails <n>
//	        port <port>
//	        upstream <host:port>
//	        header <field> [<values...>]
//	        method <method>
//	        body <text>
//	        follow_redirects
//	        max_size <size>
//	    }
//
//	    isolation {
//	        base_time <duration>
//	        max_time <duration>
//	        max_percent <0..100>
//	        success_rate <min_requests>|off [<stdev_factor>]
//	        outlier_interval <duration>
//	        slow_start <duration>
//	        breaker_trips <n>
//	        hang_threshold <duration>
//	        hang_requests <n>
//	        max_recovery_attempts <n>
//	    }
//
//	    classify {
//	        status <code|class> <kind> [<action>]
//	    }
//
//	    fallback {
//	        status <code>
//	        body <text>
//	        header <name> <value>
//	    }
//	}
//
// reverse_proxy's own resilience subdirectives are mapped onto these:
// `lb_retries n` is `retry { attempts n+1 }`, `lb_try_duration` is
// `retry { try_duration }`, `lb_try_interval` is `retry { backoff }`,
// `health_uri`/`health_path`, `health_interval`, `health_timeout`,
// `health_status`, `health_body`, `health_passes` and `health_fails` are
// the `health` block's fields, `max_fails` is `breaker { failures }`,
// `fail_duration` is `breaker { window }`, `unhealthy_status` adds a
// `classify` rule and `unhealthy_request_count` is `max_requests`;
// `health_port`, `health_upstream`, `health_headers`, `health_method`,
// `health_request_body` and `health_follow_redirects` are the `health`
// block's `port`, `upstream`, `header`, `method`, `body` and
// `follow_redirects`; `lb_retry_match` is `retry { match }`.
// `unhealthy_latency` is refused with the equivalent to use when
// `fail_duration` is given; without it, and `health_*` subdirectives
// without `health_uri`, `health_path` or `health_port`, are ignored
// with a warning at provision, as reverse_proxy ignores them.
// `request_buffers` applies to each try unchanged: every try reads the
// body from its start (see requestBody).
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return h.unmarshal(d, nil)
}

// unmarshal parses Bifrost's subdirectives, hands every other token to
// reverse_proxy's own parser, then finalizes with the helper when there
// is one (handle_response needs it).
func (h *Handler) unmarshal(d *caddyfile.Dispenser, helper *httpcaddyfile.Helper) error {
	d.Next() // consume the directive name
	rpTokens := []caddyfile.Token{d.Token()}
	rpTokens = append(rpTokens, d.RemainingArgsAsTokens()...)

	p := &parser{h: h}
	var open, body []caddyfile.Token
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if open == nil {
			d.Prev()
			open = []caddyfile.Token{d.Token()}
			d.Next()
		}
		seg := d.NextSegment()
		handled, err := p.segment(caddyfile.NewDispenser(seg))
		if err != nil {
			return err
		}
		if !handled {
			body = append(body, seg...)
		}
	}
	if open != nil {
		rpTokens = append(rpTokens, open...)
		rpTokens = append(rpTokens, body...)
		rpTokens = append(rpTokens, d.Token()) // the closing brace
	}

	rpd := caddyfile.NewDispenser(rpTokens)
	if err := h.Handler.UnmarshalCaddyfile(rpd); err != nil {
		return err
	}
	if helper != nil {
		if err := h.Handler.FinalizeUnmarshalCaddyfile(*helper); err != nil {
			return err
		}
	}
	return p.finish(d)
}

// parser holds what the Caddyfile parser needs across segments.
type parser struct {
	h    *Handler
	seen map[string]bool
	// mapped records reverse_proxy subdirectives that set a Bifrost
	// field, so that setting it both ways is refused.
	mapped map[string]string
	// latency is unhealthy_latency's value, and latencyErr the error
	// at its position, returned if fail_duration is given too.
	latency    string
	latencyErr error
}

// once refuses a subdirective given twice.
func (p *parser) once(d *caddyfile.Dispenser, name string) error {
	if p.seen == nil {
		p.seen = make(map[string]bool)
	}
	if p.seen[name] {
		return d.Errf("%s already specified", name)
	}
	p.seen[name] = true
	return nil
}

// segment parses one top-level subdirective if it is Bifrost's own or a
// reverse_proxy resilience subdirective; it reports whether it did.
func (p *parser) segment(d *caddyfile.Dispenser) (bool, error) {
	d.Next()
	name := d.Val()
	switch name {
	case "name", "max_requests", "error_history_limit", "dynamic_retire_after", "dynamic_max_workers",
		"breaker", "retry", "health", "isolation", "classify", "fallback":
		if err := p.once(d, name); err != nil {
			return true, err
		}
	}
	h := p.h
	switch name {
	case "name":
		return true, singleArg(d, func(v string) error {
			if err := checkPoolName(v); err != nil {
				return d.Errf("name: %v", err)
			}
			h.Name = v
			return nil
		})
	case "max_requests":
		return true, singleArg(d, func(v string) error { return parseInt(d, name, v, &h.MaxRequests) })
	case "error_history_limit":
		return true, singleArg(d, func(v string) error { return parseInt(d, name, v, &h.ErrorHistoryLimit) })
	case "dynamic_retire_after":
		return true, singleArg(d, func(v string) error { return parseDuration(d, name, v, &h.DynamicRetireAfter) })
	case "dynamic_max_workers":
		return true, singleArg(d, func(v string) error { return parseInt(d, name, v, &h.DynamicMaxWorkers) })
	case "breaker":
		h.Breaker = new(BreakerConfig)
		return true, p.breaker(d)
	case "retry":
		h.Retry = ensure(h.Retry)
		return true, p.retry(d)
	case "health":
		h.Health = ensure(h.Health)
		return true, p.health(d)
	case "isolation":
		h.Isolation = new(IsolationConfig)
		return true, p.isolation(d)
	case "classify":
		return true, p.classify(d)
	case "fallback":
		h.Fallback = new(FallbackConfig)
		return true, p.fallback(d)
	case "backup":
		return true, p.backup(d)
	}
	return p.resilience(d, name)
}

// noBlockArgs refuses arguments on a block's opening line.
func noBlockArgs(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

func (p *parser) breaker(d *caddyfile.Dispenser) error {
	if err := noBlockArgs(d); err != nil {
		return err
	}
	bc := p.h.Breaker
	for d.NextBlock(0) {
		sub := d.Val()
		var err error
		switch sub {
		case "failures":
			err = singleArg(d, func(v string) error { return parseInt(d, sub, v, &bc.Failures) })
		case "successes":
			err = singleArg(d, func(v string) error { return parseInt(d, sub, v, &bc.Successes) })
		case "window":
			err = singleArg(d, func(v string) error { return parseDuration(d, sub, v, &bc.Window) })
		case "timeout":
			err = singleArg(d, func(v string) error { return parseDuration(d, sub, v, &bc.Timeout) })
		case "failure_ratio":
			args := d.RemainingArgs()
			if len(args) != 1 && len(args) != 3 {
				return d.ArgErr()
			}
			if err := parseFloat(d, sub, args[0], &bc.FailureRatio); err != nil {
				return err
			}
			if len(args) == 3 {
				if args[1] != "min" {
					return d.Errf("failure_ratio: expected 'min <n>', got %q", args[1])
				}
				err = parseInt(d, "failure_ratio min", args[2], &bc.MinRequests)
			}
		default:
			return d.Errf("unrecognized breaker subdirective %q", sub)
		}
		if err != nil {
			return err
		}
	}
	return wrapValidate(d, bc.validate())
}

func (p *parser) retry(d *caddyfile.Dispenser) error {
	if err := noBlockArgs(d); err != nil {
		return err
	}
	rc := p.h.Retry
	for d.NextBlock(0) {
		sub := d.Val()
		var err error
		switch sub {
		case "attempts":
			err = singleArg(d, func(v string) error { return parseInt(d, sub, v, &rc.Attempts) })
			if err == nil && rc.Attempts < 1 {
				err = d.Errf("attempts must be at least 1, got %d", rc.Attempts)
			}
		case "backoff":
			args := d.RemainingArgs()
			if len(args) < 1 || len(args) > 2 {
				return d.ArgErr()
			}
			if err := parseDuration(d, "backoff initial", args[0], &rc.BackoffInitial); err != nil {
				return err
			}
			if len(args) == 2 {
				err = parseDuration(d, "backoff max", args[1], &rc.BackoffMax)
			}
		case "jitter":
			err = singleArg(d, func(v string) error {
				var j float64
				if err := parseFloat(d, sub, v, &j); err != nil {
					return err
				}
				rc.Jitter = &j
				return nil
			})
		case "try_duration":
			err = singleArg(d, func(v string) error { return parseDuration(d, sub, v, &rc.TryDuration) })
		case "per_try_timeout":
			err = singleArg(d, func(v string) error { return parseDuration(d, sub, v, &rc.PerTryTimeout) })
		case "budget":
			err = singleArg(d, func(v string) error { return parseFloat(d, sub, v, &rc.Budget) })
		case "methods":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			for _, m := range args {
				rc.Methods = append(rc.Methods, strings.ToUpper(m))
			}
		case "on":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			for _, c := range args {
				if _, err := parseRetryCondition(c); err != nil {
					return d.Errf("retry on: %v", err)
				}
			}
			rc.On = append(rc.On, args...)
		case "max_body":
			rc.MaxBody = new(int64)
			err = singleArg(d, func(v string) error { return parseSize(d, sub, v, rc.MaxBody) })
		case "max_body_total":
			err = singleArg(d, func(v string) error { return parseSize(d, sub, v, &rc.MaxBodyTotal) })
		case "hedge":
			hc, err := parseHedge(d)
			if err != nil {
				return err
			}
			rc.Hedge = hc
			continue
		case "max_held_response":
			err = singleArg(d, func(v string) error { return parseSize(d, sub, v, &rc.MaxHeldResponse) })
		case "match":
			err = parseRetryMatch(d, rc)
		default:
			return d.Errf("unrecognized retry subdirective %q", sub)
		}
		if err != nil {
			return err
		}
	}
	return wrapValidate(d, rc.validate())
}

func (p *parser) health(d *caddyfile.Dispenser) error {
	if err := noBlockArgs(d); err != nil {
		return err
	}
	hc := p.h.Health
	for d.NextBlock(0) {
		sub := d.Val()
		var err error
		switch sub {
		case "uri":
			err = singleArg(d, func(v string) error { hc.URI = v; return nil })
		case "interval":
			err = singleArg(d, func(v string) error { return parseDuration(d, sub, v, &hc.Interval) })
		case "timeout":
			err = singleArg(d, func(v string) error { return parseDuration(d, sub, v, &hc.Timeout) })
		case "expect_status":
			err = singleArg(d, func(v string) error { return parseExpectStatus(d, v, &hc.ExpectStatus) })
		case "expect_body":
			err = singleArg(d, func(v string) error { hc.ExpectBody = v; return nil })
		case "passes":
			err = singleArg(d, func(v string) error { return parseInt(d, sub, v, &hc.Passes) })
		case "fails":
			err = singleArg(d, func(v string) error { return parseInt(d, sub, v, &hc.Fails) })
		case "port":
			err = singleArg(d, func(v string) error { return parsePort(d, sub, v, &hc.Port) })
		case "upstream":
			err = singleArg(d, func(v string) error { hc.Upstream = v; return nil })
		case "header":
			err = parseProbeHeader(d, hc)
		case "method":
			err = singleArg(d, func(v string) error { hc.Method = v; return nil })
		case "body":
			err = singleArg(d, func(v string) error { hc.Body = v; return nil })
		case "follow_redirects":
			if d.NextArg() {
				return d.ArgErr()
			}
			hc.FollowRedirects = true
		case "max_size":
			err = singleArg(d, func(v string) error { return parseSize(d, sub, v, &hc.MaxSize) })
		default:
			return d.Errf("unrecognized health subdirective %q", sub)
		}
		if err != nil {
			return err
		}
	}
	return wrapValidate(d, hc.validate())
}

func (p *parser) isolation(d *caddyfile.Dispenser) error {
	if err := noBlockArgs(d); err != nil {
		return err
	}
	ic := p.h.Isolation
	for d.NextBlock(0) {
		sub := d.Val()
		var err error
		switch sub {
		case "base_time":
			err = singleArg(d, func(v string) error { return parseDuration(d, sub, v, &ic.BaseTime) })
		case "max_time":
			err = singleArg(d, func(v string) error { return parseDuration(d, sub, v, &ic.MaxTime) })
		case "slow_start":
			err = singleArg(d, func(v string) error { return parseDuration(d, sub, v, &ic.SlowStart) })
		case "outlier_interval":
			err = singleArg(d, func(v string) error { return parseDuration(d, sub, v, &ic.OutlierInterval) })
		case "max_percent":
			err = singleArg(d, func(v string) error {
				var pct int
				if err := parseInt(d, sub, strings.TrimSuffix(v, "%"), &pct); err != nil {
					return err
				}
				ic.MaxPercent = &pct
				return nil
			})
		case "success_rate":
			args := d.RemainingArgs()
			if len(args) < 1 || len(args) > 2 {
				return d.ArgErr()
			}
			n := 0
			if args[0] != "off" {
				if err := parseInt(d, "success_rate min_requests", args[0], &n); err != nil {
					return err
				}
			} else if len(args) > 1 {
				return d.ArgErr()
			}
			ic.SuccessRateMinRequests = &n
			if len(args) == 2 {
				err = parseFloat(d, "success_rate stdev_factor", args[1], &ic.SuccessRateStdevFactor)
			}
		case "hang_threshold":
			err = singleArg(d, func(v string) error { return parseDuration(d, sub, v, &ic.HangThreshold) })
		case "hang_requests":
			err = singleArg(d, func(v string) error { return parseInt(d, sub, v, &ic.HangRequests) })
		case "breaker_trips":
			err = singleArg(d, func(v string) error { return parseInt(d, sub, v, &ic.BreakerTrips) })
		case "max_recovery_attempts":
			err = singleArg(d, func(v string) error { return parseInt(d, sub, v, &ic.MaxRecoveryAttempts) })
		default:
			return d.Errf("unrecognized isolation subdirective %q", sub)
		}
		if err != nil {
			return err
		}
	}
	return wrapValidate(d, ic.validate())
}

func (p *parser) classify(d *caddyfile.Dispenser) error {
	if err := noBlockArgs(d); err != nil {
		return err
	}
	for d.NextBlock(0) {
		if d.Val() != "status" {
			return d.Errf("unrecognized classify subdirective %q (want 'status <code|class> <kind> [<action>]')", d.Val())
		}
		args := d.RemainingArgs()
		if len(args) < 2 || len(args) > 3 {
			return d.ArgErr()
		}
		rule := ClassifyRule{Status: args[0], Kind: args[1]}
		if len(args) == 3 {
			rule.Action = args[2]
		}
		if _, err := recovery.ParseRule(rule.Status, rule.Kind, rule.Action); err != nil {
			return d.Errf("classify: %v", err)
		}
		p.h.Classify = append(p.h.Classify, rule)
	}
	return nil
}

func (p *parser) fallback(d *caddyfile.Dispenser) error {
	if err := noBlockArgs(d); err != nil {
		return err
	}
	fc := p.h.Fallback
	for d.NextBlock(0) {
		sub := d.Val()
		var err error
		switch sub {
		case "status":
			err = singleArg(d, func(v string) error { return parseInt(d, sub, v, &fc.Status) })
		case "body":
			err = singleArg(d, func(v string) error { fc.Body = v; return nil })
		case "header":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.ArgErr()
			}
			if fc.Headers == nil {
				fc.Headers = make(http.Header)
			}
			fc.Headers.Add(args[0], args[1])
		default:
			return d.Errf("unrecognized fallback subdirective %q", sub)
		}
		if err != nil {
			return err
		}
	}
	return wrapValidate(d, fc.validate())
}

// parseHedge parses `hedge <delay|auto> [max <n>] [percentile <p>]`.
func parseHedge(d *caddyfile.Dispenser) (*HedgeConfig, error) {
	args := d.RemainingArgs()
	if len(args) == 0 || len(args)%2 == 0 {
		return nil, d.ArgErr()
	}
	hc := new(HedgeConfig)
	if args[0] != "auto" {
		if err := parseDuration(d, "hedge", args[0], &hc.Delay); err != nil {
			return nil, err
		}
		if hc.Delay == 0 {
			return nil, d.Errf("hedge: delay must be above zero, or 'auto'")
		}
	}
	for i := 1; i < len(args); i += 2 {
		switch args[i] {
		case "max":
			if err := parseInt(d, "hedge max", args[i+1], &hc.Max); err != nil {
				return nil, err
			}
		case "percentile":
			if err := parseFloat(d, "hedge percentile", args[i+1], &hc.Percentile); err != nil {
				return nil, err
			}
		default:
			return nil, d.Errf("hedge: unknown option %q (want max or percentile)", args[i])
		}
	}
	return hc, nil
}

// resilience maps reverse_proxy's own resilience subdirectives onto
// Bifrost's, or refuses them naming the equivalent. Anything else is left
// to reverse_proxy's parser.
func (p *parser) resilience(d *caddyfile.Dispenser, name string) (bool, error) {
	h := p.h
	switch name {
	case "lb_retries":
		return true, p.mapped1(d, name, "retry attempts", func(v string) error {
			var n int
			if err := parseInt(d, name, v, &n); err != nil {
				return err
			}
			h.Retry = ensure(h.Retry)
			h.Retry.Attempts = n + 1
			return nil
		})
	case "lb_try_duration":
		return true, p.mapped1(d, name, "retry try_duration", func(v string) error {
			h.Retry = ensure(h.Retry)
			return parseDuration(d, name, v, &h.Retry.TryDuration)
		})
	case "lb_try_interval":
		return true, p.mapped1(d, name, "retry backoff", func(v string) error {
			h.Retry = ensure(h.Retry)
			return parseDuration(d, name, v, &h.Retry.BackoffInitial)
		})
	case "health_uri", "health_path":
		return true, p.mapped1(d, name, "health uri", func(v string) error {
			h.Health = ensure(h.Health)
			h.Health.URI = v
			return nil
		})
	case "health_interval":
		return true, p.mapped1(d, name, "health interval", func(v string) error {
			h.Health = ensure(h.Health)
			return parseDuration(d, name, v, &h.Health.Interval)
		})
	case "health_timeout":
		return true, p.mapped1(d, name, "health timeout", func(v string) error {
			h.Health = ensure(h.Health)
			return parseDuration(d, name, v, &h.Health.Timeout)
		})
	case "health_status":
		return true, p.mapped1(d, name, "health expect_status", func(v string) error {
			h.Health = ensure(h.Health)
			return parseExpectStatus(d, v, &h.Health.ExpectStatus)
		})
	case "health_body":
		return true, p.mapped1(d, name, "health expect_body", func(v string) error {
			h.Health = ensure(h.Health)
			h.Health.ExpectBody = v
			return nil
		})
	case "health_passes":
		return true, p.mapped1(d, name, "health passes", func(v string) error {
			h.Health = ensure(h.Health)
			return parseInt(d, name, v, &h.Health.Passes)
		})
	case "health_fails":
		return true, p.mapped1(d, name, "health fails", func(v string) error {
			h.Health = ensure(h.Health)
			return parseInt(d, name, v, &h.Health.Fails)
		})
	case "health_port":
		return true, p.mapped1(d, name, "health port", func(v string) error {
			h.Health = ensure(h.Health)
			return parsePort(d, name, v, &h.Health.Port)
		})
	case "health_upstream":
		return true, p.mapped1(d, name, "health upstream", func(v string) error {
			h.Health = ensure(h.Health)
			if _, _, err := net.SplitHostPort(v); err != nil {
				return d.Errf("%s: %q must be host:port", name, v)
			}
			h.Health.Upstream = v
			return nil
		})
	case "health_method":
		return true, p.mapped1(d, name, "health method", func(v string) error {
			h.Health = ensure(h.Health)
			h.Health.Method = v
			return nil
		})
	case "health_request_body":
		return true, p.mapped1(d, name, "health body", func(v string) error {
			h.Health = ensure(h.Health)
			h.Health.Body = v
			return nil
		})
	case "health_follow_redirects":
		if err := p.mark(d, name, "health follow_redirects"); err != nil {
			return true, err
		}
		if d.NextArg() {
			return true, d.ArgErr()
		}
		h.Health = ensure(h.Health)
		h.Health.FollowRedirects = true
		return true, nil
	case "health_headers":
		// health_headers {
		//     <field> [<values...>]
		// }
		if err := p.mark(d, name, "health header"); err != nil {
			return true, err
		}
		if d.NextArg() {
			return true, d.ArgErr()
		}
		h.Health = ensure(h.Health)
		for nesting := d.Nesting(); d.NextBlock(nesting); {
			field, values := d.Val(), d.RemainingArgs()
			if len(values) == 0 {
				values = []string{""}
			}
			if h.Health.Headers == nil {
				h.Health.Headers = make(http.Header)
			}
			for _, v := range values {
				h.Health.Headers.Add(field, v)
			}
		}
		return true, nil
	case "max_fails":
		return true, p.mapped1(d, name, "breaker failures", func(v string) error {
			h.Breaker = ensure(h.Breaker)
			return parseInt(d, name, v, &h.Breaker.Failures)
		})
	case "fail_duration":
		return true, p.mapped1(d, name, "breaker window", func(v string) error {
			h.Breaker = ensure(h.Breaker)
			return parseDuration(d, name, v, &h.Breaker.Window)
		})
	case "unhealthy_request_count":
		return true, p.mapped1(d, name, "max_requests", func(v string) error {
			return parseInt(d, name, v, &h.MaxRequests)
		})
	case "unhealthy_status":
		args := d.RemainingArgs()
		if len(args) == 0 {
			return true, d.ArgErr()
		}
		for _, a := range args {
			status := a
			if len(a) == 1 {
				status = a + "xx"
			}
			if _, err := recovery.ParseRule(status, "http", ""); err != nil {
				return true, d.Errf("unhealthy_status: %v", err)
			}
			h.Classify = append(h.Classify, ClassifyRule{Status: status, Kind: "http"})
		}
		return true, nil
	case "lb_retry_match":
		// repeatable, like reverse_proxy's: each one adds a matcher set
		if p.mapped == nil {
			p.mapped = make(map[string]string)
		}
		p.mapped[name] = "retry match"
		h.Retry = ensure(h.Retry)
		return true, parseRetryMatch(d, h.Retry)
	case "unhealthy_latency":
		// refused with fail_duration, which turns reverse_proxy's
		// passive checks on; ignored without it, as reverse_proxy does
		// (see finish)
		if err := p.once(d, name); err != nil {
			return true, err
		}
		p.latencyErr = d.Errf("unhealthy_latency is not supported by bifrost: use 'retry { per_try_timeout <duration> }'")
		return true, singleArg(d, func(v string) error {
			p.latency = v
			return nil
		})
	}
	return false, nil
}

// mapped1 parses a one-argument reverse_proxy subdirective that maps onto
// a Bifrost field, refusing it when given twice.
func (p *parser) mapped1(d *caddyfile.Dispenser, name, equivalent string, set func(string) error) error {
	if err := p.mark(d, name, equivalent); err != nil {
		return err
	}
	return singleArg(d, set)
}

// mark records a reverse_proxy subdirective that maps onto a Bifrost
// field (equivalent, "<block> <field>"), refusing it when given twice.
func (p *parser) mark(d *caddyfile.Dispenser, name, equivalent string) error {
	if err := p.once(d, name); err != nil {
		return err
	}
	if p.mapped == nil {
		p.mapped = make(map[string]string)
	}
	p.mapped[name] = equivalent
	return nil
}

// parseRetryMatch parses `match <matcher...>` (or a block of matchers,
// which must all match) into one more matcher set of rc.
func parseRetryMatch(d *caddyfile.Dispenser, rc *RetryConfig) error {
	name := d.Val()
	set, err := caddyhttp.ParseCaddyfileNestedMatcherSet(d)
	if err != nil {
		return d.Errf("%s: %v", name, err)
	}
	if len(set) == 0 {
		return d.Errf("%s: at least one matcher is required", name)
	}
	rc.MatchRaw = append(rc.MatchRaw, set)
	return nil
}

// parsePort parses a port number, 1-65535.
func parsePort(d *caddyfile.Dispenser, name, v string, dst *int) error {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 65535 {
		return d.Errf("%s: %q is not a port number (1-65535)", name, v)
	}
	*dst = n
	return nil
}

// parseProbeHeader parses `header <field> [<values...>]` of the health
// block; a field without values is sent empty.
func parseProbeHeader(d *caddyfile.Dispenser, hc *HealthConfig) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	field, values := d.Val(), d.RemainingArgs()
	if len(values) == 0 {
		values = []string{""}
	}
	if hc.Headers == nil {
		hc.Headers = make(http.Header)
	}
	for _, v := range values {
		hc.Headers.Add(field, v)
	}
	return nil
}

// finish checks what can only be checked once every segment was read:
// a reverse_proxy subdirective and its Bifrost equivalent both given, and
// the settings that reverse_proxy's subdirectives put together (such as
// health_interval with health_timeout), which no block checked.
func (p *parser) finish(d *caddyfile.Dispenser) error {
	for rp, eq := range p.mapped {
		block := strings.Fields(eq)[0]
		if p.seen[block] {
			return d.Errf("%s conflicts with the %s block: use '%s' only", rp, block, eq)
		}
	}
	h := p.h
	if h.Health != nil && !p.seen["health"] && !h.Health.active() {
		// health_* subdirectives without health_uri, health_path or
		// health_port: reverse_proxy accepts them and runs no active
		// checks. They stay reverse_proxy's own JSON, which Provision
		// ignores with a warning (adoptHealthChecks).
		h.HealthChecks = ensure(h.HealthChecks)
		h.HealthChecks.Active = h.Health.asActive()
		h.Health = nil
	}
	if p.latency != "" {
		if _, ok := p.mapped["fail_duration"]; ok {
			return p.latencyErr
		}
		// without fail_duration reverse_proxy's passive checks are off and
		// it ignores unhealthy_latency: so does Provision, with a warning
		var lat caddy.Duration
		if err := parseDuration(d, "unhealthy_latency", p.latency, &lat); err != nil {
			return err
		}
		h.HealthChecks = ensure(h.HealthChecks)
		h.HealthChecks.Passive = ensure(h.HealthChecks.Passive)
		h.HealthChecks.Passive.UnhealthyLatency = lat
	}
	if h.Retry != nil && !p.seen["retry"] {
		if err := wrapValidate(d, h.Retry.validate()); err != nil {
			return err
		}
	}
	if h.Health != nil && !p.seen["health"] {
		if err := wrapValidate(d, h.Health.validate()); err != nil {
			return err
		}
	}
	if h.Breaker != nil && !p.seen["breaker"] {
		if err := wrapValidate(d, h.Breaker.validate()); err != nil {
			return err
		}
	}
	return nil
}

// singleArg reads exactly one argument and hands it to set.
func singleArg(d *caddyfile.Dispenser, set func(string) error) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	v := d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	return set(v)
}

func parseInt(d *caddyfile.Dispenser, name, v string, dst *int) error {
	n, err := strconv.Atoi(v)
	if err != nil {
		return d.Errf("%s: %q is not an integer", name, v)
	}
	if n < 0 {
		return d.Errf("%s must not be negative, got %d", name, n)
	}
	*dst = n
	return nil
}

func parseFloat(d *caddyfile.Dispenser, name, v string, dst *float64) error {
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return d.Errf("%s: %q is not a number", name, v)
	}
	*dst = f
	return nil
}

func parseDuration(d *caddyfile.Dispenser, name, v string, dst *caddy.Duration) error {
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return d.Errf("%s: bad duration %q: %v", name, v, err)
	}
	if dur < 0 {
		return d.Errf("%s must not be negative, got %s", name, v)
	}
	*dst = caddy.Duration(dur)
	return nil
}

func parseSize(d *caddyfile.Dispenser, name, v string, dst *int64) error {
	size, err := humanize.ParseBytes(v)
	if err != nil {
		return d.Errf("%s: bad size %q: %v", name, v, err)
	}
	if size > 1<<40 {
		return d.Errf("%s: size %q is too large", name, v)
	}
	*dst = int64(size)
	return nil
}

// parseExpectStatus accepts a code (200) or a class (2xx).
func parseExpectStatus(d *caddyfile.Dispenser, v string, dst *int) error {
	if len(v) == 3 && strings.HasSuffix(v, "xx") && v[0] >= '1' && v[0] <= '5' {
		*dst = int(v[0] - '0')
		return nil
	}
	code, err := strconv.Atoi(v)
	if err != nil || code < 100 || code > 599 {
		return d.Errf("expect_status: %q is not a status code or class such as 2xx", v)
	}
	*dst = code
	return nil
}

// wrapValidate turns a block's validation error into one with the
// Caddyfile position.
func wrapValidate(d *caddyfile.Dispenser, err error) error {
	if err != nil {
		return d.Err(err.Error())
	}
	return nil
}

// ensure returns v, allocating it when nil.
func ensure[T any](v *T) *T {
	if v == nil {
		return new(T)
	}
	return v
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*Handler)(nil)
)
