package bifrost

import (
	"cmp"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/bifrost-proxy/bifrost/breaker"
	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/recovery"
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
	// PUT DELETE (the idempotent methods of RFC 9110).
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
	// until its Retry-After) only when its last three answers were 429s,
	// and never when no other worker could serve. Listing `429` declares
	// 429s to be the worker's state: they are retried on another worker,
	// and each one throttles its worker, as a 503 with Retry-After does.
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
	// default idempotent methods no longer apply. A request whose dial
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

	// Timeout bounds one probe. Default: 2s.
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
	// headers before it counts as stuck. A worker with HangRequests stuck
	// requests that has answered nothing else for HangThreshold, since the
	// oldest of them was sent, while its peers answer, is hanging: it is
	// isolated (kind `timeout`) before any timeout fires. A worker that
	// keeps answering other requests is not hanging, whatever its slow
	// requests (long polls). Its stuck requests are answered
	// through hedging or retry.per_try_timeout when configured. Default:
	// 2s.
	HangThreshold caddy.Duration `json:"hang_threshold,omitempty"`

	// HangRequests is the number of stuck requests that make a worker
	// hanging. Default: 3.
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

	// Action overrides the kind's default recovery action, e.g. `retry`.
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

// Defaults chosen for the request path; see each field's documentation.
const (
	defaultMaxBody         = 1 << 20
	defaultMaxBodyTotal    = 64 << 20
	defaultMaxHeldResponse = 64 << 10
	defaultBudget          = 0.2
	defaultBreakerTrips    = 2
	defaultProbeStatus     = 2
	defaultHistoryLimit    = 1000
	defaultMaxPercent      = 50
	defaultBreakerTimeout  = time.Second
	defaultBackoffInitial  = 20 * time.Millisecond
	defaultBackoffMax      = time.Second
	defaultStdevFactor     = 1.0
	defaultHangThreshold   = 2 * time.Second
	defaultHangRequests    = 3
	defaultOutlierRequests = 20
	// defaultP2CDecay is the latency memory of bifrost's default policy:
	// much shorter than bifrost_p2c's own 10s default, so that a worker
	// that was 100× slower for a while earns its traffic back within about
	// five seconds (ln 100 × 1s). The estimate still averages hundreds of
	// samples per second of traffic, and its peak behaviour keeps it
	// cautious.
	defaultP2CDecay        = time.Second
	defaultOutlierInterval = 5 * time.Second
)

// defaultRetryMethods are the idempotent methods of RFC 9110 §9.2.2.
var defaultRetryMethods = []string{"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"}

// retryConditions are the values accepted by RetryConfig.On.
var retryConditions = []string{"connect_failure", "timeout", "reset", "5xx", "429"}

// validate checks the retry block; errors name the field.
func (rc *RetryConfig) validate() error {
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
	if err := bc.settings().Validate(); err != nil {
		return fmt.Errorf("breaker: %w", err)
	}
	return nil
}

// The breaker's defaults; see BreakerConfig.
const (
	defaultBreakerFailures    = 5
	defaultBreakerSuccesses   = 3
	defaultBreakerMinRequests = 10
)

// settings returns the breaker settings of this block (nil for none), with
// the defaults applied: the breaker package has none of its own.
func (bc *BreakerConfig) settings() breaker.Settings {
	if bc == nil {
		bc = &BreakerConfig{}
	}
	return breaker.Settings{
		Failures:     uint32(cmp.Or(bc.Failures, defaultBreakerFailures)),
		FailureRatio: bc.FailureRatio,
		MinRequests:  uint32(cmp.Or(bc.MinRequests, defaultBreakerMinRequests)),
		Window:       time.Duration(bc.Window),
		Successes:    uint32(cmp.Or(bc.Successes, defaultBreakerSuccesses)),
		Timeout:      cmp.Or(time.Duration(bc.Timeout), defaultBreakerTimeout),
	}
}

// probeSettings returns the prober's settings for this block, defaults
// not applied.
func (hc *HealthConfig) probeSettings() health.ProbeSettings {
	return health.ProbeSettings{
		Interval: time.Duration(hc.Interval),
		Timeout:  time.Duration(hc.Timeout),
		Passes:   hc.Passes,
		Fails:    hc.Fails,
	}
}

// validate checks the health block; errors name the field.
func (hc *HealthConfig) validate() error {
	if hc.URI != "" && !strings.HasPrefix(hc.URI, "/") {
		return fmt.Errorf("health: uri must start with '/'")
	}
	if hc.Interval < 0 || hc.Timeout < 0 {
		return fmt.Errorf("health: interval and timeout must not be negative")
	}
	if hc.Passes < 0 || hc.Fails < 0 {
		return fmt.Errorf("health: passes and fails must not be negative")
	}
	if hc.ExpectStatus != 0 && (hc.ExpectStatus < 1 || hc.ExpectStatus > 599 || (hc.ExpectStatus > 5 && hc.ExpectStatus < 100)) {
		return fmt.Errorf("health: expect_status must be a status code or class 1-5, got %d", hc.ExpectStatus)
	}
	if hc.ExpectBody != "" {
		if _, err := regexp.Compile(hc.ExpectBody); err != nil {
			return fmt.Errorf("health: expect_body: %w", err)
		}
	}
	if err := hc.validateProbe(); err != nil {
		return err
	}
	if !hc.active() && (hc.Interval != 0 || hc.Timeout != 0 || hc.ExpectStatus != 0 || hc.ExpectBody != "" || hc.Passes != 0 || hc.Fails != 0 ||
		hc.Upstream != "" || len(hc.Headers) > 0 || hc.Method != "" || hc.Body != "" || hc.FollowRedirects || hc.MaxSize != 0) {
		return fmt.Errorf("health: uri is required (or port): the other settings configure active probes, which probe uri on each worker")
	}
	if err := hc.probeSettings().Validate(); err != nil {
		return fmt.Errorf("health: %w", err)
	}
	return nil
}

// validate checks the isolation block; errors name the field.
func (ic *IsolationConfig) validate() error {
	if ic.BaseTime < 0 || ic.MaxTime < 0 || ic.SlowStart < 0 || ic.OutlierInterval < 0 {
		return fmt.Errorf("isolation: durations must not be negative")
	}
	if ic.MaxTime > 0 && ic.BaseTime > ic.MaxTime {
		return fmt.Errorf("isolation: base_time %s is above max_time %s",
			time.Duration(ic.BaseTime), time.Duration(ic.MaxTime))
	}
	if ic.BaseTime == 0 && ic.MaxTime > 0 && time.Duration(ic.MaxTime) < health.DefaultBaseTime {
		return fmt.Errorf("isolation: max_time %s is below the default base_time %s; set base_time too",
			time.Duration(ic.MaxTime), health.DefaultBaseTime)
	}
	if ic.MaxTime == 0 && time.Duration(ic.BaseTime) > health.DefaultMaxTime {
		return fmt.Errorf("isolation: base_time %s is above the default max_time %s; set max_time too",
			time.Duration(ic.BaseTime), health.DefaultMaxTime)
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

// matches reports whether a classified failure is one to retry. An
// explicit `retry` action from a classify rule always matches.
func (o retryOn) matches(cls recovery.Classification, status int) bool {
	if cls.Action == recovery.ActionRetry && cls.Kind == recovery.KindHTTP {
		return true
	}
	switch cls.Kind {
	case recovery.KindConnection, recovery.KindIsolationViolation, recovery.KindPoolExhausted,
		recovery.KindResourceLimit, recovery.KindConfig, recovery.KindWorkerCreationFailed:
		return o.connect
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
