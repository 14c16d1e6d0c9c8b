package bifrost

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"go.uber.org/zap"

	"github.com/bifrost-proxy/bifrost/pool"
)

func init() {
	caddy.RegisterModule(App{})
	httpcaddyfile.RegisterGlobalOption("bifrost", parseGlobalOption)
}

// appLoopInterval is how often the bifrost app's loop looks at the
// workers' verdicts; the state is written at most once per
// stateSaveEvery of its turns.
const (
	appLoopInterval = 250 * time.Millisecond
	stateSaveEvery  = 4
)

// App is the `bifrost` app: what Bifrost keeps beyond one handler and one
// process. It keeps the workers' verdicts (isolations with their reason,
// end and ejection count, throttles, operators' isolations) in Caddy's
// storage, so that a restarted instance starts with them, and, with a
// fleet, shares them with the other Caddy instances through Redis or
// Valkey. Every bifrost handler uses it, configured or not: without
// configuration it keeps state in storage and has no fleet.
//
// It never runs on a request's path: its loop reads the verdicts off the
// pools, writes storage and exchanges with the fleet, and hands remote
// verdicts to the pools' loops.
type App struct {
	// State is "off" to keep no state in storage; empty or "on" keeps
	// it.
	State string `json:"state,omitempty"`
	// Fleet shares the workers' verdicts with other Caddy instances;
	// nil: this instance works alone.
	Fleet *FleetConfig `json:"fleet,omitempty"`

	ctx    caddy.Context
	logger *zap.Logger
	keeper *stateKeeper // nil when state is off
	link   *fleetLink   // nil without a fleet

	stop context.CancelFunc
	done chan struct{}
	once *sync.Once
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "bifrost",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision checks the configuration and sets up storage and the fleet
// connection (which connects when the app starts).
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	a.once = new(sync.Once)
	a.logger = ctx.Logger()
	switch a.State {
	case "", "on":
		a.keeper = &stateKeeper{storage: ctx.Storage(), logger: a.logger, last: map[string][]byte{}}
	case "off":
	default:
		return fmt.Errorf("state: %q is not on or off", a.State)
	}
	if a.Fleet != nil {
		link, err := newFleetLink(ctx, a.Fleet, a.logger)
		if err != nil {
			return fmt.Errorf("fleet: %w", err)
		}
		a.link = link
	}
	return nil
}

// Start starts the app's loop.
func (a *App) Start() error {
	ctx, cancel := context.WithCancel(context.Background())
	a.stop, a.done = cancel, make(chan struct{})
	if a.link != nil {
		a.link.start()
	}
	go a.run(ctx)
	return nil
}

// Stop stops the app's loop, writes the state a last time (the handlers
// are still attached: Caddy cleans modules up after it stops the apps)
// and lets go of the fleet connection.
func (a *App) Stop() error {
	a.once.Do(func() {
		if a.stop != nil {
			a.stop()
			<-a.done
		}
		if a.keeper != nil {
			ctx, cancel := context.WithTimeout(context.Background(), storageTimeout)
			a.keeper.save(ctx, time.Now())
			cancel()
		}
	})
	return nil
}

// Cleanup releases the fleet connection.
func (a *App) Cleanup() error {
	if a.link != nil {
		return a.link.close()
	}
	return nil
}

// run is the app's loop.
func (a *App) run(ctx context.Context) {
	defer close(a.done)
	t := time.NewTicker(appLoopInterval)
	defer t.Stop()
	// the fleet's news, and this process's changed verdicts, which need
	// not wait for the ticker
	var updated, changed <-chan struct{}
	if a.link != nil {
		updated, changed = a.link.updated(), pool.VerdictsChanged()
	}
	for turn := 1; ; {
		select {
		case <-ctx.Done():
			return
		case <-updated:
			a.safely(func() { a.link.exchange(time.Now()) })
		case <-changed:
			a.safely(func() { a.link.exchange(time.Now()) })
		case now := <-t.C:
			a.safely(func() {
				if a.link != nil {
					a.link.exchange(now)
				}
				if a.keeper != nil && turn%stateSaveEvery == 0 {
					a.keeper.save(ctx, now)
				}
			})
			turn++
		}
	}
}

// safely runs f, logging a panic instead of ending the loop.
func (a *App) safely(f func()) {
	defer func() {
		if v := recover(); v != nil {
			a.logger.Error("bifrost app loop panicked", zap.Any("panic", v))
		}
	}()
	f()
}

// restoreState applies the stored verdicts of a pool that was just
// created, before its first request; see stateKeeper.restore.
func (a *App) restoreState(p *pool.Pool) {
	if a.keeper != nil {
		a.keeper.restore(a.ctx, p)
	}
}

// appOf returns the bifrost app of the config that ctx belongs to,
// provisioning it (with no configuration) when the config has none.
func appOf(ctx caddy.Context) (*App, error) {
	v, err := ctx.App("bifrost")
	if err != nil {
		return nil, err
	}
	a, ok := v.(*App)
	if !ok {
		return nil, errors.New("the bifrost app is of the wrong type")
	}
	return a, nil
}

// parseGlobalOption reads the `bifrost` global option:
//
//	bifrost {
//		state on|off
//		fleet <redis-url> {
//			secret <secret>
//			instance <name>
//			quorum <n>
//		}
//	}
func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	app := new(App)
	d.Next() // the option's name
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "state":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			if v := d.Val(); v != "on" && v != "off" {
				return nil, d.Errf("state: %q is not on or off", v)
			}
			app.State = d.Val()
			if d.NextArg() {
				return nil, d.ArgErr()
			}
		case "fleet":
			if app.Fleet != nil {
				return nil, d.Err("fleet: given twice")
			}
			fc, err := parseFleet(d)
			if err != nil {
				return nil, err
			}
			app.Fleet = fc
		default:
			return nil, d.Errf("unknown bifrost option %q (want state or fleet)", d.Val())
		}
	}
	return httpcaddyfile.App{Name: "bifrost", Value: caddyconfig.JSON(app, nil)}, nil
}

// parseFleet reads the fleet subdirective of the bifrost global option.
func parseFleet(d *caddyfile.Dispenser) (*FleetConfig, error) {
	fc := new(FleetConfig)
	if !d.NextArg() {
		return nil, d.Err("fleet: missing the store's URL (redis://host:port/db)")
	}
	fc.URL = d.Val()
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for d.NextBlock(1) {
		name := d.Val()
		if !d.NextArg() {
			return nil, d.ArgErr()
		}
		val := d.Val()
		if d.NextArg() {
			return nil, d.ArgErr()
		}
		switch name {
		case "secret":
			fc.Secret = val
		case "instance":
			fc.Instance = val
		case "quorum":
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 {
				return nil, d.Errf("fleet: quorum: %q is not a whole number of instances of at least 1", val)
			}
			fc.Quorum = n
		default:
			return nil, d.Errf("fleet: unknown option %q (want secret, instance or quorum)", name)
		}
	}
	return fc, nil
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
