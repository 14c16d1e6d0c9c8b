// Command caddy is Caddy with its standard modules and Bifrost built in, so
// the project can be built and run without xcaddy:
//
//	go run ./cmd/caddy run --config examples/demo/Caddyfile
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// plug in Caddy's standard modules and Bifrost
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/bifrost-proxy/bifrost"
)

func main() {
	caddycmd.Main()
}
