package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/caddy-oci/caddy-oci/authscope/oidctest"
)

// cookieBackend is another service of the site, behind reverse_proxy: it
// records the Cookie headers it receives.
type cookieBackend struct {
	*httptest.Server
	mu  sync.Mutex
	got [][]string
}

func newCookieBackend(t *testing.T) *cookieBackend {
	b := &cookieBackend{}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.got = append(b.got, r.Header.Values("Cookie"))
		b.mu.Unlock()
		_, _ = io.WriteString(w, "backend")
	}))
	t.Cleanup(b.Close)
	return b
}

// last is the Cookie headers of the last request the backend received.
func (b *cookieBackend) last(t *testing.T) []string {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.got) == 0 {
		t.Fatal("the backend received no request")
	}
	return b.got[len(b.got)-1]
}

// sessionCookie is the session cookie the browser w holds for the
// sign-in pages.
func (w *webSession) sessionCookie() *http.Cookie {
	w.t.Helper()
	u, _ := url.Parse(w.s.url("/_oci/auth/"))
	for _, c := range w.c.Jar.Cookies(u) {
		if strings.HasSuffix(c.Name, "oci_session") {
			return c
		}
	}
	w.t.Fatal("no session cookie after sign-in")
	return nil
}

// stolen sends a request to s carrying only the session cookie, as a
// holder of the cookie (another handler of the site that received it)
// would, with the given extra headers; it returns the status and body.
func stolen(t *testing.T, s *server, cookie *http.Cookie, method, path, body string, hdr map[string]string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, s.url(path), strings.NewReader(body))
	req.AddCookie(cookie)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestOIDCSessionStaysHome (issue 10, M3): with a reverse_proxy on the
// same site, the session cookie does not reach the backend, whether the
// browser scopes it away or a client sends it anyway (in any of several
// Cookie headers, next to cookies of the backend's own, which it keeps);
// and the cookie alone, without the browser's Origin, makes no API key.
func TestOIDCSessionStaysHome(t *testing.T) {
	p := oidctest.New(t, "alice", "artifact-workloads")
	backend := newCookieBackend(t)
	s := oidcSite(t, p, "reverse_proxy "+backend.Listener.Addr().String())
	w := signIn(t, s)
	sess := w.sessionCookie()

	t.Run("the browser keeps the cookie to the sign-in pages", func(t *testing.T) {
		u, _ := url.Parse(s.url("/app/index.html"))
		for _, c := range w.c.Jar.Cookies(u) {
			t.Errorf("the browser sends cookie %s to %s", c.Name, u.Path)
		}
	})

	t.Run("the backend never receives sign-in cookies", func(t *testing.T) {
		for name, headers := range map[string][]string{
			"one header":           {"theme=dark; " + sess.Name + "=" + sess.Value + "; oci_login=x; lang=en"},
			"several headers":      {"theme=dark", sess.Name + "=" + sess.Value, "oci_login=x; lang=en"},
			"first header empty":   {"", sess.Name + "=" + sess.Value + "; theme=dark; lang=en"},
			"with the __Host- one": {"__Host-oci_session=" + sess.Value + "; theme=dark", "__Secure-oci_session=" + sess.Value + "; lang=en"},
		} {
			req, _ := http.NewRequest(http.MethodGet, s.url("/app/"+strings.ReplaceAll(name, " ", "-")), nil)
			for _, h := range headers {
				req.Header.Add("Cookie", h)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || string(body) != "backend" {
				t.Fatalf("%s: %d %s", name, resp.StatusCode, body)
			}
			got := strings.Join(backend.last(t), "; ")
			if strings.Contains(got, "oci_session") || strings.Contains(got, "oci_login") || strings.Contains(got, sess.Value) {
				t.Errorf("%s: the backend received Cookie %q", name, got)
			}
			if !strings.Contains(got, "theme=dark") || !strings.Contains(got, "lang=en") {
				t.Errorf("%s: the backend lost its own cookies: %q", name, got)
			}
		}
	})

	t.Run("the cookie alone makes no key", func(t *testing.T) {
		status, body := stolen(t, s, sess, http.MethodGet, "/_oci/auth/session", "", nil)
		var who struct {
			CSRF string `json:"csrf_token"`
		}
		if status != http.StatusOK || json.Unmarshal([]byte(body), &who) != nil || who.CSRF == "" {
			t.Fatalf("session: %d %s", status, body)
		}
		create := `{"label": "stolen", "ttl_days": 30}`
		for name, hdr := range map[string]map[string]string{
			"no Origin":           {"X-CSRF-Token": who.CSRF},
			"foreign Origin":      {"X-CSRF-Token": who.CSRF, "Origin": "http://evil.example"},
			"null Origin":         {"X-CSRF-Token": who.CSRF, "Origin": "null"},
			"cross-site fetch":    {"X-CSRF-Token": who.CSRF, "Sec-Fetch-Site": "cross-site"},
			"same-site fetch":     {"X-CSRF-Token": who.CSRF, "Sec-Fetch-Site": "same-site", "Origin": "http://" + s.addr},
			"Origin, no token":    {"Origin": "http://" + s.addr},
			"Origin, bad token":   {"X-CSRF-Token": who.CSRF + "x", "Origin": "http://" + s.addr},
			"other host's Origin": {"X-CSRF-Token": who.CSRF, "Origin": "http://" + s.localhostAddr()},
		} {
			status, body := stolen(t, s, sess, http.MethodPost, "/_oci/auth/apikeys", create, hdr)
			var e struct{ Error string }
			if status != http.StatusForbidden || json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
				t.Errorf("%s: %d %s, want 403 with a JSON error", name, status, body)
			}
		}
		var keys struct{ Keys []any }
		w.do(http.MethodGet, "/_oci/auth/apikeys", nil, http.StatusOK, &keys)
		if len(keys.Keys) != 0 {
			t.Fatalf("refused creates left keys: %v", keys.Keys)
		}
		// The page's own request, from the browser, still works.
		if status, body := stolen(t, s, sess, http.MethodPost, "/_oci/auth/apikeys", create,
			map[string]string{"X-CSRF-Token": who.CSRF, "Origin": "http://" + s.addr, "Sec-Fetch-Site": "same-origin"}); status != http.StatusCreated {
			t.Fatalf("same-origin create: %d %s", status, body)
		}
	})
}

// TestOIDCSignOutEndsSession (issue 10, L6): once signed out, the old
// session cookie is refused, for reading and for making keys, even
// though it has not expired.
func TestOIDCSignOutEndsSession(t *testing.T) {
	p := oidctest.New(t, "alice", "artifact-workloads")
	s := oidcServer(t, p)
	w := signIn(t, s)
	other := signIn(t, s) // the same user in a second browser
	sess := w.sessionCookie()
	origin := map[string]string{"X-CSRF-Token": w.csrf, "Origin": "http://" + s.addr}

	// The logout form, as the browser posts it.
	req, _ := http.NewRequest(http.MethodPost, s.url("/_oci/auth/logout"), strings.NewReader(url.Values{"csrf": {w.csrf}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "null") // Referrer-Policy no-referrer makes Chromium send this
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	resp, err := w.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Request.URL.Path != "/_oci/auth/" {
		t.Fatalf("logout: %d at %s", resp.StatusCode, resp.Request.URL)
	}
	if status, body := stolen(t, s, sess, http.MethodGet, "/_oci/auth/session", "", nil); status != http.StatusUnauthorized {
		t.Errorf("session with the signed-out cookie: %d %s", status, body)
	}
	if status, body := stolen(t, s, sess, http.MethodPost, "/_oci/auth/apikeys", `{"label": "after logout"}`, origin); status != http.StatusUnauthorized {
		t.Errorf("create with the signed-out cookie: %d %s", status, body)
	}
	if status, body := stolen(t, s, sess, http.MethodPost, "/_oci/auth/logout", "", origin); status != http.StatusUnauthorized {
		t.Errorf("logout again with the signed-out cookie: %d %s", status, body)
	}
	// The other browser's session is its own.
	other.do(http.MethodGet, "/_oci/auth/session", nil, http.StatusOK, nil)
}
