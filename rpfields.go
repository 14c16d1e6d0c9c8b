package bifrost

import (
	"errors"
	"fmt"
	"strconv"

	"go.uber.org/zap"
)

// adoptReverseProxyFields maps the reverse_proxy JSON fields that Bifrost
// replaces onto Bifrost's own, so that a reverse_proxy handler's JSON
// works unchanged under `"handler": "bifrost"`, as the Caddyfile mapping
// does for the subdirectives:
//
//	load_balancing.retries            retry.attempts (retries + 1)
//	load_balancing.try_duration       retry.try_duration
//	load_balancing.try_interval       retry.backoff_initial
//	load_balancing.retry_match        retry.match
//	health_checks.active.*            health.* (path is uri)
//	health_checks.passive.max_fails   breaker.failures
//	health_checks.passive.fail_duration  breaker.window
//	health_checks.passive.unhealthy_status  classify rules of kind http
//	health_checks.passive.unhealthy_request_count  max_requests
//
// A field set both ways is refused, naming both; so is what has no
// equivalent (passive unhealthy_latency),
// naming the field to use instead. The mapped reverse_proxy fields are
// cleared. Upstreams listed more than once are checked too (see
// checkDuplicateUpstreams). It runs first in Provision.
func (h *Handler) adoptReverseProxyFields() error {
	if err := h.adoptLoadBalancing(); err != nil {
		return err
	}
	if err := h.adoptHealthChecks(); err != nil {
		return err
	}
	return h.checkDuplicateUpstreams()
}

// adoptLoadBalancing maps load_balancing's retry fields onto retry.
func (h *Handler) adoptLoadBalancing() error {
	lb := h.LoadBalancing
	if lb == nil || lb.Retries == 0 && lb.TryDuration == 0 && lb.TryInterval == 0 && len(lb.RetryMatchRaw) == 0 {
		return nil
	}
	h.Retry = ensure(h.Retry)
	if lb.Retries != 0 {
		switch {
		case lb.Retries < 0:
			return fmt.Errorf("load_balancing.retries must not be negative, got %d", lb.Retries)
		case h.Retry.Attempts != 0:
			return errors.New("load_balancing.retries and retry.attempts are both set: keep retry.attempts")
		}
		h.Retry.Attempts = lb.Retries + 1
		lb.Retries = 0
	}
	if err := adopt(&lb.TryDuration, &h.Retry.TryDuration, "load_balancing.try_duration", "retry.try_duration"); err != nil {
		return err
	}
	if err := adopt(&lb.TryInterval, &h.Retry.BackoffInitial, "load_balancing.try_interval", "retry.backoff_initial"); err != nil {
		return err
	}
	if len(lb.RetryMatchRaw) > 0 {
		if len(h.Retry.MatchRaw) > 0 {
			return errors.New("load_balancing.retry_match and retry.match are both set: keep retry.match")
		}
		h.Retry.MatchRaw = lb.RetryMatchRaw
		lb.RetryMatchRaw = nil
	}
	return nil
}

// adoptHealthChecks maps health_checks onto health, breaker, classify and
// max_requests.
func (h *Handler) adoptHealthChecks() error {
	hcs := h.HealthChecks
	if hcs == nil {
		return nil
	}
	if a := hcs.Active; a != nil && !a.IsEnabled() {
		// no uri, path or port: reverse_proxy runs no active checks and
		// ignores the rest; so does bifrost, with a warning
		if set := activeFieldsSet(a); len(set) > 0 {
			h.warnIgnored(set, "active health checks need a uri (Caddyfile health_uri) or port; without one reverse_proxy runs none, and neither does bifrost")
		}
		hcs.Active = nil
	}
	if a := hcs.Active; a != nil {
		if h.Health != nil {
			return errors.New("health_checks.active and health are both set: keep health")
		}
		uri := a.URI
		if uri == "" {
			//lint:ignore SA1019 reverse_proxy still reads path when uri is unset, so a config may use it
			uri = a.Path
		}
		h.Health = &HealthConfig{
			URI:             uri,
			Interval:        a.Interval,
			Timeout:         a.Timeout,
			ExpectStatus:    a.ExpectStatus,
			ExpectBody:      a.ExpectBody,
			Passes:          a.Passes,
			Fails:           a.Fails,
			Port:            a.Port,
			Upstream:        a.Upstream,
			Headers:         a.Headers,
			Method:          a.Method,
			Body:            a.Body,
			FollowRedirects: a.FollowRedirects,
			MaxSize:         a.MaxSize,
		}
		if a.Upstream != "" && a.Port != 0 {
			// reverse_proxy ignores the port when an upstream is set
			h.Health.Port = 0
		}
	}
	if p := hcs.Passive; p != nil {
		if p.UnhealthyLatency != 0 && p.FailDuration == 0 {
			// reverse_proxy's passive checks are off without
			// fail_duration, and it ignores the latency
			h.warnIgnored([]string{"health_checks.passive.unhealthy_latency"}, "reverse_proxy ignores it without fail_duration; for a per-try time limit use retry.per_try_timeout")
			p.UnhealthyLatency = 0
		}
		if p.UnhealthyLatency != 0 {
			return errors.New("health_checks.passive.unhealthy_latency: not supported by bifrost; use retry.per_try_timeout")
		}
		if p.MaxFails != 0 || p.FailDuration != 0 {
			h.Breaker = ensure(h.Breaker)
			if err := adopt(&p.MaxFails, &h.Breaker.Failures, "health_checks.passive.max_fails", "breaker.failures"); err != nil {
				return err
			}
			if err := adopt(&p.FailDuration, &h.Breaker.Window, "health_checks.passive.fail_duration", "breaker.window"); err != nil {
				return err
			}
		}
		if err := adopt(&p.UnhealthyRequestCount, &h.MaxRequests, "health_checks.passive.unhealthy_request_count", "max_requests"); err != nil {
			return err
		}
		for _, code := range p.UnhealthyStatus {
			h.Classify = append(h.Classify, ClassifyRule{Status: strconv.Itoa(code), Kind: "http"})
		}
	}
	h.HealthChecks = nil
	return nil
}

// adopt moves the value of the reverse_proxy field from, when it is set,
// onto Bifrost's equivalent to, and clears from. It refuses a value when
// to is set too, naming both fields.
func adopt[T comparable](from, to *T, fromName, toName string) error {
	var zero T
	if *from == zero {
		return nil
	}
	if *to != zero {
		return fmt.Errorf("%s and %s are both set: keep %s", fromName, toName, toName)
	}
	*to, *from = *from, zero
	return nil
}

// checkDuplicateUpstreams accepts an upstream listed more than once, as
// reverse_proxy does: it is one worker (workers are keyed by address)
// that the selection policy sees once per listing, so that random,
// round_robin and the other positional policies give it that many shares
// of the traffic. The listings must agree on the upstream's own settings.
func (h *Handler) checkDuplicateUpstreams() error {
	first := make(map[string]int, len(h.Upstreams))
	for i, up := range h.Upstreams {
		if up == nil {
			continue
		}
		j, seen := first[up.Dial]
		if !seen {
			first[up.Dial] = i
			continue
		}
		if h.Upstreams[j].MaxRequests != up.MaxRequests {
			return fmt.Errorf("upstreams[%d]: %s is listed again with another max_requests than upstreams[%d]", i, up.Dial, j)
		}
	}
	return nil
}

// warnIgnored logs reverse_proxy fields that Bifrost accepts and ignores,
// as reverse_proxy does, and why.
func (h *Handler) warnIgnored(fields []string, why string) {
	if h.logger == nil {
		return
	}
	h.logger.Warn("ignoring reverse_proxy settings that have no effect", zap.Strings("fields", fields), zap.String("why", why))
}
