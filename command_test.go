package bifrost

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/bifrost-proxy/bifrost/pool"
)

// `caddy bifrost status` reaches an admin API on a unix socket, the form
// the README recommends, and prints what upstreams and operators wrote
// without letting a terminal act on it.
func TestStatusCommandUnixSocket(t *testing.T) {
	a := newBackend(t)
	sock := filepath.Join(t.TempDir(), "admin.sock")
	admin := "unix/" + sock
	loadJSON(t, []byte(fmt.Sprintf(`{
	"admin": {"listen": %q},
	"apps": {"http": {"servers": {"s": {
		"listen": [":9080"],
		"routes": [{"handle": [{"handler": "bifrost", "name": "unixcli", "upstreams": [{"dial": %q}]}]}]
	}}}}
}`, admin, a.addr)))
	id := pool.WorkerID("unixcli", a.addr)

	// an isolation reason with a screen clear, a window title, a carriage
	// return, a right-to-left override and a line break
	reason := "\x1b[2J\x1b]0;pwned\x07\rspoof\u202eevil\nnext"
	body, _ := json.Marshal(map[string]string{"duration": "1h", "reason": reason})
	resp, err := caddycmd.AdminAPIRequest(admin, http.MethodPost, "/bifrost/workers/"+id+"/isolate", nil, bytes.NewReader(body))
	if err != nil {
		t.Fatalf("isolating over the unix socket: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	text, err := bifrostStatus(t, "--address", admin)
	if err != nil {
		t.Fatalf("caddy bifrost status --address %s: %v", admin, err)
	}
	if !strings.Contains(text, id) || !strings.Contains(text, "isolated") {
		t.Fatalf("output lacks the isolated worker:\n%s", text)
	}
	if strings.ContainsAny(text, "\x1b\x07\r\u202e") {
		t.Errorf("output carries terminal control characters: %q", text)
	}
	if lines := strings.Count(text, "\n"); lines != 2 {
		t.Errorf("output has %d lines, want a header and one worker: %q", lines, text)
	}
	if !strings.Contains(text, `\x1b[2J\x1b]0;pwned\a\rspoof\u202eevil\nnext (`) || !strings.Contains(text, " left)") {
		t.Errorf("reason not shown escaped, with its time left:\n%s", text)
	}

	// a unix socket nobody listens on is unreachable, not a bad address
	_, err = bifrostStatus(t, "--address", "unix/"+filepath.Join(t.TempDir(), "none.sock"))
	if err == nil || !strings.Contains(err.Error(), "cannot reach Caddy's admin API") {
		t.Fatalf("unreachable unix socket: %v", err)
	}
}

// bifrostStatus runs `caddy bifrost status` with args, as the caddy
// command registered by package status, and returns what it printed.
func bifrostStatus(t *testing.T, args ...string) (string, error) {
	t.Helper()
	c, ok := caddycmd.Commands()["bifrost"]
	if !ok {
		t.Fatal("the bifrost command is not registered")
	}
	cmd := &cobra.Command{Use: c.Name, SilenceErrors: true, SilenceUsage: true}
	c.CobraFunc(cmd)
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(append([]string{"status"}, args...))
	err := cmd.Execute()
	return out.String(), err
}
