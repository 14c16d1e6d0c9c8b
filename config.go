package bifrost

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/pool"
	"github.com/bifrost-proxy/bifrost/recovery"
	"github.com/bifrost-proxy/bifrost/selection"
)

// BreakerConfig configures each worker's circuit breaker. A breaker opens
// when its worker keeps failing, refuses requests while open, lets a few
// real requests through after Timeout (half-open), and closes again after
// Successes consecutive successes.
type BreakerConfig struct {
	// Failures is the number of consecutive failures that open the
	// breaker. Default: 5.
	Failures int `json:"failures,omitempty"`

	// FailureRatio, when above zero, also opens the breaker when the share
	// of failed requests in Window reaches it (0 < ratio <= 1), once at
	// least MinRequests requests were seen in that window. Default: 0 (off).
	FailureRatio float64 `json:"failure_ratio,omitempty"`

	// MinRequests is the minimum number of requests in Window before
	// FailureRatio applies. Default: 10.
	MinRequests int `json:"min_requests,omitempty"`

	// Window is the rolling window over which the breaker counts requests
	// and failures while closed. Zero means counts are only cleared when
	// the state changes. Default: 0.
	Window caddy.Duration `json:"window,omitempty"`

	// Successes is the number of consecutive successful requests in the
	// half-open state that close the breaker again; it is also how many
	// requests a half-open breaker lets through at once. Default: 3.
	Successes int `json:"successes,omitempty"`

	// Timeout is how long an open breaker refuses requests before it lets
	// a few real requests through (half-open). Default: 1s, much shorter
	// than the 30s of the architecture this design grew from: the breaker
	// is the fast guard, and its short timeout brings a recovered worker
	// back within a second, while a worker that keeps failing costs only
	// the few half-open requests per timeout (each retried elsewhere) and
	// is soon isolated for a growing time (see IsolationConfig).
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// RetryConfig configures how a failed try is retried on another worker.
// A try is retried only when it is safe: no byte of its response reached
// the client, the request's body can be replayed, and either the request
// never reached the upstream (a refused dial) or its method is in Methods.
type RetryConfig struct {
	// Attempts is the total number of tries for one request, the first
	// included. 1 disables retries. Default: 3.
	Attempts int `json:"attempts,omitempty"`

	// BackoffInitial is the delay before the first retry; each further
	// retry waits about twice as long, up to BackoffMax. Default: 20ms:
	// the first retry goes to another worker, so it needs little delay;
	// the retry budget, not the backoff, protects a pool in an outage.
	BackoffInitial caddy.Duration `json:"backoff_initial,omitempty"`

	// BackoffMax caps the delay between two tries. Default: 1s.
	BackoffMax caddy.Duration `json:"backoff_max,omitempty"`

	// Jitter randomizes each delay by up to this share (0..1), so that
	// clients retrying together do not hit a worker at the same instant.
	// Default: 0.5.
	Jitter *float64 `json:"jitter,omitempty"`

	// TryDuration bounds the time spent on all tries of one request
	// together, backoff delays included. Default: 0 (bounded only by
	// Attempts and the client).
	TryDuration caddy.Duration `json:"try_duration,omitempty"`

	// PerTryTimeout bounds the time one try may wait for the response
	// headers of its worker; when it passes, the try fails with kind
	// `timeout` and the request moves on to another worker. It does not
	// bound the streaming of a response body. Default: 0 (the transport's
	// own timeouts apply).
	PerTryTimeout caddy.Duration `json:"per_try_timeout,omitempty"`

	// Budget caps retries at this share of requests (0 < budget <= 1),
	// over a 10 s window, plus a small floor so that low traffic can still
	// retry. It keeps a full outage from multiplying the load on the
	// backends. Default: 0.2.
	Budget float64 `json:"budget,omitempty"`

	// Methods are the HTTP methods that may be retried after the request
	// reached an upstream. A request whose dial failed is retried whatever
	// its method, because it never left. Default: GET HEAD OPTIONS TRACE
	// (the safe methods of RFC 9110), as reverse_proxy, which retries only
	// GET once a request was sent: a PUT or DELETE sent again after a
	// per_try_timeout can overtake a later write, so it is retried only
	// when listed here or matched by Match. Hedging is for safe methods
	// only, whatever this lists.
	Methods []string `json:"methods,omitempty"`

	// On lists the failure conditions that cause a retry. Values:
	// `connect_failure`, `timeout`, `reset`, `5xx`, `429`, or a single
	// status code such as `503`. Default: `connect_failure timeout reset
	// 5xx`. Conditions not listed still count against the worker, except a
	// 429.
	//
	// A 429 is not retried by default: it is as often one client's rate
	// limit as the server's state, and a retry would spend other workers
	// on that client. The client gets the upstream's 429 with its
	// Retry-After, and the worker is throttled (taken out of rotation
	// until its Retry-After) only when its last three answers were
	// throttled (429s, or 503s with Retry-After) and went to more than one
	// client, and never when no other worker could serve. Listing `429`
	// (or `503`) declares those answers to be the worker's state: they
	// are retried on another worker, and each one throttles its worker.
	On []string `json:"on,omitempty"`

	// MaxBody is the largest request body, in bytes, copied for a retry.
	// A body is never read ahead of the first try: it streams to the
	// upstream as the upstream reads it, and a copy of what was sent is
	// kept, so that the request can be sent whole to another worker. A
	// larger body, or one past MaxBodyTotal, streams without a copy: the
	// request is retried only if its body was never read (a dial that
	// failed). Requests that cannot be retried once sent (methods not in
	// Methods, upgrades, extended CONNECT, gRPC, `Incremental: ?1`) keep
	// no copy. 0 keeps no copy of any body. Default: 1 MiB.
	MaxBody *int64 `json:"max_body,omitempty"`

	// MaxBodyTotal bounds the memory that the copies of request bodies
	// hold at once, together, in one pool; past it, requests stream
	// without a copy (see MaxBody). Default: 64 MiB.
	MaxBodyTotal int64 `json:"max_body_total,omitempty"`

	// Hedge enables hedged requests (off by default): see HedgeConfig.
	Hedge *HedgeConfig `json:"hedge,omitempty"`

	// MaxHeldResponse is the largest failure response body, in bytes, held
	// back while another try is still possible. A held-back response that
	// grows beyond it is abandoned and the request is retried. Default:
	// 64 KiB.
	MaxHeldResponse int64 `json:"max_held_response,omitempty"`

	// MatchRaw scopes retries by request: when set, a request that
	// reached an upstream is retried only if it matches one of these
	// matcher sets (or its method is listed in an explicit Methods),
	// whatever its method: a POST that matches may be executed again, so
	// match only requests that are safe to repeat. Without Methods, the
	// default safe methods no longer apply. A request whose dial
	// failed is retried whatever it is, because it never left. Expression
	// matchers may read the failed try's response through
	// `{http.reverse_proxy.status_code}`, `{http.reverse_proxy.status_text}`
	// and `{http.reverse_proxy.header.*}`, or
	// `{http.reverse_proxy.is_transport_error}` when no response arrived;
	// they only see the failures listed in On (this is reverse_proxy's
	// `load_balancing.retry_match`).
	MatchRaw caddyhttp.RawMatcherSets `json:"match,omitempty" caddy:"namespace=http.matchers"`

	// match is MatchRaw, provisioned.
	match caddyhttp.MatcherSets
	// onResponse are the sets of match that look at the response
	// ({rp.status_code}, {rp.header.*}): as with reverse_proxy, a
	// response they match is retried even if it is no failure.
	onResponse caddyhttp.MatcherSets
}

// HealthConfig configures active health probes. Without a URI, health is
// tracked passively from real traffic only.
type HealthConfig struct {
	// URI is the path (and query) probed on each worker, e.g. `/health`.
	URI string `json:"uri,omitempty"`

	// Interval is the time between two probes of one worker; probes are
	// jittered so that workers are not probed at the same instant, and run
	// faster while a worker is changing state. Default: 5s.
	Interval caddy.Duration `json:"interval,omitempty"`

	// Timeout bounds one probe. It may be longer than Interval, as in
	// reverse_proxy: the worker's next probe then waits for it. Default:
	// 2s, or Interval if that is shorter.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// ExpectStatus is the status a passing probe answers: a code such as
	// 200, or a class such as 2 for any 2xx. Default: 2 (2xx).
	ExpectStatus int `json:"expect_status,omitempty"`

	// ExpectBody is a regular expression the probe's body must match.
	ExpectBody string `json:"expect_body,omitempty"`

	// Passes is the number of consecutive passing probes that mark an
	// unhealthy worker healthy (rise). Default: 2.
	Passes int `json:"passes,omitempty"`

	// Fails is the number of consecutive failing probes that mark a
	// healthy worker unhealthy and isolate it (fall). Default: 3.
	Fails int `json:"fails,omitempty"`

	// Port, when set, is the port probed on the worker's host instead of
	// its own port. It also turns probes on without a URI (they then
	// request `/`). It cannot be combined with Upstream.
	Port int `json:"port,omitempty"`

	// Upstream, when set, is the address (`host:port`) every probe is sent
	// to instead of the worker: a service that checks the workers more
	// thoroughly. Each probe names its worker in the placeholder
	// `{http.reverse_proxy.active.target_upstream}`, for use in Headers
	// or Body. It does not turn probes on by itself.
	Upstream string `json:"upstream,omitempty"`

	// Headers are set on each probe request. A `Host` header sets the
	// probe's Host. Placeholders are replaced in names and values: global
	// ones such as `{env.*}`, and
	// `{http.reverse_proxy.active.target_upstream}`, the probed worker's
	// address; unknown placeholders in values are left as they are.
	Headers http.Header `json:"headers,omitempty"`

	// Method is the HTTP method of the probe request. Default: GET.
	Method string `json:"method,omitempty"`

	// Body is sent with each probe request. Known placeholders (the same
	// as in Headers) are replaced; anything else in braces, such as JSON,
	// is left as it is.
	Body string `json:"body,omitempty"`

	// FollowRedirects makes a probe follow redirects (up to 10), sent to
	// the same worker. By default a redirect is the probe's answer and is
	// judged by ExpectStatus.
	FollowRedirects bool `json:"follow_redirects,omitempty"`

	// MaxSize bounds how much of a probe's response body is read, in
	// bytes. Default: 64 KiB.
	MaxSize int64 `json:"max_size,omitempty"`
}

// active reports whether active probes are configured: a URI or a port
// to probe, as reverse_proxy's active health checks require.
func (hc *HealthConfig) active() bool {
	return hc != nil && (hc.URI != "" || hc.Port != 0)
}

// IsolationConfig configures isolation, the escalation above the breaker:
// a worker whose breaker keeps tripping, that fails its probes, whose
// success rate is an outlier among its peers, that raised a critical error,
// or that an operator isolated, is taken out of rotation for an ejection
// time that grows with each repeat.
type IsolationConfig struct {
	// BaseTime is the first ejection time; the n-th ejection lasts
	// BaseTime × 2^(n-1), jittered by ±10%. Default: 10s.
	BaseTime caddy.Duration `json:"base_time,omitempty"`

	// MaxTime caps the ejection time. After MaxTime without isolation the
	// ejection count decays by one. Default: 5m.
	MaxTime caddy.Duration `json:"max_time,omitempty"`

	// MaxPercent is the largest share of a pool's workers (0-100) that may
	// be isolated automatically. At least one worker always stays in
	// rotation, and in a pool of two or more (and MaxPercent above 0) at
	// least one may be isolated. 0 turns automatic isolation off: breakers
	// and throttling still take a worker out for a moment and failing
	// probes mark it unhealthy (it keeps its traffic), but only an
	// operator isolates it.
	// Default: 50.
	MaxPercent *int `json:"max_percent,omitempty"`

	// SuccessRateMinRequests tunes outlier detection: a worker that saw
	// at least this many requests in an outlier interval, and whose
	// success rate is below the pool's mean by SuccessRateStdevFactor
	// standard deviations and by at least ten percentage points, is
	// isolated. It needs three workers with that many requests. 0 turns
	// detection off. Default: 20.
	SuccessRateMinRequests *int `json:"success_rate_min_requests,omitempty"`

	// SuccessRateStdevFactor is the number of standard deviations below
	// the mean that makes an outlier. Default: 1. (Envoy's 1.9 can never
	// flag a single bad worker among fewer than five: with n workers, one
	// outlier sits sqrt(n-1) standard deviations below the mean.)
	SuccessRateStdevFactor float64 `json:"success_rate_stdev_factor,omitempty"`

	// OutlierInterval is how often success rates are compared, over the
	// requests of that interval. Default: 5s.
	OutlierInterval caddy.Duration `json:"outlier_interval,omitempty"`

	// SlowStart is the time over which a reinstated worker's share of
	// traffic ramps up to its full share. Default: 0 (off).
	SlowStart caddy.Duration `json:"slow_start,omitempty"`

	// BreakerTrips is the number of times a worker's breaker must open
	// without an intervening close to isolate it. Default: 2.
	BreakerTrips int `json:"breaker_trips,omitempty"`

	// HangThreshold is how long a request may wait for its response
	// headers before its worker is suspected of hanging, when the worker
	// has answered nothing since the request was sent while its peers
	// answer. A suspected worker gets one suspicion probe at once (the
	// health probe when configured, else HEAD /) with a short timeout (a
	// fifth of HangThreshold, 50ms to 300ms, or the health timeout when
	// set, at most HangThreshold): no answer is a
	// hang, the worker is isolated (kind `timeout`) and its waiting
	// requests that can be retried are moved to other workers; an answer
	// leaves the slow request (a long poll) alone. At most one suspicion
	// probe per worker per HangThreshold. Default: 2s.
	HangThreshold caddy.Duration `json:"hang_threshold,omitempty"`

	// HangRequests is the number of requests of a worker that must have
	// waited HangThreshold before it is suspected of hanging. Default: 1.
	HangRequests int `json:"hang_requests,omitempty"`

	// MaxRecoveryAttempts is the number of failed reinstatements after
	// which the worker stays out (event `worker_recovery_failed`) until a
	// probe passes or an operator restores it. Default: 3.
	MaxRecoveryAttempts int `json:"max_recovery_attempts,omitempty"`
}

// ClassifyRule overrides how a response status is classified.
type ClassifyRule struct {
	// Status is a status code (`503`) or a class (`5xx`).
	Status string `json:"status"`

	// Kind is the error kind to classify it as, e.g. `http`, `throttled`,
	// or `none` to treat the status as a success.
	Kind string `json:"kind"`

	// Action overrides the kind's default recovery action: what is done
	// to the worker that answered the status (`retry`, `reconnect`,
	// `restart_worker`, `throttle`, `isolate_worker`, `ignore`,
	// `skip_worker`, `expand_pool` or `force_shutdown`; see the README's
	// Recovery actions). Whether the request is retried is decided by
	// `retry on`, except that `ignore` is never retried and `skip_worker`
	// and `expand_pool` send it to another worker at once when it can be
	// sent again.
	Action string `json:"action,omitempty"`
}

// FallbackConfig is the response written when no worker can serve a
// request (graceful degradation).
type FallbackConfig struct {
	// Status of the fallback response. Default: 503.
	Status int `json:"status,omitempty"`

	// Body of the fallback response. Known placeholders are replaced;
	// anything else in braces, such as a JSON body, stays as written.
	Body string `json:"body,omitempty"`

	// Headers set on the fallback response. Known placeholders in values
	// are replaced.
	Headers http.Header `json:"headers,omitempty"`
}

// Defaults. Every default of the handler is here, with those of the
// settings it hands to the breaker, recovery and health packages, which
// have none of their own. (The bifrost_p2c selection policy is a Caddy
// module users can name; it fills its own decay, and the handler's
// default policy is that module: see defaultPolicy.) Each field's
// documentation states its default; the README's tables say the same.
const (
	// breaker
	defaultBreakerFailures    = 5
	defaultBreakerMinRequests = 10
	defaultBreakerSuccesses   = 3
	defaultBreakerTimeout     = time.Second

	// retry
	defaultAttempts           = 3
	defaultBackoffInitial     = 20 * time.Millisecond
	defaultBackoffMax         = time.Second
	defaultJitter             = 0.5
	defaultBudget             = 0.2
	defaultBudgetMinPerSecond = 3
	budgetWindow              = 10 * time.Second // the retry budget counts over it
	defaultMaxBody            = 1 << 20
	defaultMaxBodyTotal       = 64 << 20
	defaultMaxHeldResponse    = 64 << 10
	defaultHedgeMax           = 1
	defaultHedgePercentile    = 95

	// health: probes jitter by probeJitter of their interval, and run
	// every quarter interval (at least minFastProbeInterval, at most the
	// interval) while a worker's state is changing
	defaultProbeInterval = 5 * time.Second
	defaultProbeTimeout  = 2 * time.Second // or the interval, if shorter
	defaultProbePasses   = 2
	defaultProbeFails    = 3
	defaultProbeStatus   = 2
	defaultProbeMaxSize  = 64 << 10
	probeJitter          = 0.2
	minFastProbeInterval = 100 * time.Millisecond

	// isolation: ejection times jitter by ±isolationJitter; outlier
	// detection needs outlierMinHosts workers with enough requests; a
	// reinstated worker is on probation for probationTime (or its slow
	// start) or until probationSuccesses successes
	defaultBaseTime            = 10 * time.Second
	defaultMaxTime             = 5 * time.Minute
	defaultMaxPercent          = 50
	defaultOutlierRequests     = 20
	defaultStdevFactor         = 1.0
	defaultOutlierInterval     = 5 * time.Second
	defaultBreakerTrips        = 2
	defaultHangThreshold       = 2 * time.Second
	defaultHangRequests        = 1
	defaultMaxRecoveryAttempts = 3
	isolationJitter            = 0.1
	outlierMinHosts            = 3
	probationTime              = 5 * time.Second
	probationSuccesses         = 5

	// pool: the error history keeps messages of up to errorMessageLimit
	// bytes; at most maxConcurrentRecovery worker restarts run at once
	defaultHistoryLimit      = 1000
	errorMessageLimit        = 256
	maxConcurrentRecovery    = 4
	defaultDynamicRetire     = 30 * time.Second
	defaultDynamicMaxWorkers = 256
)

// defaultRetryMethods are the safe methods of RFC 9110 §9.2.1: those that
// may be sent again after a request reached an upstream, unless
// retry.methods or retry.match say otherwise. They are also the only
// methods ever hedged.
var defaultRetryMethods = []string{"GET", "HEAD", "OPTIONS", "TRACE"}

// retryConditions are the values accepted by RetryConfig.On.
var retryConditions = []string{"connect_failure", "timeout", "reset", "5xx", "429"}

// resolved is the configuration with every default applied and every
// check passed: the complete settings of the request path, and those the
// breaker, recovery and health packages are given. Handler.resolve builds
// it once, when the handler is provisioned.
type resolved struct {
	retry      retrySettings
	classifier *recovery.Classifier
	breaker    breaker.Settings
	isolation  isolationSettings
	probe      *probeConfig // nil without active probes
	manager    recovery.ManagerConfig
	// dynamicRetire and dynamicMax bound the workers of dynamic_upstreams
	dynamicRetire time.Duration
	dynamicMax    int
}

// retrySettings is the retry block, resolved.
type retrySettings struct {
	policy             recovery.Policy
	methods            []string
	on                 retryOn
	maxBody            int64
	maxBodyTotal       int64
	maxHeld            int64
	perTry             time.Duration
	hedge              *HedgeConfig // nil when off
	budget             float64
	budgetMinPerSecond int
}

// isolationSettings is the isolation block, resolved.
type isolationSettings struct {
	monitor      health.IsolationSettings
	breakerTrips int
	hangAfter    time.Duration
	hangCount    int
}

// probeConfig is the health block, resolved and compiled once for every
// checker.
type probeConfig struct {
	settings health.ProbeSettings
	expect   int
	bodyRe   *regexp.Regexp
	maxSize  int64
}

// resolve checks the whole configuration and applies every default, once:
// Provision calls it, and the rest of provisioning reads its result. Each
// block is resolved by its own method, which the Caddyfile adapter also
// calls so that an error carries the block's file and line. Errors name the
// JSON field.
func (h *Handler) resolve() (*resolved, error) {
	dynamic := h.DynamicUpstreamsRaw != nil || h.DynamicUpstreams != nil
	if len(h.Upstreams) == 0 && !dynamic {
		return nil, errors.New("upstreams: at least one upstream is required, or dynamic_upstreams")
	}
	if h.DynamicRetireAfter < 0 {
		return nil, fmt.Errorf("dynamic_retire_after must not be negative, got %s", time.Duration(h.DynamicRetireAfter))
	}
	if h.DynamicMaxWorkers < 0 {
		return nil, fmt.Errorf("dynamic_max_workers must not be negative, got %d", h.DynamicMaxWorkers)
	}
	if !dynamic && (h.DynamicRetireAfter != 0 || h.DynamicMaxWorkers != 0) {
		return nil, errors.New("dynamic_retire_after and dynamic_max_workers apply only with dynamic_upstreams")
	}
	for i, up := range h.Upstreams {
		if up == nil || up.Dial == "" {
			return nil, fmt.Errorf("upstreams[%d]: dial address is empty", i)
		}
	}
	if err := h.Backup.validate(h.Upstreams); err != nil {
		return nil, err
	}
	if lb := h.LoadBalancing; lb != nil {
		switch {
		case lb.Retries != 0:
			return nil, errors.New("load_balancing.retries: use retry.attempts instead")
		case lb.TryDuration != 0:
			return nil, errors.New("load_balancing.try_duration: use retry.try_duration instead")
		case lb.TryInterval != 0:
			return nil, errors.New("load_balancing.try_interval: use retry.backoff_initial instead")
		case len(lb.RetryMatchRaw) > 0:
			return nil, errors.New("load_balancing.retry_match: use retry.methods and retry.on instead")
		}
	}
	if h.HealthChecks != nil {
		return nil, errors.New("health_checks: use the health, breaker and isolation blocks instead")
	}
	if h.CBRaw != nil {
		return nil, errors.New("circuit_breaker: each worker has its own breaker; configure it with the breaker block")
	}
	if h.Name != "" {
		if err := checkPoolName(h.Name); err != nil {
			return nil, fmt.Errorf("name: %w", err)
		}
	}
	if h.MaxRequests < 0 {
		return nil, fmt.Errorf("max_requests must not be negative, got %d", h.MaxRequests)
	}
	if h.ErrorHistoryLimit < 0 {
		return nil, fmt.Errorf("error_history_limit must not be negative, got %d", h.ErrorHistoryLimit)
	}

	r := &resolved{
		dynamicRetire: cmp.Or(time.Duration(h.DynamicRetireAfter), defaultDynamicRetire),
		dynamicMax:    cmp.Or(h.DynamicMaxWorkers, defaultDynamicMaxWorkers),
		manager: recovery.ManagerConfig{
			HistoryLimit:          cmp.Or(h.ErrorHistoryLimit, defaultHistoryLimit),
			MaxConcurrentRecovery: maxConcurrentRecovery,
			MessageLimit:          errorMessageLimit,
		},
	}
	var err error
	if r.breaker, err = h.Breaker.resolve(); err != nil {
		return nil, err
	}
	if r.retry, err = h.Retry.resolve(); err != nil {
		return nil, err
	}
	if r.probe, err = h.Health.resolve(); err != nil {
		return nil, err
	}
	if r.isolation, err = h.Isolation.resolve(h.Health.active()); err != nil {
		return nil, err
	}
	if h.Fallback != nil {
		if err := h.Fallback.validate(); err != nil {
			return nil, err
		}
	}
	r.classifier = &recovery.Classifier{}
	for i, cr := range h.Classify {
		rule, err := recovery.ParseRule(cr.Status, cr.Kind, cr.Action)
		if err != nil {
			return nil, fmt.Errorf("classify[%d]: %w", i, err)
		}
		r.classifier.Rules = append(r.classifier.Rules, rule)
	}
	if err := r.manager.Validate(); err != nil {
		return nil, fmt.Errorf("error_history_limit: %w", err)
	}
	return r, nil
}

// validate checks the retry block; errors name the field.
func (rc *RetryConfig) validate() error {
	_, err := rc.resolve()
	return err
}

// resolve checks the retry block (nil is an empty one) and applies its
// defaults.
func (rc *RetryConfig) resolve() (retrySettings, error) {
	if rc == nil {
		rc = new(RetryConfig)
	}
	if err := rc.check(); err != nil {
		return retrySettings{}, err
	}
	initial := cmp.Or(time.Duration(rc.BackoffInitial), defaultBackoffInitial)
	rs := retrySettings{
		policy: recovery.Policy{
			Attempts:    cmp.Or(rc.Attempts, defaultAttempts),
			Initial:     initial,
			Max:         cmp.Or(time.Duration(rc.BackoffMax), max(defaultBackoffMax, initial)),
			Jitter:      defaultJitter,
			TryDuration: time.Duration(rc.TryDuration),
		},
		methods:            rc.Methods,
		on:                 defaultRetryConditions,
		maxBody:            defaultMaxBody,
		maxBodyTotal:       cmp.Or(rc.MaxBodyTotal, defaultMaxBodyTotal),
		maxHeld:            cmp.Or(rc.MaxHeldResponse, defaultMaxHeldResponse),
		perTry:             time.Duration(rc.PerTryTimeout),
		budget:             cmp.Or(rc.Budget, defaultBudget),
		budgetMinPerSecond: defaultBudgetMinPerSecond,
	}
	if rc.Jitter != nil {
		rs.policy.Jitter = *rc.Jitter
	}
	if len(rs.methods) == 0 {
		rs.methods = defaultRetryMethods
	}
	if len(rc.On) > 0 {
		rs.on = retryOn{}
		for _, s := range rc.On {
			c, err := parseRetryCondition(s)
			if err != nil {
				return retrySettings{}, fmt.Errorf("retry: %w", err)
			}
			rs.on = rs.on.with(c)
		}
	}
	if rc.MaxBody != nil {
		rs.maxBody = *rc.MaxBody
	}
	if rc.Hedge != nil {
		hc := *rc.Hedge
		hc.Max = cmp.Or(hc.Max, defaultHedgeMax)
		hc.Percentile = cmp.Or(hc.Percentile, defaultHedgePercentile)
		rs.hedge = &hc
	}
	if err := rs.policy.Validate(); err != nil {
		return retrySettings{}, fmt.Errorf("retry: %w", err)
	}
	return rs, nil
}

// check applies the retry block's own rules.
func (rc *RetryConfig) check() error {
	if rc.Attempts < 0 {
		return fmt.Errorf("retry: attempts must be at least 1, got %d", rc.Attempts)
	}
	if rc.BackoffInitial < 0 || rc.BackoffMax < 0 || rc.TryDuration < 0 || rc.PerTryTimeout < 0 {
		return fmt.Errorf("retry: durations must not be negative")
	}
	if rc.BackoffMax > 0 && rc.BackoffInitial > rc.BackoffMax {
		return fmt.Errorf("retry: backoff initial %s is above its maximum %s",
			time.Duration(rc.BackoffInitial), time.Duration(rc.BackoffMax))
	}
	if rc.BackoffMax > 0 && rc.BackoffInitial == 0 && time.Duration(rc.BackoffMax) < defaultBackoffInitial {
		return fmt.Errorf("retry: backoff maximum %s is below the default initial backoff %s; set the initial backoff too",
			time.Duration(rc.BackoffMax), defaultBackoffInitial)
	}
	if rc.Jitter != nil && (*rc.Jitter < 0 || *rc.Jitter > 1) {
		return fmt.Errorf("retry: jitter must be between 0 and 1, got %g", *rc.Jitter)
	}
	if rc.Budget < 0 || rc.Budget > 1 {
		return fmt.Errorf("retry: budget must be between 0 and 1, got %g", rc.Budget)
	}
	if (rc.MaxBody != nil && *rc.MaxBody < 0) || rc.MaxBodyTotal < 0 || rc.MaxHeldResponse < 0 {
		return fmt.Errorf("retry: max_body and max_held_response must not be negative")
	}
	if hc := rc.Hedge; hc != nil {
		if hc.Delay < 0 || hc.Max < 0 {
			return fmt.Errorf("retry: hedge delay and max must not be negative")
		}
		if hc.Percentile != 0 && (hc.Percentile < 50 || hc.Percentile > 99.9) {
			return fmt.Errorf("retry: hedge percentile must be between 50 and 99.9, got %g", hc.Percentile)
		}
		if hc.Percentile != 0 && hc.Delay > 0 {
			return fmt.Errorf("retry: hedge percentile sets the automatic delay; it does nothing with a fixed delay (%s)", time.Duration(hc.Delay))
		}
		if rc.Attempts == 1 {
			return fmt.Errorf("retry: hedge needs attempts of at least 2 (a hedge is a try); attempts is 1")
		}
	}
	for _, m := range rc.Methods {
		if m == "" || strings.ToUpper(m) != m {
			return fmt.Errorf("retry: method %q must be an upper-case HTTP method", m)
		}
	}
	for _, on := range rc.On {
		if _, err := parseRetryCondition(on); err != nil {
			return fmt.Errorf("retry: %w", err)
		}
	}
	return nil
}

// validate checks the breaker block; errors name the field.
func (bc *BreakerConfig) validate() error {
	_, err := bc.resolve()
	return err
}

// resolve checks the breaker block (nil is an empty one) and returns the
// complete settings of each worker's breaker.
func (bc *BreakerConfig) resolve() (breaker.Settings, error) {
	if bc == nil {
		bc = new(BreakerConfig)
	}
	if err := bc.check(); err != nil {
		return breaker.Settings{}, err
	}
	s := breaker.Settings{
		Failures:     uint32(cmp.Or(bc.Failures, defaultBreakerFailures)),
		FailureRatio: bc.FailureRatio,
		MinRequests:  uint32(cmp.Or(bc.MinRequests, defaultBreakerMinRequests)),
		Window:       time.Duration(bc.Window),
		Successes:    uint32(cmp.Or(bc.Successes, defaultBreakerSuccesses)),
		Timeout:      cmp.Or(time.Duration(bc.Timeout), defaultBreakerTimeout),
	}
	if err := s.Validate(); err != nil {
		return breaker.Settings{}, fmt.Errorf("breaker: %w", err)
	}
	return s, nil
}

// check applies the breaker block's own rules.
func (bc *BreakerConfig) check() error {
	if bc.Failures < 0 || bc.Successes < 0 || bc.MinRequests < 0 {
		return fmt.Errorf("breaker: failures, successes and min_requests must not be negative")
	}
	if bc.FailureRatio < 0 || bc.FailureRatio > 1 {
		return fmt.Errorf("breaker: failure_ratio must be between 0 and 1, got %g", bc.FailureRatio)
	}
	if bc.Window < 0 || bc.Timeout < 0 {
		return fmt.Errorf("breaker: window and timeout must not be negative")
	}
	if bc.MinRequests > 0 && bc.FailureRatio == 0 {
		return fmt.Errorf("breaker: min_requests applies to failure_ratio only, which is not set")
	}
	return nil
}

// validate checks the health block; errors name the field.
func (hc *HealthConfig) validate() error {
	_, err := hc.resolve()
	return err
}

// resolve checks the health block (nil is an empty one) and returns the
// compiled probe configuration, or nil when no probes are configured.
func (hc *HealthConfig) resolve() (*probeConfig, error) {
	if hc == nil {
		return nil, nil
	}
	bodyRe, err := hc.check()
	if err != nil {
		return nil, err
	}
	if !hc.active() {
		return nil, nil
	}
	interval := cmp.Or(time.Duration(hc.Interval), defaultProbeInterval)
	pc := &probeConfig{
		settings: health.ProbeSettings{
			Interval:     interval,
			Timeout:      cmp.Or(time.Duration(hc.Timeout), min(defaultProbeTimeout, interval)),
			Passes:       cmp.Or(hc.Passes, defaultProbePasses),
			Fails:        cmp.Or(hc.Fails, defaultProbeFails),
			Jitter:       probeJitter,
			FastInterval: min(max(interval/4, minFastProbeInterval), interval),
		},
		expect:  cmp.Or(hc.ExpectStatus, defaultProbeStatus),
		bodyRe:  bodyRe,
		maxSize: cmp.Or(hc.MaxSize, defaultProbeMaxSize),
	}
	if err := pc.settings.Validate(); err != nil {
		return nil, fmt.Errorf("health: %w", err)
	}
	return pc, nil
}

// check applies the health block's own rules, and returns expect_body
// compiled.
func (hc *HealthConfig) check() (*regexp.Regexp, error) {
	if hc.URI != "" && !strings.HasPrefix(hc.URI, "/") {
		return nil, fmt.Errorf("health: uri must start with '/'")
	}
	if hc.Interval < 0 || hc.Timeout < 0 {
		return nil, fmt.Errorf("health: interval and timeout must not be negative")
	}
	if hc.Passes < 0 || hc.Fails < 0 {
		return nil, fmt.Errorf("health: passes and fails must not be negative")
	}
	if hc.ExpectStatus != 0 && (hc.ExpectStatus < 1 || hc.ExpectStatus > 599 || (hc.ExpectStatus > 5 && hc.ExpectStatus < 100)) {
		return nil, fmt.Errorf("health: expect_status must be a status code or class 1-5, got %d", hc.ExpectStatus)
	}
	var bodyRe *regexp.Regexp
	if hc.ExpectBody != "" {
		re, err := regexp.Compile(hc.ExpectBody)
		if err != nil {
			return nil, fmt.Errorf("health: expect_body: %w", err)
		}
		bodyRe = re
	}
	if err := hc.validateProbe(); err != nil {
		return nil, err
	}
	if !hc.active() && (hc.Interval != 0 || hc.Timeout != 0 || hc.ExpectStatus != 0 || hc.ExpectBody != "" || hc.Passes != 0 || hc.Fails != 0 ||
		hc.Upstream != "" || len(hc.Headers) > 0 || hc.Method != "" || hc.Body != "" || hc.FollowRedirects || hc.MaxSize != 0) {
		return nil, fmt.Errorf("health: uri is required (or port): the other settings configure active probes, which probe uri on each worker")
	}
	return bodyRe, nil
}

// validate checks the isolation block; errors name the field.
func (ic *IsolationConfig) validate() error {
	_, err := ic.resolve(false)
	return err
}

// resolve checks the isolation block (nil is an empty one) and returns
// its complete settings; probes tells whether active probes are
// configured, which reinstatement then waits for.
func (ic *IsolationConfig) resolve(probes bool) (isolationSettings, error) {
	if ic == nil {
		ic = new(IsolationConfig)
	}
	if err := ic.check(); err != nil {
		return isolationSettings{}, err
	}
	maxTime := cmp.Or(time.Duration(ic.MaxTime), defaultMaxTime)
	is := isolationSettings{
		monitor: health.IsolationSettings{
			BaseTime:               cmp.Or(time.Duration(ic.BaseTime), defaultBaseTime),
			MaxTime:                maxTime,
			Jitter:                 isolationJitter,
			DecayAfter:             maxTime,
			MaxPercent:             defaultMaxPercent,
			SuccessRateMinRequests: defaultOutlierRequests,
			SuccessRateStdevFactor: cmp.Or(ic.SuccessRateStdevFactor, defaultStdevFactor),
			SuccessRateMinHosts:    outlierMinHosts,
			DetectionInterval:      cmp.Or(time.Duration(ic.OutlierInterval), defaultOutlierInterval),
			SlowStart:              time.Duration(ic.SlowStart),
			ProbationTime:          probationTime,
			ProbationSuccesses:     probationSuccesses,
			MaxRecoveryAttempts:    cmp.Or(ic.MaxRecoveryAttempts, defaultMaxRecoveryAttempts),
			ProbesConfigured:       probes,
		},
		breakerTrips: cmp.Or(ic.BreakerTrips, defaultBreakerTrips),
		hangAfter:    cmp.Or(time.Duration(ic.HangThreshold), defaultHangThreshold),
		hangCount:    cmp.Or(ic.HangRequests, defaultHangRequests),
	}
	if ic.MaxPercent != nil {
		is.monitor.MaxPercent = *ic.MaxPercent
	}
	if ic.SuccessRateMinRequests != nil {
		is.monitor.SuccessRateMinRequests = *ic.SuccessRateMinRequests
	}
	if err := is.monitor.Validate(); err != nil {
		return isolationSettings{}, fmt.Errorf("isolation: %w", err)
	}
	return is, nil
}

// check applies the isolation block's own rules.
func (ic *IsolationConfig) check() error {
	if ic.BaseTime < 0 || ic.MaxTime < 0 || ic.SlowStart < 0 || ic.OutlierInterval < 0 {
		return fmt.Errorf("isolation: durations must not be negative")
	}
	if ic.MaxTime > 0 && ic.BaseTime > ic.MaxTime {
		return fmt.Errorf("isolation: base_time %s is above max_time %s",
			time.Duration(ic.BaseTime), time.Duration(ic.MaxTime))
	}
	if ic.BaseTime == 0 && ic.MaxTime > 0 && time.Duration(ic.MaxTime) < defaultBaseTime {
		return fmt.Errorf("isolation: max_time %s is below the default base_time %s; set base_time too",
			time.Duration(ic.MaxTime), defaultBaseTime)
	}
	if ic.MaxTime == 0 && time.Duration(ic.BaseTime) > defaultMaxTime {
		return fmt.Errorf("isolation: base_time %s is above the default max_time %s; set max_time too",
			time.Duration(ic.BaseTime), defaultMaxTime)
	}
	if ic.MaxPercent != nil && (*ic.MaxPercent < 0 || *ic.MaxPercent > 100) {
		return fmt.Errorf("isolation: max_percent must be between 0 and 100, got %d", *ic.MaxPercent)
	}
	if (ic.SuccessRateMinRequests != nil && *ic.SuccessRateMinRequests < 0) || ic.SuccessRateStdevFactor < 0 {
		return fmt.Errorf("isolation: success_rate values must not be negative")
	}
	if ic.SuccessRateMinRequests != nil && *ic.SuccessRateMinRequests == 0 && (ic.SuccessRateStdevFactor != 0 || ic.OutlierInterval != 0) {
		return fmt.Errorf("isolation: success_rate_stdev_factor and outlier_interval tune outlier detection, which success_rate_min_requests 0 turns off")
	}
	if ic.MaxPercent != nil && *ic.MaxPercent == 0 && (ic.SuccessRateMinRequests != nil && *ic.SuccessRateMinRequests > 0 || ic.BreakerTrips != 0 || ic.HangThreshold != 0 || ic.HangRequests != 0) {
		return fmt.Errorf("isolation: max_percent 0 turns automatic isolation off; success_rate, breaker_trips, hang_threshold and hang_requests would do nothing")
	}
	if ic.HangThreshold < 0 || ic.HangRequests < 0 {
		return fmt.Errorf("isolation: hang_threshold and hang_requests must not be negative")
	}
	if ic.BreakerTrips < 0 || ic.MaxRecoveryAttempts < 0 {
		return fmt.Errorf("isolation: breaker_trips and max_recovery_attempts must not be negative")
	}
	return nil
}

// validate checks the fallback block; errors name the field.
func (fc *FallbackConfig) validate() error {
	if fc.Status != 0 && (fc.Status < 100 || fc.Status > 599) {
		return fmt.Errorf("fallback: status must be between 100 and 599, got %d", fc.Status)
	}
	return nil
}

// useResolved sets the settings the request loop reads from the resolved
// configuration.
func (h *Handler) useResolved(r *resolved) {
	h.cfg = r
	rs := r.retry
	h.policy = rs.policy
	h.methods = rs.methods
	h.retryOn = rs.on
	h.maxBody = rs.maxBody
	h.maxBodyTotal = rs.maxBodyTotal
	h.maxHeld = rs.maxHeld
	h.perTry = rs.perTry
	h.hedge = rs.hedge
	h.reuseState = h.perTry == 0
	h.classifier = r.classifier
	h.hangAfter = r.isolation.hangAfter
	h.hangCount = r.isolation.hangCount
}

// applyPoolSettings applies this config's settings to the pool state,
// which may have survived from an earlier config.
func (h *Handler) applyPoolSettings() error {
	if err := h.pool.Monitor.Update(h.cfg.isolation.monitor); err != nil {
		return fmt.Errorf("isolation: %w", err)
	}
	if err := h.pool.Manager.Reconfigure(h.cfg.manager); err != nil {
		return fmt.Errorf("error_history_limit: %w", err)
	}
	if err := h.pool.SetBudget(h.cfg.retry.budget, h.cfg.retry.budgetMinPerSecond, budgetWindow); err != nil {
		return fmt.Errorf("retry: budget: %w", err)
	}
	h.pool.Replay.SetLimit(h.maxBodyTotal)
	h.pool.SetBreakerTrips(h.cfg.isolation.breakerTrips)
	return nil
}

// defaultPolicy returns the selection policy of a handler without
// lb_policy: the bifrost_p2c module, provisioned as it is when a user
// names it without a decay, so both get its one default decay
// (selection.DefaultDecay).
func defaultPolicy(ctx caddy.Context) (reverseproxy.Selector, error) {
	p := new(selection.P2C)
	if err := p.Provision(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// retryOn is the set of failure conditions that cause a retry.
type retryOn struct {
	connect, timeout, reset, s5xx, s429 bool
	codes                               []int
}

// defaultRetryConditions is the default of RetryConfig.On: every
// condition but 429, which is as often about the client as about the
// worker.
var defaultRetryConditions = retryOn{connect: true, timeout: true, reset: true, s5xx: true}

// parseRetryCondition parses one value of RetryConfig.On into a set
// holding just that condition.
func parseRetryCondition(s string) (retryOn, error) {
	switch s {
	case "connect_failure":
		return retryOn{connect: true}, nil
	case "timeout":
		return retryOn{timeout: true}, nil
	case "reset":
		return retryOn{reset: true}, nil
	case "5xx":
		return retryOn{s5xx: true}, nil
	case "429":
		return retryOn{s429: true}, nil
	}
	code, err := strconv.Atoi(s)
	if err != nil || code < 400 || code > 599 {
		return retryOn{}, fmt.Errorf("unknown retry condition %q (want one of %s, or a status code 400-599)",
			s, strings.Join(retryConditions, ", "))
	}
	return retryOn{codes: []int{code}}, nil
}

// with returns the union of two sets.
func (o retryOn) with(c retryOn) retryOn {
	o.connect = o.connect || c.connect
	o.timeout = o.timeout || c.timeout
	o.reset = o.reset || c.reset
	o.s5xx = o.s5xx || c.s5xx
	o.s429 = o.s429 || c.s429
	o.codes = append(o.codes, c.codes...)
	return o
}

// matches reports whether a classified failure is one to retry: by its
// kind, whatever its recovery action (which acts on the worker).
func (o retryOn) matches(cls recovery.Classification, status int) bool {
	switch cls.Kind {
	case recovery.KindConnection, recovery.KindIsolationViolation:
		return o.connect
	case recovery.KindConfig:
		if status != 0 {
			// a 421 is retried whatever this says (see skipsWorker)
			return o.matchesStatus(status)
		}
		// a handshake that failed: the request never left
		return o.connect
	case recovery.KindWorker:
		return o.reset
	case recovery.KindTimeout:
		return o.timeout
	case recovery.KindIO:
		return o.reset
	case recovery.KindHTTP, recovery.KindThrottled:
		return o.matchesStatus(status)
	}
	return false
}

// matchesStatus reports whether a failure status is one to retry.
func (o retryOn) matchesStatus(status int) bool {
	if slices.Contains(o.codes, status) {
		return true
	}
	return (o.s5xx && status >= 500 && status <= 599) || (o.s429 && status == http.StatusTooManyRequests)
}

// maxPoolName caps the length of a pool name, which appears in every
// worker id, metric label and log line of the pool.
const maxPoolName = 128

// checkPoolName refuses a pool name that could not be shown or addressed
// safely: '|' and '/' (they separate keys and URL path segments),
// whitespace, control and other unprintable characters (they would reach
// metric labels, logs and terminals raw), and names longer than
// maxPoolName bytes. The Caddyfile and JSON apply the same rule.
func checkPoolName(name string) error {
	if len(name) > maxPoolName {
		return fmt.Errorf("%q is longer than %d bytes", name, maxPoolName)
	}
	if !utf8.ValidString(name) {
		return fmt.Errorf("%q is not valid UTF-8", name)
	}
	for _, r := range name {
		switch {
		case r == '|' || r == '/':
			return fmt.Errorf("%q must not contain '|' or '/'", name)
		case unicode.IsSpace(r):
			return fmt.Errorf("%q must not contain spaces", name)
		case !unicode.IsPrint(r):
			return fmt.Errorf("%q must not contain control or unprintable characters (%U)", name, r)
		}
	}
	return nil
}

// workerOwner is the pool and upstream a worker id stands for.
type workerOwner struct{ pool, dial string }

// claimedIDs records, per config being provisioned (keyed by its
// context, which every module of one config shares), the worker ids its
// handlers use and what each stands for. A config's entry goes when its
// context is cancelled, as it is when the config stops or fails to load.
var claimedIDs = struct {
	sync.Mutex
	m map[context.Context]map[string]workerOwner
}{m: make(map[context.Context]map[string]workerOwner)}

// claimWorkerIDs refuses a config in which two workers get the same id
// (pool.WorkerID keeps only letters, digits, '.', '-' and '_', so pools
// `team:a` and `team-a` with the same upstream would), naming both: the
// admin API, the status page and metrics could address only one of
// them. Workers of one pool and upstream shared by several handlers are
// one worker and have one id. Dynamic workers are not known at provision
// and are not checked.
func (h *Handler) claimWorkerIDs(ctx caddy.Context) error {
	key := ctx.Context
	claimedIDs.Lock()
	defer claimedIDs.Unlock()
	ids, ok := claimedIDs.m[key]
	if !ok {
		ids = make(map[string]workerOwner)
		claimedIDs.m[key] = ids
		context.AfterFunc(key, func() {
			claimedIDs.Lock()
			delete(claimedIDs.m, key)
			claimedIDs.Unlock()
		})
	}
	for _, up := range h.Upstreams {
		if up == nil {
			continue
		}
		id := pool.WorkerID(h.poolName, up.Dial)
		mine := workerOwner{pool: h.poolName, dial: up.Dial}
		if other, taken := ids[id]; taken && other != mine {
			return fmt.Errorf("name: worker id %q stands for both upstream %s of pool %q and upstream %s of pool %q: rename one of the pools (ids keep only letters, digits, '.', '-' and '_')",
				id, other.dial, other.pool, mine.dial, mine.pool)
		}
		ids[id] = mine
	}
	return nil
}

// asActive returns the health block as reverse_proxy's active health
// checks, field for field.
func (hc *HealthConfig) asActive() *reverseproxy.ActiveHealthChecks {
	return &reverseproxy.ActiveHealthChecks{
		URI:             hc.URI,
		Port:            hc.Port,
		Upstream:        hc.Upstream,
		Headers:         hc.Headers,
		Method:          hc.Method,
		Body:            hc.Body,
		FollowRedirects: hc.FollowRedirects,
		Interval:        hc.Interval,
		Timeout:         hc.Timeout,
		MaxSize:         hc.MaxSize,
		ExpectStatus:    hc.ExpectStatus,
		ExpectBody:      hc.ExpectBody,
		Passes:          hc.Passes,
		Fails:           hc.Fails,
	}
}

// activeFieldsSet names the fields of reverse_proxy's active health
// checks that are set, by their JSON names.
func activeFieldsSet(a *reverseproxy.ActiveHealthChecks) []string {
	var out []string
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"interval", a.Interval != 0}, {"timeout", a.Timeout != 0},
		{"expect_status", a.ExpectStatus != 0}, {"expect_body", a.ExpectBody != ""},
		{"passes", a.Passes != 0}, {"fails", a.Fails != 0},
		{"upstream", a.Upstream != ""}, {"headers", len(a.Headers) > 0},
		{"method", a.Method != ""}, {"body", a.Body != ""},
		{"follow_redirects", a.FollowRedirects}, {"max_size", a.MaxSize != 0},
	} {
		if f.set {
			out = append(out, "health_checks.active."+f.name)
		}
	}
	return out
}

// logDefaults logs, once per handler at provision, the defaults this
// handler runs with where they differ from reverse_proxy's, so that a
// swap from reverse_proxy changes nothing silently. Settings the config
// gives are not listed.
func (h *Handler) logDefaults() {
	if h.logger == nil || h.cfg == nil {
		return
	}
	var fields []zap.Field
	if h.LoadBalancing == nil || (h.LoadBalancing.SelectionPolicyRaw == nil && h.LoadBalancing.SelectionPolicy == nil) {
		fields = append(fields, zap.String("lb_policy", "bifrost_p2c (latency and load; reverse_proxy: random)"))
	}
	if h.Retry == nil || h.Retry.Attempts == 0 {
		fields = append(fields, zap.String("retry.attempts",
			fmt.Sprintf("%d tries on different workers (reverse_proxy: 1, no retries without lb_retries or lb_try_duration)", h.cfg.retry.policy.Attempts)))
	}
	if pc := h.cfg.probe; pc != nil {
		if h.Health.Passes == 0 {
			fields = append(fields, zap.String("health.passes", fmt.Sprintf("%d (reverse_proxy health_passes: 1)", pc.settings.Passes)))
		}
		if h.Health.Fails == 0 {
			fields = append(fields, zap.String("health.fails", fmt.Sprintf("%d (reverse_proxy health_fails: 1)", pc.settings.Fails)))
		}
	}
	if len(fields) == 0 {
		return
	}
	fields = append([]zap.Field{zap.String("pool", h.poolName)}, fields...)
	h.logger.Info("defaults that differ from reverse_proxy's (set them to silence this)", fields...)
}
