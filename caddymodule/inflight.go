package caddymodule

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/registry"
)

// Why a replaced config keeps its store until its requests end:
//
// On a reload Caddy stops the old servers without waiting for them (their
// grace period runs on in the background) and cleans the old config up at
// once. Requests that config accepted are still running then: a PATCH
// whose body is arriving, a blob read by a slow client, a manifest PUT.
// When the new config no longer uses the old one's storage folder (it
// moved, or the site was removed), Cleanup dropping the last reference
// would close the store under them: their writes fail with a 500 from a
// closed database and what they had sent is lost. So Cleanup hands the
// release of the store (and of the auth resources beside it) to
// the last of the config's requests. A process that exits does not wait:
// Caddy has already given its requests the grace period.

// requestGate counts the requests a config is serving and, once the config
// is cleaned up, runs its release when the last one has ended. Requests
// still arrive after Cleanup (HTTP/2 streams opened before the old
// server's GOAWAY reached the client, a connection accepted as the old
// server stopped): they are counted and served like the others, and
// delay the release in turn.
type requestGate struct {
	mu       sync.Mutex
	n        int
	release  func() // set by close; run once n is 0
	released bool
}

// enter counts one more request and reports whether the config's release
// has already run (its store may be closed). Each call must be matched by
// one leave.
func (g *requestGate) enter() (released bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.n++
	return g.released
}

// leave counts one request fewer, running the release if it was the last
// one of a config cleaned up.
func (g *requestGate) leave() {
	g.mu.Lock()
	g.n--
	run := g.takeRelease()
	g.mu.Unlock()
	if run != nil {
		run()
	}
}

// close hands the gate the config's release: run at once (true) when no
// request runs, else by the last request to leave. A nil gate (a config
// whose Provision failed early) never had a request.
func (g *requestGate) close(release func()) (now bool) {
	if g == nil {
		release()
		return true
	}
	g.mu.Lock()
	g.release = release
	run := g.takeRelease()
	g.mu.Unlock()
	if run != nil {
		run()
		return true
	}
	return false
}

// takeRelease returns the release if it is due, once; mu is held.
func (g *requestGate) takeRelease() func() {
	if g.n > 0 || g.release == nil || g.released {
		return nil
	}
	g.released = true
	return g.release
}

// serveCleanedUp answers a request that reached a config after its
// release closed the store (a late HTTP/2 stream, a connection the old
// server accepted as it stopped): the client is asked to retry, on a new
// connection, where the current config serves it.
func serveCleanedUp(w http.ResponseWriter, r *http.Request) {
	w, r, finish := authscope.GuardUnreadBody(w, r)
	defer finish()
	w.Header().Set("Connection", "close")
	w.Header().Set("Retry-After", "1")
	registry.NewError(http.StatusServiceUnavailable, registry.CodeUnavailable,
		"the server's configuration is being replaced, retry", nil).Render(w, r)
}

// pendingReleases counts the configs cleaned up whose release has not run
// yet: it waits for their last request.
var pendingReleases atomic.Int64

// Released waits until every config Caddy has stopped or replaced has
// given its storage back (its last request has ended and the store is
// closed), or until ctx ends. caddy.Stop does not wait for the old
// servers' requests unless the process exits, so a program that embeds
// these modules, or a test, calls Released after caddy.Stop before it
// removes or reuses the storage folder: a store still open over a folder
// removed under it cannot close.
func Released(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for pendingReleases.Load() > 0 {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-t.C:
		}
	}
	return nil
}
