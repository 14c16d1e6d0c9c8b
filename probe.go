package bifrost

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/pool"
	"github.com/bifrost-proxy/bifrost/recovery"
)

// The active probe request, built as reverse_proxy's active health checker
// builds its own: the same address rules (port, upstream, unix sockets),
// placeholders, headers, method, body and redirect policy, sent through
// the worker's current transport.

// targetUpstreamPlaceholder names the probed worker in probe headers and
// bodies, as in reverse_proxy.
const targetUpstreamPlaceholder = "http.reverse_proxy.active.target_upstream"

// dialInfoKey is the context key under which reverse_proxy's transports
// look for the address to dial (reverseproxy.GetDialInfo reads it).
const dialInfoKey caddy.CtxKey = "reverse_proxy.dial_info"

// validateProbe checks the fields that shape the probe request; errors
// name the field.
func (hc *HealthConfig) validateProbe() error {
	if hc.Port < 0 || hc.Port > 65535 {
		return fmt.Errorf("health: port must be between 1 and 65535, got %d", hc.Port)
	}
	if hc.Upstream != "" {
		if hc.Port != 0 {
			return fmt.Errorf("health: port and upstream cannot both be set: upstream already names the port")
		}
		_, port, err := net.SplitHostPort(hc.Upstream)
		if err != nil {
			return fmt.Errorf("health: upstream %q must be host:port: %v", hc.Upstream, err)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("health: upstream %q has a bad port", hc.Upstream)
		}
	}
	if hc.Method != "" && strings.IndexFunc(hc.Method, func(r rune) bool {
		return r <= ' ' || r >= 0x7f || strings.ContainsRune(`()<>@,;:\"/[]?={}`, r)
	}) >= 0 {
		return fmt.Errorf("health: method %q is not an HTTP method", hc.Method)
	}
	if hc.MaxSize < 0 {
		return fmt.Errorf("health: max_size must not be negative")
	}
	return nil
}

// probeTarget is where one worker's probes go.
type probeTarget struct {
	url    url.URL               // scheme, host and URI of the probe
	dial   reverseproxy.DialInfo // the address the transport dials
	worker string                // the worker's address, for the target_upstream placeholder
	header http.Header           // canonical header names
}

// newProbeTarget works out the address and URL of a worker's probes, as
// reverse_proxy does for an upstream: the worker's dial address (global
// placeholders replaced), its port replaced by health.port, or
// health.upstream instead; a unix socket is dialed as such and named
// "localhost" in the URL.
func newProbeTarget(hc *HealthConfig, dial string) (*probeTarget, error) {
	repl := caddy.NewReplacer()
	networkAddr, err := repl.ReplaceOrErr(dial, true, true)
	if err != nil {
		return nil, fmt.Errorf("placeholders in dial address %q: %v", dial, err)
	}
	addr, err := caddy.ParseNetworkAddress(networkAddr)
	if err != nil {
		return nil, fmt.Errorf("bad dial address %q: %v", networkAddr, err)
	}
	if hc.Port != 0 && hc.Upstream == "" {
		if addr.IsUnixNetwork() || addr.IsFdNetwork() {
			addr.Network = "tcp"
		}
		addr.StartPort, addr.EndPort = uint(hc.Port), uint(hc.Port)
	}
	if addr.PortRangeSize() != 1 {
		return nil, fmt.Errorf("dial address %q must be one address", networkAddr)
	}
	hostAddr := addr.JoinHostPort(0)
	if addr.IsUnixNetwork() || addr.IsFdNetwork() {
		hostAddr = "localhost"
	}
	dialAddr := addr
	if hc.Upstream != "" {
		if dialAddr, err = caddy.ParseNetworkAddress(hc.Upstream); err != nil {
			return nil, fmt.Errorf("health upstream %q: %v", hc.Upstream, err)
		}
	}
	pt := &probeTarget{
		url: url.URL{Scheme: "http", Host: hostAddr},
		dial: reverseproxy.DialInfo{
			Network: dialAddr.Network,
			Address: dialAddr.JoinHostPort(0),
			Host:    dialAddr.Host,
			Port:    strconv.FormatUint(uint64(dialAddr.StartPort), 10),
		},
		worker: networkAddr,
		header: make(http.Header, len(hc.Headers)),
	}
	if hc.Upstream != "" {
		pt.url.Host = hc.Upstream
	}
	if hc.URI != "" {
		u, err := url.Parse(hc.URI)
		if err != nil {
			return nil, fmt.Errorf("health uri %q: %v", hc.URI, err)
		}
		pt.url.Path, pt.url.RawQuery = u.Path, u.RawQuery
	}
	for name, vals := range hc.Headers {
		for _, v := range vals {
			pt.header.Add(name, v)
		}
	}
	return pt, nil
}

// schemeFor returns the probe's scheme through a transport: https when
// the transport speaks TLS to the probed port (reverse_proxy's rule).
func (pt *probeTarget) schemeFor(rt http.RoundTripper) string {
	u := pt.url
	if o, ok := rt.(reverseproxy.HealthCheckSchemeOverriderTransport); ok {
		_, port, _ := net.SplitHostPort(u.Host)
		o.OverrideHealthCheckScheme(&u, port)
	}
	return u.Scheme
}

// request builds one probe request for a worker.
func (pt *probeTarget) request(ctx context.Context, hc *HealthConfig, rt http.RoundTripper) (*http.Request, error) {
	repl := caddy.NewReplacer()
	repl.Set(targetUpstreamPlaceholder, pt.worker)
	var body io.Reader
	if hc.Body != "" {
		body = strings.NewReader(repl.ReplaceKnown(hc.Body, ""))
	}
	method := hc.Method
	if method == "" {
		method = http.MethodGet
	}
	u := pt.url
	u.Scheme = pt.schemeFor(rt)
	ctx = context.WithValue(ctx, caddy.ReplacerCtxKey, repl)
	ctx = context.WithValue(ctx, dialInfoKey, pt.dial)
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, err
	}
	req = req.WithContext(context.WithValue(ctx, caddyhttp.OriginalRequestCtxKey, *req))
	for name, vals := range pt.header {
		name = repl.ReplaceAll(name, "")
		if http.CanonicalHeaderKey(name) == "Host" && len(vals) > 0 {
			req.Host = repl.ReplaceAll(vals[0], "")
			continue
		}
		for _, v := range vals {
			req.Header.Add(name, repl.ReplaceKnown(v, ""))
		}
	}
	return req, nil
}

// newChecker builds the active prober of this handler's workers. Each
// probe is a request for health.uri (GET unless health.method says
// otherwise) through the worker's own transport.
func (h *Handler) newChecker() (*health.Checker, error) {
	return h.cfg.probe.checker(h, h.workers)
}

// checker builds the prober of workers.
func (pc *probeConfig) checker(h *Handler, workers []*worker) (*health.Checker, error) {
	targets := make([]health.Target, 0, len(workers))
	for _, wk := range workers {
		pt, err := newProbeTarget(h.Health, wk.Upstream)
		if err != nil {
			return nil, fmt.Errorf("health: worker %s: %w", wk.ID, err)
		}
		targets = append(targets, health.Target{Worker: wk.Health, Probe: h.probeFunc(wk, pt, pc)})
	}
	return health.NewChecker(pc.settings, targets, h.onProbe, h.logger.Named("health"))
}

// probeFunc returns the probe of one worker, sent to pt.
func (h *Handler) probeFunc(wk *worker, pt *probeTarget, pc *probeConfig) health.Probe {
	hc := h.Health
	maxBody, expect, bodyRe := pc.maxSize, pc.expect, pc.bodyRe
	// each probe goes through the worker's current transport (a restart
	// replaces it), so it tests what requests use, TLS settings included
	transport := func() http.RoundTripper {
		if rt := wk.proxy.Load().Transport; rt != nil {
			return rt
		}
		return http.DefaultTransport
	}
	client := &http.Client{
		Transport: roundTripperFunc(func(req *http.Request) (*http.Response, error) {
			return transport().RoundTrip(req)
		}),
		CheckRedirect: func(_ *http.Request, via []*http.Request) error {
			if !hc.FollowRedirects {
				return http.ErrUseLastResponse
			}
			if len(via) >= 10 {
				return errors.New("stopped after 10 redirects")
			}
			return nil
		},
	}
	return func(ctx context.Context) error {
		req, err := pt.request(ctx, hc, transport())
		if err != nil {
			return err
		}
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			return redactProbeError(err)
		}
		defer resp.Body.Close()
		if statusMatches(resp.StatusCode, expect) {
			// a passing probe is a latency sample, so that a worker
			// the policy avoids for being slow can show it is fast again
			wk.tracker.Observe(time.Now(), time.Since(start))
		}
		if !statusMatches(resp.StatusCode, expect) {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
			return fmt.Errorf("probe answered status %d", resp.StatusCode)
		}
		if bodyRe == nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
			return nil
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
		if err != nil {
			return err
		}
		if !bodyRe.Match(b) {
			return errors.New("probe body does not match expect_body")
		}
		return nil
	}
}

// redactProbeError removes the query of the probed URL from a probe's
// error. net/http reports a failed round trip as a *url.Error that quotes
// the whole URL, and a health URI's query may carry a token; the error
// goes on to isolation reasons, the error history, events, logs and the
// status page. The query is replaced, not dropped, so that the message
// still shows that the URL had one.
func redactProbeError(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	return &url.Error{Op: ue.Op, URL: redactQuery(ue.URL), Err: ue.Err}
}

// redactQuery replaces the query of a URL, if it has one, with
// "redacted".
func redactQuery(u string) string {
	if i := strings.IndexByte(u, '?'); i >= 0 {
		return u[:i] + "?redacted"
	}
	return u
}

// roundTripperFunc adapts a function to http.RoundTripper.
type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// statusMatches reports whether status is the expected code, or in the
// expected class when expect is 1-5.
func statusMatches(status, expect int) bool {
	if expect < 10 {
		return status/100 == expect
	}
	return status == expect
}

// onProbe escalates probe transitions: a worker whose probes fail is
// isolated; one whose probes pass again may come back.
func (h *Handler) onProbe(t health.Target, res health.ProbeResult) {
	if res.Err != nil {
		h.metrics.probe(t.Worker.ID(), false)
	} else {
		h.metrics.probe(t.Worker.ID(), true)
	}
	if !res.Changed {
		return
	}
	if !res.Healthy {
		msg := "probe failed"
		if res.Err != nil {
			msg = recovery.Truncate(res.Err.Error(), 200)
		}
		ce := pool.Incident(recovery.KindHealthCheckFailed, pool.Ref{Pool: t.Worker.Pool(), ID: t.Worker.ID()}, "health", "probe", msg)
		ce.Err = res.Err
		h.pool.Book(ce)
		if ev, ok := h.pool.Monitor.Isolate(t.Worker, health.ReasonProbe, msg); ok {
			h.emitHealth(ev)
		}
		return
	}
	if ev, ok := h.pool.Monitor.ProbeRecovered(t.Worker); ok {
		h.emitHealth(ev)
	}
}
