package pool

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// nopUser is a pool user that does nothing.
type nopUser struct{ name string }

func (nopUser) Reporter() Reporter { return Reporter{Logger: zap.NewNop()} }
func (nopUser) Restored(*Worker)   {}
func (nopUser) Tick(now time.Time) {}

func TestNameOf(t *testing.T) {
	p, err := Acquire("nameof")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Release()
	u, other := &nopUser{"u"}, &nopUser{"other"}
	p.Attach(u, nil)
	if name, ok := NameOf(u); !ok || name != "nameof" {
		t.Errorf("NameOf an attached user = %q, %v; want nameof, true", name, ok)
	}
	if name, ok := NameOf(other); ok {
		t.Errorf("NameOf a user of no pool = %q, true", name)
	}
	p.Detach(u)
	if _, ok := NameOf(u); ok {
		t.Error("NameOf a detached user still finds its pool")
	}
}

func TestParseIsolate(t *testing.T) {
	long := strings.Repeat("é", 150) // 300 bytes
	for _, tc := range []struct {
		name, query, body string
		d                 time.Duration
		reason            string
		status            int
	}{
		{name: "nothing", reason: "isolated by an operator"},
		{name: "query", query: "?duration=30s", d: 30 * time.Second, reason: "isolated by an operator"},
		{name: "body", body: `{"duration":"1m","reason":"maintenance"}`, d: time.Minute, reason: "maintenance"},
		{name: "query over body", query: "?duration=2s", body: `{"duration":"1m"}`, d: 2 * time.Second, reason: "isolated by an operator"},
		{name: "caddy's days", body: `{"duration":"1d"}`, d: 24 * time.Hour, reason: "isolated by an operator"},
		{name: "long reason cut to 200 bytes on a rune", body: `{"reason":"` + long + `"}`, reason: strings.Repeat("é", 98) + "…"},
		{name: "negative", body: `{"duration":"-1s"}`, status: http.StatusBadRequest},
		{name: "over the limit", query: "?duration=24h1s", status: http.StatusBadRequest},
		{name: "unknown field", body: `{"durations":"1s"}`, status: http.StatusBadRequest},
		{name: "bad JSON", body: `{"duration":`, status: http.StatusBadRequest},
		{name: "too large", body: `{"reason":"` + strings.Repeat("x", maxOperatorBody) + `"}`, status: http.StatusRequestEntityTooLarge},
	} {
		r := httptest.NewRequest(http.MethodPost, "/x/isolate"+tc.query, strings.NewReader(tc.body))
		d, reason, err := parseIsolate(r)
		if tc.status != 0 {
			var ae caddy.APIError
			if !errors.As(err, &ae) || ae.HTTPStatus != tc.status {
				t.Errorf("%s: error %v, want a caddy.APIError with status %d", tc.name, err, tc.status)
			}
			continue
		}
		if err != nil || d != tc.d || reason != tc.reason {
			t.Errorf("%s: %s, %q, %v; want %s, %q", tc.name, d, reason, err, tc.d, tc.reason)
		}
	}
}

func TestWriteJSON(t *testing.T) {
	rec := httptest.NewRecorder()
	if err := WriteJSON(rec, http.StatusTeapot, map[string]string{"a": "<b>"}); err != nil {
		t.Fatal(err)
	}
	if rec.Code != http.StatusTeapot || rec.Header().Get("Content-Type") != "application/json" ||
		rec.Header().Get("Content-Length") != "22" || rec.Body.String() != `{"a":"\u003cb\u003e"}`+"\n" {
		t.Errorf("answer %d %v %q", rec.Code, rec.Header(), rec.Body.String())
	}
	rec = httptest.NewRecorder()
	var ae caddy.APIError
	if err := WriteJSON(rec, http.StatusOK, func() {}); !errors.As(err, &ae) || ae.HTTPStatus != http.StatusInternalServerError {
		t.Errorf("a value JSON cannot encode: %v", err)
	}
	if rec.Body.Len() != 0 {
		t.Errorf("a value JSON cannot encode wrote %q", rec.Body.String())
	}
}
