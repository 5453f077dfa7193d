// Package registry is the OCI distribution API as a plain net/http handler:
// routing, request parsing, the error envelope, and the handlers for blobs,
// uploads, manifests, tags, catalog and referrers. It knows nothing of Caddy.
package registry

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/registry/sigpolicy"
)

// DefaultMaxManifestSize is the largest manifest accepted when Config
// leaves MaxManifestSize at zero (4 MiB, as the distribution registry).
const DefaultMaxManifestSize = 4 << 20

// Upload limits applied when Config.Uploads leaves a field at zero. They
// are far above what a CI fleet holds open at once, and low enough that
// nobody fills the disk with sessions they never finish. A blob has no
// size limit of its own by default: DefaultUploadBytes bounds it.
const (
	DefaultUploadsPerClient     = 100
	DefaultUploadsPerRepository = 500
	DefaultUploadBytes          = 64 << 30
	DefaultUploadIdleTimeout    = time.Hour
)

// Observer receives one call per finished request, for metrics. op is a
// short, fixed operation name ("blob_get", "manifest_put", ...; see ops.go),
// never a user-supplied string, so it is safe as a metrics label.
type Observer interface {
	ObserveRequest(op string, status int, bytesIn, bytesOut int64, d time.Duration)
	// UploadCommitted is called once per blob upload that completed.
	UploadCommitted(size int64)
}

// Config is what a Handler needs.
type Config struct {
	// Store holds what the registry serves (see Store): *cache.Store, or
	// any other backend.
	Store Store
	// MaxManifestSize in bytes; 0 means DefaultMaxManifestSize.
	MaxManifestSize int64
	// SparseManifests accepts an image manifest whose config or layers
	// the repository does not hold (yet): a partial copy, or blobs pushed
	// after their manifest. Without it such a push is refused with
	// MANIFEST_BLOB_UNKNOWN, which catches a client that lost a blob on
	// the way. The children of an index are never required.
	SparseManifests bool
	// Logger gets every error that reaches a client, with the repository
	// and the reason. Nil means no logging.
	Logger *zap.Logger
	// Observer may be nil.
	Observer Observer
	// CanRead reports whether the client of r may pull from repo. It is
	// consulted where the handler picks a repository the client did not
	// name in the URL: the source of a cross-repository mount (`from`, or
	// any repository holding the blob when `from` is absent), and the
	// repository of a mirror whose copy of a blob serves while upstream
	// fails. A mount from a repository the client may not read falls
	// back to a plain upload session; such a copy is never served. Nil
	// allows everything (no auth configured).
	CanRead func(r *http.Request, repo string) bool
	// CanPush reports whether the client of r may push to repo. A
	// signature policy lets such a caller read a repository's unsigned
	// manifests when it comes with a signing tool's User-Agent
	// (signatures.go): signing reads what it signs. Nil allows everyone
	// (no auth configured).
	CanPush func(r *http.Request, repo string) bool
	// Mirrors are the read-only namespaces served from upstream
	// registries (see MirrorConfig). Empty: every name is local.
	Mirrors []*Mirror
	// LocalPrefixes are names that stay local even when a mirror is the
	// default namespace (e.g. "team" keeps team/app local).
	LocalPrefixes []string
	// Authorizer, when set, decides every request once its internal name
	// is known (see auth.go), filters the catalog and gets the audit of
	// pushes and deletes. Nil: no auth. Set CanRead from it too.
	Authorizer Authorizer
	// Uploads bound upload sessions (see cache.UploadLimits; PerOwner is
	// per client: the signed-in user, else the client's address). A zero
	// field takes its Default* value above, a negative one lifts the
	// limit. NewHandler gives them to Store; a store shared by handlers
	// keeps those of the handler built last.
	Uploads cache.UploadLimits
	// ClientIP returns the address of r's client, for the limit per
	// client of anonymous callers (Caddy's, which honours trusted
	// proxies). Nil: r.RemoteAddr.
	ClientIP func(r *http.Request) string
	// ReadOnly refuses every request that would change what the API
	// serves (readonly.go) with 403 DENIED, before auth and before any
	// body is read. Mirrors still fill their cache: that serves pulls.
	ReadOnly bool
	// SignaturePolicies: a manifest pulled (GET or HEAD, by tag or
	// digest) from a repository the first matching policy covers is
	// served only with a valid signature under it, else refused with 403
	// DENIED naming the policy (signatures.go). Empty: none.
	SignaturePolicies []*sigpolicy.Policy
}

// Handler serves /v2/. Requests for other paths get 404 NOT_FOUND in the
// error envelope; callers that want to pass them on (Caddy) check
// IsRegistryPath first.
type Handler struct {
	cfg     Config
	names   *authscope.Names // nil without mirrors: names are used as typed
	mirrors map[string]*Mirror
	// sigVerdicts caches signature checks briefly (signatures.go), on
	// the clock sigNow (tests move it).
	sigVerdicts sigVerdicts
	// sigParents: the indexes seen passing by a signature that list a
	// manifest (signatures.go); sigVouchers: the manifests seen passing
	// that reference a blob (signature_blobs.go).
	sigParents, sigVouchers digestRelation
	sigNow                  func() time.Time
	// sigVouches are the blobs that manifests which passed a signature
	// policy reference (signature_blobs.go).
	sigVouches expiringSet
	// sigMisses are checks under a policy that found nothing (a blob no
	// voucher passes for any more, a signature blob upstream lacks),
	// kept sigFailTTL so that repeating them costs nothing; apart from
	// sigVouches, so that a flood of them never evicts a vouch.
	sigMisses expiringSet
	sigScans  singleflight.Group
	// pending: the mirrors' manifest store writes running, some after
	// their answers (mirror_pending.go).
	pending pendingManifests
	// monolithic: the monolithic pushes each client has in flight
	// (uploadlimits.go), held to Uploads.PerOwner as sessions are.
	monolithic pushesInFlight
	// manifestSizes: the sizes of manifests served or pushed, so that a
	// large one waits its turn before it is read (manifestmem.go).
	manifestSizes manifestSizes
	// redirectCredentialsWarned: a blob GET was streamed rather than
	// redirected to where its credentials would follow (blobs.go).
	redirectCredentialsWarned atomic.Bool
}

// New returns a Handler for cfg. It panics if cfg's mirrors do not make a
// valid set of namespaces; use NewHandler to get that as an error.
func New(cfg Config) *Handler {
	h, err := NewHandler(cfg)
	if err != nil {
		panic(err)
	}
	return h
}

// NewHandler returns a Handler for cfg, or why cfg's mirrors and local
// prefixes do not fit together. Nothing upstream is contacted.
func NewHandler(cfg Config) (*Handler, error) {
	if cfg.MaxManifestSize <= 0 {
		cfg.MaxManifestSize = DefaultMaxManifestSize
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.CanPush == nil {
		cfg.CanPush = func(*http.Request, string) bool { return true }
	}
	if cfg.CanRead == nil {
		cfg.CanRead = func(*http.Request, string) bool { return true }
	}
	if cfg.ClientIP == nil {
		cfg.ClientIP = remoteIP
	}
	cfg.Uploads = effectiveLimits(cfg.Uploads)
	if cfg.Store != nil {
		cfg.Store.SetUploadLimits(cfg.Uploads)
	}
	if c, ok := cfg.Store.(interface{ Now() time.Time }); ok {
		// A store shared by replicas has one clock for them all (the
		// database's): a tag's fetch time, stamped by one replica and
		// judged against tag_ttl by another, must not depend on how far
		// apart their own clocks are (one stepped ten minutes ahead saw
		// every tag as expired, and its own stamps held tags ten minutes
		// past tag_ttl on the others).
		for _, m := range cfg.Mirrors {
			m.now = c.Now
		}
	}
	h := &Handler{cfg: cfg, sigNow: time.Now, sigVouches: expiringSet{max: sigVouchesMax}, sigMisses: expiringSet{max: sigMissesMax},
		sigParents: digestRelation{ttl: sigVouchTTL}, sigVouchers: digestRelation{ttl: sigVoucherTTL}}
	if len(cfg.Mirrors) > 0 || len(cfg.LocalPrefixes) > 0 {
		spaces := make([]authscope.Namespace, 0, len(cfg.Mirrors))
		h.mirrors = map[string]*Mirror{}
		for _, m := range cfg.Mirrors {
			if h.mirrors[m.Prefix()] != nil {
				return nil, fmt.Errorf("mirror %s configured twice", m.Prefix())
			}
			m.attach(cfg.Observer)
			h.mirrors[m.Prefix()] = m
			spaces = append(spaces, m.Namespace())
		}
		names, err := authscope.NewNames(spaces, cfg.LocalPrefixes)
		if err != nil {
			return nil, err
		}
		h.names = names
	}
	return h, nil
}

// Serves reports whether path belongs to this handler: the distribution
// API under /v2, or under /<prefix>/v2 for a mirror's prefix or alias
// (containerd's hosts.toml without override_path), including every path
// that another server may read as one of those (MayReachAPI): those that
// do not parse get 404 NOT_FOUND here rather than reaching another
// handler.
func (h *Handler) Serves(path string) bool {
	return MayReachAPI(h.names, path)
}

// IsRegistryPath reports whether path belongs to the distribution API
// ("/v2" or below).
func IsRegistryPath(path string) bool {
	return path == "/v2" || len(path) >= 4 && path[:4] == "/v2/"
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	ow := &observedWriter{ResponseWriter: w}
	var body *countingBody
	if r.Body != nil && r.Body != http.NoBody {
		body = &countingBody{rc: r.Body}
		r.Body = body
	}
	rc := &request{op: OpNotFound}
	ow.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	// Manifests and blobs are bytes a pusher chose.
	authscope.InertContent(ow.Header())

	if err := h.dispatch(ow, r, rc); err != nil {
		h.writeError(ow, r, rc, err)
	}
	h.audit(ow, rc, ow.statusCode())

	if h.cfg.Observer != nil {
		var in int64
		if body != nil {
			in = body.n
		}
		h.cfg.Observer.ObserveRequest(rc.op, ow.statusCode(), in, ow.written, time.Since(start))
	}
}
