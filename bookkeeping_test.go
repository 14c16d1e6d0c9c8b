package bifrost

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/bifrost-proxy/bifrost/recovery"
)

// benchHandler runs a config with n workers and returns its handler.
func benchHandler(b *testing.B, n int) *Handler {
	b.Helper()
	ups := make([]string, n)
	for i := range ups {
		ups[i] = fmt.Sprintf(`{"dial":"127.0.0.1:%d"}`, 20000+i)
	}
	var got *Handler
	provisioned = func(h *Handler) { got = h }
	defer func() { provisioned = nil }()
	cfg := `{"admin":{"listen":"` + testAdmin + `"},"apps":{"http":{"servers":{"s":{"listen":["127.0.0.1:9080"],
		"routes":[{"handle":[{"handler":"bifrost","name":"bench","upstreams":[` + strings.Join(ups, ",") + `]}]}]}}}}}`
	if err := caddy.Load([]byte(cfg), true); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = caddy.Load([]byte(`{"admin":{"listen":"`+testAdmin+`"}}`), true) })
	if got == nil {
		b.Fatal("handler not provisioned")
	}
	return got
}

// BenchmarkBookkeeping measures Bifrost's per-request work around a
// successful try, without the proxying itself: selection among the
// workers, breaker Allow and done, the latency tracker, classification,
// and recording (health, monitor, metrics).
func BenchmarkBookkeeping(b *testing.B) {
	for _, n := range []int{3, 300} {
		b.Run(fmt.Sprintf("workers=%d", n), func(b *testing.B) {
			h := benchHandler(b, n)
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			w := httptest.NewRecorder()
			tw := &tryWriter{method: http.MethodGet}
			body := &replayBody{replayable: true}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				rs := requestState{r: r, body: body}
				wk, done, _ := h.pickAllowed(r, w, &rs)
				now := time.Now()
				tok := wk.tracker.Start(now)
				wk.health.BeginRequest()
				cls := h.classifier.Classify(recovery.Attempt{Status: http.StatusOK, Dialed: true, Wrote: true}, now)
				wk.tracker.Done(tok, now, 0, false)
				wk.health.EndRequest()
				h.record(tryResult{wk: wk, tw: tw, cls: cls, done: done, latency: time.Millisecond, attempt: 1}, false)
			}
		})
	}
}
