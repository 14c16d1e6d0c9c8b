package bifrost

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/bifrost-proxy/bifrost/pool"
)

// newTestBody returns the body of a PUT of data (chunked when length is
// -1) for tries, with a copy kept up to limit within memory.
func newTestBody(t *testing.T, src io.Reader, length, limit int64, memory *pool.BodyMemory) (*requestBody, *http.Request) {
	t.Helper()
	r := httptest.NewRequest(http.MethodPut, "/", io.NopCloser(src))
	r.ContentLength = length
	if length < 0 {
		r.TransferEncoding = []string{"chunked"}
	}
	return newRequestBody(r, limit, memory, true), r
}

// The second try reads the same bytes as the first, from the copy, and
// the copy's memory goes back to the pool's budget at the end.
func TestRequestBodyReplaysTheCopy(t *testing.T) {
	mem := &pool.BodyMemory{}
	mem.SetLimit(1 << 20)
	data := strings.Repeat("0123456789abcdef", 5000) // 80 kB: three chunks
	b, r := newTestBody(t, strings.NewReader(data), -1, 1<<20, mem)

	b.forTry(r)
	half := make([]byte, 30000)
	if _, err := io.ReadFull(r.Body, half); err != nil {
		t.Fatal(err)
	}
	_ = r.Body.Close()
	if !b.replayable() || b.complete() {
		t.Fatalf("after half a body: replayable %v complete %v; want true, false", b.replayable(), b.complete())
	}
	if _, err := r.Body.Read(half); err == nil {
		t.Fatal("a closed try's body still reads")
	}

	b.forTry(r)
	got, err := io.ReadAll(r.Body)
	if err != nil || string(got) != data {
		t.Fatalf("second try read %d bytes (%v), want the %d of the body", len(got), err, len(data))
	}
	if !b.complete() {
		t.Fatal("the whole body was read but the copy is not complete")
	}
	if used := mem.Used(); used != 3*copyChunkSize {
		t.Fatalf("copy holds %d bytes of memory, want 3 chunks", used)
	}
	b.release()
	if used := mem.Used(); used != 0 {
		t.Fatalf("%d bytes still held after release", used)
	}
}

// A body past max_body, or past the pool's memory, keeps no copy: it is
// sent once, and a second try cannot be sent whole.
func TestRequestBodyBeyondItsLimits(t *testing.T) {
	for _, c := range []struct {
		name         string
		limit, total int64
	}{{"max_body", 40000, 1 << 20}, {"max_body_total", 1 << 20, 2 * copyChunkSize}} {
		t.Run(c.name, func(t *testing.T) {
			mem := &pool.BodyMemory{}
			mem.SetLimit(c.total)
			data := bytes.Repeat([]byte("x"), 100000)
			b, r := newTestBody(t, bytes.NewReader(data), -1, c.limit, mem)
			b.forTry(r)
			got, err := io.ReadAll(r.Body)
			if err != nil || len(got) != len(data) {
				t.Fatalf("first try read %d bytes, %v", len(got), err)
			}
			if b.replayable() {
				t.Fatal("a body past its limit counts as replayable")
			}
			if mem.Used() != 0 {
				t.Fatalf("%d bytes held by a copy given up", mem.Used())
			}
			b.forTry(r)
			if _, err := r.Body.Read(make([]byte, 10)); !errors.Is(err, errBodyGone) {
				t.Fatalf("second try read: %v, want errBodyGone", err)
			}
		})
	}
}

// A body whose first try failed before reading it (a refused dial) goes
// whole to the next try even without a copy.
func TestRequestBodyUnreadNeedsNoCopy(t *testing.T) {
	r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader("order"))
	b := newRequestBody(r, 1<<20, &pool.BodyMemory{}, false)
	b.forTry(r)
	_ = r.Body.Close() // the dial failed
	if !b.replayable() {
		t.Fatal("an unread body is not replayable")
	}
	b.forTry(r)
	if got, _ := io.ReadAll(r.Body); string(got) != "order" {
		t.Fatalf("got %q", got)
	}
	if b.replayable() {
		t.Fatal("a read body without a copy counts as replayable")
	}
}

// The end of a request does not wait for a try stuck reading a slow
// client's body, and that try reads nothing more once the request ended.
func TestRequestBodyReleaseDoesNotWaitForTheClient(t *testing.T) {
	pr, pw := io.Pipe()
	mem := &pool.BodyMemory{}
	mem.SetLimit(1 << 20)
	b, r := newTestBody(t, pr, -1, 1<<20, mem)
	b.forTry(r)
	body := r.Body
	readDone := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(body)
		readDone <- err
	}()
	_, _ = pw.Write([]byte("first"))
	released := make(chan struct{})
	go func() { b.release(); close(released) }()
	select {
	case <-released:
	case <-time.After(5 * time.Second):
		t.Fatal("release waited for the client")
	}
	// the try may be waiting in the client's body: give it more
	go func() { _, _ = pw.Write([]byte("late")) }()
	defer pr.Close()
	if err := <-readDone; !errors.Is(err, errTryOver) {
		t.Fatalf("the try read on after the request ended: %v", err)
	}
	if mem.Used() != 0 {
		t.Fatalf("%d bytes held after release", mem.Used())
	}
}
