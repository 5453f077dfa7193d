package authscope

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// TestProviderAnswerBounded: go-oidc reads the provider's discovery
// document whole, without a bound, so a provider (or whatever the issuer
// URL reaches) that sends a document without end grew the process until
// discoveryTimeout: 2.7 GiB of RSS on the binary from one anonymous GET of
// /_oci/auth/login, again every retryDiscoveryAfter. The provider's
// answers are now read up to maxProviderAnswer.
func TestProviderAnswerBounded(t *testing.T) {
	const docMiB = 64
	var sent atomic.Int64
	chunk := []byte(strings.Repeat("a", 1<<20))
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/.well-known/openid-configuration" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		// A valid document, so that only its size can fail it.
		fmt.Fprintf(w, `{"issuer":%q,"jwks_uri":%q,"authorization_endpoint":%q,"token_endpoint":%q,"padding":"`,
			srv.URL, srv.URL+"/keys", srv.URL+"/auth", srv.URL+"/token")
		for range docMiB {
			n, err := w.Write(chunk)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
		fmt.Fprint(w, `"}`)
	}))
	t.Cleanup(srv.Close)
	for _, hc := range []*http.Client{nil, {}} {
		sent.Store(0)
		c := &OIDCClient{Issuer: srv.URL, ClientID: "registry", RedirectURL: "http://127.0.0.1/cb", HTTPClient: hc}
		_, err := c.AuthURL(context.Background(), "s", "n", strings.Repeat("v", 43))
		if err == nil {
			t.Errorf("client %v: discovery of a %d MiB document succeeded (%d MiB read)", hc, docMiB, sent.Load()>>20)
			continue
		}
		if got := sent.Load(); got > 16<<20 {
			t.Errorf("client %v: the provider sent %d MiB before discovery gave up (%v)", hc, got>>20, err)
		}
		t.Logf("client %v: %v (%d KiB sent)", hc, err, sent.Load()>>10)
	}
}
