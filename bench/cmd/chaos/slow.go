package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/bifrost-proxy/bifrost/bench/loadgen"
)

// The slow-endpoint scenario: every backend is healthy, and an endpoint
// is slow by nature. When the window starts, slowGETs concurrent GETs of
// the backends' slow path (slowDelay each, shorter when the window is)
// go out with a burst of burstGETs ordinary GETs, over a trickle of
// slowLoadRate requests a second. Selection then steers the trickle away
// from the workers holding slow GETs, so that they answer nothing else:
// hang detection must ask them (and leave them alone), not judge their
// silence.
const (
	slowGETs     = 9
	slowDelay    = 8 * time.Second
	burstGETs    = 60
	burstClients = 6
	slowLoadRate = 2
)

// slowDelayFor is the slow GETs' duration in a window of w: slowDelay, or
// four fifths of a shorter window, so that they end within it.
func slowDelayFor(w time.Duration) time.Duration {
	return min(slowDelay, w*4/5)
}

// SlowResult is what the slow-endpoint scenario measured for one
// contender.
type SlowResult struct {
	// DelayMS is each slow GET's own duration.
	DelayMS float64 `json:"delay_ms"`
	// GETs is the number of slow GETs; Failed those that did not get a
	// 200; MaxMS the longest, as the client saw it.
	GETs   int     `json:"gets"`
	Failed int     `json:"failed"`
	MaxMS  float64 `json:"max_ms"`
	// Executions is how many times the backends ran the slow GETs in
	// all; NotOnce counts the slow GETs not run exactly once.
	Executions int `json:"executions"`
	NotOnce    int `json:"not_once"`
	// BurstFailed counts the burst's GETs that did not get a 200.
	BurstFailed int `json:"burst_failed"`
	// Isolations counts the times the admin API showed a worker out of
	// rotation from the window's start to the run's end (Bifrost only).
	Isolations int `json:"isolations"`

	ids []string
}

// slowBurst sends the scenario's slow GETs and burst through url at at,
// with ids starting with prefix, and returns when every one has ended.
func slowBurst(ctx context.Context, url string, at time.Time, delay time.Duration, prefix string) *SlowResult {
	url = strings.TrimSuffix(url, "/")
	res := &SlowResult{DelayMS: ms(delay), GETs: slowGETs}
	if !sleepCtx(ctx, time.Until(at)) {
		return res
	}
	tr := loadgen.NewTransport()
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: delay + 30*time.Second}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range slowGETs {
		id := fmt.Sprintf("%s-slow-%d", prefix, i)
		res.ids = append(res.ids, id)
		wg.Go(func() {
			begin := time.Now()
			ok := getOK(ctx, client, fmt.Sprintf("%s/slow?ms=%d", url, delay.Milliseconds()), id)
			took := time.Since(begin)
			mu.Lock()
			defer mu.Unlock()
			res.MaxMS = max(res.MaxMS, ms(took))
			if !ok {
				res.Failed++
			}
		})
	}
	// the burst, once the slow GETs are on their way
	var burst sync.WaitGroup
	for c := range burstClients {
		burst.Go(func() {
			for i := c; i < burstGETs; i += burstClients {
				if !getOK(ctx, client, url+"/", fmt.Sprintf("%s-burst-%d", prefix, i)) {
					mu.Lock()
					res.BurstFailed++
					mu.Unlock()
				}
			}
		})
	}
	burst.Wait()
	wg.Wait()
	return res
}

// getOK sends one GET with the request id id and reports whether it got
// a whole 200.
func getOK(ctx context.Context, client *http.Client, url, id string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	req.Header.Set(loadgen.RequestIDHeader, id)
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return err == nil && resp.StatusCode == http.StatusOK
}

// slowSide counts what the backends ran of the slow GETs, and the
// workers the admin API showed out of rotation.
func slowSide(rr *RunResult, in analysisInput) {
	s := in.slow
	var counts map[string]int
	for _, b := range in.backends {
		counts = b.IDCounts(http.MethodGet, counts)
	}
	for _, id := range s.ids {
		n := counts[id]
		s.Executions += n
		if n != 1 {
			s.NotOnce++
		}
	}
	for _, c := range in.changes {
		if !c.InRotation && !c.Time.Before(in.faultStart) {
			s.Isolations++
		}
	}
	rr.Slow = s
}

// slowLine describes a run's slow-endpoint measure.
func slowLine(s *SlowResult) string {
	return fmt.Sprintf("%d slow GETs of %s: %d failed, longest %s, run %d times in all (%d not exactly once); burst failures %d; workers taken out of rotation %d",
		s.GETs, fmtDur(time.Duration(s.DelayMS*float64(time.Millisecond))), s.Failed,
		fmtDur(time.Duration(s.MaxMS*float64(time.Millisecond))), s.Executions, s.NotOnce, s.BurstFailed, s.Isolations)
}

// slowMet reports whether a run meets the slow-endpoint target: every
// slow GET answered and run once, none longer than its duration + 0.5 s,
// no worker taken out of rotation.
func slowMet(s *SlowResult) bool {
	return s.Failed == 0 && s.NotOnce == 0 && s.Isolations == 0 && s.BurstFailed == 0 && s.MaxMS <= s.DelayMS+500
}
