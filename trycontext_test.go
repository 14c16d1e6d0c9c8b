package bifrost

import (
	"context"
	"errors"
	"testing"
	"time"
)

type tryCtxKey struct{}

// waitDone fails t unless ctx is done within a second.
func waitDone(t *testing.T, ctx context.Context, what string) {
	t.Helper()
	select {
	case <-ctx.Done():
	case <-time.After(time.Second):
		t.Fatalf("%s: not done", what)
	}
}

func TestTryContextCancelEndsWhatDerivesFromIt(t *testing.T) {
	parent := context.WithValue(context.Background(), tryCtxKey{}, "v")
	parent, stopParent := context.WithCancel(parent)
	defer stopParent()
	tc := newTryContext(parent)
	defer tc.release()
	if got := tc.Value(tryCtxKey{}); got != "v" {
		t.Fatalf("value: got %v, want the parent's", got)
	}
	started := goroutinesCreated()
	child, cancelChild := context.WithCancel(tc) // as Go's transport does
	defer cancelChild()
	if n := goroutinesCreated() - started; n != 0 {
		t.Errorf("deriving a cancelable context started %d goroutines, want 0", n)
	}
	if tc.Err() != nil || child.Err() != nil {
		t.Fatal("canceled before Cancel")
	}
	tc.Cancel()
	waitDone(t, child, "the derived context")
	if !errors.Is(tc.Err(), context.Canceled) {
		t.Errorf("Err: %v, want context.Canceled", tc.Err())
	}
	if parent.Err() != nil {
		t.Error("the try's cancellation reached the request's context")
	}
}

func TestTryContextFollowsItsRequest(t *testing.T) {
	deadline := time.Now().Add(time.Hour)
	parent, cancel := context.WithDeadline(context.Background(), deadline)
	tc := newTryContext(parent)
	defer tc.release()
	if d, ok := tc.Deadline(); !ok || !d.Equal(deadline) {
		t.Errorf("deadline: %v %v, want the request's", d, ok)
	}
	child, cancelChild := context.WithCancel(tc)
	defer cancelChild()
	cancel()
	waitDone(t, tc, "the try's context")
	waitDone(t, child, "the derived context")
	if !errors.Is(context.Cause(child), context.Canceled) {
		t.Errorf("cause: %v", context.Cause(child))
	}
}

func TestTryContextCauseIsTheRequests(t *testing.T) {
	parent, cancel := context.WithCancelCause(context.Background())
	tc := newTryContext(parent)
	defer tc.release()
	child, cancelChild := context.WithCancel(tc)
	defer cancelChild()
	cause := errors.New("client gone")
	cancel(cause)
	waitDone(t, child, "the derived context")
	if got := context.Cause(child); !errors.Is(got, cause) {
		t.Errorf("cause: %v, want the request's", got)
	}
}

func TestCanceledTryContextIsNotReused(t *testing.T) {
	if raceDetector {
		t.Skip("sync.Pool drops items at random under the race detector, so reuse cannot be observed")
	}
	for _, how := range []string{"cancel", "late timer"} {
		t.Run(how, func(t *testing.T) {
			tc := newTryContext(context.Background())
			switch how {
			case "cancel":
				tc.Cancel()
			case "late timer":
				timer := time.AfterFunc(0, func() {})
				time.Sleep(10 * time.Millisecond)
				tc.stopTimer(timer)
			}
			tc.release()
			next := newTryContext(context.Background())
			defer next.release()
			if next.tryCancel == tc.tryCancel {
				t.Fatal("a tryContext whose cancellation happened, or may still come, was reused")
			}
			if next.Err() != nil {
				t.Fatal("a new try starts canceled")
			}
		})
	}
}
