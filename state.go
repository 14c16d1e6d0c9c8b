package bifrost

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"strconv"
	"sync"
	"time"
	"weak"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/bifrost-proxy/bifrost/health"
	"github.com/bifrost-proxy/bifrost/pool"
	"github.com/bifrost-proxy/bifrost/recovery"
)

// This file keeps the workers' verdicts (isolations, throttles) in
// Caddy's storage, so that a restarted instance starts with them: one
// document per pool, written by the bifrost app's loop when it changed
// and when the app stops, and read when a pool is created.

const (
	// stateVersion is the version of the state document.
	stateVersion = 1
	// maxStateSize bounds a state document read from storage.
	maxStateSize = 1 << 20
	// maxStateWorkers bounds the workers of a state document.
	maxStateWorkers = 10000
	// maxStateAhead bounds how far in the future a stored end may be.
	maxStateAhead = 24 * time.Hour
	// maxStateEjections bounds a stored ejection count.
	maxStateEjections = 64
	// maxStateText bounds a stored upstream or reason, in bytes.
	maxStateText = 512
	// storageTimeout bounds one storage operation.
	storageTimeout = 5 * time.Second
)

// stateDoc is a pool's state document in storage.
type stateDoc struct {
	Version int           `json:"version"`
	Pool    string        `json:"pool"`
	Saved   time.Time     `json:"saved"`
	Workers []stateWorker `json:"workers"`
}

// stateWorker is one worker's verdict in a state document.
type stateWorker struct {
	Upstream       string          `json:"upstream"`
	Isolation      *stateIsolation `json:"isolation,omitempty"`
	ThrottledUntil time.Time       `json:"throttled_until,omitzero"`
}

// stateIsolation is a worker's isolation in a state document.
type stateIsolation struct {
	Until          time.Time `json:"until,omitzero"`
	Reason         string    `json:"reason"`
	Ejections      int       `json:"ejections"`
	Operator       bool      `json:"operator,omitempty"`
	RecoveryFailed bool      `json:"recovery_failed,omitempty"`
}

// stateKey is the storage key of a pool's state document. A pool name
// that is not a plain file name gets a hash, so that two names cannot
// share a key.
func stateKey(name string) string {
	clean := pool.WorkerID(name, "")
	clean = clean[:len(clean)-1] // WorkerID's "_" separator
	if clean != name || clean == "" {
		h := fnv.New32a()
		_, _ = h.Write([]byte(name))
		clean += "-" + strconv.FormatUint(uint64(h.Sum32()), 16)
	}
	return "bifrost/state/" + clean + ".json"
}

// stateKeeper reads and writes the pools' state documents.
type stateKeeper struct {
	storage certmagic.Storage
	logger  *zap.Logger

	mu      sync.Mutex
	last    map[string][]byte // pool name -> the workers last written
	failing bool              // the last write failed (logged once until one succeeds)
}

// restoredPools remembers, by pool name, the pool whose state was last
// read, so that a reload, which keeps the pool, does not read it again
// over what happened since.
var restoredPools sync.Map // string -> weak.Pointer[pool.Pool]

// restore reads the state document of p, once per pool created, and
// applies its verdicts to p's workers before the first request. Entries
// that ended, that name an upstream p does not have, or that are out of
// range are dropped; a document that cannot be read is logged and
// ignored.
func (k *stateKeeper) restore(ctx context.Context, p *pool.Pool) {
	wp := weak.Make(p)
	if prev, loaded := restoredPools.Swap(p.Name, wp); loaded && prev.(weak.Pointer[pool.Pool]) == wp {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, storageTimeout)
	defer cancel()
	key := stateKey(p.Name)
	data, err := k.storage.Load(ctx, key)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		k.logger.Warn("reading the pool's state", zap.String("pool", p.Name), zap.String("key", key), zap.Error(err))
		return
	}
	vs, err := decodeState(data, p.Name, time.Now())
	if err != nil {
		k.logger.Warn("ignoring the pool's stored state", zap.String("pool", p.Name), zap.String("key", key), zap.Error(err))
		return
	}
	if n := p.Apply(vs); n > 0 {
		k.logger.Info("restored workers' verdicts from storage", zap.String("pool", p.Name), zap.Int("verdicts", n))
	}
}

// decodeState reads a state document for the pool name, as untrusted
// input: it returns the verdicts that are valid and have not ended at
// now, or an error for a document that is not one.
func decodeState(data []byte, name string, now time.Time) ([]pool.Verdict, error) {
	if len(data) > maxStateSize {
		return nil, fmt.Errorf("document of %d bytes, larger than %d", len(data), maxStateSize)
	}
	var doc stateDoc
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("decoding: %w", err)
	}
	switch {
	case doc.Version != stateVersion:
		return nil, fmt.Errorf("version %d, want %d", doc.Version, stateVersion)
	case doc.Pool != name:
		return nil, fmt.Errorf("document of pool %q", doc.Pool)
	case len(doc.Workers) > maxStateWorkers:
		return nil, fmt.Errorf("%d workers, more than %d", len(doc.Workers), maxStateWorkers)
	}
	horizon := now.Add(maxStateAhead)
	var out []pool.Verdict
	for _, sw := range doc.Workers {
		if sw.Upstream == "" || len(sw.Upstream) > maxStateText {
			continue
		}
		v := pool.Verdict{Upstream: sw.Upstream}
		if tu := sw.ThrottledUntil; tu.After(now) && !tu.After(horizon) {
			v.ThrottledUntil = tu
		}
		if iso := sw.Isolation; iso != nil && validIsolation(iso, now, horizon) {
			v.Isolation = &health.Verdict{
				Until:          iso.Until,
				Reason:         recovery.Truncate(iso.Reason, maxStateText),
				Ejections:      iso.Ejections,
				Operator:       iso.Operator,
				RecoveryFailed: iso.RecoveryFailed,
			}
		}
		if v.Isolation != nil || !v.ThrottledUntil.IsZero() {
			out = append(out, v)
		}
	}
	return out, nil
}

// validIsolation reports whether a stored isolation is in range and has
// not ended at now. Only an operator's isolation or a recovery failure
// may have no end.
func validIsolation(iso *stateIsolation, now, horizon time.Time) bool {
	if iso.Ejections < 0 || iso.Ejections > maxStateEjections || iso.Reason == "" {
		return false
	}
	if iso.Until.IsZero() {
		return iso.Operator || iso.RecoveryFailed
	}
	return iso.Until.After(now) && !iso.Until.After(horizon)
}

// encodeState returns the workers part of a pool's state document for
// vs, which is what decides whether the document changed.
func encodeState(vs []pool.Verdict) []stateWorker {
	out := make([]stateWorker, 0, len(vs))
	for _, v := range vs {
		sw := stateWorker{Upstream: v.Upstream, ThrottledUntil: v.ThrottledUntil}
		if iso := v.Isolation; iso != nil {
			sw.Isolation = &stateIsolation{
				Until: iso.Until, Reason: iso.Reason, Ejections: iso.Ejections,
				Operator: iso.Operator, RecoveryFailed: iso.RecoveryFailed,
			}
		}
		out = append(out, sw)
	}
	return out
}

// save writes the state document of every pool whose verdicts changed
// since this keeper last wrote it. It runs on the app's loop and when
// the app stops, never on a request's path.
func (k *stateKeeper) save(ctx context.Context, now time.Time) {
	for _, p := range pool.All() {
		workers := encodeState(p.Verdicts(now))
		body, err := json.Marshal(workers)
		if err != nil {
			continue
		}
		k.mu.Lock()
		same := bytes.Equal(k.last[p.Name], body)
		k.mu.Unlock()
		if same {
			continue
		}
		doc, err := json.Marshal(stateDoc{Version: stateVersion, Pool: p.Name, Saved: now.UTC(), Workers: workers})
		if err != nil {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, storageTimeout)
		err = k.storage.Store(sctx, stateKey(p.Name), doc)
		cancel()
		k.mu.Lock()
		logIt := err != nil && !k.failing || err == nil && k.failing
		k.failing = err != nil
		if err == nil {
			k.last[p.Name] = body
		}
		k.mu.Unlock()
		switch {
		case err != nil && logIt:
			k.logger.Warn("writing the workers' state to storage failed; retrying every second, logged again once it works",
				zap.String("pool", p.Name), zap.Error(err))
		case logIt:
			k.logger.Info("writing the workers' state to storage works again", zap.String("pool", p.Name))
		}
	}
}
