package bifrost

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/bifrost-proxy/bifrost/breaker"
)

// The tests of this file check how the request path uses each worker's
// breaker: when an outcome is booked, and which requests a half-open
// breaker lets through.

// halfOpenBackend is a single upstream whose breaker (one probe, a short
// timeout) has been tripped and whose timeout has passed: the next request
// is its probe. Requests to /hold wait for release before answering.
func halfOpenBackend(t *testing.T, name string) (bk *backend, wk *worker, release chan struct{}) {
	t.Helper()
	bk = newBackend(t)
	release = make(chan struct{})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	h := loadHandler(t, siteConfig([]string{bk.addr}, `
		name `+name+`
		breaker {
			failures 1
			successes 1
			timeout 50ms
		}`))
	wk = h.workers[0]
	if !wk.Breaker.Trip() {
		t.Fatal("could not trip the breaker")
	}
	eventually(t, 5*time.Second, "the breaker's timeout passed", wk.Breaker.Ready)
	return bk, wk, release
}

// A half-open breaker lets through only its probes, also when the pool has
// no other worker: the request that finds its one probe slot taken gets
// Bifrost's 503 with Retry-After, not the upstream (panic mode, which
// sends a request to a worker that is out when every worker is, must not
// bypass a half-open breaker's limit). Once the probe succeeds, the
// breaker closes and requests flow again.
func TestHalfOpenProbeLimitHoldsInPanicMode(t *testing.T) {
	bk, wk, release := halfOpenBackend(t, "probelimit")
	bk.set(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			<-release
		}
		_, _ = io.WriteString(w, "ok")
	})
	probe := make(chan int, 1)
	go func() {
		resp, err := client.Get(testSite + "/hold")
		if err != nil {
			probe <- 0
			return
		}
		resp.Body.Close()
		probe <- resp.StatusCode
	}()
	eventually(t, 5*time.Second, "the probe reached the upstream", func() bool { return bk.hits.Load() == 1 })
	if st := wk.Breaker.State(); st != breaker.StateHalfOpen {
		t.Fatalf("breaker is %s with its probe in flight, want half_open", st)
	}

	code, _, hdr := do(t, http.MethodGet, testSite+"/", nil)
	if code != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" {
		t.Errorf("a request while the one probe is in flight got %d (Retry-After %q), want Bifrost's 503", code, hdr.Get("Retry-After"))
	}
	if n := bk.hits.Load(); n != 1 {
		t.Fatalf("the upstream got %d requests with the half-open breaker's one slot taken, want only the probe", n)
	}

	close(release)
	if code := <-probe; code != http.StatusOK {
		t.Fatalf("probe answered %d", code)
	}
	if st := wk.Breaker.State(); st != breaker.StateClosed {
		t.Fatalf("breaker is %s after its probe succeeded, want closed", st)
	}
	if code, body := get(t, "/"); code != http.StatusOK || body != "ok" {
		t.Fatalf("after the breaker closed: %d %q", code, body)
	}
}

// A try's outcome is booked in its breaker when the response headers are
// in, as reverse_proxy books its passive health: a stream (here SSE) that
// goes on for long does not hold a half-open breaker's probe slot for its
// whole life, so the breaker closes while the stream is still open, and
// other requests reach the upstream.
func TestBreakerBooksOutcomeWhenHeadersArrive(t *testing.T) {
	bk, wk, release := halfOpenBackend(t, "bookheaders")
	bk.set(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/events" {
			_, _ = io.WriteString(w, "ok")
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "data: first\n\n")
		http.NewResponseController(w).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		_, _ = io.WriteString(w, "data: last\n\n")
	})
	resp, err := client.Get(testSite + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if resp.StatusCode != http.StatusOK || err != nil || !strings.HasPrefix(line, "data: first") {
		t.Fatalf("stream: %d, first line %q, %v", resp.StatusCode, line, err)
	}
	// the stream is open: its outcome is booked already
	eventually(t, 5*time.Second, "the breaker closed with the stream still open", func() bool {
		return wk.Breaker.State() == breaker.StateClosed
	})
	if code, body := get(t, "/"); code != http.StatusOK || body != "ok" {
		t.Fatalf("a request while the stream is open: %d %q", code, body)
	}
	close(release)
	_, _ = io.Copy(io.Discard, resp.Body)
}
