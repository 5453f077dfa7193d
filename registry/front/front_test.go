package front

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.uber.org/zap/zaptest"

	"github.com/caddy-oci/caddy-oci/authscope"
)

func jsonDecode(resp *http.Response, v any) error { return json.NewDecoder(resp.Body).Decode(v) }

// seed pushes img to the backend directly under a backend name.
func (rg *rig) seed(t *testing.T, backendName string, img v1.Image) {
	t.Helper()
	ref, err := name.ParseReference(strings.TrimPrefix(rg.backend.URL, "http://")+"/"+backendName, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: "admin", Password: testUsers["admin"]})); err != nil {
		t.Fatalf("seeding %s: %v", backendName, err)
	}
}

// rewriteTransport changes the path and query of requests to the front's
// registry API as a client configured that way sends them: containerd's
// `/<prefix>/v2/` and its `?ns=`.
type rewriteTransport struct {
	base     http.RoundTripper
	host     string
	prefix   string
	ns       string
	requests []string
}

func (rt *rewriteTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Host == rt.host && strings.HasPrefix(r.URL.Path, "/v2") {
		r = r.Clone(r.Context())
		if rt.prefix != "" {
			r.URL.Path = "/" + rt.prefix + r.URL.Path
		}
		if rt.ns != "" {
			q := r.URL.Query()
			q.Set("ns", rt.ns)
			r.URL.RawQuery = q.Encode()
		}
		rt.requests = append(rt.requests, r.URL.RequestURI())
	}
	return rt.base.RoundTrip(r)
}

func pullAll(t *testing.T, ref string, want v1.Hash, opts ...remote.Option) {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(r, opts...)
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
	got, err := img.Digest()
	if err != nil || got != want {
		t.Fatalf("pull %s: digest %v (%v), want %v", ref, got, err, want)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatalf("pull %s: layer: %v", ref, err)
		}
		// Compressed verifies the digest once read to the end.
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatalf("pull %s: layer: %v", ref, err)
		}
		rc.Close()
	}
}

// Every name form a client uses reaches docker.io/library/debian in the
// backend, and the token service is only ever asked for backend names.
func TestPullEveryNameForm(t *testing.T) {
	rg := newRig(t, nil)
	img, err := random.Image(4096, 2)
	if err != nil {
		t.Fatal(err)
	}
	rg.seed(t, "docker.io/library/debian:bookworm", img)
	want, _ := img.Digest()
	host := rg.frontHost()
	anon := remote.WithAuth(authn.Anonymous)
	seeded := len(rg.issuer.ScopesAsked())

	cases := []struct {
		name string
		ref  string
		tr   func() http.RoundTripper
	}{
		{"prefix in the name (/v2/docker.io/...)", host + "/docker.io/library/debian:bookworm", nil},
		{"default namespace", host + "/library/debian:bookworm", nil},
		{"default namespace, library expansion", host + "/debian:bookworm", nil},
		{"host alias", mirrorHost + "/debian:bookworm", func() http.RoundTripper { return rg.aliasTransport() }},
		{"host alias, library typed", mirrorHost + "/library/debian:bookworm", func() http.RoundTripper { return rg.aliasTransport() }},
		{"path prefix (/docker.io/v2/...)", host + "/library/debian:bookworm", func() http.RoundTripper {
			return &rewriteTransport{base: http.DefaultTransport, host: host, prefix: "docker.io"}
		}},
		{"ns alias", host + "/library/debian:bookworm", func() http.RoundTripper {
			return &rewriteTransport{base: http.DefaultTransport, host: host, ns: "registry-1.docker.io"}
		}},
		{"path prefix alias and ns", host + "/debian:bookworm", func() http.RoundTripper {
			return &rewriteTransport{base: http.DefaultTransport, host: host, prefix: "index.docker.io", ns: "docker.io"}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			opts := []remote.Option{anon}
			if tc.tr != nil {
				opts = append(opts, remote.WithTransport(tc.tr()))
			}
			pullAll(t, tc.ref, want, opts...)
		})
	}
	asked := rg.issuer.ScopesAsked()[seeded:]
	if len(asked) == 0 {
		t.Fatal("no token was asked for: the backend's auth was not exercised")
	}
	for _, s := range asked {
		if s != "repository:docker.io/library/debian:pull" {
			t.Errorf("token service asked for %q; only the backend name may reach it", s)
		}
	}
}

// A CI user pushes through the front under names it types; the backend
// stores them under its own names, with the ACLs written against those.
func TestPushWithCredentials(t *testing.T) {
	rg := newRig(t, nil)
	base, err := random.Image(2048, 2)
	if err != nil {
		t.Fatal(err)
	}
	rg.seed(t, "docker.io/library/debian:bookworm", base)
	ci := remote.WithAuth(&authn.Basic{Username: "ci", Password: testUsers["ci"]})
	host := rg.frontHost()
	seeded := len(rg.issuer.ScopesAsked())

	for _, tc := range []struct {
		ref, backend string
		tr           http.RoundTripper
	}{
		{mirrorHost + "/tool:v1", "docker.io/library/tool:v1", rg.aliasTransport()},
		{host + "/team/app:v1", "team/app:v1", http.DefaultTransport},
	} {
		ref, err := name.ParseReference(tc.ref, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref, base, ci, remote.WithTransport(tc.tr)); err != nil {
			t.Fatalf("push %s: %v", tc.ref, err)
		}
		bref, _ := name.ParseReference(strings.TrimPrefix(rg.backend.URL, "http://")+"/"+tc.backend, name.Insecure)
		desc, err := remote.Get(bref, remote.WithAuth(&authn.Basic{Username: "admin", Password: testUsers["admin"]}))
		if err != nil {
			t.Fatalf("backend has no %s after pushing %s: %v", tc.backend, tc.ref, err)
		}
		if want, _ := base.Digest(); desc.Digest != want {
			t.Errorf("backend %s: digest %s, want %s", tc.backend, desc.Digest, want)
		}
	}
	for _, s := range rg.issuer.ScopesAsked()[seeded:] {
		if !strings.Contains(s, ":docker.io/library/") && !strings.Contains(s, ":team/app:") {
			t.Errorf("token service asked for %q, not a backend name", s)
		}
	}
	// Without credentials the backend's refusal stands.
	ref, _ := name.ParseReference(host+"/team/anon:v1", name.Insecure)
	if err := remote.Write(ref, base, remote.WithAuth(authn.Anonymous)); err == nil {
		t.Error("anonymous push through the front succeeded")
	}
}

// do sends one request to the front; hdr pairs are header names and
// values ("Host" sets the request's host).
func (rg *rig) do(t *testing.T, method, path string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, rg.front.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func challengeOf(t *testing.T, resp *http.Response) map[string]string {
	t.Helper()
	h := resp.Header.Get("Www-Authenticate")
	if resp.StatusCode != http.StatusUnauthorized || h == "" {
		t.Fatalf("want a 401 with a challenge, got %d %q", resp.StatusCode, h)
	}
	out := map[string]string{}
	rest, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		t.Fatalf("not a Bearer challenge: %q", h)
	}
	for _, kv := range strings.Split(rest, `",`) {
		k, v, _ := strings.Cut(kv, "=")
		out[k] = strings.Trim(v, `"`)
	}
	return out
}

// Each challenge the backend sends comes back pointing at the front's
// token proxy, with the client's names, the Via of the request in the
// realm, and the backend's service.
func TestChallengeRewrite(t *testing.T) {
	rg := newRig(t, nil)
	img, _ := random.Image(1024, 1)
	rg.seed(t, "docker.io/library/debian:bookworm", img)
	d, _ := img.Digest()
	pullOnly := rg.token(t, "", "repository:docker.io/library/debian:pull")
	host := rg.frontHost()

	cases := []struct {
		name, method, path string
		hdr                []string
		realm, scope, err  string
	}{
		{name: "ping, no scope", method: "GET", path: "/v2/",
			realm: "http://" + host + "/_oci/token"},
		{name: "ping under a path prefix", method: "GET", path: "/docker.io/v2/",
			realm: "http://" + host + "/_oci/token?prefix=docker.io"},
		{name: "manifest, default namespace", method: "GET", path: "/v2/debian/manifests/bookworm",
			realm: "http://" + host + "/_oci/token", scope: "repository:debian:pull"},
		{name: "manifest, host alias", method: "HEAD", path: "/v2/library/debian/manifests/bookworm", hdr: []string{"Host", mirrorHost},
			realm: "http://" + mirrorHost + "/_oci/token", scope: "repository:library/debian:pull"},
		{name: "manifest, ns", method: "GET", path: "/v2/library/debian/manifests/bookworm?ns=docker.io",
			realm: "http://" + host + "/_oci/token?ns=docker.io", scope: "repository:library/debian:pull"},
		{name: "blob, path prefix", method: "GET", path: "/docker.io/v2/library/debian/blobs/" + d.String(),
			realm: "http://" + host + "/_oci/token?prefix=docker.io", scope: "repository:library/debian:pull"},
		{name: "mount: two scopes", method: "POST", path: "/v2/team/app/blobs/uploads/?mount=" + d.String() + "&from=debian",
			realm: "http://" + host + "/_oci/token", scope: "repository:team/app:pull,push repository:debian:pull"},
		{name: "insufficient_scope", method: "PUT", path: "/v2/debian/manifests/new", hdr: []string{"Authorization", "Bearer " + pullOnly},
			realm: "http://" + host + "/_oci/token", scope: "repository:debian:pull,push", err: "insufficient_scope"},
		{name: "invalid_token", method: "GET", path: "/v2/debian/manifests/bookworm", hdr: []string{"Authorization", "Bearer not.a.token"},
			realm: "http://" + host + "/_oci/token", scope: "repository:debian:pull", err: "invalid_token"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := rg.do(t, tc.method, tc.path, tc.hdr...)
			c := challengeOf(t, resp)
			if c["realm"] != tc.realm || c["service"] != "registry.test" || c["scope"] != tc.scope || c["error"] != tc.err {
				t.Errorf("challenge %q\nwant realm=%q service=registry.test scope=%q error=%q", resp.Header.Get("Www-Authenticate"), tc.realm, tc.scope, tc.err)
			}
			if strings.Contains(string(body), "docker.io/") {
				t.Errorf("error body names the backend's repository: %s", body)
			}
		})
	}

	t.Run("service set by the front", func(t *testing.T) {
		rg := newRig(t, nil, func(c *Config) { c.Service = "front.test"; c.ProxyToken = false })
		resp, _ := rg.do(t, "GET", "/v2/debian/manifests/bookworm")
		c := challengeOf(t, resp)
		if c["service"] != "front.test" || c["realm"] != rg.realm || c["scope"] != "repository:debian:pull" {
			t.Errorf("without the token proxy: challenge %q; want the backend's realm, service front.test, the typed scope", resp.Header.Get("Www-Authenticate"))
		}
	})
}

// The token a client gets through the proxy, for the scope it read in a
// rewritten challenge, opens the backend.
func TestTokenProxyTranslates(t *testing.T) {
	rg := newRig(t, nil)
	img, _ := random.Image(1024, 1)
	rg.seed(t, "docker.io/library/debian:bookworm", img)
	seeded := len(rg.issuer.ScopesAsked())

	resp, _ := rg.do(t, "GET", "/v2/debian/manifests/bookworm", "Host", mirrorHost)
	c := challengeOf(t, resp)
	realm, err := url.Parse(c["realm"])
	if err != nil {
		t.Fatal(err)
	}
	q := realm.Query()
	q.Set("service", c["service"])
	q.Set("scope", c["scope"])
	resp, body := rg.do(t, "GET", realm.Path+"?"+q.Encode(), "Host", mirrorHost)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("token proxy: %d %s", resp.StatusCode, body)
	}
	var tok struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(body, &tok); err != nil {
		t.Fatal(err)
	}
	resp, _ = rg.do(t, "GET", "/v2/debian/manifests/bookworm", "Host", mirrorHost,
		"Authorization", "Bearer "+tok.Token, "Accept", "application/vnd.docker.distribution.manifest.v2+json")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("manifest with the proxied token: %d", resp.StatusCode)
	}
	if got := rg.issuer.ScopesAsked()[seeded:]; !slices.Equal(got, []string{"repository:docker.io/library/debian:pull"}) {
		t.Errorf("issuer asked %q", got)
	}
}

// A scope the front cannot translate never reaches the token service.
func TestTokenProxyRefusesUntranslatable(t *testing.T) {
	rg := newRig(t, nil)
	for _, q := range []string{
		"scope=repository:Debian:pull",
		"scope=repository:library/../x:pull",
		"scope=repository:debian:pull&prefix=quay.io",
		"scope=repository:debian:pull&ns=unknown.example",
		"scope=repository:debian:pull+repository:a//b:pull",
		"scope=not-a-scope",
	} {
		resp, _ := rg.do(t, "GET", "/_oci/token?service=registry.test&"+q)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400", q, resp.StatusCode)
		}
	}
	// containerd's OAuth2 form, with credentials, is held to the same.
	form := url.Values{"grant_type": {"password"}, "username": {"ci"}, "password": {"ci-pw"},
		"service": {"registry.test"}, "scope": {"repository:debian:pull repository:a/../b:pull,push"}}
	resp, err := http.Post(rg.front.URL+"/_oci/token", "application/x-www-form-urlencoded", strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("POST form with an untranslatable scope: status %d, want 400", resp.StatusCode)
	}
	if asked := rg.issuer.ScopesAsked(); len(asked) != 0 {
		t.Errorf("the token service was asked %q", asked)
	}
	// The same form with translatable scopes goes through, translated.
	form.Set("scope", "repository:debian:pull repository:team/app:pull,push")
	resp, err = http.Post(rg.front.URL+"/_oci/token", "application/x-www-form-urlencoded", strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if want := []string{"repository:docker.io/library/debian:pull", "repository:team/app:pull,push"}; resp.StatusCode != http.StatusOK || !slices.Equal(rg.issuer.ScopesAsked(), want) {
		t.Errorf("POST form: %d, issuer asked %q, want %q", resp.StatusCode, rg.issuer.ScopesAsked(), want)
	}
}

// TestFrontRefusesCredentials: two Authorization headers never reach the
// backend nor the token service (which one counts would be theirs to
// pick), and neither does an API key of this server, however it is
// dressed; other credentials pass.
func TestFrontRefusesCredentials(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	backend := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.URL.Path+" "+strings.Join(r.Header.Values("Authorization"), " | "))
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	})
	tokens := httptest.NewServer(backend)
	t.Cleanup(tokens.Close)
	cfg := frontConfig(tokens.URL)
	cfg.Logger = zaptest.NewLogger(t)
	f, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	fs := httptest.NewServer(f.Middleware(backend))
	t.Cleanup(fs.Close)

	key := authscope.APIKeyPrefix + "0123456789abcdef_" + strings.Repeat("B", 43)
	basic := func(user, pass string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
	}
	send := func(path string, auth ...string) int {
		req, _ := http.NewRequest(http.MethodGet, fs.URL+path, nil)
		req.Header["Authorization"] = auth
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		name, path string
		auth       []string
		want       int
	}{
		{"two headers to the API", "/v2/debian/manifests/latest", []string{basic("ci", "ci-pw"), "Bearer t"}, 400},
		{"two headers outside the API", "/other", []string{basic("ci", "ci-pw"), basic("root", "x")}, 400},
		{"two headers to the token proxy", "/_oci/token?scope=repository:debian:pull", []string{basic("ci", "ci-pw"), "Bearer t"}, 400},
		{"API key as the password", "/v2/debian/manifests/latest", []string{basic("ci", key)}, 401},
		{"API key with trailing whitespace", "/v2/", []string{basic("ci", key+" ")}, 401},
		{"API key as a bearer token", "/v2/debian/tags/list", []string{"Bearer " + key}, 401},
		{"API key outside the API", "/other", []string{basic("ci", key)}, 401},
		{"API key without its prefix", "/v2/", []string{basic("ci", key[len(authscope.APIKeyPrefix):])}, 401},
		{"API key behind a harmless first header", "/other", []string{basic("ci", "ci-pw"), basic("ci", key)}, 401},
		{"API key in the query", "/v2/debian/tags/list?password=" + key, nil, 401},
		{"API key in the query outside the API", "/other?k=" + key, nil, 401},
		// Queries url.ParseQuery reads only in part, passed on as sent.
		{"API key after a semicolon outside the API", "/other?a=1;k=" + key, nil, 401},
		{"API key beside a bad escape outside the API", "/other?k=" + key + "%zz", nil, 401},
		{"API key encoded, beside a bad escape", "/other?k=%6Fcik_" + key[len("ocik_"):] + "%zz", nil, 401},
	} {
		if got := send(tc.path, tc.auth...); got != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, got, tc.want)
		}
	}
	req, _ := http.NewRequest(http.MethodGet, fs.URL+"/v2/", nil)
	req.Header.Set("X-Registry-Auth", key)
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("API key in another header: status %d, want 401", resp.StatusCode)
	}
	mu.Lock()
	if len(seen) != 0 {
		t.Errorf("passed on: %q", seen)
	}
	mu.Unlock()
	if got := send("/v2/debian/manifests/latest", basic("ci", "ci-pw")); got != http.StatusOK {
		t.Errorf("plain Basic credentials: status %d", got)
	}
}
