// Package fleet shares workers' verdicts (isolations, throttles,
// operators' actions) between Caddy instances through a Redis or Valkey
// store, and merges what the other instances say into decisions for this
// one.
//
// Every entry is one instance's verdict on one worker (pool and
// upstream), or an operator's action on it to carry out everywhere,
// signed with HMAC-SHA256 over its content with the fleet's secret;
// entries that are unsigned, badly signed, future-dated or out of
// range are rejected and counted. The store holds a hash of the current
// entries (one field per worker and author, one more for a reset) and a
// hash of heartbeats;
// changes are also published on a channel. One goroutine per Fleet talks
// to the store: publishing goes through a bounded outbox, and remote
// entries arrive by the channel and by a full read every few seconds, so
// that a lost message is only late, and that entries of this instance the
// store lost are written again. The store is a single server, Sentinel or
// Cluster, through go-redis's universal client. Nothing in this package
// runs on a request's path.
package fleet
