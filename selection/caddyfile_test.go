package selection

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile" // registers the caddyfile adapter
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		want    time.Duration // Decay
		wantErr string
	}{
		{name: "no argument: default at provision", input: `bifrost_p2c`},
		{name: "decay", input: `bifrost_p2c 5s`, want: 5 * time.Second},
		{name: "compound duration", input: `bifrost_p2c 1m30s`, want: 90 * time.Second},
		{name: "not a duration", input: `bifrost_p2c soon`, wantErr: "invalid decay 'soon'"},
		{name: "zero", input: `bifrost_p2c 0s`, wantErr: "must be positive"},
		{name: "negative", input: `bifrost_p2c -1s`, wantErr: "must be positive"},
		{name: "too many arguments", input: `bifrost_p2c 5s 10s`, wantErr: "wrong argument count"},
		{name: "a block", input: "bifrost_p2c {\n\tdecay 5s\n}", wantErr: "takes no block"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var p P2C
			err := p.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := time.Duration(p.Decay); got != tc.want {
				t.Errorf("Decay = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestReverseProxyLBPolicy(t *testing.T) {
	// Caddy's reverse_proxy parser finds the module by its ID and hands it
	// the rest of the lb_policy line.
	tests := []struct {
		name    string
		input   string
		want    string
		wantErr string
	}{
		{
			name:  "with decay",
			input: "reverse_proxy a:80 b:80 {\n\tlb_policy bifrost_p2c 5s\n}",
			want:  `{"decay":5000000000,"policy":"bifrost_p2c"}`,
		},
		{
			name:  "default",
			input: "reverse_proxy a:80 b:80 {\n\tlb_policy bifrost_p2c\n}",
			want:  `{"policy":"bifrost_p2c"}`,
		},
		{
			name:    "bad decay",
			input:   "reverse_proxy a:80 {\n\tlb_policy bifrost_p2c never\n}",
			wantErr: "invalid decay 'never'",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var h reverseproxy.Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := string(h.LoadBalancing.SelectionPolicyRaw); got != tc.want {
				t.Errorf("selection_policy = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestAdaptAndLoad(t *testing.T) {
	// A whole Caddyfile adapts to JSON that loads the provisioned module.
	input := ":8080 {\n\treverse_proxy a:80 b:80 {\n\t\tlb_policy bifrost_p2c 2s\n\t}\n}\n"
	adapter := caddyconfig.GetAdapter("caddyfile")
	out, warnings, err := adapter.Adapt([]byte(input), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) > 0 {
		t.Errorf("warnings: %v", warnings)
	}
	const policy = `"selection_policy":{"decay":2000000000,"policy":"bifrost_p2c"}`
	if !strings.Contains(string(out), policy) {
		t.Fatalf("adapted JSON lacks %s:\n%s", policy, out)
	}

	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	mod, err := ctx.LoadModuleByID("http.reverse_proxy.selection_policies.bifrost_p2c", json.RawMessage(`{"decay":2000000000}`))
	if err != nil {
		t.Fatal(err)
	}
	p, ok := mod.(*P2C)
	if !ok {
		t.Fatalf("module is %T, want *P2C", mod)
	}
	if got := p.Trackers().Settings().Decay; got != 2*time.Second {
		t.Errorf("trackers decay = %v, want 2s", got)
	}
}

func TestProvisionAndValidate(t *testing.T) {
	tests := []struct {
		name    string
		json    string
		want    time.Duration
		wantErr bool
	}{
		{name: "default", json: `{}`, want: DefaultDecay},
		{name: "duration string", json: `{"decay":"500ms"}`, want: 500 * time.Millisecond},
		{name: "negative", json: `{"decay":"-1s"}`, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			t.Cleanup(cancel)
			mod, err := ctx.LoadModuleByID("http.reverse_proxy.selection_policies.bifrost_p2c", json.RawMessage(tc.json))
			if tc.wantErr {
				if err == nil {
					t.Fatal("loaded an invalid config")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := time.Duration(mod.(*P2C).Decay); got != tc.want {
				t.Errorf("Decay = %v, want %v", got, tc.want)
			}
		})
	}
}
