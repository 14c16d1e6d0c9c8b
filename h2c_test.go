//lint:file-ignore SA1019 net/http's Transport refuses the :protocol pseudo-header of an extended CONNECT; x/net's, deprecated for other uses, sends it

package bifrost

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"

	"golang.org/x/net/http2"
)

// h2cTransport returns an HTTP/2 client transport over cleartext (prior
// knowledge) that can send an extended CONNECT (RFC 8441).
func h2cTransport() http.RoundTripper {
	return &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}
}
