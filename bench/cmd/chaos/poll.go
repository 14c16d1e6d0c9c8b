package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
)

// workerStatus is the part of GET /bifrost/workers the suite reads.
type workerStatus struct {
	Upstream        string `json:"upstream"`
	Healthy         bool   `json:"healthy"`
	Isolated        bool   `json:"isolated"`
	IsolationReason string `json:"isolation_reason"`
	Throttled       bool   `json:"throttled"`
	ProbeHealthy    bool   `json:"probe_healthy"`
	Breaker         struct {
		State string `json:"state"`
	} `json:"breaker"`
}

// inRotation reports whether Bifrost would send the worker new requests.
func (w workerStatus) inRotation() bool { return w.Healthy && w.Breaker.State != "open" }

// describe names the worker's state in a few words, e.g.
// "isolated (probe_failed: ...)" or "breaker open".
func (w workerStatus) describe() string {
	var parts []string
	if w.Isolated {
		parts = append(parts, "isolated ("+w.IsolationReason+")")
	}
	if w.Throttled {
		parts = append(parts, "throttled")
	}
	if !w.ProbeHealthy {
		parts = append(parts, "probe unhealthy")
	}
	if w.Breaker.State != "" && w.Breaker.State != "closed" {
		parts = append(parts, "breaker "+w.Breaker.State)
	}
	if len(parts) == 0 {
		if w.Healthy {
			return "in rotation"
		}
		return "unavailable"
	}
	return strings.Join(parts, ", ")
}

// stateChange is a worker's state at the moment it changed, as polled.
type stateChange struct {
	Time       time.Time `json:"time"`
	Upstream   string    `json:"upstream"`
	InRotation bool      `json:"in_rotation"`
	State      string    `json:"state"`
}

// poller polls Bifrost's admin API and keeps every change of a worker's
// state, bounded in number.
type poller struct {
	url    string
	every  time.Duration
	client *http.Client

	mu      sync.Mutex
	last    map[string]string
	changes []stateChange
	errs    int
}

// maxChanges bounds the state changes kept per run.
const maxChanges = 1000

func newPoller(adminURL string, every time.Duration) *poller {
	return &poller{url: adminURL + "/bifrost/workers", every: every, client: &http.Client{Timeout: time.Second}, last: map[string]string{}}
}

// run polls until ctx is done.
func (p *poller) run(ctx context.Context) {
	t := time.NewTicker(p.every)
	defer t.Stop()
	for {
		p.poll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// poll reads the workers once and records the changes.
func (p *poller) poll(ctx context.Context) {
	ws, err := p.fetch(ctx)
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.errs++
		return
	}
	for _, w := range ws {
		st := w.describe()
		if p.last[w.Upstream] == st || len(p.changes) >= maxChanges {
			continue
		}
		p.last[w.Upstream] = st
		p.changes = append(p.changes, stateChange{Time: now, Upstream: w.Upstream, InRotation: w.inRotation(), State: st})
	}
}

func (p *poller) fetch(ctx context.Context) ([]workerStatus, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("admin api: %s", resp.Status)
	}
	var ws []workerStatus
	if err := json.NewDecoder(resp.Body).Decode(&ws); err != nil {
		return nil, fmt.Errorf("admin api: %w", err)
	}
	return ws, nil
}

// result returns the changes recorded and the number of failed polls.
func (p *poller) result() ([]stateChange, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]stateChange(nil), p.changes...), p.errs
}

// firstOut returns the first change at or after from that took upstream
// out of rotation.
func firstOut(changes []stateChange, upstream string, from time.Time) (stateChange, bool) {
	for _, c := range changes {
		if c.Upstream == upstream && !c.InRotation && !c.Time.Before(from) {
			return c, true
		}
	}
	return stateChange{}, false
}

// firstIn returns the first change at or after from that put upstream
// back in rotation.
func firstIn(changes []stateChange, upstream string, from time.Time) (stateChange, bool) {
	for _, c := range changes {
		if c.Upstream == upstream && c.InRotation && !c.Time.Before(from) {
			return c, true
		}
	}
	return stateChange{}, false
}
