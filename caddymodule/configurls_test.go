package caddymodule

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/caddy-oci/caddy-oci/authscope/authtest"
	"github.com/caddy-oci/caddy-oci/authscope/oidctest"
	"github.com/caddyserver/caddy/v2"
)

// TestConfigURLsRefuseCredentials: user:password@ in a URL the operator
// configures for a service (a token realm, an OIDC or workload issuer, the
// external URL) would go to every client in challenges, or along with
// every request to that service, anonymous ones included. Caddy refuses
// such a config, and the error does not repeat the password. Had it run,
// what leaked is reported from real requests.
func TestConfigURLsRefuseCredentials(t *testing.T) {
	const password = "s3cretpw"
	var mu sync.Mutex
	var sawAuth []string
	tokens := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		sawAuth = append(sawAuth, r.Header.Get("Authorization"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"token":"x"}`)
	}))
	t.Cleanup(tokens.Close)
	withCreds := strings.Replace(tokens.URL, "http://", "http://ops:"+password+"@", 1)
	p := oidctest.New(t, "alice")
	issuerWithCreds := strings.Replace(p.Issuer(), "http://", "http://ops:"+password+"@", 1)
	dir := t.TempDir()
	certs := filepath.Join(dir, "token.pem")
	if err := os.WriteFile(certs, authtest.New(nil, nil).PublicKeyPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(dir, "client-secret")
	if err := os.WriteFile(secret, []byte(oidctest.ClientSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenBlock := func(realm, extra string) string {
		return `token {
				realm ` + realm + `
				service registry.test
				issuer "` + authtest.IssuerName + `"
				trusted_certs ` + certs + `
				` + extra + `
			}`
	}
	oidcBlock := func(issuer, external string) string {
		return `access ** {
				anonymous read
			}
			oidc {
				issuer ` + issuer + `
				client_id ` + oidctest.ClientID + `
				client_secret_file ` + secret + `
				external_url ` + external + `
			}`
	}
	for name, site := range map[string]string{
		"registry token realm": `oci_registry {
		storage ` + filepath.Join(dir, "a") + `
		auth {
			` + tokenBlock(withCreds+"/auth", "") + `
		}
	}`,
		"registry token realm, proxy": `oci_registry {
		storage ` + filepath.Join(dir, "b") + `
		auth {
			` + tokenBlock(withCreds+"/auth", "proxy") + `
		}
	}`,
		"front token realm, proxy": `oci_front {
		mirror docker.io
		token {
			realm ` + withCreds + `/auth
			service registry.test
			proxy
		}
	}
	respond 401`,
		"front token realm": `oci_front {
		mirror docker.io
		token {
			realm ` + withCreds + `/auth
			service registry.test
		}
	}
	header Www-Authenticate "Bearer realm=\"http://backend/auth\""
	respond 401`,
		"oidc issuer": `oci_registry {
		storage ` + filepath.Join(dir, "c") + `
		auth {
			` + oidcBlock(issuerWithCreds, "http://127.0.0.1:1") + `
		}
	}`,
		"oidc external_url": `oci_registry {
		storage ` + filepath.Join(dir, "d") + `
		auth {
			` + oidcBlock(p.Issuer(), "http://ops:"+password+"@127.0.0.1:1") + `
		}
	}`,
		"workload issuer": `oci_registry {
		storage ` + filepath.Join(dir, "e") + `
		auth {
			access ** {
				anonymous read
			}
			workload {
				issuer ` + issuerWithCreds + `
				audience registry.test
			}
		}
	}`,
	} {
		t.Run(name, func(t *testing.T) {
			addr := freeAddr(t)
			cfg := adaptFront(t, "{\n\tadmin off\n\tlog {\n\t\tlevel ERROR\n\t}\n}\nhttp://"+addr+" {\n\t"+site+"\n}\n")
			err := caddy.Load([]byte(cfg), true)
			if err != nil {
				t.Logf("refused: %v", err)
				if strings.Contains(err.Error(), password) {
					t.Errorf("the error repeats the password: %v", err)
				}
				return
			}
			defer func() { stopCaddy(t) }()
			t.Errorf("a URL with user:password@ was accepted")
			mu.Lock()
			sawAuth = nil
			mu.Unlock()
			for _, path := range []string{"/v2/", "/v2/app/manifests/v1", "/_oci/token?scope=repository:app:pull"} {
				resp, err := http.Get("http://" + addr + path)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if ch := resp.Header.Values("Www-Authenticate"); strings.Contains(strings.Join(ch, " "), password) || strings.Contains(string(body), password) {
					t.Errorf("GET %s: an anonymous client got the password: %q %s", path, ch, body)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			for _, a := range sawAuth {
				if a != "" {
					t.Errorf("an anonymous token request reached the token service with Authorization %q", a)
				}
			}
		})
	}
}
