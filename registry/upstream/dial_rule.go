package upstream

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"syscall"
	"time"
)

// originKey carries, in a request's context, the configured upstream URL
// the request was made for.
type originKey struct{}

func withOrigin(ctx context.Context, base *url.URL) context.Context {
	return context.WithValue(ctx, originKey{}, base)
}

// guardedTransport holds every connection to the address rule of what it
// was opened for. A connection to the configured upstream's own scheme,
// host and port goes anywhere (the operator named it); one elsewhere (a
// blob's storage after a redirect, a token realm on another host) only to
// the addresses checkTarget's rule allows from that upstream. The rule is
// applied in the dialer, to the address each connection attempt actually
// goes to, after the dial's own lookup: a name that answers differently
// when checked and when dialled (DNS rebinding) gains nothing, and each
// address of a name is judged alone, so a refused one does not keep the
// dial (happy eyeballs included) from the next.
//
// Each rule has its own connection pool. Pools are keyed by scheme, host
// and port, so one shared pool would hand a connection opened under a
// looser rule (to a configured upstream, or from an upstream on a
// private network) to a hop that may not go there, when a name that
// answered a private address then answers a public one; separate pools
// make a connection reusable only under the rule it was dialled by.
//
// Through an HTTP(S) proxy (HTTPS_PROXY, HTTP_PROXY, NO_PROXY) the mirror
// connects only to the proxy, which the operator configured, and the
// proxy resolves and connects: there the rule is what checkTarget decides
// before the request, from address literals and names as resolved here;
// what the proxy may reach is for the proxy to police.
type guardedTransport struct {
	proxy    func(*http.Request) (*url.URL, error)
	resolver *net.Resolver
	open     *http.Transport // the configured upstream, and any proxy
	internal *http.Transport // elsewhere, from an upstream on loopback or a private network
	public   *http.Transport // elsewhere, from a public upstream
}

// newGuardedTransport makes the pools from base (no DialContext set).
func newGuardedTransport(base *http.Transport, dialTimeout time.Duration, r *net.Resolver) *guardedTransport {
	pool := func(allowed addrClass) *http.Transport {
		t := base.Clone()
		t.DialContext = (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second, Resolver: r,
			Control: dialRule(allowed)}).DialContext
		return t
	}
	return &guardedTransport{proxy: base.Proxy, resolver: r,
		open: pool(classNever), internal: pool(classInternal), public: pool(classPublic)}
}

// dialRule refuses a connection attempt to an address of a class above
// allowed. address is the attempt's resolved ip:port; IPv4-mapped IPv6
// counts as the IPv4 address, and anything unparsable is refused.
func dialRule(allowed addrClass) func(network, address string, _ syscall.RawConn) error {
	if allowed == classNever {
		return nil
	}
	return func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil || classOf(ap.Addr()) > allowed {
			return errInternalAddress
		}
		return nil
	}
}

func (g *guardedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	origin, _ := req.Context().Value(originKey{}).(*url.URL)
	switch {
	case origin == nil:
		// Every request of the client names its upstream; one that does
		// not gets the strictest rule rather than none.
		return g.public.RoundTrip(req)
	case sameOrigin(req.URL, origin):
		return g.open.RoundTrip(req)
	}
	if g.proxy != nil {
		p, err := g.proxy(req)
		if err != nil {
			return nil, err
		}
		if p != nil {
			return g.open.RoundTrip(req)
		}
	}
	// Where the upstream is: as its name answers now, as checkTarget has
	// it (the name is the operator's; a rebinding one could send the
	// mirror's own requests anywhere already).
	if hostClass(req.Context(), g.resolver, origin.Hostname()) == classPublic {
		return g.public.RoundTrip(req)
	}
	return g.internal.RoundTrip(req)
}

// CloseIdleConnections closes the idle connections of every pool.
func (g *guardedTransport) CloseIdleConnections() {
	g.open.CloseIdleConnections()
	g.internal.CloseIdleConnections()
	g.public.CloseIdleConnections()
}
