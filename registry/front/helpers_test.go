package front

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"

	ggcr "github.com/google/go-containerregistry/pkg/registry"
	"go.uber.org/zap/zaptest"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/authscope/authtest"
	"github.com/caddy-oci/caddy-oci/registry"
)

// mirrorHost is the host alias of the docker.io namespace in the tests;
// clients reach it through aliasTransport.
const mirrorHost = "docker.mirror.test"

// tokenGate makes a backend registry enforce Docker token auth as
// distribution does: every request needs a bearer token from the issuer
// that grants the scope of the request in the backend's own names; a
// refusal is a challenge naming the issuer as realm and those scopes.
type tokenGate struct {
	next     http.Handler
	realm    string
	verifier *authscope.TokenVerifier
}

func newTokenGate(t testing.TB, next http.Handler, is *authtest.Issuer, realm string) *tokenGate {
	ks := authscope.NewKeySet()
	if err := ks.AddPEM(is.PublicKeyPEM()); err != nil {
		t.Fatal(err)
	}
	return &tokenGate{next: next, realm: realm, verifier: &authscope.TokenVerifier{Keys: ks, Issuer: is.Name, Service: is.Service}}
}

func (g *tokenGate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var need []authscope.Scope
	if t, err := registry.ParseTarget(nil, r); err == nil {
		switch t.Kind {
		case registry.RoutePing:
		case registry.RouteCatalog:
			need = append(need, authscope.CatalogScope)
		case registry.RouteUploads, registry.RouteUpload:
			need = append(need, authscope.RepositoryScope(t.Name, authscope.ScopePull, authscope.ScopePush))
			if from := r.URL.Query().Get("from"); from != "" {
				need = append(need, authscope.RepositoryScope(from, authscope.ScopePull))
			}
		default:
			need = append(need, authscope.RepositoryScope(t.Name, authscope.ActionsFor(r.Method)...))
		}
	}
	challenge := func(errCode string) {
		c := authscope.Challenge{Scheme: "Bearer", Params: []authscope.Param{{Key: "realm", Value: g.realm}, {Key: "service", Value: g.verifier.Service}}}
		if len(need) > 0 {
			c.Set("scope", authscope.FormatScopes(need))
		}
		if errCode != "" {
			c.Set("error", errCode)
		}
		w.Header().Set("Www-Authenticate", c.String())
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":` + detail(need) + "}]}\n"))
	}
	scheme, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if !strings.EqualFold(scheme, "Bearer") || tok == "" {
		challenge("")
		return
	}
	claims, err := g.verifier.Verify(tok)
	if err != nil {
		challenge("invalid_token")
		return
	}
	for _, s := range need {
		if !claims.Grants(s) {
			challenge("insufficient_scope")
			return
		}
	}
	g.next.ServeHTTP(w, r)
}

// detail is distribution's error detail: the scopes as access entries, in
// backend names, which a front must not let through.
func detail(need []authscope.Scope) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, s := range need {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"Type":"` + s.Type + `","Name":"` + s.Name + `","Action":"` + strings.Join(s.Actions, ",") + `"}`)
	}
	b.WriteByte(']')
	return b.String()
}

// rig is a backend registry under token auth, an issuer whose ACLs name
// only backend names, and the front before the backend.
type rig struct {
	issuer  *authtest.Issuer
	tokens  *httptest.Server
	backend *httptest.Server
	front   *httptest.Server
	f       *Front
	realm   string // the issuer's URL, as the backend names it
}

// backendACL grants what an operator writes against backend names:
// anyone pulls docker.io/*; ci pushes there and to team/*; admin does
// everything. A scope in the names a client typed matches nothing.
func backendACL(user, typ, name string, asked []string) []string {
	switch {
	case user == "admin":
		return asked
	case typ != "repository":
		return nil
	case user == "ci" && (strings.HasPrefix(name, "docker.io/") || strings.HasPrefix(name, "team/")):
		return authtest.GrantIf(asked, "pull", "push")
	case strings.HasPrefix(name, "docker.io/"):
		return authtest.GrantIf(asked, "pull")
	}
	return nil
}

var testUsers = map[string]string{"admin": "admin-pw", "ci": "ci-pw"}

// frontConfig is the docker.io namespace as the tests reach it: the host
// alias, the default for un-prefixed names, the path prefix and ns; team/
// stays as typed.
func frontConfig(realm string) Config {
	return Config{
		Namespaces:    []authscope.Namespace{{Prefix: "docker.io", Hosts: []string{mirrorHost}, Default: true}},
		LocalPrefixes: []string{"team"},
		TokenRealm:    realm,
		ProxyToken:    true,
		Service:       authtest.Service,
	}
}

// newRig starts the issuer, the backend (go-containerregistry's registry,
// or backend if given) behind the token gate, and the front behind a
// reverse proxy as Caddy puts it.
func newRig(t testing.TB, backend http.Handler, edit ...func(*Config)) *rig {
	t.Helper()
	is := authtest.New(testUsers, backendACL)
	tokens := is.Start(t)
	if backend == nil {
		backend = ggcr.New(ggcr.Logger(log.New(io.Discard, "", 0)))
	}
	// go-containerregistry refuses realms at loopback IP literals unless
	// they are the registry's own host; a host name is what docker_auth
	// has in production anyway.
	realm := strings.Replace(tokens.URL, "127.0.0.1", "localhost", 1) + "/auth"
	be := httptest.NewServer(newTokenGate(t, backend, is, realm))
	t.Cleanup(be.Close)
	cfg := frontConfig(realm)
	cfg.Logger = zaptest.NewLogger(t)
	for _, e := range edit {
		e(&cfg)
	}
	f, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	fs := httptest.NewServer(f.Middleware(proxyTo(t, be.URL)))
	t.Cleanup(fs.Close)
	return &rig{issuer: is, tokens: tokens, backend: be, front: fs, f: f, realm: realm}
}

// proxyTo is a reverse proxy to u that keeps the client's Host, as
// Caddy's reverse_proxy does.
func proxyTo(t testing.TB, u string) http.Handler {
	target, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	return httputil.NewSingleHostReverseProxy(target)
}

// frontHost is host:port of the front.
func (rg *rig) frontHost() string { return strings.TrimPrefix(rg.front.URL, "http://") }

// aliasTransport sends connections for mirrorHost (port 80) to the
// front, so a client can use the host alias as DNS would give it.
func (rg *rig) aliasTransport() *http.Transport {
	d := &net.Dialer{}
	front := rg.frontHost()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr == mirrorHost+":80" {
			addr = front
		}
		return d.DialContext(ctx, network, addr)
	}
	return tr
}

// token gets a token for scopes straight from the issuer, as user.
func (rg *rig) token(t testing.TB, user string, scopes ...string) string {
	t.Helper()
	q := url.Values{"service": {authtest.Service}, "scope": scopes}
	req, _ := http.NewRequest(http.MethodGet, rg.tokens.URL+"/auth?"+q.Encode(), nil)
	if user != "" {
		req.SetBasicAuth(user, testUsers[user])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Token string `json:"token"`
	}
	if err := jsonDecode(resp, &body); err != nil || body.Token == "" {
		t.Fatalf("token: %v (status %d)", err, resp.StatusCode)
	}
	return body.Token
}
