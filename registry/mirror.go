package registry

// Mirrored namespaces: an internal name under a mirror's prefix
// (`docker.io/library/debian`) is served read-only from the store and, on a
// miss, from the upstream registry (mirror_blobs.go, mirror_manifests.go).

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/registry/upstream"
)

// Defaults of a MirrorConfig.
const (
	DefaultTagTTL          = 5 * time.Minute
	DefaultStaleIfError    = 24 * time.Hour
	DefaultUpstreamTimeout = 20 * time.Second
	DefaultBlobIdleTimeout = 60 * time.Second
)

// MirrorConfig is one mirrored upstream registry.
type MirrorConfig struct {
	// Prefix is the first component of the internal names it serves
	// ("docker.io").
	Prefix string
	// Upstreams are the registry URLs, tried in order. Default:
	// https://registry-1.docker.io for docker.io, https://<prefix> else.
	Upstreams []string
	// Username and Password for the upstream (anonymous when empty).
	Username, Password string
	// TagTTL: a tag fetched less than this long ago is served without
	// asking upstream. Default DefaultTagTTL.
	TagTTL time.Duration
	// StaleIfError: how long past its TTL a cached tag is still served
	// when upstream fails. Default DefaultStaleIfError.
	StaleIfError time.Duration
	// UpstreamTimeout bounds one manifest, tag list or referrers
	// exchange with upstream, retries included. Default
	// DefaultUpstreamTimeout.
	UpstreamTimeout time.Duration
	// BlobIdleTimeout: a blob fill that receives nothing for this long is
	// abandoned. Default DefaultBlobIdleTimeout.
	BlobIdleTimeout time.Duration
	// CAFile and InsecureSkipVerify: TLS to the upstream.
	CAFile             string
	InsecureSkipVerify bool
	// Aliases are other names of the upstream in `?ns=` and
	// `/<alias>/v2/` (docker.io adds registry-1.docker.io and
	// index.docker.io on its own).
	Aliases []string
	// Hosts are request hosts whose un-prefixed names belong here.
	Hosts []string
	// Default makes un-prefixed names on other hosts belong here (Docker's
	// registry-mirrors).
	Default bool
	// LibraryPrefix is put before one-component names ("library" for
	// docker.io, by default).
	LibraryPrefix string
	// Transport overrides the HTTP transport to upstream (tests).
	Transport http.RoundTripper
	// Logger gets the upstream client's retries, failovers and token
	// trouble, with the upstream's URL. Nil means no logging.
	Logger *zap.Logger
}

// Mirror is a configured mirror: its namespace and its upstream client.
type Mirror struct {
	cfg    MirrorConfig
	client *upstream.Client
	// revalidations: one upstream exchange per name+reference at a time.
	revalidations singleflight.Group
	obs           MirrorObserver
	now           func() time.Time
}

// MirrorObserver is implemented by an Observer that also wants mirror
// metrics. registry is the mirror's prefix; every label is a fixed string
// or a configured prefix, never user input.
type MirrorObserver interface {
	// MirrorLookup: a blob or manifest request ("blob", "manifest")
	// answered from the store (hit) or not.
	MirrorLookup(registry, kind string, hit bool)
	// MirrorBytes: bytes sent to clients from the store ("cache") and
	// bytes fetched from upstream ("upstream").
	MirrorBytes(registry, source string, n int64)
	// UpstreamRequest: one HTTP exchange with upstream; status 0 is a
	// connection failure.
	UpstreamRequest(registry, method string, status int)
	// MirrorFill: one blob fill ended (err nil: committed).
	MirrorFill(registry string, size int64, d time.Duration, err error)
}

type nopMirrorObserver struct{}

func (nopMirrorObserver) MirrorLookup(string, string, bool)              {}
func (nopMirrorObserver) MirrorBytes(string, string, int64)              {}
func (nopMirrorObserver) UpstreamRequest(string, string, int)            {}
func (nopMirrorObserver) MirrorFill(string, int64, time.Duration, error) {}

// DefaultUpstream returns the upstream URL of a prefix with no configured
// one.
func DefaultUpstream(prefix string) string {
	switch prefix {
	case "docker.io":
		return "https://registry-1.docker.io"
	default:
		return "https://" + prefix
	}
}

// NewMirror applies defaults and checks cfg. Nothing is contacted.
func NewMirror(cfg MirrorConfig) (*Mirror, error) {
	if !authscope.ValidName(cfg.Prefix) || strings.Contains(cfg.Prefix, "/") {
		return nil, fmt.Errorf("mirror prefix %q: must be one name component such as docker.io", cfg.Prefix)
	}
	if len(cfg.Upstreams) == 0 {
		cfg.Upstreams = []string{DefaultUpstream(cfg.Prefix)}
	}
	ns := authscope.Namespace{Prefix: cfg.Prefix, Aliases: cfg.Aliases, LibraryPrefix: cfg.LibraryPrefix}.WithDefaults()
	cfg.Aliases, cfg.LibraryPrefix = ns.Aliases, ns.LibraryPrefix
	if cfg.TagTTL <= 0 {
		cfg.TagTTL = DefaultTagTTL
	}
	if cfg.StaleIfError < 0 {
		cfg.StaleIfError = 0
	} else if cfg.StaleIfError == 0 {
		cfg.StaleIfError = DefaultStaleIfError
	}
	if cfg.UpstreamTimeout <= 0 {
		cfg.UpstreamTimeout = DefaultUpstreamTimeout
	}
	if cfg.BlobIdleTimeout <= 0 {
		cfg.BlobIdleTimeout = DefaultBlobIdleTimeout
	}
	m := &Mirror{cfg: cfg, obs: nopMirrorObserver{}, now: time.Now}
	prefix := cfg.Prefix
	c, err := upstream.New(upstream.Config{
		URLs:               cfg.Upstreams,
		Username:           cfg.Username,
		Password:           cfg.Password,
		CAFile:             cfg.CAFile,
		InsecureSkipVerify: cfg.InsecureSkipVerify,
		Transport:          cfg.Transport,
		Logger:             cfg.Logger,
		OnResponse:         func(method string, status int) { m.obs.UpstreamRequest(prefix, method, status) },
	})
	if err != nil {
		return nil, fmt.Errorf("mirror %s: %w", prefix, err)
	}
	m.client = c
	return m, nil
}

// Prefix is the mirror's namespace prefix.
func (m *Mirror) Prefix() string { return m.cfg.Prefix }

// Namespace is how authscope.Names sees the mirror.
func (m *Mirror) Namespace() authscope.Namespace {
	return authscope.Namespace{
		Prefix:        m.cfg.Prefix,
		Aliases:       m.cfg.Aliases,
		Hosts:         m.cfg.Hosts,
		Default:       m.cfg.Default,
		LibraryPrefix: m.cfg.LibraryPrefix,
	}
}

// attach points the mirror's metrics at the handler's observer; NewHandler
// calls it once, before any request.
func (m *Mirror) attach(obs Observer) {
	if mo, ok := obs.(MirrorObserver); ok {
		m.obs = mo
	}
}

// upstreamName is the repository name upstream knows an internal name by.
func (m *Mirror) upstreamName(internal string) string {
	return strings.TrimPrefix(internal, m.cfg.Prefix+"/")
}

// mirrorFor returns the mirror serving an internal name, or nil (local).
func (h *Handler) mirrorFor(internal string) *Mirror {
	if h.names == nil {
		return nil
	}
	ns := h.names.Lookup(internal)
	if ns == nil {
		return nil
	}
	return h.mirrors[ns.Prefix]
}

// Mirrored reports whether an internal name belongs to a mirror: what
// only such repositories link is mirrored content, which a size-limited
// store may evict (cache.MirrorCache).
func (h *Handler) Mirrored(repo string) bool { return h.mirrorFor(repo) != nil }

// mirrorRoutes are the operations a mirror serves; every other operation
// on a mirrored name is refused as read-only.
var mirrorRoutes = map[string]handlerFunc{
	OpManifestGet:  (*Handler).mirrorManifestGet,
	OpManifestHead: (*Handler).mirrorManifestGet,
	OpBlobGet:      (*Handler).mirrorBlobGet,
	OpBlobHead:     (*Handler).mirrorBlobGet,
	OpTagsList:     (*Handler).mirrorTagsList,
	OpReferrers:    (*Handler).mirrorReferrers,
}

func errReadOnly(m *Mirror) *Error {
	return newError(http.StatusMethodNotAllowed, CodeUnsupported,
		fmt.Sprintf("%s is a read-only mirror of %s: push to a name outside %s/", m.cfg.Prefix, m.cfg.Upstreams[0], m.cfg.Prefix), nil)
}

// staleWarning marks a response served from the store because upstream
// failed (RFC 7234's warn-code 110).
const staleWarning = `110 - "Response is Stale"`

// upstreamError turns a failed upstream exchange into the client's error.
// kind is "blob" or "manifest" and picks the code of a plain 404.
func upstreamError(m *Mirror, kind string, err error) *Error {
	if e := storageFullError(err); e != nil {
		return e // upstream answered; the store had no room
	}
	var ue *upstream.Error
	if !errors.As(err, &ue) {
		if errors.Is(err, errUpstreamDigest) {
			return newError(http.StatusBadGateway, CodeUnknown, "upstream "+m.cfg.Prefix+" sent content that does not match its digest", err)
		}
		return newError(http.StatusBadGateway, CodeUnknown, "upstream "+m.cfg.Prefix+" failed", err)
	}
	msg := "upstream " + m.cfg.Prefix + ": " + ue.Error()
	switch {
	case ue.Status == http.StatusNotFound:
		code := ue.Code
		if code == "" {
			code = CodeManifestUnknown
			if kind == "blob" {
				code = CodeBlobUnknown
			}
		}
		return newError(http.StatusNotFound, code, msg, err)
	case ue.Status == http.StatusUnauthorized || ue.Status == http.StatusForbidden:
		// Upstream says no to the mirror's credentials: for the client the
		// name does not exist here (containerd then tries its next host).
		return newError(http.StatusNotFound, CodeNameUnknown, msg, err)
	case ue.Status == http.StatusTooManyRequests:
		return newError(http.StatusTooManyRequests, CodeTooManyRequests, msg, err)
	case ue.Status == 0 && errors.Is(ue.Err, context.DeadlineExceeded):
		return newError(http.StatusGatewayTimeout, CodeUnknown, msg, err)
	case ue.Temporary():
		return newError(http.StatusBadGateway, CodeUnknown, msg, err)
	default:
		code := ue.Code
		if code == "" {
			code = CodeUnknown
		}
		return newError(http.StatusBadGateway, code, msg, err)
	}
}

// temporary reports whether err leaves room for a cached answer.
func temporary(err error) bool {
	var ue *upstream.Error
	if errors.As(err, &ue) {
		return ue.Temporary()
	}
	return !errors.Is(err, errUpstreamDigest)
}
