package authscope

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/caddy-oci/caddy-oci/internal/outbound/outboundtest"
)

// The token service and the OIDC provider are servers the operator
// named, but their answers are still read by this process: an answer
// with a megabyte of headers (Go's own bound is 10 MiB, counted by no
// budget of ours) is refused as a broken server's, like an answer that
// cannot be read at all.

func TestTokenServiceHeadersBounded(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		outboundtest.PadHeaders(w.Header(), 1024)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"token":"x"}`))
	}))
	t.Cleanup(up.Close)
	u, _ := url.Parse(up.URL + "/auth")
	srv := httptest.NewServer(&TokenProxy{Upstream: u, Service: testService, Names: testNames(t)})
	t.Cleanup(srv.Close)
	resp, err := http.Get(srv.URL + TokenPath + "?scope=repository:debian:pull")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("token service answering with a megabyte of headers: %s; want 502", resp.Status)
	}
}

func TestProviderHeadersBounded(t *testing.T) {
	// Each of the three requests a sign-in makes to the provider.
	for _, path := range []string{"/.well-known/openid-configuration", "/token", "/jwks"} {
		t.Run(strings.Trim(path, "/"), func(t *testing.T) {
			s := newSite(t, "alice")
			s.p.PadHeaders(path)
			resp, err := browser(t).Get(s.URL + AuthPath + "login")
			if err != nil {
				t.Fatal(err)
			}
			wantOutage(t, "sign-in with "+path+" answering a megabyte of headers", resp)
		})
	}
}

// TestProviderAnswersBounded: go-oidc reads the discovery document
// whole, without a bound of its own; the provider's client bounds every
// answer it reads at a megabyte. (The token endpoint's answer is read by
// oauth2, which stops at a megabyte itself.)
func TestProviderAnswersBounded(t *testing.T) {
	for _, path := range []string{"/.well-known/openid-configuration", "/jwks"} {
		t.Run(strings.Trim(path, "/"), func(t *testing.T) {
			s := newSite(t, "alice")
			s.p.PadBody(path)
			resp, err := browser(t).Get(s.URL + AuthPath + "login")
			if err != nil {
				t.Fatal(err)
			}
			wantOutage(t, "sign-in with "+path+" answering 2 MiB", resp)
		})
	}
}
