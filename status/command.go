package status

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/bifrost-proxy/bifrost/pool"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "bifrost",
		Short: "Inspects Bifrost's workers through the admin API",
		Long: `
Commands to inspect the Bifrost pools of a running Caddy instance through
its admin API.

  caddy bifrost status [--config <path> [--adapter <name>]] [--address <admin address>]

prints every worker as a table: pool, upstream, state, breaker, isolation
and counters. The admin address is found as "caddy stop" finds it: from
--address, else from the config given with --config, else the default
(the CADDY_ADMIN environment variable, or localhost:2019). Every form of
Caddy's admin address works, such as localhost:2019 or
unix//run/caddy/admin.sock.
`,
		CobraFunc: func(cmd *cobra.Command) {
			status := &cobra.Command{
				Use:   "status [--config <path> [--adapter <name>]] [--address <admin address>]",
				Short: "Prints the workers of every Bifrost pool",
				Args:  cobra.NoArgs,
				RunE: func(c *cobra.Command, _ []string) error {
					fl := caddycmd.Flags{FlagSet: c.Flags()}
					var cfg []byte
					if fl.String("address") == "" {
						var err error
						if cfg, err = quietConfig(fl.String("config"), fl.String("adapter")); err != nil {
							return err
						}
					}
					addr, err := caddycmd.DetermineAdminAPIAddress(fl.String("address"), cfg, fl.String("config"), fl.String("adapter"))
					if err != nil {
						return fmt.Errorf("couldn't determine admin API address: %w", err)
					}
					return printStatus(c.OutOrStdout(), addr, commandTimeout)
				},
			}
			status.Flags().StringP("config", "c", "", "Configuration file to read the admin address from, if --address is not used")
			status.Flags().StringP("adapter", "a", "", "Name of config adapter to apply (when --config is used)")
			status.Flags().String("address", "", "The address of Caddy's admin API (default: $CADDY_ADMIN or localhost:2019)")
			cmd.AddCommand(status)
		},
	})
}

// quietConfig reads and adapts the config file given with --config as
// caddycmd.LoadConfig does, but without its log lines ("using config
// from file", "adapted config to JSON"), which would come before the
// table; DetermineAdminAPIAddress then reads the admin address from it.
// Without a file it returns nil, and DetermineAdminAPIAddress falls back
// as Caddy's own commands do.
func quietConfig(file, adapter string) ([]byte, error) {
	if file == "" {
		return nil, nil
	}
	var raw []byte
	var err error
	if file == "-" {
		raw, err = io.ReadAll(os.Stdin)
	} else {
		raw, err = os.ReadFile(file)
	}
	if err != nil {
		return nil, fmt.Errorf("reading config from %s: %w", file, err)
	}
	base := filepath.Base(file)
	if adapter == "" && (strings.HasPrefix(base, "Caddyfile") || filepath.Ext(base) == ".caddyfile") {
		adapter = "caddyfile"
	}
	if adapter == "" {
		return raw, nil
	}
	a := caddyconfig.GetAdapter(adapter)
	if a == nil {
		return nil, fmt.Errorf("unrecognized config adapter: %s", adapter)
	}
	js, _, err := a.Adapt(raw, map[string]any{"filename": file})
	if err != nil {
		return nil, fmt.Errorf("adapting config using %s: %w", adapter, err)
	}
	return js, nil
}

// commandTimeout bounds the admin request of `caddy bifrost status`.
const commandTimeout = 10 * time.Second

// printStatus fetches the workers from the admin API at addr, in any
// form of Caddy's admin address, and prints them as a table.
func printStatus(out io.Writer, addr string, timeout time.Duration) error {
	body, err := adminGet(addr, "/bifrost/workers", timeout)
	if err != nil {
		return err
	}
	var workers []pool.WorkerView
	if err := json.Unmarshal(body, &workers); err != nil {
		return fmt.Errorf("decoding the admin API's answer: %w", err)
	}
	// a dynamic pool whose lookups fail says so, as GET /bifrost/stats
	// does; its last workers keep serving meanwhile
	body, err = adminGet(addr, "/bifrost/stats", timeout)
	if err != nil {
		return err
	}
	var stats pool.StatsView
	if err := json.Unmarshal(body, &stats); err != nil {
		return fmt.Errorf("decoding the admin API's answer: %w", err)
	}
	for _, name := range slices.Sorted(maps.Keys(stats.Pools)) {
		if msg := stats.Pools[name].DynamicError; msg != "" {
			fmt.Fprintf(out, "pool %s: upstream lookups failing (the last workers keep serving): %s\n", termSafe(name), termSafe(msg))
		}
	}
	if len(workers) == 0 {
		_, err := fmt.Fprintln(out, "no bifrost workers in the running config")
		return err
	}
	now := time.Now()
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POOL\tWORKER\tUPSTREAM\tSTATE\tBREAKER\tIN-FLIGHT\tREQUESTS\tFAILURES\tDETAIL")
	for _, w := range workers {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\n",
			termSafe(w.Pool), termSafe(w.ID), termSafe(upstreamWord(w)), stateWord(w), termSafe(w.Breaker.State.String()),
			w.InFlight, w.Requests, w.Failures, termSafe(detail(w, now)))
	}
	return tw.Flush()
}

// adminGet sends a GET to Caddy's admin API at addr through caddycmd's
// AdminAPIRequest, which speaks every admin address form (TCP, unix
// socket, file descriptor) as Caddy's own commands do, and returns the
// body of a 200. AdminAPIRequest has no timeout of its own, so it runs
// under one here: if it expires, the command fails and exits, which ends
// the request with it.
func adminGet(addr, uri string, timeout time.Duration) ([]byte, error) {
	type result struct {
		body []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := caddycmd.AdminAPIRequest(addr, http.MethodGet, uri, nil, nil)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
		done <- result{body, err}
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var res result
	select {
	case res = <-done:
	case <-timer.C:
		return nil, fmt.Errorf("no answer from Caddy's admin API at %s within %s", addr, timeout)
	}
	if res.err == nil {
		return res.body, nil
	}
	// AdminAPIRequest's errors are plain text: an answer of 400 or more
	// is "caddy responded with error: HTTP <code>: <body>"
	msg := res.err.Error()
	switch {
	case strings.Contains(msg, "invalid admin address"):
		return nil, res.err
	case strings.Contains(msg, "making request"):
		return nil, fmt.Errorf("invalid admin address %s: %w", addr, res.err)
	case strings.Contains(msg, "HTTP 404:"):
		return nil, fmt.Errorf("the admin API at %s has no /bifrost/ endpoints: is this Caddy built with Bifrost?", addr)
	case strings.Contains(msg, "caddy responded with error"):
		return nil, fmt.Errorf("admin API at %s: %s", addr, termSafe(msg))
	}
	return nil, fmt.Errorf("cannot reach Caddy's admin API at %s (is Caddy running, and is --address right?): %w", addr, res.err)
}

// termSafe escapes what a terminal would act on instead of print: control
// characters (escape sequences, carriage returns, tabs that would break
// the table) and other unprintable runes such as bidirectional overrides.
// Pool names, upstreams and isolation reasons come from configs and
// upstreams, not from this terminal's user.
func termSafe(s string) string {
	if !strings.ContainsFunc(s, unprintable) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if unprintable(r) {
			q := strconv.QuoteRuneToASCII(r)
			b.WriteString(q[1 : len(q)-1])
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// unprintable reports whether r must be escaped before it is printed.
func unprintable(r rune) bool { return !strconv.IsPrint(r) }

// upstreamWord is a worker's upstream, marked when it is a backup.
func upstreamWord(w pool.WorkerView) string {
	if w.Backup {
		return w.Upstream + " (backup)"
	}
	return w.Upstream
}

// stateWord sums a worker's state up in one word, as the status page
// does (see pool.WorkerView.State).
func stateWord(w pool.WorkerView) string {
	return strings.ReplaceAll(w.State(), "_", "-")
}

// isolationLeft says how long an isolated worker stays out: the time
// left, "until restored", or, once its time is up, what it waits for.
// The CLI and the status page say the same.
func isolationLeft(w pool.WorkerView, now time.Time) string {
	if w.IsolatedUntil.IsZero() {
		return "until restored"
	}
	// the isolation ends at the pool's next tick, and only once a probe
	// passes when probes run and fail
	ended := "expired, returning"
	if !w.ProbeHealthy {
		ended = "expired, waiting for a passing probe"
	}
	return timeLeft(w.IsolatedUntil.Sub(now), time.Second, ended)
}

// detail explains a worker that is out: why and until when.
func detail(w pool.WorkerView, now time.Time) string {
	switch {
	case w.Isolated:
		return fmt.Sprintf("%s (%s)", w.IsolationReason, isolationLeft(w, now))
	case w.Throttled:
		return fmt.Sprintf("throttled (%s)", timeLeft(w.ThrottledUntil.Sub(now), 100*time.Millisecond, "ending now"))
	case !w.Breaker.RetryAt.IsZero():
		left := w.Breaker.RetryAt.Sub(now)
		if left < 100*time.Millisecond {
			return "breaker half-opens at its next request"
		}
		return fmt.Sprintf("breaker half-opens in %s", left.Round(100*time.Millisecond))
	}
	return ""
}

// timeLeft says how long is left, rounded to unit; under one unit (the
// end passed, or the server's clock is ahead of this one) it says ended.
func timeLeft(left, unit time.Duration, ended string) string {
	if left < unit {
		return ended
	}
	return left.Round(unit).String() + " left"
}
