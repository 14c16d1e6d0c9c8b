// Package status is Bifrost's status page and its command line: the
// `http.handlers.bifrost_status` module with its `bifrost_status`
// Caddyfile directive (page.go, caddyfile.go), its routes and actions
// (route.go, serve.go), the pools it shows (scope.go), its JSON feed
// (feed.go), the time series its sampler keeps across reloads (series.go)
// and its embedded page, script and style sheet (assets.go, statusui/);
// and the `caddy bifrost status` command (command.go).
//
// It reads and acts on workers through package pool, with the same views
// and the same operator actions as the admin API, and never imports the
// root package: the root imports it, so that a Caddy built with Bifrost
// has the page and the command.
package status
