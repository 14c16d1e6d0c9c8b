package recovery

import (
	"regexp"
	"strings"
)

// Patterns of secrets that an error text may quote: a URL's credentials,
// a query string, and the values of headers that carry credentials. An
// upstream that breaks may echo the request (a transport error quotes the
// line it could not parse), so any error text can hold them.
var (
	userinfoPattern = regexp.MustCompile(`(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@"'<>]+@`)
	queryPattern    = regexp.MustCompile(`\?[^\s"'<>\\]+`)
	headerPattern   = regexp.MustCompile(`(?i)\b(authorization|proxy-authorization|cookie|set-cookie|x-api-key|api-key|x-auth-token)(\s*[:=]\s*)[^\r\n"'\\]*`)
)

// Redact returns s with the secrets an error text may quote replaced by
// "redacted": a URL's user and password, a query string (from its "?"
// to the next space or quote), and the values of the Authorization,
// Proxy-Authorization, Cookie, Set-Cookie and API key headers. Every
// error text that Bifrost records (history, status page, logs) goes
// through it.
// A text with nothing to redact costs no allocation.
func Redact(s string) string {
	if strings.Contains(s, "://") && strings.IndexByte(s, '@') >= 0 {
		s = userinfoPattern.ReplaceAllString(s, "${1}redacted@")
	}
	if strings.IndexByte(s, '?') >= 0 {
		s = queryPattern.ReplaceAllString(s, "?redacted")
	}
	if containsFold(s, "auth") || containsFold(s, "cookie") || containsFold(s, "api-key") {
		s = headerPattern.ReplaceAllString(s, "${1}${2}redacted")
	}
	return s
}

// containsFold reports whether s contains the lower-case ASCII word,
// whatever the case of s, without allocating.
func containsFold(s, word string) bool {
	for i := 0; i+len(word) <= len(s); i++ {
		if strings.EqualFold(s[i:i+len(word)], word) {
			return true
		}
	}
	return false
}
