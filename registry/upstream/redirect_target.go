package upstream

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"net/url"
	"time"
)

// errInternalAddress refuses a blob redirect or token realm into networks
// upstream has no business sending the mirror to, whether found before the
// request (checkTarget) or at the dial (guardedTransport).
var errInternalAddress = errors.New("upstream: redirect or token realm to an internal address refused")

// addrClass orders what an address may be reached from, most open first.
type addrClass int

const (
	classPublic   addrClass = iota
	classInternal           // loopback, private networks: from an upstream that lives there
	classNever              // link-local (cloud metadata), unspecified, multicast
)

func classOf(ip netip.Addr) addrClass {
	ip = ip.Unmap()
	switch {
	case ip.IsLinkLocalUnicast(), ip.IsLinkLocalMulticast(), ip.IsInterfaceLocalMulticast(),
		ip.IsMulticast(), ip.IsUnspecified():
		return classNever
	case ip.IsLoopback(), ip.IsPrivate():
		return classInternal
	}
	return classPublic
}

// resolveWait bounds the lookup of a redirect's host.
const resolveWait = 5 * time.Second

// hostClass is the most closed class among host's addresses: a name that
// resolves to both a public and an internal address counts as internal.
func hostClass(ctx context.Context, r *net.Resolver, host string) addrClass {
	if ip, err := netip.ParseAddr(host); err == nil {
		return classOf(ip)
	}
	ctx, cancel := context.WithTimeout(ctx, resolveWait)
	defer cancel()
	ips, err := r.LookupNetIP(ctx, "ip", host)
	if err != nil {
		// Not resolvable here: the dial, which applies the rule to
		// what it resolves, fails the same way; through a proxy the
		// name is the proxy's to resolve (see guardedTransport).
		return classPublic
	}
	c := classPublic
	for _, ip := range ips {
		c = max(c, classOf(ip))
	}
	return c
}

// checkTarget is the rule for where a blob redirect or a token realm may
// lead: anywhere public; loopback and private networks only from an
// upstream that is itself there (a registry and its storage on one private
// network), so a public upstream cannot make the mirror a probe of its own
// network; link-local (169.254.169.254 answers cloud credentials),
// unspecified and multicast never. It runs before the request, on address
// literals and names as resolved now: a clear refusal before anything is
// sent, and, when the hop goes through a proxy, the only check there is.
// Without a proxy the dial applies the same rule again to each address it
// connects to (guardedTransport), so a name that answers differently then
// (DNS rebinding) is refused there.
func checkTarget(ctx context.Context, r *net.Resolver, target, origin *url.URL) error {
	switch hostClass(ctx, r, target.Hostname()) {
	case classPublic:
		return nil
	case classNever:
		return errInternalAddress
	}
	if hostClass(ctx, r, origin.Hostname()) == classPublic {
		return errInternalAddress
	}
	return nil
}
