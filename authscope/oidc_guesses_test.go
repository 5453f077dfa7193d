package authscope

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
)

// TestSignInFailuresBounded: each callback with a code costs a request to
// the provider's token endpoint, and a script can start a sign-in for
// every made-up code (the cookie is used once, a new one is one GET
// away). On the built binary with login_limit per_client 5, 50 such
// pairs from one address cost the provider 50 token requests (all 502).
// Refused sign-ins now count against the client's bound like failed
// logins: past it, 429 with Retry-After and the provider is not asked.
// Another address still reaches the provider.
func TestSignInFailuresBounded(t *testing.T) {
	const perClient = 3
	idp, tokens := refusingProvider(t, nil)
	clock := newClock()
	var h http.Handler
	site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	t.Cleanup(site.Close)
	si, err := NewSignIn(SignInOptions{
		OIDC:        &OIDCClient{Issuer: idp.URL, ClientID: "registry", ClientSecret: "s3cret", RedirectURL: RedirectURL(site.URL)},
		ExternalURL: site.URL, Sealer: testSealer(), Sessions: newMemSessions(clock.Now), Now: clock.Now,
		Guesses:  NewGuesses(GuessLimits{PerClient: perClient, PerAccount: 100}),
		ClientIP: func(r *http.Request) string { return r.Header.Get("X-Client") },
	})
	if err != nil {
		t.Fatal(err)
	}
	h = si
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	signIn := func(client string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, site.URL+AuthPath+"login", nil)
		req.Header.Set("X-Client", client)
		resp, err := noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		to, err := url.Parse(resp.Header.Get("Location"))
		if err != nil || len(resp.Cookies()) == 0 {
			t.Fatalf("login: %d, Location %q", resp.StatusCode, resp.Header.Get("Location"))
		}
		req, _ = http.NewRequest(http.MethodGet, site.URL+AuthPath+"callback?code=made-up&state="+url.QueryEscape(to.Query().Get("state")), nil)
		req.Header.Set("X-Client", client)
		req.AddCookie(resp.Cookies()[0])
		resp, err = noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Retry-After")
	}
	var codes []int
	for range 10 {
		code, _ := signIn("192.0.2.1")
		codes = append(codes, code)
	}
	if n := tokens.Load(); n > perClient {
		t.Errorf("10 made-up codes from one address cost the provider %d token requests (answers %v); want at most %d", n, codes, perClient)
	}
	if code, retry := signIn("192.0.2.1"); code != http.StatusTooManyRequests || retry == "" {
		t.Errorf("a sign-in past the bound: %d (Retry-After %q); want 429 with Retry-After", code, retry)
	}
	before := tokens.Load()
	if code, _ := signIn("198.51.100.9"); code == http.StatusTooManyRequests || tokens.Load() != before+1 {
		t.Errorf("another address: %d, provider asked %d times; want it asked once", code, tokens.Load()-before)
	}
}
