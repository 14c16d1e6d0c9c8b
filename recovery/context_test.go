package recovery

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestContextualErrorError(t *testing.T) {
	tests := []struct {
		name string
		e    ContextualError
		want string
	}{
		{"message and worker", ContextualError{Kind: KindTimeout, Message: "no headers after 5s", Context: ErrorContext{WorkerID: "10.0.0.1:80"}},
			"timeout error on worker 10.0.0.1:80: no headers after 5s"},
		{"no worker", ContextualError{Kind: KindWorkerCreationFailed, Message: "bad address"}, "worker_creation_failed error: bad address"},
		{"falls back to the error", ContextualError{Kind: KindIO, Err: io.ErrUnexpectedEOF, Context: ErrorContext{WorkerID: "w"}},
			"io error on worker w: unexpected EOF"},
		{"falls back to the status", ContextualError{Kind: KindHTTP, Status: 502, Context: ErrorContext{WorkerID: "w"}},
			"http error on worker w: upstream status 502"},
		{"falls back to the kind", ContextualError{Kind: KindHealthCheckFailed}, "health_check_failed error: health check failed"},
		{"nothing at all", ContextualError{}, "none error: unknown error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.e.Error(); got != tt.want {
				t.Errorf("Error() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestContextualErrorIsAs(t *testing.T) {
	cause := &net.OpError{Op: "dial", Err: errors.New("refused")}
	var err error = fmt.Errorf("attempt 2: %w", &ContextualError{Err: cause, Kind: KindConnection})
	for _, k := range allKinds() {
		t.Run(k.String(), func(t *testing.T) {
			if got, want := errors.Is(err, k.Err()), k == KindConnection; got != want {
				t.Errorf("errors.Is(err, %v sentinel) = %v, want %v", k, got, want)
			}
		})
	}
	var op *net.OpError
	if !errors.As(err, &op) || op != cause {
		t.Error("errors.As does not reach the underlying error")
	}
	var ce *ContextualError
	if !errors.As(err, &ce) || ce.Kind != KindConnection {
		t.Error("errors.As does not find the contextual error")
	}
	none := &ContextualError{Kind: KindNone}
	if errors.Is(none, nil) || none.Is(nil) {
		t.Error("a KindNone error matches nil")
	}
	if (&ContextualError{Err: io.EOF, Kind: KindIO}).Unwrap() != io.EOF {
		t.Error("Unwrap does not return Err")
	}
}

func TestContextualErrorJSON(t *testing.T) {
	ts := time.Date(2026, 3, 4, 5, 6, 7, 8, time.UTC)
	e := ContextualError{
		Err:      errors.New("read: connection reset by peer"),
		Kind:     KindIO,
		Severity: SeverityLow,
		Action:   ActionRetry,
		Context: ErrorContext{
			Component: "proxy", Operation: "attempt", Pool: "api", WorkerID: "10.0.0.1:80",
			Metadata: map[string]string{"method": "GET"},
		},
		Timestamp:        ts,
		RecoveryAttempts: 1,
		Attempt:          2,
		Status:           0,
	}
	want := map[string]any{
		"time": "2026-03-04T05:06:07.000000008Z", "kind": "io", "severity": "low", "action": "retry",
		"message": "read: connection reset by peer", "pool": "api", "worker": "10.0.0.1:80",
		"component": "proxy", "operation": "attempt", "attempt": 2.0, "status": 0.0,
		"recovery_attempts": 1.0, "metadata": map[string]any{"method": "GET"},
	}
	encode := map[string]func() ([]byte, error){
		"pointer":         func() ([]byte, error) { return json.Marshal(&e) },
		"value":           func() ([]byte, error) { return json.Marshal(e) },
		"in a slice":      func() ([]byte, error) { b, err := json.Marshal([]ContextualError{e}); return trimArray(b), err },
		"in a map of any": func() ([]byte, error) { b, err := json.Marshal(map[string]any{"e": e}); return trimKey(b), err },
		"method directly": e.MarshalJSON,
	}
	for name, enc := range encode {
		t.Run(name, func(t *testing.T) {
			b, err := enc()
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]any
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatalf("%s: %v", b, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("json = %s\nwant %v", b, want)
			}
		})
	}
	t.Run("no metadata", func(t *testing.T) {
		b, err := json.Marshal(ContextualError{Kind: KindHTTP, Status: 502})
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "metadata") || !strings.Contains(string(b), `"message":"upstream status 502"`) {
			t.Errorf("json = %s", b)
		}
	})
}

func trimArray(b []byte) []byte { return b[1 : len(b)-1] }

func trimKey(b []byte) []byte { return b[len(`{"e":`) : len(b)-1] }

func TestContextualErrorJSONRoundTrip(t *testing.T) {
	in := ContextualError{
		Kind: KindThrottled, Severity: SeverityMedium, Action: ActionThrottle,
		Message:   "GET request answered with status 429",
		Context:   ErrorContext{Component: "proxy", Operation: "attempt", Pool: "p", WorkerID: "p_w", Metadata: map[string]string{"k": "v"}},
		Timestamp: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC),
		Attempt:   2, Status: 429, RecoveryAttempts: 1,
	}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out ContextualError
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip:\nin  %+v\nout %+v", in, out)
	}
	if err := json.Unmarshal([]byte(`{"kind":"bogus"}`), &out); err == nil {
		t.Fatal("accepted an unknown kind")
	}
}
