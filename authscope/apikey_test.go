package authscope

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/authscope/oidctest"
)

func TestAPIKeyLifecycle(t *testing.T) {
	clk := newClock()
	store := newMemKeys()
	k := &APIKeys{Store: store, Now: clk.Now, DefaultTTL: 24 * time.Hour, MaxTTL: 48 * time.Hour}
	key, rec, err := k.Create("alice", []string{"artifact-workloads"}, "ci", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !IsAPIKey(key) || rec.Expires.Sub(rec.Created) != 24*time.Hour || rec.User != "alice" {
		t.Fatalf("key %q rec %+v", key, rec)
	}
	// Only the hash is stored.
	stored, _ := store.APIKey(rec.ID)
	if bytes.Contains(stored, []byte(strings.TrimPrefix(key, APIKeyPrefix+rec.ID+"_"))) {
		t.Fatal("the secret is in the store")
	}
	got, err := k.Verify(key)
	if err != nil || got.User != "alice" || got.Groups[0] != "artifact-workloads" {
		t.Fatalf("verify: %+v %v", got, err)
	}

	// Last used: written on first use, then at most once a minute.
	if store.writes() != 1 {
		t.Fatalf("writes after first use: %d", store.writes())
	}
	for range 50 {
		if _, err := k.Verify(key); err != nil {
			t.Fatal(err)
		}
	}
	if store.writes() != 1 {
		t.Fatalf("writes after 51 uses within a minute: %d", store.writes())
	}
	clk.Add(2 * time.Minute)
	if _, err := k.Verify(key); err != nil {
		t.Fatal(err)
	}
	list, _ := k.List("alice")
	if store.writes() != 2 || len(list) != 1 || !list[0].LastUsed.Equal(clk.Now().UTC().Truncate(time.Second)) {
		t.Fatalf("writes %d, list %+v", store.writes(), list)
	}

	// Wrong secrets and shapes.
	for _, bad := range []string{otherLast(key), key + "x", key[:len(key)-1], "ocik_", "ocik_zzzzzzzzzzzzzzzz_" + strings.Repeat("a", 43), ""} {
		if _, err := k.Verify(bad); !errors.Is(err, ErrAPIKeyInvalid) {
			t.Errorf("verify %q: %v", bad, err)
		}
	}

	// Expiry.
	clk.Add(24 * time.Hour)
	if _, err := k.Verify(key); !errors.Is(err, ErrAPIKeyInvalid) {
		t.Fatalf("expired key: %v", err)
	}

	// Lifetimes.
	if _, _, err := k.Create("alice", nil, "", 49*time.Hour); !errors.Is(err, ErrAPIKeyRequest) {
		t.Fatalf("beyond max ttl: %v", err)
	}
	if _, _, err := k.Create("alice", nil, "bad\nlabel", 0); !errors.Is(err, ErrAPIKeyRequest) {
		t.Fatalf("control characters in label: %v", err)
	}
}

func TestAPIKeyRevoke(t *testing.T) {
	k := &APIKeys{Store: newMemKeys()}
	key, rec, err := k.Create("alice", nil, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Revoke("bob", rec.ID); !errors.Is(err, ErrAPIKeyNotFound) {
		t.Fatalf("bob revoked alice's key: %v", err)
	}
	if _, err := k.Verify(key); err != nil {
		t.Fatal(err)
	}
	if err := k.Revoke("alice", rec.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Verify(key); !errors.Is(err, ErrAPIKeyInvalid) {
		t.Fatalf("revoked key: %v", err)
	}
	if err := k.Revoke("alice", "../../etc"); !errors.Is(err, ErrAPIKeyNotFound) {
		t.Fatalf("malformed id: %v", err)
	}
}

// TestAPIKeyPolicy: the example policy, with groups that came
// from the identity provider through a key, decides exactly as for
// htpasswd groups; a revoked or expired key is refused on the next
// request.
func TestAPIKeyPolicy(t *testing.T) {
	clk := newClock()
	keys := &APIKeys{Store: newMemKeys(), Now: clk.Now}
	p, err := NewPolicy(PolicyConfig{
		ExternalGroups: true,
		Repositories: map[string]RepositoryPolicy{
			"**":          {Anonymous: []string{ActionRead}},
			"blumeops/**": {Anonymous: []string{ActionRead}, Policies: []Grant{{Groups: []string{"artifact-workloads"}, Actions: []string{ActionRead, ActionCreate}}}},
		},
		Admin: &AdminPolicy{Groups: []string{"admins"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewAuthorizer(Options{Policy: p, APIKeys: keys})
	if err != nil {
		t.Fatal(err)
	}
	ciKey, ciRec, _ := keys.Create("ci-bot", []string{"artifact-workloads"}, "ci", 0)
	adminKey, _, _ := keys.Create("root", []string{"admins"}, "", 0)
	devKey, _, _ := keys.Create("dev", []string{"devs"}, "", 0)

	push := func(repo string) Need {
		return Need{Scopes: []Scope{RepositoryScope(repo, ScopePull, ScopePush)}}
	}
	move := push("blumeops/app")
	move.TagMove = true
	del := Need{Scopes: []Scope{RepositoryScope("blumeops/app", ScopeDelete)}}
	pull := Need{Scopes: []Scope{RepositoryScope("blumeops/app", ScopePull)}}
	for _, tc := range []struct {
		name, user, pass string
		need             Need
		status           int // 0: allowed
	}{
		{"ci pushes a new tag", "ci-bot", ciKey, push("blumeops/app"), 0},
		{"ci with any user name", "whoever", ciKey, push("blumeops/app"), 0},
		{"ci moves a tag", "ci-bot", ciKey, move, http.StatusForbidden},
		{"ci deletes", "ci-bot", ciKey, del, http.StatusForbidden},
		{"ci outside its namespace", "ci-bot", ciKey, push("other/app"), http.StatusForbidden},
		{"admin moves a tag", "root", adminKey, move, 0},
		{"admin deletes", "root", adminKey, del, 0},
		{"dev reads", "dev", devKey, pull, 0},
		{"dev pushes", "dev", devKey, push("blumeops/app"), http.StatusForbidden},
		{"anonymous reads", "", "", pull, 0},
		{"anonymous pushes", "", "", push("blumeops/app"), http.StatusUnauthorized},
		{"wrong key", "ci-bot", otherLast(ciKey), pull, http.StatusUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPut, "/v2/blumeops/app/manifests/v1", nil)
			if tc.pass != "" {
				r.SetBasicAuth(tc.user, tc.pass)
			}
			r, err := a.Authorize(r, tc.need)
			var d *Denial
			switch {
			case tc.status == 0 && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.status != 0 && (!errors.As(err, &d) || d.Status != tc.status):
				t.Fatalf("want %d, got %v", tc.status, err)
			}
			if tc.status == 0 && tc.pass != "" {
				if id, _ := IdentityOf(r); id.Method != MethodAPIKey {
					t.Fatalf("identity %+v", id)
				}
			}
		})
	}

	// Revoked: refused at once.
	if err := keys.Revoke("ci-bot", ciRec.ID); err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodGet, "/v2/blumeops/app/manifests/v1", nil)
	r.SetBasicAuth("ci-bot", ciKey)
	var d *Denial
	if _, err := a.Authorize(r, pull); !errors.As(err, &d) || d.Status != http.StatusUnauthorized {
		t.Fatalf("revoked key: %v", err)
	}
	// Expired: refused at once.
	clk.Add(DefaultAPIKeyTTL)
	r.SetBasicAuth("root", adminKey)
	if _, err := a.Authorize(r, pull); !errors.As(err, &d) || d.Status != http.StatusUnauthorized {
		t.Fatalf("expired key: %v", err)
	}
}

// api drives the key API as a signed-in browser (or a script with its
// cookie and CSRF token).
func (s *site) api(t *testing.T, c *http.Client, method, path, csrf string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, s.URL+AuthPath+path, rd)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	if csrf != "" {
		req.Header.Set("X-CSRF-Token", csrf)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func TestAPIKeyHTTP(t *testing.T) {
	s := newSite(t, "alice", "artifact-workloads")
	c := browser(t)
	if status, _ := s.signIn(t, c); status != http.StatusOK {
		t.Fatal(status)
	}
	_, sess := s.session(t, c)
	csrf := sess["csrf_token"].(string)

	// Not signed in, no CSRF token, wrong CSRF token: refused.
	if status, _ := s.api(t, browser(t), "GET", "apikeys", "", nil); status != http.StatusUnauthorized {
		t.Fatalf("list without session: %d", status)
	}
	if status, _ := s.api(t, c, "POST", "apikeys", "", map[string]any{"label": "x"}); status != http.StatusForbidden {
		t.Fatalf("create without csrf: %d", status)
	}
	if status, _ := s.api(t, c, "POST", "apikeys", csrf+"x", map[string]any{"label": "x"}); status != http.StatusForbidden {
		t.Fatalf("create with a wrong csrf: %d", status)
	}
	if status, _ := s.api(t, c, "POST", "apikeys", csrf, map[string]any{"ttl_days": 10000}); status != http.StatusBadRequest {
		t.Fatalf("create beyond max ttl: %d", status)
	}

	status, b := s.api(t, c, "POST", "apikeys", csrf, map[string]any{"label": "blumeops ci", "ttl_days": 30})
	var created struct {
		ID, Key, Label, User string
		Groups               []string
		Created, Expires     time.Time
	}
	if err := json.Unmarshal(b, &created); err != nil || status != http.StatusCreated || !IsAPIKey(created.Key) ||
		created.User != "alice" || created.Groups[0] != "artifact-workloads" || created.Expires.Sub(created.Created) != 30*24*time.Hour {
		t.Fatalf("create: %d %s", status, b)
	}
	status, b = s.api(t, c, "GET", "apikeys", "", nil)
	if status != http.StatusOK || !strings.Contains(string(b), created.ID) || strings.Contains(string(b), created.Key) ||
		strings.Contains(string(b), `"hash"`) {
		t.Fatalf("list: %d %s", status, b)
	}

	// A wrong Origin is refused even with the token.
	req, _ := http.NewRequest("DELETE", s.URL+AuthPath+"apikeys/"+created.ID, nil)
	req.Header.Set("X-CSRF-Token", csrf)
	req.Header.Set("Origin", "https://evil.example")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-origin revoke: %d", resp.StatusCode)
	}

	// Bob cannot revoke alice's key.
	s.p.SetUser("bob")
	bob := browser(t)
	if status, _ := s.signIn(t, bob); status != http.StatusOK {
		t.Fatal(status)
	}
	_, bs := s.session(t, bob)
	if status, _ := s.api(t, bob, "DELETE", "apikeys/"+created.ID, bs["csrf_token"].(string), nil); status != http.StatusNotFound {
		t.Fatalf("bob revoking alice's key: %d", status)
	}
	if status, b := s.api(t, bob, "GET", "apikeys", "", nil); status != http.StatusOK || strings.Contains(string(b), created.ID) {
		t.Fatalf("bob's list: %s", b)
	}

	if _, err := s.keys.Verify(created.Key); err != nil {
		t.Fatal(err)
	}
	if status, _ := s.api(t, c, "DELETE", "apikeys/"+created.ID, csrf, nil); status != http.StatusNoContent {
		t.Fatalf("revoke: %d", status)
	}
	if _, err := s.keys.Verify(created.Key); !errors.Is(err, ErrAPIKeyInvalid) {
		t.Fatalf("revoked key verified: %v", err)
	}
}

// TestAPIKeyPage: the page's forms make and revoke keys; the key is
// shown once.
func TestAPIKeyPage(t *testing.T) {
	s := newSite(t, "alice", "artifact-workloads")
	c := browser(t)
	if status, body := s.signIn(t, c); status != http.StatusOK || !strings.Contains(body, "No keys yet") {
		t.Fatalf("%d %s", status, body)
	}
	_, sess := s.session(t, c)
	csrf := sess["csrf_token"].(string)
	if resp, err := c.PostForm(s.URL+AuthPath+"apikeys", url.Values{"label": {"<script>"}}); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("form without csrf: %v %v", resp.StatusCode, err)
	}
	resp, err := c.PostForm(s.URL+AuthPath+"apikeys", url.Values{"csrf": {csrf}, "label": {"<script>x</script>"}, "ttl_days": {"7"}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	page := string(b)
	i := strings.Index(page, `<code class="key" id="new-key">`)
	if resp.StatusCode != http.StatusOK || i < 0 || strings.Contains(page, "<script>x") || !strings.Contains(page, "&lt;script&gt;") {
		t.Fatalf("page after create: %d\n%s", resp.StatusCode, page)
	}
	key := page[i+len(`<code class="key" id="new-key">`):]
	key = key[:strings.Index(key, "<")]
	rec, err := s.keys.Verify(key)
	if err != nil {
		t.Fatalf("key from the page %q: %v", key, err)
	}
	// Shown once: the page does not show it again.
	resp, err = c.Get(s.URL + AuthPath)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(b), key) || !strings.Contains(string(b), rec.ID) {
		t.Fatalf("page later:\n%s", b)
	}
	resp, err = c.PostForm(s.URL+AuthPath+"apikeys/"+rec.ID+"/revoke", url.Values{"csrf": {csrf}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || strings.Contains(string(b), rec.ID) {
		t.Fatalf("page after revoke: %d\n%s", resp.StatusCode, b)
	}
	if _, err := s.keys.Verify(key); err == nil {
		t.Fatal("revoked key still verifies")
	}
}

// otherLast is key with another last character.
func otherLast(key string) string {
	if strings.HasSuffix(key, "A") {
		return key[:len(key)-1] + "B"
	}
	return key[:len(key)-1] + "A"
}

// TestAPIKeyLimitPerUser: a signed-in user cannot fill the store with
// keys (every page load lists them all); other users are not affected.
func TestAPIKeyLimitPerUser(t *testing.T) {
	k := &APIKeys{Store: newMemKeys()}
	for i := range MaxAPIKeysPerUser {
		if _, _, err := k.Create("alice", nil, "", 0); err != nil {
			t.Fatalf("key %d: %v", i, err)
		}
	}
	if _, _, err := k.Create("alice", nil, "", 0); !errors.Is(err, ErrAPIKeyRequest) {
		t.Fatalf("key %d: %v", MaxAPIKeysPerUser+1, err)
	}
	if _, _, err := k.Create("bob", nil, "", 0); err != nil {
		t.Fatalf("another user: %v", err)
	}
	list, _ := k.List("alice")
	if err := k.Revoke("alice", list[0].ID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := k.Create("alice", nil, "", 0); err != nil {
		t.Fatalf("after a revoke: %v", err)
	}
}

// TestAPIKeyExpiredPruned: an expired key stays listed (and counted) for
// APIKeyKeepExpired, then leaves the listing and the store.
func TestAPIKeyExpiredPruned(t *testing.T) {
	clk := newClock()
	store := newMemKeys()
	k := &APIKeys{Store: store, Now: clk.Now}
	_, old, err := k.Create("alice", nil, "old", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	clk.Add(24*time.Hour + APIKeyKeepExpired - time.Second) // records keep whole seconds
	_, fresh, err := k.Create("alice", nil, "fresh", 0)
	if err != nil {
		t.Fatal(err)
	}
	if list, _ := k.List("alice"); len(list) != 2 {
		t.Fatalf("just inside the keeping time: %d keys listed, want 2", len(list))
	}
	clk.Add(2 * time.Second)
	list, err := k.List("alice")
	if err != nil || len(list) != 1 || list[0].ID != fresh.ID {
		t.Fatalf("after the keeping time: %+v %v", list, err)
	}
	if _, err := store.APIKey(old.ID); !errors.Is(err, ErrAPIKeyNotFound) {
		t.Fatalf("the old key is still stored: %v", err)
	}
}

// brokenKeys is a key store that cannot be read.
type brokenKeys struct{ memKeys }

func (*brokenKeys) APIKey(string) ([]byte, error) { return nil, errors.New("disk on fire") }

// TestAuthorizeServerFaults: when the server cannot check credentials
// (the key store fails, the workload issuer cannot be discovered), the
// caller is not told its credentials are wrong: Authorize answers an
// error that is no *Denial, which the registry turns into a 500.
func TestAuthorizeServerFaults(t *testing.T) {
	down := oidctest.New(t, "unused")
	down.Close()
	pol, err := NewPolicy(PolicyConfig{Repositories: map[string]RepositoryPolicy{"**": {Default: []string{ActionRead}}}})
	if err != nil {
		t.Fatal(err)
	}
	keys := &APIKeys{Store: newMemKeys()}
	key, _, err := keys.Create("alice", nil, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	keys.Store = &brokenKeys{}
	a, err := NewAuthorizer(Options{Policy: pol, APIKeys: keys, Workload: &WorkloadVerifier{Issuer: down.Issuer(), Audience: "r"}})
	if err != nil {
		t.Fatal(err)
	}
	fake := oidctest.SignWith(oidctest.Key(), map[string]any{"iss": down.Issuer(), "aud": "r", "sub": "x", "exp": time.Now().Add(time.Hour).Unix()})
	pull := Need{Scopes: []Scope{RepositoryScope("app", ScopePull)}}
	for name, auth := range map[string]func(*http.Request){
		"api key":        func(r *http.Request) { r.SetBasicAuth("alice", key) },
		"workload token": func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+fake) },
	} {
		r := httptest.NewRequest(http.MethodGet, "/v2/app/manifests/v1", nil)
		auth(r)
		_, err := a.Authorize(r, pull)
		var d *Denial
		if err == nil || errors.As(err, &d) {
			t.Errorf("%s: want a server error, got %v", name, err)
		}
	}
	// A wrong key is still the caller's mistake.
	r := httptest.NewRequest(http.MethodGet, "/v2/app/manifests/v1", nil)
	r.SetBasicAuth("alice", "ocik_zzzz")
	var d *Denial
	if _, err := a.Authorize(r, pull); !errors.As(err, &d) || d.Status != http.StatusUnauthorized {
		t.Errorf("malformed key: %v", err)
	}
}
