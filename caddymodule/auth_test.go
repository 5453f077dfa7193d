package caddymodule

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-oci/caddy-oci/authscope"
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
