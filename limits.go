package bifrost

import (
	"encoding/json"
	"slices"
)

// connsLimit returns the max_conns_per_host of a worker transport's JSON
// when each of its connections carries one request at a time (HTTP/1.1:
// no h2c, and no HTTP/2 over TLS), else 0. A worker with that many tries
// in flight is full: a new request would wait in the transport for a
// connection, so the worker is left out of selection while another one
// (a backup included) has room. Unlike max_requests it is no hard limit:
// with every worker full, the request goes to one and waits there, as
// with reverse_proxy.
func connsLimit(raw json.RawMessage) int64 {
	var t struct {
		Protocol        string          `json:"protocol"`
		MaxConnsPerHost int             `json:"max_conns_per_host"`
		Versions        []string        `json:"versions"`
		TLS             json.RawMessage `json:"tls"`
	}
	if json.Unmarshal(raw, &t) != nil || t.Protocol != "http" || t.MaxConnsPerHost <= 0 {
		return 0
	}
	versions := t.Versions
	if len(versions) == 0 {
		versions = []string{"1.1", "2"} // reverse_proxy's default
	}
	if slices.Contains(versions, "h2c") || slices.Contains(versions, "3") || (t.TLS != nil && slices.Contains(versions, "2")) {
		return 0 // multiplexed: one connection carries many requests
	}
	return int64(t.MaxConnsPerHost)
}

// connsFull reports whether the worker has as many tries in flight as its
// transport has connections (see connsLimit).
func (w *worker) connsFull() bool {
	return w.connsMax > 0 && w.Slots.Load() >= w.connsMax
}
