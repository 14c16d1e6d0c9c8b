package bifrost

import (
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// Placeholders that retry.match expressions read, as reverse_proxy's
// retry_match expressions do.
const (
	transportErrorPlaceholder = "http.reverse_proxy.is_transport_error"
	statusCodePlaceholder     = "http.reverse_proxy.status_code"
	statusTextPlaceholder     = "http.reverse_proxy.status_text"
)

// provisionRetryMatch loads retry.match. With it and without explicit
// retry.methods, the default safe methods no longer apply: the
// match alone says which requests may be sent again, as with
// reverse_proxy's retry_match. It runs after provisionPolicies.
func (h *Handler) provisionRetryMatch(ctx caddy.Context) error {
	rc := h.Retry
	if rc == nil || len(rc.MatchRaw) == 0 {
		return nil
	}
	// which sets look at the response, read before loading clears MatchRaw
	var onResponse []int
	for i, raw := range rc.MatchRaw {
		if referencesResponse(raw) {
			onResponse = append(onResponse, i)
		}
	}
	mods, err := ctx.LoadModule(rc, "MatchRaw")
	if err != nil {
		return fmt.Errorf("retry: loading match: %w", err)
	}
	if err := rc.match.FromInterface(mods); err != nil {
		return fmt.Errorf("retry: match: %w", err)
	}
	rc.onResponse = nil
	for _, i := range onResponse {
		rc.onResponse = append(rc.onResponse, rc.match[i])
	}
	if len(rc.Methods) == 0 {
		h.methods = nil
	}
	return nil
}

// mayRepeat reports whether a request that may have reached an upstream
// may be sent again after a failure: its method is in retry.methods, or it
// matches retry.match. status is the failed try's response status, 0 when
// none arrived (a transport error): match expressions then see
// `{http.reverse_proxy.is_transport_error}` and no status of an earlier
// try.
func (h *Handler) mayRepeat(r *http.Request, status int) bool {
	if slices.Contains(h.methods, r.Method) {
		return true
	}
	if h.Retry == nil || len(h.Retry.match) == 0 {
		return false
	}
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok && status == 0 {
		repl.Set(transportErrorPlaceholder, true)
		defer repl.Delete(transportErrorPlaceholder)
		for _, key := range []string{statusCodePlaceholder, statusTextPlaceholder} {
			if v, ok := repl.Get(key); ok {
				repl.Delete(key)
				defer repl.Set(key, v)
			}
		}
	}
	match, err := h.Retry.match.AnyMatchWithError(r)
	if err != nil {
		h.logger.Error("error matching request for retry", zap.String("pool", h.poolName), zap.Error(err))
		return false
	}
	return match
}

// referencesResponse reports whether a raw matcher set names a response
// placeholder, in its long or short form, so that it can only be decided
// once a response arrived.
func referencesResponse(set caddy.ModuleMap) bool {
	for _, raw := range set {
		s := string(raw)
		for _, p := range []string{"rp.status_code", "rp.status_text", "rp.header.",
			"reverse_proxy.status_code", "reverse_proxy.status_text", "reverse_proxy.header."} {
			if strings.Contains(s, p) {
				return true
			}
		}
	}
	return false
}

// retryMatchesResponse reports whether the response of a try, whose
// placeholders reverse_proxy has set, matches a retry match set that
// looks at responses: such a response is retried like a failure.
func (h *Handler) retryMatchesResponse(r *http.Request) bool {
	if h.Retry == nil || len(h.Retry.onResponse) == 0 {
		return false
	}
	match, err := h.Retry.onResponse.AnyMatchWithError(r)
	if err != nil {
		h.logger.Error("error matching a response for retry", zap.String("pool", h.poolName), zap.Error(err))
		return false
	}
	return match
}
