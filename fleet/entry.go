package fleet

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"strings"
	"time"
)

// Kinds of entry.
const (
	// KindIsolated: the author isolated the worker until Until (zero: an
	// operator's isolation until restored).
	KindIsolated = "isolated"
	// KindThrottled: the worker asked the author to wait until Until
	// (a Retry-After).
	KindThrottled = "throttled"
	// KindRestore: an operator restored the worker on the author; every
	// isolation of it issued before is void.
	KindRestore = "restore"
	// KindReset: an operator reset the worker on the author (closed its
	// breaker and cleared its counts); every instance does the same,
	// once.
	KindReset = "reset"
	// KindClear: the author withdraws its entry for the worker (its
	// verdict ended).
	KindClear = "clear"
	// KindHeartbeat: the author is alive (Pool and Upstream empty).
	KindHeartbeat = "heartbeat"
)

// Limits of an entry; one beyond them is rejected as out of range.
const (
	// MaxAhead is how far after its issue an entry may end.
	MaxAhead = 24 * time.Hour
	// MaxSkew is how far in the future an entry may have been issued
	// (clocks differ); beyond it, it is rejected as future-dated.
	MaxSkew = 5 * time.Second
	// MaxAge is how old an entry may be; an operator's isolation with no
	// end lasts at most this long in the fleet.
	MaxAge = 7 * 24 * time.Hour
	// MaxEjections bounds an entry's ejection count.
	MaxEjections = 64
	// MaxText bounds an entry's pool, upstream, author and reason, in
	// bytes.
	MaxText = 512
	// MaxEntrySize bounds an entry's encoding, in bytes.
	MaxEntrySize = 4 << 10
)

// Reasons an entry is rejected, as counted (see Status.Rejected).
const (
	RejectMalformed    = "malformed"
	RejectUnsigned     = "unsigned"
	RejectBadSignature = "bad_signature"
	RejectFuture       = "future"
	RejectOutOfRange   = "out_of_range"
)

// Entry is one instance's verdict on one worker, named by pool and
// upstream, as kept in the store and published to the fleet. Every
// entry carries its author and an HMAC-SHA256 of its content with the
// fleet's secret. It is a plain value.
type Entry struct {
	Pool      string    `json:"pool,omitempty"`
	Upstream  string    `json:"upstream,omitempty"`
	Kind      string    `json:"kind"`
	Reason    string    `json:"reason,omitempty"`
	Ejections int       `json:"ejections,omitempty"`
	Operator  bool      `json:"operator,omitempty"`
	Issued    time.Time `json:"issued"`
	Until     time.Time `json:"until,omitzero"`
	Author    string    `json:"author"`
	Sig       string    `json:"sig,omitempty"`
}

// Worker returns the name of the entry's worker: pool and upstream.
func (e Entry) Worker() string { return e.Pool + "|" + e.Upstream }

// field is the entry's field in the store's hash of verdicts: one per
// worker and author, and one more for an operator's reset, which
// replaces none of the author's verdicts on the worker.
func (e Entry) field() string {
	f := e.Pool + "|" + e.Upstream + "|" + e.Author
	if e.Kind == KindReset {
		f += "|" + KindReset
	}
	return f
}

// content is what the signature covers: every field but the signature,
// times as Unix nanoseconds, separated by a byte no field may hold.
func (e Entry) content() []byte {
	nanos := func(t time.Time) string {
		if t.IsZero() {
			return "0"
		}
		return strconv.FormatInt(t.UnixNano(), 10)
	}
	return []byte(strings.Join([]string{"bifrost-fleet-v1", e.Pool, e.Upstream, e.Kind, e.Reason,
		strconv.Itoa(e.Ejections), strconv.FormatBool(e.Operator), nanos(e.Issued), nanos(e.Until), e.Author}, "\x00"))
}

// mac returns the entry's signature with secret.
func (e Entry) mac(secret []byte) string {
	m := hmac.New(sha256.New, secret)
	_, _ = m.Write(e.content())
	return hex.EncodeToString(m.Sum(nil))
}

// Sign returns e signed with secret.
func Sign(e Entry, secret []byte) Entry {
	e.Sig = e.mac(secret)
	return e
}

// Encode returns e's encoding in the store.
func Encode(e Entry) []byte {
	b, _ := json.Marshal(e) // a plain struct: cannot fail
	return b
}

// Decode reads an entry from the store or the fleet's channel, as
// untrusted input: it returns the entry when its signature with secret
// is good and its content in range at now, or the reason it is rejected.
func Decode(data []byte, secret []byte, now time.Time) (Entry, string) {
	if len(data) > MaxEntrySize {
		return Entry{}, RejectMalformed
	}
	var e Entry
	if err := json.Unmarshal(data, &e); err != nil {
		return Entry{}, RejectMalformed
	}
	if e.Sig == "" {
		return Entry{}, RejectUnsigned
	}
	got, err := hex.DecodeString(e.Sig)
	if err != nil {
		return Entry{}, RejectBadSignature
	}
	want, _ := hex.DecodeString(e.mac(secret))
	if !hmac.Equal(got, want) {
		return Entry{}, RejectBadSignature
	}
	if e.Issued.After(now.Add(MaxSkew)) {
		return Entry{}, RejectFuture
	}
	if !inRange(e, now) {
		return Entry{}, RejectOutOfRange
	}
	return e, ""
}

// inRange reports whether e's content is within the limits at now.
func inRange(e Entry, now time.Time) bool {
	for _, s := range []string{e.Pool, e.Upstream, e.Reason, e.Author} {
		if len(s) > MaxText || strings.ContainsRune(s, 0) {
			return false
		}
	}
	if e.Author == "" || e.Issued.IsZero() || now.Sub(e.Issued) > MaxAge ||
		e.Ejections < 0 || e.Ejections > MaxEjections {
		return false
	}
	switch e.Kind {
	case KindHeartbeat:
		return e.Pool == "" && e.Upstream == ""
	case KindIsolated, KindThrottled, KindRestore, KindReset, KindClear:
	default:
		return false
	}
	if e.Pool == "" || e.Upstream == "" {
		return false
	}
	switch {
	case e.Until.IsZero():
		// only an operator's isolation has no end
		return e.Kind != KindThrottled && (e.Kind != KindIsolated || e.Operator)
	case e.Until.Before(e.Issued), e.Until.Sub(e.Issued) > MaxAhead:
		return false
	}
	return true
}
