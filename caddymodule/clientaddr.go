package caddymodule

import (
	"net/http"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// lenientProxiesWarned: warnLenientProxies has warned in this process.
var lenientProxiesWarned atomic.Bool

// warnLenientProxies warns, once a process, when a request came through a
// trusted proxy of a server without trusted_proxies_strict. Caddy then
// takes the client's address from the first X-Forwarded-For value, which
// the client writes itself (a load balancer appends what it saw and keeps
// the rest), so every bound per client address (login_limit's
// per_client, max_uploads_per_client, max_misses_per_client) counts
// whatever address the client names: against the binary behind such a
// proxy, a client naming a new address each time made 15 misses past a
// budget of 10, and one naming another client's address spends that
// client's bounds. Strict mode takes the last address no trusted proxy
// added. Caddy keeps which proxies it trusts to itself once provisioned,
// so this is seen on a request, not at provision.
func warnLenientProxies(r *http.Request, logger *zap.Logger) {
	if lenientProxiesWarned.Load() {
		return
	}
	if trusted, _ := caddyhttp.GetVar(r.Context(), caddyhttp.TrustedProxyVarKey).(bool); !trusted {
		return
	}
	srv, ok := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if !ok || srv == nil || srv.TrustedProxiesStrict > 0 {
		return
	}
	if lenientProxiesWarned.CompareAndSwap(false, true) {
		logger.Warn("trusted_proxies without trusted_proxies_strict: a client's address is the first X-Forwarded-For value, " +
			"which the client chooses, so per-client bounds (login_limit, max_uploads_per_client, max_misses_per_client) " +
			"count whatever address it names; set trusted_proxies_strict in the server's options")
	}
}
