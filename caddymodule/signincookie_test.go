package caddymodule

import (
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// TestSignInCookiesNotSetByOthers: this server's sign-in cookies are its
// own in answers as in requests: a handler behind oci_registry on the
// same site (reverse_proxy to an app) or the registry behind oci_front
// cannot set, replace or clear them. Before, the backend's Set-Cookie
// of oci_session and __Host-OCI_Login reached the client through both
// (measured against the built binary through oci_front), while the
// request direction already dropped them.
func TestSignInCookiesNotSetByOthers(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, c := range []string{"oci_session=chosen; Path=/; HttpOnly", "__Host-OCI_Login=x; Path=/; Secure", " oci_session =y", "sid=backend; Path=/"} {
			w.Header().Add("Set-Cookie", c)
		}
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("backend"))
	}))
	t.Cleanup(backend.Close)
	dir := t.TempDir()
	reg, front := freeAddr(t), freeAddr(t)
	cfg := adaptFront(t, `{
	admin off
	log {
		level ERROR
	}
}
http://`+reg+` {
	oci_registry {
		storage `+filepath.Join(dir, "data")+`
	}
	reverse_proxy `+backend.URL+`
}
http://`+front+` {
	oci_front {
		mirror docker.io {
			default
		}
	}
	reverse_proxy `+backend.URL+`
}`)
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCaddy(t) })
	for _, u := range []string{"http://" + reg + "/app/", "http://" + front + "/v2/debian/tags/list", "http://" + front + "/app/"} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			req, _ := http.NewRequest(method, u, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			got := resp.Header.Values("Set-Cookie")
			for _, c := range got {
				if strings.Contains(strings.ToLower(c), "oci_") {
					t.Errorf("%s %s: Set-Cookie %q reached the client", method, u, c)
				}
			}
			if len(got) != 1 || !strings.HasPrefix(got[0], "sid=") {
				t.Errorf("%s %s: Set-Cookie %q, want the backend's own sid only", method, u, got)
			}
		}
	}
}
