package registry

// A one-component upstream name has one internal name however a client
// spells it: `docker.io/alpine` is `docker.io/library/alpine`, as
// `alpine` is on the default mirror. Policies are written on internal
// names, so a spelling that skipped the library prefix would be another
// repository to them, and to upstream.

import (
	"net/http"
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
	if _, err := tr.store.ResolveTag("docker.io/alpine", "3.20"); err == nil {
		t.Error("the store holds docker.io/alpine beside docker.io/library/alpine")
	}
}
