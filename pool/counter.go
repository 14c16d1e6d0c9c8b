package pool

import (
	"math/rand/v2"
	"sync/atomic"
)

// counterShards is how many cache lines a Counter spreads its adds over.
const counterShards = 8

// Counter is a count that every request of a pool adds to. It is split
// into shards on cache lines of their own, so that requests on different
// CPUs do not take one line from each other on every add; reading it
// sums the shards, which suits reports (the status page), not hot paths.
// The zero Counter is ready for use; it must not be copied.
type Counter struct {
	shards [counterShards]counterShard
}

// counterShard is one shard of a Counter, alone on its cache line.
type counterShard struct {
	n atomic.Uint64
	_ [56]byte
}

// Add adds n to the count.
func (c *Counter) Add(n uint64) {
	// rand.Uint32 reads the current thread's generator: no shared state
	c.shards[rand.Uint32()%counterShards].n.Add(n)
}

// Load returns the count. Adds made while it runs may or may not be in it.
func (c *Counter) Load() uint64 {
	var n uint64
	for i := range c.shards {
		n += c.shards[i].n.Load()
	}
	return n
}
