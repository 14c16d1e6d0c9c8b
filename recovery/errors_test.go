package recovery

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestKindTable(t *testing.T) {
	tests := []struct {
		kind        Kind
		name        string
		severity    Severity
		action      Action
		recoverable bool
		delay       time.Duration
		sentinel    error
	}{
		{KindNone, "none", SeverityNone, ActionNone, false, 0, nil},
		{KindIO, "io", SeverityLow, ActionReconnect, true, 0, ErrIO},
		{KindHTTP, "http", SeverityLow, ActionRetry, true, 0, ErrHTTP},
		{KindConnection, "connection", SeverityLow, ActionRetry, true, 100 * time.Millisecond, ErrConnection},
		{KindTimeout, "timeout", SeverityLow, ActionRetry, true, 100 * time.Millisecond, ErrTimeout},
		{KindThrottled, "throttled", SeverityMedium, ActionThrottle, true, time.Second, ErrThrottled},
		{KindHealthCheckFailed, "health_check_failed", SeverityMedium, ActionIsolateWorker, true, 5 * time.Second, ErrHealthCheckFailed},
		{KindResourceLimit, "resource_limit_exceeded", SeverityHigh, ActionIgnore, false, 0, ErrResourceLimit},
		{KindWorkerCreationFailed, "worker_creation_failed", SeverityCritical, ActionNone, false, 30 * time.Second, ErrWorkerCreationFailed},
		{KindIsolationViolation, "isolation_violation", SeverityCritical, ActionForceShutdown, false, 30 * time.Second, ErrIsolationViolation},
		{KindWorkerRecoveryFailed, "worker_recovery_failed", SeverityCritical, ActionIsolateWorker, false, 30 * time.Second, ErrWorkerRecoveryFailed},
		{KindCanceled, "canceled", SeverityNone, ActionIgnore, false, 0, ErrCanceled},
		{KindConfig, "config", SeverityHigh, ActionIsolateWorker, false, 30 * time.Second, ErrConfig},
		{KindWorker, "worker", SeverityMedium, ActionRestartWorker, true, 100 * time.Millisecond, ErrWorker},
		{KindPoolExhausted, "connection_pool_exhausted", SeverityMedium, ActionSkipWorker, true, 0, ErrPoolExhausted},
	}
	if len(tests) != numKinds {
		t.Fatalf("table has %d kinds, package declares %d", len(tests), numKinds)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := tt.kind
			if got := k.String(); got != tt.name {
				t.Errorf("String() = %q, want %q", got, tt.name)
			}
			if got := k.Severity(); got != tt.severity {
				t.Errorf("Severity() = %v, want %v", got, tt.severity)
			}
			if got := k.SuggestedRecovery(); got != tt.action {
				t.Errorf("SuggestedRecovery() = %v, want %v", got, tt.action)
			}
			if got := k.recoverable(); got != tt.recoverable {
				t.Errorf("recoverable() = %v, want %v", got, tt.recoverable)
			}
			if got := k.RecoveryDelay(); got != tt.delay {
				t.Errorf("RecoveryDelay() = %v, want %v", got, tt.delay)
			}
			if got := k.Err(); got != tt.sentinel {
				t.Errorf("Err() = %v, want %v", got, tt.sentinel)
			}
			parsed, err := ParseKind(strings.ToUpper(tt.name))
			if err != nil || parsed != k {
				t.Errorf("ParseKind(%q) = %v, %v; want %v", tt.name, parsed, err, k)
			}
			text, err := k.MarshalText()
			if err != nil {
				t.Fatalf("MarshalText: %v", err)
			}
			var back = KindHealthCheckFailed
			if k == KindHealthCheckFailed {
				back = KindIO
			}
			if err := back.UnmarshalText(text); err != nil || back != k {
				t.Errorf("UnmarshalText(%q) = %v, %v; want %v", text, back, err, k)
			}
		})
	}
}

// allKinds returns every kind except KindNone, in declaration order.
func allKinds() []Kind {
	out := make([]Kind, 0, numKinds-1)
	for k := KindNone + 1; k < numKinds; k++ {
		out = append(out, k)
	}
	return out
}

func TestSentinelsAreDistinct(t *testing.T) {
	seen := map[error]bool{}
	for _, k := range allKinds() {
		if seen[k.Err()] {
			t.Errorf("sentinel of %v is shared", k)
		}
		seen[k.Err()] = true
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name  string
		parse func() error
		want  []string // substrings of the error
	}{
		{"kind", func() error { _, err := ParseKind("timeoutt"); return err }, []string{`"timeoutt"`, "timeout", "resource_limit_exceeded", "canceled"}},
		{"empty kind", func() error { _, err := ParseKind(""); return err }, []string{`""`, "valid:"}},
		{"severity", func() error { _, err := ParseSeverity("severe"); return err }, []string{`"severe"`, "low", "critical"}},
		{"action", func() error { _, err := ParseAction("reboot"); return err }, []string{`"reboot"`, "restart_worker", "ignore"}},
		{"kind text", func() error { var k Kind; return k.UnmarshalText([]byte("bogus")) }, []string{`"bogus"`}},
		{"severity text", func() error { var s Severity; return s.UnmarshalText([]byte("bogus")) }, []string{`"bogus"`}},
		{"action text", func() error { var a Action; return a.UnmarshalText([]byte("bogus")) }, []string{`"bogus"`}},
		{"marshal bad kind", func() error { _, err := Kind(200).MarshalText(); return err }, []string{"200"}},
		{"marshal bad severity", func() error { _, err := Severity(200).MarshalText(); return err }, []string{"200"}},
		{"marshal bad action", func() error { _, err := Action(200).MarshalText(); return err }, []string{"200"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.parse()
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %s", err, w)
				}
			}
		})
	}
}

func TestSeverityAndActionRoundTrip(t *testing.T) {
	sevs := []string{"none", "low", "medium", "high", "critical"}
	for i, name := range sevs {
		t.Run("severity "+name, func(t *testing.T) {
			s := Severity(i)
			if s.String() != name {
				t.Errorf("String() = %q, want %q", s, name)
			}
			got, err := ParseSeverity(name)
			if err != nil || got != s {
				t.Errorf("ParseSeverity(%q) = %v, %v", name, got, err)
			}
		})
	}
	if !(SeverityLow < SeverityMedium && SeverityMedium < SeverityHigh && SeverityHigh < SeverityCritical) {
		t.Error("severities are not ordered")
	}
	acts := []string{"none", "retry", "reconnect", "restart_worker", "throttle", "isolate_worker", "ignore",
		"skip_worker", "expand_pool", "force_shutdown"}
	if len(acts) != numActions {
		t.Fatalf("test lists %d actions, package declares %d", len(acts), numActions)
	}
	for i, name := range acts {
		t.Run("action "+name, func(t *testing.T) {
			a := Action(i)
			if a.String() != name {
				t.Errorf("String() = %q, want %q", a, name)
			}
			got, err := ParseAction(name)
			if err != nil || got != a {
				t.Errorf("ParseAction(%q) = %v, %v", name, got, err)
			}
		})
	}
}

func TestUndeclaredValues(t *testing.T) {
	k := Kind(99)
	if k.String() != "kind(99)" || k.Severity() != SeverityNone || k.SuggestedRecovery() != ActionNone ||
		k.RecoveryDelay() != 0 || k.Err() != nil || k.recoverable() {
		t.Errorf("undeclared kind is not inert: %v %v %v", k, k.Severity(), k.SuggestedRecovery())
	}
	if s := Severity(9).String(); s != "severity(9)" {
		t.Errorf("Severity(9) = %q", s)
	}
	if s := Action(42).String(); s != "action(42)" {
		t.Errorf("Action(42) = %q", s)
	}
}

func TestTextInJSON(t *testing.T) {
	type doc struct {
		Kind     Kind     `json:"kind"`
		Severity Severity `json:"severity"`
		Action   Action   `json:"action"`
	}
	in := doc{KindThrottled, SeverityMedium, ActionIsolateWorker}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"kind":"throttled","severity":"medium","action":"isolate_worker"}`
	if string(b) != want {
		t.Errorf("json = %s, want %s", b, want)
	}
	var out doc
	if err := json.Unmarshal(b, &out); err != nil || out != in {
		t.Errorf("round trip = %+v, %v", out, err)
	}
	if err := json.Unmarshal([]byte(`{"kind":"nope"}`), &out); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("bad kind in JSON: %v", err)
	}
}
