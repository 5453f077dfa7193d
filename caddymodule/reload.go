package caddymodule

import (
	"context"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// ReloadDrain is how long a reload keeps the old config serving, with
// Connection: close on its HTTP/1 responses, once the new one runs. It
// delays the admin API's answer to a reload by as much.
const ReloadDrain = 500 * time.Millisecond

// Why responses ask clients to close their connection during a reload:
//
// A reload provisions the new config, starts it on the same (shared)
// listeners, and only then shuts the old HTTP servers down. Go's
// http.Server.Shutdown closes every HTTP/1.1 connection that is idle at
// that moment; a client that is just sending its next request on one gets
// a reset, and Go clients, like most, resend only GET and HEAD by
// themselves, not a blob POST, PUT or PATCH (golang/go#23829). Once a newer
// config has been provisioned, the old config's responses therefore carry
// Connection: close, so the client's next request goes out on a new
// connection. Caddy stops the old config right after starting the new one,
// too soon for busy clients to move, so the new config waits ReloadDrain
// after it has started (Caddy's "started" event) before Caddy goes on to
// shut the old servers down; meanwhile both configs accept connections
// (Caddy binds a reloaded listener again with SO_REUSEPORT). That leaves
// to the race only connections idle for the whole drain. HTTP/2 is left
// alone: its shutdown sends GOAWAY, which clients handle without loss.

// configs numbers the oci apps of the configs that are provisioned and
// not cleaned up yet: one per config, since Caddy provisions an app once
// per config. A failed reload or an in-process validate cleans its app up
// again, so it stops counting as newer.
var configs struct {
	mu     sync.Mutex
	last   uint64              // generation of the last app provisioned
	live   map[uint64]struct{} // generations provisioned and not cleaned up
	newest atomic.Uint64       // largest generation in live
}

// enter gives a its generation and counts it as live.
func (a *App) enter() {
	configs.mu.Lock()
	defer configs.mu.Unlock()
	if configs.live == nil {
		configs.live = make(map[uint64]struct{})
	}
	configs.last++
	a.generation = configs.last
	configs.live[a.generation] = struct{}{}
	configs.newest.Store(a.generation)
}

// leave stops counting a as live.
func (a *App) leave() {
	configs.mu.Lock()
	defer configs.mu.Unlock()
	delete(configs.live, a.generation)
	var newest uint64
	for g := range configs.live {
		newest = max(newest, g)
	}
	configs.newest.Store(newest)
}

// replaced reports whether a newer config than a's has been provisioned
// (and not given up), which means a's servers are about to shut down.
func (a *App) replaced() bool {
	return configs.newest.Load() > a.generation
}

// olderLive reports whether a config older than a's is still live, i.e.
// a's config is a reload.
func (a *App) olderLive() bool {
	configs.mu.Lock()
	defer configs.mu.Unlock()
	for g := range configs.live {
		if g < a.generation {
			return true
		}
	}
	return false
}

// drainOnStart handles the "started" event of its app's config.
type drainOnStart struct{ app *App }

// Handle waits ReloadDrain when the config that started replaces one.
func (d drainOnStart) Handle(ctx context.Context, _ caddy.Event) error {
	if !d.app.olderLive() {
		return nil
	}
	t := time.NewTimer(ReloadDrain)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	return nil
}

// closeWhenReplaced returns w, for an HTTP/1 request, wrapped so that the
// response asks the client to close the connection when a's config is
// being replaced at the time the response starts.
func (a *App) closeWhenReplaced(w http.ResponseWriter, r *http.Request) http.ResponseWriter {
	if a == nil || r.ProtoMajor != 1 {
		return w
	}
	return &closingWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, app: a} // one allocation a request
}

// closingWriter adds Connection: close to a response whose status is
// written after its app's config was replaced.
type closingWriter struct {
	caddyhttp.ResponseWriterWrapper
	app     *App
	started bool
}

func (w *closingWriter) WriteHeader(status int) {
	if !w.started && status >= http.StatusOK { // not for 1xx
		w.started = true
		if w.app.replaced() {
			w.Header().Set("Connection", "close")
		}
	}
	w.ResponseWriterWrapper.WriteHeader(status)
}

func (w *closingWriter) Write(p []byte) (int, error) {
	if !w.started {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriterWrapper.Write(p)
}

// ReadFrom keeps sendfile for blobs (http.ServeContent copies into w).
func (w *closingWriter) ReadFrom(r io.Reader) (int64, error) {
	if !w.started {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriterWrapper.ReadFrom(r)
}
