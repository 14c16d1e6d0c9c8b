package fleet

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

var secret = []byte("s3cret")

func isolation(author string, issued, until time.Time) Entry {
	return Entry{Pool: "api", Upstream: "10.0.0.1:80", Kind: KindIsolated, Reason: "probe_failed: x",
		Ejections: 1, Issued: issued, Until: until, Author: author}
}

// A signed entry decodes as it was; any change of its content, a missing
// signature, a future date or a value out of range is rejected with its
// reason.
func TestDecodeRejects(t *testing.T) {
	now := time.Now()
	good := Sign(isolation("a", now, now.Add(time.Minute)), secret)
	if e, why := Decode(Encode(good), secret, now); why != "" || e.Until.UnixNano() != good.Until.UnixNano() {
		t.Fatalf("good entry: %q %+v", why, e)
	}
	tampered := good
	tampered.Until = now.Add(time.Hour)
	unsigned := good
	unsigned.Sig = ""
	otherSecret := Sign(isolation("a", now, now.Add(time.Minute)), []byte("other"))
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"tampered", Encode(tampered), RejectBadSignature},
		{"unsigned", Encode(unsigned), RejectUnsigned},
		{"other secret", Encode(otherSecret), RejectBadSignature},
		{"not hex", []byte(strings.Replace(string(Encode(good)), good.Sig, "zz", 1)), RejectBadSignature},
		{"future", Encode(Sign(isolation("a", now.Add(time.Minute), now.Add(2*time.Minute)), secret)), RejectFuture},
		{"too long", Encode(Sign(isolation("a", now, now.Add(25*time.Hour)), secret)), RejectOutOfRange},
		{"ends before issued", Encode(Sign(isolation("a", now, now.Add(-time.Second)), secret)), RejectOutOfRange},
		{"automatic without end", Encode(Sign(isolation("a", now, time.Time{}), secret)), RejectOutOfRange},
		{"too old", Encode(Sign(isolation("a", now.Add(-8*24*time.Hour), now.Add(-8*24*time.Hour+time.Minute)), secret)), RejectOutOfRange},
		{"no author", Encode(Sign(isolation("", now, now.Add(time.Minute)), secret)), RejectOutOfRange},
		{"unknown kind", Encode(Sign(Entry{Pool: "p", Upstream: "u", Kind: "boom", Issued: now, Until: now.Add(time.Second), Author: "a"}, secret)), RejectOutOfRange},
		{"ejections", Encode(Sign(Entry{Pool: "p", Upstream: "u", Kind: KindIsolated, Ejections: 1000, Issued: now, Until: now.Add(time.Second), Author: "a"}, secret)), RejectOutOfRange},
		{"nul", Encode(Sign(Entry{Pool: "p\x00", Upstream: "u", Kind: KindIsolated, Issued: now, Until: now.Add(time.Second), Author: "a"}, secret)), RejectOutOfRange},
		{"garbage", []byte("{not json"), RejectMalformed},
		{"huge", []byte(`{"reason":"` + strings.Repeat("x", MaxEntrySize) + `"}`), RejectMalformed},
	}
	for _, c := range cases {
		if _, why := Decode(c.data, secret, now); why != c.want {
			t.Errorf("%s: rejected as %q, want %q", c.name, why, c.want)
		}
	}
	// an operator's isolation may have no end
	op := isolation("a", now, time.Time{})
	op.Operator = true
	if _, why := Decode(Encode(Sign(op, secret)), secret, now); why != "" {
		t.Errorf("operator isolation without end rejected: %q", why)
	}
	// the encoding is JSON with the signature in it
	var m map[string]any
	if err := json.Unmarshal(Encode(good), &m); err != nil || m["sig"] == "" {
		t.Errorf("encoding %s", Encode(good))
	}
}

// The merging rules: quorum of distinct instances for automatic
// verdicts, operators at once, restores void older isolations, ended
// entries count for nothing, own entries are never decisions.
func TestMerge(t *testing.T) {
	now := time.Now()
	t0 := now.Add(-10 * time.Second)
	a := isolation("a", t0, now.Add(time.Minute))
	b := isolation("b", t0.Add(time.Second), now.Add(2*time.Minute))
	b.Ejections = 3
	self := isolation("me", t0.Add(2*time.Second), now.Add(30*time.Second))

	if ds := Merge([]Entry{a}, "me", 2, now); len(ds) != 0 {
		t.Errorf("one remote with quorum 2: %+v, want nothing", ds)
	}
	ds := Merge([]Entry{a, b}, "me", 2, now)
	if len(ds) != 1 || ds[0].Isolation == nil {
		t.Fatalf("two remotes with quorum 2: %+v", ds)
	}
	iso := ds[0].Isolation
	if !iso.Until.Equal(b.Until) || !iso.Issued.Equal(a.Issued) || iso.Author != "a" || iso.Ejections != 3 ||
		strings.Join(ds[0].AgreedBy, ",") != "a,b" {
		t.Errorf("merged %+v by %v, want b's end, a's issue and author, 3 ejections, by a,b", iso, ds[0].AgreedBy)
	}
	if ds := Merge([]Entry{a, self}, "me", 2, now); len(ds) != 1 || ds[0].Isolation == nil || strings.Join(ds[0].AgreedBy, ",") != "a,me" {
		t.Errorf("self and one remote with quorum 2: %+v", ds)
	}
	if ds := Merge([]Entry{self}, "me", 1, now); len(ds) != 0 {
		t.Errorf("own entry alone: %+v, want nothing", ds)
	}
	ended := isolation("a", t0, now.Add(-time.Second))
	if ds := Merge([]Entry{ended}, "me", 1, now); len(ds) != 0 {
		t.Errorf("ended entry: %+v, want nothing", ds)
	}
	op := isolation("c", t0, time.Time{})
	op.Operator = true
	if ds := Merge([]Entry{op}, "me", 3, now); len(ds) != 1 || ds[0].Isolation == nil || !ds[0].Isolation.Operator {
		t.Errorf("operator isolation with quorum 3: %+v, want it applied", ds)
	}
	restore := Entry{Pool: "api", Upstream: "10.0.0.1:80", Kind: KindRestore, Issued: t0.Add(5 * time.Second), Until: now.Add(time.Minute), Author: "c"}
	ds = Merge([]Entry{a, op, restore}, "me", 1, now)
	if len(ds) != 1 || ds[0].Isolation != nil || ds[0].Restore == nil {
		t.Errorf("restore after the isolations: %+v, want the restore alone", ds)
	}
	later := isolation("a", t0.Add(6*time.Second), now.Add(time.Minute))
	if ds := Merge([]Entry{later, restore}, "me", 1, now); len(ds) != 1 || ds[0].Isolation == nil {
		t.Errorf("isolation after a restore: %+v, want it applied", ds)
	}
	thr := Entry{Pool: "api", Upstream: "10.0.0.1:80", Kind: KindThrottled, Issued: t0, Until: now.Add(30 * time.Second), Author: "b"}
	if ds := Merge([]Entry{thr}, "me", 1, now); len(ds) != 1 || ds[0].Throttle == nil || !ds[0].Throttle.Until.Equal(thr.Until) {
		t.Errorf("throttle: %+v", ds)
	}
}

// Another instance's reset is a decision (the latest, while it lasts);
// this instance's own is not; it is stored beside its author's verdict
// on the worker, not in its place.
func TestMergeReset(t *testing.T) {
	now := time.Now()
	reset := func(author string, issued time.Time) Entry {
		return Entry{Pool: "api", Upstream: "10.0.0.1:80", Kind: KindReset, Issued: issued, Until: issued.Add(time.Minute), Author: author}
	}
	older, newer := reset("a", now.Add(-2*time.Second)), reset("b", now.Add(-time.Second))
	ds := Merge([]Entry{older, newer}, "me", 1, now)
	if len(ds) != 1 || ds[0].Reset == nil || ds[0].Reset.Author != "b" || ds[0].Isolation != nil {
		t.Errorf("two remote resets: %+v, want b's, the latest, alone", ds)
	}
	if ds := Merge([]Entry{reset("me", now)}, "me", 1, now); len(ds) != 0 {
		t.Errorf("own reset: %+v, want nothing", ds)
	}
	if ds := Merge([]Entry{reset("a", now.Add(-2*time.Minute))}, "me", 1, now); len(ds) != 0 {
		t.Errorf("ended reset: %+v, want nothing", ds)
	}
	iso := isolation("a", now, now.Add(time.Minute))
	if r := reset("a", now); r.field() == iso.field() {
		t.Errorf("a reset takes the field of its author's isolation: %q", r.field())
	}
	signed := Sign(reset("a", now), secret)
	if _, why := Decode(Encode(signed), secret, now); why != "" {
		t.Errorf("a signed reset rejected: %s", why)
	}
}
