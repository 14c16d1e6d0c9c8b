package loadgen

import (
	"math"
	"net/http"
	"sort"
	"strconv"
	"time"
)

// Summary condenses the records of a time span.
type Summary struct {
	// Requests counts the records; Failures those that Failed.
	Requests int `json:"requests"`
	Failures int `json:"failures"`
	// GET and POST requests and failures.
	GETRequests  int `json:"get_requests"`
	GETFailures  int `json:"get_failures"`
	POSTRequests int `json:"post_requests"`
	POSTFailures int `json:"post_failures"`
	// Shed counts requests the open loop did not send.
	Shed int `json:"shed,omitempty"`
	// P50, P99 and Max are latencies over every record, failures
	// included.
	P50 time.Duration `json:"p50"`
	P99 time.Duration `json:"p99"`
	Max time.Duration `json:"max"`
	// Throughput is successful requests per second over the span.
	Throughput float64 `json:"throughput"`
	// FailureKinds counts failures by status ("502") or error kind.
	FailureKinds map[string]int `json:"failure_kinds,omitempty"`
}

// Summarize condenses the records whose intended time is in [from, to).
// A zero from or to leaves that side open; the throughput is then
// computed over the span of the records themselves.
func Summarize(recs []Record, from, to time.Time) Summary {
	return SummarizeWhere(recs, func(r Record) bool { return within(r.Intended, from, to) }, from, to)
}

// SummarizeWhere condenses the records for which keep returns true. The
// throughput is computed over [from, to), a zero bound being replaced by
// the records' own first start or last end.
func SummarizeWhere(recs []Record, keep func(Record) bool, from, to time.Time) Summary {
	var s Summary
	lat := make([]time.Duration, 0, len(recs))
	first, last := time.Time{}, time.Time{}
	ok := 0
	for _, r := range recs {
		if !keep(r) {
			continue
		}
		if first.IsZero() || r.Intended.Before(first) {
			first = r.Intended
		}
		if end := r.End(); end.After(last) {
			last = end
		}
		s.add(r)
		if !r.Failed() {
			ok++
		}
		lat = append(lat, r.Latency)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	s.P50, s.P99 = Percentile(lat, 0.50), Percentile(lat, 0.99)
	if len(lat) > 0 {
		s.Max = lat[len(lat)-1]
	}
	if !from.IsZero() {
		first = from
	}
	if !to.IsZero() {
		last = to
	}
	if span := last.Sub(first); span > 0 {
		s.Throughput = float64(ok) / span.Seconds()
	}
	return s
}

// add counts one record.
func (s *Summary) add(r Record) {
	s.Requests++
	post := r.Method == http.MethodPost
	if post {
		s.POSTRequests++
	} else {
		s.GETRequests++
	}
	if r.Shed {
		s.Shed++
	}
	if !r.Failed() {
		return
	}
	s.Failures++
	if post {
		s.POSTFailures++
	} else {
		s.GETFailures++
	}
	if s.FailureKinds == nil {
		s.FailureKinds = map[string]int{}
	}
	s.FailureKinds[FailureKind(r)]++
}

// FailureKind names a failed record's cause: its error kind, else its
// status code.
func FailureKind(r Record) string {
	if r.Err != "" {
		return r.Err
	}
	return strconv.Itoa(r.Status)
}

// within reports whether t is in [from, to), a zero bound being open.
func within(t, from, to time.Time) bool {
	return (from.IsZero() || !t.Before(from)) && (to.IsZero() || t.Before(to))
}

// Percentile returns the p-quantile (0..1) of sorted durations by the
// nearest-rank method, 0 for none.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p*float64(len(sorted)))) - 1
	rank = max(0, min(rank, len(sorted)-1))
	return sorted[rank]
}

// FailuresPerWindow counts failures by intended time in consecutive windows
// of width from start to end; the last window may be shorter.
func FailuresPerWindow(recs []Record, start, end time.Time, width time.Duration) []int {
	if width <= 0 || !end.After(start) {
		return nil
	}
	n := int((end.Sub(start) + width - 1) / width)
	out := make([]int, n)
	for _, r := range recs {
		if !r.Failed() || !within(r.Intended, start, end) {
			continue
		}
		out[int(r.Intended.Sub(start)/width)]++
	}
	return out
}

// LastFailure returns the intended time of the last failed record in [from,
// to), and false if there is none.
func LastFailure(recs []Record, from, to time.Time) (time.Time, bool) {
	var last time.Time
	found := false
	for _, r := range recs {
		if r.Failed() && within(r.Intended, from, to) && (!found || r.Intended.After(last)) {
			last, found = r.Intended, true
		}
	}
	return last, found
}
