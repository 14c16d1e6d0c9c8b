package breaker

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine behind. The package
// starts none itself; the concurrency tests start many.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
