package fleet

import (
	"fmt"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// newFleet starts a fleet member named instance on the server's URL.
func newFleet(t *testing.T, url, instance string, tweak ...func(*Config)) *Fleet {
	t.Helper()
	cfg := Config{URL: url, Secret: secret, Instance: instance, Resync: 200 * time.Millisecond, Heartbeat: 200 * time.Millisecond}
	for _, f := range tweak {
		f(&cfg)
	}
	f, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.Start()
	t.Cleanup(func() { _ = f.Close() })
	return f
}

// has reports whether f knows an entry of author on the worker.
func has(f *Fleet, author, upstream, kind string) bool {
	for _, e := range f.Entries() {
		if e.Author == author && e.Upstream == upstream && e.Kind == kind {
			return true
		}
	}
	return false
}

func connected(f *Fleet) func() bool { return func() bool { return f.Status().Connected } }

// An entry published by one instance reaches another; a clear withdraws
// it; heartbeats make peers.
func TestFleetExchange(t *testing.T) {
	srv := startRedis(t)
	var delays atomic.Int64
	a := newFleet(t, srv.URL(""), "a")
	b := newFleet(t, srv.URL(""), "b", func(c *Config) {
		c.Resync = time.Hour // by the channel alone
		c.OnEntry = func(Entry, time.Duration) { delays.Add(1) }
	})
	eventually(t, 5*time.Second, "both connected", func() bool { return connected(a)() && connected(b)() })
	now := time.Now()
	a.Publish(Entry{Pool: "api", Upstream: "10.0.0.1:80", Kind: KindIsolated, Reason: "probe_failed", Until: now.Add(time.Minute)})
	eventually(t, 2*time.Second, "b sees a's isolation", func() bool { return has(b, "a", "10.0.0.1:80", KindIsolated) })
	if delays.Load() == 0 {
		t.Error("OnEntry not called")
	}
	a.Publish(Entry{Pool: "api", Upstream: "10.0.0.1:80", Kind: KindClear})
	eventually(t, 2*time.Second, "b sees it withdrawn", func() bool { return !has(b, "a", "10.0.0.1:80", KindIsolated) })
	// heartbeats are read by the full read, which b (by the channel
	// alone) does only when it connects, maybe before a's first one
	eventually(t, 2*time.Second, "a knows b as a peer", func() bool { _, ok := a.Status().Peers["b"]; return ok })
	if n := srv.Client("").HLen(ctx(t), DefaultPrefix+":verdicts").Val(); n != 0 {
		t.Errorf("%d fields left in the store after the clear", n)
	}
}

// Forged and garbage entries, in the store or on the channel, change
// nothing and are counted by reason.
func TestFleetRejectsForgeries(t *testing.T) {
	srv := startRedis(t)
	b := newFleet(t, srv.URL(""), "b")
	eventually(t, 5*time.Second, "connected", connected(b))
	c := srv.Client("")
	now := time.Now()
	forged := Sign(isolation("x", now, now.Add(time.Minute)), []byte("not the secret"))
	future := Sign(isolation("y", now.Add(time.Hour), now.Add(2*time.Hour)), secret)
	c.HSet(ctx(t), DefaultPrefix+":verdicts", forged.field(), Encode(forged))
	c.HSet(ctx(t), DefaultPrefix+":verdicts", "garbage|field|z", "{{{")
	c.HSet(ctx(t), DefaultPrefix+":verdicts", future.field(), Encode(future))
	unsigned := isolation("w", now, now.Add(time.Minute))
	c.Publish(ctx(t), DefaultPrefix+":events", Encode(unsigned))
	eventually(t, 3*time.Second, "rejections counted", func() bool {
		r := b.Status().Rejected
		return r[RejectBadSignature] > 0 && r[RejectMalformed] > 0 && r[RejectFuture] > 0 && r[RejectUnsigned] > 0
	})
	for _, e := range b.Entries() {
		t.Errorf("entry accepted: %+v", e)
	}
}

// A store that restarts empty is refilled with this instance's entries
// once it answers again, and the other instance sees them again.
func TestFleetRefillsEmptyStore(t *testing.T) {
	srv := startRedis(t)
	a := newFleet(t, srv.URL(""), "a")
	b := newFleet(t, srv.URL(""), "b")
	eventually(t, 5*time.Second, "both connected", func() bool { return connected(a)() && connected(b)() })
	a.Publish(Entry{Pool: "api", Upstream: "u1", Kind: KindThrottled, Until: time.Now().Add(time.Minute)})
	eventually(t, 2*time.Second, "b sees it", func() bool { return has(b, "a", "u1", KindThrottled) })
	srv.Stop()
	eventually(t, 5*time.Second, "a disconnected", func() bool { return !connected(a)() })
	srv.Start()
	eventually(t, 10*time.Second, "the store refilled", func() bool {
		return srv.Client("").HLen(ctx(t), DefaultPrefix+":verdicts").Val() == 1
	})
	eventually(t, 5*time.Second, "b still sees it", func() bool { return has(b, "a", "u1", KindThrottled) })
}

// With the pub/sub connection killed, the periodic full read still
// brings entries that were published meanwhile.
func TestFleetResyncAfterPubSubKilled(t *testing.T) {
	srv := startRedis(t)
	a := newFleet(t, srv.URL(""), "a")
	b := newFleet(t, srv.URL(""), "b")
	eventually(t, 5*time.Second, "both connected", func() bool { return connected(a)() && connected(b)() })
	c := srv.Client("")
	for i := range 20 {
		if err := c.Do(ctx(t), "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
			t.Fatal(err)
		}
		a.Publish(Entry{Pool: "api", Upstream: "u" + string(rune('a'+i)), Kind: KindIsolated, Until: time.Now().Add(time.Minute)})
	}
	eventually(t, 5*time.Second, "b has all 20", func() bool {
		n := 0
		for _, e := range b.Entries() {
			if e.Author == "a" {
				n++
			}
		}
		return n == 20
	})
}

// While the store hangs (SIGSTOP), Publish does not wait for it and the
// outbox stays bounded; once it answers again the latest entries are
// written.
func TestFleetPublishDoesNotWaitForHungStore(t *testing.T) {
	srv := startRedis(t)
	a := newFleet(t, srv.URL(""), "a", func(c *Config) { c.OutboxSize = 8 })
	eventually(t, 5*time.Second, "connected", connected(a))
	srv.Signal(syscall.SIGSTOP)
	resumed := false
	defer func() {
		if !resumed {
			srv.Signal(syscall.SIGCONT)
		}
	}()
	start := time.Now()
	for i := range 1000 {
		a.Publish(Entry{Pool: "api", Upstream: "u" + string(rune(i)), Kind: KindIsolated, Until: time.Now().Add(time.Minute)})
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("1000 publishes took %v with the store hung", d)
	}
	eventually(t, 5*time.Second, "disconnected", func() bool { return !connected(a)() })
	srv.Signal(syscall.SIGCONT)
	resumed = true
	eventually(t, 10*time.Second, "reconnected", connected(a))
	// every own entry is written again on reconnect
	eventually(t, 5*time.Second, "all own entries in the store", func() bool {
		return srv.Client("").HLen(ctx(t), DefaultPrefix+":verdicts").Val() == 1000
	})
	if d := a.Status().Dropped; d == 0 {
		t.Error("nothing dropped from an outbox of 8")
	}
}

// The URL's password is never logged nor shown; a wrong password is a
// disconnected fleet, logged once.
func TestFleetNeverShowsPassword(t *testing.T) {
	srv := startRedis(t, "--requirepass", "hunter2-pw")
	core, logs := observer.New(zapcore.DebugLevel)
	wrong := newFleet(t, strings.Replace(srv.URL("hunter2-pw"), "hunter2-pw", "wrong-pw-42", 1), "w", func(c *Config) { c.Logger = zap.New(core) })
	right := newFleet(t, srv.URL("hunter2-pw"), "r", func(c *Config) { c.Logger = zap.New(core) })
	eventually(t, 5*time.Second, "right one connected", connected(right))
	time.Sleep(300 * time.Millisecond) // a few failed attempts of the wrong one
	if connected(wrong)() {
		t.Error("connected with a wrong password")
	}
	for _, st := range []Status{wrong.Status(), right.Status()} {
		if strings.Contains(st.Store, "pw") || strings.Contains(st.LastError, "pw") {
			t.Errorf("status shows the password: %+v", st)
		}
	}
	n := 0
	for _, e := range logs.All() {
		line := e.Message
		for k, v := range e.ContextMap() {
			line += " " + k + "=" + strings.TrimSpace(strings.ReplaceAll(toString(v), "\n", " "))
		}
		if strings.Contains(line, "hunter2") || strings.Contains(line, "wrong-pw") {
			t.Errorf("log shows the password: %s", line)
		}
		if strings.Contains(line, "disconnected") && strings.Contains(line, "instance=w") {
			n++
		}
	}
	if n > 1 {
		t.Errorf("%d disconnection logs of the wrong instance, want at most one (once per change)", n)
	}
	if _, err := New(Config{URL: "redis://:pw-in-url@[::1", Secret: secret, Instance: "x"}); err == nil || strings.Contains(err.Error(), "pw-in-url") {
		t.Errorf("bad URL: %v", err)
	}
	if _, err := New(Config{URL: srv.URL(""), Instance: "x"}); err == nil || !strings.Contains(err.Error(), "secret") {
		t.Errorf("no secret: %v, want an error naming the secret", err)
	}
}

func toString(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	if e, ok := v.(error); ok {
		return e.Error()
	}
	return ""
}

// A store that loses this instance's entries without a failed exchange
// to say so (restarted between two of them, flushed) is refilled by the
// next full read.
func TestFleetRefillsFlushedStore(t *testing.T) {
	srv := startRedis(t)
	a := newFleet(t, srv.URL(""), "a")
	eventually(t, 5*time.Second, "connected", connected(a))
	a.Publish(Entry{Pool: "api", Upstream: "u1", Kind: KindIsolated, Until: time.Now().Add(time.Minute)})
	a.Publish(Entry{Pool: "api", Upstream: "u2", Kind: KindReset})
	c := srv.Client("")
	eventually(t, 2*time.Second, "written", func() bool { return c.HLen(ctx(t), DefaultPrefix+":verdicts").Val() == 2 })
	if err := c.FlushAll(ctx(t)).Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*time.Second, "the store refilled", func() bool { return c.HLen(ctx(t), DefaultPrefix+":verdicts").Val() == 2 })
	if !connected(a)() {
		t.Error("a disconnected by a flush")
	}
}

// With its pub/sub connection killed (CLIENT KILL TYPE pubsub) and no
// way back onto the channel (its ACL user lost the channel), an instance
// still gets the others' entries, by the full read alone: none arrives
// by the channel.
func TestFleetResyncWithoutChannel(t *testing.T) {
	srv := startRedis(t, "--user", "b", "on", ">b-pw", "~*", "&*", "+@all")
	var byChannel atomic.Int64
	a := newFleet(t, srv.URL(""), "a")
	b := newFleet(t, fmt.Sprintf("redis://b:b-pw@127.0.0.1:%d/0", srv.Port()), "b", func(c *Config) {
		c.OnEntry = func(Entry, time.Duration) { byChannel.Add(1) }
	})
	eventually(t, 5*time.Second, "both connected", func() bool { return connected(a)() && connected(b)() })
	c := srv.Client("")
	if err := c.Do(ctx(t), "ACL", "SETUSER", "b", "resetchannels").Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.Do(ctx(t), "CLIENT", "KILL", "TYPE", "pubsub", "USER", "b").Err(); err != nil && !strings.Contains(err.Error(), "No such client") {
		t.Fatal(err)
	}
	a.Publish(Entry{Pool: "api", Upstream: "u1", Kind: KindIsolated, Until: time.Now().Add(time.Minute)})
	eventually(t, 3*time.Second, "b has a's entry", func() bool { return has(b, "a", "u1", KindIsolated) })
	if n := byChannel.Load(); n != 0 {
		t.Errorf("%d entries arrived by the channel, want none (b cannot subscribe)", n)
	}
	if !connected(b)() {
		t.Error("b disconnected")
	}
}
