package recovery

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine behind: the
// Manager's recovery goroutines, or the HTTP servers and transports the
// classification tests start.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
