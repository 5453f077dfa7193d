package authscope

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestTranslateScopes(t *testing.T) {
	n := testNames(t)
	for _, tc := range []struct {
		name  string
		scope string
		via   Via
		want  string
		err   bool
	}{
		{"docker registry-mirrors", "repository:library/debian:pull", Via{Host: "mirror.test"}, "repository:docker.io/library/debian:pull", false},
		{"containerd double scopes with a path prefix",
			"repository:docker.io/library/debian:pull repository:library/debian:pull", Via{PathPrefix: "docker.io", NS: "docker.io"},
			"repository:docker.io/library/debian:pull repository:docker.io/library/debian:pull", false},
		{"containerd ns", "repository:library/debian:pull", Via{NS: "docker.io"}, "repository:docker.io/library/debian:pull", false},
		{"ns alias", "repository:debian:pull", Via{NS: "registry-1.docker.io"}, "repository:docker.io/library/debian:pull", false},
		{"podman path form", "repository:docker.io/library/debian:pull", Via{}, "repository:docker.io/library/debian:pull", false},
		{"host alias", "repository:debian:pull", Via{Host: "docker.mirror.example"}, "repository:docker.io/library/debian:pull", false},
		{"ghcr ns", "repository:org/app:pull", Via{NS: "ghcr.io"}, "repository:ghcr.io/org/app:pull", false},
		// The token service sees the one name the registry enforces,
		// however a one-component name was spelled.
		{"prefixed one component", "repository:docker.io/debian:pull", Via{}, "repository:docker.io/library/debian:pull", false},
		{"prefixed one component with regctl's ns", "repository:docker.io/debian:pull", Via{NS: "hub.mycorp.example"}, "repository:docker.io/library/debian:pull", false},
		{"local stays local", "repository:team/app:pull,push", Via{}, "repository:team/app:pull,push", false},
		{"catalog untouched", "registry:catalog:*", Via{NS: "docker.io"}, "registry:catalog:*", false},
		{"repository in other case", "Repository:library/debian:pull", Via{NS: "docker.io"}, "", true},
		{"class kept", "repository(plugin):library/debian:pull", Via{}, "repository(plugin):docker.io/library/debian:pull", false},
		{"empty", "", Via{}, "", false},
		// A client-form scope under ns=docker.io stays inside docker.io:
		// it can never reach the local team/ prefix or another mirror.
		{"ns confines local names", "repository:team/app:push", Via{NS: "docker.io"}, "repository:docker.io/team/app:push", false},
		{"ns confines other mirrors", "repository:ghcr.io/org/app:pull", Via{NS: "docker.io"}, "repository:docker.io/ghcr.io/org/app:pull", false},
		{"dot dot", "repository:../team/app:pull", Via{}, "", true},
		{"dot dot inside", "repository:library/../team:pull", Via{NS: "docker.io"}, "", true},
		{"upper case", "repository:Library/Debian:pull", Via{}, "", true},
		{"leading slash", "repository:/x:pull", Via{}, "", true},
		{"empty component", "repository:a//b:pull", Via{}, "", true},
		{"no actions", "repository:x", Via{}, "", true},
		{"unknown ns", "repository:x:pull", Via{NS: "evil.example"}, "", true},
		{"unknown prefix", "repository:x:pull", Via{PathPrefix: "evil.example"}, "", true},
		{"maps too long", "repository:" + strings.Repeat("a", 250) + ":pull", Via{NS: "docker.io"}, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := TranslateScopes(n, tc.scope, tc.via)
			if tc.err {
				if !errors.Is(err, ErrScopeRejected) {
					t.Fatalf("got %q, %v; want ErrScopeRejected", got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// FuzzTranslateScopes: whatever comes in, what goes out to the token
// service parses, and every repository name in it is a valid name inside
// the namespace the Via selected.
func FuzzTranslateScopes(f *testing.F) {
	for _, s := range []string{
		"repository:library/debian:pull", "repository:docker.io/library/debian:pull repository:library/debian:pull",
		"registry:catalog:*", "repository:../x:pull", "repository(p):a:b,c", "a:b:c:d", "repository:localhost:5000/x:pull",
	} {
		f.Add(s, "docker.io", "")
		f.Add(s, "", "docker.io")
		f.Add(s, "", "")
	}
	n, err := NewNames([]Namespace{
		{Prefix: "docker.io", Aliases: []string{"registry-1.docker.io"}, Default: true, LibraryPrefix: "library"},
		{Prefix: "ghcr.io"},
	}, []string{"team"})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, scope, ns, prefix string) {
		via := Via{Host: "mirror.test", NS: ns, PathPrefix: prefix}
		out, err := TranslateScopes(n, scope, via)
		if err != nil {
			if !errors.Is(err, ErrScopeRejected) {
				t.Fatalf("error %v does not wrap ErrScopeRejected", err)
			}
			return
		}
		scopes, err := ParseScopes(out)
		if err != nil {
			t.Fatalf("output %q does not parse: %v", out, err)
		}
		for _, s := range scopes {
			if s.Type != "repository" {
				continue
			}
			if !ValidName(s.Name) {
				t.Fatalf("invalid name %q out of %q", s.Name, scope)
			}
			sel := prefix
			if sel == "" {
				sel = ns
			}
			if sel == "registry-1.docker.io" {
				sel = "docker.io"
			}
			if (sel == "docker.io" || sel == "ghcr.io") && !strings.HasPrefix(s.Name, sel+"/") {
				t.Fatalf("%q via %+v maps outside its namespace: %q", scope, via, s.Name)
			}
		}
	})
}

type proxyFixture struct {
	is       *testIssuer
	upstream *httptest.Server
	proxy    *httptest.Server
}

func newProxyFixture(t *testing.T) *proxyFixture {
	t.Helper()
	is := newTestIssuer(t, map[string]string{"ci": "ci-pw"}, dockerAuthACL)
	up := is.Start(t)
	u, _ := url.Parse(up.URL + "/auth?fixed=1")
	p := &TokenProxy{Upstream: u, Names: testNames(t)}
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	return &proxyFixture{is: is, upstream: up, proxy: srv}
}

func decodeToken(t *testing.T, resp *http.Response) (*TokenClaims, string) {
	t.Helper()
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var tr struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(body, &tr); err != nil {
		t.Fatal(err)
	}
	is := newTestIssuer(t, nil, nil)
	c, err := is.verifier().Verify(tr.Token)
	if err != nil {
		t.Fatal(err)
	}
	return c, string(body)
}

func TestTokenProxyGET(t *testing.T) {
	fx := newProxyFixture(t)
	q := url.Values{"service": {testService}, "ns": {"docker.io"}, "prefix": {"docker.io"}}
	q["scope"] = []string{"repository:docker.io/library/debian:pull", "repository:library/debian:pull"}
	resp, err := http.Get(fx.proxy.URL + TokenPath + "?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	c, _ := decodeToken(t, resp)
	if !c.Grants(RepositoryScope("docker.io/library/debian", "pull")) {
		t.Errorf("access %+v", c.Access)
	}
	want := []string{"repository:docker.io/library/debian:pull", "repository:docker.io/library/debian:pull"}
	if got := fx.is.scopesAsked(); !slices.Equal(got, want) {
		t.Errorf("token service saw %q", got)
	}
}

func TestTokenProxyPOSTAndAuthorization(t *testing.T) {
	fx := newProxyFixture(t)
	form := url.Values{"grant_type": {"password"}, "client_id": {"containerd"}, "service": {testService},
		"username": {"ci"}, "password": {"ci-pw"}, "scope": {"repository:team/app:pull,push repository:library/debian:pull"}}
	resp, err := http.Post(fx.proxy.URL+TokenPath, "application/x-www-form-urlencoded", strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	c, _ := decodeToken(t, resp)
	if !c.Grants(RepositoryScope("team/app", "pull", "push")) || !c.Grants(RepositoryScope("docker.io/library/debian", "pull")) {
		t.Errorf("access %+v", c.Access)
	}

	// Basic credentials pass through; a wrong password's 401 comes back as is.
	req, _ := http.NewRequest(http.MethodGet, fx.proxy.URL+TokenPath+"?scope=repository:team/app:push", nil)
	req.SetBasicAuth("ci", "wrong")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") != `Basic realm="Acme auth"` {
		t.Errorf("wrong password: %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	req.SetBasicAuth("ci", "ci-pw")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := decodeToken(t, resp); c.Subject != "ci" {
		t.Errorf("subject %q", c.Subject)
	}
}

func TestTokenProxyRejects(t *testing.T) {
	fx := newProxyFixture(t)
	for _, q := range []string{
		"scope=repository:../etc:pull",
		"scope=repository:Library/debian:pull",
		"scope=repository:x",
		"scope=repository:x:pull&ns=evil.example",
		"scope=repository:ok:pull&scope=repository:a//b:pull",
	} {
		resp, err := http.Get(fx.proxy.URL + TokenPath + "?" + q)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Errorf("%s: status %d", q, resp.StatusCode)
		}
	}
	resp, err := http.Post(fx.proxy.URL+TokenPath, "application/x-www-form-urlencoded", strings.NewReader("scope=repository:..:pull"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Errorf("POST: status %d", resp.StatusCode)
	}
	if got := fx.is.scopesAsked(); len(got) != 0 {
		t.Errorf("forwarded %q", got)
	}
	req, _ := http.NewRequest(http.MethodPut, fx.proxy.URL+TokenPath, nil)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 {
		t.Errorf("PUT: status %d", resp.StatusCode)
	}
}

// TestFlowGGCR drives the whole dance with go-containerregistry's
// authenticating transport: ping, challenge naming the proxy, token
// request in the client's names, translated, token for internal names.
func TestFlowGGCR(t *testing.T) {
	is := newTestIssuer(t, map[string]string{"ci": "ci-pw"}, dockerAuthACL)
	up := is.Start(t)
	names := testNames(t)
	a, err := NewAuthorizer(Options{Token: is.verifier(), TokenRealm: up.URL, ProxyToken: true, Names: names})
	if err != nil {
		t.Fatal(err)
	}
	upURL, _ := url.Parse(up.URL)
	mux := http.NewServeMux()
	mux.Handle(TokenPath, &TokenProxy{Upstream: upURL, Names: names})
	// A stand-in for the registry: maps the name, asks the Authorizer.
	mux.HandleFunc("/v2/", func(w http.ResponseWriter, r *http.Request) {
		via := Via{Host: r.Host, NS: r.URL.Query().Get("ns")}
		need := Need{Via: via}
		if rest := strings.TrimPrefix(r.URL.Path, "/v2/"); rest != "" {
			typed, _, _ := strings.Cut(rest, "/manifests/")
			in, err := names.Internal(typed, via)
			if err != nil {
				w.WriteHeader(400)
				return
			}
			need.Scopes = []Scope{RepositoryScope(in, ActionsFor(r.Method)...)}
		}
		if _, err := a.Authorize(r, need); err != nil {
			var d *Denial
			errors.As(err, &d)
			if d.Challenge != "" {
				w.Header().Set("WWW-Authenticate", d.Challenge)
			}
			w.WriteHeader(d.Status)
			return
		}
		w.WriteHeader(200)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	reg, err := name.NewRegistry(strings.TrimPrefix(srv.URL, "http://"), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	do := func(auth authn.Authenticator, scope, method, path string) int {
		t.Helper()
		rt, err := transport.NewWithContext(context.Background(), reg, auth, http.DefaultTransport, []string{scope})
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		resp, err := (&http.Client{Transport: rt}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// Docker registry-mirrors: the client names library/debian.
	if s := do(authn.Anonymous, "repository:library/debian:pull", "GET", "/v2/library/debian/manifests/bookworm"); s != 200 {
		t.Errorf("anonymous mirror pull: %d", s)
	}
	// A CI push with credentials.
	ci := &authn.Basic{Username: "ci", Password: "ci-pw"}
	if s := do(ci, "repository:team/app:pull,push", "PUT", "/v2/team/app/manifests/v1"); s != 200 {
		t.Errorf("ci push: %d", s)
	}
	// Anonymous push is refused with a challenge, after the token dance.
	if s := do(authn.Anonymous, "repository:team/app:pull,push", "PUT", "/v2/team/app/manifests/v1"); s != 401 {
		t.Errorf("anonymous push: %d", s)
	}
	for _, s := range is.scopesAsked() {
		sc, err := ParseScope(s)
		if err != nil || (sc.Name != "docker.io/library/debian" && sc.Name != "team/app") {
			t.Errorf("token service saw %q", s)
		}
	}
}

func TestProxyRealmScheme(t *testing.T) {
	is := newTestIssuer(t, map[string]string{"ci": "ci-pw"}, dockerAuthACL)
	up := is.Start(t)
	names := testNames(t)
	for _, tc := range []struct{ scheme, want string }{
		{"", "http://reg.example:5000" + TokenPath + "?ns=docker.io"},
		{"https", "https://reg.example:5000" + TokenPath + "?ns=docker.io"},
		{"http", "http://reg.example:5000" + TokenPath + "?ns=docker.io"},
	} {
		a, err := NewAuthorizer(Options{Token: is.verifier(), TokenRealm: up.URL, ProxyToken: true, ProxyScheme: tc.scheme, Names: names})
		if err != nil {
			t.Fatal(err)
		}
		r := httptest.NewRequest(http.MethodGet, "http://reg.example:5000/v2/library/debian/manifests/12?ns=docker.io", nil)
		via := Via{Host: r.Host, NS: "docker.io"}
		_, err = a.Authorize(r, Need{Via: via, Scopes: []Scope{RepositoryScope("docker.io/library/debian", "pull")}})
		var d *Denial
		if !errors.As(err, &d) || d.Challenge == "" {
			t.Fatalf("scheme %q: want a challenge, got %v", tc.scheme, err)
		}
		c, err := ParseChallenge(d.Challenge)
		if err != nil {
			t.Fatal(err)
		}
		if realm, _ := c.Get("realm"); realm != tc.want {
			t.Errorf("scheme %q: realm %q, want %q", tc.scheme, realm, tc.want)
		}
	}
	if _, err := NewAuthorizer(Options{Token: is.verifier(), TokenRealm: up.URL, ProxyToken: true, ProxyScheme: "ftp"}); err == nil {
		t.Error("proxy scheme ftp accepted")
	}
}

// TestTokenProxyWithholdsOwnCredentials: API keys and workload tokens are
// this server's; whatever way a client sends them to the token proxy, they
// are refused with 401 and never reach the token service.
func TestTokenProxyWithholdsOwnCredentials(t *testing.T) {
	is := newTestIssuer(t, map[string]string{"ci": "ci-pw"}, dockerAuthACL)
	up := is.Start(t)
	u, _ := url.Parse(up.URL)
	const workloadToken = "header.workload.sig"
	p := &TokenProxy{Upstream: u, Names: testNames(t), Withhold: func(s string) bool { return s == workloadToken }}
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	apiKey := APIKeyPrefix + "0123456789abcdef_" + strings.Repeat("A", 43)
	if !IsAPIKey(apiKey) {
		t.Fatal("the test's API key lacks the shape of one")
	}
	scope := "scope=" + url.QueryEscape("repository:docker.io/library/debian:pull")
	for name, req := range map[string]func() *http.Request{
		"API key as the Basic password": func() *http.Request {
			r, _ := http.NewRequest(http.MethodGet, srv.URL+TokenPath+"?"+scope, nil)
			r.SetBasicAuth("ci", apiKey)
			return r
		},
		"workload token as the Basic password": func() *http.Request {
			r, _ := http.NewRequest(http.MethodGet, srv.URL+TokenPath+"?"+scope, nil)
			r.SetBasicAuth("ci", workloadToken)
			return r
		},
		"workload token as a bearer token": func() *http.Request {
			r, _ := http.NewRequest(http.MethodGet, srv.URL+TokenPath+"?"+scope, nil)
			r.Header.Set("Authorization", "Bearer "+workloadToken)
			return r
		},
		"API key in Basic base64 with junk between its characters": func() *http.Request {
			// Decoders that skip what is not base64 (Python's, by default)
			// read "ci:<key>" out of it.
			enc := base64.StdEncoding.EncodeToString([]byte("ci:" + apiKey))
			r, _ := http.NewRequest(http.MethodGet, srv.URL+TokenPath+"?"+scope, nil)
			r.Header.Set("Authorization", "Basic "+enc[:8]+"!"+enc[8:20]+"*"+enc[20:40]+"\t"+enc[40:])
			return r
		},
		"workload token in Basic base64 with junk": func() *http.Request {
			enc := base64.StdEncoding.EncodeToString([]byte("ci:" + workloadToken))
			r, _ := http.NewRequest(http.MethodGet, srv.URL+TokenPath+"?"+scope, nil)
			r.Header.Set("Authorization", "Basic "+enc[:4]+"#"+enc[4:])
			return r
		},
		"API key in the OAuth2 password form": func() *http.Request {
			r, _ := http.NewRequest(http.MethodPost, srv.URL+TokenPath, strings.NewReader(
				"grant_type=password&client_id=containerd&username=ci&password="+url.QueryEscape(apiKey)+"&"+scope))
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			return r
		},
		"workload token as a refresh token": func() *http.Request {
			r, _ := http.NewRequest(http.MethodPost, srv.URL+TokenPath, strings.NewReader(
				"grant_type=refresh_token&refresh_token="+workloadToken+"&"+scope))
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			return r
		},
	} {
		resp, err := http.DefaultClient.Do(req())
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), "UNAUTHORIZED") {
			t.Errorf("%s: %d %s", name, resp.StatusCode, body)
		}
	}
	if got := is.scopesAsked(); len(got) != 0 {
		t.Errorf("the token service was asked %q", got)
	}
	// Other credentials still pass.
	r, _ := http.NewRequest(http.MethodGet, srv.URL+TokenPath+"?"+scope, nil)
	r.SetBasicAuth("ci", "ci-pw")
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("htpasswd-style credentials: %d", resp.StatusCode)
	}
}

// TestTokenProxyPinsConfiguredKeys: a client cannot choose the service a
// token is for, nor any parameter the configured realm fixes (a tenant,
// say), in the query or in the OAuth2 form, however often it repeats
// them.
func TestTokenProxyPinsConfiguredKeys(t *testing.T) {
	is := newTestIssuer(t, map[string]string{"ci": "ci-pw"}, dockerAuthACL)
	up := is.Start(t)
	// The service is named in the realm here, and by Service in the
	// second half.
	u, _ := url.Parse(up.URL + "/auth?service=" + testService + "&tenant=acme")
	srv := httptest.NewServer(&TokenProxy{Upstream: u, Names: testNames(t)})
	t.Cleanup(srv.Close)
	u2, _ := url.Parse(up.URL + "/auth?tenant=acme")
	srv2 := httptest.NewServer(&TokenProxy{Upstream: u2, Service: testService, Names: testNames(t)})
	t.Cleanup(srv2.Close)
	scope := "scope=" + url.QueryEscape("repository:library/debian:pull")
	pinned := func(t *testing.T, where string, v url.Values) {
		t.Helper()
		if got := v["service"]; !slices.Equal(got, []string{testService}) {
			t.Errorf("%s: the token service got service %q, want only %q", where, got, testService)
		}
		if got := v["tenant"]; !slices.Equal(got, []string{"acme"}) {
			t.Errorf("%s: the token service got tenant %q, want only the realm's", where, got)
		}
	}
	for _, q := range []string{
		scope + "&service=evil.example",
		"service=evil.example&" + scope,
		scope + "&service=" + testService + "&service=evil.example",
		scope + "&tenant=other",
		scope + "&tenant=acme&tenant=other",
		scope + "&service=",
		scope,
	} {
		for _, s := range []*httptest.Server{srv, srv2} {
			t.Run("GET "+q, func(t *testing.T) {
				before := len(is.Requests())
				resp, err := http.Get(s.URL + TokenPath + "?" + q)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				reqs := is.Requests()[before:]
				if resp.StatusCode != http.StatusOK || len(reqs) != 1 {
					t.Fatalf("status %d, %d requests reached the token service", resp.StatusCode, len(reqs))
				}
				pinned(t, "query", reqs[0].Query)
			})
		}
	}
	for _, body := range []string{
		"grant_type=password&username=ci&password=ci-pw&" + scope + "&service=evil.example&tenant=other",
		"grant_type=password&username=ci&password=ci-pw&" + scope + "&service=evil.example&service=" + testService,
		"grant_type=password&username=ci&password=ci-pw&" + scope,
	} {
		t.Run("POST "+body, func(t *testing.T) {
			before := len(is.Requests())
			resp, err := http.Post(srv2.URL+TokenPath+"?service=evil.example&tenant=other", "application/x-www-form-urlencoded", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			reqs := is.Requests()[before:]
			if resp.StatusCode != http.StatusOK || len(reqs) != 1 {
				t.Fatalf("status %d, %d requests reached the token service", resp.StatusCode, len(reqs))
			}
			pinned(t, "query", reqs[0].Query)
			pinned(t, "form", reqs[0].Form)
		})
	}
}

// TestTokenProxyRefusesKeysInOtherCase: a token service that reads
// parameter names without regard to case would take `Scope` for a scope
// the proxy never translated, or `Service` and `TENANT` for the values the
// configuration pins. A request that spells a key the proxy controls in
// another case is refused, in the query and in the form, and nothing
// reaches the token service.
func TestTokenProxyRefusesKeysInOtherCase(t *testing.T) {
	is := newTestIssuer(t, map[string]string{"ci": "ci-pw"}, dockerAuthACL)
	up := is.Start(t)
	u, _ := url.Parse(up.URL + "/auth?tenant=acme")
	srv := httptest.NewServer(&TokenProxy{Upstream: u, Service: testService, Names: testNames(t)})
	t.Cleanup(srv.Close)
	scope := "scope=" + url.QueryEscape("repository:library/debian:pull")
	for _, extra := range []string{
		"Scope=" + url.QueryEscape("repository:team/secret:push"),
		"SCOPE=" + url.QueryEscape("repository:team/secret:push"),
		"Service=evil.example",
		"SERVICE=evil.example",
		"Tenant=other",
		"NS=docker.io",
		"Prefix=docker.io",
	} {
		t.Run("GET "+extra, func(t *testing.T) {
			resp, err := http.Get(srv.URL + TokenPath + "?" + scope + "&" + extra)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), `"code":"UNSUPPORTED"`) {
				t.Errorf("status %d: %.200s, want 400", resp.StatusCode, body)
			}
		})
		t.Run("POST "+extra, func(t *testing.T) {
			resp, err := http.Post(srv.URL+TokenPath, "application/x-www-form-urlencoded",
				strings.NewReader("grant_type=password&username=ci&password=ci-pw&"+scope+"&"+extra))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("status %d, want 400", resp.StatusCode)
			}
		})
	}
	if reqs := is.Requests(); len(reqs) != 0 {
		t.Errorf("%d requests reached the token service: %+v", len(reqs), reqs)
	}
}

// TestTokenProxyForwardsOnlyTokenParams: the token service gets the token
// request's own parameters and no other. A key it may read as one of them
// (a PHP-style array `scope[]`, which PHP and Rack parse into scope
// untranslated; a leading blank, which PHP strips; `Username`, whose
// logins the per-account bound would not count) or a single-valued key
// given twice (`account`: Go reads the first, PHP the last) is refused
// with 400 and nothing reaches the token service; a key no token service
// reads is dropped. Before, each passed unchanged.
func TestTokenProxyForwardsOnlyTokenParams(t *testing.T) {
	is := newTestIssuer(t, map[string]string{"ci": "ci-pw"}, dockerAuthACL)
	up := is.Start(t)
	u, _ := url.Parse(up.URL + "/auth")
	srv := httptest.NewServer(&TokenProxy{Upstream: u, Service: testService, Names: testNames(t)})
	t.Cleanup(srv.Close)
	scope := "scope=" + url.QueryEscape("repository:library/debian:pull")
	secret := url.QueryEscape("repository:team/secret:push")
	for _, extra := range []string{
		"scope[]=" + secret,
		"scope%5B%5D=" + secret,
		"scope[0]=" + secret,
		"Scope[]=" + secret,
		"+scope=" + secret,
		"service[]=evil.example",
		"account=ci&account=admin",
		"client_id=a&client_id=b",
		"Username=ci",
		"Account=admin",
	} {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			t.Run(method+" "+extra, func(t *testing.T) {
				var resp *http.Response
				var err error
				if method == http.MethodGet {
					resp, err = http.Get(srv.URL + TokenPath + "?" + scope + "&" + extra)
				} else {
					resp, err = http.Post(srv.URL+TokenPath, "application/x-www-form-urlencoded",
						strings.NewReader("grant_type=password&username=ci&password=ci-pw&"+scope+"&"+extra))
				}
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusBadRequest {
					t.Errorf("status %d: %.200s, want 400", resp.StatusCode, body)
				}
			})
		}
	}
	if reqs := is.Requests(); len(reqs) != 0 {
		t.Errorf("%d requests reached the token service: %+v", len(reqs), reqs)
	}
	resp, err := http.Get(srv.URL + TokenPath + "?" + scope + "&account=ci&client_id=podman&offline_token=true&tenant=x&debug=1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	reqs := is.Requests()
	if resp.StatusCode != http.StatusOK || len(reqs) != 1 {
		t.Fatalf("status %d, %d requests reached the token service", resp.StatusCode, len(reqs))
	}
	got := reqs[0].Query
	for _, k := range []string{"scope", "service", "account", "client_id", "offline_token"} {
		if !got.Has(k) {
			t.Errorf("the token service did not get %s: %v", k, got)
		}
	}
	for _, k := range []string{"tenant", "debug"} {
		if got.Has(k) {
			t.Errorf("the token service got %s, which no token request has: %v", k, got)
		}
	}
}

// TestTokenProxyHidesTokenServiceAddresses: what the token service
// answers reaches the client without the headers that name its own
// addresses, and a redirect is neither followed nor passed on.
func TestTokenProxyHidesTokenServiceAddresses(t *testing.T) {
	const internal = "auth.internal.example"
	var redirectFollowed bool
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		switch r.URL.Path {
		case "/moved":
			// Reachable, so a proxy that followed it would be seen to.
			h.Set("Location", "/elsewhere?from="+internal)
			w.WriteHeader(http.StatusFound)
		case "/elsewhere":
			redirectFollowed = true
			h.Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"token":"x"}`)
		default:
			h.Set("Content-Type", "application/json")
			h.Set("Location", "http://"+internal+"/auth/next")
			h.Set("Content-Location", "http://"+internal+"/auth")
			h.Set("Link", "<http://"+internal+"/auth/login>; rel=\"login\"")
			h.Set("Set-Cookie", "sid=1; Domain="+internal)
			h.Set("Server", internal)
			h.Add("Www-Authenticate", `Bearer realm="http://`+internal+`/auth",service="registry.test"`)
			h.Add("Www-Authenticate", `Basic realm="Acme auth"`)
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"details":"wrong password"}`)
		}
	}))
	t.Cleanup(up.Close)
	for _, path := range []string{"/auth", "/moved"} {
		u, _ := url.Parse(up.URL + path)
		srv := httptest.NewServer(&TokenProxy{Upstream: u, Service: testService, Names: testNames(t)})
		resp, err := http.Get(srv.URL + TokenPath + "?scope=repository:debian:pull")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		srv.Close()
		for k, vs := range resp.Header {
			for _, v := range vs {
				if strings.Contains(v, internal) {
					t.Errorf("%s: header %s: %q names the token service's host", path, k, v)
				}
			}
		}
		if strings.Contains(string(body), internal) {
			t.Errorf("%s: body names the token service's host: %s", path, body)
		}
		switch path {
		case "/auth":
			if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("Www-Authenticate") != `Basic realm="Acme auth"` || !strings.Contains(string(body), "wrong password") {
				t.Errorf("%s: %d %q %s; want the 401 with its Basic challenge and body", path, resp.StatusCode, resp.Header.Values("Www-Authenticate"), body)
			}
		case "/moved":
			if resp.StatusCode != http.StatusBadGateway || redirectFollowed {
				t.Errorf("%s: %d (redirect followed: %v); want 502, not followed", path, resp.StatusCode, redirectFollowed)
			}
		}
	}
}

func TestTokenProxyCheck(t *testing.T) {
	for _, tc := range []struct {
		realm, service string
		ok             bool
	}{
		{"https://auth.example/token", "registry.example", true},
		{"https://auth.example/token?service=registry.example", "", true},
		{"https://auth.example/token?service=registry.example", "registry.example", true},
		{"https://auth.example/token?service=other.example", "registry.example", false},
		{"https://auth.example/token?service=a&service=b", "", false},
		{"https://auth.example/token?service=", "", false},
		{"https://auth.example/token", "", false},
		{"ftp://auth.example/token", "registry.example", false},
		{"/token", "registry.example", false},
	} {
		u, err := url.Parse(tc.realm)
		if err != nil {
			t.Fatal(err)
		}
		err = (&TokenProxy{Upstream: u, Service: tc.service}).Check()
		if (err == nil) != tc.ok {
			t.Errorf("realm %q service %q: %v, want ok %v", tc.realm, tc.service, err, tc.ok)
		}
	}
}

// TestTokenProxyRedirectNotFollowed: the proxy does not carry the
// client's credentials to wherever the token service's redirect points
// (net/http would, to another port of the host), nor pass it on.
func TestTokenProxyRedirectNotFollowed(t *testing.T) {
	var seen atomic.Value
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.Header.Get("Authorization"))
		_, _ = w.Write([]byte(`{"token":"x"}`))
	}))
	defer elsewhere.Close()
	tokens := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, elsewhere.URL+"/token", http.StatusTemporaryRedirect)
	}))
	defer tokens.Close()
	u, _ := url.Parse(tokens.URL + "/token")
	proxy := httptest.NewServer(&TokenProxy{Upstream: u, Names: testNames(t)})
	defer proxy.Close()
	req, _ := http.NewRequest(http.MethodGet, proxy.URL+TokenPath+"?scope=repository:team/app:pull", nil)
	req.SetBasicAuth("ci", "ci-pw")
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("status %d, want 502: a redirect is neither followed nor passed on", resp.StatusCode)
	}
	if got := seen.Load(); got != nil {
		t.Fatalf("the redirect target got a request (Authorization %q)", got)
	}
}

// TestTokenProxyLogsNoSecrets: a refused token request is logged without
// the values a client may put credentials in (an API key or a password in
// the query, which the proxy refuses to forward), while its scope and
// the reason stay readable.
func TestTokenProxyLogsNoSecrets(t *testing.T) {
	is := newTestIssuer(t, map[string]string{"ci": "ci-pw"}, dockerAuthACL)
	up := is.Start(t)
	u, _ := url.Parse(up.URL)
	core, logs := observer.New(zapcore.DebugLevel)
	srv := httptest.NewServer(&TokenProxy{Upstream: u, Service: testService, Names: testNames(t), Logger: zap.New(core)})
	t.Cleanup(srv.Close)
	apiKey := APIKeyPrefix + "0123456789abcdef_" + strings.Repeat("B", 43)
	for _, q := range []string{
		"scope=repository:app:pull&password=" + url.QueryEscape(apiKey),
		"scope=repository:app:pull&account=ci&refresh_token=" + url.QueryEscape(apiKey),
		"scope=repository:..:pull&password=hunter2-secret",
		"scope=repository:app:pull&Service=x&password=hunter2-secret",
	} {
		resp, err := http.Get(srv.URL + TokenPath + "?" + q)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Errorf("%s: %d, want a refusal", q, resp.StatusCode)
		}
	}
	if logs.Len() != 4 {
		t.Fatalf("%d log entries, want one per refusal", logs.Len())
	}
	for _, e := range logs.All() {
		line := e.Message
		for k, v := range e.ContextMap() {
			line += fmt.Sprintf(" %s=%v", k, v)
		}
		for _, secret := range []string{apiKey, "hunter2-secret", "BBBBBBBB"} {
			if strings.Contains(line, secret) {
				t.Errorf("the log holds a secret: %s", line)
			}
		}
		if !strings.Contains(line, "scope=repository") {
			t.Errorf("the log lost the scope: %s", line)
		}
	}
}

// TestTokenProxyAnswerInert: the token service's answer is served on this
// site's origin. One that echoes a request's parameter as HTML (an error
// page) must not run as a page of the site when a link sends a browser
// to /_oci/token with a script in the query.
func TestTokenProxyAnswerInert(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, "<p>unknown client "+r.URL.Query().Get("client_id")+"</p>")
	}))
	t.Cleanup(up.Close)
	u, _ := url.Parse(up.URL + "/auth")
	srv := httptest.NewServer(&TokenProxy{Upstream: u, Service: testService, Names: testNames(t)})
	t.Cleanup(srv.Close)
	for _, q := range []string{"?client_id=" + url.QueryEscape("<script>alert(1)</script>"), "?scope=bad"} {
		resp, err := http.Get(srv.URL + TokenPath + q)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("%s: X-Content-Type-Options %q", q, got)
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "sandbox") || !strings.Contains(csp, "default-src 'none'") {
			t.Errorf("%s: Content-Security-Policy %q, want a sandbox with nothing allowed", q, csp)
		}
	}
}

// TestTokenProxyForwardsClientAddress: the token service is told the
// client's address as the server determined it (behind a trusted load
// balancer, the one it names), so that its own limits count clients, not
// the load balancer.
func TestTokenProxyForwardsClientAddress(t *testing.T) {
	seen := make(chan string, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Get("X-Forwarded-For")
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"token":"x"}`)
	}))
	t.Cleanup(up.Close)
	u, _ := url.Parse(up.URL + "/auth")
	p := &TokenProxy{Upstream: u, Service: testService, Names: testNames(t),
		ClientIP: func(*http.Request) string { return "203.0.113.5" }}
	r := httptest.NewRequest(http.MethodGet, TokenPath+"?scope=repository:debian:pull", nil)
	r.RemoteAddr = "10.0.0.2:5000" // the load balancer
	w := httptest.NewRecorder()
	p.ServeHTTP(w, r)
	if got := <-seen; got != "203.0.113.5" {
		t.Fatalf("X-Forwarded-For %q, want the client's 203.0.113.5", got)
	}
}

// TestTokenProxyBoundsAnswer: a token service's answer is passed on only
// up to maxTokenAnswer; a larger one (a broken or hostile token service
// streaming without end) is answered 502, whatever its status, after at
// most that much is read. Before, 64 MiB came through to the client, bounded
// only by the client's 30 s timeout.
func TestTokenProxyBoundsAnswer(t *testing.T) {
	const huge = 64 << 20
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Query().Get("account") == "small" {
			_, _ = io.WriteString(w, `{"token":"t"}`)
			return
		}
		if r.URL.Query().Get("account") == "refused" {
			w.WriteHeader(http.StatusUnauthorized)
		}
		chunk := bytes.Repeat([]byte(" "), 64<<10)
		for sent := 0; sent < huge; sent += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	t.Cleanup(up.Close)
	u, _ := url.Parse(up.URL)
	srv := httptest.NewServer(&TokenProxy{Upstream: u, Service: testService, Names: testNames(t)})
	t.Cleanup(srv.Close)
	for _, account := range []string{"big", "refused"} {
		resp, err := http.Get(srv.URL + TokenPath + "?account=" + account)
		if err != nil {
			t.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadGateway || n > 1<<10 {
			t.Errorf("%s: status %d, %d bytes passed on; want 502 and a short error", account, resp.StatusCode, n)
		}
	}
	resp, err := http.Get(srv.URL + TokenPath + "?account=small")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != `{"token":"t"}` || resp.ContentLength != int64(len(body)) {
		t.Errorf("a token answer: %d %q (length %d)", resp.StatusCode, body, resp.ContentLength)
	}
}

// TestTokenProxyRefusesQueryCredentials: a password or refresh token in
// the query (of a GET or a POST) is refused with 400 and never reaches the
// token service. The login bound counts the credentials of the
// Authorization header and the form; passed on from the query, they were
// guesses no bound counted: against the binary, after the address had
// used up its bound with Basic logins (429), ten more guesses with
// ?username=&password= each reached the token service and got its 401.
// A query is also what servers and proxies log.
func TestTokenProxyRefusesQueryCredentials(t *testing.T) {
	is := newTestIssuer(t, map[string]string{"ci": "ci-pw"}, dockerAuthACL)
	up := is.Start(t)
	u, _ := url.Parse(up.URL + "/auth")
	srv := httptest.NewServer(&TokenProxy{Upstream: u, Service: testService, Names: testNames(t)})
	t.Cleanup(srv.Close)
	scope := "scope=" + url.QueryEscape("repository:library/debian:pull")
	for _, q := range []string{"username=ci&password=guess", "password=guess", "refresh_token=guess", "grant_type=refresh_token&refresh_token=guess"} {
		resp, err := http.Get(srv.URL + TokenPath + "?" + scope + "&" + q)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("GET with %s: %d, want 400", q, resp.StatusCode)
		}
		resp, err = http.Post(srv.URL+TokenPath+"?"+q, "application/x-www-form-urlencoded", strings.NewReader("grant_type=password&username=ci&"+scope))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("POST with %s in its query: %d, want 400", q, resp.StatusCode)
		}
	}
	if reqs := is.Requests(); len(reqs) != 0 {
		t.Errorf("%d requests with credentials in the query reached the token service", len(reqs))
	}
}
