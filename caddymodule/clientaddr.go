package caddymodule

import (
	"net/http"
	"net/netip"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// lenientProxiesWarned and noClientAddressWarned: warnClientAddress has
// given that warning in this process.
var lenientProxiesWarned, noClientAddressWarned atomic.Bool

// warnClientAddress warns, once a process each, when the client address
// every per-client bound counts cannot tell clients apart as the operator
// likely means it to: see warnLenientProxies and warnNoClientAddress.
func warnClientAddress(r *http.Request, logger *zap.Logger) {
	warnLenientProxies(r, logger)
	warnNoClientAddress(r, logger)
}

// warnNoClientAddress warns, once a process, when a request has no client
// address: it came on a Unix socket of a server without
// trusted_proxies_unix, or through one with it from a proxy that sent no
// client address header. Every such client then counts as one ("@"), so
// one of them spends everybody's per-client bounds: against the binary
// on a Unix socket with login_limit per_client 5, five wrong passwords
// from one client made every other user's first login there 429 for the
// window (a user who had logged in from "@" before keeps a bucket of its
// own), and max_uploads_per_client and max_misses_per_client are shared
// the same way. Which listener a request came on is known only on a
// request, so this is seen there, not at provision.
func warnNoClientAddress(r *http.Request, logger *zap.Logger) {
	if noClientAddressWarned.Load() {
		return
	}
	if _, err := netip.ParseAddr(clientIP(r)); err == nil {
		return
	}
	if noClientAddressWarned.CompareAndSwap(false, true) {
		logger.Warn("a request came with no client address (a Unix socket without trusted_proxies_unix, "+
			"or a proxy there that sends no X-Forwarded-For): every such client counts as one, so per-client bounds "+
			"(login_limit, max_uploads_per_client, max_misses_per_client) are shared by all of them and one client can "+
			"spend them for everyone; set trusted_proxies_unix in the server's options and have the proxy send the client's address",
			zap.String("remote", r.RemoteAddr))
	}
}

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
