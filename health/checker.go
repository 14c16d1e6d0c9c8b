package health

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"time"

	"go.uber.org/zap"
)

// minProbeDelay keeps a fully jittered delay from becoming a busy loop.
const minProbeDelay = time.Millisecond

// ErrProbePanic is the error recorded for a probe that panicked; the panic
// counts as a failed probe.
var ErrProbePanic = errors.New("probe panicked")

// ProbeSettings configures active probing. It has no defaults: the caller
// sets every field (see Validate). It is a plain value: copies are
// independent and safe to share read-only.
type ProbeSettings struct {
	// Interval is the time between two probes of a worker, above 0.
	Interval time.Duration
	// Timeout bounds each probe, above 0. It may exceed Interval: a
	// worker's next probe then waits for the slow one. A probe that
	// returns after its timeout fails, whatever it returned.
	Timeout time.Duration
	// Passes is how many consecutive passes make a probe-unhealthy worker
	// healthy again (rise), at least 1.
	Passes int
	// Fails is how many consecutive failures make a probe-healthy worker
	// unhealthy (fall), at least 1.
	Fails int
	// Jitter is the share of the interval, from 0 to 1, randomly added or
	// removed before each probe, so that the probes of a pool's workers do
	// not align.
	Jitter float64
	// FastInterval replaces Interval while a worker's state is changing:
	// a failure streak is in progress, or the worker is probe-unhealthy or
	// isolated and waiting to come back. Above 0, at most Interval.
	FastInterval time.Duration
}

// Validate reports the first setting that is missing or out of range,
// naming it.
func (s ProbeSettings) Validate() error {
	switch {
	case s.Interval <= 0:
		return fmt.Errorf("interval must be above 0, got %v", s.Interval)
	case s.Timeout <= 0:
		return fmt.Errorf("timeout must be above 0, got %v", s.Timeout)
	case s.Passes < 1:
		return fmt.Errorf("passes must be at least 1, got %d", s.Passes)
	case s.Fails < 1:
		return fmt.Errorf("fails must be at least 1, got %d", s.Fails)
	case !(s.Jitter >= 0 && s.Jitter <= 1):
		return fmt.Errorf("jitter must be between 0 and 1, got %v", s.Jitter)
	case s.FastInterval <= 0 || s.FastInterval > s.Interval:
		return fmt.Errorf("fast_interval must be above 0 and at most interval (%v), got %v", s.Interval, s.FastInterval)
	}
	return nil
}

// Probe checks a worker actively. It returns nil when the worker passes. It
// must return once ctx is done; the context carries the probe's timeout.
type Probe func(ctx context.Context) error

// ProbeResult is the outcome of one probe after hysteresis. It is a plain
// value, safe to copy.
type ProbeResult struct {
	// Err is the probe's error; nil means it passed.
	Err error
	// Changed is true when this probe flipped the worker's ProbeHealthy.
	Changed bool
	// Healthy is the worker's ProbeHealthy after this probe.
	Healthy bool
}

// RecordProbe records the result of an active probe at time now (err == nil
// is a pass) and applies hysteresis: a probe-healthy worker becomes
// unhealthy after fails consecutive failures, an unhealthy one healthy after
// passes consecutive passes (thresholds below 1 count as 1). The streaks are
// capped at their thresholds, so they stay bounded. Exactly one call
// reports Changed for each flip.
func (w *WorkerHealth) RecordProbe(err error, now time.Time, passes, fails int) ProbeResult {
	passes, fails = max(passes, 1), max(fails, 1)
	w.lastCheck.Store(now.UnixNano())

	w.pmu.Lock()
	defer w.pmu.Unlock()
	healthy := w.probeHealthy.Load()
	if err == nil {
		w.probeFails = 0
		w.probePasses = min(w.probePasses+1, passes)
		if !healthy && w.probePasses >= passes {
			w.probeHealthy.Store(true)
			return ProbeResult{Changed: true, Healthy: true}
		}
		return ProbeResult{Healthy: healthy}
	}
	w.probePasses = 0
	w.probeFails = min(w.probeFails+1, fails)
	if healthy && w.probeFails >= fails {
		w.probeHealthy.Store(false)
		return ProbeResult{Err: err, Changed: true}
	}
	return ProbeResult{Err: err, Healthy: healthy}
}

// Target is one worker to probe and the probe to use. It is a plain value;
// the Checker may call Probe from its own goroutine, concurrently with other
// targets' probes.
type Target struct {
	Worker *WorkerHealth
	Probe  Probe
}

// Checker probes a set of workers periodically. Create it with NewChecker
// and start it with Run. A Checker holds no mutable state of its own, so it
// is safe for concurrent use.
type Checker struct {
	s        ProbeSettings
	targets  []Target
	onResult func(Target, ProbeResult)
	logger   *zap.Logger
	now      func() time.Time
	rnd      func() float64 // must be safe for concurrent use
}

// NewChecker returns a Checker that probes targets with settings s, or the
// error of [ProbeSettings.Validate] when s is incomplete or out of range.
// It calls onResult (which may be nil) after every probe that was
// recorded. A nil logger logs nothing.
//
// A timeout above the interval is allowed, as reverse_proxy allows it: a
// probe that takes longer than the interval delays the worker's next one.
func NewChecker(s ProbeSettings, targets []Target, onResult func(Target, ProbeResult), logger *zap.Logger) (*Checker, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	return &Checker{
		s:        s,
		targets:  append([]Target(nil), targets...),
		onResult: onResult,
		logger:   logger,
		now:      time.Now,
		rnd:      rand.Float64,
	}, nil
}

// Run probes every target until ctx is done, then returns once all its
// goroutines have exited. It starts one goroutine per target. Each probes
// for the first time after a random delay within the jitter share of the
// interval, then every interval ± jitter (the fast interval while the
// worker's state is changing). Each probe gets its own timeout. A panic in a
// probe is logged and counted as a failed probe; a panic in onResult is
// logged; the loop goes on in both cases.
//
// Probes that ignore their context delay Run's return until they do return.
func (c *Checker) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, t := range c.targets {
		if t.Worker == nil || t.Probe == nil {
			c.logger.Warn("skipping probe target without worker or probe")
			continue
		}
		wg.Go(func() { c.loop(ctx, t) })
	}
	<-ctx.Done()
	wg.Wait()
}

// loop probes one target until ctx is done.
func (c *Checker) loop(ctx context.Context, t Target) {
	timer := time.NewTimer(firstDelay(c.s.Interval, c.s.Jitter, c.rnd()))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		c.probeOnce(ctx, t)
		timer.Reset(c.nextDelay(t.Worker))
	}
}

// nextDelay returns the time until the worker's next probe.
func (c *Checker) nextDelay(w *WorkerHealth) time.Duration {
	base := c.s.Interval
	if w.probeChanging() {
		base = c.s.FastInterval
	}
	return jittered(base, c.s.Jitter, c.rnd())
}

// probeOnce runs one probe of t, records it and reports it. It recovers
// from a panic in onResult so that the loop goes on.
func (c *Checker) probeOnce(ctx context.Context, t Target) {
	defer func() {
		if r := recover(); r != nil {
			c.logPanic("panic in probe result handler", t, r)
		}
	}()

	err := c.runProbe(ctx, t)
	if ctx.Err() != nil {
		// Shutting down: the probe was cut short by us, not by the worker.
		return
	}
	res := t.Worker.RecordProbe(err, c.now(), c.s.Passes, c.s.Fails)
	if err != nil {
		if ce := c.logger.Check(zap.DebugLevel, "probe failed"); ce != nil {
			ce.Write(zap.String("pool", t.Worker.Pool()),
				zap.String("worker", t.Worker.ID()),
				zap.Error(err),
				zap.Bool("healthy", res.Healthy))
		}
	}
	if c.onResult != nil {
		c.onResult(t, res)
	}
}

// runProbe calls the probe with its timeout. A panic becomes an error
// wrapping ErrProbePanic, and a pass that came after the timeout becomes the
// timeout's error.
func (c *Checker) runProbe(ctx context.Context, t Target) (err error) {
	pctx, cancel := context.WithTimeout(ctx, c.s.Timeout)
	defer cancel()
	defer func() {
		if r := recover(); r != nil {
			c.logPanic("panic in probe", t, r)
			err = fmt.Errorf("%w: %v", ErrProbePanic, r)
		}
	}()
	err = t.Probe(pctx)
	if err == nil && pctx.Err() != nil {
		err = pctx.Err()
	}
	return err
}

// logPanic logs a panic r recovered while probing t, with its stack.
func (c *Checker) logPanic(msg string, t Target, r any) {
	c.logger.Error(msg,
		zap.String("pool", t.Worker.Pool()),
		zap.String("worker", t.Worker.ID()),
		zap.Any("error", r),
		zap.ByteString("stack", debug.Stack()))
}

// firstDelay returns the delay before a worker's first probe: a random
// share rnd of the jitter window, so the workers of a pool start apart.
func firstDelay(interval time.Duration, jitter, rnd float64) time.Duration {
	return max(scaleDuration(interval, clampUnit(jitter)*clampUnit(rnd)), minProbeDelay)
}

// jittered returns base with a random share of up to ±jitter applied
// (rnd in [0,1) picks the share), never below minProbeDelay.
func jittered(base time.Duration, jitter, rnd float64) time.Duration {
	f := 1 + clampUnit(jitter)*(2*clampUnit(rnd)-1)
	return max(scaleDuration(base, f), minProbeDelay)
}

// scaleDuration returns d*f, saturating instead of overflowing, and never
// negative.
func scaleDuration(d time.Duration, f float64) time.Duration {
	x := float64(d) * f
	switch {
	case x >= math.MaxInt64:
		return math.MaxInt64
	case x > 0:
		return time.Duration(x)
	}
	return 0
}

// clampUnit clamps x to [0, 1]; NaN becomes 0.
func clampUnit(x float64) float64 {
	if x != x {
		return 0
	}
	return min(max(x, 0), 1)
}
