package bifrost

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/bifrost-proxy/bifrost/pool"
)

// Backups get no traffic while a primary can serve; when every primary is
// out they take all of it without a failed request, and the primaries
// take it back as soon as they are in rotation again. The admin API and
// the metrics show which workers are backups.
func TestBackupTakesOverWhileEveryPrimaryIsOut(t *testing.T) {
	p1, p2, b := newBackend(t), newBackend(t), newBackend(t)
	h := loadHandler(t, siteConfig([]string{p1.addr, p2.addr}, fmt.Sprintf(`
		name backups
		lb_policy round_robin
		backup %s`, b.addr)))
	for i := range 20 {
		if code, body := get(t, "/"); code != http.StatusOK || strings.Contains(body, b.addr) {
			t.Fatalf("request %d with the primaries in: got %d %q", i, code, body)
		}
	}
	if n := b.hits.Load(); n != 0 {
		t.Fatalf("the backup got %d requests while the primaries could serve", n)
	}
	primaries := []*worker{workerAt(t, h, p1.addr), workerAt(t, h, p2.addr)}
	for _, wk := range primaries {
		if err := pool.Act(wk.Worker, "isolate", 0, "test"); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 20 {
		if code, body := get(t, "/"); code != http.StatusOK || !strings.Contains(body, b.addr) {
			t.Fatalf("request %d with every primary out: got %d %q, want the backup's answer", i, code, body)
		}
	}
	before := p1.hits.Load() + p2.hits.Load()
	if err := pool.Act(primaries[0].Worker, "restore", 0, ""); err != nil {
		t.Fatal(err)
	}
	backupHits := b.hits.Load()
	for i := range 10 {
		if code, body := get(t, "/"); code != http.StatusOK || !strings.Contains(body, p1.addr) {
			t.Fatalf("request %d after a primary came back: got %d %q, want that primary", i, code, body)
		}
	}
	if b.hits.Load() != backupHits || p1.hits.Load()+p2.hits.Load() != before+10 {
		t.Error("the backup kept traffic after a primary came back")
	}

	var views []pool.WorkerView
	if code := adminJSON(t, http.MethodGet, "/bifrost/workers", &views); code != http.StatusOK {
		t.Fatalf("GET /bifrost/workers: %d", code)
	}
	backups := map[string]bool{}
	for _, v := range views {
		backups[v.Upstream] = v.Backup
	}
	if !backups[b.addr] || backups[p1.addr] || backups[p2.addr] {
		t.Errorf("admin API backups %v, want only %s", backups, b.addr)
	}
	bw := workerAt(t, h, b.addr)
	eventually(t, 5*time.Second, "the backup gauge", func() bool {
		return scrape(t)["caddy_bifrost_worker_backup,pool=backups,worker="+bw.ID] == 1
	})
}

// Primaries that refuse connections: every GET is answered (by the
// backup) while their breakers open, and then goes straight to it.
func TestBackupServesWhenPrimariesAreDown(t *testing.T) {
	b := newBackend(t)
	loadCaddyfile(t, siteConfig([]string{deadAddr(t), deadAddr(t)}, fmt.Sprintf(`
		name backupsdown
		breaker {
			failures 1
		}
		backup %s`, b.addr)))
	for i := range 20 {
		if code, body := get(t, "/"); code != http.StatusOK || !strings.Contains(body, b.addr) {
			t.Fatalf("request %d: got %d %q, want the backup's answer", i, code, body)
		}
	}
}

// Full primaries (max_requests) are not out, but cannot serve: the
// backup takes the request instead of a 503.
func TestBackupTakesWhatFullPrimariesCannot(t *testing.T) {
	p, b := newBackend(t), newBackend(t)
	release := make(chan struct{})
	p.set(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-time.After(12 * time.Second): // the test failed before releasing it
		}
		fmt.Fprint(w, "primary")
	})
	loadCaddyfile(t, siteConfig([]string{p.addr}, fmt.Sprintf(`
		name backupfull
		max_requests 1
		backup %s`, b.addr)))
	done := make(chan int, 1)
	go func() {
		code, _ := getAsync("/slow")
		done <- code
	}()
	eventually(t, 5*time.Second, "the primary full", func() bool { return p.hits.Load() == 1 })
	if code, body := get(t, "/"); code != http.StatusOK || !strings.Contains(body, b.addr) {
		t.Fatalf("with the primary full: got %d %q, want the backup's answer", code, body)
	}
	close(release)
	if code := <-done; code != http.StatusOK {
		t.Fatalf("the slow request got %d", code)
	}
}

// With min_primary 2, losing one of two primaries brings the backup in
// beside the primary that is left.
func TestBackupMinPrimary(t *testing.T) {
	p1, p2, b := newBackend(t), newBackend(t), newBackend(t)
	h := loadHandler(t, siteConfig([]string{p1.addr, p2.addr}, fmt.Sprintf(`
		name backupmin
		lb_policy round_robin
		backup %s
		backup min_primary 2`, b.addr)))
	for range 10 {
		get(t, "/")
	}
	if n := b.hits.Load(); n != 0 {
		t.Fatalf("the backup got %d requests with both primaries in", n)
	}
	if err := pool.Act(workerAt(t, h, p1.addr).Worker, "isolate", 0, "test"); err != nil {
		t.Fatal(err)
	}
	before := p2.hits.Load()
	for range 20 {
		if code, _ := get(t, "/"); code != http.StatusOK {
			t.Fatalf("got %d", code)
		}
	}
	if b.hits.Load() == 0 || p2.hits.Load() == before {
		t.Errorf("backup %d and remaining primary %d requests; want both to serve", b.hits.Load(), p2.hits.Load()-before)
	}
}

// The expand_pool action brings the backups in for the request whose try
// failed, even where `retry on` would not retry the failure, and holds it
// against nobody.
func TestExpandPoolBringsBackupsIn(t *testing.T) {
	p, b := newBackend(t), newBackend(t)
	p.set(status(http.StatusServiceUnavailable, "full"))
	h := loadHandler(t, siteConfig([]string{p.addr}, fmt.Sprintf(`
		name expand
		retry {
			on connect_failure
		}
		classify {
			status 503 http expand_pool
		}
		backup %s`, b.addr)))
	for i := range 3 {
		if code, body := get(t, "/"); code != http.StatusOK || !strings.Contains(body, b.addr) {
			t.Fatalf("request %d: got %d %q, want the backup's answer", i, code, body)
		}
	}
	if n := p.hits.Load(); n != 3 {
		t.Errorf("the primary got %d requests, want 3: it stays in rotation", n)
	}
	if wk := workerAt(t, h, p.addr); wk.Health.ConsecutiveFailures() != 0 {
		t.Error("expand_pool counted against the primary")
	}
}

// The backup subdirective adapts to the backup field; its mistakes are
// refused with the file and line, or (JSON) the field.
func TestBackupConfig(t *testing.T) {
	js, err := adapt(":8080 {\n\tbifrost 127.0.0.1:9001 {\n\t\tbackup 127.0.0.1:9002 127.0.0.1:9003\n\t\tbackup min_primary 2\n\t}\n}\n")
	if err != nil {
		t.Fatal(err)
	}
	if want := `"backup":{"min_primary":2,"upstreams":["127.0.0.1:9002","127.0.0.1:9003"]}`; !strings.Contains(string(js), want) {
		t.Errorf("adapted to %s, want %s", js, want)
	}
	for _, tc := range []struct{ line, want string }{
		{"backup", "Caddyfile:3"},
		{"backup min_primary two", `backup min_primary: "two" is not an integer`},
		{"backup min_primary -1", "must not be negative"},
		{"backup nohost", `backup: "nohost" is not a host:port address`},
		{"backup 127.0.0.1:9002 127.0.0.1:9002", "listed twice"},
	} {
		_, err := adapt(":8080 {\n\tbifrost 127.0.0.1:9001 {\n\t\t" + tc.line + "\n\t}\n}\n")
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "Caddyfile:3") {
			t.Errorf("%s: error %v, want %q at Caddyfile:3", tc.line, err, tc.want)
		}
	}
	for _, tc := range []struct {
		backup BackupConfig
		want   string
	}{
		{BackupConfig{}, "backup.upstreams: at least one"},
		{BackupConfig{Upstreams: []string{"127.0.0.1:9001"}}, "backup.upstreams[0]: 127.0.0.1:9001 is also a primary upstream"},
		{BackupConfig{Upstreams: []string{"127.0.0.1:x"}}, "backup.upstreams[0]"},
		{BackupConfig{Upstreams: []string{"127.0.0.1:9002"}, MinPrimary: -1}, "backup.min_primary must not be negative"},
	} {
		h := Handler{Backup: &tc.backup}
		h.Upstreams = []*reverseproxy.Upstream{{Dial: "127.0.0.1:9001"}}
		if _, err := h.resolve(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want %q", tc.backup, err, tc.want)
		}
	}
}

// A backup keeps its state across a reload, as every worker does, and a
// reload that makes it a primary shows it as one.
func TestBackupStateSurvivesReload(t *testing.T) {
	p, b := newBackend(t), newBackend(t)
	cfg := func(block string) string {
		return siteConfig([]string{p.addr}, "\t\tname backupreload\n"+block)
	}
	loadCaddyfile(t, cfg("\t\tbackup "+b.addr))
	bw := workerOf(t, "backupreload", b.addr)
	if err := pool.Act(bw, "isolate", 0, "test"); err != nil {
		t.Fatal(err)
	}
	loadCaddyfile(t, cfg("\t\tbackup "+b.addr+"\n\t\tmax_requests 5"))
	again := workerOf(t, "backupreload", b.addr)
	if again != bw || !again.Health.Isolated() || !again.Backup.Load() {
		t.Fatalf("after a reload: same state %v, isolated %v, backup %v", again == bw, again.Health.Isolated(), again.Backup.Load())
	}
	// the same upstream as a primary: no longer shown as a backup
	loadCaddyfile(t, siteConfig([]string{p.addr, b.addr}, "\t\tname backupreload"))
	if workerOf(t, "backupreload", b.addr).Backup.Load() {
		t.Error("a primary is still shown as a backup")
	}
}
