package status

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// parseCaddyfile sets up the status page from Caddyfile tokens.
func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	s := new(Page)
	if err := s.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return s, nil
}

// UnmarshalCaddyfile sets up the status page from Caddyfile tokens.
// Syntax:
//
//	bifrost_status {
//	    prefix <path>
//	    actions
//	    pools <name...>|*
//	}
//
// Every subdirective is optional; see Page's fields.
func (s *Page) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for d.NextBlock(0) {
		sub := d.Val()
		if seen[sub] {
			return d.Errf("%s already specified", sub)
		}
		seen[sub] = true
		switch sub {
		case "prefix":
			if !d.NextArg() {
				return d.ArgErr()
			}
			s.Prefix = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
			if err := s.Validate(); err != nil {
				return d.Err(err.Error())
			}
		case "actions":
			if d.NextArg() {
				return d.ArgErr()
			}
			s.Actions = true
		case "pools":
			s.Pools = d.RemainingArgs()
			if len(s.Pools) == 0 {
				return d.ArgErr()
			}
			if err := s.Validate(); err != nil {
				return d.Err(err.Error())
			}
		default:
			return d.Errf("unrecognized bifrost_status subdirective %s", sub)
		}
	}
	return nil
}
