// Package front puts names, challenges and token scopes in front of an
// existing registry (zot, distribution, Harbor) that stores mirrored
// images under prefixes (`docker.io/library/debian`). Clients keep typing
// what they type of any mirror — a host alias, a `/<prefix>/v2/` or
// `/v2/<prefix>/` path, `?ns=`, or a bare `debian` — and the front maps
// each request to the backend's name, then rewrites the answer back into
// the client's view: challenges (realm, service, scope), upload
// `Location`, `Link` of tag pages, and the name in tag lists and error
// bodies. Everything else, blobs above all, streams through untouched.
//
// It is plain net/http middleware with the same name mapping
// (authscope.Names), target parsing (registry.ParseTarget), challenge
// format and token proxy (authscope.TokenProxy) as the registry itself, so
// a name resolves the same whichever of the two serves it.
package front

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/internal/logfield"
	"golang.org/x/sync/semaphore"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/registry"
)

// DefaultMaxRewrite bounds a response body the front rewrites (a tag list
// or an error) when Config leaves MaxRewrite at zero.
const DefaultMaxRewrite = 4 << 20

// DefaultRewriteBudget bounds the bytes of the bodies the front holds to
// rewrite at once, across its requests, when Config leaves RewriteBudget
// at zero.
const DefaultRewriteBudget = 64 << 20

// Config is what a Front needs.
type Config struct {
	// Namespaces are the prefixes the backend stores mirrored names under,
	// with the ways clients reach each (aliases, hosts, default, library
	// prefix). Defaults of well-known upstreams are applied
	// (Namespace.WithDefaults).
	Namespaces []authscope.Namespace
	// LocalPrefixes are names that go to the backend as typed even when a
	// namespace is the default.
	LocalPrefixes []string
	// TokenRealm is the backend's token service, where the token proxy
	// forwards. Required with ProxyToken.
	TokenRealm string
	// ProxyToken serves authscope.TokenPath and points the realm of every
	// Bearer challenge at it, so that token requests are translated to
	// backend names before they reach TokenRealm.
	ProxyToken bool
	// ProxyScheme ("http", "https") overrides the scheme of the proxy's
	// realm, which otherwise follows the request's TLS state.
	ProxyScheme string
	// Service replaces `service` in challenges; empty keeps the backend's.
	// The token proxy always asks for this service (or the `service` of
	// TokenRealm's query), never the one a client names, so ProxyToken
	// needs one of the two.
	Service string
	// MaxRewrite bounds the bodies the front rewrites; 0 means
	// DefaultMaxRewrite.
	MaxRewrite int64
	// RewriteBudget bounds the bytes of bodies held for rewriting at once
	// across all requests (a body is held whole, decoded and encoded
	// again: several times its size): a body takes its Content-Length,
	// or MaxRewrite when it has none, before its first byte is collected,
	// and waits while the budget is spent. 0 means DefaultRewriteBudget;
	// it is never less than MaxRewrite.
	RewriteBudget int64
	// TokenClient makes the token proxy's requests; nil: a default client.
	TokenClient *http.Client
	// Guesses bounds the logins the token service refuses, at the token
	// proxy (authscope.TokenProxy.Guesses); nil: no bound.
	Guesses *authscope.Guesses
	// ClientIP is a request's client address as the server determines
	// it, for Guesses; nil: RemoteAddr's.
	ClientIP func(*http.Request) string
	// Logger gets refused requests and rewrite failures. Nil: no logging.
	Logger *zap.Logger
}

// Front is the middleware; see Serve.
type Front struct {
	cfg      Config
	names    *authscope.Names
	proxy    *authscope.TokenProxy // nil unless ProxyToken
	log      *zap.Logger
	rewrites *semaphore.Weighted // RewriteBudget
}

// New checks cfg and returns its Front. Nothing is contacted.
func New(cfg Config) (*Front, error) {
	spaces := make([]authscope.Namespace, len(cfg.Namespaces))
	for i, ns := range cfg.Namespaces {
		spaces[i] = ns.WithDefaults()
	}
	names, err := authscope.NewNames(spaces, cfg.LocalPrefixes)
	if err != nil {
		return nil, err
	}
	if cfg.MaxRewrite <= 0 {
		cfg.MaxRewrite = DefaultMaxRewrite
	}
	if cfg.RewriteBudget <= 0 {
		cfg.RewriteBudget = DefaultRewriteBudget
	}
	cfg.RewriteBudget = max(cfg.RewriteBudget, cfg.MaxRewrite)
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	switch cfg.ProxyScheme {
	case "", "http", "https":
	default:
		return nil, fmt.Errorf("proxy scheme %q: must be http or https", cfg.ProxyScheme)
	}
	f := &Front{cfg: cfg, names: names, log: cfg.Logger, rewrites: semaphore.NewWeighted(cfg.RewriteBudget)}
	if cfg.ProxyToken {
		u, err := url.Parse(cfg.TokenRealm)
		if err != nil {
			return nil, fmt.Errorf("token realm %q: %w", cfg.TokenRealm, err)
		}
		f.proxy = &authscope.TokenProxy{Upstream: u, Service: cfg.Service, Names: names, Client: cfg.TokenClient, Logger: cfg.Logger.Named("token_proxy"),
			Guesses: cfg.Guesses, ClientIP: cfg.ClientIP}
		if err := f.proxy.Check(); err != nil {
			return nil, fmt.Errorf("token realm %q: %w", cfg.TokenRealm, err)
		}
	}
	return f, nil
}

// Names is the front's name mapping.
func (f *Front) Names() *authscope.Names { return f.names }

// Next is the handler behind the front, usually a reverse proxy to the
// backend registry (in Caddy, the next handler of the route).
type Next func(w http.ResponseWriter, r *http.Request) error

// Middleware adapts the front to a plain http.Handler chain.
func (f *Front) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = f.Serve(w, r, func(w http.ResponseWriter, r *http.Request) error {
			next.ServeHTTP(w, r)
			return nil
		})
	})
}

// frontKeys are the query keys the front reads and rewrites.
var frontKeys = []string{"ns", "from", "mount"}

// keyInOtherCase returns a key of q that spells one of frontKeys in
// another case (`NS`, `From`): the front would pass it on unread, and a
// backend that reads keys without regard to case would apply it
// untranslated.
func keyInOtherCase(q url.Values) (string, bool) {
	for k := range q {
		for _, fk := range frontKeys {
			if k != fk && strings.EqualFold(k, fk) {
				return k, true
			}
		}
	}
	return "", false
}

// Serve answers the token proxy's path itself, passes requests outside
// the registry API (and backends' extensions) to next as they came,
// refuses API paths that do not parse (with the token proxy, paths
// under /_oci too: registry.MayReachOwn) and names that do not map, and
// hands every other request to next in backend names with a writer that
// turns the answer back into the client's names. next's error is
// returned as it came.
func (f *Front) Serve(w http.ResponseWriter, r *http.Request, next Next) error {
	if f.proxy != nil && r.URL.Path == authscope.TokenPath {
		f.proxy.ServeHTTP(w, r)
		return nil
	}
	// The backend is another server: an API key of this one reaches it in
	// no header and no query value, as the token proxy also ensures.
	if err := authscope.CheckForwarded(r.Header, r.URL.RawQuery, nil, nil); err != nil {
		f.refuseCredentials(w, r, err)
		return nil
	}
	t, err := f.target(r)
	if err != nil {
		if registry.MayReachAPI(f.names, r.URL.Path) && !isExtension(r) ||
			f.proxy != nil && registry.MayReachOwn(r.URL.Path) {
			f.refusePath(w, r, t, err)
			return nil
		}
		// Outside the API, or an endpoint of the backend's own (zot's
		// /v2/_zot/ext/...): nothing to map.
		return f.passThrough(w, r, t.Via, next)
	}

	// A query Go does not read whole (a `;`, a bad escape, more than
	// 10,000 parameters) is refused, as the registry refuses it: passed
	// on as read, a backend would act on less than the client sent (a
	// push's tags dropped, answered 201); passed as it came, the backend
	// could find an `ns` or `from` the front missed.
	q, qerr := url.ParseQuery(r.URL.RawQuery)
	if qerr != nil {
		f.refuse(w, r, t, registry.NewError(http.StatusBadRequest, registry.CodeUnsupported,
			"the query string cannot be read: "+qerr.Error(), qerr))
		return nil
	}
	if k, ok := keyInOtherCase(q); ok {
		f.refuse(w, r, t, registry.NewError(http.StatusBadRequest, registry.CodeUnsupported,
			"query parameter "+strconv.Quote(k)+": ns, from and mount are lower case", nil))
		return nil
	}
	if r.Method == http.MethodConnect {
		// HTTP/2's extended CONNECT (a WebSocket), which a proxy
		// would turn into an upgrade at the backend.
		f.refuse(w, r, t, registry.NewError(http.StatusMethodNotAllowed, registry.CodeUnsupported, "the registry API does not switch protocols", nil))
		return nil
	}
	v := &view{front: f, req: r, via: t.Via, kind: t.Kind}
	br := r.Clone(r.Context())
	// The registry API never switches protocols. A backend that accepted
	// an upgrade here (a WebSocket, h2c) would make the connection a raw
	// tunnel to it, whose later requests the front would neither map nor
	// check; without Upgrade the request is served as the plain HTTP/1.1
	// request it also is (an h2c client carries on in HTTP/1.1).
	br.Header.Del("Upgrade")
	// A sign-in session of this server (oci_registry's OIDC on the same
	// host) is never the backend's business.
	authscope.DropSignInCookies(br.Header)
	queryChanged := false
	if q.Has("ns") {
		// The name below carries the namespace now; a backend that reads
		// ns (the distribution spec's proxying) must not apply it again.
		q.Del("ns")
		queryChanged = true
	}
	switch t.Kind {
	case registry.RoutePing:
		br.URL.Path = "/v2/"
	case registry.RouteCatalog:
		br.URL.Path = "/v2/_catalog"
	default:
		internal, err := f.names.Internal(t.Name, t.Via)
		switch {
		case errors.Is(err, authscope.ErrNamespaceUnknown):
			f.refuse(w, r, t, registry.NewError(http.StatusNotFound, registry.CodeNameUnknown, "namespace not served here", err))
			return nil
		case err != nil:
			f.refuse(w, r, t, registry.NewError(http.StatusBadRequest, registry.CodeNameInvalid, "invalid repository name", err))
			return nil
		}
		v.clientPrefix = strings.TrimSuffix(t.Base, t.Name)
		v.add(internal, t.Name)
		br.URL.Path = "/v2/" + internal + r.URL.Path[len(t.Base):]
		if from := q.Get("from"); from != "" {
			queryChanged = true
			if src, err := f.names.Internal(from, t.Via); err == nil {
				q.Set("from", src)
				v.add(src, from)
			} else {
				// As the registry does: an unmappable source loses only
				// the mount, and the backend opens a plain upload.
				q.Del("from")
				q.Del("mount")
			}
		}
	}
	br.URL.RawPath = ""
	if queryChanged {
		br.URL.RawQuery = q.Encode()
	}
	br.RequestURI = br.URL.RequestURI()
	// Bodies the front may rewrite must arrive uncompressed; registry
	// payloads are compressed layers or small JSON, so nothing is lost.
	br.Header.Del("Accept-Encoding")

	rw := &responseWriter{ResponseWriter: w, view: v, head: r.Method == http.MethodHead}
	defer rw.release() // also when next panics (a backend answer cut short)
	err = next(rw, br)
	if ferr := rw.finish(); ferr != nil && err == nil {
		err = ferr
	}
	return err
}

// refuseCredentials answers a request whose credentials must not reach
// the backend: two Authorization headers (which one counts would be up to
// the backend), or an API key of this server, which the backend does not
// know and must never see.
func (f *Front) refuseCredentials(w http.ResponseWriter, r *http.Request, err error) {
	e := registry.NewError(http.StatusUnauthorized, registry.CodeUnauthorized,
		"API keys are accepted by the registry that issued them, not by this front", err)
	if errors.Is(err, authscope.ErrAuthorizationRepeated) {
		e = registry.NewError(http.StatusBadRequest, registry.CodeUnauthorized, "send one Authorization header", err)
	}
	f.refuse(w, r, registry.Target{}, e)
}

// refuse answers a request the front will not pass on.
func (f *Front) refuse(w http.ResponseWriter, r *http.Request, t registry.Target, e *registry.Error) {
	w, r, finish := authscope.GuardUnreadBody(w, r)
	defer finish()
	reason := e.Message
	if e.Err != nil {
		reason = e.Err.Error()
	}
	f.log.Info("front refused request",
		logfield.String("repo", t.Name),
		zap.String("code", e.Code),
		zap.Int("status", e.Status),
		logfield.String("reason", reason),
		logfield.String("method", r.Method),
		logfield.String("uri", r.RequestURI),
		logfield.String("host", r.Host),
	)
	e.Render(w, r)
}
