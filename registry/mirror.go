package registry

// Mirrored namespaces: an internal name under a mirror's prefix
// (`docker.io/library/debian`) is served read-only from the store and, on a
// miss, from the upstream registry (mirror_blobs.go, mirror_manifests.go).

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
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
	DefaultDialTimeout     = 10 * time.Second
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
	// UpstreamTimeout bounds the wait for upstream's answer: the response
	// headers of each request (blobs included), and a manifest, tag list
	// or referrers exchange as a whole, retries included. The client gets
	// a 504 when it passes. Default DefaultUpstreamTimeout.
	UpstreamTimeout time.Duration
	// BlobIdleTimeout: a blob fill that receives nothing for this long is
	// abandoned (a stalled transfer). Default DefaultBlobIdleTimeout.
	BlobIdleTimeout time.Duration
	// DialTimeout bounds connecting to upstream and its token service
	// (TCP, then TLS). Default DefaultDialTimeout.
	DialTimeout time.Duration
	// MaxBlobSize: a blob larger than this is not fetched (413
	// SIZE_INVALID): refused on upstream's declared size before a byte is
	// stored, or cut off when upstream does not declare it. 0: no limit.
	MaxBlobSize int64
	// MaxConcurrentFills caps the blob fills from upstream running at
	// once; a request that would start one more waits up to FillSlotWait
	// for a slot, then gets 429. Joining a fill in progress takes no
	// slot. Default DefaultMaxConcurrentFills.
	MaxConcurrentFills int
	// FillSlotWait: see MaxConcurrentFills. Default DefaultFillSlotWait.
	FillSlotWait time.Duration
	// MaxRetries: further attempts of an upstream request answered 429
	// or 5xx, per upstream URL. 0: the default (2); negative: none.
	MaxRetries int
	// RetryDelay: the wait before the first retry when upstream sent no
	// Retry-After, doubled for each later one. 0: the default (100ms).
	RetryDelay time.Duration
	// CAFile and InsecureSkipVerify: TLS to the upstream.
	CAFile             string
	InsecureSkipVerify bool
	// NotFoundTTL: a manifest or blob upstream said it does not have is
	// answered 404 from memory for this long, upstream not asked
	// (mirror_misses.go). Default DefaultNotFoundTTL; negative: off.
	NotFoundTTL time.Duration
	// MaxMissesPerClient: requests for content the store does not hold
	// that one client (user, else address) may send upstream per minute;
	// past it, 429. Default DefaultMissesPerClient; negative: no bound.
	MaxMissesPerClient int
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
	// UpstreamPrefix, if set, is put before every name upstream: with
	// prefix v and UpstreamPrefix vendor/tools, v/a/b is upstream's
	// vendor/tools/a/b, and upstream names outside vendor/tools/ have no
	// name here. Excludes LibraryPrefix (docker.io's default included).
	UpstreamPrefix string
	// Repositories, if set, are the upstream names (patterns, as in
	// access rules: team/**) this mirror serves; a request for any other
	// answers 404 NAME_UNKNOWN and upstream is never asked. Its
	// credentials then reach only these (zot's sync content prefix).
	Repositories []string
	// Prefetch: an image manifest a client GETs that had to come from
	// upstream starts the fills of its config and layers at once, a few
	// at a time, within half of MaxConcurrentFills (mirror_prefetch.go).
	Prefetch bool
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
	referrers     referrersCache // upstream's referrers indexes (mirror_referrers.go)
	slots         *fillSlots     // bounds concurrent blob fills
	declared      declaredSizes
	obs           MirrorObserver
	now           func() time.Time
	// repositories is cfg.Repositories spelled out once: serves runs on
	// every request.
	repositories []authscope.Pattern
	notFound     notFound   // upstream's recent "not found" answers
	misses       missBudget // each client's upstream requests for misses
	// copy: a sync_into's source (NewCopySource), whose tags are local
	// content no pull fills on demand.
	copy bool
	// prefetching: "repo@digest" of the manifests whose prefetch runs.
	prefetching sync.Map
}

// MirrorObserver is implemented by an Observer that also wants mirror
// metrics. registry is the mirror's prefix; every label is a fixed string
// or a configured prefix, never user input.
type MirrorObserver interface {
	// MirrorLookup: a blob, manifest or referrers request ("blob",
	// "manifest", "referrers") answered from the store, or for referrers
	// from the answer kept (hit), or not.
	MirrorLookup(registry, kind string, hit bool)
	// MirrorBytes: bytes sent to clients from the store ("cache") and
	// bytes fetched from upstream ("upstream").
	MirrorBytes(registry, source string, n int64)
	// UpstreamRequest: one HTTP exchange with upstream; status 0 is a
	// connection failure.
	UpstreamRequest(registry, method string, status int)
	// UpstreamWait: how long upstream took to send the headers of one
	// answer, by what was asked ("manifest", "blob", "token", "other").
	UpstreamWait(registry, kind string, wait time.Duration)
	// MirrorFill: one blob fill ended (err nil: committed).
	MirrorFill(registry string, size int64, d time.Duration, err error)
}

type nopMirrorObserver struct{}

func (nopMirrorObserver) MirrorLookup(string, string, bool)              {}
func (nopMirrorObserver) MirrorBytes(string, string, int64)              {}
func (nopMirrorObserver) UpstreamRequest(string, string, int)            {}
func (nopMirrorObserver) UpstreamWait(string, string, time.Duration)     {}
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
	if cfg.UpstreamPrefix != "" {
		if !authscope.ValidName(cfg.UpstreamPrefix) {
			return nil, fmt.Errorf("mirror %s: upstream_prefix %q is not a repository name prefix", cfg.Prefix, cfg.UpstreamPrefix)
		}
		if cfg.LibraryPrefix != "" {
			return nil, fmt.Errorf("mirror %s: library_prefix and upstream_prefix are exclusive", cfg.Prefix)
		}
	}
	ns := authscope.Namespace{Prefix: cfg.Prefix, Aliases: cfg.Aliases, LibraryPrefix: cfg.LibraryPrefix}.WithDefaults()
	cfg.Aliases, cfg.LibraryPrefix = ns.Aliases, ns.LibraryPrefix
	if cfg.UpstreamPrefix != "" {
		cfg.LibraryPrefix = "" // every upstream name has two components or more
	}
	return newMirror(withDefaults(cfg))
}

// NewCopySource is the upstream side of a `sync_into`: an upstream
// registry whose repositories are copied into local names under
// localPrefix (which may have several components) by scheduled sync,
// through the same fetch and store paths as a mirror. It is no
// namespace: the handler never routes a request to it, and what it
// stores is local content (pushable, never evicted as a mirror's).
func NewCopySource(localPrefix string, cfg MirrorConfig) (*Mirror, error) {
	if !authscope.ValidName(localPrefix) {
		return nil, fmt.Errorf("sync_into %q: not a repository name prefix", localPrefix)
	}
	if len(cfg.Upstreams) == 0 {
		return nil, fmt.Errorf("sync_into %s: no upstream URL", localPrefix)
	}
	cfg.Prefix = localPrefix
	cfg.Aliases, cfg.Hosts, cfg.Default, cfg.LibraryPrefix, cfg.UpstreamPrefix = nil, nil, false, "", ""
	m, err := newMirror(withDefaults(cfg))
	if err != nil {
		return nil, err
	}
	m.copy = true
	return m, nil
}

// withDefaults fills what cfg leaves at zero.
func withDefaults(cfg MirrorConfig) MirrorConfig {
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
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.MaxBlobSize < 0 {
		cfg.MaxBlobSize = 0
	}
	if cfg.MaxConcurrentFills <= 0 {
		cfg.MaxConcurrentFills = DefaultMaxConcurrentFills
	}
	if cfg.FillSlotWait <= 0 {
		cfg.FillSlotWait = DefaultFillSlotWait
	}
	if cfg.NotFoundTTL == 0 {
		cfg.NotFoundTTL = DefaultNotFoundTTL
	}
	if cfg.MaxMissesPerClient == 0 {
		cfg.MaxMissesPerClient = DefaultMissesPerClient
	}
	return cfg
}

// newMirror builds the mirror of a checked, defaulted cfg.
func newMirror(cfg MirrorConfig) (*Mirror, error) {
	attempts := 0 // the client's default
	switch {
	case cfg.MaxRetries < 0:
		attempts = 1
	case cfg.MaxRetries > 0:
		attempts = cfg.MaxRetries + 1
	}
	m := &Mirror{cfg: cfg, slots: newFillSlots(cfg.MaxConcurrentFills), obs: nopMirrorObserver{}, now: time.Now}
	m.notFound.ttl = max(cfg.NotFoundTTL, 0)
	m.misses.perMinute = max(cfg.MaxMissesPerClient, 0)
	for _, p := range cfg.Repositories {
		compiled, err := authscope.CompilePattern(p)
		if err != nil {
			return nil, fmt.Errorf("mirror %s: repositories: %w", cfg.Prefix, err)
		}
		m.repositories = append(m.repositories, compiled)
	}
	prefix := cfg.Prefix
	c, err := upstream.New(upstream.Config{
		Attempts:           attempts,
		RetryDelay:         cfg.RetryDelay,
		URLs:               cfg.Upstreams,
		Username:           cfg.Username,
		Password:           cfg.Password,
		CAFile:             cfg.CAFile,
		InsecureSkipVerify: cfg.InsecureSkipVerify,
		DialTimeout:        cfg.DialTimeout,
		// Blob fills wait for headers as long as the small exchanges wait
		// for everything.
		ResponseHeaderTimeout: cfg.UpstreamTimeout,
		Transport:             cfg.Transport,
		Logger:                cfg.Logger,
		OnResponse:            func(method string, status int) { m.obs.UpstreamRequest(prefix, method, status) },
		OnWait:                func(kind string, wait time.Duration) { m.obs.UpstreamWait(prefix, kind, wait) },
		OnAnswer:              m.noteAnswer,
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

// serves reports whether the mirror serves an internal name: every name,
// or those whose upstream name its Repositories match.
func (m *Mirror) serves(internal string) bool {
	if len(m.cfg.Repositories) == 0 {
		return true
	}
	name := m.upstreamName(internal)
	for _, p := range m.repositories {
		if p.Match(name) {
			return true
		}
	}
	return false
}

// ServesUpstream reports whether the mirror serves upstream's repository
// repo, as its pulls and its sync name it (one-component names take the
// library prefix).
func (m *Mirror) ServesUpstream(repo string) bool {
	name, ok := m.internalName(repo)
	return ok && m.serves(name)
}

// canonical is upstream's name of repo: one-component names get the
// mirror's library prefix ("alpine" is "library/alpine" on Docker Hub),
// as a client's pull of the short name does.
func (m *Mirror) canonical(repo string) string {
	if m.cfg.LibraryPrefix != "" && !strings.Contains(repo, "/") {
		return m.cfg.LibraryPrefix + "/" + repo
	}
	return repo
}

// internalName is the internal name of upstream's repository repo (as
// upstream or a sync content names it); false when the mirror has none
// for it: outside its upstream prefix.
func (m *Mirror) internalName(repo string) (string, bool) {
	if up := m.cfg.UpstreamPrefix; up != "" {
		rest, ok := strings.CutPrefix(repo, up+"/")
		return m.cfg.Prefix + "/" + rest, ok && rest != ""
	}
	return m.cfg.Prefix + "/" + m.canonical(repo), true
}

// upstreamName is the repository name upstream knows an internal name by.
func (m *Mirror) upstreamName(internal string) string {
	rest := strings.TrimPrefix(internal, m.cfg.Prefix+"/")
	if m.cfg.UpstreamPrefix != "" {
		return m.cfg.UpstreamPrefix + "/" + rest
	}
	return rest
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

// errReadOnly names the mirror by its prefix only: where its upstream
// lives is the operator's business. why (authscope.Names.WhyMirrored)
// says how a name typed without the prefix landed in the mirror.
func errReadOnly(m *Mirror, why string) *Error {
	msg := fmt.Sprintf("%s is a read-only mirror: push to a name outside %s/", m.cfg.Prefix, m.cfg.Prefix)
	if why != "" {
		msg = fmt.Sprintf("%s is a read-only mirror: %s", m.cfg.Prefix, why)
	}
	return newError(http.StatusMethodNotAllowed, CodeUnsupported, msg, nil)
}

// staleWarning marks a response served from the store because upstream
// failed (RFC 7234's warn-code 110).
const staleWarning = `110 - "Response is Stale"`

// Failures of upstream content that the upstream client cannot see.
var (
	// errUpstreamStalled: a blob transfer received nothing in time (no
	// headers within UpstreamTimeout, or no byte within BlobIdleTimeout).
	// It is a timeout (504), as a deadline is.
	errUpstreamStalled = fmt.Errorf("upstream blob transfer stalled: %w", context.DeadlineExceeded)
	// errUpstreamManifest: upstream's manifest is not exactly one
	// manifest (truncated, padded, of another type, of another length).
	errUpstreamManifest = errors.New("upstream sent an invalid manifest")
)

// upstreamError turns a failed upstream exchange into the client's error.
// kind is "blob" or "manifest" and picks the code of a plain 404. The
// client learns what went wrong in words of its own request; where
// upstream lives and what it or the network said stay in the cause, for
// the log.
func upstreamError(m *Mirror, kind string, err error) *Error {
	if e := storageFullError(err); e != nil {
		return e // upstream answered; the store had no room
	}
	if outOfFiles(err) {
		// This process could not open a file or a connection: not
		// upstream's failure (503, not 502).
		return errInternal(err)
	}
	if errors.Is(err, errMirrorBlobTooLarge) {
		return mirrorBlobTooLarge(m, err)
	}
	name := "upstream " + m.cfg.Prefix
	if timedOut(err) {
		return newError(http.StatusGatewayTimeout, CodeUnknown, name+" did not answer in time", err)
	}
	var ue *upstream.Error
	if !errors.As(err, &ue) {
		msg := name + " failed"
		switch {
		case errors.Is(err, errUpstreamDigest):
			msg = name + " sent content that does not match its digest"
		case errors.Is(err, errUpstreamManifest):
			msg = name + " sent an invalid manifest"
		case errors.Is(err, errUpstreamBlobSize):
			msg = name + " sent a blob of another size than its manifest declares"
		}
		return newError(http.StatusBadGateway, CodeUnknown, msg, err)
	}
	switch {
	case ue.Status == http.StatusNotFound:
		// A blob is BLOB_UNKNOWN whatever upstream's envelope says: the
		// answer to the mirror's HEAD has none, and a fill's GET, asked
		// instead of that HEAD on a cold miss, must answer the same.
		code := CodeBlobUnknown
		if kind != "blob" {
			code = CodeManifestUnknown
			switch ue.Code {
			case CodeNameUnknown, CodeManifestUnknown, CodeBlobUnknown:
				code = ue.Code
			}
		}
		return newError(http.StatusNotFound, code, kind+" unknown to "+name, err)
	case ue.Status == http.StatusUnauthorized || ue.Status == http.StatusForbidden:
		// Upstream says no to the mirror's credentials: for the client the
		// name does not exist here (containerd then tries its next host).
		return newError(http.StatusNotFound, CodeNameUnknown, "repository not available from "+name, err)
	case ue.Status == http.StatusTooManyRequests:
		e := newError(http.StatusTooManyRequests, CodeTooManyRequests, name+" is limiting the mirror's requests; try again later", err)
		if ue.RetryAfter > 0 {
			e.withHeader("Retry-After", authscope.RetryAfter(ue.RetryAfter))
		}
		return e
	case ue.Status == 0:
		return newError(http.StatusBadGateway, CodeUnknown, name+" unreachable", err)
	default:
		return newError(http.StatusBadGateway, CodeUnknown, fmt.Sprintf("%s answered %d", name, ue.Status), err)
	}
}

// timedOut reports whether err is upstream not answering in time: a
// deadline, a stalled transfer, a dial or response header timeout.
func timedOut(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// temporary reports whether err leaves room for a cached answer: anything
// but upstream's own word that the content is not there (or not for the
// mirror). A manifest upstream sent broken is its failure, not news about
// the tag.
func temporary(err error) bool {
	var ue *upstream.Error
	if errors.As(err, &ue) {
		return ue.Temporary()
	}
	return true
}
