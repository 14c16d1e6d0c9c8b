package pool

import (
	"sync"
	"testing"
)

// A Counter's shards add up to every Add, also made concurrently.
func TestCounterSumsConcurrentAdds(t *testing.T) {
	var c Counter
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				c.Add(1)
			}
		})
	}
	wg.Wait()
	c.Add(5)
	if got := c.Load(); got != 8005 {
		t.Fatalf("Load() = %d, want 8005", got)
	}
}
