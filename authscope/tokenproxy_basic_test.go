package authscope

import (
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
)

// TestTokenProxyLoginsBoundedWhateverTheirSpelling: login_limit counts the
// logins it can read, and the token service may read more. A Basic header
// that Go's parser refuses (two spaces, a tab, base64 without padding or
// in the URL alphabet) was forwarded as no login at all, and a token
// service with a lenient decoder (Ruby's Base64.decode64, a split and
// trim) checked its password: on the binary with per_client 5, 30 wrong
// passwords in a row were each checked (401, never 429), where
// well-formed ones got 429 from the sixth. Now such a header is refused
// (400) and never reaches the token service, and credentials of any
// other scheme count against the client's bound.
func TestTokenProxyLoginsBoundedWhateverTheirSpelling(t *testing.T) {
	var checked atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			checked.Add(1)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_, _ = w.Write([]byte(`{"token":"anonymous"}`))
	}))
	t.Cleanup(up.Close)
	u, _ := url.Parse(up.URL + "/auth")
	const perClient = 3
	std := base64.StdEncoding.EncodeToString([]byte("alice:guess!?"))
	for _, tc := range []struct {
		name, header string
		malformed    bool
	}{
		{"two spaces", "Basic  " + std, true},
		{"tab", "Basic\t" + std, true},
		{"no padding", "Basic " + strings.TrimRight(std, "="), true},
		{"URL alphabet", "Basic " + base64.URLEncoding.EncodeToString([]byte("alice:~~~")), true}, // YWxpY2U6fn5-
		{"upper case, no credentials", "BASIC", true},
		{"another scheme", "Token alice:guess", false},
		{"bearer", "Bearer made.up.token", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checked.Store(0)
			srv := httptest.NewServer(&TokenProxy{Upstream: u, Service: testService, Names: testNames(t),
				Guesses: NewGuesses(GuessLimits{PerClient: perClient, PerAccount: 100})})
			defer srv.Close()
			var codes []int
			for range 10 {
				req, _ := http.NewRequest(http.MethodGet, srv.URL+TokenPath+"?scope=repository:debian:pull", nil)
				req.Header.Set("Authorization", tc.header)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				codes = append(codes, resp.StatusCode)
			}
			if tc.malformed {
				if n := checked.Load(); n != 0 || codes[0] != http.StatusBadRequest {
					t.Errorf("%d of 10 reached the token service, answers %v; want none, 400", n, codes)
				}
				return
			}
			if n := checked.Load(); n > perClient || codes[len(codes)-1] != http.StatusTooManyRequests {
				t.Errorf("%d of 10 reached the token service, answers %v; want at most %d, then 429", n, codes, perClient)
			}
		})
	}
	// Well-formed and anonymous requests are unchanged.
	srv := httptest.NewServer(&TokenProxy{Upstream: u, Service: testService, Names: testNames(t),
		Guesses: NewGuesses(GuessLimits{PerClient: perClient, PerAccount: 100})})
	defer srv.Close()
	resp, err := http.Get(srv.URL + TokenPath + "?scope=repository:debian:pull")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	req, _ := http.NewRequest(http.MethodGet, srv.URL+TokenPath+"?scope=repository:debian:pull", nil)
	req.SetBasicAuth("alice", "wrong")
	resp2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
	if resp.StatusCode != http.StatusOK || resp2.StatusCode != http.StatusUnauthorized {
		t.Errorf("anonymous %d, well-formed Basic %d; want 200, 401", resp.StatusCode, resp2.StatusCode)
	}
}
