package registry

// Upload limits as the client sees them: who a session belongs to, the
// limits with their defaults, and the answers when one is reached.

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/cache"
)

// effectiveLimits applies the defaults to zero fields and turns negative
// ones into the store's "no limit".
func effectiveLimits(l cache.UploadLimits) cache.UploadLimits {
	l.PerOwner = int(orDefault(int64(l.PerOwner), DefaultUploadsPerClient))
	l.PerRepo = int(orDefault(int64(l.PerRepo), DefaultUploadsPerRepository))
	l.TotalBytes = orDefault(l.TotalBytes, DefaultUploadBytes)
	// One client may hold a quarter of the total by default.
	l.PerOwnerBytes = orDefault(l.PerOwnerBytes, l.TotalBytes/4)
	l.MaxBlobSize = orDefault(l.MaxBlobSize, 0)
	l.IdleTimeout = time.Duration(orDefault(int64(l.IdleTimeout), int64(DefaultUploadIdleTimeout)))
	return l
}

func orDefault(v, def int64) int64 {
	switch {
	case v < 0:
		return 0
	case v == 0:
		return def
	}
	return v
}

// ownerUser starts the owner of a session a signed-in user opened.
const ownerUser = "user:"

// uploadOwner names the client of r for the limit of sessions per
// client: the user it signed in as, else its address. An IPv6 client
// counts by its /64, which one host usually holds whole.
func (h *Handler) uploadOwner(r *http.Request) string {
	if id, ok := authscope.IdentityOf(r); ok && id.User != "" {
		return ownerUser + id.User
	}
	ip := h.cfg.ClientIP(r)
	if _, err := netip.ParseAddr(ip); err != nil {
		return "ip:unknown"
	}
	return "ip:" + authscope.ClientKey(ip) // as login_limit counts clients
}

// pushesInFlight counts the monolithic pushes (POST ?digest= with the
// blob as its body) each client has in flight. Such a push is no session,
// so the bound on sessions per client never counted it, yet it holds as
// much while its body trickles in: a temporary file, its descriptor, and
// on S3 a multipart upload. On the binary one anonymous client held 400
// at once (800 descriptors). They are held to the same bound, per process.
type pushesInFlight struct {
	mu sync.Mutex
	n  map[string]int
}

// take counts a push of owner, or reports that owner has limit already
// (limit 0: no bound).
func (p *pushesInFlight) take(owner string, limit int) (release func(), ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if limit > 0 && p.n[owner] >= limit {
		return nil, false
	}
	if p.n == nil {
		p.n = make(map[string]int)
	}
	p.n[owner]++
	return func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.n[owner]--; p.n[owner] <= 0 {
			delete(p.n, owner)
		}
	}, true
}

// remoteIP is the host part of r.RemoteAddr.
func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// errBlobTooLarge refuses a blob over the size limit.
func errBlobTooLarge(limit int64, cause error) *Error {
	return newError(http.StatusRequestEntityTooLarge, CodeSizeInvalid,
		fmt.Sprintf("blob exceeds the limit of %d bytes", limit), cause)
}

// uploadRefusal answers a store refusal by an upload limit, or returns
// nil for any other error.
func (h *Handler) uploadRefusal(err error) *Error {
	switch {
	case errors.Is(err, cache.ErrUploadTooLarge):
		return errBlobTooLarge(h.cfg.Uploads.MaxBlobSize, err)
	case errors.Is(err, cache.ErrTooManyUploads):
		return newError(http.StatusTooManyRequests, CodeTooManyRequests,
			"too many open uploads; finish or cancel some, or wait for idle ones to expire", err).
			withHeader("Retry-After", "60")
	case errors.Is(err, cache.ErrUploadShare):
		return newError(http.StatusTooManyRequests, CodeTooManyRequests,
			"your open uploads hold your share of the space; finish or cancel some", err).
			withHeader("Retry-After", "60")
	case errors.Is(err, cache.ErrUploadSpace):
		return newError(http.StatusTooManyRequests, CodeTooManyRequests,
			"open uploads hold all the space the registry gives them; try again later", err).
			withHeader("Retry-After", "60")
	}
	return nil
}

// checkDeclaredSize refuses, before reading a byte, a body that would
// take the blob past the size limit: end is the blob's size after it, as
// the request declares (negative: not declared).
func (h *Handler) checkDeclaredSize(end int64) error {
	if limit := h.cfg.Uploads.MaxBlobSize; limit > 0 && end > limit {
		return errBlobTooLarge(limit, fmt.Errorf("declared size %d", end))
	}
	return nil
}
