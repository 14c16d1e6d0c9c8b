package bifrost

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// BackupConfig declares backup upstreams: workers that get no traffic
// while the pool's primary workers can serve, and take it when they
// cannot. A backup is a full worker (its own proxy, breaker, probes,
// isolation, state across reloads); it is only left out of selection.
type BackupConfig struct {
	// Upstreams are the dial addresses (host:port) of the backup
	// workers. None may also be a primary upstream.
	Upstreams []string `json:"upstreams,omitempty"`

	// MinPrimary is how many primary workers must be in rotation (not
	// out, not full) for the backups to stay out of it: with fewer, the
	// backups join the primaries that are left. Default: 1 (the backups
	// take traffic only when no primary can).
	MinPrimary int `json:"min_primary,omitempty"`
}

// validate checks the backup block against the primary upstreams;
// errors name the field.
func (bc *BackupConfig) validate(primaries reverseproxy.UpstreamPool) error {
	if bc == nil {
		return nil
	}
	if len(bc.Upstreams) == 0 {
		return errors.New("backup.upstreams: at least one backup upstream is required")
	}
	for i, dial := range bc.Upstreams {
		host, port, err := net.SplitHostPort(dial)
		if err != nil || host == "" {
			return fmt.Errorf("backup.upstreams[%d]: %q is not a host:port dial address", i, dial)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("backup.upstreams[%d]: %q has no valid port", i, dial)
		}
		if slices.Contains(bc.Upstreams[:i], dial) {
			return fmt.Errorf("backup.upstreams[%d]: %s is listed twice", i, dial)
		}
		if slices.ContainsFunc(primaries, func(up *reverseproxy.Upstream) bool { return up != nil && up.Dial == dial }) {
			return fmt.Errorf("backup.upstreams[%d]: %s is also a primary upstream", i, dial)
		}
	}
	if bc.MinPrimary < 0 {
		return fmt.Errorf("backup.min_primary must not be negative, got %d", bc.MinPrimary)
	}
	return nil
}

// minPrimary returns MinPrimary with its default.
func (bc *BackupConfig) minPrimary() int {
	if bc == nil || bc.MinPrimary == 0 {
		return 1
	}
	return bc.MinPrimary
}

// upstreams returns the backup upstreams as reverse_proxy upstreams.
func (bc *BackupConfig) upstreams() reverseproxy.UpstreamPool {
	if bc == nil {
		return nil
	}
	ups := make(reverseproxy.UpstreamPool, len(bc.Upstreams))
	for i, dial := range bc.Upstreams {
		ups[i] = &reverseproxy.Upstream{Dial: dial}
	}
	return ups
}

// backup parses `backup <upstreams...>` and `backup min_primary <n>`;
// both may be given more than once (the upstreams add up).
func (p *parser) backup(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.ArgErr()
	}
	bc := ensure(p.h.Backup)
	p.h.Backup = bc
	if args[0] == "min_primary" {
		if len(args) != 2 {
			return d.ArgErr()
		}
		return parseInt(d, "backup min_primary", args[1], &bc.MinPrimary)
	}
	for _, a := range args {
		if host, _, err := net.SplitHostPort(a); err != nil || host == "" {
			return d.Errf("backup: %q is not a host:port address", a)
		}
		if slices.Contains(bc.Upstreams, a) {
			return d.Errf("backup: %s is listed twice", a)
		}
		bc.Upstreams = append(bc.Upstreams, a)
	}
	return nil
}

// primaryView returns the view of set that requests use while the
// primaries can serve: its primary workers and their listings, or nil
// when set has no backup.
func primaryView(set *workerSet) *workerSet {
	if !slices.ContainsFunc(set.workers, func(w *worker) bool { return w.backup }) {
		return nil
	}
	v := &workerSet{byUpstream: make(map[*reverseproxy.Upstream]*worker, len(set.workers)), direct: set.direct}
	for _, w := range set.workers {
		if !w.backup {
			v.workers = append(v.workers, w)
		}
	}
	for _, up := range set.upstreams {
		if w := set.byUpstream[up]; w != nil && !w.backup {
			v.upstreams = append(v.upstreams, up)
			v.byUpstream[up] = w
		}
	}
	return v
}

// chooseSet sets the workers a request chooses from: the primaries while
// at least min_primary of them are in rotation (available: not out, not
// full), else the primaries with the backups. The choice is made again for
// each request, so that the primaries take the traffic back as soon as
// they can serve.
func (h *Handler) chooseSet(rs *requestState) {
	full := rs.set
	if full.primary == nil {
		return
	}
	need := h.Backup.minPrimary()
	n := 0
	for _, w := range full.primary.workers {
		if w.available() {
			if n++; n >= need {
				rs.set, rs.full = full.primary, full
				return
			}
		}
	}
}

// expand brings the backups into the request's choice (every primary it
// could go to is out, full or tried, or a failure's action is
// expand_pool), and reports whether it did.
func (rs *requestState) expand() bool {
	if rs.full == nil {
		return false
	}
	rs.set, rs.full = rs.full, nil
	return true
}
