package registry

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/authscope/authtest"
	"github.com/caddy-oci/caddy-oci/cache"
)

// authRegistry is a registry with an Authorizer, its token proxy at
// /_oci/token, and the audit log.
type authRegistry struct {
	srv   *httptest.Server
	host  string
	audit *observer.ObservedLogs
	store *cache.Store
}

func newAuthRegistry(t *testing.T, o authscope.Options, upstream string) *authRegistry {
	t.Helper()
	store, err := cache.Open(cache.Options{Dir: t.TempDir(), Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))})
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.InfoLevel)
	o.Audit = zap.New(core).Named("audit")
	a, err := authscope.NewAuthorizer(o)
	if err != nil {
		t.Fatal(err)
	}
	h := New(Config{Store: store, Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), Authorizer: a, CanRead: a.CanRead})
	mux := http.NewServeMux()
	mux.Handle("/v2/", h)
	if upstream != "" {
		u, _ := url.Parse(upstream)
		mux.Handle(authscope.TokenPath, &authscope.TokenProxy{Upstream: u, Names: o.Names})
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		srv.Close()
		_ = store.Close()
	})
	return &authRegistry{srv: srv, host: strings.TrimPrefix(srv.URL, "http://"), audit: logs, store: store}
}

func (ar *authRegistry) ref(t *testing.T, s string) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(ar.host+"/"+s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

func statusOf(err error) int {
	var te *transport.Error
	if errors.As(err, &te) {
		return te.StatusCode
	}
	return 0
}

// TestAuthTokenFlow: docker_auth with ACLs against internal names, the
// token proxy, a CI push with credentials and anonymous pulls, through
// go-containerregistry's authenticating transport.
func TestAuthTokenFlow(t *testing.T) {
	da := authtest.New(map[string]string{"ci": "ci-pw"},
		func(user, typ, name string, asked []string) []string {
			var ok []string
			for _, a := range asked {
				switch {
				case a == "pull" && strings.HasPrefix(name, "ci/"):
					ok = append(ok, a)
				case user == "ci" && strings.HasPrefix(name, "ci/") && a == "push":
					ok = append(ok, a)
				}
			}
			return ok
		})
	das := da.Start(t)
	ks := authscope.NewKeySet()
	if err := ks.AddPEM(da.PublicKeyPEM()); err != nil {
		t.Fatal(err)
	}
	ar := newAuthRegistry(t, authscope.Options{
		Token:      &authscope.TokenVerifier{Keys: ks, Issuer: authtest.IssuerName, Service: authtest.Service},
		TokenRealm: das.URL, ProxyToken: true,
	}, das.URL)

	img, err := random.Image(512, 2)
	if err != nil {
		t.Fatal(err)
	}
	ci := remote.WithAuth(&authn.Basic{Username: "ci", Password: "ci-pw"})
	if err := remote.Write(ar.ref(t, "ci/app:v1"), img, ci); err != nil {
		t.Fatalf("CI push: %v", err)
	}
	if _, err := remote.Image(ar.ref(t, "ci/app:v1")); err != nil {
		t.Fatalf("anonymous pull: %v", err)
	}
	other, _ := random.Image(256, 1)
	if err := remote.Write(ar.ref(t, "ci/app:v2"), other); statusOf(err) != 401 {
		t.Fatalf("anonymous push (a pull token used to push): %v", err)
	}
	if err := remote.Write(ar.ref(t, "other/app:v1"), other, ci); statusOf(err) != 401 {
		t.Fatalf("CI push outside its ACL: %v", err)
	}
	for _, s := range da.ScopesAsked() {
		sc, err := authscope.ParseScope(s)
		if err != nil || (sc.Name != "ci/app" && sc.Name != "other/app") {
			t.Errorf("token service saw %q", s)
		}
	}
	if got := ar.audit.FilterMessage(authscope.ActionCreate).FilterField(zap.String("repo", "ci/app")).Len(); got == 0 {
		t.Error("no push in the audit log")
	}
	if ar.audit.FilterMessage("denied").Len() == 0 {
		t.Error("no denial in the audit log")
	}

	// Refusals on the wire: ping and challenge, a forged token.
	resp, err := http.Get(ar.srv.URL + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	c, err := authscope.ParseChallenge(resp.Header.Get("WWW-Authenticate"))
	if resp.StatusCode != 401 || err != nil || c.Scheme != "Bearer" {
		t.Fatalf("ping: %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	if realm, _ := c.Get("realm"); realm != ar.srv.URL+authscope.TokenPath {
		t.Errorf("realm %q", realm)
	}
	req, _ := http.NewRequest(http.MethodGet, ar.srv.URL+"/v2/ci/app/manifests/v1", nil)
	req.Header.Set("Authorization", "Bearer "+forgedToken(t))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var env envelope
	_ = json.NewDecoder(resp.Body).Decode(&env)
	resp.Body.Close()
	if resp.StatusCode != 401 || len(env.Errors) != 1 || env.Errors[0].Code != CodeUnauthorized ||
		!strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="invalid_token"`) ||
		!strings.Contains(resp.Header.Get("WWW-Authenticate"), `scope="repository:ci/app:pull"`) {
		t.Errorf("forged token: %d %v %q", resp.StatusCode, env, resp.Header.Get("WWW-Authenticate"))
	}
	// Malformed names never reach the Authorizer or the token service
	// (the test's ServeMux answers dot segments with a redirect first).
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, p := range []string{"/v2/../etc/manifests/x", "/v2/ci/../x/manifests/v1", "/v2/CI/app/manifests/v1", "/v2/ci//app/manifests/v1"} {
		resp, err := noRedirect.Get(ar.srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == 401 || resp.StatusCode < 300 {
			t.Errorf("%s: %d", p, resp.StatusCode)
		}
	}
	if got, _ := http.Get(ar.srv.URL + authscope.TokenPath + "?scope=repository:../x:pull"); got.StatusCode != 400 {
		t.Errorf("token proxy took a .. scope: %d", got.StatusCode)
	}
}

// forgedToken is signed with a key nobody trusts, under alg HS256.
func forgedToken(t *testing.T) string {
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"iss": authtest.IssuerName, "aud": authtest.Service, "exp": time.Now().Add(time.Hour).Unix(),
		"access": []authscope.AccessEntry{{Type: "repository", Name: "ci/app", Actions: []string{"pull"}}},
	})
	s, err := tok.SignedString(authtest.New(nil, nil).PublicKeyPEM())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestAuthBasicPolicy: the example policy with htpasswd users —
// anonymous read everywhere, artifact-workloads read+create on
// blumeops/**, admins everything.
func TestAuthBasicPolicy(t *testing.T) {
	hp := testHtpasswd(t, "ci", "ci-pw", "root", "root-pw")
	pol, err := authscope.NewPolicy(authscope.PolicyConfig{
		Repositories: map[string]authscope.RepositoryPolicy{
			"**": {Anonymous: []string{"read"}},
			"blumeops/**": {Anonymous: []string{"read"},
				Policies: []authscope.Grant{{Groups: []string{"artifact-workloads"}, Actions: []string{"read", "create"}}}},
			"secret/**": {},
		},
		Groups: map[string][]string{"artifact-workloads": {"ci"}, "admins": {"root"}},
		Admin:  &authscope.AdminPolicy{Groups: []string{"admins"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ar := newAuthRegistry(t, authscope.Options{Htpasswd: hp, Policy: pol, BasicRealm: "blumeops"}, "")
	ci := remote.WithAuth(&authn.Basic{Username: "ci", Password: "ci-pw"})
	root := remote.WithAuth(&authn.Basic{Username: "root", Password: "root-pw"})

	v1, _ := random.Image(512, 1)
	v2, _ := random.Image(512, 1)
	if err := remote.Write(ar.ref(t, "blumeops/app:v1"), v1, ci); err != nil {
		t.Fatalf("CI pushes a new tag: %v", err)
	}
	if err := remote.Write(ar.ref(t, "blumeops/app:v1"), v1, ci); err != nil {
		t.Fatalf("CI pushes the same tag again: %v", err)
	}
	if err := remote.Write(ar.ref(t, "blumeops/app:v1"), v2, ci); statusOf(err) != 403 {
		t.Fatalf("CI moves a tag: %v", err)
	}
	if err := remote.Delete(ar.ref(t, "blumeops/app:v1"), ci); statusOf(err) != 403 {
		t.Fatalf("CI deletes: %v", err)
	}
	if _, err := remote.Image(ar.ref(t, "blumeops/app:v1")); err != nil {
		t.Fatalf("anonymous pull: %v", err)
	}
	if err := remote.Write(ar.ref(t, "blumeops/app:v1"), v2); statusOf(err) != 401 {
		t.Fatalf("anonymous push: %v", err)
	}
	if err := remote.Write(ar.ref(t, "blumeops/app:v1"), v2, root); err != nil {
		t.Fatalf("admin moves a tag: %v", err)
	}
	if err := remote.Write(ar.ref(t, "secret/x:v1"), v2, root); err != nil {
		t.Fatalf("admin pushes secret: %v", err)
	}
	if got := ar.audit.FilterMessage(authscope.ActionUpdate).FilterField(zap.String("user", "root")).Len(); got != 1 {
		t.Errorf("%d tag moves by root in the audit log", got)
	}

	catalog := func(opt ...remote.Option) []string {
		reg, _ := name.NewRegistry(ar.host, name.Insecure)
		repos, err := remote.Catalog(t.Context(), reg, opt...)
		if err != nil {
			t.Fatalf("catalog: %v", err)
		}
		return repos
	}
	if got := catalog(); !slices.Equal(got, []string{"blumeops/app"}) {
		t.Errorf("anonymous catalog %q", got)
	}
	if got := catalog(root); !slices.Equal(got, []string{"blumeops/app", "secret/x"}) {
		t.Errorf("admin catalog %q", got)
	}

	resp, err := http.Get(ar.srv.URL + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") != `Basic realm="blumeops",charset="UTF-8"` {
		t.Errorf("anonymous ping: %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
}

// TestCatalogPagesHideUnreadable: a catalog page offers a next page (a
// Link) only when one holds a repository the caller may see. Otherwise
// the Link after the last readable name would tell an anonymous caller,
// moving `last` along, that hidden repositories sort after it.
func TestCatalogPagesHideUnreadable(t *testing.T) {
	h, _ := bcrypt.GenerateFromPassword([]byte("root-pw"), bcrypt.MinCost)
	hp, err := authscope.ParseHtpasswd([]byte("root:" + string(h) + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	pol, err := authscope.NewPolicy(authscope.PolicyConfig{
		Repositories: map[string]authscope.RepositoryPolicy{
			"pub/**":    {Anonymous: []string{"read"}},
			"secret/**": {},
		},
		Admin: &authscope.AdminPolicy{Users: []string{"root"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ar := newAuthRegistry(t, authscope.Options{Htpasswd: hp, Policy: pol}, "")
	root := remote.WithAuth(&authn.Basic{Username: "root", Password: "root-pw"})
	img, _ := random.Image(256, 1)
	for _, repo := range []string{"pub/a", "pub/b", "secret/x", "secret/y"} {
		if err := remote.Write(ar.ref(t, repo+":v1"), img, root); err != nil {
			t.Fatal(err)
		}
	}
	page := func(query string, user ...string) ([]string, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, ar.srv.URL+"/v2/_catalog?"+query, nil)
		if len(user) == 2 {
			req.SetBasicAuth(user[0], user[1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var c struct{ Repositories []string }
		if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&c) != nil {
			t.Fatalf("catalog?%s: %d", query, resp.StatusCode)
		}
		return c.Repositories, resp.Header.Get("Link")
	}
	for _, q := range []string{"n=1&last=pub/a", "n=2", "n=1&last=pub/b", "n=1&last=pub/az", "n=5", ""} {
		repos, link := page(q)
		if link != "" {
			t.Errorf("anonymous catalog?%s = %q with Link %q: nothing readable follows", q, repos, link)
		}
	}
	if repos, link := page("n=1"); !slices.Equal(repos, []string{"pub/a"}) || link != `</v2/_catalog?n=1&last=pub%2Fa>; rel="next"` {
		t.Errorf("anonymous first page %q, Link %q; want pub/a and a Link", repos, link)
	}
	if repos, link := page("n=3", "root", "root-pw"); !slices.Equal(repos, []string{"pub/a", "pub/b", "secret/x"}) || link == "" {
		t.Errorf("admin page %q, Link %q; want three and a Link", repos, link)
	}
}

// testHtpasswd is an htpasswd file of the given user, password pairs
// (bcrypt at its lowest cost, for speed).
func testHtpasswd(t *testing.T, userPasswords ...string) *authscope.Htpasswd {
	t.Helper()
	var b strings.Builder
	for i := 0; i+1 < len(userPasswords); i += 2 {
		h, err := bcrypt.GenerateFromPassword([]byte(userPasswords[i+1]), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(userPasswords[i] + ":" + string(h) + "\n")
	}
	hp, err := authscope.ParseHtpasswd([]byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	return hp
}
