package bifrost

import (
	"net/http"
	"testing"
	"time"
)

// A 5xx that a classify rule ignores counts against nobody: not against
// the worker's breaker or health, and not against its selection cost
// either. (decide counted every 5xx as a failure in the selection
// tracker, so the default policy steered traffic away from a worker whose
// 500s the user had said to ignore.)
func TestIgnoredStatusIsNoFailureForSelection(t *testing.T) {
	for _, tc := range []struct {
		name, rule string
		failing    bool
	}{
		{name: "ignored", rule: "status 500 http ignore"},
		{name: "counted", rule: "status 500 http", failing: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sick, good := newBackend(t), newBackend(t)
			sick.set(status(http.StatusInternalServerError, "sick"))
			h := loadHandler(t, siteConfig([]string{sick.addr, good.addr}, `
		name ignore`+tc.name+`
		lb_policy round_robin
		retry {
			on connect_failure
		}
		classify {
			`+tc.rule+`
		}`))
			for range 10 {
				get(t, "/")
			}
			if sick.hits.Load() == 0 {
				t.Fatal("the sick backend got no request")
			}
			share := workerAt(t, h, sick.addr).tracker.FailureShare(time.Now())
			if tc.failing != (share > 0) {
				t.Fatalf("failure share %v after %d answers of 500 (rule %q)", share, sick.hits.Load(), tc.rule)
			}
		})
	}
}
