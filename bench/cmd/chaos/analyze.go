package main

import (
	"net/http"
	"sort"
	"time"

	"github.com/bifrost-proxy/bifrost/bench/faultserver"
	"github.com/bifrost-proxy/bifrost/bench/loadgen"
)

// first2s is the start of the fault window reported on its own: the
// failures there are the price of detecting the fault.
const first2s = 2 * time.Second

// RunResult is what one contender did in one scenario.
type RunResult struct {
	Contender string `json:"contender"`
	Label     string `json:"label"`
	// Bifrost is true for a Bifrost contender, whose admin API was
	// polled.
	Bifrost bool `json:"bifrost,omitempty"`
	// Error is set when the run could not be carried out or measured.
	Error string `json:"error,omitempty"`

	// Offsets of the fault window from the start of the load.
	FaultStartMS float64 `json:"fault_start_ms"`
	FaultEndMS   float64 `json:"fault_end_ms"`

	// Client-side summaries: requests that ended before the fault
	// started; requests sent in the window or still under way when it
	// started; the same for the window's first 2 s; requests sent after
	// the window; and every request.
	Before  loadgen.Summary `json:"before"`
	Window  loadgen.Summary `json:"window"`
	First2s loadgen.Summary `json:"first_2s"`
	After   loadgen.Summary `json:"after"`
	Overall loadgen.Summary `json:"overall"`
	// LastFailureAfterMS is when, after the window, the last client
	// failure was sent (ms after the window ended); nil if none.
	LastFailureAfterMS *float64 `json:"last_failure_after_ms,omitempty"`
	// FailuresPerSecond counts client failures in each second of the run.
	FailuresPerSecond []int `json:"failures_per_second"`

	// Amplification is upstream tries per client request in the window,
	// from the proxy's roundtrip log (refused connects included);
	// AmplificationRun is the same over the whole run; and
	// AmplificationBackends counts what the backends received instead.
	Amplification         *float64 `json:"amplification"`
	AmplificationRun      *float64 `json:"amplification_run"`
	AmplificationBackends *float64 `json:"amplification_backends"`
	// FaultyShare is the faulty backend's share of the upstream tries in
	// the window; nil when every backend is faulty.
	FaultyShare *float64 `json:"faulty_share,omitempty"`
	// FaultyShareBefore and FaultyShareAfter are the same share before
	// the fault and after the window: how much traffic the backend gets
	// normally, and how much it won back once healthy again.
	FaultyShareBefore *float64 `json:"faulty_share_before,omitempty"`
	FaultyShareAfter  *float64 `json:"faulty_share_after,omitempty"`

	// In the dynamic scenario: AddedAtMS is when the fourth backend
	// joined the DNS answer (from the start of the load);
	// AddedFirstTryMS is when the proxy first tried it, after that;
	// AddedShare is its share of the tries from then to the window's end,
	// and AddedShareAfter after the window; AddedRequests is what it
	// received in all. AddedTriesBefore counts tries it got before it
	// joined (none expected).
	AddedAtMS        *float64 `json:"added_at_ms,omitempty"`
	AddedFirstTryMS  *float64 `json:"added_first_try_ms,omitempty"`
	AddedShare       *float64 `json:"added_share,omitempty"`
	AddedShareAfter  *float64 `json:"added_share_after,omitempty"`
	AddedRequests    *int64   `json:"added_requests,omitempty"`
	AddedTriesBefore int      `json:"added_tries_before,omitempty"`

	// Slow is the slow-endpoint scenario's measure.
	Slow *SlowResult `json:"slow,omitempty"`
	// Backup is the backup scenario's measure.
	Backup *BackupResult `json:"backup,omitempty"`

	// TimeToIsolateMS is when Bifrost's admin API first showed the
	// faulty worker(s) out of rotation, after the fault started (the
	// latest of them when several are faulty); nil if never or not
	// Bifrost. IsolatedAs is the state it showed.
	TimeToIsolateMS *float64 `json:"time_to_isolate_ms,omitempty"`
	IsolatedAs      string   `json:"isolated_as,omitempty"`
	// TimeBackInRotationMS is when the admin API showed every faulty
	// worker in rotation again, after the window ended.
	TimeBackInRotationMS *float64 `json:"time_back_in_rotation_ms,omitempty"`
	// TimeToReinstateMS is when every faulty backend had served a
	// successful request that arrived after the window ended; nil if one
	// never did.
	TimeToReinstateMS *float64 `json:"time_to_reinstate_ms,omitempty"`

	// DuplicatePOSTs counts extra executions of POSTs: for each POST id
	// the backends received n > 1 times, n-1. DuplicateGETs is the same
	// for GETs (allowed: GETs may be retried).
	DuplicatePOSTs   int      `json:"duplicate_posts"`
	DuplicatePOSTIDs []string `json:"duplicate_post_ids,omitempty"`
	DuplicateGETs    int      `json:"duplicate_gets"`

	// UpstreamTries counts the proxy's tries; BackendRequests what the
	// backends received (probes excluded); Probes the health probes.
	UpstreamTries   int   `json:"upstream_tries"`
	BackendRequests int64 `json:"backend_requests"`
	Probes          int64 `json:"probes"`

	// Changes is Bifrost's worker state timeline, as polled.
	Changes    []stateChange `json:"worker_changes,omitempty"`
	PollErrors int           `json:"poll_errors,omitempty"`
	// Notes are warnings and errors from the proxy's log; Panics are
	// lines of its stderr that mention a panic.
	Notes  []logNote `json:"notes,omitempty"`
	Panics []string  `json:"panics,omitempty"`
	LogDir string    `json:"log_dir,omitempty"`
}

// analysisInput is everything measured in one run.
type analysisInput struct {
	records              []loadgen.Record
	start, end           time.Time
	faultStart, faultEnd time.Time
	backends, faulty     []*faultserver.Server
	allFaulty            bool
	// added joined the DNS answer at addedAt (dynamic scenario only).
	added      *faultserver.Server
	addedAt    time.Time
	tries      []upstreamTry
	notes      []logNote
	changes    []stateChange
	polled     bool
	pollErrors int
	panics     []string
	// slow is the slow-endpoint scenario's client side, nil elsewhere.
	slow *SlowResult
	// backup is the backup scenario's backup backend, nil elsewhere.
	backup *faultserver.Server
}

// analyze fills in rr from what was measured.
func analyze(rr *RunResult, in analysisInput) {
	if in.faultStart.IsZero() || in.faultEnd.IsZero() {
		rr.Error = joinErr(rr.Error, "interrupted before the fault window ended")
		return
	}
	rr.FaultStartMS = ms(in.faultStart.Sub(in.start))
	rr.FaultEndMS = ms(in.faultEnd.Sub(in.start))
	clientSide(rr, in)
	upstreamSide(rr, in)
	backendSide(rr, in)
	if in.added != nil {
		addedSide(rr, in)
	}
	if in.polled {
		adminSide(rr, in)
	}
	if in.slow != nil {
		slowSide(rr, in)
	}
	if in.backup != nil {
		backupSide(rr, in)
	}
	rr.Notes, rr.Panics = in.notes, in.panics
}

// clientSide summarizes what the clients saw.
func clientSide(rr *RunResult, in analysisInput) {
	recs := in.records
	var zero time.Time
	fs, fe := in.faultStart, in.faultEnd
	early := minTime(fs.Add(first2s), fe)
	// a request still under way when the fault started belongs to the
	// window, not to the baseline before it
	rr.Before = loadgen.SummarizeWhere(recs, func(r loadgen.Record) bool { return !r.End().After(fs) }, zero, fs)
	rr.Window = loadgen.SummarizeWhere(recs, func(r loadgen.Record) bool {
		return r.End().After(fs) && r.Intended.Before(fe)
	}, fs, fe)
	rr.First2s = loadgen.SummarizeWhere(recs, func(r loadgen.Record) bool {
		return r.End().After(fs) && r.Intended.Before(early)
	}, fs, early)
	rr.After = loadgen.Summarize(recs, fe, zero)
	rr.Overall = loadgen.Summarize(recs, zero, zero)
	if last, ok := loadgen.LastFailure(recs, in.faultEnd, zero); ok {
		rr.LastFailureAfterMS = ptr(ms(last.Sub(in.faultEnd)))
	}
	rr.FailuresPerSecond = loadgen.FailuresPerWindow(recs, in.start, in.end, time.Second)
}

// upstreamSide measures amplification and the faulty share from the
// proxy's tries.
func upstreamSide(rr *RunResult, in analysisInput) {
	rr.UpstreamTries = len(in.tries)
	faulty := map[string]bool{}
	for _, b := range in.faulty {
		faulty[b.Addr()] = true
	}
	// tries and tries to a faulty backend before, in and after the window
	var all, toFaulty [3]int
	for _, t := range in.tries {
		phase := 1
		switch {
		case t.Start.Before(in.faultStart):
			phase = 0
		case !t.Start.Before(in.faultEnd):
			phase = 2
		}
		all[phase]++
		if faulty[t.Upstream] {
			toFaulty[phase]++
		}
	}
	win, winFaulty := all[1], toFaulty[1]
	sent := rr.Window.Requests - rr.Window.Shed
	rr.Amplification = ratio(win, sent)
	rr.AmplificationRun = ratio(len(in.tries), rr.Overall.Requests-rr.Overall.Shed)
	if !in.allFaulty {
		rr.FaultyShare = ratio(winFaulty, win)
		rr.FaultyShareBefore = ratio(toFaulty[0], all[0])
		rr.FaultyShareAfter = ratio(toFaulty[2], all[2])
	}
}

// addedSide measures the traffic of the backend that joined the DNS
// answer during the window.
func addedSide(rr *RunResult, in analysisInput) {
	n := in.added.Stats().Requests
	rr.AddedRequests = &n
	if in.addedAt.IsZero() {
		return
	}
	rr.AddedAtMS = ptr(ms(in.addedAt.Sub(in.start)))
	addr := in.added.Addr()
	var first time.Time
	var all, toAdded [2]int // from joining to the window's end; after it
	for _, t := range in.tries {
		if t.Upstream == addr {
			if t.Start.Before(in.addedAt) {
				rr.AddedTriesBefore++
				continue
			}
			if first.IsZero() || t.Start.Before(first) {
				first = t.Start
			}
		}
		if t.Start.Before(in.addedAt) {
			continue
		}
		phase := 0
		if !t.Start.Before(in.faultEnd) {
			phase = 1
		}
		all[phase]++
		if t.Upstream == addr {
			toAdded[phase]++
		}
	}
	if !first.IsZero() {
		rr.AddedFirstTryMS = ptr(ms(first.Sub(in.addedAt)))
	}
	rr.AddedShare = ratio(toAdded[0], all[0])
	rr.AddedShareAfter = ratio(toAdded[1], all[1])
}

// backendSide counts what the backends received: duplicates, requests,
// and when the faulty ones served again.
func backendSide(rr *RunResult, in analysisInput) {
	var posts, gets map[string]int
	receivedInWindow := 0
	for _, b := range in.backends {
		posts = b.IDCounts(http.MethodPost, posts)
		gets = b.IDCounts(http.MethodGet, gets)
		st := b.Stats()
		rr.BackendRequests += st.Requests
		rr.Probes += st.Probes
		for _, ev := range b.Events() {
			if !ev.Health && within(ev.Arrived, in.faultStart, in.faultEnd) {
				receivedInWindow++
			}
		}
	}
	rr.DuplicatePOSTs, rr.DuplicatePOSTIDs = duplicates(posts, 10)
	rr.DuplicateGETs, _ = duplicates(gets, 0)
	rr.AmplificationBackends = ratio(receivedInWindow, rr.Window.Requests-rr.Window.Shed)

	var latest time.Duration
	for _, b := range in.faulty {
		d, ok := firstSuccessAfter(b.Events(), in.faultEnd)
		if !ok {
			return
		}
		latest = max(latest, d)
	}
	rr.TimeToReinstateMS = ptr(ms(latest))
}

// firstSuccessAfter returns how long after t the first request that
// arrived after t was answered with success.
func firstSuccessAfter(evs []faultserver.Event, t time.Time) (time.Duration, bool) {
	found := false
	var first time.Time
	for _, ev := range evs {
		if ev.Health || !ev.Success() || ev.Arrived.Before(t) {
			continue
		}
		if !found || ev.Done.Before(first) {
			first, found = ev.Done, true
		}
	}
	return first.Sub(t), found
}

// duplicates sums the extra executions in counts and returns up to keep of
// the ids executed more than once.
func duplicates(counts map[string]int, keep int) (int, []string) {
	extra := 0
	var ids []string
	for id, n := range counts {
		if n > 1 {
			extra += n - 1
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	if len(ids) > keep {
		ids = ids[:keep]
	}
	return extra, ids
}

// adminSide reads Bifrost's view: when the faulty workers left rotation
// and came back.
func adminSide(rr *RunResult, in analysisInput) {
	rr.Changes, rr.PollErrors = in.changes, in.pollErrors
	var outLatest, backLatest time.Duration
	outAll, backAll := true, true
	for _, b := range in.faulty {
		if c, ok := firstOut(in.changes, b.Addr(), in.faultStart); ok && c.Time.Before(in.faultEnd) {
			if d := c.Time.Sub(in.faultStart); d >= outLatest {
				outLatest, rr.IsolatedAs = d, c.State
			}
		} else {
			outAll = false
		}
		if inRotationAt(in.changes, b.Addr(), in.faultEnd) {
			continue
		}
		if c, ok := firstIn(in.changes, b.Addr(), in.faultEnd); ok {
			backLatest = max(backLatest, c.Time.Sub(in.faultEnd))
		} else {
			backAll = false
		}
	}
	if outAll {
		rr.TimeToIsolateMS = ptr(ms(outLatest))
	} else {
		rr.IsolatedAs = ""
	}
	if backAll {
		rr.TimeBackInRotationMS = ptr(ms(backLatest))
	}
}

// inRotationAt reports whether the last change of upstream at or before t
// left it in rotation (true when there was none).
func inRotationAt(changes []stateChange, upstream string, t time.Time) bool {
	in := true
	for _, c := range changes {
		if c.Upstream == upstream && !c.Time.After(t) {
			in = c.InRotation
		}
	}
	return in
}

func within(t, from, to time.Time) bool { return !t.Before(from) && t.Before(to) }

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func ptr[T any](v T) *T { return &v }

// ratio returns a/b, nil when b is 0.
func ratio(a, b int) *float64 {
	if b == 0 {
		return nil
	}
	return ptr(float64(a) / float64(b))
}
