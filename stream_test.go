package bifrost

import (
	"bufio"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// The tests of this file check that bodies stream: Bifrost never holds a
// request body before its first try, so full-duplex protocols (gRPC
// bidirectional streams, WebSocket, SSE) work through it as through
// reverse_proxy.

// rawBackend starts an HTTP server on 127.0.0.1 with handler h, for tests
// that need to see a request before its body ends.
func rawBackend(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// A chunked upload reaches the upstream at once: the upstream sees the
// request's headers and first chunk while the client still holds the
// rest, which it sends only once the upstream has seen the first chunk.
// A proxy that read the body before the first try would wait for the
// rest forever (here: until the test's deadline).
func TestChunkedUploadStreamsToUpstream(t *testing.T) {
	gotFirst := make(chan struct{})
	addr := rawBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 5)
		if _, err := io.ReadFull(r.Body, buf); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		close(gotFirst)
		rest, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s%s", buf, rest)
	}))
	loadCaddyfile(t, siteConfig([]string{addr}, "\t\tname chunked"))

	pr, pw := io.Pipe()
	go func() {
		_, _ = pw.Write([]byte("first"))
		select {
		case <-gotFirst:
			_, _ = pw.Write([]byte(" and the rest"))
			_ = pw.Close()
		case <-time.After(10 * time.Second):
			_ = pw.CloseWithError(fmt.Errorf("the upstream never saw the first chunk"))
		}
	}()
	req, _ := http.NewRequest(http.MethodPut, testSite+"/", pr)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(b) != "first and the rest" {
		t.Fatalf("got %d %q; want the upstream to see the first chunk before the client sent the rest", resp.StatusCode, b)
	}
}

// A PUT whose upstream read the whole body and then failed is retried on
// another worker with the same bytes, from the copy kept while the body
// streamed to the first.
func TestStreamedBodyIsReplayedWhole(t *testing.T) {
	failing, good := newBackend(t), newBackend(t)
	failing.set(status(http.StatusServiceUnavailable, "down"))
	good.set(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "got %d bytes", len(b))
	})
	loadCaddyfile(t, siteConfig([]string{failing.addr, good.addr}, "\t\tname replay\n\t\tlb_policy first\n\t\tretry {\n\t\t\tmethods PUT\n\t\t}"))
	body := []byte(strings.Repeat("0123456789", 50_000)) // 500 kB, chunked below
	req, _ := http.NewRequest(http.MethodPut, testSite+"/", io.NopCloser(strings.NewReader(string(body))))
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(b) != "got 500000 bytes" {
		t.Fatalf("got %d %q", resp.StatusCode, b)
	}
	if string(failing.lastBody()) != string(body) || string(good.lastBody()) != string(body) {
		t.Fatalf("bodies differ: failing got %d bytes, good %d, want %d each",
			len(failing.lastBody()), len(good.lastBody()), len(body))
	}
}

// With retry.max_body 0 no body is copied: a PUT whose body was read by a
// failing upstream is not sent again (its failure stands), while a body
// that was never read (a refused dial) still goes to the next worker.
func TestMaxBodyZeroNeverCopies(t *testing.T) {
	failing, good := newBackend(t), newBackend(t)
	failing.set(status(http.StatusServiceUnavailable, "down"))
	loadCaddyfile(t, siteConfig([]string{failing.addr, good.addr}, `
		name nocopy
		lb_policy first
		retry {
			max_body 0
		}`))
	code, body, _ := do(t, http.MethodPut, testSite+"/", []byte("payload"))
	if code != http.StatusServiceUnavailable || body != "down" {
		t.Fatalf("got %d %q; want the first upstream's own 503", code, body)
	}
	if good.hits.Load() != 0 {
		t.Fatalf("the body was sent again, with no copy kept")
	}

	client.CloseIdleConnections() // the reload closes them; a PUT is not resent on a dead one
	loadCaddyfile(t, siteConfig([]string{deadAddr(t), good.addr}, `
		name nocopy2
		lb_policy first
		retry {
			max_body 0
		}`))
	code, _, _ = do(t, http.MethodPut, testSite+"/", []byte("payload"))
	if code != http.StatusOK || string(good.lastBody()) != "payload" {
		t.Fatalf("got %d, body %q at the second worker; a refused dial sends nothing, so the request goes on", code, good.lastBody())
	}
}

// Stalled uploads hold at most retry.max_body_total of copies together:
// past it, requests stream without a copy. All of them are served once
// their clients finish.
func TestStalledUploadsBoundedByMaxBodyTotal(t *testing.T) {
	const uploads, chunk = 40, 256 << 10
	release := make(chan struct{})
	var reading sync.WaitGroup
	reading.Add(uploads)
	addr := rawBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.CopyN(io.Discard, r.Body, chunk)
		if n == chunk {
			reading.Done()
		}
		m, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%d", n+m)
	}))
	h := loadHandler(t, siteConfig([]string{addr}, `
		name stalled
		retry {
			methods PUT
			max_body 1MiB
			max_body_total 2MiB
		}`))

	var peak atomic.Int64
	done := make(chan error, uploads)
	for range uploads {
		go func() {
			pr, pw := io.Pipe()
			go func() {
				_, _ = pw.Write(make([]byte, chunk))
				<-release
				_, _ = pw.Write(make([]byte, chunk))
				_ = pw.Close()
			}()
			req, _ := http.NewRequest(http.MethodPut, testSite+"/", pr)
			resp, err := client.Do(req)
			if err != nil {
				done <- err
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || string(b) != fmt.Sprint(2*chunk) {
				err = fmt.Errorf("got %d %q", resp.StatusCode, b)
			}
			done <- err
		}()
	}
	waited := make(chan struct{})
	go func() { reading.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(20 * time.Second):
		t.Fatal("the upstream did not see the first part of every upload")
	}
	peak.Store(h.pool.Replay.Used())
	close(release)
	for range uploads {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	if p := peak.Load(); p > 2<<20 {
		t.Errorf("body copies held %d bytes with %d stalled uploads; max_body_total is %d", p, uploads, 2<<20)
	}
	if p := peak.Load(); p == 0 {
		t.Errorf("no body was copied at all; want copies up to max_body_total")
	}
	eventually(t, 5*time.Second, "the copies' memory returned", func() bool { return h.pool.Replay.Used() == 0 })
	t.Logf("%d stalled uploads of %d bytes held %d bytes of copies (max_body_total 2 MiB)", uploads, chunk, peak.Load())
}

// Server-sent events with flush_interval -1 reach the client as the
// upstream sends them: the client reads the first event while the
// upstream still holds the stream open.
func TestSSEFirstEventArrivesAtOnce(t *testing.T) {
	clientGotFirst := make(chan struct{})
	addr := rawBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: one\n\n")
		http.NewResponseController(w).Flush()
		select {
		case <-clientGotFirst:
			fmt.Fprint(w, "data: two\n\n")
		case <-time.After(10 * time.Second):
		case <-r.Context().Done():
		}
	}))
	loadCaddyfile(t, siteConfig([]string{addr}, "\t\tname sse\n\t\tflush_interval -1"))
	resp, err := client.Get(testSite + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	line, err := rd.ReadString('\n')
	if err != nil || line != "data: one\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	close(clientGotFirst)
	rest, _ := io.ReadAll(rd)
	if !strings.Contains(string(rest), "data: two") {
		t.Fatalf("second event missing: %q", rest)
	}
}

// A WebSocket upgrade over HTTP/1.1 goes through, and messages flow both
// ways after it.
func TestWebSocketOverHTTP1(t *testing.T) {
	addr := rawBackend(t, http.HandlerFunc(echoWebSocket))
	loadCaddyfile(t, siteConfig([]string{addr}, "\t\tname ws"))

	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(testSite, "http://"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprint(conn, "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade answered %d", resp.StatusCode)
	}
	for i := range 3 {
		fmt.Fprintf(conn, "ping %d\n", i)
		line, err := br.ReadString('\n')
		if err != nil || line != fmt.Sprintf("echo ping %d\n", i) {
			t.Fatalf("round trip %d: %q, %v", i, line, err)
		}
	}
}

// grpcSite is a Caddyfile for a site that speaks h2c to its clients and
// proxies to gRPC servers over h2c.
func grpcSite(pool string, upstreams ...string) string {
	ups := make([]string, len(upstreams))
	for i, u := range upstreams {
		ups[i] = "h2c://" + u
	}
	return fmt.Sprintf(`{
	admin %s
	http_port 9080
	https_port 9443
	auto_https off
	skip_install_trust
	grace_period 1ns
	servers {
		protocols h1 h2c
	}
}
:9080 {
	bifrost %s {
		name %s
	}
}
`, testAdmin, strings.Join(ups, " "), pool)
}

// grpcServer is an interop test service: FullDuplexCall echoes each
// message as it arrives, StreamingOutputCall sends one message per
// requested size.
type grpcServer struct {
	testpb.UnimplementedTestServiceServer
}

func (grpcServer) FullDuplexCall(stream testpb.TestService_FullDuplexCallServer) error {
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		out := &testpb.StreamingOutputCallResponse{Payload: req.GetPayload()}
		if err := stream.Send(out); err != nil {
			return err
		}
	}
}

func (grpcServer) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, stream testpb.TestService_StreamingOutputCallServer) error {
	for _, p := range req.GetResponseParameters() {
		out := &testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: make([]byte, p.GetSize())}}
		if err := stream.Send(out); err != nil {
			return err
		}
	}
	return nil
}

// gRPC through Bifrost: a bidirectional stream plays ping-pong (each
// message is sent only after the previous one came back, which no proxy
// that holds the request body can pass), and a server stream delivers
// every message.
func TestGRPCStreams(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	testpb.RegisterTestServiceServer(srv, grpcServer{})
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)

	js, err := adapt(grpcSite("grpc", ln.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	loadJSON(t, js)

	conn, err := grpc.NewClient(strings.TrimPrefix(testSite, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tc := testpb.NewTestServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()

	t.Run("bidi ping-pong", func(t *testing.T) {
		stream, err := tc.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			msg := fmt.Sprintf("ping %d", i)
			if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte(msg)}}); err != nil {
				t.Fatalf("send %d: %v", i, err)
			}
			got, err := stream.Recv()
			if err != nil {
				t.Fatalf("round trip %d: %v", i, err)
			}
			if string(got.GetPayload().GetBody()) != msg {
				t.Fatalf("round trip %d: got %q", i, got.GetPayload().GetBody())
			}
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != io.EOF {
			t.Fatalf("end of stream: %v (want the upstream's OK status)", err)
		}
	})

	t.Run("server streaming", func(t *testing.T) {
		sizes := []int32{10, 20000, 30}
		req := &testpb.StreamingOutputCallRequest{}
		for _, s := range sizes {
			req.ResponseParameters = append(req.ResponseParameters, &testpb.ResponseParameters{Size: s})
		}
		stream, err := tc.StreamingOutputCall(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		for i, s := range sizes {
			got, err := stream.Recv()
			if err != nil {
				t.Fatalf("message %d: %v", i, err)
			}
			if n := len(got.GetPayload().GetBody()); n != int(s) {
				t.Fatalf("message %d: %d bytes, want %d", i, n, s)
			}
		}
		if _, err := stream.Recv(); err != io.EOF {
			t.Fatalf("end of stream: %v", err)
		}
	})
}

// A hedged response keeps its trailers: the try that wins the race
// writes the client's headers from then on, so the trailers it sets after
// the body reach the client (gRPC's status travels in them).
func TestHedgedResponseKeepsTrailers(t *testing.T) {
	var n atomic.Int64
	trailing := func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			// the first try is slow, so that a hedge runs
			time.Sleep(300 * time.Millisecond)
		}
		w.Header().Set("Trailer", "Grpc-Status")
		_, _ = io.WriteString(w, "body")
		w.Header().Set("Grpc-Status", "0")
	}
	a, b := rawBackend(t, http.HandlerFunc(trailing)), rawBackend(t, http.HandlerFunc(trailing))
	loadCaddyfile(t, siteConfig([]string{a, b}, `
		name hedgetrailer
		retry {
			hedge 20ms
		}`))
	resp, err := client.Get(testSite + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "body" {
		t.Fatalf("body %q", body)
	}
	if got := resp.Trailer.Get("Grpc-Status"); got != "0" {
		t.Fatalf("trailer Grpc-Status %q, trailers %v; want the winner's 0", got, resp.Trailer)
	}
	if n.Load() < 2 {
		t.Fatalf("%d tries; the test needs a hedge", n.Load())
	}
}

// echoWebSocket is a backend that accepts a WebSocket upgrade and then
// echoes lines: enough to show bytes flow both ways after the upgrade.
func echoWebSocket(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Upgrade") != "websocket" {
		http.Error(w, "not an upgrade", http.StatusBadRequest)
		return
	}
	sum := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
		base64.StdEncoding.EncodeToString(sum[:]))
	_ = brw.Flush()
	for {
		line, err := brw.ReadString('\n')
		if err != nil {
			return
		}
		_, _ = brw.WriteString("echo " + line)
		_ = brw.Flush()
	}
}

// A WebSocket over HTTP/2 (RFC 8441 extended CONNECT) goes through: the
// request's body is the client's half of the stream, so it must reach the
// upstream as it is written, never be read ahead, and messages flow both
// ways.
//
// Go's HTTP/2 server offers extended CONNECT only with
// GODEBUG=http2xconnect=1 in its environment when it starts (as a Caddy
// operator sets it), so the test runs itself again with it.
func TestWebSocketOverHTTP2(t *testing.T) {
	if !strings.Contains(os.Getenv("GODEBUG"), "http2xconnect=1") {
		cmd := exec.Command(os.Args[0], "-test.run=^TestWebSocketOverHTTP2$", "-test.v")
		cmd.Env = append(os.Environ(), "GODEBUG=http2xconnect=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestWebSocketOverHTTP2") {
			t.Fatalf("with GODEBUG=http2xconnect=1: %v\n%s", err, out)
		}
		return
	}
	addr := rawBackend(t, http.HandlerFunc(echoWebSocket))
	js, err := adapt(strings.Replace(grpcSite("wsh2", addr), "h2c://", "", 1))
	if err != nil {
		t.Fatal(err)
	}
	loadJSON(t, js)

	tr := h2cTransport()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pr, pw := io.Pipe()
	req, _ := http.NewRequestWithContext(ctx, http.MethodConnect, testSite+"/ws", pr)
	req.Header.Set(":protocol", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("extended CONNECT answered %d", resp.StatusCode)
	}
	br := bufio.NewReader(resp.Body)
	for i := range 3 {
		fmt.Fprintf(pw, "ping %d\n", i)
		line, err := br.ReadString('\n')
		if err != nil || line != fmt.Sprintf("echo ping %d\n", i) {
			t.Fatalf("round trip %d: %q, %v", i, line, err)
		}
	}
	// The client ends its half, and the test waits for the stream to end
	// before the config is unloaded: reverse_proxy's Cleanup writes a
	// close frame to a WebSocket still open while its copy goroutine may
	// write too (a race Caddy's streaming.go notes in a TODO), with plain
	// reverse_proxy as with Bifrost.
	_ = pw.Close()
	if _, err := io.Copy(io.Discard, br); err != nil {
		t.Fatalf("the stream did not end cleanly after the client closed its half: %v", err)
	}
}
