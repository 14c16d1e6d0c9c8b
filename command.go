package bifrost

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "bifrost",
		Short: "Inspects Bifrost's workers through the admin API",
		Long: `
Commands to inspect the Bifrost pools of a running Caddy instance through
its admin API.

  caddy bifrost status [--address <admin address>]

prints every worker as a table: pool, upstream, state, breaker, isolation
and counters. The address defaults to the CADDY_ADMIN environment variable,
else localhost:2019.
`,
		CobraFunc: func(cmd *cobra.Command) {
			status := &cobra.Command{
				Use:   "status [--address <admin address>]",
				Short: "Prints the workers of every Bifrost pool",
				Args:  cobra.NoArgs,
				RunE: func(c *cobra.Command, _ []string) error {
					addr, _ := c.Flags().GetString("address")
					return printStatus(c.OutOrStdout(), addr, 5*time.Second)
				},
			}
			status.Flags().String("address", "", "The address of Caddy's admin API (default: $CADDY_ADMIN or localhost:2019)")
			cmd.AddCommand(status)
		},
	})
}

// printStatus fetches the workers from the admin API at addr and prints
// them as a table.
func printStatus(out io.Writer, addr string, timeout time.Duration) error {
	if addr == "" {
		addr = os.Getenv("CADDY_ADMIN")
	}
	if addr == "" {
		addr = "localhost:2019"
	}
	url := addr
	if !strings.Contains(url, "://") {
		url = "http://" + url
	}
	client := &http.Client{Timeout: timeout}
	resp, err := client.Get(strings.TrimSuffix(url, "/") + "/bifrost/workers")
	if err != nil {
		return fmt.Errorf("cannot reach Caddy's admin API at %s (is Caddy running, and is --address right?): %w", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("reading the admin API's answer: %w", err)
	}
	if resp.StatusCode == http.StatusNotFound {
		return fmt.Errorf("the admin API at %s has no /bifrost/ endpoints: is this Caddy built with Bifrost?", addr)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("admin API answered %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	var workers []workerView
	if err := json.Unmarshal(body, &workers); err != nil {
		return fmt.Errorf("decoding the admin API's answer: %w", err)
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
			w.Pool, w.ID, w.Upstream, stateWord(w), w.Breaker.State, w.InFlight, w.Requests, w.Failures, detail(w, now))
	}
	return tw.Flush()
}

// stateWord sums a worker's state up in one word.
func stateWord(w workerView) string {
	switch {
	case w.RecoveryFailed:
		return "recovery-failed"
	case w.Isolated:
		return "isolated"
	case w.Throttled:
		return "throttled"
	case w.Breaker.State.String() != "closed":
		return strings.ReplaceAll(w.Breaker.State.String(), "_", "-")
	case w.Healthy:
		return "healthy"
	}
	return "unhealthy"
}

// detail explains a worker that is out: why and until when.
func detail(w workerView, now time.Time) string {
	switch {
	case w.Isolated && !w.IsolatedUntil.IsZero():
		return fmt.Sprintf("%s (%s left)", w.IsolationReason, w.IsolatedUntil.Sub(now).Round(time.Second))
	case w.Isolated:
		return w.IsolationReason
	case w.Throttled:
		return fmt.Sprintf("throttled (%s left)", w.ThrottledUntil.Sub(now).Round(100*time.Millisecond))
	case !w.Breaker.RetryAt.IsZero():
		return fmt.Sprintf("breaker half-opens in %s", w.Breaker.RetryAt.Sub(now).Round(100*time.Millisecond))
	}
	return ""
}
