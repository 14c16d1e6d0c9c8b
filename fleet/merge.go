package fleet

import (
	"slices"
	"sort"
	"time"
)

// Decision is what the fleet's entries say of one worker at one moment,
// for this instance: an isolation to adopt, a throttle to honour, or a
// restore to carry out. It is a plain value.
type Decision struct {
	Pool, Upstream string
	// Isolation is the isolation to adopt; nil: none. Its Until is the
	// latest end among the agreeing entries, its Issued the earliest
	// (which decides the places max_percent leaves: oldest first), its
	// Ejections the largest and its Author the first to issue it.
	Isolation *Entry
	// AgreedBy are the instances whose entries isolate the worker,
	// sorted.
	AgreedBy []string
	// Throttle is the throttle to honour (the latest end); nil: none.
	Throttle *Entry
	// Restore is the latest operator restore of the worker issued by
	// another instance; nil: none.
	Restore *Entry
	// Reset is the latest operator reset of the worker issued by
	// another instance; nil: none.
	Reset *Entry
}

// Merge applies the fleet's rules to entries (valid ones, each the
// latest of its author for its worker) for the instance self at now:
//
//   - an entry that has ended counts for nothing;
//   - a restore voids every isolation of the worker issued before it;
//   - another instance's restore and reset are to be carried out here
//     (once: Decision.Restore, Decision.Reset);
//   - an operator's isolation by another instance applies at once;
//   - an automatic isolation or a throttle by other instances applies
//     once quorum distinct instances (this one included, when it has
//     the same verdict) hold it;
//   - this instance's own entries are never decisions for itself.
//
// Decisions are sorted by pool and upstream.
func Merge(entries []Entry, self string, quorum int, now time.Time) []Decision {
	quorum = max(quorum, 1)
	byWorker := map[string][]Entry{}
	for _, e := range entries {
		if e.Kind == KindHeartbeat || e.Kind == KindClear {
			continue
		}
		byWorker[e.Worker()] = append(byWorker[e.Worker()], e)
	}
	keys := make([]string, 0, len(byWorker))
	for k := range byWorker {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []Decision
	for _, k := range keys {
		if d, ok := decide(byWorker[k], self, quorum, now); ok {
			out = append(out, d)
		}
	}
	return out
}

// active reports whether e still applies at now.
func active(e Entry, now time.Time) bool {
	return e.Until.IsZero() || now.Before(e.Until)
}

// decide merges the entries of one worker.
func decide(es []Entry, self string, quorum int, now time.Time) (Decision, bool) {
	d := Decision{Pool: es[0].Pool, Upstream: es[0].Upstream}
	var restoredAt time.Time
	for _, e := range es {
		if e.Kind == KindReset && e.Author != self && active(e, now) && (d.Reset == nil || e.Issued.After(d.Reset.Issued)) {
			r := e
			d.Reset = &r
		}
		if e.Kind == KindRestore && e.Issued.After(restoredAt) {
			restoredAt = e.Issued
			if e.Author != self && active(e, now) {
				r := e
				d.Restore = &r
			}
		}
	}
	var iso, thr []Entry
	for _, e := range es {
		if !active(e, now) || e.Issued.Before(restoredAt) || e.Issued.Equal(restoredAt) && !restoredAt.IsZero() {
			continue
		}
		switch e.Kind {
		case KindIsolated:
			iso = append(iso, e)
		case KindThrottled:
			thr = append(thr, e)
		}
	}
	// an operator's isolation by another instance: the latest one
	for _, e := range iso {
		if e.Operator && e.Author != self && (d.Isolation == nil || e.Issued.After(d.Isolation.Issued)) {
			op := e
			d.Isolation = &op
		}
	}
	if d.Isolation != nil {
		d.AgreedBy = []string{d.Isolation.Author}
	} else if agreed, by := agree(iso, self, quorum); agreed != nil {
		d.Isolation, d.AgreedBy = agreed, by
	}
	if agreed, _ := agree(thr, self, quorum); agreed != nil {
		d.Throttle = agreed
	}
	return d, d.Isolation != nil || d.Throttle != nil || d.Restore != nil || d.Reset != nil
}

// agree merges automatic entries of one kind on one worker: when quorum
// distinct instances hold one and one of them is another instance, it
// returns their merge (see Decision.Isolation) and the instances.
func agree(es []Entry, self string, quorum int) (*Entry, []string) {
	var by []string
	var merged *Entry
	remote := false
	for _, e := range es {
		if e.Operator {
			continue
		}
		if !slices.Contains(by, e.Author) {
			by = append(by, e.Author)
		}
		if e.Author == self {
			continue
		}
		remote = true
		if merged == nil {
			m := e
			m.Sig = "" // a merge, no one's entry
			merged = &m
			continue
		}
		if e.Issued.Before(merged.Issued) {
			merged.Issued, merged.Author, merged.Reason = e.Issued, e.Author, e.Reason
		}
		if e.Until.After(merged.Until) {
			merged.Until = e.Until
		}
		merged.Ejections = max(merged.Ejections, e.Ejections)
	}
	if !remote || len(by) < quorum {
		return nil, nil
	}
	sort.Strings(by)
	return merged, by
}
