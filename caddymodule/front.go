package caddymodule

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/registry/front"
)

func init() {
	caddy.RegisterModule(Front{})
}

// Front sits before `reverse_proxy` to a registry that already exists
// (zot, distribution, Harbor) and stores mirrored images under prefixes
// (`docker.io/library/debian`). Clients use the names they use with any
// mirror — a host alias, `/<prefix>/v2/` or `/v2/<prefix>/` paths, `?ns=`,
// bare names under a default prefix — and the front maps each to the
// backend's name, then rewrites the answer into the client's names:
// `WWW-Authenticate` (realm, service, scope), upload `Location`, `Link`
// of tag pages, and the name in tag lists and errors. Blobs and uploads
// stream through unbuffered. Requests outside the registry API pass on
// as they came; API paths the front cannot parse are answered 404.
//
// With token.proxy, the front also serves /_oci/token: token requests
// are translated to backend names before they reach the backend's token
// service, so its ACLs are written against backend names only.
type Front struct {
	// Mirrors are the prefixes the backend stores mirrored names under,
	// and how clients reach each. docker.io adds the aliases
	// registry-1.docker.io and index.docker.io and the library prefix
	// "library" itself.
	Mirrors []*FrontMirror `json:"mirrors,omitempty"`

	// LocalPrefixes are name prefixes passed to the backend as typed even
	// when a mirror is the default ("team" keeps team/app team/app).
	LocalPrefixes []string `json:"local_prefixes,omitempty"`

	// Token configures challenges and the token proxy. Without it,
	// challenges keep the backend's realm and service, with scopes in
	// the client's names.
	Token *FrontToken `json:"token,omitempty"`

	front  *front.Front
	logger *zap.Logger
	app    *App // this config's oci app
}

// FrontMirror is one prefix of the backend as clients name it: the name
// options of oci_registry's mirror, without an upstream (the backend
// fetches, or holds, the images).
type FrontMirror struct {
	// Prefix is the first component of the backend's names in this
	// namespace, e.g. "docker.io".
	Prefix string `json:"prefix"`

	// Aliases are other names of the upstream that clients send in `?ns=`
	// or as a `/<alias>/v2/` path prefix.
	Aliases []string `json:"aliases,omitempty"`

	// Hosts are request host names whose un-prefixed names belong here
	// (`docker.mirror.example/v2/debian/...` is docker.io/library/debian).
	Hosts []string `json:"hosts,omitempty"`

	// Default makes un-prefixed names on any other host belong here, as
	// Docker's `registry-mirrors` setting needs. At most one mirror is
	// the default; names under local_prefixes stay as typed.
	Default bool `json:"default,omitempty"`

	// LibraryPrefix is put before one-component names ("debian" ->
	// "library/debian"). Default: "library" for docker.io, none otherwise.
	LibraryPrefix string `json:"library_prefix,omitempty"`
}

// FrontToken is how the front treats the backend's token auth.
type FrontToken struct {
	// Realm is the backend's token service (docker_auth, Harbor's
	// /service/token), where the token proxy forwards token requests.
	// Required with Proxy.
	Realm string `json:"realm,omitempty"`

	// Service, when set, replaces `service` in challenges; by default the
	// backend's is kept. The token proxy always asks the token service
	// for this service, whatever a client names, so Proxy needs it (or a
	// `service` parameter in Realm).
	Service string `json:"service,omitempty"`

	// Proxy points the realm of every challenge at the front's
	// /_oci/token, which translates each scope from the name the client
	// typed to the backend's name and forwards to Realm. The token
	// service's answer passes back unchanged.
	Proxy bool `json:"proxy,omitempty"`

	// ProxyScheme ("http" or "https") sets the scheme of the proxy's
	// realm in challenges. By default it follows how the request reached
	// Caddy; set "https" when Caddy sits behind a TLS-terminating load
	// balancer.
	ProxyScheme string `json:"proxy_scheme,omitempty"`

	// LoginLimit bounds, at the token proxy, the logins the token
	// service refuses, per client address and account name, as
	// oci_registry's auth login_limit does: once a bound is used up a
	// token request with credentials is answered 429 and not forwarded.
	// On by default.
	LoginLimit *LoginLimit `json:"login_limit,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Front) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.oci_front",
		New: func() caddy.Module { return new(Front) },
	}
}

// Provision builds the name mapping and the token proxy. Nothing is
// contacted.
func (f *Front) Provision(ctx caddy.Context) error {
	f.logger = ctx.Logger()
	app, err := ctx.App(appID)
	if err != nil {
		return err
	}
	f.app = app.(*App)
	cfg, err := f.config()
	if err != nil {
		return err
	}
	cfg.Logger = f.logger
	f.front, err = front.New(cfg)
	return err
}

// config is the front's plain config.
func (f *Front) config() (front.Config, error) {
	var cfg front.Config
	for _, m := range f.Mirrors {
		if m == nil {
			return cfg, errors.New("empty mirror")
		}
		cfg.Namespaces = append(cfg.Namespaces, authscope.Namespace{
			Prefix:        m.Prefix,
			Aliases:       m.Aliases,
			Hosts:         m.Hosts,
			Default:       m.Default,
			LibraryPrefix: m.LibraryPrefix,
		})
	}
	cfg.LocalPrefixes = f.LocalPrefixes
	if t := f.Token; t != nil {
		cfg.TokenRealm = t.Realm
		cfg.ProxyToken = t.Proxy
		cfg.ProxyScheme = t.ProxyScheme
		cfg.Service = t.Service
		if t.Proxy {
			cfg.Guesses = t.LoginLimit.guesses()
		}
	}
	cfg.ClientIP = clientIP
	return cfg, nil
}

// Validate checks the config as Provision builds it.
func (f *Front) Validate() error {
	if len(f.Mirrors) == 0 {
		return errors.New("oci_front needs at least one mirror")
	}
	if t := f.Token; t != nil && t.Proxy && t.Realm == "" {
		return errors.New("token proxy needs the backend's token service as realm")
	}
	if t := f.Token; t != nil {
		if err := t.LoginLimit.validate(); err != nil {
			return fmt.Errorf("token: %w", err)
		}
	}
	if t := f.Token; t != nil && t.Realm != "" {
		if err := authscope.CheckServiceURL(t.Realm); err != nil {
			return fmt.Errorf("token realm: %w", err)
		}
	}
	cfg, err := f.config()
	if err != nil {
		return err
	}
	if _, err := front.New(cfg); err != nil {
		return fmt.Errorf("oci_front: %w", err)
	}
	return nil
}

// ServeHTTP maps the request to the backend's names and passes it to
// next with a writer that turns the answer back into the client's names.
// While a newer config takes over, HTTP/1 responses close their
// connection (reload.go).
//
// A request body the client spoiled (a chunked body that does not parse,
// one cut short, one over a request_body limit) fails next, usually
// reverse_proxy, which calls that a bad gateway: it is answered as the
// client's mistake instead, as oci_registry answers it.
func (f *Front) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	warnClientAddress(r, f.logger)
	body := watchBody(r)
	return body.blame(f.front.Serve(f.app.closeWhenReplaced(w, r), r, next.ServeHTTP))
}

// watchBody puts a clientBody in place of r's body; nil when r has none.
func watchBody(r *http.Request) *clientBody {
	if r.Body == nil || r.Body == http.NoBody {
		return nil
	}
	b := &clientBody{ReadCloser: r.Body}
	r.Body = b
	return b
}

// blame is err, the failure of a handler that read b, or the client's
// mistake (400, or 413 past a size limit) when reading b failed.
func (b *clientBody) blame(err error) error {
	if err == nil || b == nil {
		return err
	}
	if berr := b.failure(); berr != nil {
		if mbe := (*http.MaxBytesError)(nil); errors.As(berr, &mbe) {
			return caddyhttp.Error(http.StatusRequestEntityTooLarge, berr)
		}
		return caddyhttp.Error(http.StatusBadRequest, berr)
	}
	return err
}

// clientBody is a request body that remembers its first read error other
// than EOF. It is read by whichever goroutine next sends it from.
type clientBody struct {
	io.ReadCloser
	mu  sync.Mutex
	err error
}

func (b *clientBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		b.mu.Lock()
		if b.err == nil {
			b.err = err
		}
		b.mu.Unlock()
	}
	return n, err
}

func (b *clientBody) failure() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// Interface guards
var (
	_ caddy.Module                = (*Front)(nil)
	_ caddy.Provisioner           = (*Front)(nil)
	_ caddy.Validator             = (*Front)(nil)
	_ caddyhttp.MiddlewareHandler = (*Front)(nil)
	_ caddyfile.Unmarshaler       = (*Front)(nil)
)
