package caddymodule

import (
	"net/http"
	"sync"

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
// release of the store (and of the auth and sync resources beside it) to
// the last of the config's requests. A process that exits does not wait:
// Caddy has already given its requests the grace period.

// requestGate counts the requests a config is serving and, once the config
// is cleaned up, tells when the last one has ended.
type requestGate struct {
	mu     sync.Mutex
	n      int
	closed bool          // the config was cleaned up: no request enters
	idle   chan struct{} // closed when n reaches 0 after close
}

// enter counts one more request, or reports false once the gate is closed.
// Each true must be matched by one leave.
func (g *requestGate) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.n++
	return true
}

// leave counts one request fewer.
func (g *requestGate) leave() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.n--
	if g.n == 0 && g.idle != nil {
		close(g.idle)
		g.idle = nil
	}
}

// close lets no more requests in and returns a channel closed once none
// runs (at once if none does). A nil gate (a config whose Provision failed
// early) never had a request.
func (g *requestGate) close() <-chan struct{} {
	ch := make(chan struct{})
	if g == nil {
		close(ch)
		return ch
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	if g.n == 0 {
		close(ch)
	} else {
		g.idle = ch
	}
	return ch
}

// serveCleanedUp answers a request that reached a config after its
// Cleanup (a connection the old server accepted as it shut down): its
// store may be closed, so the client is asked to retry, on a new
// connection, where the current config serves it.
func serveCleanedUp(w http.ResponseWriter, r *http.Request) {
	w, r, finish := authscope.GuardUnreadBody(w, r)
	defer finish()
	w.Header().Set("Connection", "close")
	w.Header().Set("Retry-After", "1")
	registry.NewError(http.StatusServiceUnavailable, registry.CodeUnavailable,
		"the server's configuration is being replaced, retry", nil).Render(w, r)
}
