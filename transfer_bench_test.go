package bifrost

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// BenchmarkTransfer compares the throughput of bodies through plain
// reverse_proxy and through bifrost, in-process, against one real backend
// on loopback: a 1 MiB download, a 1 MiB upload with Content-Length, and
// a 1 MiB chunked upload. Run it with -count so that the two handlers
// alternate, and compare their MB/s pair by pair (bench/BENCHMARKS.md;
// bench/transfer.sh runs the pairs and prints the ratios).
func BenchmarkTransfer(b *testing.B) {
	const size = 1 << 20
	payload := bytes.Repeat([]byte("bifrost!"), size/8)
	t := &testing.T{}
	addr := rawBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			_, _ = w.Write(payload)
			return
		}
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprint(w, n)
	}))
	for _, kind := range []string{"download", "upload", "chunked"} {
		for _, handler := range []string{"reverse_proxy", "bifrost"} {
			b.Run(kind+"/"+handler, func(b *testing.B) {
				js, err := adapt(fmt.Sprintf("{\n\tadmin %s\n\thttp_port 9080\n\tauto_https off\n\tlog {\n\t\toutput discard\n\t}\n}\n:9080 {\n\t%s %s\n}\n", testAdmin, handler, addr))
				if err != nil {
					b.Fatal(err)
				}
				// connections to the previous config's server die with it;
				// a chunked PUT cannot be resent on one
				client.CloseIdleConnections()
				if err := caddy.Load(js, true); err != nil {
					b.Fatal(err)
				}
				b.SetBytes(size)
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						var req *http.Request
						switch kind {
						case "download":
							req, _ = http.NewRequest(http.MethodGet, testSite+"/", nil)
						case "upload":
							req, _ = http.NewRequest(http.MethodPut, testSite+"/", bytes.NewReader(payload))
						case "chunked":
							// a reader without a length: sent chunked
							req, _ = http.NewRequest(http.MethodPut, testSite+"/", io.MultiReader(bytes.NewReader(payload)))
						}
						resp, err := client.Do(req)
						if err != nil {
							b.Error(err)
							return
						}
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode != http.StatusOK {
							b.Errorf("status %d", resp.StatusCode)
							return
						}
					}
				})
			})
		}
	}
}
