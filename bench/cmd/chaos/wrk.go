package main

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// wrkResult is what one wrk run printed.
type wrkResult struct {
	// Requests is the responses wrk read ("N requests in ..."), whatever
	// their status.
	Requests int
	// RequestsPerSec is its Requests/sec line: the same responses per
	// second.
	RequestsPerSec float64
	// P50 and P99 are the 50% and 99% lines of its latency distribution.
	P50, P99 time.Duration
	// Non2xx is the responses with a status other than 2xx or 3xx.
	Non2xx int
	// SocketErrors is the connect, read and write errors and timeouts.
	SocketErrors int
}

// run converts r to a happy-path run: its throughput counts 2xx and 3xx
// responses only, as the closed loop's does, and its failures are the
// other statuses and the socket errors.
func (r wrkResult) run() overheadRun {
	run := overheadRun{P50MS: ms(r.P50), P99MS: ms(r.P99), Requests: r.Requests, Failures: r.Non2xx + r.SocketErrors}
	if r.Requests > 0 {
		run.Throughput = r.RequestsPerSec * float64(r.Requests-r.Non2xx) / float64(r.Requests)
	}
	return run
}

// runWrk runs bin (wrk) with threads threads and clients connections
// against url for d, which must be whole seconds (wrk's -d takes no
// fraction), and parses what it printed.
func runWrk(ctx context.Context, procs *procSet, bin, url string, threads, clients int, d time.Duration) (wrkResult, error) {
	args := []string{fmt.Sprintf("-t%d", threads), fmt.Sprintf("-c%d", clients), fmt.Sprintf("-d%ds", int(d/time.Second)), "--latency", url}
	cmd := exec.CommandContext(ctx, bin, args...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		return wrkResult{}, fmt.Errorf("starting wrk: %w", err)
	}
	procs.add(cmd)
	err := cmd.Wait()
	procs.remove(cmd)
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()+out.String()))
	}
	r, err := parseWrk(out.String())
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk %s: %w", strings.Join(args, " "), err)
	}
	return r, nil
}

// parseWrk reads the output of wrk 4.1 run with --latency: the requests
// line, Requests/sec, the 50% and 99% lines of the latency distribution,
// and the socket errors and non-2xx/3xx responses if it printed them (it
// prints them only when there were some). A missing requests line,
// Requests/sec, 50% or 99% is an error.
func parseWrk(out string) (wrkResult, error) {
	var r wrkResult
	var haveRequests, haveRate, have50, have99 bool
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		var err error
		switch {
		case f[0] == "50%":
			r.P50, err = parseWrkLatency(f[1])
			have50 = true
		case f[0] == "99%":
			r.P99, err = parseWrkLatency(f[1])
			have99 = true
		case f[0] == "Requests/sec:":
			r.RequestsPerSec, err = strconv.ParseFloat(f[1], 64)
			haveRate = true
		case len(f) >= 3 && f[1] == "requests" && f[2] == "in":
			r.Requests, err = strconv.Atoi(f[0])
			haveRequests = true
		case strings.HasPrefix(strings.TrimSpace(line), "Non-2xx or 3xx responses:"):
			r.Non2xx, err = strconv.Atoi(f[len(f)-1])
		case f[0] == "Socket" && f[1] == "errors:":
			r.SocketErrors, err = parseWrkSocketErrors(strings.Join(f[2:], " "))
		}
		if err != nil {
			return wrkResult{}, fmt.Errorf("line %q: %w", strings.TrimSpace(line), err)
		}
	}
	switch {
	case !haveRequests:
		return wrkResult{}, fmt.Errorf("no \"requests in\" line in wrk's output")
	case !haveRate:
		return wrkResult{}, fmt.Errorf("no Requests/sec line in wrk's output")
	case !have50 || !have99:
		return wrkResult{}, fmt.Errorf("no 50%% and 99%% latency lines in wrk's output (run without --latency?)")
	}
	return r, nil
}

// parseWrkSocketErrors adds up wrk's "connect 0, read 1, write 0,
// timeout 2".
func parseWrkSocketErrors(s string) (int, error) {
	total := 0
	for _, part := range strings.Split(s, ",") {
		kind, n, ok := strings.Cut(strings.TrimSpace(part), " ")
		if !ok {
			return 0, fmt.Errorf("socket errors %q: want <kind> <count>", part)
		}
		v, err := strconv.Atoi(strings.TrimSpace(n))
		if err != nil {
			return 0, fmt.Errorf("socket errors %q: %w", kind, err)
		}
		total += v
	}
	return total, nil
}

// parseWrkLatency reads one of wrk's latencies: a number with the unit us,
// ms or s ("458.00us", "1.23ms", "2.00s").
func parseWrkLatency(s string) (time.Duration, error) {
	units := []struct {
		suffix string
		unit   time.Duration
	}{{"us", time.Microsecond}, {"ms", time.Millisecond}, {"s", time.Second}}
	for _, u := range units {
		num, ok := strings.CutSuffix(s, u.suffix)
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(num, 64)
		if err != nil {
			return 0, fmt.Errorf("latency %q: %w", s, err)
		}
		return time.Duration(v * float64(u.unit)), nil
	}
	return 0, fmt.Errorf("latency %q: want a unit of us, ms or s", s)
}
