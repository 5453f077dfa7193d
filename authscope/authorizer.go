package authscope

// The Authorizer decides one request: who the caller is (anonymous, Basic
// from htpasswd, a bearer token), what the request needs (scopes in
// internal names), and whether that is allowed — or which challenge or
// refusal to answer with.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/internal/logfield"
)

// TokenPath is where the token proxy is served, on the host that issued
// the challenge.
const TokenPath = "/_oci/token"

// Query parameters the token proxy's realm carries, so that the proxy maps
// scopes with the same Via as the request that was challenged.
const (
	realmParamNS     = "ns"
	realmParamPrefix = "prefix"
)

// Token actions, the vocabulary of scopes.
const (
	ScopePull   = "pull"
	ScopePush   = "push"
	ScopeDelete = "delete"
)

// ActionsFor returns the token actions an HTTP method needs on a
// repository: GET/HEAD pull; POST/PUT/PATCH pull,push; DELETE delete.
func ActionsFor(method string) []string {
	switch method {
	case http.MethodGet, http.MethodHead:
		return []string{ScopePull}
	case http.MethodDelete:
		return []string{ScopeDelete}
	default:
		return []string{ScopePull, ScopePush}
	}
}

// RepositoryScope is the scope for actions on an internal name.
func RepositoryScope(name string, actions ...string) Scope {
	return Scope{Type: "repository", Name: name, Actions: actions}
}

// CatalogScope is what listing the catalog needs.
var CatalogScope = Scope{Type: "registry", Name: "catalog", Actions: []string{"*"}}

// AdminScope is what an administrative endpoint needs (/_oci/sync):
// action is a policy action (read, update). Under a policy only its
// admins have it; a bearer token needs `registry:admin:<action>`.
func AdminScope(action string) Scope {
	return Scope{Type: "registry", Name: "admin", Actions: []string{action}}
}

// Need is what one request needs.
type Need struct {
	// Scopes in internal names, in token vocabulary (pull, push, delete).
	// None (the /v2/ check) needs only that the caller be welcome.
	Scopes []Scope
	// TagMove marks a manifest push that moves an existing tag to another
	// manifest: policies ask for update instead of create.
	TagMove bool
	// Via is how the request reached the server; challenges pointing at
	// the token proxy carry it.
	Via Via
	// Reference (tag or digest) and Digest, for the audit log.
	Reference, Digest string
	// Typed maps the internal names of Scopes to the names the client
	// typed for them, so that a refusal tells the client what it asked
	// for in its own words. An internal name missing here is not named
	// to the client at all.
	Typed map[string]string
}

// Identity methods: how a caller proved who it is.
const (
	MethodAnonymous = "anonymous"
	MethodBasic     = "basic"    // htpasswd
	MethodBearer    = "bearer"   // Docker token service
	MethodAPIKey    = "apikey"   // API key as the Basic password
	MethodWorkload  = "workload" // OIDC workload token
	// MethodClientCert: a client certificate the TLS layer verified.
	MethodClientCert = "client_certificate"
	// MethodLDAP: Basic credentials an LDAP directory checked.
	MethodLDAP = "ldap"
)

// Identity is who made a request.
type Identity struct {
	// User is the htpasswd user, the token's subject, an API key's owner,
	// a workload token's user claim, a client certificate's CN or SAN or
	// a directory's user name; empty for an anonymous caller.
	User string
	// Groups the caller belongs to besides those the policy gives User:
	// an API key's groups from its owner's last sign-in (none once
	// APIKeys.GroupsMaxAge has passed since) or, with
	// APIKeys.GroupsFromDirectory, the directory's now; a workload token's groups
	// claim, a directory's groups. The policy matches both alike.
	Groups []string
	// Method is one of the Method constants.
	Method string
	// Claims of the bearer token.
	Claims *TokenClaims
}

// Denial is a refusal: 401 with a challenge, or 403.
type Denial struct {
	Status int
	// Code is the distribution spec's error code: UNAUTHORIZED or DENIED.
	Code    string
	Message string
	// Challenge is the WWW-Authenticate value of a 401.
	Challenge string
	// Err is the reason, for the log only.
	Err error
	// RetryAfter, when set, is sent as Retry-After (a 429).
	RetryAfter time.Duration
}

func (d *Denial) Error() string {
	if d.Err != nil {
		return d.Code + ": " + d.Message + ": " + d.Err.Error()
	}
	return d.Code + ": " + d.Message
}

func (d *Denial) Unwrap() error { return d.Err }

// Options configure an Authorizer. At least one of Token, Htpasswd,
// Directory and Policy must be set.
type Options struct {
	// Token verifies bearer tokens; nil disables bearer auth.
	Token *TokenVerifier
	// TokenRealm is the token service's URL, named in challenges unless
	// ProxyToken is set.
	TokenRealm string
	// ProxyToken makes challenges point at this server's TokenPath, where
	// a TokenProxy translates scopes before forwarding to TokenRealm.
	ProxyToken bool
	// ProxyScheme, "http" or "https", overrides the scheme of the proxy's
	// realm, which otherwise follows the request's own TLS state: behind
	// a TLS-terminating load balancer requests arrive as plain HTTP while
	// clients must be sent to https. The host stays the request's Host,
	// so host aliases keep working at the proxy.
	ProxyScheme string
	// Htpasswd checks Basic credentials; nil disables htpasswd logins.
	Htpasswd *Htpasswd
	// Directory checks the Basic credentials of users the htpasswd file
	// does not list (all of them without Htpasswd): an LDAP directory.
	Directory Directory
	// APIKeys, if set, accepts API keys as the Basic password (with any
	// user name: the key alone says who the caller is).
	APIKeys *APIKeys
	// Workload, if set, accepts its issuer's tokens as bearer tokens or
	// as the Basic password.
	Workload *WorkloadVerifier
	// ClientCerts, if set, makes a client certificate that the TLS layer
	// verified the identity of a request without credentials: its user
	// and groups as ClientCerts maps them. Credentials in an
	// Authorization header take precedence.
	ClientCerts *ClientCertMapping
	// FailDelay is waited after a failed Basic login.
	FailDelay time.Duration
	// Guesses bounds failed logins (htpasswd, directory, API keys) per
	// client address and account; nil: no bound but FailDelay.
	Guesses *Guesses
	// ClientIP is the address of r's client, as the server determines it
	// (behind trusted proxies, the one they name); nil: r.RemoteAddr's.
	ClientIP func(r *http.Request) string
	// BasicRealm names the realm of Basic challenges.
	BasicRealm string
	// Policy decides for anonymous and Basic callers. Nil allows them
	// nothing (bearer tokens carry their own grants).
	Policy *Policy
	// Names tells mirror namespaces (never written to) from local names.
	Names *Names
	// Audit gets pushes, tag moves, deletes and denials. Nil: no audit.
	Audit *zap.Logger
}

// Authorizer decides requests; see Authorize.
type Authorizer struct {
	o Options
	// goodKeys are the API keys that verified lately: no guesses.
	goodKeys recentKeys
}

// NewAuthorizer checks o.
func NewAuthorizer(o Options) (*Authorizer, error) {
	if o.Token == nil && o.Htpasswd == nil && o.Directory == nil && o.Policy == nil {
		return nil, errors.New("auth needs a token service, an htpasswd file, a directory or a policy")
	}
	if o.Token != nil {
		if o.TokenRealm == "" {
			return nil, errors.New("token auth needs the token service's realm URL")
		}
		u, err := url.Parse(o.TokenRealm)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("token realm %q: not an http(s) URL", o.TokenRealm)
		}
		if o.Token.Issuer == "" || o.Token.Service == "" || o.Token.Keys == nil || o.Token.Keys.Len() == 0 {
			return nil, errors.New("token auth needs an issuer, a service and trusted keys")
		}
	}
	if o.ProxyScheme != "" && o.ProxyScheme != "http" && o.ProxyScheme != "https" {
		return nil, fmt.Errorf("proxy scheme %q: must be http or https", o.ProxyScheme)
	}
	if o.APIKeys != nil && o.APIKeys.GroupsFromDirectory {
		if _, ok := o.Directory.(DirectoryUsers); !ok {
			return nil, errors.New("API key groups from the directory need a directory that looks users up")
		}
	}
	if o.ClientCerts != nil {
		if err := o.ClientCerts.Check(); err != nil {
			return nil, fmt.Errorf("client certificates: %w", err)
		}
	}
	if o.BasicRealm == "" {
		o.BasicRealm = "registry"
	}
	if o.Audit == nil {
		o.Audit = zap.NewNop()
	}
	if o.ClientIP == nil {
		o.ClientIP = remoteHost
	}
	return &Authorizer{o: o}, nil
}

type identityKey struct{}

// proof is what Authorize puts in a request's context: the identity and
// the Authorizer that established it.
type proof struct {
	by *Authorizer
	id Identity
}

// IdentityOf returns the identity Authorize put in r's context.
func IdentityOf(r *http.Request) (Identity, bool) {
	p, ok := r.Context().Value(identityKey{}).(proof)
	return p.id, ok
}

// provenHere returns the identity a passes r with when a itself
// established it before (another handler's Authorizer may trust other
// credentials).
func (a *Authorizer) provenHere(r *http.Request) (Identity, bool) {
	p, ok := r.Context().Value(identityKey{}).(proof)
	return p.id, ok && p.by == a
}

// Authorize decides r. It returns r with the caller's identity in its
// context (for CanRead and Audit), or a *Denial; any other error means
// the credentials could not be checked here (a server error).
func (a *Authorizer) Authorize(r *http.Request, need Need) (*http.Request, error) {
	// A request Authorize passed before (a manifest push asked again as a
	// tag move) keeps the identity it proved: the password is not checked
	// twice.
	id, known := a.provenHere(r)
	if !known {
		var err error
		if id, err = a.identify(r); err != nil {
			var cf *checkFailed
			if errors.As(err, &cf) {
				return r, cf
			}
			return r, a.denyCredentials(r, need, id.Method, err)
		}
		r = r.WithContext(context.WithValue(r.Context(), identityKey{}, proof{a, id}))
	}
	if len(need.Scopes) == 0 {
		if id.Method == MethodAnonymous && !a.anonymousTotal() {
			// The /v2/ check of a client that has sent no credentials yet
			// is the first step of every login, not a refusal: no audit
			// line (the registry logs it at debug).
			return r, &Denial{Status: http.StatusUnauthorized, Code: "UNAUTHORIZED", Message: "authentication required",
				Challenge: a.challenge(r, need, ""), Err: errCredentialsWanted}
		}
		return r, nil
	}
	for _, s := range need.Scopes {
		if err := a.allows(id, s, need.TagMove); err != nil {
			return r, a.deny(r, need, id, err)
		}
	}
	return r, nil
}

// CanRead reports whether the caller of r may pull repo: for the source of
// a mount the client did not name, and to filter the catalog.
func (a *Authorizer) CanRead(r *http.Request, repo string) bool {
	id, ok := IdentityOf(r)
	if !ok {
		var err error
		if id, err = a.identify(r); err != nil {
			return false
		}
	}
	return a.allows(id, RepositoryScope(repo, ScopePull), false) == nil
}

// CanPush reports whether r's caller may push to repo (a signature
// policy lets such a caller's signing tool read what it signs).
func (a *Authorizer) CanPush(r *http.Request, repo string) bool {
	id, ok := IdentityOf(r)
	if !ok {
		var err error
		if id, err = a.identify(r); err != nil {
			return false
		}
	}
	return a.allows(id, RepositoryScope(repo, ScopePull, ScopePush), false) == nil
}

// CanList reports whether the catalog may show repo to r's caller: a
// repository the caller may read, or any repository when a bearer token
// grants registry:catalog:* (the token service, as the policy, decided
// that this caller may list everything).
func (a *Authorizer) CanList(r *http.Request, repo string) bool {
	if id, ok := IdentityOf(r); ok && id.Claims != nil && id.Claims.Grants(CatalogScope) {
		return true
	}
	return a.CanRead(r, repo)
}

// ListPrefixes says where the repositories the catalog may show r's
// caller can lie (see Policy.ReadPrefixes): names starting with one of
// prefixes, or any name when all is true; CanList still decides each. A
// bearer token's caller passed only with registry:catalog:*, which shows
// every repository.
func (a *Authorizer) ListPrefixes(r *http.Request) (prefixes []string, all bool) {
	id, ok := IdentityOf(r)
	if !ok {
		var err error
		if id, err = a.identify(r); err != nil {
			return nil, false
		}
	}
	if id.Claims != nil {
		return nil, true
	}
	return a.o.Policy.ReadPrefixes(id.User, id.Groups)
}

// errMirrorWrite refuses pushes into a mirror namespace, to anyone.
var errMirrorWrite = errors.New("mirrored namespaces are read-only")

// errCredentialsWanted is the answer to an anonymous /v2/ check when
// anonymous callers may not do everything.
var errCredentialsWanted = errors.New("credentials wanted")

// errNotGranted is a scope the caller's grants do not cover.
var errNotGranted = errors.New("not granted")

// refusal is the action on a repository that a policy refused.
type refusal struct {
	action string // a policy action: read, create, update, delete
	name   string // internal
}

func (e *refusal) Error() string { return e.action + " on " + e.name + " not granted" }
func (e *refusal) Unwrap() error { return errNotGranted }

func (a *Authorizer) allows(id Identity, s Scope, tagMove bool) error {
	if s.Type == "repository" && slices.Contains(s.Actions, ScopePush) && a.o.Names.Lookup(s.Name) != nil {
		return fmt.Errorf("%w: %s", errMirrorWrite, s.Name)
	}
	if id.Claims != nil {
		if id.Claims.Grants(s) {
			return nil
		}
		return fmt.Errorf("%w: %s: %w", errNotGranted, s, ErrScopeInsufficient)
	}
	if s.Type == CatalogScope.Type && s.Name == CatalogScope.Name {
		// Listing is open to callers under a policy; the list is filtered
		// by CanRead.
		if a.o.Policy != nil {
			return nil
		}
		return fmt.Errorf("%w: %s", errNotGranted, s)
	}
	if s.Type == "registry" && s.Name == "admin" {
		for _, act := range s.Actions {
			if !a.o.Policy.IsAdmin(id.User, id.Groups, act) {
				return fmt.Errorf("%w: %s", errNotGranted, s)
			}
		}
		return nil
	}
	if s.Type != "repository" {
		return fmt.Errorf("%w: %s", errNotGranted, s)
	}
	for _, act := range s.Actions {
		var pa string
		switch act {
		case ScopePull:
			pa = ActionRead
		case ScopePush:
			pa = ActionCreate
			if tagMove {
				pa = ActionUpdate
			}
		case ScopeDelete:
			pa = ActionDelete
		default:
			return fmt.Errorf("%w: action %q on %s", errNotGranted, act, s.Name)
		}
		if !a.o.Policy.AllowsGroups(id.User, id.Groups, pa, s.Name) {
			return &refusal{action: pa, name: s.Name}
		}
	}
	return nil
}

// anonymousTotal: nobody is ever asked for credentials.
func (a *Authorizer) anonymousTotal() bool {
	return a.o.Token == nil && a.o.Policy.AnonymousTotal()
}

// checkFailed is credentials this server could not check (the key store
// failed, the workload issuer cannot be discovered). It is no *Denial:
// the caller's credentials may be fine, so it is answered as a server
// error rather than a 401 that sends the client to fix them.
type checkFailed struct{ err error }

func (e *checkFailed) Error() string { return "checking credentials: " + e.err.Error() }
func (e *checkFailed) Unwrap() error { return e.err }

// workload verifies a workload token; only a refusal of the token itself
// is the caller's problem.
func (a *Authorizer) workload(r *http.Request, raw string) (Identity, error) {
	id, err := a.o.Workload.Verify(r.Context(), raw)
	if err != nil && !errors.Is(err, ErrWorkloadToken) && r.Context().Err() == nil {
		return Identity{}, &checkFailed{err}
	}
	if err != nil {
		return Identity{Method: MethodWorkload}, err
	}
	return id, nil
}

// methodUnsupported labels, in the audit log, credentials of a scheme
// this server does not take.
const methodUnsupported = "unsupported"

// identify reads the Authorization header. Bad credentials are an error
// (after FailDelay for Basic) with an Identity that holds only the Method
// they were tried with; none are the anonymous identity.
func (a *Authorizer) identify(r *http.Request) (Identity, error) {
	id, err := a.identifyHeader(r)
	if err != nil && id.Method == "" {
		id = Identity{Method: methodUnsupported}
	}
	return id, err
}

func (a *Authorizer) identifyHeader(r *http.Request) (Identity, error) {
	if err := OneAuthorization(r.Header); err != nil {
		return Identity{}, err
	}
	h := r.Header.Get("Authorization")
	if h == "" {
		return a.identifyTLS(r)
	}
	scheme, cred, _ := strings.Cut(h, " ")
	cred = strings.TrimSpace(cred)
	switch {
	case strings.EqualFold(scheme, "Bearer"):
		if a.o.Workload != nil && a.o.Workload.Mine(cred) {
			return a.workload(r, cred)
		}
		failed := Identity{Method: MethodBearer}
		if a.o.Token == nil {
			return failed, errors.New("bearer token, but no token service configured")
		}
		c, err := a.o.Token.Verify(cred)
		if err != nil {
			return failed, err
		}
		return Identity{User: c.Subject, Method: MethodBearer, Claims: c}, nil
	case strings.EqualFold(scheme, "Basic"):
		user, pass, ok := r.BasicAuth()
		if !ok {
			return Identity{Method: MethodBasic}, errors.New("malformed basic credentials")
		}
		if user == "" && pass == "" {
			// containers/image (skopeo, podman) answers a Basic challenge
			// with empty credentials when it has none: that is no
			// credentials.
			return a.identifyTLS(r)
		}
		return a.identifyBasic(r, user, pass)
	}
	return Identity{}, fmt.Errorf("unsupported authorization scheme %q", scheme)
}

// identifyTLS is the identity of a request without credentials: its
// verified client certificate's, else anonymous.
func (a *Authorizer) identifyTLS(r *http.Request) (Identity, error) {
	if a.o.ClientCerts != nil {
		if id, ok, err := a.o.ClientCerts.Identify(r.TLS); ok {
			return id, err
		}
	}
	return Identity{Method: MethodAnonymous}, nil
}

// identifyBasic checks a Basic password: an API key, a workload token,
// or an htpasswd password, told apart by their shapes. Every password
// and key check is charged to the client and the account first
// (Guesses): once they used up their failed logins, none is checked.
func (a *Authorizer) identifyBasic(r *http.Request, user, pass string) (Identity, error) {
	switch {
	case a.o.APIKeys != nil && IsAPIKey(pass):
		// A revoked key a job keeps sending from a shared address uses
		// up its own failures there once it worked from it (see
		// Guesses.Begin); no bound per key (Guesses.BeginKey).
		// A key that verified lately is no guess (every request of a
		// job carries it): not charged, still verified.
		var at *GuessAttempt
		if !a.goodKeys.has(pass) {
			id, _ := apiKeyID(pass)
			var err error
			if at, err = a.o.Guesses.BeginKey(r.Context(), a.o.ClientIP(r), id); err != nil {
				return Identity{Method: MethodAPIKey}, err
			}
		}
		k, err := a.o.APIKeys.Verify(pass)
		if err != nil {
			if !errors.Is(err, ErrAPIKeyInvalid) {
				at.Refund() // the store failed, not the caller
				return Identity{}, &checkFailed{err}
			}
			a.goodKeys.forget(pass)
			at.End(false)
			sleepCtx(r.Context(), a.o.FailDelay)
			return Identity{Method: MethodAPIKey}, err
		}
		a.goodKeys.add(pass)
		at.End(true)
		if a.o.APIKeys.GroupsFromDirectory {
			return a.keyOwnerInDirectory(r, k)
		}
		return Identity{User: k.User, Groups: a.o.APIKeys.Groups(k, a.o.APIKeys.now()), Method: MethodAPIKey}, nil
	case a.o.Workload != nil && a.o.Workload.Mine(pass):
		return a.workload(r, pass)
	case a.o.Directory != nil && (a.o.Htpasswd == nil || !a.o.Htpasswd.Has(user)):
		return a.directoryLogin(r, user, pass)
	case a.o.Htpasswd == nil:
		return Identity{Method: MethodBasic}, errors.New("basic credentials, but no htpasswd configured")
	}
	var at *GuessAttempt
	if !a.o.Htpasswd.Remembers(user, pass) {
		var err error
		if at, err = a.o.Guesses.Begin(r.Context(), a.o.ClientIP(r), user); err != nil {
			return Identity{Method: MethodBasic}, err
		}
	}
	ok, err := a.o.Htpasswd.CheckFrom(r.Context(), user, pass, a.o.FailDelay, at.Known())
	if err != nil {
		at.Refund() // not checked: no guess
		return Identity{Method: MethodBasic}, err
	}
	at.End(ok)
	if !ok {
		return Identity{Method: MethodBasic}, fmt.Errorf("wrong password for user %q", user)
	}
	return Identity{User: user, Method: MethodBasic, Groups: a.o.Policy.GroupsOf(user)}, nil
}

// keyOwnerInDirectory is the identity of key k whose owner's groups the
// directory holds: as it holds them now (remembered for its cache_ttl,
// so a CI job's requests do not each ask it). An owner it no longer
// holds gets nothing through the key: refused as invalid credentials. A
// directory that cannot be asked is no refusal (503).
func (a *Authorizer) keyOwnerInDirectory(r *http.Request, k APIKey) (Identity, error) {
	if a.o.Htpasswd != nil && a.o.Htpasswd.Has(k.User) {
		// The htpasswd file decides for the names it lists; their groups
		// are the config's, which the policy adds by name.
		return Identity{User: k.User, Method: MethodAPIKey}, nil
	}
	owner, err := a.o.Directory.(DirectoryUsers).Lookup(r.Context(), k.User)
	if err == nil {
		err = a.directoryNamesFree(owner)
	}
	switch {
	case err == nil:
		return Identity{User: k.User, Groups: owner.Groups, Method: MethodAPIKey}, nil
	case errors.Is(err, ErrNoSuchUser) || errors.Is(err, ErrBadCredentials):
		return Identity{Method: MethodAPIKey}, fmt.Errorf("%w: the owner %q of key %s: %w", ErrAPIKeyInvalid, k.User, k.ID, err)
	case errors.As(err, new(*ErrTooManyGuesses)):
		return Identity{Method: MethodAPIKey}, err // 429: the directory's turns are taken
	}
	return Identity{}, &checkFailed{err}
}

// remembering is a Directory that can tell credentials it accepted a
// moment ago without asking anyone: they are no guess.
type remembering interface {
	Remembers(user, password string) bool
}

// directoryLogin asks the Directory. Refused credentials wait FailDelay
// like a wrong htpasswd password; a directory that cannot answer is no
// refusal of the caller (checkFailed, answered 503 when it wraps
// ErrUnavailable) and is not delayed. Credentials it does not remember
// are charged to Guesses first, so a flood never reaches the directory
// (whose own lockout would then lock the user out).
func (a *Authorizer) directoryLogin(r *http.Request, user, pass string) (Identity, error) {
	var at *GuessAttempt
	if rd, ok := a.o.Directory.(remembering); !ok || !rd.Remembers(user, pass) {
		var err error
		if at, err = a.o.Guesses.Begin(r.Context(), a.o.ClientIP(r), user); err != nil {
			return Identity{Method: MethodLDAP}, err
		}
	}
	var id Identity
	var err error
	if df, ok := a.o.Directory.(DirectoryFrom); ok {
		id, err = df.LoginFrom(r.Context(), user, pass, at.Known())
	} else {
		id, err = a.o.Directory.Login(r.Context(), user, pass)
	}
	if err == nil {
		err = a.directoryNamesFree(id)
	}
	if err == nil {
		at.End(true)
		return id, nil
	}
	if errors.Is(err, ErrBadCredentials) {
		at.End(false)
		sleepCtx(r.Context(), a.o.FailDelay)
		return Identity{Method: MethodLDAP}, err
	}
	at.Refund() // the directory failed, or was not asked: no guess
	if errors.As(err, new(*ErrTooManyGuesses)) {
		return Identity{Method: MethodLDAP}, err // 429: no turn came
	}
	return Identity{}, &checkFailed{err}
}

// directoryNamesFree refuses a directory identity whose names belong to
// another source: a user the htpasswd file lists (typed in another case,
// "ALICE", it reached the directory, which answered with its "alice":
// the htpasswd file decides for the names it lists), or names with the
// prefix kept for workload tokens, as sign-ins are refused.
func (a *Authorizer) directoryNamesFree(id Identity) error {
	if a.o.Htpasswd != nil && a.o.Htpasswd.Has(id.User) {
		return fmt.Errorf("%w: directory user %q is listed in the htpasswd file, which decides for it", ErrBadCredentials, id.User)
	}
	if strings.HasPrefix(id.User, WorkloadPrefix) {
		return fmt.Errorf("%w: directory user %q: %q is kept for workload tokens", ErrBadCredentials, id.User, WorkloadPrefix)
	}
	for _, g := range id.Groups {
		if strings.HasPrefix(g, WorkloadPrefix) {
			return fmt.Errorf("%w: directory group %q of %q: %q is kept for workload tokens", ErrBadCredentials, g, id.User, WorkloadPrefix)
		}
	}
	return nil
}

// remoteHost is the host part of r.RemoteAddr.
func remoteHost(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// deny builds the refusal for an identified (or anonymous) caller and
// logs it on the audit logger.
func (a *Authorizer) deny(r *http.Request, need Need, id Identity, reason error) *Denial {
	d := &Denial{Status: http.StatusUnauthorized, Code: "UNAUTHORIZED", Message: "authentication required", Err: reason}
	switch {
	case errors.Is(reason, errMirrorWrite):
		d.Status, d.Code, d.Message = http.StatusForbidden, "DENIED", "mirrored repositories are read-only"
		if why := a.whyMirrored(need); why != "" {
			d.Message += ": " + why
		}
	case id.Method == MethodBearer:
		d.Message = "token does not grant access"
		d.Challenge = a.challenge(r, need, "insufficient_scope")
	case id.Method != MethodAnonymous:
		// Known, just not allowed: more credentials will not help.
		d.Status, d.Code, d.Message = http.StatusForbidden, "DENIED", deniedMessage(need, reason)
	default:
		d.Challenge = a.challenge(r, need, "")
	}
	a.auditDenial(r, need, id, credentialsValid, d, reason)
	return d
}

// whyMirrored explains how the pushed name of need, typed without a
// mirror's prefix, came to lie in a mirror (Names.WhyMirrored).
func (a *Authorizer) whyMirrored(need Need) string {
	for _, s := range need.Scopes {
		if s.Type == "repository" && slices.Contains(s.Actions, ScopePush) && a.o.Names.Lookup(s.Name) != nil {
			return a.o.Names.WhyMirrored(need.Typed[s.Name], need.Via)
		}
	}
	return ""
}

// denyCredentials refuses credentials that did not check out, tried with
// method, and logs it on the audit logger.
func (a *Authorizer) denyCredentials(r *http.Request, need Need, method string, reason error) *Denial {
	d := &Denial{Status: http.StatusUnauthorized, Code: "UNAUTHORIZED", Message: "authentication required", Err: reason}
	var tooMany *ErrTooManyGuesses
	switch {
	case errors.Is(reason, ErrAuthorizationRepeated):
		d.Status, d.Message = http.StatusBadRequest, "send one Authorization header"
	case errors.As(reason, &tooMany):
		// No challenge: new credentials would not be checked either.
		d.Status, d.Code, d.RetryAfter = http.StatusTooManyRequests, "TOOMANYREQUESTS", tooMany.RetryAfter
		d.Message = "too many failed logins; try again later"
		if tooMany.Busy {
			d.Message = "too many logins being checked at once; try again later"
		}
	case errors.Is(reason, ErrTokenInvalid):
		d.Message = "invalid token"
		d.Challenge = a.challenge(r, need, "invalid_token")
	case errors.Is(reason, ErrClientCert):
		// The value itself is for the log only: it may hold anything.
		d.Message = "the client certificate names no usable user or group"
		d.Challenge = a.challenge(r, need, "")
	default:
		d.Challenge = a.challenge(r, need, "")
	}
	a.auditDenial(r, need, Identity{Method: method}, credentialsInvalid, d, reason)
	return d
}

// deniedMessage tells an identified caller what was refused: the action
// and the name as the client typed it, of its own request only. A name
// the client did not type (so no internal name it did not use) is not
// named.
func deniedMessage(need Need, reason error) string {
	var ref *refusal
	if errors.As(reason, &ref) {
		if typed, ok := need.Typed[ref.name]; ok && typed != "" {
			return fmt.Sprintf("%s on %s not granted", ref.action, typed)
		}
		return ref.action + " not granted"
	}
	return "access denied"
}

// What the audit log says of the credentials of a request.
const (
	credentialsNone    = "none"    // anonymous
	credentialsValid   = "valid"   // identified
	credentialsInvalid = "invalid" // wrong, unknown, revoked or expired
)

// auditDenial logs refusal d of a request on the audit logger: id is who
// the caller was identified as or, with creds invalid, only the method
// its credentials were tried with.
func (a *Authorizer) auditDenial(r *http.Request, need Need, id Identity, creds string, d *Denial, reason error) {
	if id.Method == MethodAnonymous {
		creds = credentialsNone
	}
	names := make([]string, 0, len(need.Scopes))
	for _, s := range need.Scopes {
		names = append(names, s.String())
	}
	a.o.Audit.Info("denied",
		// What the request carried is cut to logfield.Max: an
		// anonymous refusal must not cost the log disk more than the
		// request did.
		logfield.String("user", id.User),
		zap.String("auth", id.Method),
		zap.String("credentials", creds),
		logfield.Strings("scopes", names),
		logfield.String("reference", need.Reference),
		zap.Int("status", d.Status),
		logfield.String("reason", reason.Error()),
		logfield.String("method", r.Method),
		logfield.String("uri", r.RequestURI),
		zap.String("remote", r.RemoteAddr),
	)
}

// challenge is the WWW-Authenticate value for need: Bearer when a token
// service is configured, else Basic.
func (a *Authorizer) challenge(r *http.Request, need Need, errCode string) string {
	if a.o.Token == nil {
		c := Challenge{Scheme: "Basic", Params: []Param{{"realm", a.o.BasicRealm}, {"charset", "UTF-8"}}}
		return c.String()
	}
	c := Challenge{Scheme: "Bearer", Params: []Param{
		{"realm", a.realm(r, need.Via)},
		{"service", a.o.Token.Service},
	}}
	if len(need.Scopes) > 0 {
		c.Set("scope", FormatScopes(need.Scopes))
	}
	if errCode != "" {
		c.Set("error", errCode)
	}
	return c.String()
}

// realm is the token service URL for a challenge: the configured one, or
// this server's token proxy carrying how the client came in, so that the
// proxy maps the client's scopes as the request's names were mapped.
func (a *Authorizer) realm(r *http.Request, v Via) string {
	if !a.o.ProxyToken {
		return a.o.TokenRealm
	}
	return ProxyRealm(r, a.o.ProxyScheme, v)
}

// AuditEvent is a change the registry made.
type AuditEvent struct {
	// Action is ActionCreate (push), ActionUpdate (tag move),
	// ActionDelete, or ActionRead (a pull a signature policy refused).
	Action    string
	Name      string
	Reference string
	Digest    string
	Status    int
	// SignaturePolicy names the signature policy that refused a pull
	// (action read); empty otherwise.
	SignaturePolicy string
}

// Audit logs e with the identity of r's caller.
func (a *Authorizer) Audit(r *http.Request, e AuditEvent) {
	id, _ := IdentityOf(r)
	if id.Method == "" {
		id.Method = MethodAnonymous
	}
	fields := []zap.Field{
		zap.String("user", id.User),
		zap.String("auth", id.Method),
		zap.String("action", e.Action),
		zap.String("repo", e.Name),
		zap.String("reference", e.Reference),
		zap.String("digest", e.Digest),
		zap.Int("status", e.Status),
		zap.String("remote", r.RemoteAddr),
	}
	if e.SignaturePolicy != "" {
		fields = append(fields, zap.String("signature_policy", e.SignaturePolicy))
	}
	a.o.Audit.Info(e.Action, fields...)
}

// AuthorizeUsers decides r for a path of the site outside the registry's
// API that only users may reach (any identified caller when users is
// empty): the registry's own credentials, so its bounds on guessing
// (Guesses) and on password checks at once apply, which a handler of
// its own with a copy of the password hashes (Caddy's basic_auth) would
// not. An anonymous caller gets a 401 with a challenge.
func (a *Authorizer) AuthorizeUsers(r *http.Request, users []string) (*http.Request, error) {
	r, err := a.Authorize(r, Need{})
	if err != nil {
		return r, err
	}
	id, _ := IdentityOf(r)
	if id.User == "" {
		return r, &Denial{Status: http.StatusUnauthorized, Code: "UNAUTHORIZED", Message: "authentication required",
			Challenge: a.challenge(r, Need{}, ""), Err: errCredentialsWanted}
	}
	if len(users) > 0 && !slices.Contains(users, id.User) {
		return r, &Denial{Status: http.StatusForbidden, Code: "DENIED", Message: "not allowed here",
			Err: fmt.Errorf("user %q is not among this path's users", id.User)}
	}
	return r, nil
}
