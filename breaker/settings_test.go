package breaker

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"
)

func TestStateText(t *testing.T) {
	for _, tc := range []struct {
		name    string
		state   State
		want    string
		wantErr bool
	}{
		{name: "closed", state: StateClosed, want: "closed"},
		{name: "half open", state: StateHalfOpen, want: "half_open"},
		{name: "open", state: StateOpen, want: "open"},
		{name: "not a state", state: State(3), want: "unknown", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.state.String(); got != tc.want {
				t.Errorf("String() = %q, want %q", got, tc.want)
			}
			text, err := tc.state.MarshalText()
			if tc.wantErr {
				if err == nil {
					t.Fatalf("MarshalText() = %q, want an error", text)
				}
				return
			}
			if err != nil || string(text) != tc.want {
				t.Fatalf("MarshalText() = %q, %v; want %q", text, err, tc.want)
			}
			var back State
			if err := back.UnmarshalText(text); err != nil || back != tc.state {
				t.Errorf("UnmarshalText(%q) = %v, %v; want %v", text, back, err, tc.state)
			}
		})
	}

	t.Run("unknown name", func(t *testing.T) {
		var s State
		if err := s.UnmarshalText([]byte("half-open")); err == nil {
			t.Error("UnmarshalText(half-open) succeeded, want an error")
		}
	})
}

func TestOutcomeString(t *testing.T) {
	for _, tc := range []struct {
		outcome Outcome
		want    string
	}{
		{outcome: Success, want: "success"},
		{outcome: Failure, want: "failure"},
		{outcome: Excluded, want: "excluded"},
		{outcome: Outcome(9), want: "unknown"},
	} {
		if got := tc.outcome.String(); got != tc.want {
			t.Errorf("%d.String() = %q, want %q", uint8(tc.outcome), got, tc.want)
		}
	}
}

func TestCountsJSON(t *testing.T) {
	got, err := json.Marshal(Counts{Requests: 1, TotalSuccesses: 2, TotalFailures: 3, TotalExclusions: 4, ConsecutiveSuccesses: 5, ConsecutiveFailures: 6})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"requests":1,"total_successes":2,"total_failures":3,"total_exclusions":4,"consecutive_successes":5,"consecutive_failures":6}`
	if string(got) != want {
		t.Errorf("json = %s, want %s", got, want)
	}
}

func TestSettingsValidate(t *testing.T) {
	valid := Settings{Failures: 1, Successes: 1, Timeout: 1}
	with := func(change func(*Settings)) Settings {
		s := valid
		change(&s)
		return s
	}
	for _, tc := range []struct {
		name string
		in   Settings
		want []string // substrings of the error, in order; none means valid
	}{
		{name: "least is valid", in: valid},
		{name: "full is valid", in: Settings{Failures: 1, FailureRatio: 1, MinRequests: 1, Window: time.Second, Successes: 1, Timeout: time.Second}},
		{name: "huge window and timeout are valid", in: with(func(s *Settings) { s.Window, s.Timeout = math.MaxInt64, math.MaxInt64 })},
		{name: "no failures", in: with(func(s *Settings) { s.Failures = 0 }), want: []string{"failures must be at least 1"}},
		{name: "no successes", in: with(func(s *Settings) { s.Successes = 0 }), want: []string{"successes must be at least 1"}},
		{name: "no timeout", in: with(func(s *Settings) { s.Timeout = 0 }), want: []string{"timeout must be greater than 0, got 0s"}},
		{name: "negative timeout", in: with(func(s *Settings) { s.Timeout = -time.Millisecond }), want: []string{"timeout must be greater than 0, got -1ms"}},
		{name: "ratio too high", in: with(func(s *Settings) { s.FailureRatio = 1.5 }), want: []string{"failure_ratio must be between 0 and 1, got 1.5"}},
		{name: "ratio negative", in: with(func(s *Settings) { s.FailureRatio = -0.1 }), want: []string{"failure_ratio must be between 0 and 1, got -0.1"}},
		{name: "ratio NaN", in: with(func(s *Settings) { s.FailureRatio = math.NaN() }), want: []string{"failure_ratio must be between 0 and 1, got NaN"}},
		{name: "negative window", in: with(func(s *Settings) { s.Window = -time.Second }), want: []string{"window must not be negative, got -1s"}},
		{
			name: "every error reported, in field order",
			in:   Settings{FailureRatio: 2, Window: -1, Timeout: -1},
			want: []string{"failures", "failure_ratio", "window", "successes", "timeout"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.in.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate() = nil, want an error")
			}
			msg := err.Error()
			for _, w := range tc.want {
				i := strings.Index(msg, w)
				if i < 0 {
					t.Fatalf("Validate() = %q, want it to contain %q (in order)", err, w)
				}
				msg = msg[i+len(w):]
			}
		})
	}
}
