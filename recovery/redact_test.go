package recovery

import (
	"strings"
	"testing"
)

func TestRedact(t *testing.T) {
	cases := []struct{ in, want string }{
		{`malformed MIME header line: GET /health?token=abc HTTP/1.1`, `malformed MIME header line: GET /health?redacted HTTP/1.1`},
		{`Get "https://user:pw@example.com/x?a=b": refused`, `Get "https://redacted@example.com/x?redacted": refused`},
		{`echo: Authorization: Bearer abc`, `echo: Authorization: redacted`},
		{`"Cookie: session=abc; x=y"`, `"Cookie: redacted"`},
		{`dial tcp 127.0.0.1:1: connect: connection refused`, `dial tcp 127.0.0.1:1: connect: connection refused`},
	}
	for _, c := range cases {
		if got := Redact(c.in); got != c.want {
			t.Errorf("Redact(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// The manager records a message with its secrets redacted, whoever books
// it.
func TestRecordRedacts(t *testing.T) {
	m := NewManager(ManagerConfig{HistoryLimit: 10, MaxConcurrentRecovery: 1, MessageLimit: 256})
	m.Record(ContextualError{Kind: KindIO, Message: `GET /x?token=s3cret HTTP/1.1`})
	errs := m.Errors(Filter{})
	if len(errs) != 1 || strings.Contains(errs[0].Message, "s3cret") {
		t.Fatalf("history: %+v", errs)
	}
}
