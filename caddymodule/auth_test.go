package caddymodule

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/authscope/authtest"
)

// TestAuthCaddyfileExample parses the example (anonymous read
// everywhere; artifact-workloads read+create on blumeops/**; admins
// everything) and checks the provisioned decisions.
func TestAuthCaddyfileExample(t *testing.T) {
	dir := t.TempDir()
	hash, _ := bcrypt.GenerateFromPassword([]byte("ci-pw"), bcrypt.MinCost)
	htp := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(htp, []byte("ci:"+string(hash)+"\nroot:"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := caddyfile.NewTestDispenser(`auth {
		htpasswd ` + htp + `
		fail_delay 10ms
		realm blumeops
		group artifact-workloads ci
		group admins root
		admin groups admins
		access ** {
			anonymous read
		}
		access blumeops/** {
			anonymous read
			group artifact-workloads read create
		}
	}`)
	d.Next()
	a, err := unmarshalAuth(d)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.validate(); err != nil {
		t.Fatal(err)
	}
	if a.Realm != "blumeops" || !slices.Equal(a.Groups["admins"], []string{"root"}) || len(a.Repositories) != 2 ||
		!slices.Equal(a.Repositories["blumeops/**"].Policies[0].Actions, []string{"read", "create"}) {
		t.Fatalf("parsed %+v", a)
	}
	rt, err := a.provision(nil, nil, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodPut, "/v2/blumeops/app/manifests/v1", nil)
	r.SetBasicAuth("ci", "ci-pw")
	push := authscope.Need{Scopes: []authscope.Scope{authscope.RepositoryScope("blumeops/app", "pull", "push")}}
	if _, err := rt.authorizer.Authorize(r, push); err != nil {
		t.Fatalf("ci push: %v", err)
	}
	push.TagMove = true
	if _, err := rt.authorizer.Authorize(r, push); err == nil {
		t.Fatal("ci moved a tag")
	}
}

func TestAuthCaddyfileToken(t *testing.T) {
	d := caddyfile.NewTestDispenser(`auth {
		token {
			realm https://auth.example/token
			service registry.example
			issuer "Acme auth server"
			trusted_certs /etc/a.pem /etc/b.pem
			jwks /etc/keys.json
			leeway 10s
			proxy
			proxy_scheme https
		}
	}`)
	d.Next()
	a, err := unmarshalAuth(d)
	if err != nil {
		t.Fatal(err)
	}
	tk := a.Token
	if tk == nil || tk.Issuer != "Acme auth server" || len(tk.TrustedCerts) != 2 || !tk.Proxy || tk.ProxyScheme != "https" || tk.Leeway == 0 {
		t.Fatalf("parsed %+v", tk)
	}
	if err := a.validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{
		"auth {\n nope\n}",
		"auth {\n access x {\n user bob\n }\n}",
		"auth {\n token {\n realm\n }\n}",
		"auth {\n admin bob\n}",
		"auth {\n fail_delay soon\n}",
		"auth {\n token {\n proxy_scheme ftp\n }\n}",
		"auth {\n token {\n proxy_scheme\n }\n}",
	} {
		d := caddyfile.NewTestDispenser(bad)
		d.Next()
		if _, err := unmarshalAuth(d); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}

// TestRegistryTokenProxyPinsService: oci_registry's token proxy asks the
// token service for the configured service, and the realm's own
// parameters, whatever the client's query or form names.
func TestRegistryTokenProxyPinsService(t *testing.T) {
	is := authtest.New(map[string]string{"ci": "ci-pw"}, func(_, _, _ string, asked []string) []string { return asked })
	tokens := is.Start(t)
	certs := filepath.Join(t.TempDir(), "token.pem")
	if err := os.WriteFile(certs, is.PublicKeyPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	a := &Auth{Token: &TokenAuth{Realm: tokens.URL + "/auth?tenant=acme", Service: authtest.Service, Issuer: authtest.IssuerName,
		TrustedCerts: []string{certs}, Proxy: true}}
	if err := a.validate(); err != nil {
		t.Fatal(err)
	}
	rt, err := a.provision(nil, nil, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !rt.serve(w, r) {
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	get := func(q string) {
		resp, err := http.Get(srv.URL + authscope.TokenPath + "?" + q)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	post := func(q, form string) {
		resp, err := http.Post(srv.URL+authscope.TokenPath+"?"+q, "application/x-www-form-urlencoded", strings.NewReader(form))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	get("scope=repository:app:pull&service=other.example&tenant=evil")
	get("service=" + authtest.Service + "&service=other.example&scope=repository:app:pull")
	post("service=other.example", "grant_type=password&username=ci&password=ci-pw&service=other.example&tenant=evil&scope=repository:app:pull")
	reqs := is.Requests()
	if len(reqs) != 3 {
		t.Fatalf("%d requests reached the token service, want 3", len(reqs))
	}
	for i, r := range reqs {
		for where, v := range map[string]url.Values{"query": r.Query, "form": r.Form} {
			if where == "form" && r.Method != http.MethodPost {
				continue
			}
			if !slices.Equal(v["service"], []string{authtest.Service}) || !slices.Equal(v["tenant"], []string{"acme"}) {
				t.Errorf("request %d %s: service %q tenant %q; want only the configured %s and acme", i, where, v["service"], v["tenant"], authtest.Service)
			}
		}
	}

	// A realm that names another service than the configured one is a
	// configuration mistake, found at provisioning.
	a.Token.Realm = tokens.URL + "/auth?service=other.example"
	if _, err := a.provision(nil, nil, zap.NewNop()); err == nil {
		t.Error("a realm naming another service was accepted")
	}
}
