package bifrost

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// errBodyGone is what a try reads from a request body whose bytes were
// sent by an earlier try and not kept: that try can never be sent whole.
var errBodyGone = errors.New("request body was already sent to another worker and not kept for replay")

// errTryOver is what a try's body reads after its try ended; the
// transport may still be writing it in the background.
var errTryOver = errors.New("request body read after its try ended")

// requestBody is the body of one request, shared by its tries. It is never
// read ahead of the first try: each try streams from the client as the
// upstream reads, while a copy of what was read (a tee) is kept, up to
// retry.max_body and within the pool's replay memory (max_body_total), so
// that a later try can send the same bytes again. A try can be sent whole
// while the copy is complete from the first byte, or while no byte of the
// body was read yet (a dial that failed).
//
// Reads of the client's body and of the copy are serialized by mu, so a
// transport still writing an abandoned try in the background cannot take
// bytes from the next try: whatever any try reads goes into the copy.
type requestBody struct {
	src    io.ReadCloser // the client's body; nil when the request has none
	length int64         // the request's ContentLength, for every try

	// keep is set while the copy holds every byte read so far.
	keep atomic.Bool
	// consumed is set once a byte was read from src.
	consumed atomic.Bool

	// eof is set once src was read to its end.
	eof atomic.Bool

	mu   sync.Mutex
	buf  []byte // the copy; guarded by mu
	read int64  // bytes read from src; guarded by mu
	err  error  // src's error, returned to every later read; guarded by mu

	limit  int64 // the most the copy may hold (retry.max_body)
	memory *replayMemory
	// reserved is what the copy holds of memory, or -1 once released.
	reserved atomic.Int64
}

// noBody is the body of every request without one.
var noBody = &requestBody{}

// newRequestBody returns the body of r for its tries. copy says whether
// the request may need it again: a request that can never be retried
// after its body was sent keeps no copy.
func newRequestBody(r *http.Request, limit int64, memory *replayMemory, copy bool) *requestBody {
	if r.Body == nil || r.Body == http.NoBody || (r.ContentLength == 0 && len(r.TransferEncoding) == 0) {
		return noBody
	}
	b := &requestBody{src: r.Body, length: r.ContentLength, limit: limit, memory: memory}
	if copy && limit > 0 && r.ContentLength <= limit {
		b.keep.Store(true)
		if r.ContentLength > 0 && b.grow(r.ContentLength) {
			b.buf = make([]byte, 0, r.ContentLength)
		}
	}
	return b
}

// keepsCopy reports whether a request's body is worth a copy: a request
// that cannot be retried once its body was sent (a method that is not
// retried, an upgrade or an extended CONNECT, whose body is a stream of
// its own; a request asking for incremental forwarding; gRPC) keeps
// none, and goes to a second worker only if its body was never read.
func (h *Handler) keepsCopy(r *http.Request) bool {
	if h.policy.Attempts < 2 || !methodRetried(h.methods, r.Method) {
		return false
	}
	return r.Method != http.MethodConnect && r.Header.Get("Upgrade") == "" &&
		!caddyhttp.IsIncremental(r.Header) &&
		!strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

// methodRetried reports whether method is among the retried ones.
func methodRetried(methods []string, method string) bool {
	for _, m := range methods {
		if m == method {
			return true
		}
	}
	return false
}

// replayable reports whether another try could send the body whole.
func (b *requestBody) replayable() bool {
	return b.src == nil || b.keep.Load() || !b.consumed.Load()
}

// complete reports whether the whole body is in the copy, so that tries
// may read it at the same time without waiting for the client.
func (b *requestBody) complete() bool {
	if b.src == nil {
		return true
	}
	return b.eof.Load() && b.keep.Load()
}

// forTry gives the request of one try its body, read from the start.
func (b *requestBody) forTry(r *http.Request) *tryBody {
	if b.src == nil {
		r.Body, r.ContentLength, r.GetBody = http.NoBody, 0, nil
		return nil
	}
	tb := &tryBody{b: b}
	r.Body, r.ContentLength = tb, b.length
	// Go's transport sends an idempotent request again on a fresh
	// connection when a reused one turns out dead; it may, while the
	// body can be read from the start.
	r.GetBody = func() (io.ReadCloser, error) {
		if !b.replayable() {
			return nil, errBodyGone
		}
		tb.closed.Store(true)
		tb = &tryBody{b: b}
		return tb, nil
	}
	return tb
}

// release returns the copy's memory to the pool, once. The bytes
// themselves go with the last try that refers to them.
func (b *requestBody) release() {
	if n := b.reserved.Swap(-1); n > 0 {
		b.memory.free(n)
	}
}

// grow reserves room for n more bytes of copy, or gives up the copy if
// the pool's replay memory has none.
func (b *requestBody) grow(n int64) bool {
	if !b.memory.take(n) {
		b.keep.Store(false)
		b.release()
		return false
	}
	for {
		v := b.reserved.Load()
		if v < 0 { // released meanwhile
			b.memory.free(n)
			return false
		}
		if b.reserved.CompareAndSwap(v, v+n) {
			return true
		}
	}
}

// readAt reads the body for a try that has read off bytes of it.
func (b *requestBody) readAt(off int64, p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if off < int64(len(b.buf)) {
		return copy(p, b.buf[off:]), nil
	}
	if off < b.read {
		return 0, errBodyGone
	}
	if b.eof.Load() {
		return 0, io.EOF
	}
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.src.Read(p)
	if n > 0 {
		b.consumed.Store(true)
		b.read += int64(n)
		b.save(p[:n])
	}
	switch {
	case err == io.EOF:
		b.eof.Store(true)
	case err != nil:
		b.err = err
	}
	return n, err
}

// save appends p to the copy while it is kept and within its limits;
// mu is held.
func (b *requestBody) save(p []byte) {
	if !b.keep.Load() {
		return
	}
	need := int64(len(b.buf) + len(p))
	if need > b.limit {
		b.keep.Store(false)
		b.release()
		b.buf = nil
		return
	}
	if need > int64(cap(b.buf)) {
		size := min(max(2*int64(cap(b.buf)), need, 4096), b.limit)
		if !b.grow(size - int64(cap(b.buf))) {
			b.buf = nil
			return
		}
		grown := make([]byte, len(b.buf), size)
		copy(grown, b.buf)
		b.buf = grown
	}
	b.buf = append(b.buf, p...)
}

// tryBody is the body of one try: the request body read from its start.
type tryBody struct {
	b      *requestBody
	off    int64
	closed atomic.Bool
	// done is when the try read the end of the body (unix ns), 0 before.
	done atomic.Int64
}

// Read reads the next bytes of the body for this try.
func (t *tryBody) Read(p []byte) (int, error) {
	if t.closed.Load() {
		return 0, errTryOver
	}
	n, err := t.b.readAt(t.off, p)
	t.off += int64(n)
	if err == io.EOF {
		t.done.CompareAndSwap(0, time.Now().UnixNano())
	}
	return n, err
}

// Close ends the try's reading; the client's body stays open for the
// next try, and the server closes it when the handler returns.
func (t *tryBody) Close() error {
	t.closed.Store(true)
	return nil
}

// sentAt returns when the try finished sending the body, or the zero
// time if it has not (or has no body).
func (t *tryBody) sentAt() time.Time {
	if t == nil {
		return time.Time{}
	}
	if ns := t.done.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// replayMemory bounds the memory that a pool's request body copies hold
// together (retry.max_body_total). Past it, requests stream without a
// copy: they are sent once, and retried only if their body was never
// read.
type replayMemory struct {
	limit atomic.Int64
	used  atomic.Int64
}

// take reserves n bytes, if the limit allows.
func (m *replayMemory) take(n int64) bool {
	if m == nil {
		return true
	}
	limit := m.limit.Load()
	for {
		used := m.used.Load()
		if used+n > limit {
			return false
		}
		if m.used.CompareAndSwap(used, used+n) {
			return true
		}
	}
}

// free gives back n bytes.
func (m *replayMemory) free(n int64) {
	if m != nil {
		m.used.Add(-n)
	}
}
