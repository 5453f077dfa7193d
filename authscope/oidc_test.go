package authscope

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-oci/caddy-oci/authscope/oidctest"
)

// clock is a settable clock for sessions and keys.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// memKeys is an APIKeyStore in memory, counting writes.
type memKeys struct {
	mu      sync.Mutex
	recs    map[string][]byte
	updates int
}

func newMemKeys() *memKeys { return &memKeys{recs: map[string][]byte{}} }

func (m *memKeys) CreateAPIKey(id string, rec []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.recs[id]; ok {
		return io.ErrUnexpectedEOF
	}
	m.recs[id] = rec
	return nil
}

func (m *memKeys) APIKey(id string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.recs[id]
	if !ok {
		return nil, ErrAPIKeyNotFound
	}
	return b, nil
}

func (m *memKeys) UpdateAPIKey(id string, fn func([]byte) ([]byte, error)) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.recs[id]
	if !ok {
		return ErrAPIKeyNotFound
	}
	nb, err := fn(b)
	if err != nil {
		return err
	}
	m.recs[id] = nb
	m.updates++
	return nil
}

func (m *memKeys) DeleteAPIKey(id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.recs, id)
	return nil
}

func (m *memKeys) APIKeys() ([][]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out [][]byte
	for _, b := range m.recs {
		out = append(out, b)
	}
	return out, nil
}

func (m *memKeys) writes() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.updates
}

// memSessions is a SessionStore in memory.
type memSessions struct {
	mu   sync.Mutex
	recs map[string][]byte
	now  func() time.Time
	exp  map[string]time.Time
}

func newMemSessions(now func() time.Time) *memSessions {
	return &memSessions{recs: map[string][]byte{}, exp: map[string]time.Time{}, now: now}
}

func (m *memSessions) CreateSession(id string, rec []byte, expires time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.recs[id]; ok {
		return io.ErrUnexpectedEOF
	}
	m.recs[id], m.exp[id] = rec, expires
	return nil
}

func (m *memSessions) Session(id string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.recs[id]
	if !ok || !m.now().Before(m.exp[id]) {
		return nil, ErrSessionNotFound
	}
	return b, nil
}

func (m *memSessions) DeleteSession(id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.recs, id)
	return nil
}

func (m *memSessions) len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.recs)
}

func testSealer() *Sealer {
	key := make([]byte, SessionKeySize)
	if _, err := rand.Read(key); err != nil {
		panic(err)
	}
	return &Sealer{Key: func() ([]byte, error) { return key, nil }}
}

// site is a SignIn behind an httptest server, with its provider.
type site struct {
	*httptest.Server
	p        *oidctest.Provider
	si       *SignIn
	keys     *APIKeys
	store    *memKeys
	sessions *memSessions
	clock    *clock
}

func newSite(t *testing.T, user string, groups ...string) *site {
	t.Helper()
	return newSiteClaims(t, ClaimMapping{}, user, groups...)
}

// newSiteClaims is newSite whose sign-in maps claims by m.
func newSiteClaims(t *testing.T, m ClaimMapping, user string, groups ...string) *site {
	t.Helper()
	s := &site{p: oidctest.New(t, user, groups...), clock: newClock(), store: newMemKeys()}
	s.sessions = newMemSessions(s.clock.Now)
	var h http.Handler
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	t.Cleanup(s.Close)
	s.keys = &APIKeys{Store: s.store, Now: s.clock.Now}
	var err error
	s.si, err = NewSignIn(SignInOptions{
		OIDC: &OIDCClient{
			Issuer: s.p.Issuer(), ClientID: oidctest.ClientID, ClientSecret: oidctest.ClientSecret,
			RedirectURL: RedirectURL(s.URL),
			Claims:      m,
		},
		ExternalURL: s.URL,
		Sealer:      testSealer(),
		Sessions:    s.sessions,
		APIKeys:     s.keys,
		Now:         s.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	h = s.si
	return s
}

// browser is an http.Client with a cookie jar that follows redirects
// and, as browsers do, sends Origin with every request that is neither
// GET nor HEAD.
func browser(t *testing.T) *http.Client {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar, Transport: originTransport{}}
}

type originTransport struct{}

func (originTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead && r.Header.Get("Origin") == "" {
		r = r.Clone(r.Context())
		r.Header.Set("Origin", r.URL.Scheme+"://"+r.URL.Host)
	}
	return http.DefaultTransport.RoundTrip(r)
}

// signIn runs the whole flow and returns the final response's status and
// body.
func (s *site) signIn(t *testing.T, c *http.Client) (int, string) {
	t.Helper()
	resp, err := c.Get(s.URL + AuthPath + "login")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// session returns the signed-in session as GET session answers it.
func (s *site) session(t *testing.T, c *http.Client) (int, map[string]any) {
	t.Helper()
	resp, err := c.Get(s.URL + AuthPath + "session")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

func TestSignInFlow(t *testing.T) {
	s := newSite(t, "alice", "artifact-workloads", "devs")
	c := browser(t)
	status, body := s.signIn(t, c)
	if status != http.StatusOK || !strings.Contains(body, `<strong id="user">alice</strong>`) ||
		!strings.Contains(body, `<span class="group">artifact-workloads</span>`) {
		t.Fatalf("after sign-in: %d\n%s", status, body)
	}
	status, m := s.session(t, c)
	if status != http.StatusOK || m["user"] != "alice" || m["csrf_token"] == "" {
		t.Fatalf("session: %d %v", status, m)
	}
	u, _ := url.Parse(s.URL + AuthPath)
	var names []string
	for _, ck := range c.Jar.Cookies(u) {
		names = append(names, ck.Name)
	}
	if strings.Join(names, ",") != sessionCookie {
		t.Fatalf("cookies after sign-in: %v (the sign-in cookie must be gone)", names)
	}

	// Logout needs the CSRF token.
	resp, err := c.PostForm(s.URL+AuthPath+"logout", url.Values{})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("logout without csrf: %d", resp.StatusCode)
	}
	resp, err = c.PostForm(s.URL+AuthPath+"logout", url.Values{"csrf": {m["csrf_token"].(string)}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if status, _ := s.session(t, c); status != http.StatusUnauthorized {
		t.Fatalf("session after logout: %d", status)
	}
}

func TestSignInCookieAttributes(t *testing.T) {
	s := newSite(t, "alice")
	c := browser(t)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Get(s.URL + AuthPath + "login")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	to, _ := url.Parse(resp.Header.Get("Location"))
	q := to.Query()
	if resp.StatusCode != http.StatusFound || q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" ||
		q.Get("nonce") == "" || q.Get("state") == "" || !strings.Contains(q.Get("scope"), "openid") ||
		q.Get("redirect_uri") != s.URL+"/_oci/auth/callback" {
		t.Fatalf("login redirect: %d %s", resp.StatusCode, to)
	}
	ck := resp.Cookies()
	if len(ck) != 1 || ck[0].Name != loginCookie || !ck[0].HttpOnly || ck[0].SameSite != http.SameSiteLaxMode || ck[0].Secure ||
		ck[0].Path != AuthPath || ck[0].Domain != "" {
		t.Fatalf("sign-in cookie on loopback http: %+v", ck)
	}

	// Over https: Secure and the __Secure- prefix (__Host- would need
	// Path=/, which sends the session to every handler of the site).
	si, err := NewSignIn(SignInOptions{
		OIDC:        &OIDCClient{Issuer: s.p.Issuer(), ClientID: oidctest.ClientID, RedirectURL: RedirectURL("https://registry.example")},
		ExternalURL: "https://registry.example", Sealer: testSealer(), Sessions: newMemSessions(time.Now),
	})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	si.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "https://registry.example"+AuthPath+"login", nil))
	ck = rec.Result().Cookies()
	if len(ck) != 1 || ck[0].Name != "__Secure-"+loginCookie || !ck[0].Secure || !ck[0].HttpOnly || ck[0].Path != AuthPath || ck[0].Domain != "" {
		t.Fatalf("sign-in cookie over https: %+v", ck)
	}
}

// TestSignInRefusesBadIDTokens: every wrong ID token ends in 403 and no
// session.
func TestSignInRefusesBadIDTokens(t *testing.T) {
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		mutate func(map[string]any)
		tamper func(string) string
	}{
		{name: "expired", mutate: func(c map[string]any) {
			c["iat"] = time.Now().Add(-2 * time.Hour).Unix()
			c["exp"] = time.Now().Add(-time.Hour).Unix()
		}},
		{name: "wrong audience", mutate: func(c map[string]any) { c["aud"] = "someone-else" }},
		{name: "wrong nonce", mutate: func(c map[string]any) { c["nonce"] = "replayed" }},
		{name: "no nonce", mutate: func(c map[string]any) { delete(c, "nonce") }},
		{name: "wrong issuer", mutate: func(c map[string]any) { c["iss"] = "https://evil.example" }},
		{name: "user name not a string", mutate: func(c map[string]any) { c["preferred_username"] = []string{"root"} }},
		{name: "user name of a workload", mutate: func(c map[string]any) { c["preferred_username"] = WorkloadPrefix + "repo:blumeops/app" }},
		{name: "group of a workload", mutate: func(c map[string]any) { c["groups"] = []string{"devs", WorkloadPrefix + "blumeops"} }},
		{name: "tampered payload", tamper: func(tok string) string {
			parts := strings.Split(tok, ".")
			parts[1] = strings.TrimRight(parts[1], "=") + "x"
			return strings.Join(parts, ".")
		}},
		{name: "tampered signature", tamper: func(tok string) string {
			b := []byte(tok)
			i := len(b) - 5
			if b[i] == 'A' {
				b[i] = 'B'
			} else {
				b[i] = 'A'
			}
			return string(b)
		}},
		{name: "signed by another key", tamper: func(tok string) string {
			var c map[string]any
			parts := strings.Split(tok, ".")
			raw, _ := decodeSegment(parts[1])
			_ = json.Unmarshal(raw, &c)
			return oidctest.SignWith(other, c)
		}},
		{name: "alg none", tamper: func(tok string) string {
			parts := strings.Split(tok, ".")
			return "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0." + parts[1] + "."
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newSite(t, "mallory", "admins")
			s.p.SetMutate(tc.mutate)
			s.p.SetTamper(tc.tamper)
			c := browser(t)
			if status, body := s.signIn(t, c); status != http.StatusForbidden {
				t.Fatalf("sign-in: %d %s", status, body)
			}
			if status, _ := s.session(t, c); status != http.StatusUnauthorized {
				t.Fatalf("session after refused sign-in: %d", status)
			}
		})
	}
}

// TestSignInRefusesUnverifiedEmail: with the address as the user name
// (zot's default, which the zot adapter keeps), an address the provider
// says it did not verify signs nobody in: at a provider where users set
// their own address, anyone would otherwise be admin@example.org. The
// flag as Cognito sends it (a string) counts, and a provider that sends
// none is believed.
func TestSignInRefusesUnverifiedEmail(t *testing.T) {
	cases := []struct {
		name     string
		verified any // nil: no email_verified claim
		want     int
	}{
		{"unverified", false, http.StatusForbidden},
		{"unverified as a string", "false", http.StatusForbidden},
		{"flag of another type", 0, http.StatusForbidden},
		{"verified", true, http.StatusOK},
		{"verified as a string", "true", http.StatusOK},
		{"no flag", nil, http.StatusOK},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newSiteClaims(t, ClaimMapping{Username: "email"}, "mallory")
			s.p.SetMutate(func(c map[string]any) {
				c["email"] = "admin@example.org"
				if tc.verified != nil {
					c["email_verified"] = tc.verified
				}
			})
			c := browser(t)
			if status, body := s.signIn(t, c); status != tc.want {
				t.Fatalf("sign-in: %d, want %d\n%s", status, tc.want, body)
			}
			status, m := s.session(t, c)
			if tc.want != http.StatusOK {
				if status != http.StatusUnauthorized {
					t.Fatalf("session after refused sign-in: %d %v", status, m)
				}
				return
			}
			if status != http.StatusOK || m["user"] != "admin@example.org" {
				t.Fatalf("session: %d %v", status, m)
			}
		})
	}
	// Only the address is in question: another claim as the user name
	// signs in whatever the flag says.
	s := newSite(t, "alice")
	s.p.SetMutate(func(c map[string]any) { c["email"], c["email_verified"] = "x@example.org", false })
	if status, body := s.signIn(t, browser(t)); status != http.StatusOK {
		t.Fatalf("preferred_username with an unverified address: %d %s", status, body)
	}
}

func decodeSegment(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(s)
}

// TestSignInStateMismatch: a callback whose state is not the one in this
// browser's sign-in cookie (login CSRF), or that comes without any, is
// refused and the code never exchanged.
func TestSignInStateMismatch(t *testing.T) {
	s := newSite(t, "alice")
	c := browser(t)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Get(s.URL + AuthPath + "login")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	resp, err = c.Get(resp.Header.Get("Location")) // the provider
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cb, _ := url.Parse(resp.Header.Get("Location"))
	q := cb.Query()
	good := q.Get("state")
	q.Set("state", good+"x")
	cb.RawQuery = q.Encode()
	resp, err = c.Get(cb.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("callback with a wrong state: %d", resp.StatusCode)
	}
	// The sign-in cookie was used up: even the right state fails now.
	q.Set("state", good)
	cb.RawQuery = q.Encode()
	resp, err = c.Get(cb.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("callback replayed after a refusal: %d", resp.StatusCode)
	}
	// Another browser (no sign-in cookie) cannot use the callback.
	resp, err = browser(t).Get(cb.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("callback in a browser that did not start the sign-in: %d", resp.StatusCode)
	}
	if status, _ := s.session(t, c); status != http.StatusUnauthorized {
		t.Fatalf("session: %d", status)
	}
}

// TestSessionCookieTampering: a changed, truncated, foreign or expired
// session cookie is no session.
func TestSessionCookieTampering(t *testing.T) {
	s := newSite(t, "alice")
	c := browser(t)
	if status, _ := s.signIn(t, c); status != http.StatusOK {
		t.Fatal(status)
	}
	u, _ := url.Parse(s.URL + AuthPath)
	orig := c.Jar.Cookies(u)[0].Value
	forged, err := testSealer().Seal(sessionCookie, Session{User: "root", CSRF: "x", Expires: time.Now().Add(time.Hour).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	// A value sealed for the sign-in cookie must not open as a session.
	asLogin, err := s.si.o.Sealer.Seal(loginCookie, Session{User: "root", CSRF: "x", Expires: time.Now().Add(time.Hour).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	flip := []byte(orig)
	flip[len(flip)/2] ^= 1
	for name, v := range map[string]string{
		"bit flipped":      string(flip),
		"truncated":        orig[:len(orig)-4],
		"other key":        forged,
		"sealed for login": asLogin,
		"garbage":          "not-base64!",
		"empty":            "",
		"plain JSON":       `{"u":"root","c":"x","e":9999999999}`,
		"nonce only":       orig[:16],
	} {
		t.Run(name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, s.URL+AuthPath+"session", nil)
			r.AddCookie(&http.Cookie{Name: sessionCookie, Value: v})
			rec := httptest.NewRecorder()
			s.si.ServeHTTP(rec, r)
			if rec.Code != http.StatusUnauthorized {
				t.Fatalf("%d %s", rec.Code, rec.Body)
			}
		})
	}
	// The real cookie works until the session expires.
	if status, _ := s.session(t, c); status != http.StatusOK {
		t.Fatalf("real cookie: %d", status)
	}
	s.clock.Add(DefaultSessionTTL)
	if status, _ := s.session(t, c); status != http.StatusUnauthorized {
		t.Fatalf("expired session: %d", status)
	}
}

// TestSignInLazyDiscovery: an unreachable provider does not fail
// NewSignIn; a sign-in then fails as an outage (503, Retry-After, a
// page saying to try again), as a workload token's check does.
func TestSignInLazyDiscovery(t *testing.T) {
	p := oidctest.New(t, "alice")
	issuer := p.Issuer()
	p.Close()
	si, err := NewSignIn(SignInOptions{
		OIDC:        &OIDCClient{Issuer: issuer, ClientID: oidctest.ClientID, RedirectURL: RedirectURL("http://127.0.0.1:1")},
		ExternalURL: "http://127.0.0.1:1", Sealer: testSealer(), Sessions: newMemSessions(time.Now),
	})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	si.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, AuthPath+"login", nil))
	wantOutage(t, "login with the provider down", rec.Result())
}

// wantOutage checks a sign-in answer for a provider that cannot be
// reached: 503 with Retry-After, a page that says so and to try again,
// and not the provider's address.
func wantOutage(t *testing.T, what string, resp *http.Response) {
	t.Helper()
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" ||
		!strings.Contains(string(body), "cannot be reached") || !strings.Contains(string(body), "try again") {
		t.Fatalf("%s: %d, Retry-After %q, %q; want 503, Retry-After, a page saying to try again",
			what, resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if strings.Contains(string(body), "127.0.0.1") {
		t.Fatalf("%s: the page names an address: %q", what, body)
	}
}

// TestSignInProviderDown: a provider that goes down during a sign-in is
// an outage, not a refusal nor a bad gateway: the callback answers 503
// with Retry-After whether the token endpoint cannot be reached or the
// keys the ID token is checked with cannot be fetched.
func TestSignInProviderDown(t *testing.T) {
	t.Run("keys", func(t *testing.T) {
		s := newSite(t, "alice")
		s.p.SetKeysDown(true)
		c := browser(t)
		resp, err := c.Get(s.URL + AuthPath + "login")
		if err != nil {
			t.Fatal(err)
		}
		wantOutage(t, "callback with the provider's keys down", resp)
	})
	t.Run("token endpoint", func(t *testing.T) {
		s := newSite(t, "alice")
		c := browser(t)
		// Up to the provider's redirect back: then the provider goes.
		c.CheckRedirect = func(r *http.Request, _ []*http.Request) error {
			if strings.HasSuffix(r.URL.Path, "/callback") {
				return http.ErrUseLastResponse
			}
			return nil
		}
		resp, err := c.Get(s.URL + AuthPath + "login")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		back := resp.Header.Get("Location")
		if resp.StatusCode != http.StatusFound || !strings.Contains(back, "/callback?") {
			t.Fatalf("login: %s to %q", resp.Status, back)
		}
		s.p.Close()
		resp, err = c.Get(back)
		if err != nil {
			t.Fatal(err)
		}
		wantOutage(t, "callback with the provider down", resp)
	})
}

func TestCheckExternalURL(t *testing.T) {
	for _, tc := range []struct {
		url    string
		secure bool
		ok     bool
	}{
		{"https://registry.example", true, true},
		{"https://registry.example:8443/", true, true},
		{"http://127.0.0.1:5000", false, true},
		{"http://localhost:5000", false, true},
		{"http://[::1]:5000", false, true},
		{"http://registry.example", false, false},
		{"http://10.0.0.1", false, false},
		{"https://registry.example/sub", false, false},
		{"ftp://registry.example", false, false},
		{"registry.example", false, false},
		{"https://user@registry.example", false, false},
	} {
		secure, _, err := CheckExternalURL(tc.url)
		if (err == nil) != tc.ok || (tc.ok && secure != tc.secure) {
			t.Errorf("%s: secure %v, err %v", tc.url, secure, err)
		}
	}
	// The origin is compared with what browsers send in Origin: host in
	// lower case, no default port.
	for url, want := range map[string]string{
		"https://Registry.Example:443/": "https://registry.example",
		"https://registry.example:8443": "https://registry.example:8443",
		"http://LocalHost:80":           "http://localhost",
		"http://[::1]:5000":             "http://[::1]:5000",
	} {
		if _, origin, err := CheckExternalURL(url); err != nil || origin != want {
			t.Errorf("%s: origin %q, %v; want %q", url, origin, err, want)
		}
	}
}

// TestSignInLogsNoCode: a refused callback is logged without its query,
// which holds the authorization code and the state.
func TestSignInLogsNoCode(t *testing.T) {
	s := newSite(t, "mallory")
	core, logs := observer.New(zap.InfoLevel)
	s.si.o.Logger = zap.New(core)
	s.p.SetMutate(func(c map[string]any) { c["aud"] = "someone-else" })
	c := browser(t)
	var code string
	c.CheckRedirect = func(r *http.Request, _ []*http.Request) error {
		if v := r.URL.Query().Get("code"); v != "" {
			code = v
		}
		return nil
	}
	if status, _ := s.signIn(t, c); status != http.StatusForbidden || code == "" {
		t.Fatalf("sign-in: %d, code %q", status, code)
	}
	if logs.Len() == 0 {
		t.Fatal("nothing logged")
	}
	for _, e := range logs.All() {
		for k, v := range e.ContextMap() {
			if strings.Contains(fmt.Sprint(v), code) {
				t.Errorf("log %q: field %s holds the code: %v", e.Message, k, v)
			}
		}
	}
}

// TestSignInIssuerMismatch: an issuer configured with a trailing slash
// while the provider advertises it without one (as Dex does) is the
// operator's mistake, not an unreachable provider: the page says the
// issuer does not match, without naming URLs, and the log says at error
// level which two spellings differ.
func TestSignInIssuerMismatch(t *testing.T) {
	p := oidctest.New(t, "alice")
	configured := p.Issuer() + "/"
	core, logs := observer.New(zap.InfoLevel)
	si, err := NewSignIn(SignInOptions{
		OIDC:        &OIDCClient{Issuer: configured, ClientID: oidctest.ClientID, RedirectURL: RedirectURL("http://127.0.0.1:1")},
		ExternalURL: "http://127.0.0.1:1", Sealer: testSealer(), Sessions: newMemSessions(time.Now),
		Logger: zap.New(core),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(si)
	t.Cleanup(srv.Close)
	resp, err := http.Get(srv.URL + AuthPath + "login")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusInternalServerError || !strings.Contains(string(body), "issuer does not match") {
		t.Errorf("login: %d %q; want 500 saying the issuer does not match", resp.StatusCode, body)
	}
	if strings.Contains(string(body), strings.TrimPrefix(p.Issuer(), "http://")) {
		t.Errorf("the page names the provider's address: %q", body)
	}
	errs := logs.FilterLevelExact(zap.ErrorLevel).All()
	if len(errs) != 1 {
		t.Fatalf("error log lines: %v; want one", logs.All())
	}
	reason := fmt.Sprint(errs[0].ContextMap()["error"])
	for _, want := range []string{`configured "` + configured + `"`, `advertised "` + p.Issuer() + `"`} {
		if !strings.Contains(reason, want) {
			t.Errorf("logged reason %q lacks %s", reason, want)
		}
	}
}
