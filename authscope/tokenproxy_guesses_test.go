package authscope

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// TestTokenProxyLoginProofNamesAccount: an address is exempt from an
// account's bound only once the token service gave a token to that
// account from there. A 200 for credentials that name the account but
// were not what the token service checked (a refresh token beside a
// username, an empty Basic header before a password form: a token
// service such as docker_auth then answers the anonymous caller) proves
// nothing, so it must not exempt the attacker's address from the
// victim's bound.
func TestTokenProxyLoginProofNamesAccount(t *testing.T) {
	// "": the anonymous user, as docker_auth's static users often have it.
	is := newTestIssuer(t, map[string]string{"victim": "right", "": ""}, dockerAuthACL)
	up := is.Start(t)
	u, _ := url.Parse(up.URL + "/auth")
	p := &TokenProxy{Upstream: u, Service: testService, Names: testNames(t),
		Guesses:  NewGuesses(GuessLimits{PerClient: 50, PerAccount: 2}),
		ClientIP: func(r *http.Request) string { return r.Header.Get("X-Test-Client") }}
	send := func(client string, form url.Values, basic *[2]string) int {
		t.Helper()
		r := httptest.NewRequest(http.MethodPost, TokenPath, strings.NewReader(form.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.Header.Set("X-Test-Client", client)
		if basic != nil {
			r.SetBasicAuth(basic[0], basic[1])
		}
		w := httptest.NewRecorder()
		p.ServeHTTP(w, r)
		return w.Code
	}
	guess := url.Values{"grant_type": {"password"}, "client_id": {"x"}, "username": {"victim"}, "password": {"wrong"},
		"scope": {"repository:library/debian:pull"}}

	// The owner logs in from her address: that pair is proven.
	good := url.Values{"grant_type": {"password"}, "client_id": {"x"}, "username": {"victim"}, "password": {"right"}}
	if code := send("198.51.100.1", good, nil); code != http.StatusOK {
		t.Fatalf("owner's login: %d", code)
	}

	// The attacker's two addresses each get a 200 that names the victim
	// without her password.
	spoofs := []struct {
		client string
		form   url.Values
		basic  *[2]string
	}{
		{"192.0.2.10", url.Values{"grant_type": {"refresh_token"}, "client_id": {"x"}, "username": {"victim"}, "refresh_token": {"junk"}}, nil},
		{"192.0.2.11", guess, &[2]string{"", ""}},
	}
	for _, s := range spoofs {
		if code := send(s.client, s.form, s.basic); code != http.StatusOK {
			t.Fatalf("%s: spoof answered %d", s.client, code)
		}
	}

	// A flood from elsewhere uses up the victim's bound.
	for i := range 2 {
		if code := send("203.0.113.7", guess, nil); code != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d, want 401", i, code)
		}
	}
	if code := send("203.0.113.8", guess, nil); code != http.StatusTooManyRequests {
		t.Fatalf("guess past the account's bound: %d, want 429", code)
	}
	for _, s := range spoofs {
		if code := send(s.client, guess, nil); code != http.StatusTooManyRequests {
			t.Errorf("%s: a guess at the victim after a login that proved nothing was answered %d, want 429 (the address was taken as the victim's own)", s.client, code)
		}
	}
	// The owner's proven address stays exempt.
	if code := send("198.51.100.1", good, nil); code != http.StatusOK {
		t.Errorf("owner's login from her own address during the flood: %d, want 200", code)
	}
}
