package caddymodule

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddy-oci/caddy-oci/authscope/authtest"
	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-oci/caddy-oci/internal/rawhttp"
)

// oci_registry answers every path a lenient server might read as an API
// path, and those it cannot parse get 404 in the spec's envelope: none
// falls through to the next handler (a file server, a proxy), which could
// serve it as the API without the registry's name checks and auth.
func TestRegistryKeepsAPISpellings(t *testing.T) {
	addr := freeAddr(t)
	cfg := adaptFront(t, `{
	admin off
	log {
		level ERROR
	}
}
http://`+addr+` {
	route {
		oci_registry {
			storage `+t.TempDir()+`
			mirror docker.io {
				upstream http://127.0.0.1:1
			}
		}
		respond "next handler" 200
	}
}`)
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCaddy(t) })
	for _, p := range []string{
		"//v2/",
		"//v2/app/manifests/v1",
		"/./v2/_catalog",
		"/x/../v2/app/manifests/v1",
		"/V2/app/manifests/v1",
		"/v2%5Capp/manifests/v1",
		"/%5Cv2/app/manifests/v1",
		"/v2;x/app/manifests/v1",
		"/v2%00/app/manifests/v1",
		"/%2576%2532/app/manifests/v1",
		"/docker.io//v2/library/app/manifests/v1",
		"/Docker.io/v2/library/app/manifests/v1",
		"/v2/app/manifests/v1/",
		"/v2/..",
	} {
		resp, body := rawhttp.Get(t, addr, p)
		if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), `"errors"`) || strings.Contains(string(body), "next handler") {
			t.Errorf("GET %s: %d %s; want the registry's 404 envelope", p, resp.StatusCode, body)
		}
	}
	// Other paths still reach the next handler.
	if resp, body := rawhttp.Get(t, addr, "/index.html"); resp.StatusCode != http.StatusOK || string(body) != "next handler" {
		t.Errorf("GET /index.html: %d %s", resp.StatusCode, body)
	}
}

// With the token proxy on, oci_registry and oci_front answer every path a
// lenient server might read as under /_oci themselves: the exact token
// path is served, other spellings get 404 in the spec's envelope, and
// none reaches the next handler (which might be a backend with its own
// /_oci/token, or read the path as this server's endpoint).
func TestOwnPathsKeptFromNextHandler(t *testing.T) {
	tokens := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"token":"from-the-token-service"}`)
	}))
	t.Cleanup(tokens.Close)
	dir := t.TempDir()
	certs := filepath.Join(dir, "token.pem")
	if err := os.WriteFile(certs, authtest.New(nil, nil).PublicKeyPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, handler := range map[string]string{
		"oci_registry": `oci_registry {
			storage ` + filepath.Join(dir, "store") + `
			auth {
				token {
					realm ` + tokens.URL + `/auth
					service registry.test
					issuer "` + authtest.IssuerName + `"
					trusted_certs ` + certs + `
					proxy
				}
			}
		}`,
		"oci_front": `oci_front {
			mirror docker.io
			token {
				realm ` + tokens.URL + `/auth
				service registry.test
				proxy
			}
		}`,
	} {
		t.Run(name, func(t *testing.T) {
			addr := freeAddr(t)
			cfg := adaptFront(t, "{\n\tadmin off\n\tlog {\n\t\tlevel ERROR\n\t}\n}\nhttp://"+addr+" {\n\troute {\n\t\t"+
				handler+"\n\t\trespond \"next handler\" 200\n\t}\n}\n")
			if err := caddy.Load([]byte(cfg), true); err != nil {
				t.Fatal(err)
			}
			defer func() { stopCaddy(t) }()
			for _, p := range []string{
				"/_oci/token/",
				"/_OCI/token",
				"/_oci//token",
				"/x/../_oci/token",
				"/./_oci/token",
				"/_oci/token;x",
				"/%255Foci/token",
				"/_oci%5Ctoken",
				"/_oci/token%00",
				"/_oci",
				"/_oci/",
				"/_oci/sync",
				"/_oci/auth/",
			} {
				resp, body := rawhttp.Get(t, addr, p+"?scope=repository:app:pull")
				if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), `"errors"`) || strings.Contains(string(body), "next handler") {
					t.Errorf("GET %s: %d %s; want a 404 envelope", p, resp.StatusCode, body)
				}
			}
			// Spellings that Go decodes to the token path are the token path.
			for _, p := range []string{"/_oci/token", "/_oci%2ftoken", "/%5F%6F%63%69/token"} {
				if resp, body := rawhttp.Get(t, addr, p+"?scope=repository:app:pull"); resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "from-the-token-service") {
					t.Errorf("GET %s: %d %s", p, resp.StatusCode, body)
				}
			}
			for _, p := range []string{"/index.html", "/_ocix/token", "/x/_oci/token"} {
				if resp, body := rawhttp.Get(t, addr, p); resp.StatusCode != http.StatusOK || string(body) != "next handler" {
					t.Errorf("GET %s: %d %s", p, resp.StatusCode, body)
				}
			}
		})
	}
}
