package caddymodule

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/go-ldap/ldap/v3"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/authscope/ldapauth/slapdtest"
	"github.com/caddy-oci/caddy-oci/authscope/oidctest"
	"github.com/caddy-oci/caddy-oci/cache"
)

func TestOIDCCaddyfile(t *testing.T) {
	d := caddyfile.NewTestDispenser(`auth {
		oidc {
			issuer https://id.example/application/o/registry/
			client_id registry
			client_secret_file /run/secrets/oidc
			scopes profile groups
			external_url https://registry.example
			username_claim email
			groups_claim roles
			session_key_file /run/secrets/session
			session_ttl 8h
		}
		api_keys {
			default_ttl 720h
			max_ttl 2160h
			groups_max_age 72h
		}
		workload {
			issuer https://forge.example
			audience registry.example
			username_claim sub
			groups_claim repository_owner
		}
		access blumeops/** {
			group artifact-workloads read create
		}
	}`)
	d.Next()
	a, err := unmarshalAuth(d)
	if err != nil {
		t.Fatal(err)
	}
	o := a.OIDC
	if o == nil || o.ClientSecretFile != "/run/secrets/oidc" || len(o.Scopes) != 2 || o.GroupsClaim != "roles" ||
		time.Duration(o.SessionTTL) != 8*time.Hour || time.Duration(a.APIKeys.MaxTTL) != 2160*time.Hour ||
		time.Duration(a.APIKeys.GroupsMaxAge) != 72*time.Hour ||
		a.Workload == nil || a.Workload.GroupsClaim != "repository_owner" {
		t.Fatalf("parsed %+v %+v %+v", o, a.APIKeys, a.Workload)
	}
	if err := a.validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{
		"auth {\n oidc {\n issuer\n }\n}",
		"auth {\n oidc {\n nope x\n }\n}",
		"auth {\n oidc {\n session_ttl soon\n }\n}",
		"auth {\n api_keys {\n max_ttl forever\n }\n}",
		"auth {\n workload {\n audience a b\n }\n}",
	} {
		d := caddyfile.NewTestDispenser(bad)
		d.Next()
		if _, err := unmarshalAuth(d); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
	for name, a := range map[string]*Auth{
		"no external url":         {Repositories: anyRead(), OIDC: &OIDC{Issuer: "https://id", ClientID: "c"}},
		"http external url":       {Repositories: anyRead(), OIDC: &OIDC{Issuer: "https://id", ClientID: "c", ExternalURL: "http://registry.example"}},
		"two secrets":             {Repositories: anyRead(), OIDC: &OIDC{Issuer: "https://id", ClientID: "c", ExternalURL: "https://r", ClientSecret: "a", ClientSecretFile: "b"}},
		"api keys, no oidc":       {Repositories: anyRead(), APIKeys: &APIKeysConfig{}},
		"negative groups_max_age": {Repositories: anyRead(), OIDC: &OIDC{Issuer: "https://id", ClientID: "c", ExternalURL: "https://r"}, APIKeys: &APIKeysConfig{GroupsMaxAge: -1}},
		"default beyond max":      {Repositories: anyRead(), OIDC: &OIDC{Issuer: "https://id", ClientID: "c", ExternalURL: "https://r"}, APIKeys: &APIKeysConfig{DefaultTTL: 10, MaxTTL: 5}},
		"workload without aud":    {Repositories: anyRead(), Workload: &Workload{Issuer: "https://forge"}},
		// The sign-in's ID tokens would pass as workload tokens.
		"workload aud is the client": {Repositories: anyRead(), OIDC: &OIDC{Issuer: "https://id/", ClientID: "registry", ExternalURL: "https://r"},
			Workload: &Workload{Issuer: "https://id", Audience: "registry"}},
		// Tokens of the token service would be taken for workload tokens.
		"workload issuer is the token service's": {Repositories: anyRead(), Workload: &Workload{Issuer: "https://auth", Audience: "r"},
			Token: &TokenAuth{Realm: "https://auth/token", Service: "r", Issuer: "https://auth", JWKS: []string{"k"}}},
	} {
		if err := a.validate(); err == nil {
			t.Errorf("%s: valid", name)
		}
	}
}

func anyRead() map[string]authscope.RepositoryPolicy {
	return map[string]authscope.RepositoryPolicy{"**": {Anonymous: []string{"read"}}}
}

// TestOIDCThroughHandler wires the auth block the way the handler does,
// with a real store: sign in at an in-test provider, make a key through
// the JSON API, push with it as a member of the provider's
// artifact-workloads group, and find it refused once revoked. The session
// key is made once and kept in the store.
func TestOIDCThroughHandler(t *testing.T) {
	p := oidctest.New(t, "alice", "artifact-workloads")
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte(oidctest.ClientSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := cache.Open(cache.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var rt *authRuntime
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !rt.serve(w, r) {
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	a := &Auth{
		Repositories: map[string]authscope.RepositoryPolicy{
			"**":          {Anonymous: []string{"read"}},
			"blumeops/**": {Anonymous: []string{"read"}, Policies: []authscope.Grant{{Groups: []string{"artifact-workloads"}, Actions: []string{"read", "create"}}}},
		},
		Admin: &authscope.AdminPolicy{Groups: []string{"admins"}},
		OIDC: &OIDC{
			Issuer: p.Issuer(), ClientID: oidctest.ClientID, ClientSecretFile: secretFile,
			ExternalURL: srv.URL,
		},
	}
	if err := a.validate(); err != nil {
		t.Fatal(err)
	}
	opened := 0
	rt, err = a.provision(nil, func() (authRecords, error) { opened++; return st, nil }, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if opened != 0 || p.Discoveries != 0 {
		t.Fatalf("provisioning opened the store %d times and discovered the provider %d times", opened, p.Discoveries)
	}

	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	resp, err := c.Get(srv.URL + "/_oci/auth")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Request.URL.Path != "/_oci/auth/" || !strings.Contains(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("/_oci/auth: %d at %s", resp.StatusCode, resp.Request.URL)
	}
	resp, err = c.Get(srv.URL + "/_oci/auth/login")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "alice") {
		t.Fatalf("sign-in: %d %s", resp.StatusCode, body)
	}
	created, csrf := createKeyInSession(t, c, srv.URL)
	stored, err := st.APIKey(created.ID)
	if err != nil || bytes.Contains(stored, []byte(created.Key)) {
		t.Fatalf("stored record %s: %v", stored, err)
	}

	authorize := func(key string, tagMove bool) error {
		r := httptest.NewRequest(http.MethodPut, "/v2/blumeops/app/manifests/v1", nil)
		r.SetBasicAuth("ci", key)
		_, err := rt.authorizer.Authorize(r, authscope.Need{
			Scopes: []authscope.Scope{authscope.RepositoryScope("blumeops/app", "pull", "push")}, TagMove: tagMove,
		})
		return err
	}
	if err := authorize(created.Key, false); err != nil {
		t.Fatalf("push with the key: %v", err)
	}
	var d *authscope.Denial
	if err := authorize(created.Key, true); !errors.As(err, &d) || d.Status != http.StatusForbidden {
		t.Fatalf("tag move with the key: %v", err)
	}
	req, _ := http.NewRequest(http.MethodDelete, srv.URL+"/_oci/auth/apikeys/"+created.ID, nil)
	req.Header.Set("X-CSRF-Token", csrf)
	req.Header.Set("Origin", srv.URL)
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("revoke: %d", resp.StatusCode)
	}
	if err := authorize(created.Key, false); !errors.As(err, &d) || d.Status != http.StatusUnauthorized {
		t.Fatalf("revoked key: %v", err)
	}
	if secret, err := st.AuthSecret("session", authscope.SessionKeySize); err != nil || len(secret) != authscope.SessionKeySize {
		t.Fatalf("session key not in the store: %v", err)
	}

	// Signing out ends the session in the store: the cookie is refused
	// afterwards, as no session (401), not as a fault.
	u, _ := url.Parse(srv.URL + authscope.AuthPath)
	cookies := jar.Cookies(u)
	req, _ = http.NewRequest(http.MethodPost, srv.URL+"/_oci/auth/logout", strings.NewReader(url.Values{"csrf": {csrf}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", srv.URL)
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || len(cookies) != 1 {
		t.Fatalf("logout: %d, cookies before %v", resp.StatusCode, cookies)
	}
	req, _ = http.NewRequest(http.MethodGet, srv.URL+"/_oci/auth/session", nil)
	req.AddCookie(cookies[0])
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("the cookie after logout: %d", resp.StatusCode)
	}
}

func TestParseSessionKey(t *testing.T) {
	for _, s := range []string{
		strings.Repeat("ab", 32) + "\n",
		"q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=",
	} {
		if k, err := parseSessionKey(s); err != nil || len(k) != 32 {
			t.Errorf("%q: %v", s, err)
		}
	}
	for _, s := range []string{"", "abcd", strings.Repeat("ab", 31), "password123"} {
		if _, err := parseSessionKey(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

// TestAPIKeyGroupsFromLDAP: with api_keys groups_from ldap, a key's
// groups are those the directory (a real slapd) holds for its owner now,
// whatever the ID token said: taken out of a group there, the owner
// loses its rights through the key at the next request (cache_ttl off);
// deleted there, the key is refused (401); the directory down is a
// server fault, not a refusal.
func TestAPIKeyGroupsFromLDAP(t *testing.T) {
	s := slapdtest.Start(t)
	s.AddUser(t, "alice", "alice-pw")
	s.AddGroup(t, "devs", "alice")
	p := oidctest.New(t, "alice", "devs") // a provider federating the directory
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	pwFile := filepath.Join(dir, "ldap-password")
	for f, data := range map[string]string{secretFile: oidctest.ClientSecret, pwFile: slapdtest.ReaderPassword} {
		if err := os.WriteFile(f, []byte(data+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	st, err := cache.Open(cache.Options{Dir: filepath.Join(dir, "data")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var rt *authRuntime
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !rt.serve(w, r) {
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	a := &Auth{
		Repositories: map[string]authscope.RepositoryPolicy{
			"team/**": {Default: []string{"read"}, Policies: []authscope.Grant{{Groups: []string{"devs"}, Actions: []string{"read", "create"}}}},
		},
		OIDC:    &OIDC{Issuer: p.Issuer(), ClientID: oidctest.ClientID, ClientSecretFile: secretFile, ExternalURL: srv.URL},
		APIKeys: &APIKeysConfig{GroupsFrom: "ldap"},
		LDAP: &LDAP{URL: s.TLSURL, CAFile: s.CAFile, BindDN: slapdtest.ReaderDN, BindPasswordFile: pwFile,
			BaseDN: slapdtest.BaseDN, Timeout: caddy.Duration(time.Second), CacheTTL: -1},
	}
	if err := a.validate(); err != nil {
		t.Fatal(err)
	}
	rt, err = a.provision(nil, func() (authRecords, error) { return st, nil }, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer rt.close()

	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	resp, err := c.Get(srv.URL + "/_oci/auth/login")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	created, _ := createKeyInSession(t, c, srv.URL)

	status := func(need string) int {
		t.Helper()
		r := httptest.NewRequest(http.MethodPut, "/v2/team/app/manifests/v1", nil)
		r.SetBasicAuth("alice", created.Key)
		actions := []string{"pull"}
		if need == "push" {
			actions = append(actions, "push")
		}
		_, err := rt.authorizer.Authorize(r, authscope.Need{Scopes: []authscope.Scope{authscope.RepositoryScope("team/app", actions...)}})
		var d *authscope.Denial
		switch {
		case err == nil:
			return 0
		case errors.As(err, &d):
			return d.Status
		case errors.Is(err, authscope.ErrUnavailable):
			return http.StatusServiceUnavailable
		}
		t.Fatalf("authorize: %v", err)
		return -1
	}
	if st := status("push"); st != 0 {
		t.Fatalf("push as a member of the directory's devs: %d", st)
	}
	resp, err = c.Get(srv.URL + "/_oci/auth/apikeys")
	if err != nil {
		t.Fatal(err)
	}
	listing, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(listing), `"groups_from":"directory"`) || strings.Contains(string(listing), `"groups_until"`) {
		t.Fatalf("listing: %s", listing)
	}

	admin := s.Admin(t)
	mod := ldap.NewModifyRequest(slapdtest.GroupDN("devs"), nil)
	mod.Replace("member", []string{slapdtest.GroupDN("devs")}) // groupOfNames needs a member
	if err := admin.Modify(mod); err != nil {
		t.Fatal(err)
	}
	if st := status("push"); st != http.StatusForbidden {
		t.Fatalf("push after leaving devs in the directory: %d, want 403", st)
	}
	if st := status("pull"); st != 0 {
		t.Fatalf("pull by default after leaving devs: %d", st)
	}

	if err := admin.Del(ldap.NewDelRequest(slapdtest.UserDN("alice"), nil)); err != nil {
		t.Fatal(err)
	}
	if st := status("pull"); st != http.StatusUnauthorized {
		t.Fatalf("pull after the owner left the directory: %d, want 401", st)
	}

	s.Stop()
	if st := status("pull"); st != http.StatusServiceUnavailable {
		t.Fatalf("pull with the directory down: %d, want 503", st)
	}

	for _, bad := range []*Auth{
		{Repositories: anyRead(), OIDC: a.OIDC, APIKeys: &APIKeysConfig{GroupsFrom: "ldap"}},
		{Repositories: anyRead(), OIDC: a.OIDC, LDAP: a.LDAP, APIKeys: &APIKeysConfig{GroupsFrom: "directory"}},
	} {
		if err := bad.validate(); err == nil {
			t.Errorf("groups_from %q with ldap %v: valid", bad.APIKeys.GroupsFrom, bad.LDAP != nil)
		}
	}
}

// createKeyInSession makes an API key labelled ci through the key API of
// the session c is signed in to at base, as the page does (its CSRF
// token, its Origin), and returns the answer and the session's token.
func createKeyInSession(t *testing.T, c *http.Client, base string) (created struct{ ID, Key string }, csrf string) {
	t.Helper()
	resp, err := c.Get(base + "/_oci/auth/session")
	if err != nil {
		t.Fatal(err)
	}
	var sess struct {
		CSRF string `json:"csrf_token"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&sess)
	resp.Body.Close()
	req, _ := http.NewRequest(http.MethodPost, base+"/_oci/auth/apikeys", strings.NewReader(`{"label":"ci"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-CSRF-Token", sess.CSRF)
	req.Header.Set("Origin", base)
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = json.NewDecoder(resp.Body).Decode(&created)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || created.Key == "" {
		t.Fatalf("create: %d", resp.StatusCode)
	}
	return created, sess.CSRF
}
