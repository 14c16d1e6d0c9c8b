package recovery

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DefaultMaxRetryAfter caps the delay a Retry-After header can ask for, so a
// worker cannot take itself out of rotation for hours with one header.
const DefaultMaxRetryAfter = time.Minute

// Attempt describes the outcome of one try against one upstream. Dialed and
// Wrote say whether a connection was obtained and the request fully
// written: an httptrace.ClientTrace (GotConn, WroteRequest) tells exactly;
// a caller that knows less should set Dialed whenever the request may have
// left (Bifrost's handler clears it only for reverse_proxy's DialError), so
// that Classify stays on the safe side (see Classification.Sent). It is a
// plain value.
type Attempt struct {
	Err    error       // transport/handler error from the try, may be nil
	Status int         // response status if a response arrived (0 if none)
	Header http.Header // response headers (for Retry-After), may be nil
	Dialed bool        // a connection to the upstream was obtained
	Wrote  bool        // the request was fully written to the upstream
}

// Classification is what Classify decided about an Attempt. It is a plain
// value.
type Classification struct {
	Kind     Kind
	Severity Severity
	Action   Action

	// Delay is the recovery delay: the Retry-After of a failure status when
	// present and valid (capped at Classifier.MaxRetryAfter), else
	// Kind.RecoveryDelay(), and at least DelayThrottled when Action is
	// ActionThrottle (a throttle rule on a kind without a delay).
	Delay time.Duration

	// Failure reports whether the try failed: it is false for KindNone and
	// KindCanceled. A failure counts against its worker (breaker, health)
	// unless its Action is ActionIgnore.
	Failure bool

	// Sent reports whether the request may have reached the upstream
	// application, so that only idempotent requests may be retried. It is
	// true for every status outcome. For transport errors it is false only
	// when nothing can have reached the application: a refused or
	// unreachable dial, a DNS failure, a failed TLS verification, or any
	// error before a connection was obtained. Once a connection was obtained
	// it is true even if the request was not completely written, because a
	// partial write (headers, part of a body) may already be acted on.
	Sent bool
}

// Rule maps a response status to a kind, overriding the default
// classification. Exactly one of Status and Class is set. It is a plain
// value; build it with ParseRule to have it checked.
type Rule struct {
	Status int    // exact status code, such as 429; 0 for a class rule
	Class  int    // status class 1..5 for "1xx".."5xx"; 0 for an exact rule
	Kind   Kind   // the kind a matching status gets; KindNone makes it a success
	Action Action // the action; ActionNone means the kind's default
}

// Classifier turns attempt outcomes into classifications. Its zero value (and
// a nil *Classifier) classifies with the defaults. A Classifier must not be
// modified while in use; Classify is safe for concurrent use.
type Classifier struct {
	// Rules are user rules for response statuses, checked before the
	// defaults: an exact status rule beats a class rule, and the first match
	// of each sort wins.
	Rules []Rule

	// MaxRetryAfter caps a Retry-After delay (default DefaultMaxRetryAfter).
	MaxRetryAfter time.Duration
}

// Classify classifies one attempt. now is used to resolve a Retry-After
// given as an HTTP date. The rules, in order:
//
//  1. context.Canceled anywhere in the error chain: KindCanceled, not a
//     failure. (Whether a context.DeadlineExceeded was the client's own
//     deadline is for the caller to decide; on its own it is a timeout.)
//     An *http.MaxBytesError (the client's request body passed a limit,
//     such as Caddy's request_body max_size): KindResourceLimit, whose
//     action, ActionIgnore, holds it against no worker.
//  2. A TLS verification failure (*tls.CertificateVerificationError, or an
//     x509 unknown-authority, hostname or invalid-certificate error):
//     KindIsolationViolation, not sent.
//  3. The proxy and the upstream disagree on how to talk (see
//     isProtocolMismatch): an HTTP answer to a TLS handshake, a TLS
//     alert or version mismatch (ALPN, protocol version), an HTTP/2
//     preface answered in HTTP/1 or the reverse: KindConfig, not sent.
//  4. A timeout (net.Error with Timeout(), os.ErrDeadlineExceeded,
//     context.DeadlineExceeded): KindTimeout.
//  5. A refused or unreachable dial, or a DNS error: KindConnection, not
//     sent.
//  6. ErrWorker in the chain (the worker's own proxy failed: a panic
//     recovered in a try): KindWorker.
//  7. A reset, broken pipe, io.EOF or io.ErrUnexpectedEOF: KindIO when the
//     request was fully written, else KindConnection.
//  8. Any other error: KindConnection before a connection was obtained;
//     after it, KindIO for a socket error (*net.OpError) and KindWorker
//     for a transport error that nothing above explains.
//  9. No error: the user rules, then the defaults: 429 is KindThrottled,
//     503 with a valid Retry-After is KindThrottled, 421 (Misdirected
//     Request: the upstream is not configured for this request's host) is
//     KindConfig with ActionSkipWorker and not sent (RFC 9110 §15.5.20
//     lets any request be retried on another connection; one client's
//     Host must not take a worker out), other 5xx except 501 and 505 are
//     KindHTTP, and everything else is a success (KindNone).
//
// Classify does not allocate when the attempt has no error and a
// non-failure status.
func (c *Classifier) Classify(a Attempt, now time.Time) Classification {
	if a.Err != nil {
		return classifyErr(a)
	}
	kind, action := KindNone, ActionNone
	matched := false
	if c != nil {
		if r, ok := c.match(a.Status); ok {
			kind, action, matched = r.Kind, r.Action, true
		}
	}
	var (
		retryAfter    time.Duration
		hasRetryAfter bool
		checked       bool // Retry-After was already looked at
	)
	if !matched {
		kind = defaultStatusKind(a.Status)
		if a.Status == http.StatusMisdirectedRequest {
			// a 421 may be about one request's host (one client's),
			// so it holds nothing against its worker: the request
			// goes elsewhere (the kind's isolate_worker is for the
			// mismatches no client can cause)
			action = ActionSkipWorker
		}
		if a.Status == http.StatusServiceUnavailable {
			retryAfter, hasRetryAfter = c.retryAfter(a.Header, now)
			checked = true
			if hasRetryAfter {
				kind = KindThrottled
			}
		}
	}
	// a 421 says the request was not processed (RFC 9110 §15.5.20)
	cl := newClassification(kind, action, a.Status != 0 && !(kind == KindConfig && a.Status == http.StatusMisdirectedRequest))
	if !cl.Failure {
		return cl
	}
	if !checked {
		retryAfter, hasRetryAfter = c.retryAfter(a.Header, now)
	}
	if hasRetryAfter {
		cl.Delay = retryAfter
	}
	return cl
}

// HasRule reports whether a user rule classifies status.
func (c *Classifier) HasRule(status int) bool {
	if c == nil {
		return false
	}
	_, ok := c.match(status)
	return ok
}

// match returns the user rule for status: the first exact rule, else the
// first class rule.
func (c *Classifier) match(status int) (Rule, bool) {
	class := -1
	for i, r := range c.Rules {
		if r.Status != 0 && r.Status == status {
			return r, true
		}
		if class < 0 && r.Status == 0 && r.Class != 0 && r.Class == status/100 {
			class = i
		}
	}
	if class < 0 {
		return Rule{}, false
	}
	return c.Rules[class], true
}

// retryAfter returns the capped Retry-After delay in h, if valid.
func (c *Classifier) retryAfter(h http.Header, now time.Time) (time.Duration, bool) {
	if h == nil {
		return 0, false
	}
	v := h.Get("Retry-After")
	if v == "" {
		return 0, false
	}
	d, ok := ParseRetryAfter(v, now)
	if !ok {
		return 0, false
	}
	maxDelay := DefaultMaxRetryAfter
	if c != nil && c.MaxRetryAfter > 0 {
		maxDelay = c.MaxRetryAfter
	}
	return min(d, maxDelay), true
}

// defaultStatusKind is the default kind of a response status.
func defaultStatusKind(status int) Kind {
	switch {
	case status == http.StatusTooManyRequests:
		return KindThrottled
	case status == http.StatusMisdirectedRequest:
		return KindConfig
	case status == http.StatusNotImplemented, status == http.StatusHTTPVersionNotSupported:
		// The same request will get the same answer from any worker.
		return KindNone
	case status >= 500 && status <= 599:
		return KindHTTP
	default:
		return KindNone
	}
}

// NewClassification returns the classification of a failure of kind that
// the proxy decided on itself, without an attempt to classify (such as
// KindPoolExhausted for a worker whose concurrency limit is full): the
// kind's severity and delay, action or the kind's default when it is
// ActionNone, and sent as given.
func NewClassification(kind Kind, action Action, sent bool) Classification {
	return newClassification(kind, action, sent)
}

// newClassification fills in the defaults of kind; action overrides the
// kind's default action unless it is ActionNone. A throttle takes its
// worker out for at least DelayThrottled when no Retry-After says
// otherwise, whatever the kind's own delay.
func newClassification(kind Kind, action Action, sent bool) Classification {
	if action == ActionNone {
		action = kind.SuggestedRecovery()
	}
	delay := kind.RecoveryDelay()
	if action == ActionThrottle {
		delay = max(delay, DelayThrottled)
	}
	return Classification{
		Kind:     kind,
		Severity: kind.Severity(),
		Action:   action,
		Delay:    delay,
		Failure:  kind != KindNone && kind != KindCanceled,
		Sent:     sent,
	}
}

// classifyErr classifies an attempt that ended with an error (rules 1-6).
func classifyErr(a Attempt) Classification {
	err := a.Err
	// Once a connection is obtained, bytes may have reached the application
	// even if the trace never saw the write complete.
	maybeSent := a.Wrote || a.Dialed
	switch {
	case errors.Is(err, context.Canceled):
		return newClassification(KindCanceled, ActionNone, maybeSent)
	case isBodyLimit(err):
		return newClassification(KindResourceLimit, ActionNone, maybeSent)
	case isTLSVerification(err):
		return newClassification(KindIsolationViolation, ActionNone, false)
	case isProtocolMismatch(err):
		return newClassification(KindConfig, ActionNone, false)
	case isTimeout(err):
		return newClassification(KindTimeout, ActionNone, maybeSent)
	case isUnreachable(err):
		return newClassification(KindConnection, ActionNone, false)
	case errors.Is(err, ErrWorker):
		return newClassification(KindWorker, ActionNone, maybeSent)
	case !a.Dialed:
		return newClassification(KindConnection, ActionNone, a.Wrote)
	case isBrokenConn(err) && !a.Wrote:
		return newClassification(KindConnection, ActionNone, maybeSent)
	case isBrokenConn(err) || isSocketError(err):
		return newClassification(KindIO, ActionNone, maybeSent)
	case isProtocolText(err):
		return newClassification(KindConfig, ActionNone, false)
	default:
		return newClassification(KindWorker, ActionNone, maybeSent)
	}
}

// protocolMismatches are texts of the errors of Go's HTTP and TLS
// clients that say the upstream speaks another protocol than the proxy
// was configured for, where the error has no type of its own to test.
var protocolMismatches = []string{
	// crypto/tls, client side of a version or ALPN disagreement
	"tls: server selected unsupported protocol version",
	"tls: server selected unadvertised ALPN protocol",
	"tls: first record does not look like a TLS handshake",
	// net/http: an HTTP/1 request answered by an HTTP/2-only server (its
	// first frame; other bytes that are not HTTP are no mismatch)
	`malformed HTTP response "\x00\x00`,
	// net/http's HTTP/2 client: its preface answered by an HTTP/1 server
	"frame too large",
	"http2: failed reading the frame payload",
	"http2: server sent GOAWAY and closed the connection; LastStreamID=0",
	"server's first frame was not SETTINGS",
}

// isProtocolMismatch reports whether err says, by its type, that the
// proxy and the upstream disagree on how to talk: an HTTP answer to a TLS
// handshake (tls.RecordHeaderError), or a TLS alert from the upstream
// during the handshake (no common ALPN protocol, version or cipher, a
// client certificate refused). isProtocolText knows the mismatches that
// have no type. None of them clears by itself: the configuration of one
// side must change.
func isProtocolMismatch(err error) bool {
	return anyInChain(err, func(e error) bool {
		switch e := e.(type) {
		case tls.RecordHeaderError, *tls.RecordHeaderError, tls.AlertError:
			return true
		case *net.OpError:
			// crypto/tls reports an alert from the peer so
			return e.Op == "remote error"
		}
		return false
	})
}

// isProtocolText reports whether err's text is one of
// protocolMismatches: a TLS version or ALPN disagreement seen by the
// client, an HTTP/1 answer to HTTP/2 (h2c) or the reverse.
func isProtocolText(err error) bool {
	msg := err.Error()
	for _, m := range protocolMismatches {
		if strings.Contains(msg, m) {
			return true
		}
	}
	return false
}

// isSocketError reports whether err is an error of the connection's
// socket (a read or write that failed), which explains a failure as
// KindIO.
func isSocketError(err error) bool {
	return anyInChain(err, func(e error) bool {
		_, ok := e.(*net.OpError)
		return ok
	})
}

// isBodyLimit reports whether err says the client's request body passed
// its size limit (http.MaxBytesReader, which Caddy's request_body uses).
func isBodyLimit(err error) bool {
	return anyInChain(err, func(e error) bool {
		_, ok := e.(*http.MaxBytesError)
		return ok
	})
}

// isTLSVerification reports whether err says the upstream's certificate
// failed verification: it is not who it should be.
func isTLSVerification(err error) bool {
	return anyInChain(err, func(e error) bool {
		switch e.(type) {
		case *tls.CertificateVerificationError,
			x509.UnknownAuthorityError, *x509.UnknownAuthorityError,
			x509.HostnameError, *x509.HostnameError,
			x509.CertificateInvalidError, *x509.CertificateInvalidError:
			return true
		}
		return false
	})
}

// isTimeout reports whether err is a timeout of any sort.
func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	return anyInChain(err, func(e error) bool {
		ne, ok := e.(net.Error)
		return ok && ne.Timeout()
	})
}

// isUnreachable reports whether err proves the request never left: the
// upstream refused the connection, could not be routed to, or could not be
// resolved.
func isUnreachable(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH) ||
		anyInChain(err, func(e error) bool {
			_, ok := e.(*net.DNSError)
			return ok
		})
}

// anyInChain reports whether match holds for err or any error it wraps,
// walking the tree in the order errors.As does. It is errors.As for type
// tests, without the allocation errors.As costs for each target.
func anyInChain(err error, match func(error) bool) bool {
	for err != nil {
		if match(err) {
			return true
		}
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			err = u.Unwrap()
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				if anyInChain(e, match) {
					return true
				}
			}
			return false
		default:
			return false
		}
	}
	return false
}

// isBrokenConn reports whether err is a connection that broke under the
// request: a reset, a broken pipe, or an early close.
func isBrokenConn(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF)
}

// ParseRule parses a classification rule from its Caddyfile form:
// status is an exact code ("429") or a class ("5xx"), kind a kind name, and
// action an action name or "" for the kind's default. The kinds that no
// response can be are refused: "canceled" (the client went away),
// "worker_creation_failed" and "worker_recovery_failed" (booked by the
// proxy about a worker, not about a try). So are the actions that make
// no sense for a status's kind: "none" spelt out, and an action on
// "none" (a success is no failure to act on).
func ParseRule(status string, kind string, action string) (Rule, error) {
	var r Rule
	s := strings.ToLower(strings.TrimSpace(status))
	switch {
	case len(s) == 3 && s[1:] == "xx" && s[0] >= '1' && s[0] <= '5':
		r.Class = int(s[0] - '0')
	default:
		code, err := strconv.Atoi(s)
		if err != nil || !isDigits(s) || code < 100 || code > 599 {
			return Rule{}, fmt.Errorf("invalid status %q: want a code from 100 to 599 or a class like 5xx", status)
		}
		r.Status = code
	}
	k, err := ParseKind(kind)
	if err != nil {
		return Rule{}, err
	}
	switch k {
	case KindCanceled:
		return Rule{}, fmt.Errorf("kind %q cannot be given to a status: it means the client went away", kind)
	case KindWorkerCreationFailed, KindWorkerRecoveryFailed:
		return Rule{}, fmt.Errorf("kind %q cannot be given to a status: it is booked by the proxy about a worker, not about a response", kind)
	}
	r.Kind = k
	if action != "" {
		if r.Action, err = ParseAction(action); err != nil {
			return Rule{}, err
		}
		switch {
		case r.Action == ActionNone:
			return Rule{}, fmt.Errorf("action %q is not an action: leave it out for the kind's default", action)
		case k == KindNone:
			return Rule{}, fmt.Errorf("kind %q makes the status a success: it takes no action, got %q", kind, action)
		}
	}
	return r, nil
}

// ParseRetryAfter parses a Retry-After header value (RFC 9110 §10.2.3):
// either a number of seconds or an HTTP date, which is resolved against now
// (a date in the past means no delay). It reports false for an empty,
// negative or malformed value. Huge values are returned saturated, not
// capped: the caller applies its own maximum.
func ParseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if isDigits(v) {
		secs, err := strconv.ParseInt(v, 10, 64)
		if err != nil || secs > int64(math.MaxInt64/time.Second) {
			// Only a range error is possible here: the value is all digits.
			return time.Duration(math.MaxInt64), true
		}
		return time.Duration(secs) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return max(t.Sub(now), 0), true
}

// isDigits reports whether s is non-empty and all ASCII digits.
func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
