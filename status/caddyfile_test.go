package status

import (
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Page
		wantErr string
	}{
		{in: `bifrost_status`, want: Page{}},
		{in: "bifrost_status {\n\tactions\n\tprefix /status\n}", want: Page{Actions: true, Prefix: "/status"}},
		{in: `bifrost_status /x`, wantErr: "wrong argument count"},
		{in: "bifrost_status {\n\tactions yes\n}", wantErr: "wrong argument count"},
		{in: "bifrost_status {\n\tprefix\n}", wantErr: "wrong argument count"},
		{in: "bifrost_status {\n\tprefix /a /b\n}", wantErr: "wrong argument count"},
		{in: "bifrost_status {\n\tprefix status\n}", wantErr: "prefix must be a path"},
		{in: "bifrost_status {\n\tprefix /s*\n}", wantErr: "prefix must be a path"},
		{in: "bifrost_status {\n\tactions\n\tactions\n}", wantErr: "actions already specified"},
		{in: "bifrost_status {\n\tread_only\n}", wantErr: "unrecognized bifrost_status subdirective read_only"},
		{in: "bifrost_status {\n\tpools api web\n}", want: Page{Pools: []string{"api", "web"}}},
		{in: "bifrost_status {\n\tpools *\n}", want: Page{Pools: []string{"*"}}},
		{in: "bifrost_status {\n\tpools\n}", wantErr: "wrong argument count"},
		{in: "bifrost_status {\n\tpools * api\n}", wantErr: "cannot be combined"},
		{in: "bifrost_status {\n\tpools a\n\tpools b\n}", wantErr: "pools already specified"},
	} {
		var s Page
		err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in))
		switch {
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%q: error %v, want one containing %q", tc.in, err, tc.wantErr)
		case tc.wantErr != "" && !strings.Contains(err.Error(), "Testfile:"):
			t.Errorf("%q: error %v does not name the file and line", tc.in, err)
		case tc.wantErr == "" && err != nil:
			t.Errorf("%q: %v", tc.in, err)
		case tc.wantErr == "" && (s.Actions != tc.want.Actions || s.Prefix != tc.want.Prefix || !slices.Equal(s.Pools, tc.want.Pools)):
			t.Errorf("%q: got %+v, want %+v", tc.in, s, tc.want)
		}
	}
	if err := (&Page{Pools: []string{"api", ""}}).Validate(); err == nil || !strings.Contains(err.Error(), "pools[1] is empty") {
		t.Errorf("an empty pool name in JSON: %v", err)
	}
}
