package authscope

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// signedIn signs a browser in at s and returns it, its session cookie
// and its CSRF token.
func (s *site) signedIn(t *testing.T) (*http.Client, *http.Cookie, string) {
	t.Helper()
	c := browser(t)
	if status, body := s.signIn(t, c); status != http.StatusOK {
		t.Fatalf("sign-in: %d %s", status, body)
	}
	u, _ := url.Parse(s.URL + AuthPath)
	var cookie *http.Cookie
	for _, ck := range c.Jar.Cookies(u) {
		if ck.Name == sessionCookie {
			cookie = ck
		}
	}
	if cookie == nil {
		t.Fatal("no session cookie")
	}
	_, m := s.session(t, c)
	return c, cookie, m["csrf_token"].(string)
}

// raw sends one request with exactly the given cookies and headers (no
// jar, no Origin added) and returns its status and body.
func (s *site) raw(t *testing.T, method, path, body string, cookies []*http.Cookie, hdr http.Header) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, s.URL+AuthPath+path, strings.NewReader(body))
	for _, c := range cookies {
		req.AddCookie(c)
	}
	for k, vs := range hdr {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestStateChangesNeedSameOrigin (issue 10, M3): the session cookie and
// its CSRF token (which GET session hands to anyone holding the cookie)
// change nothing unless the request shows it comes from a page of this
// site, by Origin or Sec-Fetch-Site. Every state-changing endpoint, JSON
// and form alike; a refusal is a 403 with a JSON error for scripts, and
// leaves no key made, none revoked and the session live.
func TestStateChangesNeedSameOrigin(t *testing.T) {
	s := newSite(t, "alice", "devs")
	_, cookie, csrf := s.signedIn(t)
	key, _, err := s.keys.Create("alice", nil, "kept", 0)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := apiKeyID(key)
	ours := s.URL
	type endpoint struct {
		method, path, body, contentType string
	}
	endpoints := map[string]endpoint{
		"create (JSON)": {"POST", "apikeys", `{"label":"x"}`, "application/json"},
		"create (form)": {"POST", "apikeys", url.Values{"csrf": {csrf}, "label": {"x"}}.Encode(), "application/x-www-form-urlencoded"},
		"revoke (JSON)": {"DELETE", "apikeys/" + id, "", ""},
		"revoke (form)": {"POST", "apikeys/" + id + "/revoke", url.Values{"csrf": {csrf}}.Encode(), "application/x-www-form-urlencoded"},
		"logout":        {"POST", "logout", url.Values{"csrf": {csrf}}.Encode(), "application/x-www-form-urlencoded"},
	}
	refused := map[string]http.Header{
		"neither Origin nor Sec-Fetch-Site": {},
		"foreign Origin":                    {"Origin": {"https://evil.example"}},
		"Origin of another port":            {"Origin": {strings.Replace(ours, "127.0.0.1:", "127.0.0.1:1", 1)}},
		"Origin null":                       {"Origin": {"null"}},
		"cross-site":                        {"Sec-Fetch-Site": {"cross-site"}},
		"same-site (a sibling subdomain)":   {"Sec-Fetch-Site": {"same-site"}, "Origin": {ours}},
		"none (typed URL)":                  {"Sec-Fetch-Site": {"none"}},
		"same-origin but foreign Origin":    {"Sec-Fetch-Site": {"same-origin"}, "Origin": {"https://evil.example"}},
		"two Origins":                       {"Origin": {ours, "https://evil.example"}},
		"two Sec-Fetch-Site":                {"Sec-Fetch-Site": {"same-origin", "cross-site"}},
	}
	for en, e := range endpoints {
		for hn, h := range refused {
			t.Run(en+"/"+hn, func(t *testing.T) {
				hdr := h.Clone()
				hdr.Set("X-CSRF-Token", csrf)
				if e.contentType != "" {
					hdr.Set("Content-Type", e.contentType)
				}
				status, body := s.raw(t, e.method, e.path, e.body, []*http.Cookie{cookie}, hdr)
				var m map[string]string
				if status != http.StatusForbidden || json.Unmarshal([]byte(body), &m) != nil || !strings.Contains(m["error"], ours) {
					t.Fatalf("%d %s, want 403 with a JSON error naming %s", status, body, ours)
				}
			})
		}
	}
	if keys, _ := s.keys.List("alice"); len(keys) != 1 || keys[0].ID != id {
		t.Fatalf("keys after refused requests: %+v", keys)
	}
	if s.sessions.len() != 1 {
		t.Fatal("a refused logout ended the session")
	}

	// What browsers send from the page: accepted.
	for hn, h := range map[string]http.Header{
		"our Origin":                           {"Origin": {ours}},
		"our Origin and same-origin":           {"Origin": {ours}, "Sec-Fetch-Site": {"same-origin"}},
		"same-origin, Origin hidden (null)":    {"Origin": {"null"}, "Sec-Fetch-Site": {"same-origin"}},
		"same-origin, no Origin (old browser)": {"Sec-Fetch-Site": {"same-origin"}},
	} {
		t.Run("create/"+hn, func(t *testing.T) {
			hdr := h.Clone()
			hdr.Set("X-CSRF-Token", csrf)
			hdr.Set("Content-Type", "application/json")
			if status, body := s.raw(t, "POST", "apikeys", `{"label":"ok"}`, []*http.Cookie{cookie}, hdr); status != http.StatusCreated {
				t.Fatalf("%d %s", status, body)
			}
		})
	}
}

// TestCSRFTokenBoundToSession: a CSRF token of one session is no good
// with another, even of the same user.
func TestCSRFTokenBoundToSession(t *testing.T) {
	s := newSite(t, "alice")
	_, cookieA, _ := s.signedIn(t)
	_, _, csrfB := s.signedIn(t)
	hdr := http.Header{"Origin": {s.URL}, "X-CSRF-Token": {csrfB}, "Content-Type": {"application/json"}}
	if status, body := s.raw(t, "POST", "apikeys", `{"label":"x"}`, []*http.Cookie{cookieA}, hdr); status != http.StatusForbidden {
		t.Fatalf("create with another session's token: %d %s", status, body)
	}
	if keys, _ := s.keys.List("alice"); len(keys) != 0 {
		t.Fatalf("keys: %+v", keys)
	}
}

// TestSignOutEndsSession (issue 10, L6): after sign-out, a copy of the
// session cookie is no session anywhere (JSON API, page, key creation,
// another sign-out), long before it expires; another session of the same
// user lives on.
func TestSignOutEndsSession(t *testing.T) {
	s := newSite(t, "alice")
	c, cookie, csrf := s.signedIn(t)
	other, _, _ := s.signedIn(t)
	resp, err := c.PostForm(s.URL+AuthPath+"logout", url.Values{"csrf": {csrf}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Request.URL.Path != AuthPath {
		t.Fatalf("logout: %d at %s", resp.StatusCode, resp.Request.URL)
	}
	if status, _ := s.session(t, c); status != http.StatusUnauthorized {
		t.Fatalf("the browser after logout: %d", status)
	}
	jar := []*http.Cookie{cookie}
	api := http.Header{"Origin": {s.URL}, "X-CSRF-Token": {csrf}, "Content-Type": {"application/json"}}
	for _, tc := range []struct{ method, path, body string }{
		{"GET", "session", ""},
		{"GET", "apikeys", ""},
		{"POST", "apikeys", `{"label":"after logout"}`},
		{"POST", "logout", ""},
	} {
		if status, body := s.raw(t, tc.method, tc.path, tc.body, jar, api); status != http.StatusUnauthorized {
			t.Errorf("%s %s with the signed-out cookie: %d %s", tc.method, tc.path, status, body)
		}
	}
	if status, body := s.raw(t, "GET", "", "", jar, nil); status != http.StatusOK || strings.Contains(body, csrf) || strings.Contains(body, `id="user"`) {
		t.Errorf("the page with the signed-out cookie: %d\n%s", status, body)
	}
	if keys, _ := s.keys.List("alice"); len(keys) != 0 {
		t.Fatalf("keys made after logout: %+v", keys)
	}
	if status, _ := s.session(t, other); status != http.StatusOK {
		t.Fatalf("the user's other session: %d", status)
	}
}

// TestSessionWithoutRecord: a cookie that opens but whose session the
// store does not hold (sealed before sessions had IDs, or with an ID
// never stored, or the store's record names someone else) is no session.
func TestSessionWithoutRecord(t *testing.T) {
	s := newSite(t, "alice")
	_, real, _ := s.signedIn(t)
	exp := s.clock.Now().Add(time.Hour)
	stored := func(id, user string) string {
		rec, _ := json.Marshal(sessionRecord{User: user, Expires: exp})
		if err := s.sessions.CreateSession(id, rec, exp); err != nil {
			t.Fatal(err)
		}
		return id
	}
	for name, sess := range map[string]Session{
		"no ID":              {User: "alice", CSRF: "x", Expires: exp.Unix()},
		"ID never stored":    {ID: "made-up", User: "alice", CSRF: "x", Expires: exp.Unix()},
		"record of another":  {ID: stored("bobs", "bob"), User: "alice", CSRF: "x", Expires: exp.Unix()},
		"record of the user": {ID: stored("alices", "alice"), User: "alice", CSRF: "x", Expires: exp.Unix()},
	} {
		v, err := s.si.o.Sealer.Seal(sessionCookie, sess)
		if err != nil {
			t.Fatal(err)
		}
		status, body := s.raw(t, "GET", "session", "", []*http.Cookie{{Name: sessionCookie, Value: v}}, nil)
		want := http.StatusUnauthorized
		if name == "record of the user" {
			want = http.StatusOK // the control: such a cookie works
		}
		if status != want {
			t.Errorf("%s: %d %s, want %d", name, status, body, want)
		}
	}
	// Two session cookies (one planted by a sibling subdomain) are
	// refused, whichever comes first.
	other, _, _ := s.signedIn(t)
	u, _ := url.Parse(s.URL + AuthPath)
	planted := other.Jar.Cookies(u)[0]
	for _, order := range [][]*http.Cookie{{real, planted}, {planted, real}} {
		if status, _ := s.raw(t, "GET", "session", "", order, nil); status != http.StatusUnauthorized {
			t.Errorf("two session cookies: %d", status)
		}
	}
}

// brokenSessions is a session store that fails.
type brokenSessions struct{}

var errStoreDown = errors.New("store down")

func (brokenSessions) Session(string) ([]byte, error)                { return nil, errStoreDown }
func (brokenSessions) DeleteSession(string) error                    { return errStoreDown }
func (brokenSessions) CreateSession(string, []byte, time.Time) error { return errStoreDown }

// TestSessionStoreDown: when the store cannot say whether a session is
// live, nothing is allowed (500), sign-in fails rather than handing out
// a session it cannot end, and sign-out says it failed.
func TestSessionStoreDown(t *testing.T) {
	s := newSite(t, "alice")
	c, cookie, csrf := s.signedIn(t)
	s.si.o.Sessions = brokenSessions{}
	api := http.Header{"Origin": {s.URL}, "X-CSRF-Token": {csrf}, "Content-Type": {"application/json"}}
	for _, tc := range []struct{ method, path, body string }{
		{"GET", "session", ""},
		{"GET", "", ""},
		{"POST", "apikeys", `{"label":"x"}`},
		{"POST", "logout", ""},
	} {
		if status, body := s.raw(t, tc.method, tc.path, tc.body, []*http.Cookie{cookie}, api); status != http.StatusInternalServerError {
			t.Errorf("%s %s: %d %s", tc.method, tc.path, status, body)
		}
	}
	if status, _ := s.signIn(t, c); status != http.StatusInternalServerError {
		t.Errorf("sign-in with the store down: %d", status)
	}
	if keys, _ := s.keys.List("alice"); len(keys) != 0 {
		t.Fatalf("keys: %+v", keys)
	}
}

// TestDropSignInCookies: every sign-in cookie goes, in every Cookie
// header and under every prefix; the others stay.
func TestDropSignInCookies(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []string
		want []string
	}{
		{"none of ours", []string{"a=1;b=2", "c=3"}, []string{"a=1;b=2", "c=3"}},
		{"mixed", []string{"a=1; oci_session=s; b=2"}, []string{"a=1; b=2"}},
		{"several headers", []string{"a=1", "oci_session=s", "oci_login=l; b=2"}, []string{"a=1; b=2"}},
		{"first header empty", []string{"", "oci_session=s; a=1"}, []string{"a=1"}},
		{"prefixes", []string{"__Host-oci_session=s; __Secure-oci_session=s; __Secure-oci_login=l; a=1"}, []string{"a=1"}},
		{"other case", []string{"OCI_SESSION=s; __secure-Oci_Session=s; a=1"}, []string{"a=1"}},
		{"spaces around", []string{" oci_session =s ;a=1"}, []string{"a=1"}},
		{"no value", []string{"oci_session; a=1"}, []string{"a=1"}},
		{"only ours", []string{"oci_session=s", "oci_login=l"}, nil},
		{"look-alikes stay", []string{"oci_sessions=1; my_oci_session=2; __Host-x=3; oci_session=s"}, []string{"oci_sessions=1; my_oci_session=2; __Host-x=3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{"Cookie": tc.in}
			DropSignInCookies(h)
			if got := h.Values("Cookie"); strings.Join(got, "|") != strings.Join(tc.want, "|") || len(got) != len(tc.want) {
				t.Fatalf("Cookie %q, want %q", got, tc.want)
			}
		})
	}
}
