package bifrost

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/bifrost-proxy/bifrost/pool"
)

// statusChromium is Debian's chromium, which .ci/run installs; the test
// downloads no browser.
const statusChromium = "/usr/bin/chromium"

// statusBackend is a backend on a fixed 127.0.0.1 port that the test can
// stop (the port refuses connections) and start again on the same port.
type statusBackend struct {
	t    *testing.T
	addr string

	mu  sync.Mutex
	srv *http.Server

	// failing makes every request but the health probe's answer 502
	failing atomic.Bool
}

func newStatusBackend(t *testing.T) *statusBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &statusBackend{t: t, addr: ln.Addr().String()}
	b.serve(ln)
	t.Cleanup(b.stop)
	return b
}

func (b *statusBackend) serve(ln net.Listener) {
	srv := &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if b.failing.Load() && r.URL.Path != "/health" {
				w.WriteHeader(http.StatusBadGateway)
				return
			}
			_, _ = io.WriteString(w, "hello from "+b.addr)
		}),
	}
	b.mu.Lock()
	b.srv = srv
	b.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

// stop closes the listener and every connection.
func (b *statusBackend) stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.srv != nil {
		_ = b.srv.Close()
		b.srv = nil
	}
}

// start listens on the same port again.
func (b *statusBackend) start() {
	b.t.Helper()
	var ln net.Listener
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if ln, err = net.Listen("tcp", b.addr); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		b.t.Fatalf("listening on %s again: %v", b.addr, err)
	}
	b.serve(ln)
}

// The status page in headless Chromium, served by real Caddy in front of
// three real backends: all three workers show healthy; a stopped backend
// shows isolated within seconds without a reload; once it runs again, the
// page's Restore button brings it back; a config reload that turns the
// actions off shows on the open page. Screenshots of the page with the
// isolated worker are saved to testdata/artifacts/status.png (and, with
// BIFROST_UPDATE_DOCS=1, to docs/status.png, the README's picture) and, at a phone's width, to
// testdata/artifacts/status-phone.png.
func TestStatusPageInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("browser test skipped in -short mode")
	}
	if _, err := os.Stat(statusChromium); err != nil {
		t.Skipf("chromium is not installed at %s (apt-get install -y chromium): %v", statusChromium, err)
	}

	bs := []*statusBackend{newStatusBackend(t), newStatusBackend(t), newStatusBackend(t)}
	// A long base_time keeps the stopped worker isolated after its
	// backend is back, so only the page's Restore button can bring it
	// back within the test; a high breaker threshold and no outlier
	// detection keep a worker that fails its tries in rotation.
	config := func(statusBlock string) string {
		return fmt.Sprintf(`:9080 {
	handle /bifrost* {
		bifrost_status %s
	}
	handle {
		bifrost %s %s %s {
			name web
			lb_policy round_robin
			health {
				uri /health
				interval 200ms
				passes 1
				fails 1
			}
			isolation {
				base_time 1m
				success_rate off
			}
			breaker {
				failures 1000
			}
		}
	}
}
`, statusBlock, bs[0].addr, bs[1].addr, bs[2].addr)
	}
	loadCaddyfile(t, config("{\n\t\t\tactions\n\t\t}"))
	down := bs[1]
	downID := pool.WorkerID("web", down.addr)

	// steady traffic, so the rates and the charts have something to show
	trafficCtx, stopTraffic := context.WithCancel(context.Background())
	var traffic sync.WaitGroup
	traffic.Add(1)
	go func() {
		defer traffic.Done()
		c := &http.Client{Timeout: 5 * time.Second}
		for trafficCtx.Err() == nil {
			if resp, err := c.Get(testSite + "/"); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			select {
			case <-trafficCtx.Done():
			case <-time.After(40 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { stopTraffic(); traffic.Wait() })

	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(statusChromium),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(allocCtx)
	defer cancel()

	// The first Run starts the browser and must not have a timeout (it
	// would bound the browser's life); each wait below has its own.
	if err := chromedp.Do(ctx, chromedp.Navigate(testSite+"/bifrost/")); err != nil {
		t.Fatalf("loading the page: %v", err)
	}
	// A marker that a reload would wipe out.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[chromedp.Void](`window.bifrostNoReload = true`)); err != nil {
		t.Fatal(err)
	}
	within := func(d time.Duration, what, predicate string) {
		t.Helper()
		start := time.Now()
		_, err := chromedp.Run(ctx, chromedp.Poll[bool](predicate,
			chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(d)))
		if err != nil {
			state, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector('main').innerText`))
			t.Fatalf("waiting %s for %s: %v\npage text:\n%s", d, what, err, state)
		}
		t.Logf("%s after %s", what, time.Since(start).Round(10*time.Millisecond))
	}
	row := fmt.Sprintf(`document.querySelector('tr[data-worker=%q]')`, downID)

	within(10*time.Second, "three workers healthy",
		`document.querySelectorAll('tr[data-worker][data-status="healthy"]').length === 3 &&
		 Array.from(document.querySelectorAll('tr[data-worker] td.state .badge')).every(b => b.textContent.includes('healthy'))`)
	within(5*time.Second, "the problem line saying all is well, with what clients got",
		`document.getElementById('problem').classList.contains('problem-ok') &&
		 document.getElementById('problem-line').textContent === 'All 3 workers are healthy.' &&
		 /^Clients: \d+ errors? in the last .* \(of [\d,]+ requests?\); tries: /.test(document.getElementById('outcome-line').textContent)`)
	// every figure and column says what it counts
	untitled, err := chromedp.Run(ctx, chromedp.Evaluate[int](`
		Array.from(document.querySelectorAll('#kpis dt, #kpis dd, table.workers thead th')).filter(e => !e.title).length`))
	if err != nil || untitled != 0 {
		t.Errorf("%d key figures or column headings without a tooltip (%v)", untitled, err)
	}
	mode, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById('mode').textContent`))
	if err != nil || !strings.Contains(mode, "actions are enabled") {
		t.Fatalf("the page does not say actions are enabled: %q (%v)", mode, err)
	}

	down.stop()
	within(5*time.Second, "the stopped worker shown isolated",
		row+`.dataset.status === 'isolated' &&
		 `+row+`.querySelector('td.state').textContent.includes('isolated') &&
		 `+row+`.cells[3].textContent.includes('left')`)
	// the top line names the worker, why, and since when; clients are
	// told apart from tries
	within(10*time.Second, "the problem line naming the isolated worker",
		`document.getElementById('problem').classList.contains('problem-bad') &&
		 document.getElementById('problem-line').textContent === 'Problem now: `+downID+` isolated' &&
		 /^`+regexp.QuoteMeta(downID)+` \(.*\) isolated: probe_failed.*\(\d+s left\) since .*\(.*\)$/.test(document.querySelector('#problem-list li').textContent) &&
		 /^Clients: \d+ errors? in /.test(document.getElementById('outcome-line').textContent)`)
	within(10*time.Second, "the charts to fill in",
		`(document.querySelector('#chart-total path.line-req').getAttribute('d').match(/L/g) || []).length >= 4`)
	healthy, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('tr[data-worker][data-status="healthy"]').length`))
	if err != nil || healthy != 2 {
		t.Errorf("%d workers shown healthy while one is down, want 2 (%v)", healthy, err)
	}
	shots := []string{"testdata/artifacts/status.png"}
	if os.Getenv("BIFROST_UPDATE_DOCS") != "" {
		shots = append(shots, "docs/status.png") // the README's picture
	}
	statusScreenshot(t, ctx, shots...)

	// on a phone, the tables become cards: nothing may overflow sideways
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile)); err != nil {
		t.Fatal(err)
	}
	within(5*time.Second, "the page to fit a phone's width",
		`document.documentElement.scrollWidth <= window.innerWidth &&
		 getComputedStyle(`+row+`).display === 'block'`)
	statusScreenshot(t, ctx, "testdata/artifacts/status-phone.png")
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1280, 900)); err != nil {
		t.Fatal(err)
	}

	down.start()
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(fmt.Sprintf(`tr[data-worker=%q] button[data-action="restore"]`, downID)))); err != nil {
		t.Fatalf("clicking Restore: %v", err)
	}
	within(5*time.Second, "the restored worker shown healthy",
		row+`.dataset.status === 'healthy' && document.getElementById('action-result').textContent.includes('restored')`)

	// A worker whose breaker and probes call it healthy but that fails
	// its tries shows as failing, on its badge and in the top line.
	flaky := bs[2]
	flakyID := pool.WorkerID("web", flaky.addr)
	flaky.failing.Store(true)
	within(10*time.Second, "the failing worker shown failing",
		fmt.Sprintf(`document.querySelector('tr[data-worker=%q]').dataset.shown === 'failing' &&
		 document.querySelector('tr[data-worker=%q] td.state .badge').textContent.includes('failing') &&
		 document.getElementById('problem-line').textContent.includes(%q)`, flakyID, flakyID, flakyID+" failing"))
	flaky.failing.Store(false)
	within(15*time.Second, "the recovered worker shown healthy again",
		fmt.Sprintf(`document.querySelector('tr[data-worker=%q]').dataset.shown === 'healthy'`, flakyID))

	// A config reload that turns the actions off: the open page follows
	// it, and the time series survives it.
	loadCaddyfile(t, config(""))
	within(5*time.Second, "the page to follow a config reload",
		`document.getElementById('mode').textContent.includes('Read-only') &&
		 !document.querySelector('button[data-action]') &&
		 document.querySelectorAll('tr[data-worker][data-status="healthy"]').length === 3 &&
		 document.getElementById('conn-text').textContent === 'Live' &&
		 (document.querySelector('#chart-total path.line-req').getAttribute('d').match(/L/g) || []).length >= 4`)

	if ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.bifrostNoReload === true`)); err != nil || !ok {
		t.Fatalf("the page reloaded (%v)", err)
	}
}

// statusScreenshot saves a full-page screenshot to each path: the test
// artifacts, and the README's picture.
func statusScreenshot(t *testing.T, ctx context.Context, paths ...string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	for _, path := range paths {
		err := os.MkdirAll(filepath.Dir(path), 0o755)
		if err == nil {
			err = os.WriteFile(path, png, 0o644)
		}
		if err != nil {
			t.Errorf("saving the screenshot: %v", err)
			continue
		}
		t.Logf("screenshot saved to %s", path)
	}
}
