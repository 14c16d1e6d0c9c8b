package fleet

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Defaults of Config.
const (
	DefaultPrefix     = "bifrost:fleet"
	DefaultResync     = 2 * time.Second
	DefaultHeartbeat  = 2 * time.Second
	DefaultOutboxSize = 1024
	// opTimeout bounds one exchange with the store.
	opTimeout = time.Second
	// restoreLife is how long an operator's restore or reset stays in
	// the store, for instances that were away when it was published.
	restoreLife = time.Minute
)

// Config configures a Fleet.
type Config struct {
	// URL is the store's address: a single server, Sentinel or Cluster
	// (see newClient for the forms).
	URL string
	// Secret signs and checks every entry; required.
	Secret []byte
	// Instance names this instance; required.
	Instance string
	// Prefix starts every key and the channel; default DefaultPrefix.
	Prefix string
	// Resync is how often the whole store is read again (for messages
	// lost while the channel was down); default DefaultResync.
	Resync time.Duration
	// Heartbeat is how often this instance says it is alive; default
	// DefaultHeartbeat.
	Heartbeat time.Duration
	// OutboxSize bounds the entries waiting to be written; default
	// DefaultOutboxSize. When it is full the oldest is dropped (this
	// instance's verdicts are all written again on every reconnect).
	OutboxSize int
	// Logger logs changes of the connection's state, once per change;
	// nil: none.
	Logger *zap.Logger
	// OnConnection is called on the fleet's goroutine when the
	// connection comes up (true) or goes down (false); nil: not called.
	OnConnection func(up bool)
	// OnEntry is called on the fleet's goroutine for each valid entry
	// of another instance that arrives by the channel, with the time it
	// took from its issue; nil: not called.
	OnEntry func(e Entry, delay time.Duration)
	// OnRejected is called for each rejected entry with the reason;
	// nil: not called.
	OnRejected func(reason string)
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

// Fleet shares one instance's verdicts with the other instances through
// a Redis or Valkey store, and gathers theirs. Publishing never blocks:
// entries go to a bounded outbox that one goroutine drains; remote
// entries arrive by pub/sub and by a full read of the store every
// Resync, and are read with Entries. When the store is down the fleet
// reconnects with exponential backoff and then writes this instance's
// verdicts again, so that a store that restarted empty is refilled.
type Fleet struct {
	cfg    Config
	client redis.UniversalClient // a single server, Sentinel or Cluster
	store  string                // the URL without its password
	hash   string                // the verdicts: field pool|upstream|author
	peers  string                // the heartbeats: field instance
	topic  string                // the channel

	kick    chan struct{} // the outbox has entries
	updated chan struct{} // remote entries changed

	mu        sync.Mutex
	outbox    []Entry
	own       map[string]Entry // this instance's current entries, by field
	remote    map[string]Entry // the other instances', by field
	beats     map[string]time.Time
	rejected  map[string]uint64
	dropped   uint64
	connected bool
	synced    bool // a full read of the store succeeded once
	lastErr   string

	started sync.Once
	stop    context.CancelFunc // guarded by mu
	done    chan struct{}      // guarded by mu
}

// New checks cfg and returns a Fleet that connects once started. Its
// errors never hold the URL's password.
func New(cfg Config) (*Fleet, error) {
	if len(cfg.Secret) == 0 {
		return nil, errors.New("a fleet needs a secret: every entry is signed with it, and entries that are not are ignored")
	}
	if cfg.Instance == "" {
		return nil, errors.New("a fleet needs an instance name")
	}
	if len(cfg.Instance) > MaxText {
		return nil, fmt.Errorf("instance name longer than %d bytes", MaxText)
	}
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, errors.New("the store's URL cannot be parsed")
	}
	store := redactURL(u)
	client, err := newClient(cfg.URL, u)
	if err != nil {
		return nil, fmt.Errorf("store %s: %v", store, redactErr(err, u))
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.Resync <= 0 {
		cfg.Resync = DefaultResync
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.OutboxSize <= 0 {
		cfg.OutboxSize = DefaultOutboxSize
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Fleet{
		cfg:      cfg,
		client:   client,
		store:    store,
		hash:     cfg.Prefix + ":verdicts",
		peers:    cfg.Prefix + ":peers",
		topic:    cfg.Prefix + ":events",
		kick:     make(chan struct{}, 1),
		updated:  make(chan struct{}, 1),
		own:      map[string]Entry{},
		remote:   map[string]Entry{},
		beats:    map[string]time.Time{},
		rejected: map[string]uint64{},
	}, nil
}

// The forms of the store's URL: go-redis's own (ParseURL,
// ParseFailoverURL, ParseClusterURL), told apart by their query.
//
//	redis://[user:password@]host:port[/db]          a single server
//	rediss://...                                    the same over TLS
//	redis://[user:password@]sentinel:port[/db]?master_name=NAME[&addr=sentinel2:port...][&username=U&password=P]
//	                                                Sentinel: the URL's host and each addr are
//	                                                sentinels (the URL's user and password are
//	                                                theirs); username and password are the
//	                                                master's
//	redis://[user:password@]node:port?addr=node2:port[&addr=...]
//	                                                Cluster: the seed nodes
//	redis://[user:password@]node:port?cluster=true  Cluster with a single seed node
//
// Whatever the form, the fleet holds a redis.UniversalClient.

// newClient returns the client of the store at raw (u parsed), its
// timeouts bounded by opTimeout and its retries left to the fleet's loop.
func newClient(raw string, u *url.URL) (redis.UniversalClient, error) {
	q := u.Query()
	forceCluster := false
	if q.Has("cluster") {
		switch q.Get("cluster") {
		case "true", "1":
			forceCluster = true
		case "false", "0":
		default:
			return nil, fmt.Errorf("cluster=%q is not true or false", q.Get("cluster"))
		}
		q.Del("cluster")
		v := *u
		v.RawQuery = q.Encode()
		raw = v.String()
	}
	switch {
	case q.Has("master_name"):
		if forceCluster {
			return nil, errors.New("master_name (Sentinel) and cluster=true (Cluster) do not go together")
		}
		opt, err := redis.ParseFailoverURL(raw)
		if err != nil {
			return nil, err
		}
		if opt.MasterName == "" {
			return nil, errors.New("master_name is empty")
		}
		opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout, opt.PoolTimeout = opTimeout, opTimeout, opTimeout, opTimeout
		opt.MaxRetries = -1
		opt.PoolSize = 4
		opt.DisableIdentity = true
		return redis.NewFailoverClient(opt), nil
	case forceCluster || q.Has("addr"):
		if p := strings.Trim(u.Path, "/"); p != "" && p != "0" {
			return nil, fmt.Errorf("a cluster has only database 0, not %q", p)
		}
		opt, err := redis.ParseClusterURL(raw)
		if err != nil {
			return nil, err
		}
		opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout, opt.PoolTimeout = opTimeout, opTimeout, opTimeout, opTimeout
		opt.PoolSize = 4
		opt.DisableIdentity = true
		return redis.NewClusterClient(opt), nil
	}
	opt, err := redis.ParseURL(raw)
	if err != nil {
		return nil, err
	}
	opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout, opt.PoolTimeout = opTimeout, opTimeout, opTimeout, opTimeout
	opt.MaxRetries = -1 // the loop retries, with backoff
	opt.PoolSize = 4
	opt.DisableIdentity = true
	return redis.NewClient(opt), nil
}

// secretParams are the query parameters of the store's URL that hold a
// password (Sentinel's master password).
var secretParams = []string{"password", "sentinel_password"}

// redactURL returns u without its passwords, in the user part or the
// query.
func redactURL(u *url.URL) string {
	v := *u
	q := v.Query()
	hidden := false
	for _, k := range secretParams {
		if q.Has(k) {
			q.Set(k, "xxxxx")
			hidden = true
		}
	}
	if hidden {
		v.RawQuery = q.Encode()
	}
	return v.Redacted()
}

// redactErr removes the URL's passwords from an error's text.
func redactErr(err error, u *url.URL) string {
	msg := err.Error()
	var pws []string
	if u.User != nil {
		if pw, ok := u.User.Password(); ok {
			pws = append(pws, pw)
		}
	}
	q := u.Query()
	for _, k := range secretParams {
		pws = append(pws, q[k]...)
	}
	for _, pw := range pws {
		if pw != "" {
			msg = strings.ReplaceAll(msg, pw, "xxxxx")
			msg = strings.ReplaceAll(msg, url.QueryEscape(pw), "xxxxx")
		}
	}
	return msg
}

// Instance returns this instance's name.
func (f *Fleet) Instance() string { return f.cfg.Instance }

// Store returns the store's address without its password.
func (f *Fleet) Store() string { return f.store }

// Start starts the fleet's goroutine, once however often it is called;
// Close stops it.
func (f *Fleet) Start() {
	f.started.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		f.mu.Lock()
		f.stop, f.done = cancel, make(chan struct{})
		f.mu.Unlock()
		go f.run(ctx)
	})
}

// Close stops the fleet's goroutine and closes the connection. This
// instance's entries stay in the store until they end (a restarted
// instance publishes its own again).
func (f *Fleet) Close() error {
	f.started.Do(func() {}) // never to start after this
	f.mu.Lock()
	stop, done := f.stop, f.done
	f.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
	return f.client.Close()
}

// Updated is signalled when remote entries changed.
func (f *Fleet) Updated() <-chan struct{} { return f.updated }

// Publish signs e as this instance's (issued now unless set) and hands
// it to the outbox. It never blocks on the store.
func (f *Fleet) Publish(e Entry) {
	e.Author = f.cfg.Instance
	if e.Issued.IsZero() {
		e.Issued = f.cfg.Now()
	}
	if (e.Kind == KindRestore || e.Kind == KindReset) && e.Until.IsZero() {
		e.Until = e.Issued.Add(restoreLife)
	}
	e = Sign(e, f.cfg.Secret)
	f.mu.Lock()
	if e.Kind == KindClear {
		delete(f.own, e.field())
	} else {
		f.own[e.field()] = e
	}
	f.queueLocked(e)
	f.mu.Unlock()
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// queueLocked adds e to the outbox, replacing an entry of the same
// worker and dropping the oldest when full. Requires f.mu.
func (f *Fleet) queueLocked(e Entry) {
	for i, o := range f.outbox {
		if o.field() == e.field() {
			f.outbox[i] = e
			return
		}
	}
	if len(f.outbox) >= f.cfg.OutboxSize {
		f.outbox = f.outbox[1:]
		f.dropped++
	}
	f.outbox = append(f.outbox, e)
}

// Entries returns the valid entries known: this instance's and the
// others', one per worker and author.
func (f *Fleet) Entries() []Entry {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Entry, 0, len(f.own)+len(f.remote))
	for _, e := range f.own {
		out = append(out, e)
	}
	for _, e := range f.remote {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].field() < out[j].field() })
	return out
}

// Own returns this instance's current entry on a worker, if any.
func (f *Fleet) Own(poolName, upstream string) (Entry, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.own[Entry{Pool: poolName, Upstream: upstream, Author: f.cfg.Instance}.field()]
	return e, ok
}

// OwnEntries returns this instance's current entries.
func (f *Fleet) OwnEntries() []Entry {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Entry, 0, len(f.own))
	for _, e := range f.own {
		out = append(out, e)
	}
	return out
}

// Synced reports whether the fleet has read the whole store once: from
// then on, Entries holds what the other instances say.
func (f *Fleet) Synced() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.synced
}

// Status is a fleet's state, for the admin API.
type Status struct {
	Instance  string               `json:"instance"`
	Connected bool                 `json:"connected"`
	Store     string               `json:"store"`
	LastError string               `json:"last_error,omitempty"`
	Peers     map[string]time.Time `json:"peers"`
	Rejected  map[string]uint64    `json:"rejected"`
	Dropped   uint64               `json:"dropped"`
}

// Status returns the fleet's state.
func (f *Fleet) Status() Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := Status{
		Instance: f.cfg.Instance, Connected: f.connected, Store: f.store, LastError: f.lastErr,
		Peers: map[string]time.Time{}, Rejected: map[string]uint64{}, Dropped: f.dropped,
	}
	for k, v := range f.beats {
		s.Peers[k] = v
	}
	for k, v := range f.rejected {
		s.Rejected[k] = v
	}
	return s
}

// run is the fleet's goroutine: a session while the store answers, and
// backoff between sessions.
func (f *Fleet) run(ctx context.Context) {
	defer close(f.done)
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 100 * time.Millisecond
	b.MaxInterval = 5 * time.Second
	b.MaxElapsedTime = 0
	for {
		up, err := f.session(ctx)
		if ctx.Err() != nil {
			// closed on purpose: not a disconnection to report
			f.mu.Lock()
			f.connected = false
			f.mu.Unlock()
			return
		}
		f.setConnected(false, err)
		if up {
			b.Reset()
		}
		t := time.NewTimer(b.NextBackOff())
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// setConnected records the connection's state, logging and calling
// OnConnection when it changed.
func (f *Fleet) setConnected(up bool, err error) {
	f.mu.Lock()
	changed := f.connected != up
	f.connected = up
	if err != nil {
		f.lastErr = err.Error()
	}
	f.mu.Unlock()
	if !changed {
		return
	}
	if up {
		f.cfg.Logger.Info("fleet connected", zap.String("store", f.store), zap.String("instance", f.cfg.Instance))
	} else {
		f.cfg.Logger.Warn("fleet disconnected; working alone until the store answers again",
			zap.String("store", f.store), zap.String("instance", f.cfg.Instance), zap.Error(err))
	}
	if f.cfg.OnConnection != nil {
		f.cfg.OnConnection(up)
	}
}

// session connects, subscribes, writes this instance's entries again,
// reads the store, and then exchanges until the store fails or ctx
// ends. up is true when it got connected.
func (f *Fleet) session(ctx context.Context) (up bool, err error) {
	if err := f.op(ctx, func(ctx context.Context) error { return f.client.Ping(ctx).Err() }); err != nil {
		return false, err
	}
	ps := f.client.Subscribe(ctx, f.topic)
	defer ps.Close()
	if err := f.op(ctx, func(ctx context.Context) error { _, err := ps.Receive(ctx); return err }); err != nil {
		return false, err
	}
	f.setConnected(true, nil)
	if err := f.republish(ctx); err != nil {
		return true, err
	}
	if err := f.flush(ctx); err != nil {
		return true, err
	}
	if err := f.beat(ctx); err != nil {
		return true, err
	}
	if err := f.resync(ctx); err != nil {
		return true, err
	}
	msgs := ps.Channel(redis.WithChannelSize(256))
	resync := time.NewTicker(f.cfg.Resync)
	defer resync.Stop()
	beat := time.NewTicker(f.cfg.Heartbeat)
	defer beat.Stop()
	for {
		select {
		case <-ctx.Done():
			return true, nil
		case <-f.kick:
			err = f.flush(ctx)
		case <-resync.C:
			err = f.resync(ctx)
		case <-beat.C:
			err = f.beat(ctx)
		case m, ok := <-msgs:
			if !ok {
				return true, errors.New("the channel closed")
			}
			f.receive([]byte(m.Payload))
		}
		if err != nil {
			return true, err
		}
	}
}

// op runs one exchange with the store, bounded by opTimeout.
func (f *Fleet) op(ctx context.Context, do func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	return do(ctx)
}

// flush writes the outbox: each entry into the store's hash (a clear
// removes its author's field) and to the channel. On failure the entries
// not written go back to the outbox.
func (f *Fleet) flush(ctx context.Context) error {
	f.mu.Lock()
	batch := f.outbox
	f.outbox = nil
	f.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	err := f.op(ctx, func(ctx context.Context) error {
		_, err := f.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, e := range batch {
				data := Encode(e)
				if e.Kind == KindClear {
					p.HDel(ctx, f.hash, e.field())
				} else {
					p.HSet(ctx, f.hash, e.field(), data)
				}
				p.Publish(ctx, f.topic, data)
			}
			return nil
		})
		return err
	})
	if err != nil {
		f.mu.Lock()
		for _, e := range batch {
			if _, newer := f.findLocked(e.field()); !newer {
				f.queueLocked(e)
			}
		}
		f.mu.Unlock()
	}
	return err
}

// republish writes all of this instance's entries again, whatever the
// outbox dropped, so that a store that restarted empty is refilled.
func (f *Fleet) republish(ctx context.Context) error {
	f.mu.Lock()
	own := make([]Entry, 0, len(f.own))
	for _, e := range f.own {
		own = append(own, e)
	}
	f.mu.Unlock()
	for len(own) > 0 {
		n := min(len(own), 256)
		chunk := own[:n]
		own = own[n:]
		err := f.op(ctx, func(ctx context.Context) error {
			_, err := f.client.Pipelined(ctx, func(p redis.Pipeliner) error {
				for _, e := range chunk {
					data := Encode(e)
					p.HSet(ctx, f.hash, e.field(), data)
					p.Publish(ctx, f.topic, data)
				}
				return nil
			})
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// findLocked reports whether the outbox holds an entry for field.
// Requires f.mu.
func (f *Fleet) findLocked(field string) (Entry, bool) {
	for _, o := range f.outbox {
		if o.field() == field {
			return o, true
		}
	}
	return Entry{}, false
}

// beat writes this instance's heartbeat.
func (f *Fleet) beat(ctx context.Context) error {
	e := Sign(Entry{Kind: KindHeartbeat, Author: f.cfg.Instance, Issued: f.cfg.Now()}, f.cfg.Secret)
	return f.op(ctx, func(ctx context.Context) error {
		return f.client.HSet(ctx, f.peers, f.cfg.Instance, Encode(e)).Err()
	})
}

// resync reads the whole store: the entries of the other instances
// replace those known, this instance's fields that it no longer holds
// are removed, and ended ones are removed by whoever sees them.
func (f *Fleet) resync(ctx context.Context) error {
	var all, beats map[string]string
	err := f.op(ctx, func(ctx context.Context) error {
		var err error
		if all, err = f.client.HGetAll(ctx, f.hash).Result(); err != nil {
			return err
		}
		beats, err = f.client.HGetAll(ctx, f.peers).Result()
		return err
	})
	if err != nil {
		return err
	}
	now := f.cfg.Now()
	remote := map[string]Entry{}
	var stale []string
	stored := map[string]string{} // this instance's fields in the store: their signatures
	f.mu.Lock()
	for field, e := range f.own {
		// an operator's restore or reset that ended is no one's verdict:
		// forgotten here, its field is removed below
		if (e.Kind == KindRestore || e.Kind == KindReset) && !active(e, now) {
			delete(f.own, field)
		}
	}
	for field, v := range all {
		e, why := Decode([]byte(v), f.cfg.Secret, now)
		switch {
		case why != "":
			f.rejectLocked(why)
		case e.field() != field:
			f.rejectLocked(RejectOutOfRange)
		case e.Author == f.cfg.Instance:
			if _, ok := f.own[field]; !ok {
				stale = append(stale, field)
			}
			stored[field] = e.Sig
			continue
		case !active(e, now.Add(-restoreLife)):
			stale = append(stale, field)
		default:
			remote[field] = e
		}
	}
	changed := len(remote) != len(f.remote)
	for k, e := range remote {
		if o, ok := f.remote[k]; !ok || o.Sig != e.Sig {
			changed = true
		}
	}
	f.remote = remote
	f.synced = true
	// this instance's entries that the store lost (it restarted empty
	// between two exchanges, without a failed one to say so; it was
	// flushed; a key was evicted) or holds an older version of, and that
	// are not on their way: written again
	lost := 0
	for field, e := range f.own {
		if stored[field] == e.Sig {
			continue
		}
		if _, queued := f.findLocked(field); !queued {
			f.queueLocked(e)
			lost++
		}
	}
	for inst, v := range beats {
		if e, why := Decode([]byte(v), f.cfg.Secret, now); why == "" && e.Kind == KindHeartbeat && e.Author == inst {
			f.beats[inst] = e.Issued
		}
	}
	f.mu.Unlock()
	if changed {
		f.signal()
	}
	if lost > 0 {
		f.cfg.Logger.Info("the store lost entries of this instance; writing them again",
			zap.Int("entries", lost), zap.String("store", f.store), zap.String("instance", f.cfg.Instance))
		select {
		case f.kick <- struct{}{}:
		default:
		}
	}
	if len(stale) > 0 {
		return f.op(ctx, func(ctx context.Context) error { return f.client.HDel(ctx, f.hash, stale...).Err() })
	}
	return nil
}

// receive takes one message from the channel.
func (f *Fleet) receive(data []byte) {
	now := f.cfg.Now()
	e, why := Decode(data, f.cfg.Secret, now)
	f.mu.Lock()
	if why != "" {
		f.rejectLocked(why)
		f.mu.Unlock()
		return
	}
	if e.Author == f.cfg.Instance {
		f.mu.Unlock()
		return
	}
	switch e.Kind {
	case KindHeartbeat:
		f.beats[e.Author] = e.Issued
	case KindClear:
		delete(f.remote, e.field())
	default:
		if o, ok := f.remote[e.field()]; !ok || !o.Issued.After(e.Issued) {
			f.remote[e.field()] = e
		}
	}
	f.mu.Unlock()
	if e.Kind != KindHeartbeat {
		if f.cfg.OnEntry != nil {
			f.cfg.OnEntry(e, now.Sub(e.Issued))
		}
		f.signal()
	}
}

// rejectLocked counts one rejected entry. Requires f.mu.
func (f *Fleet) rejectLocked(why string) {
	f.rejected[why]++
	if f.cfg.OnRejected != nil {
		f.cfg.OnRejected(why)
	}
}

// signal says that remote entries changed.
func (f *Fleet) signal() {
	select {
	case f.updated <- struct{}{}:
	default:
	}
}
