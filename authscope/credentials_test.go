package authscope

import (
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// recordingService stands for a token service that must not be reached:
// it keeps every request it gets, whole.
type recordingService struct {
	mu   sync.Mutex
	seen []string
}

func (s *recordingService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	s.seen = append(s.seen, r.Method+" "+r.RequestURI+" "+r.Header.Get("Authorization")+" "+string(body))
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, `{"token":"t"}`)
}

func (s *recordingService) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.seen...)
}

// testWorkloadToken is a JWT of the issuer testWorkloadVerifier claims.
func testWorkloadToken() string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256"}`)) + "." + enc([]byte(`{"iss":"https://ci.example","sub":"repo:org/app"}`)) + ".c2ln"
}

var testWorkloadVerifier = &WorkloadVerifier{Issuer: "https://ci.example", Audience: "registry"}

// TestTokenProxyWithholdsEveryVariant: wherever an API key or workload
// token hides in a token request, and however it is dressed, the token
// service never sees it; two Authorization headers are refused outright.
func TestTokenProxyWithholdsEveryVariant(t *testing.T) {
	rec := &recordingService{}
	up := httptest.NewServer(rec)
	t.Cleanup(up.Close)
	u, _ := url.Parse(up.URL)
	srv := httptest.NewServer(&TokenProxy{Upstream: u, Names: testNames(t), Withhold: testWorkloadVerifier.Mine})
	t.Cleanup(srv.Close)

	apiKey := APIKeyPrefix + "0123456789abcdef_" + strings.Repeat("A", 43)
	wl := testWorkloadToken()
	basic := func(user, pass string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
	}
	get := func(query string, auth ...string) *http.Request {
		r, _ := http.NewRequest(http.MethodGet, srv.URL+TokenPath+"?scope=repository:team/app:pull&"+query, nil)
		r.Header["Authorization"] = auth
		return r
	}
	post := func(form string, auth ...string) *http.Request {
		r, _ := http.NewRequest(http.MethodPost, srv.URL+TokenPath, strings.NewReader("grant_type=password&client_id=c&scope=repository:team/app:pull&"+form))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.Header["Authorization"] = auth
		return r
	}
	postQuery := func(query, form string) *http.Request {
		r := post(form)
		r.URL.RawQuery += "&" + query
		return r
	}
	q := url.QueryEscape
	for _, tc := range []struct {
		name   string
		req    *http.Request
		status int
	}{
		{"two Authorization headers, the key second", get("", basic("ci", "ci-pw"), basic("ci", apiKey)), 400},
		{"two harmless Authorization headers", get("", basic("ci", "ci-pw"), "Bearer abc"), 400},
		{"key with trailing whitespace", get("", basic("ci", apiKey+" ")), 401},
		{"key with a trailing tab and newline", get("", basic("ci", apiKey+"\t\r\n")), 401},
		{"key in upper case", get("", basic("ci", strings.ToUpper(apiKey[:5])+apiKey[5:])), 401},
		{"key without its prefix", get("", basic("ci", apiKey[len(APIKeyPrefix):])), 401},
		{"key as the user name", get("", basic(apiKey, "x")), 401},
		{"key in a lower-case basic scheme", get("", "basic "+base64.StdEncoding.EncodeToString([]byte("ci:"+apiKey))), 401},
		{"key in unpadded base64", get("", "Basic "+base64.RawStdEncoding.EncodeToString([]byte("ci:"+apiKey+"x"))), 401},
		{"key as a bearer token", get("", "Bearer "+apiKey), 401},
		{"key under another scheme", get("", "Token "+apiKey), 401},
		{"key in the query's password", get("password=" + q(apiKey)), 401},
		{"key in the query, padded", get("password=" + q(" "+apiKey+" ")), 401},
		{"workload token in the query's refresh_token", get("refresh_token=" + q(wl)), 401},
		{"workload token as a query name", get(q(wl) + "=1"), 401},
		{"key in a second password field", post("password=ci-pw&password=" + q(apiKey)), 401},
		{"workload token in a second refresh_token field", post("refresh_token=r&refresh_token=" + q(wl)), 401},
		{"workload token with whitespace in the form", post("password=" + q(" "+wl+"\n")), 401},
		{"workload token in quotes in the form", post("refresh_token=" + q(`"`+wl+`"`)), 401},
		{"key in another form field", post("client_secret=" + q(apiKey)), 401},
		{"workload token with trailing whitespace as the Basic password", get("", basic("ci", wl+" ")), 401},
		{"workload token after a comma", get("", "Bearer x, "+wl), 401},
		{"key in the query of a POST", postQuery("password="+q(apiKey), "password=ci-pw"), 401},
	} {
		resp, err := http.DefaultClient.Do(tc.req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%s: %d %s", tc.name, resp.StatusCode, body)
		}
	}
	if got := rec.requests(); len(got) != 0 {
		t.Errorf("the token service saw %q", got)
	}

	// Credentials of the token service still pass, in each place.
	for name, r := range map[string]*http.Request{
		"basic":    get("", basic("ci", "ci-pw")),
		"form":     post("username=ci&password=ci-pw"),
		"bearer":   get("", "Bearer some.other.token"),
		"no creds": get(""),
	} {
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: %d", name, resp.StatusCode)
		}
	}
	if got := rec.requests(); len(got) != 4 {
		t.Errorf("the token service saw %d requests, want 4: %q", len(got), got)
	}
}

// FuzzLenientUnescape: wherever url.QueryUnescape reads a query piece,
// lenientUnescape reads it the same; where it gives up, lenientUnescape
// still decodes every valid escape (so a key spelled with escapes next to
// a bad one is found).
func FuzzLenientUnescape(f *testing.F) {
	for _, s := range []string{"", "a+b", "%6Fcik_x%zz", "%", "%4", "%41%", "k=v;w", "%e2%82%ac"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := lenientUnescape(s)
		if want, err := url.QueryUnescape(s); err == nil && got != want {
			t.Fatalf("lenientUnescape(%q) = %q, url.QueryUnescape = %q", s, got, want)
		}
		if !strings.Contains(s, "%") && got != strings.ReplaceAll(s, "+", " ") {
			t.Fatalf("lenientUnescape(%q) = %q with no escape in it", s, got)
		}
	})
}
