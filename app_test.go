package bifrost

import (
	"strings"
	"testing"
)

// The bifrost global option: mistakes are refused with the file and line,
// and a good one adapts to apps.bifrost.
func TestGlobalOptionErrors(t *testing.T) {
	cases := []struct{ opt, want, where string }{
		{"bifrost {\n\t\tstate maybe\n\t}", `state: "maybe" is not on or off`, "at Caddyfile:3"},
		{"bifrost {\n\t\tcolour blue\n\t}", `unknown bifrost option "colour"`, "at Caddyfile:3"},
		{"bifrost {\n\t\tfleet\n\t}", "fleet: missing the store's URL", "at Caddyfile:3"},
		{"bifrost {\n\t\tfleet redis://x {\n\t\t\tquorum 0\n\t\t}\n\t}", `fleet: quorum: "0" is not a whole number`, "at Caddyfile:4"},
		{"bifrost {\n\t\tfleet redis://x {\n\t\t\tsecrets x\n\t\t}\n\t}", `fleet: unknown option "secrets"`, "at Caddyfile:4"},
		{"bifrost {\n\t\tfleet redis://x\n\t\tfleet redis://y\n\t}", "fleet: given twice", "at Caddyfile:4"},
	}
	for _, c := range cases {
		_, err := adapt("{\n\t" + c.opt + "\n}\n:9080 {\n\trespond ok\n}\n")
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.where) {
			t.Errorf("%q: got %v, want %q %s", c.opt, err, c.want, c.where)
		}
	}
	js, err := adapt("{\n\tbifrost {\n\t\tstate off\n\t\tfleet rediss://u:p@h:6380/2 {\n\t\t\tsecret {env.S}\n\t\t\tinstance e1\n\t\t\tquorum 2\n\t\t}\n\t}\n}\n:9080 {\n\trespond ok\n}\n")
	if err != nil {
		t.Fatal(err)
	}
	want := `"bifrost":{"state":"off","fleet":{"url":"rediss://u:p@h:6380/2","secret":"{env.S}","instance":"e1","quorum":2}}`
	if !strings.Contains(string(js), want) {
		t.Errorf("adapted to %s, want it to hold %s", js, want)
	}
}

// A JSON state that is neither on nor off is refused, naming the field.
func TestAppStateJSON(t *testing.T) {
	err := caddyLoad([]byte(`{"admin":{"listen":"` + testAdmin + `"},"apps":{"bifrost":{"state":"maybe"}}}`))
	if err == nil || !strings.Contains(err.Error(), `state: "maybe" is not on or off`) {
		t.Errorf("load: %v, want the state refused", err)
	}
}
