package bifrost

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// `caddy bifrost status --config <Caddyfile>` prints its table and
// nothing else: no log lines of Caddy's config loading before it. The
// lines would go to the process's stderr through Caddy's default logger,
// so the command runs in a child process (this test binary again) whose
// output is read whole.
func TestStatusCommandConfigIsQuiet(t *testing.T) {
	if file := os.Getenv("BIFROST_CLI_CONFIG"); file != "" {
		// the child: run the command, print what it printed
		text, err := bifrostStatus(t, "--config", file)
		fmt.Print(text)
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	a := newBackend(t)
	site := siteConfig([]string{a.addr}, "\t\tname quiet")
	loadCaddyfile(t, site)
	file := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(file, []byte("{\n\tadmin "+testAdmin+"\n}\n"+site), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestStatusCommandConfigIsQuiet$")
	cmd.Env = append(os.Environ(), "BIFROST_CLI_CONFIG="+file)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("child: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	out := stdout.String()
	if !strings.HasPrefix(out, "POOL ") || !strings.Contains(out, "quiet_"+strings.ReplaceAll(a.addr, ":", "-")) {
		t.Fatalf("the table does not come first, or lacks the worker:\n%s", out)
	}
	if strings.Contains(stderr.String(), `"msg"`) {
		t.Fatalf("log lines on stderr:\n%s", stderr.String())
	}
}
