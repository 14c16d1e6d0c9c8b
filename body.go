package bifrost

import (
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/bifrost-proxy/bifrost/pool"
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
// One try at a time reads the client's body (srcMu), and whatever it
// reads goes into the copy: a transport still writing an abandoned try
// in the background cannot take bytes from the next try. The copy is
// held in chunks from a pool (mu), returned when the request ends; a
// reader waiting for the client never holds mu, so the end of a request
// never waits for a slow client.
type requestBody struct {
	src    io.ReadCloser // the client's body; nil when the request has none
	length int64         // the request's ContentLength, for every try

	// keep is set while the copy holds every byte read so far.
	keep atomic.Bool
	// consumed is set once a byte was read from src.
	consumed atomic.Bool
	// eof is set once src was read to its end.
	eof atomic.Bool
	// overTotal is set when the copy was dropped because the pool's
	// body memory (max_body_total) was full: resource_limit_exceeded.
	overTotal atomic.Bool

	srcMu sync.Mutex // held while reading src

	mu       sync.Mutex
	chunks   []*copyChunk // the copy; guarded by mu
	copied   int64        // bytes in chunks; guarded by mu
	read     int64        // bytes read from src; guarded by mu
	err      error        // src's error, returned to every later read; guarded by mu
	released bool         // the request ended; guarded by mu

	limit  int64 // the most the copy may hold (retry.max_body)
	memory *pool.BodyMemory
}

// copyChunkSize is the size of the chunks a body copy is made of.
const copyChunkSize = 32 << 10

// copyChunk is one chunk of a body copy.
type copyChunk [copyChunkSize]byte

// copyChunks recycles the chunks of finished requests: a copy of each
// retryable upload would otherwise be garbage that the collector must
// clear and scan.
var copyChunks = sync.Pool{New: func() any { return new(copyChunk) }}

// noBody is the body of every request without one.
var noBody = &requestBody{}

// newRequestBody returns the body of r for its tries. copy says whether
// the request may need it again: a request that can never be retried
// after its body was sent keeps no copy.
func newRequestBody(r *http.Request, limit int64, memory *pool.BodyMemory, copy bool) *requestBody {
	if !hasBody(r) {
		return noBody
	}
	b := &requestBody{src: r.Body, length: r.ContentLength, limit: limit, memory: memory}
	if copy && limit > 0 && r.ContentLength <= limit {
		b.keep.Store(true)
	}
	return b
}

// hasBody reports whether r comes with a body to send.
func hasBody(r *http.Request) bool {
	return r.Body != nil && r.Body != http.NoBody && (r.ContentLength != 0 || len(r.TransferEncoding) != 0)
}

// keepsCopy reports whether a request's body is worth a copy: a request
// that cannot be retried once its body was sent (a method that is not
// retried, an upgrade or an extended CONNECT, whose body is a stream of
// its own; a request asking for incremental forwarding; gRPC) keeps
// none, and goes to a second worker only if its body was never read.
func (h *Handler) keepsCopy(r *http.Request) bool {
	if h.policy.Attempts < 2 {
		return false
	}
	if !slices.Contains(h.methods, r.Method) && (h.Retry == nil || len(h.Retry.match) == 0) {
		// only a retry match could make this request retryable once sent
		return false
	}
	return r.Method != http.MethodConnect && r.Header.Get("Upgrade") == "" &&
		!caddyhttp.IsIncremental(r.Header) &&
		!strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
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

// changes reports whether forTry changes the request: only a request
// with a body does, so one without needs no copy.
func (b *requestBody) changes(*http.Request) bool {
	return b.src != nil
}

// forTry gives the request of one try its body, read from the start. r
// must be the try's own copy of the request.
func (b *requestBody) forTry(r *http.Request) *tryBody {
	if b.src == nil {
		// nothing to read: reverse_proxy sends no body when the length
		// is 0, whatever Body holds (an HTTP/2 request's empty stream)
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

// clientError returns the error the client's body failed with, other than
// a body over its limit (which reverse_proxy answers with 413), or nil:
// a malformed chunked encoding, a read timeout, a connection that broke.
func (b *requestBody) clientError() error {
	if b.src == nil {
		return nil
	}
	b.mu.Lock()
	err := b.err
	b.mu.Unlock()
	var mbe *http.MaxBytesError
	if err == nil || errors.As(err, &mbe) {
		return nil
	}
	return err
}

// release ends the request's use of the body: the copy's chunks go back
// to the pool, and its memory to the pool's budget. A try still reading
// in the background reads errTryOver from now on.
func (b *requestBody) release() {
	if b.src == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.dropCopy()
	b.released = true
}

// dropCopy gives the copy up; mu is held.
func (b *requestBody) dropCopy() {
	b.keep.Store(false)
	for i, c := range b.chunks {
		copyChunks.Put(c)
		b.chunks[i] = nil
	}
	b.memory.Free(int64(len(b.chunks)) * copyChunkSize)
	b.chunks, b.copied = nil, 0
}

// readAt reads the body for a try that has read off bytes of it.
func (b *requestBody) readAt(off int64, p []byte) (int, error) {
	for {
		b.mu.Lock()
		switch {
		case b.released:
			b.mu.Unlock()
			return 0, errTryOver
		case off < b.copied:
			n := b.copyOut(off, p)
			b.mu.Unlock()
			return n, nil
		case off < b.read:
			b.mu.Unlock()
			return 0, errBodyGone
		case b.eof.Load():
			b.mu.Unlock()
			return 0, io.EOF
		case b.err != nil:
			err := b.err
			b.mu.Unlock()
			return 0, err
		}
		b.mu.Unlock()

		b.srcMu.Lock()
		b.mu.Lock()
		moved := b.read != off || b.released
		b.mu.Unlock()
		if moved {
			// another try read meanwhile: look again
			b.srcMu.Unlock()
			continue
		}
		n, err := b.src.Read(p)
		b.mu.Lock()
		if n > 0 {
			b.consumed.Store(true)
			b.read += int64(n)
			if !b.released {
				b.save(p[:n])
			}
		}
		switch {
		case err == io.EOF:
			b.eof.Store(true)
		case err != nil:
			b.err = err
		}
		b.mu.Unlock()
		b.srcMu.Unlock()
		return n, err
	}
}

// copyOut copies the copy's bytes from off into p; mu is held.
func (b *requestBody) copyOut(off int64, p []byte) int {
	n := 0
	for n < len(p) && off < b.copied {
		c := b.chunks[off/copyChunkSize]
		i := off % copyChunkSize
		end := min(int64(copyChunkSize), b.copied-(off-i))
		m := copy(p[n:], c[i:end])
		n += m
		off += int64(m)
	}
	return n
}

// save appends p to the copy while it is kept and within its limits;
// mu is held.
func (b *requestBody) save(p []byte) {
	if !b.keep.Load() {
		return
	}
	if b.copied+int64(len(p)) > b.limit {
		b.dropCopy()
		return
	}
	for len(p) > 0 {
		i := b.copied % copyChunkSize
		if i == 0 && b.copied/copyChunkSize == int64(len(b.chunks)) {
			if !b.memory.Take(copyChunkSize) {
				b.overTotal.Store(true)
				b.dropCopy()
				return
			}
			b.chunks = append(b.chunks, copyChunks.Get().(*copyChunk))
		}
		m := copy(b.chunks[b.copied/copyChunkSize][i:], p)
		b.copied += int64(m)
		p = p[m:]
	}
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
