package authscope

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
)

// refusingProvider is an OIDC provider whose token endpoint refuses every
// code, and counts the requests it gets.
func refusingProvider(t *testing.T, authMethods []string) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var tokens atomic.Int32
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/.well-known/openid-configuration":
			doc := map[string]any{
				"issuer": srv.URL, "authorization_endpoint": srv.URL + "/authorize",
				"token_endpoint": srv.URL + "/token", "jwks_uri": srv.URL + "/jwks",
				"response_types_supported": []string{"code"}, "subject_types_supported": []string{"public"},
				"id_token_signing_alg_values_supported": []string{"RS256"},
			}
			if authMethods != nil {
				doc["token_endpoint_auth_methods_supported"] = authMethods
			}
			_ = json.NewEncoder(w).Encode(doc)
		case "/token":
			tokens.Add(1)
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":"invalid_grant"}`))
		default:
			_, _ = w.Write([]byte(`{"keys":[]}`))
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &tokens
}

// TestSignInCallbackOnce: a sign-in cookie reaches the provider's token
// endpoint once, whether its holder keeps it after the callback cleared it
// or not, and a refused code is sent once, not once per way of sending
// the client secret. On the built binary one GET of login and 50 replays
// of its callback with made-up codes cost the provider 100 token requests.
func TestSignInCallbackOnce(t *testing.T) {
	for _, methods := range [][]string{nil, {"client_secret_basic", "client_secret_post"}, {"client_secret_post"}} {
		t.Run(strings.Join(methods, ","), func(t *testing.T) {
			idp, tokens := refusingProvider(t, methods)
			clock := newClock()
			var h http.Handler
			site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
			t.Cleanup(site.Close)
			si, err := NewSignIn(SignInOptions{
				OIDC:        &OIDCClient{Issuer: idp.URL, ClientID: "registry", ClientSecret: "s3cret", RedirectURL: RedirectURL(site.URL)},
				ExternalURL: site.URL, Sealer: testSealer(), Sessions: newMemSessions(clock.Now), Now: clock.Now,
			})
			if err != nil {
				t.Fatal(err)
			}
			h = si
			noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			resp, err := noFollow.Get(site.URL + AuthPath + "login")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			to, err := url.Parse(resp.Header.Get("Location"))
			if err != nil || len(resp.Cookies()) == 0 {
				t.Fatalf("login: %d, Location %q, %d cookies", resp.StatusCode, resp.Header.Get("Location"), len(resp.Cookies()))
			}
			cookie := resp.Cookies()[0]
			for i := range 5 {
				req, _ := http.NewRequest(http.MethodGet, site.URL+AuthPath+"callback?code=made-up&state="+url.QueryEscape(to.Query().Get("state")), nil)
				req.AddCookie(cookie) // kept, whatever the callback's Set-Cookie says
				resp, err := noFollow.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if i > 0 && resp.StatusCode != http.StatusBadRequest {
					t.Errorf("replay %d of the callback: %d, want 400", i, resp.StatusCode)
				}
			}
			if n := tokens.Load(); n != 1 {
				t.Errorf("the provider's token endpoint got %d requests for one sign-in, want 1", n)
			}
		})
	}
}
