package bifrost

import (
	"bytes"
	"errors"
	"io"
	"maps"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// errHeldTooLarge aborts a held-back response whose body outgrew its cap.
var errHeldTooLarge = errors.New("held-back failure response exceeds max_held_response")

// tryWriter is the response writer of one try. Headers of a try that is
// then retried must never reach the client, and reverse_proxy copies the
// upstream's headers into the writer's map before WriteHeader, so a try
// writes its headers either
//
//   - into the client writer's own map (direct), which is put back as it
//     was before the try (base) if the response is held back or never
//     arrives: the usual case, a try at a time, costs no second map; or
//   - into a map of its own, copied to the client writer's when the
//     response passes: racing tries (hedging) must not share one map.
//
// When the response is written, the try's hook decides whether it is held
// back, because it is a failure that another try may replace, or passed
// through to the client untouched, after which every byte streams as
// usual.
//
// Informational (1xx) responses always pass through; a held body is capped
// at limit bytes, past which writes fail and the try is abandoned.
type tryWriter struct {
	caddyhttp.ResponseWriterWrapper

	header http.Header
	direct bool
	// base is the client writer's headers before a direct try, kept
	// without copying their values: a try only adds fields or appends
	// values (which never changes the slices kept here), and unwind puts
	// these back. Up to len(baseInline) fields are kept inline, more in
	// baseMap.
	baseN      int
	baseInline [4]headerField
	baseMap    http.Header
	method     string // of the request, for messages
	limit      int64
	quiet      bool // drop 1xx responses (a racing try)

	// hook, if set (its handler not nil), is called once with the final
	// status when the response headers arrive; it reports whether the
	// response is held back.
	hook tryHook

	// discard is set when the try's response must never reach the
	// client: it timed out, or it lost a race. timedOut says which.
	discard  atomic.Bool
	timedOut atomic.Bool
	// hung is set with timedOut when the try was taken back from a
	// worker found hanging (see waitingTries).
	hung atomic.Bool
	// phase decides between the final response headers arriving and
	// per_try_timeout firing: whichever moves it from phaseWaiting first
	// wins, so a response is never passed to the client by a try that is
	// being abandoned.
	phase atomic.Int32

	status      int
	wroteHeader bool
	held        bool
	passed      bool
	// retryMatched is set when the response is held back because the
	// handler's retry match asked for a retry of it (not a failure).
	retryMatched bool
	// broken is set when a held response's body failed (or outgrew its
	// cap) before its end: replayed, it is cut short as reverse_proxy
	// would have cut it.
	broken bool
	buf    bytes.Buffer
}

// Phases of a try (tryWriter.phase).
const (
	phaseWaiting int32 = iota
	phaseAnswered
	phaseTimedOut
)

// timeOut abandons the try if its response headers have not arrived yet,
// and reports whether it did.
func (tw *tryWriter) timeOut() bool {
	if !tw.phase.CompareAndSwap(phaseWaiting, phaseTimedOut) {
		return false
	}
	tw.timedOut.Store(true)
	tw.discard.Store(true)
	return true
}

// newTryWriter returns a writer for one try to the client writer w with
// headers of its own, starting as a copy of base (w's headers before any
// try). Racing tries use it.
func newTryWriter(w http.ResponseWriter, base http.Header, limit int64) *tryWriter {
	return &tryWriter{
		ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w},
		header:                base.Clone(),
		limit:                 limit,
	}
}

// newDirectTryWriter returns a writer for one try to the client writer w
// that writes into w's headers, for a try that runs alone.
func newDirectTryWriter(w http.ResponseWriter, limit int64) *tryWriter {
	tw := new(tryWriter)
	tw.initDirect(w, limit)
	return tw
}

// initDirect sets up a zero tryWriter as newDirectTryWriter does.
func (tw *tryWriter) initDirect(w http.ResponseWriter, limit int64) {
	tw.ResponseWriterWrapper.ResponseWriter = w
	tw.header = w.Header()
	tw.direct = true
	tw.limit = limit
	if len(tw.header) > len(tw.baseInline) {
		tw.baseMap = maps.Clone(tw.header)
		return
	}
	for name, values := range tw.header {
		tw.baseInline[tw.baseN] = headerField{name, values}
		tw.baseN++
	}
}

// headerField is one header field, as a header map holds it.
type headerField struct {
	name   string
	values []string
}

// unwind puts the client writer's headers back as they were before a
// direct try whose response did not pass (held back, or none arrived).
func (tw *tryWriter) unwind() {
	if !tw.direct || tw.passed {
		return
	}
	real := tw.ResponseWriter.Header()
	if tw.held {
		// keep the held response's headers for a replay
		tw.header = real.Clone()
	}
	if tw.baseMap != nil {
		replaceHeader(real, tw.baseMap)
	} else {
		clear(real)
		for _, f := range tw.baseInline[:tw.baseN] {
			real[f.name] = f.values
		}
	}
	tw.direct = false // its headers are its own from now on
}

// Header returns the try's own header map.
func (tw *tryWriter) Header() http.Header { return tw.header }

// WriteHeader holds the response back or passes it to the client.
func (tw *tryWriter) WriteHeader(code int) {
	if tw.wroteHeader {
		return
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		if tw.quiet || tw.discard.Load() {
			return
		}
		if tw.direct {
			tw.ResponseWriter.WriteHeader(code)
			return
		}
		real := tw.ResponseWriter.Header()
		saved := real.Clone()
		replaceHeader(real, tw.header)
		tw.ResponseWriter.WriteHeader(code)
		replaceHeader(real, saved)
		return
	}
	tw.wroteHeader = true
	tw.status = code
	if !tw.phase.CompareAndSwap(phaseWaiting, phaseAnswered) {
		tw.discard.Store(true) // timed out just before
	}
	hold := tw.hook.h != nil && tw.hook.decide(tw, code)
	if tw.discard.Load() || hold {
		tw.held = true
		tw.unwind()
		return
	}
	tw.passed = true
	if !tw.direct {
		replaceHeader(tw.ResponseWriter.Header(), tw.header)
		// from now on the try writes the client's headers: its
		// trailers, set after the body, must reach the client too
		tw.header = tw.ResponseWriter.Header()
	}
	tw.ResponseWriter.WriteHeader(code)
}

// Write writes to the client, or to the held-back buffer within its cap.
func (tw *tryWriter) Write(p []byte) (int, error) {
	if !tw.wroteHeader {
		tw.WriteHeader(http.StatusOK)
	}
	if !tw.held {
		return tw.ResponseWriter.Write(p)
	}
	if int64(tw.buf.Len()+len(p)) > tw.limit {
		return 0, errHeldTooLarge
	}
	return tw.buf.Write(p)
}

// ReadFrom copies a body from r. It must be overridden: the promoted
// ReadFrom of the wrapper would write to the client even while the
// response is held back.
func (tw *tryWriter) ReadFrom(r io.Reader) (int64, error) {
	if !tw.wroteHeader {
		tw.WriteHeader(http.StatusOK)
	}
	if !tw.held {
		return tw.ResponseWriterWrapper.ReadFrom(r)
	}
	return io.Copy(writerOnly{tw}, r)
}

// writerOnly hides every method but Write, so that io.Copy cannot call
// back into ReadFrom.
type writerOnly struct{ io.Writer }

// Flush flushes a passed-through response; a held one has nothing to
// flush yet.
func (tw *tryWriter) Flush() {
	_ = tw.FlushError()
}

// FlushError implements the interface http.ResponseController looks for.
func (tw *tryWriter) FlushError() error {
	if !tw.passed {
		return nil
	}
	return http.NewResponseController(tw.ResponseWriter).Flush()
}

// replay writes a held-back response to the client, its trailers after
// its body. A broken one is cut short after what arrived of its body, the
// way reverse_proxy aborts a response that fails mid-stream.
func (tw *tryWriter) replay() error {
	tw.passed = true
	real := tw.ResponseWriter.Header()
	replaceHeader(real, tw.header)
	trailers := splitTrailers(real)
	tw.ResponseWriter.WriteHeader(tw.status)
	_, err := tw.ResponseWriter.Write(tw.buf.Bytes())
	maps.Copy(real, trailers)
	if tw.broken {
		if err == nil {
			_ = http.NewResponseController(tw.ResponseWriter).Flush()
		}
		panic(http.ErrAbortHandler)
	}
	return err
}

// splitTrailers removes from h the values of the trailers a held
// response set after its body (fields announced in its Trailer header,
// or named with http.TrailerPrefix) and returns them: they are sent
// after the body, as the upstream sent them.
func splitTrailers(h http.Header) http.Header {
	var out http.Header
	move := func(name string) {
		if vals, ok := h[name]; ok {
			if out == nil {
				out = make(http.Header)
			}
			out[name] = vals
			delete(h, name)
		}
	}
	for _, line := range h.Values("Trailer") {
		for name := range strings.SplitSeq(line, ",") {
			if name = http.CanonicalHeaderKey(strings.TrimSpace(name)); name != "" {
				move(name)
			}
		}
	}
	for name := range h {
		if strings.HasPrefix(name, http.TrailerPrefix) {
			move(name)
		}
	}
	return out
}

// replaceHeader makes dst hold exactly the fields of src.
func replaceHeader(dst, src http.Header) {
	clear(dst)
	maps.Copy(dst, src)
}

// Interface guards
var (
	_ http.ResponseWriter = (*tryWriter)(nil)
	_ http.Flusher        = (*tryWriter)(nil)
	_ io.ReaderFrom       = (*tryWriter)(nil)
)
