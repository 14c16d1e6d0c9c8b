package status

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/bifrost-proxy/bifrost/pool"
)

// csp allows the page nothing but its own script, style sheet and
// feed: no inline script or style, no framing, no plugins, no forms.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// ServeHTTP serves the page, its assets, its feed and its actions.
func (s *Page) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	t := routePath(s.Prefix, r.URL.Path)
	if t.route == routeNone {
		return next.ServeHTTP(w, r)
	}
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", csp)
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")

	switch t.route {
	case routeAction:
		return s.serveAction(w, r, t.worker, t.action)
	case routeNotFound:
		return writeError(w, http.StatusNotFound, "no such status page resource")
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		return writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed, use GET", r.Method))
	}
	switch t.route {
	case routeRedirect:
		if p := browserPath(r); !strings.HasSuffix(p, "/") {
			return redirectToSlash(w, r, p)
		}
		// a stripped prefix left no slash, but the browser's path ends
		// with one: the page's relative URLs resolve fine
	case routeAsset:
		return serveAsset(w, r, assets[t.asset])
	case routeState:
		return pool.WriteJSON(w, http.StatusOK, s.state(time.Now(), s.poolScope(r)))
	}
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(index)))
	_, _ = w.Write(index)
	return nil
}

// browserPath returns the escaped path the browser asked for: that of
// Caddy's original request, before any rewrite or stripped prefix.
func browserPath(r *http.Request) string {
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && orig.URL != nil {
		return orig.URL.EscapedPath()
	}
	return r.URL.EscapedPath()
}

// redirectToSlash sends the browser from the page's path without its
// trailing slash, p, to the path with it, so that the page's relative
// URLs resolve below the mount point. The Location is relative, so it is
// right whatever prefix a proxy in front added or removed.
func redirectToSlash(w http.ResponseWriter, r *http.Request, p string) error {
	loc := "./" + p[strings.LastIndex(p, "/")+1:] + "/"
	if r.URL.RawQuery != "" {
		loc += "?" + r.URL.RawQuery
	}
	w.Header().Set("Location", loc)
	w.WriteHeader(http.StatusMovedPermanently)
	return nil
}

// serveAsset serves an embedded asset, revalidated with its ETag.
func serveAsset(w http.ResponseWriter, r *http.Request, a asset) error {
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("Content-Type", a.contentType)
	w.Header().Set("ETag", a.etag)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
	return nil
}

// serveAction performs an operator action requested from the page.
func (s *Page) serveAction(w http.ResponseWriter, r *http.Request, id, action string) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed, use POST", r.Method))
	}
	if !s.Actions {
		return writeError(w, http.StatusForbidden, "operator actions are disabled; enable them with `actions` in the bifrost_status block")
	}
	if err := sameOrigin(r); err != nil {
		s.logger.Info("status page action refused",
			zap.String("worker", id), zap.String("action", action),
			zap.String("remote_addr", r.RemoteAddr), zap.Error(err))
		return writeError(w, http.StatusForbidden, err.Error())
	}
	ws := pool.Lookup(id)
	if ws == nil || !s.poolScope(r).has(ws.Pool) {
		// another site's worker is as unknown as one that does not exist
		return writeError(w, http.StatusNotFound, fmt.Sprintf("unknown worker %q", id))
	}
	if err := pool.Operate(ws, action, r); err != nil {
		return writeAPIError(w, err)
	}
	now := time.Now()
	return pool.WriteJSON(w, http.StatusOK, s.worker(pool.ViewOf(ws, now), now, s.series.workerRates()))
}

// sameOrigin refuses a request that a browser did not send from the
// page's own origin. Browsers set Sec-Fetch-Site, which no page can
// forge; without it, the Origin header must name this host. A request
// with neither (curl, scripts) is refused too: the admin API is the
// interface for those.
func sameOrigin(r *http.Request) error {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" {
		if site != "same-origin" {
			return fmt.Errorf("cross-origin request refused (Sec-Fetch-Site: %s)", site)
		}
		return nil
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return errors.New("request without Origin or Sec-Fetch-Site refused; actions must come from the status page")
	}
	u, err := url.Parse(origin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || !strings.EqualFold(u.Host, r.Host) {
		return errors.New("cross-origin request refused (Origin does not match the host)")
	}
	return nil
}

// writeError writes a JSON error. The page reads these bodies, so the
// handler writes them itself instead of returning a caddyhttp.Error.
func writeError(w http.ResponseWriter, code int, msg string) error {
	return pool.WriteJSON(w, code, map[string]string{"error": msg})
}

// writeAPIError writes an error of pool.Operate, a caddy.APIError, as the
// page's JSON error.
func writeAPIError(w http.ResponseWriter, err error) error {
	var ae caddy.APIError
	if errors.As(err, &ae) && ae.Err != nil {
		return writeError(w, ae.HTTPStatus, ae.Err.Error())
	}
	return writeError(w, http.StatusInternalServerError, "internal error")
}
