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
		wantErr error
	}{
		{outcome: Success, want: "success", wantErr: nil},
		{outcome: Failure, want: "failure", wantErr: errFailure},
		{outcome: Excluded, want: "excluded", wantErr: errExcluded},
		{outcome: Outcome(9), want: "unknown", wantErr: errFailure},
	} {
		t.Run(tc.want, func(t *testing.T) {
			if got := tc.outcome.String(); got != tc.want {
				t.Errorf("String() = %q, want %q", got, tc.want)
			}
			if got := tc.outcome.err(); got != tc.wantErr {
				t.Errorf("err() = %v, want %v", got, tc.wantErr)
			}
		})
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

func TestSettingsWithDefaults(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   Settings
		want Settings
	}{
		{
			name: "zero",
			want: Settings{Failures: 5, MinRequests: 10, Successes: 3, Timeout: 30 * time.Second},
		},
		{
			name: "set fields kept",
			in:   Settings{Failures: 2, FailureRatio: 0.5, MinRequests: 4, Window: time.Minute, Successes: 1, Timeout: time.Second},
			want: Settings{Failures: 2, FailureRatio: 0.5, MinRequests: 4, Window: time.Minute, Successes: 1, Timeout: time.Second},
		},
		{
			name: "ratio and window have no default",
			in:   Settings{Failures: 7},
			want: Settings{Failures: 7, MinRequests: 10, Successes: 3, Timeout: 30 * time.Second},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.in.WithDefaults(); got != tc.want {
				t.Errorf("WithDefaults() = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestSettingsValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   Settings
		want []string // substrings of the error, in order; none means valid
	}{
		{name: "zero is valid"},
		{name: "full is valid", in: Settings{Failures: 1, FailureRatio: 1, MinRequests: 1, Window: time.Second, Successes: 1, Timeout: time.Second}},
		{name: "ratio too high", in: Settings{FailureRatio: 1.5}, want: []string{"failure_ratio must be between 0 and 1, got 1.5"}},
		{name: "ratio negative", in: Settings{FailureRatio: -0.1}, want: []string{"failure_ratio must be between 0 and 1, got -0.1"}},
		{name: "ratio NaN", in: Settings{FailureRatio: math.NaN()}, want: []string{"failure_ratio must be between 0 and 1, got NaN"}},
		{name: "negative window", in: Settings{Window: -time.Second}, want: []string{"window must not be negative, got -1s"}},
		{name: "huge window", in: Settings{Window: math.MaxInt64}, want: []string{"window must be at most"}},
		{name: "negative timeout", in: Settings{Timeout: -time.Millisecond}, want: []string{"timeout must not be negative, got -1ms"}},
		{
			name: "every error reported",
			in:   Settings{FailureRatio: 2, Window: -1, Timeout: -1},
			want: []string{"failure_ratio", "window", "timeout"},
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

func TestSanitize(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   Settings
		want Settings
	}{
		{
			name: "bad ratio turns it off",
			in:   Settings{FailureRatio: 1.5},
			want: Settings{Failures: 5, MinRequests: 10, Successes: 3, Timeout: 30 * time.Second},
		},
		{
			name: "NaN ratio turns it off",
			in:   Settings{FailureRatio: math.NaN()},
			want: Settings{Failures: 5, MinRequests: 10, Successes: 3, Timeout: 30 * time.Second},
		},
		{
			name: "negative durations",
			in:   Settings{Window: -time.Second, Timeout: -time.Second},
			want: Settings{Failures: 5, MinRequests: 10, Successes: 3, Timeout: 30 * time.Second},
		},
		{
			name: "huge window clamped",
			in:   Settings{Window: math.MaxInt64},
			want: Settings{Failures: 5, MinRequests: 10, Window: maxWindow, Successes: 3, Timeout: 30 * time.Second},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := New("w", tc.in, nil).Settings()
			if got != tc.want {
				t.Errorf("Settings() = %+v, want %+v", got, tc.want)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("sanitized settings do not validate: %v", err)
			}
		})
	}
}

func TestWindow(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		in                   time.Duration
		wantInterval, wantBP time.Duration
	}{
		{name: "ten buckets", in: time.Second, wantInterval: time.Second, wantBP: 100 * time.Millisecond},
		{name: "rounded down to buckets", in: 105, wantInterval: 100, wantBP: 10},
		{name: "too short for buckets", in: 9, wantInterval: 9, wantBP: 0},
		{name: "largest", in: maxWindow, wantInterval: maxWindow / 10 * 10, wantBP: maxWindow / 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			interval, bp := window(tc.in)
			if interval != tc.wantInterval || bp != tc.wantBP {
				t.Errorf("window(%v) = %v, %v; want %v, %v", tc.in, interval, bp, tc.wantInterval, tc.wantBP)
			}
			// The library rounds the interval up to a multiple of the
			// bucket period; that must neither overflow nor change it.
			if bp > 0 && (interval+bp-1)/bp*bp != interval {
				t.Errorf("library rounding changes interval %v", interval)
			}
		})
	}
}
