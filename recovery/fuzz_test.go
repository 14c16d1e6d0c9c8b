package recovery

import (
	"net/http"
	"testing"
	"time"
)

// FuzzClassify classifies arbitrary statuses, Retry-After values and
// user rules: never a panic, a delay that is never negative nor above the
// cap, and a failure flag consistent with the kind.
func FuzzClassify(f *testing.F) {
	f.Add(503, "120", "5xx", "http", "retry")
	f.Add(429, "Wed, 21 Oct 2015 07:28:00 GMT", "429", "throttled", "")
	f.Add(200, "-1", "2xx", "none", "")
	f.Add(999, "99999999999999999999", "9xx", "boom", "explode")
	f.Add(-1, "", "", "", "")
	f.Fuzz(func(t *testing.T, status int, retryAfter, ruleStatus, ruleKind, ruleAction string) {
		c := &Classifier{}
		if r, err := ParseRule(ruleStatus, ruleKind, ruleAction); err == nil {
			c.Rules = append(c.Rules, r)
		}
		now := time.Now()
		if d, ok := ParseRetryAfter(retryAfter, now); ok && d < 0 {
			t.Fatalf("ParseRetryAfter(%q) = %v", retryAfter, d)
		}
		h := http.Header{}
		h.Set("Retry-After", retryAfter)
		cls := c.Classify(Attempt{Status: status, Header: h, Dialed: true, Wrote: true}, now)
		if cls.Delay < 0 || cls.Delay > DefaultMaxRetryAfter && cls.Kind == KindThrottled {
			t.Fatalf("delay %v out of bounds for %+v", cls.Delay, cls)
		}
		if cls.Failure != (cls.Kind != KindNone && cls.Kind != KindCanceled) {
			t.Fatalf("failure flag %v for kind %s", cls.Failure, cls.Kind)
		}
	})
}
