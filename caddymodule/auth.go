package caddymodule

// Auth config of oci_registry: JSON, Caddyfile, and provisioning into an
// authscope.Authorizer and token proxy. The decisions live in authscope.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/internal/configfile"
	"github.com/caddy-oci/caddy-oci/registry"
)

// DefaultFailDelay is waited after a failed Basic login when FailDelay is
// left out.
const DefaultFailDelay = time.Second

// Auth is who may use the registry. Without it, everyone may do
// everything.
type Auth struct {
	// Htpasswd is the path of an htpasswd file whose users may log in
	// with Basic credentials. Only bcrypt hashes (`htpasswd -B`) are
	// accepted.
	Htpasswd string `json:"htpasswd,omitempty"`

	// FailDelay is how long a failed Basic login waits before it is
	// answered, to slow down password guessing. Default: 1s.
	FailDelay caddy.Duration `json:"fail_delay,omitempty"`

	// LoginLimit bounds password guessing, whatever the parallelism:
	// failed logins (htpasswd, LDAP, API keys, and at the token proxy the
	// token service's refusals) per client address and per account name.
	// Once a bound is used up the login is answered 429 with Retry-After
	// without its password being checked. On by default.
	LoginLimit *LoginLimit `json:"login_limit,omitempty"`

	// Realm names the realm of Basic challenges. Default: "registry".
	Realm string `json:"realm,omitempty"`

	// Token accepts bearer tokens from a Docker token service
	// (docker_auth or any that follows the Docker token spec). Under
	// token auth the token's access claim decides; Repositories, Groups
	// and Admin still apply to htpasswd users and anonymous callers.
	Token *TokenAuth `json:"token,omitempty"`

	// Repositories maps repository patterns (internal names; `**` any
	// number of components, `*` one) to who may read, create (push new
	// tags and blobs), update (move an existing tag) and delete. For a
	// repository only the longest matching pattern counts. Mirrored
	// namespaces never take pushes.
	Repositories map[string]authscope.RepositoryPolicy `json:"repositories,omitempty"`

	// Groups maps group names to users, by user name, whatever they
	// signed in with. With OIDC or workload tokens, policies may also
	// name groups that only the identity provider's groups claim holds.
	Groups map[string][]string `json:"groups,omitempty"`

	// Admin users and groups may do their actions (default: all)
	// everywhere.
	Admin *authscope.AdminPolicy `json:"admin,omitempty"`

	// OIDC signs users in at an identity provider at /_oci/auth/, where
	// they make API keys for CI. Their groups claim is matched by the
	// access policies like Groups.
	OIDC *OIDC `json:"oidc,omitempty"`

	// APIKeys sets the lifetimes of API keys (on whenever OIDC is).
	APIKeys *APIKeysConfig `json:"api_keys,omitempty"`

	// Workload accepts OIDC tokens that CI systems issue to their jobs.
	Workload *Workload `json:"workload,omitempty"`

	// ClientCertificates makes a TLS client certificate that Caddy
	// verified (client_auth) the identity of requests without
	// credentials: its CN or a SAN the user, subject attributes (OU, O)
	// its groups.
	ClientCertificates *ClientCertificates `json:"client_certificates,omitempty"`

	// LDAP checks the Basic credentials of users the htpasswd file does
	// not list against an LDAP directory; its groups are matched by the
	// access rules like Groups.
	LDAP *LDAP `json:"ldap,omitempty"`

	// Guards keep paths of the site outside the registry's API (a
	// metrics route after oci_registry) to users the registry's own
	// credentials identify: oci_registry passes such a request on only
	// for them, so the bounds on password guessing (LoginLimit) and on
	// password checks at once hold there too. Caddy's basic_auth in front
	// of such a path has neither: every anonymous request with made-up
	// credentials is one bcrypt comparison.
	Guards []PathGuard `json:"guards,omitempty"`

	audit *zap.Logger // the "audit" logger of the config; nil: Caddy's default log
	// clock is the clock of the times sign-in and API keys write and
	// judge (a sign-in's state, a session's and a key's expiry): the
	// cluster's on replicas (sharedCluster.now); nil: this process's.
	clock func() time.Time
}

// PathGuard is a path oci_registry passes on to the next handler only for
// some users.
type PathGuard struct {
	// Path is the request path guarded, matched as Caddy's path matcher
	// matches it (any case, the path cleaned; * a wildcard): the same
	// as the matcher of the route it guards.
	Path string `json:"path"`
	// Users may reach Path; empty: every user the registry identifies.
	// Anonymous callers never may.
	Users []string `json:"users,omitempty"`
}

// LoginLimit bounds failed logins (auth login_limit).
type LoginLimit struct {
	// PerClient is how many failed logins one client address (as Caddy
	// determines it behind trusted_proxies; an IPv6 client by its /64)
	// may make per Window. Default: 10; -1: no bound.
	PerClient int `json:"per_client,omitempty"`

	// PerAccount is how many failed logins one user name may take per
	// Window from all addresses together. Addresses the user logged in
	// from before (within 30 days) are exempt, so a flood from elsewhere
	// does not lock the user out. Default: 60; -1: no bound.
	PerAccount int `json:"per_account,omitempty"`

	// Window is the period of both bounds: failures are forgotten
	// gradually over it. Default: 1m.
	Window caddy.Duration `json:"window,omitempty"`
}

// guesses is the limiter l configures; nil when both bounds are off.
func (l *LoginLimit) guesses() *authscope.Guesses {
	var gl authscope.GuessLimits
	if l != nil {
		gl = authscope.GuessLimits{PerClient: l.PerClient, PerAccount: l.PerAccount, Window: time.Duration(l.Window)}
	}
	if gl.PerClient < 0 && gl.PerAccount < 0 {
		return nil
	}
	g := authscope.NewGuesses(gl)
	g.Refused = loginThrottled
	return g
}

func (l *LoginLimit) validate() error {
	if l == nil {
		return nil
	}
	if l.PerClient < -1 || l.PerAccount < -1 {
		return errors.New("login_limit: per_client and per_account must be positive, or off (-1)")
	}
	if l.Window < 0 {
		return errors.New("login_limit: window must not be negative")
	}
	return nil
}

// auditLog names the logger audit events go to. Caddy picks the logs a
// logger writes to by the module ID it is made for, so the audit logger
// is made for this ID: a log that includes (or excludes) "audit" then
// gets (or loses) them. caddy.Log().Named("audit") would reach the
// default log alone.
type auditLog struct{}

func (auditLog) CaddyModule() caddy.ModuleInfo { return caddy.ModuleInfo{ID: "audit"} }

// TokenAuth configures bearer tokens.
type TokenAuth struct {
	// Realm is the token service's URL, as clients should ask it for
	// tokens.
	Realm string `json:"realm"`

	// Service is this registry's name at the token service: sent in
	// challenges, and required in each token's audience.
	Service string `json:"service"`

	// Issuer must equal each token's `iss`.
	Issuer string `json:"issuer"`

	// TrustedCerts are PEM files of certificates and public keys that
	// sign tokens. Tokens name their key by `kid` (RFC 7638 thumbprint or
	// libtrust fingerprint) or send a chain in `x5c` that must verify to
	// these certificates.
	TrustedCerts []string `json:"trusted_certs,omitempty"`

	// JWKS are JSON Web Key Set files of signing keys, matched by `kid`.
	JWKS []string `json:"jwks,omitempty"`

	// Leeway is the clock skew allowed on exp and nbf. Default: 30s.
	Leeway caddy.Duration `json:"leeway,omitempty"`

	// Proxy points challenges at this registry's /_oci/token, which
	// translates each scope from the name the client typed to the
	// internal name (as requests are mapped: mirror prefix, ns, host
	// alias, default mirror) and forwards to Realm. The token service's
	// ACLs then name internal names only.
	Proxy bool `json:"proxy,omitempty"`

	// ProxyScheme ("http" or "https") sets the scheme of the proxy's
	// realm in challenges. By default it follows how the request reached
	// Caddy; set "https" when Caddy sits behind a TLS-terminating load
	// balancer and receives plain HTTP.
	ProxyScheme string `json:"proxy_scheme,omitempty"`
}

// authRuntime is a provisioned Auth.
type authRuntime struct {
	guards     []guardRuntime
	authorizer *authscope.Authorizer
	proxy      *authscope.TokenProxy // nil unless Token.Proxy
	signIn     *authscope.SignIn     // nil unless OIDC
	directory  interface{ Close() }  // nil unless LDAP
}

// close releases what the runtime holds open (LDAP connections).
func (rt *authRuntime) close() {
	if rt != nil && rt.directory != nil {
		rt.directory.Close()
	}
}

// guardRuntime is a provisioned PathGuard.
type guardRuntime struct {
	match caddyhttp.MatchPath
	users []string
}

// guard decides a request for a path of Guards, answering it when it is
// refused; it returns the request to pass on (its credentials, which were
// for this server, removed), or nil when it answered. A path no guard
// names passes as it is.
func (rt *authRuntime) guard(w http.ResponseWriter, r *http.Request) *http.Request {
	if rt == nil {
		return r
	}
	if _, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); !ok {
		// Caddy's path matcher reads it; only requests outside a
		// Caddy server lack it.
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
	}
	for _, g := range rt.guards {
		// As the route's own path matcher matches (any case, the path
		// cleaned, escaped or not): /METRICS or //metrics reach the
		// route, so they must meet the guard.
		if ok, err := g.match.MatchWithError(r); err != nil || !ok {
			continue
		}
		r, err := rt.authorizer.AuthorizeUsers(r, g.users)
		if err == nil {
			r.Header.Del("Authorization")
			return r
		}
		w, _, finish := authscope.GuardUnreadBody(w, r)
		defer finish()
		var d *authscope.Denial
		if !errors.As(err, &d) {
			http.Error(w, "credentials cannot be checked now", http.StatusInternalServerError)
			return nil
		}
		if d.Challenge != "" {
			w.Header().Set("WWW-Authenticate", d.Challenge)
		}
		if d.RetryAfter > 0 {
			w.Header().Set("Retry-After", authscope.RetryAfter(d.RetryAfter))
		}
		http.Error(w, d.Message, d.Status)
		return nil
	}
	return r
}

// holdsAPIKey reports whether r carries an API key of this server
// (with sign-in, which makes them) in any header, query value or spelling. Workload
// tokens are not looked for: other services of the site may take tokens
// of the same CI issuer for their own audience.
func (rt *authRuntime) holdsAPIKey(r *http.Request) bool {
	if rt == nil || rt.signIn == nil {
		return false
	}
	return errors.Is(authscope.CheckForwarded(r.Header, r.URL.RawQuery, nil, nil), authscope.ErrOwnCredential)
}

// registryAuthorizer is what registry.Config takes; nil without auth.
func (rt *authRuntime) registryAuthorizer() registry.Authorizer {
	if rt == nil {
		return nil
	}
	return rt.authorizer
}

// canRead is registry.Config's CanRead; nil (allow all) without auth.
func (rt *authRuntime) canRead() func(*http.Request, string) bool {
	if rt == nil {
		return nil
	}
	return rt.authorizer.CanRead
}

func (rt *authRuntime) canPush() func(*http.Request, string) bool {
	if rt == nil {
		return nil
	}
	return rt.authorizer.CanPush
}

// serve answers the token proxy's path and, with OIDC, the sign-in
// pages under /_oci/auth/; false for other requests.
func (rt *authRuntime) serve(w http.ResponseWriter, r *http.Request) bool {
	switch {
	case rt == nil:
		return false
	case rt.proxy != nil && r.URL.Path == authscope.TokenPath:
		rt.proxy.ServeHTTP(w, r)
		return true
	case rt.signIn != nil && r.URL.Path == strings.TrimSuffix(authscope.AuthPath, "/"):
		http.Redirect(w, r, authscope.AuthPath, http.StatusMovedPermanently)
		return true
	case rt.signIn != nil && strings.HasPrefix(r.URL.Path, authscope.AuthPath):
		rt.signIn.ServeHTTP(w, r)
		return true
	}
	return false
}

// ownsPath reports whether path is one the runtime must answer though
// serve did not take it: with any endpoint under /_oci, every path a
// lenient server may read as under /_oci (registry.MayReachOwn).
func (rt *authRuntime) ownsPath(path string) bool {
	return rt != nil && (rt.proxy != nil || rt.signIn != nil) && registry.MayReachOwn(path)
}

// provision reads the files Auth names and builds the Authorizer; names
// is the registry's name mapping (nil without mirrors); store opens the
// handler's store (for API keys and the session key) on first use.
func (a *Auth) provision(names *authscope.Names, store func() (authRecords, error), logger *zap.Logger) (*authRuntime, error) {
	o := authscope.Options{
		FailDelay:  time.Duration(a.FailDelay),
		Guesses:    a.LoginLimit.guesses(),
		ClientIP:   clientIP,
		BasicRealm: a.Realm,
		Names:      names,
		Audit:      a.audit,
	}
	if o.Audit == nil {
		o.Audit = caddy.Log().Named("audit")
	}
	if o.Guesses != nil && store != nil {
		o.Guesses.Ledger = &recordsLedger{open: store}
		o.Guesses.LedgerFailed = ledgerFailedLogger(logger)
	}
	if o.FailDelay == 0 {
		o.FailDelay = DefaultFailDelay
	}
	if a.Htpasswd != "" {
		data, err := configfile.Read(a.Htpasswd)
		if err != nil {
			return nil, fmt.Errorf("htpasswd: %w", err)
		}
		if o.Htpasswd, err = authscope.ParseHtpasswd(data); err != nil {
			return nil, fmt.Errorf("htpasswd %s: %w", a.Htpasswd, err)
		}
	}
	if len(a.Repositories) > 0 || len(a.Groups) > 0 || a.Admin != nil {
		p, err := authscope.NewPolicy(authscope.PolicyConfig{
			Repositories: a.Repositories, Groups: a.Groups, Admin: a.Admin,
			ExternalGroups: a.OIDC != nil || a.Workload != nil || a.LDAP != nil && !a.LDAP.NoGroups ||
				a.ClientCertificates != nil && len(a.ClientCertificates.Groups) > 0,
		})
		if err != nil {
			return nil, fmt.Errorf("access policy: %w", err)
		}
		o.Policy = p
	}
	rt := &authRuntime{}
	for _, g := range a.Guards {
		// The matcher made once, as Caddy's route does: guard runs on
		// every request that passes the registry by.
		rt.guards = append(rt.guards, guardRuntime{match: caddyhttp.MatchPath{strings.ToLower(g.Path)}, users: g.Users})
	}
	if t := a.Token; t != nil {
		ks := authscope.NewKeySet()
		for _, f := range t.TrustedCerts {
			data, err := configfile.Read(f)
			if err != nil {
				return nil, fmt.Errorf("trusted_certs: %w", err)
			}
			if err := ks.AddPEM(data); err != nil {
				return nil, fmt.Errorf("trusted_certs %s: %w", f, err)
			}
		}
		for _, f := range t.JWKS {
			data, err := configfile.Read(f)
			if err != nil {
				return nil, fmt.Errorf("jwks: %w", err)
			}
			if err := ks.AddJWKS(data); err != nil {
				return nil, fmt.Errorf("jwks %s: %w", f, err)
			}
		}
		o.Token = &authscope.TokenVerifier{Keys: ks, Issuer: t.Issuer, Service: t.Service, Leeway: time.Duration(t.Leeway)}
		o.TokenRealm = t.Realm
		o.ProxyToken = t.Proxy
		o.ProxyScheme = t.ProxyScheme
		if t.Proxy {
			u, err := url.Parse(t.Realm)
			if err != nil {
				return nil, fmt.Errorf("token realm: %w", err)
			}
			rt.proxy = &authscope.TokenProxy{Upstream: u, Service: t.Service, Names: names, Logger: logger.Named("token_proxy"),
				Guesses: o.Guesses, ClientIP: clientIP}
			if err := rt.proxy.Check(); err != nil {
				return nil, fmt.Errorf("token realm: %w", err)
			}
		}
	}
	if a.OIDC != nil {
		p, err := a.provisionSignIn(store, o.Guesses, logger)
		if err != nil {
			return nil, err
		}
		rt.signIn, o.APIKeys = p.signIn, p.apiKeys
	}
	if w := a.Workload; w != nil {
		o.Workload = &authscope.WorkloadVerifier{
			Issuer: w.Issuer, Audience: w.Audience,
			Claims: authscope.ClaimMapping{Username: w.UsernameClaim, Groups: w.GroupsClaim},
		}
		if rt.proxy != nil {
			// Workload tokens are ours: the token service must not see them.
			rt.proxy.Withhold = o.Workload.Mine
		}
	}
	if c := a.ClientCertificates; c != nil {
		m := c.mapping()
		o.ClientCerts = &m
	}
	if a.LDAP != nil {
		d, err := a.LDAP.provision(logger)
		if err != nil {
			return nil, err
		}
		o.Directory, rt.directory = d, d
	}
	var err error
	if rt.authorizer, err = authscope.NewAuthorizer(o); err != nil {
		rt.close()
		return nil, err
	}
	return rt, nil
}

// validate checks what can be checked without reading files.
func (a *Auth) validate() error {
	if a.FailDelay < 0 {
		return errors.New("fail_delay must not be negative")
	}
	if err := a.LoginLimit.validate(); err != nil {
		return err
	}
	for _, g := range a.Guards {
		// The registry's own paths have their own rules; a guard there
		// would never be asked.
		if !strings.HasPrefix(g.Path, "/") || registry.IsRegistryPath(g.Path) || registry.MayReachOwn(g.Path) {
			return fmt.Errorf("guard %q: want a path of the site outside /v2/ and /_oci/", g.Path)
		}
	}
	if a.Htpasswd == "" && a.Token == nil && a.LDAP == nil && len(a.Repositories) == 0 {
		return errors.New("auth needs htpasswd, ldap, token or access rules")
	}
	if a.LDAP != nil {
		if err := a.LDAP.validate(); err != nil {
			return err
		}
	}
	if a.OIDC != nil {
		if err := a.OIDC.validate(); err != nil {
			return err
		}
	}
	if a.ClientCertificates != nil {
		if err := a.ClientCertificates.validate(a); err != nil {
			return err
		}
	}
	if a.APIKeys != nil {
		if a.OIDC == nil {
			return errors.New("api_keys needs oidc: keys are made by signed-in users")
		}
		if err := a.APIKeys.validate(); err != nil {
			return err
		}
		if a.APIKeys.GroupsFrom == keyGroupsFromLDAP && a.LDAP == nil {
			return errors.New("api_keys: groups_from ldap needs an ldap block")
		}
	}
	if w := a.Workload; w != nil {
		if err := w.validate(); err != nil {
			return err
		}
		// Tokens are told apart by their issuer and audience only: a
		// sign-in's ID tokens, or the token service's tokens, must not
		// pass for a CI job's.
		if a.OIDC != nil && sameIssuer(w.Issuer, a.OIDC.Issuer) && w.Audience == a.OIDC.ClientID {
			return errors.New("workload audience must differ from oidc client_id at the same issuer: sign-in ID tokens would pass as workload tokens")
		}
		if a.Token != nil && sameIssuer(w.Issuer, a.Token.Issuer) {
			return errors.New("workload issuer must differ from the token service's issuer")
		}
	}
	if t := a.Token; t != nil {
		if t.Realm == "" || t.Service == "" || t.Issuer == "" {
			return errors.New("token needs realm, service and issuer")
		}
		if err := authscope.CheckServiceURL(t.Realm); err != nil {
			return fmt.Errorf("token realm: %w", err)
		}
		if len(t.TrustedCerts) == 0 && len(t.JWKS) == 0 {
			return errors.New("token needs trusted_certs or jwks")
		}
		if t.Leeway < 0 {
			return errors.New("token leeway must not be negative")
		}
	}
	return nil
}

func sameIssuer(a, b string) bool {
	return strings.TrimSuffix(a, "/") == strings.TrimSuffix(b, "/")
}

// unmarshalAuth parses an `auth` block:
//
//	auth {
//		htpasswd   <file>
//		fail_delay <duration>
//		login_limit off | {
//			per_client  <n>|off
//			per_account <n>|off
//			window      <duration>
//		}
//		realm      <name>
//		guard      <path> [<user>...]
//		group      <name> <user>...
//		admin      [users <user>...] [groups <group>...] [actions <action>...]
//		access <pattern> {
//			anonymous <action>...
//			default   <action>...
//			user      <name> <action>...
//			group     <name> <action>...
//		}
//		oidc { ... }                # see unmarshalOIDC
//		api_keys { ... }            # see unmarshalAPIKeys
//		workload { ... }            # see unmarshalWorkload
//		client_certificates { ... } # see unmarshalClientCertificates
//		ldap { ... }                # see unmarshalLDAP
//		token {
//			realm         <url>
//			service       <name>
//			issuer        <name>
//			trusted_certs <file>...
//			jwks          <file>...
//			leeway        <duration>
//			proxy
//		}
//	}
//
// Actions are read, create, update and delete.
func unmarshalAuth(d *caddyfile.Dispenser) (*Auth, error) {
	a := &Auth{}
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	// Groups named by rules, checked once the whole block (which may
	// define them further down) has been read.
	var groupRefs []groupRef
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch sub := d.Val(); sub {
		case "guard":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return nil, d.Err("guard needs a path, then the users who may reach it (none: every signed-in user)")
			}
			a.Guards = append(a.Guards, PathGuard{Path: args[0], Users: args[1:]})
		case "htpasswd", "realm":
			var v string
			if !d.AllArgs(&v) {
				return nil, d.Errf("%s needs exactly one argument", sub)
			}
			if sub == "htpasswd" {
				a.Htpasswd = v
			} else {
				a.Realm = v
			}
		case "fail_delay":
			var v string
			if !d.AllArgs(&v) {
				return nil, d.ArgErr()
			}
			dur, err := durationArg(d, sub, v)
			if err != nil {
				return nil, err
			}
			a.FailDelay = dur
		case "login_limit":
			l, err := unmarshalLoginLimit(d, d.RemainingArgs())
			if err != nil {
				return nil, err
			}
			a.LoginLimit = l
		case "group":
			args := d.RemainingArgs()
			if len(args) < 2 {
				return nil, d.Err("group needs a name and at least one user")
			}
			if a.Groups == nil {
				a.Groups = map[string][]string{}
			}
			a.Groups[args[0]] = append(a.Groups[args[0]], args[1:]...)
		case "admin":
			if a.Admin == nil {
				a.Admin = &authscope.AdminPolicy{}
			}
			args := d.RemainingArgs()
			var into *[]string
			for _, arg := range args {
				switch arg {
				case "users":
					into = &a.Admin.Users
				case "groups":
					into = &a.Admin.Groups
				case "actions":
					into = &a.Admin.Actions
				default:
					if into == nil {
						return nil, d.Errf("admin: expected users, groups or actions before %q", arg)
					}
					if into == &a.Admin.Actions && !slices.Contains(authscope.AllActions, arg) {
						return nil, d.Errf("admin: unknown action %q (known: %s)", arg, strings.Join(authscope.AllActions, ", "))
					}
					if into == &a.Admin.Groups {
						groupRefs = append(groupRefs, groupRef{name: arg, in: "admin", at: positionOf(d)})
					}
					*into = append(*into, arg)
				}
			}
		case "access":
			var pat string
			if !d.NextArg() {
				return nil, d.Err("access needs a repository pattern")
			}
			pat = d.Val()
			if rest := d.RemainingArgs(); len(rest) > 0 {
				return nil, d.Errf("access %s %s: the rules go in a block, one per line: access %s { ... } with %q on a line of its own", pat, strings.Join(rest, " "), pat, strings.Join(rest, " "))
			}
			rp, refs, err := unmarshalAccess(d, pat)
			if err != nil {
				return nil, err
			}
			groupRefs = append(groupRefs, refs...)
			if a.Repositories == nil {
				a.Repositories = map[string]authscope.RepositoryPolicy{}
			}
			if _, dup := a.Repositories[pat]; dup {
				return nil, d.Errf("access %q given twice", pat)
			}
			a.Repositories[pat] = rp
		case "token":
			t, err := unmarshalToken(d)
			if err != nil {
				return nil, err
			}
			a.Token = t
		case "oidc":
			o, err := unmarshalOIDC(d)
			if err != nil {
				return nil, err
			}
			a.OIDC = o
		case "api_keys":
			k, err := unmarshalAPIKeys(d)
			if err != nil {
				return nil, err
			}
			a.APIKeys = k
		case "workload":
			w, err := unmarshalWorkload(d)
			if err != nil {
				return nil, err
			}
			a.Workload = w
		case "client_certificates":
			c, err := unmarshalClientCertificates(d)
			if err != nil {
				return nil, err
			}
			a.ClientCertificates = c
		case "ldap":
			l, err := unmarshalLDAP(d)
			if err != nil {
				return nil, err
			}
			a.LDAP = l
		default:
			return nil, d.Errf("unrecognized auth subdirective %q (known: htpasswd, fail_delay, login_limit, realm, group, admin, access, token, oidc, api_keys, workload, client_certificates, ldap)", sub)
		}
	}
	if a.OIDC == nil && a.Workload == nil && (a.LDAP == nil || a.LDAP.NoGroups) && a.ClientCertificates == nil {
		// As authscope.NewPolicy checks at provision, but at the line.
		for _, r := range groupRefs {
			if _, ok := a.Groups[r.name]; !ok {
				return nil, r.at.wrap(fmt.Errorf("%s: group %q is not defined; define it with \"group %s <user>...\" in auth (groups may come from an identity source only with oidc, workload, ldap or client_certificates)", r.in, r.name, r.name))
			}
		}
	}
	return a, nil
}

// unmarshalLoginLimit reads `login_limit off` or its block; args are
// those on its line.
func unmarshalLoginLimit(d *caddyfile.Dispenser, args []string) (*LoginLimit, error) {
	l := &LoginLimit{}
	if len(args) > 0 {
		if len(args) != 1 || args[0] != "off" {
			return nil, d.Errf("login_limit: expected off or a block, got %q", strings.Join(args, " "))
		}
		l.PerClient, l.PerAccount = -1, -1
		return l, nil
	}
	err := eachSubdirective(d, func(sub string, args []string) error {
		switch sub {
		case "per_client", "per_account":
			v, err := oneArg(d, sub, args)
			if err != nil {
				return err
			}
			n := -1
			if v != "off" {
				if n, err = strconv.Atoi(v); err != nil || n <= 0 {
					return d.Errf("login_limit %s: %q is not a positive number or off", sub, v)
				}
			}
			if sub == "per_client" {
				l.PerClient = n
			} else {
				l.PerAccount = n
			}
		case "window":
			v, err := oneArg(d, sub, args)
			if err != nil {
				return err
			}
			if l.Window, err = durationArg(d, "login_limit window", v); err != nil {
				return err
			}
			if l.Window <= 0 {
				return d.Errf("login_limit window: must be positive")
			}
		default:
			return d.Errf("unrecognized login_limit subdirective %q (known: per_client, per_account, window)", sub)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return l, nil
}

// groupRef is a group a rule names, and where.
type groupRef struct {
	name string
	in   string // "access <pattern>" or "admin"
	at   position
}

// unmarshalAccess reads the block of `access <pat>`, checking its actions
// at their lines; it returns the groups the block names.
func unmarshalAccess(d *caddyfile.Dispenser, pat string) (authscope.RepositoryPolicy, []groupRef, error) {
	var rp authscope.RepositoryPolicy
	var refs []groupRef
	nesting := d.Nesting()
	if !d.NextBlock(nesting) {
		if d.Val() == "}" {
			return rp, nil, nil // an empty block: nobody but admins
		}
		return rp, nil, d.Errf("access %s: needs a block of rules, e.g. access %s { ... } with \"anonymous read\" on a line of its own", pat, pat)
	}
	for more := true; more; more = d.NextBlock(nesting) {
		sub := d.Val()
		args := d.RemainingArgs()
		var actions []string
		switch sub {
		case "anonymous", "default":
			if len(args) == 0 {
				return rp, nil, d.Errf("access %s: %s needs at least one action", pat, sub)
			}
			actions = args
			if sub == "anonymous" {
				rp.Anonymous = append(rp.Anonymous, args...)
			} else {
				rp.Default = append(rp.Default, args...)
			}
		case "user", "group":
			if len(args) < 2 {
				return rp, nil, d.Errf("access %s: %s needs a name and at least one action", pat, sub)
			}
			actions = args[1:]
			g := authscope.Grant{Actions: slices.Clone(args[1:])}
			if sub == "user" {
				g.Users = []string{args[0]}
			} else {
				g.Groups = []string{args[0]}
				refs = append(refs, groupRef{name: args[0], in: "access " + pat, at: positionOf(d)})
			}
			rp.Policies = append(rp.Policies, g)
		default:
			return rp, nil, d.Errf("access %s: unrecognized subdirective %q (known: anonymous, default, user, group)", pat, sub)
		}
		for _, act := range actions {
			if !slices.Contains(authscope.AllActions, act) {
				return rp, nil, d.Errf("access %s: %s: unknown action %q (known: %s)", pat, sub, act, strings.Join(authscope.AllActions, ", "))
			}
		}
	}
	return rp, refs, nil
}

func unmarshalToken(d *caddyfile.Dispenser) (*TokenAuth, error) {
	t := &TokenAuth{}
	err := eachSubdirective(d, func(sub string, args []string) error {
		var err error
		switch sub {
		case "realm":
			t.Realm, err = oneArg(d, sub, args)
		case "service":
			t.Service, err = oneArg(d, sub, args)
		case "issuer":
			t.Issuer, err = oneArg(d, sub, args)
		case "trusted_certs":
			if len(args) == 0 {
				return d.Err("trusted_certs needs at least one file")
			}
			t.TrustedCerts = append(t.TrustedCerts, args...)
		case "jwks":
			if len(args) == 0 {
				return d.Err("jwks needs at least one file")
			}
			t.JWKS = append(t.JWKS, args...)
		case "leeway":
			var v string
			if v, err = oneArg(d, sub, args); err == nil {
				t.Leeway, err = durationArg(d, sub, v)
			}
		case "proxy":
			if len(args) != 0 {
				return d.ArgErr()
			}
			t.Proxy = true
		case "proxy_scheme":
			t.ProxyScheme, err = proxySchemeArg(d, args)
		default:
			return d.Errf("unrecognized token subdirective %q (known: realm, service, issuer, trusted_certs, jwks, leeway, proxy, proxy_scheme)", sub)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}
