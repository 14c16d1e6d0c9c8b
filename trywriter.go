package bifrost

import (
	"bytes"
	"errors"
	"io"
	"maps"
	"net/http"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// errHeldTooLarge aborts a held-back response whose body outgrew its cap.
var errHeldTooLarge = errors.New("held-back failure response exceeds max_held_response")

// tryWriter is the response writer of one try. It gives the try a header
// map of its own, so that headers of a try that is then retried never reach
// the client (reverse_proxy copies upstream headers into the writer's map
// before WriteHeader). When the response is written, onHeader decides whether
// it is held back, because it is a failure that another try may replace,
// or passed through to the client untouched: once passed, the try's
// headers replace the client writer's and every byte streams as usual.
//
// Informational (1xx) responses always pass through; a held body is capped
// at limit bytes, past which writes fail and the try is abandoned.
type tryWriter struct {
	caddyhttp.ResponseWriterWrapper

	header http.Header
	method string // of the request, for messages
	limit  int64
	quiet  bool // drop 1xx responses (a racing try)

	// onHeader, if set, is called once with the final status and headers
	// when they arrive; it reports whether the response is held back.
	onHeader func(status int, header http.Header) (hold bool)

	// discard is set when the try's response must never reach the
	// client: it timed out, or it lost a race. timedOut says which.
	discard  atomic.Bool
	timedOut atomic.Bool
	// phase decides between the final response headers arriving and
	// per_try_timeout firing: whichever moves it from phaseWaiting first
	// wins, so a response is never passed to the client by a try that is
	// being abandoned.
	phase atomic.Int32

	status      int
	wroteHeader bool
	held        bool
	passed      bool
	buf         bytes.Buffer
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

// newTryWriter returns a writer for one try to the client writer w; its
// own headers start as a copy of base (w's headers before any try).
func newTryWriter(w http.ResponseWriter, base http.Header, limit int64) *tryWriter {
	return &tryWriter{
		ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w},
		header:                base.Clone(),
		limit:                 limit,
	}
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
	hold := tw.onHeader != nil && tw.onHeader(code, tw.header)
	if tw.discard.Load() || hold {
		tw.held = true
		return
	}
	tw.passed = true
	replaceHeader(tw.ResponseWriter.Header(), tw.header)
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

// replay writes a held-back response to the client.
func (tw *tryWriter) replay() error {
	tw.passed = true
	replaceHeader(tw.ResponseWriter.Header(), tw.header)
	tw.ResponseWriter.WriteHeader(tw.status)
	_, err := tw.ResponseWriter.Write(tw.buf.Bytes())
	return err
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
