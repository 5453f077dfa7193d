package caddymodule

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
)

func init() {
	caddy.RegisterModule(App{})
}

const appID = "oci"

// App opens the stores of the oci_registry handlers, and builds the
// handlers on them, when Caddy starts running a config: a storage folder
// that cannot be opened (locked by another process, not writable) fails
// `caddy run` and `caddy reload` instead of the first request, and the
// mirror cache is counted and limited before any request. It has no settings: handlers load it
// implicitly and it need not appear in a config.
//
// It exists because Start is the one hook Caddy calls only when a config
// runs: `caddy validate` provisions modules but never starts apps, so it
// does not touch the stores and works next to a running server that holds
// their locks.
type App struct {
	// starts is appended to while the config is provisioned and run by
	// Start afterwards; Caddy does both from one goroutine.
	starts []func() error

	// generation orders the apps of successive configs (see reload.go).
	generation uint64
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  appID,
		New: func() caddy.Module { return new(App) },
	}
}

// Provision counts this config as the newest, which tells the handlers
// of an older one that it is being replaced, and has Caddy's "started"
// event (all apps of this config running, the old config not yet stopped)
// hold the old servers' shutdown while their clients move (reload.go).
func (a *App) Provision(ctx caddy.Context) error {
	a.enter()
	events, err := ctx.App("events")
	if err != nil {
		return err
	}
	return events.(*caddyevents.App).On("started", drainOnStart{a})
}

// Cleanup stops counting this config: it was replaced, stopped, or never
// ran (a failed reload).
func (a *App) Cleanup() error {
	a.leave()
	return nil
}

// onStart has Start call start, which opens a handler's store (a no-op
// for a store a previous config opened already) and builds what depends
// on it.
func (a *App) onStart(start func() error) {
	a.starts = append(a.starts, start)
}

// Start runs what the config's handlers asked for.
func (a *App) Start() error {
	for _, start := range a.starts {
		if err := start(); err != nil {
			return err
		}
	}
	return nil
}

// Stop does nothing: stores close when the handlers of the last config
// using them are cleaned up, which on a reload is after the new config has
// taken them over.
func (a *App) Stop() error { return nil }

var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
