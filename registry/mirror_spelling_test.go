package registry

// A one-component upstream name has one internal name however a client
// spells it: `docker.io/alpine` is `docker.io/library/alpine`, as
// `alpine` is on the default mirror. Policies are written on internal
// names, so a spelling that skipped the library prefix would be another
// repository to them, and to upstream.

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-oci/caddy-oci/authscope"
)

func TestMirrorLibrarySpellings(t *testing.T) {
	up := newFakeUpstream(t)
	m, err := NewMirror(MirrorConfig{Prefix: "docker.io", Upstreams: []string{up.srv.URL}, Default: true})
	if err != nil {
		t.Fatal(err)
	}
	names, err := authscope.NewNames([]authscope.Namespace{m.Namespace()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	hash, _ := bcrypt.GenerateFromPassword([]byte("alice-pw"), bcrypt.MinCost)
	hp, err := authscope.ParseHtpasswd([]byte("alice:" + string(hash) + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	read := []string{authscope.ActionRead}
	// Anyone reads one-component names of users' repositories... but the
	// official images are alice's only: a spelling that escaped the
	// library prefix would hand them to anyone.
	pol, err := authscope.NewPolicy(authscope.PolicyConfig{Repositories: map[string]authscope.RepositoryPolicy{
		"docker.io/*":          {Anonymous: read},
		"docker.io/library/**": {Policies: []authscope.Grant{{Users: []string{"alice"}, Actions: read}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	a, err := authscope.NewAuthorizer(authscope.Options{Htpasswd: hp, Policy: pol, Names: names, BasicRealm: "test"})
	if err != nil {
		t.Fatal(err)
	}
	tr := newTestRegistry(t, func(c *Config) {
		c.Mirrors = []*Mirror{m}
		c.Authorizer = a
		c.CanRead = a.CanRead
	})
	img := randomImage(t, 1024, 1)
	up.pushImage("library/alpine", "3.20", img)
	want, _ := img.Digest()

	for _, p := range []string{
		"/v2/docker.io/alpine/manifests/3.20",
		"/v2/docker.io/library/alpine/manifests/3.20",
		"/v2/alpine/manifests/3.20",
		"/v2/alpine/manifests/3.20?ns=docker.io",
		"/docker.io/v2/alpine/manifests/3.20",
		"/docker.io/v2/docker.io/alpine/manifests/3.20",
		"/v2/docker.io/alpine/manifests/3.20?ns=registry-1.docker.io",
		// regctl with its own hostname for docker.io
		"/v2/docker.io/alpine/manifests/3.20?ns=hub.mycorp.example",
		"/v2/docker.io/library/alpine/manifests/3.20?ns=hub.mycorp.example",
	} {
		tr.wantError(tr.do(http.MethodGet, p, nil), http.StatusUnauthorized, CodeUnauthorized)
		resp := tr.do(http.MethodGet, p, nil, alice...)
		tr.wantStatus(resp, http.StatusOK)
		if got := resp.Header.Get("Docker-Content-Digest"); got != want.String() {
			t.Errorf("%s: digest %s, want %s", p, got, want)
		}
	}
	for _, r := range up.requests() {
		if r != "GET manifests library/alpine" && r != "HEAD manifests library/alpine" {
			t.Errorf("upstream was asked %q; want only library/alpine", r)
		}
	}
	if _, err := tr.store.ResolveTag(t.Context(), "docker.io/alpine", "3.20"); err == nil {
		t.Error("the store holds docker.io/alpine beside docker.io/library/alpine")
	}
}

// A push of a name typed without a mirror's prefix that the default
// mirror (or a host of a mirror) took says so, and which config line
// keeps the name local; with the prefix typed, the refusal stays short.
func TestMirrorReadOnlySaysWhy(t *testing.T) {
	env := newMirrorEnv(t)
	for _, tc := range []struct {
		path, host, want string
	}{
		{"/v2/me/app/blobs/uploads/", "", `docker.io is a read-only mirror: "me/app" was taken as "docker.io/me/app" because docker.io is the default mirror; "local me" in oci_registry keeps me/... local`},
		{"/v2/app/manifests/v1", "", `"app" was taken as "docker.io/library/app" because docker.io is the default mirror; "local app" in oci_registry keeps app/... local`},
		{"/v2/me/app/blobs/uploads/", "docker.mirror.test:5000", `"me/app" was taken as "docker.io/me/app" because host docker.mirror.test belongs to mirror docker.io`},
		{"/v2/docker.io/me/app/blobs/uploads/", "", "docker.io is a read-only mirror: push to a name outside docker.io/"},
		{"/v2/me/app/blobs/uploads/?ns=docker.io", "", "docker.io is a read-only mirror: push to a name outside docker.io/"},
	} {
		method := http.MethodPost
		if strings.Contains(tc.path, "/manifests/") {
			method = http.MethodPut
		}
		var hdr []string
		if tc.host != "" {
			hdr = []string{"Host", tc.host}
		}
		resp := env.do(method, tc.path, []byte("{}"), hdr...)
		env.wantError(resp, http.StatusMethodNotAllowed, CodeUnsupported)
		if !strings.Contains(string(resp.body), jsonQuoted(tc.want)) {
			t.Errorf("%s %s (host %q): %s\nwant the message to contain %s", method, tc.path, tc.host, resp.body, tc.want)
		}
	}
}

// jsonQuoted is s as it appears inside a JSON string.
func jsonQuoted(s string) string {
	b, _ := json.Marshal(s)
	return string(b[1 : len(b)-1])
}

// Under auth the refusal is the Authorizer's 403, and it says the same.
func TestMirrorReadOnlySaysWhyUnderAuth(t *testing.T) {
	up := newFakeUpstream(t)
	m, err := NewMirror(MirrorConfig{Prefix: "docker.io", Upstreams: []string{up.srv.URL}, Default: true})
	if err != nil {
		t.Fatal(err)
	}
	names, err := authscope.NewNames([]authscope.Namespace{m.Namespace()}, []string{"team"})
	if err != nil {
		t.Fatal(err)
	}
	all := []string{authscope.ActionRead, authscope.ActionCreate}
	pol, err := authscope.NewPolicy(authscope.PolicyConfig{Repositories: map[string]authscope.RepositoryPolicy{"**": {Anonymous: all}}})
	if err != nil {
		t.Fatal(err)
	}
	a, err := authscope.NewAuthorizer(authscope.Options{Policy: pol, Names: names, BasicRealm: "test"})
	if err != nil {
		t.Fatal(err)
	}
	tr := newTestRegistry(t, func(c *Config) {
		c.Mirrors = []*Mirror{m}
		c.LocalPrefixes = []string{"team"}
		c.Authorizer = a
		c.CanRead = a.CanRead
	})
	resp := tr.do(http.MethodPost, "/v2/me/app/blobs/uploads/", nil)
	tr.wantError(resp, http.StatusForbidden, CodeDenied)
	want := jsonQuoted(`mirrored repositories are read-only: "me/app" was taken as "docker.io/me/app" because docker.io is the default mirror; "local me" in oci_registry keeps me/... local`)
	if !strings.Contains(string(resp.body), want) {
		t.Errorf("refusal %s\nwant it to contain %s", resp.body, want)
	}
	tr.pushBlob("team/app", []byte("local"))
}
