package caddymodule

import (
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/authscope/oidctest"
)

// TestAPIKeysStayWithTheRegistry: with sign-in and API keys, another
// handler of the site (reverse_proxy) never receives a request carrying
// an API key, however the client spelled it: the key is the registry's
// credential, like its session cookie. Other credentials pass.
func TestAPIKeysStayWithTheRegistry(t *testing.T) {
	var mu sync.Mutex
	var got []string
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, strings.Join(r.Header.Values("Authorization"), " | "))
		mu.Unlock()
		_, _ = io.WriteString(w, "backend")
	}))
	t.Cleanup(backend.Close)
	p := oidctest.New(t, "alice")
	dir := t.TempDir()
	secret := filepath.Join(dir, "client-secret")
	if err := os.WriteFile(secret, []byte(oidctest.ClientSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	cfg := adaptFront(t, `{
	admin off
	log {
		level ERROR
	}
}
http://`+addr+` {
	oci_registry {
		storage `+filepath.Join(dir, "data")+`
		auth {
			access ** {
				anonymous read
			}
			oidc {
				issuer `+p.Issuer()+`
				client_id `+oidctest.ClientID+`
				client_secret_file `+secret+`
				external_url http://`+addr+`
			}
			api_keys
		}
	}
	reverse_proxy `+backend.URL+`
}`)
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCaddy(t) })

	key := authscope.APIKeyPrefix + "0123456789abcdef_" + strings.Repeat("K", 43)
	basic := func(user, pw string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pw))
	}
	send := func(path, auth string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
		req.Header.Set("Authorization", auth)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, auth := range []string{basic("alice", key), basic("alice", key+" "), "Bearer " + key, basic("x", strings.ToUpper(key))} {
		for _, path := range []string{"/app/", "/x/_oci/other", "/v2x/"} {
			if status := send(path, auth); status != http.StatusUnauthorized {
				t.Errorf("GET %s with %q: %d, want 401", path, auth, status)
			}
		}
		// Under /_oci the registry answers every path itself.
		if status := send("/_oci/other", auth); status != http.StatusNotFound {
			t.Errorf("GET /_oci/other with %q: %d, want 404", auth, status)
		}
	}
	// The key elsewhere in the request: behind a harmless first
	// Authorization, in another header, in the query.
	hidden := map[string]func(*http.Request){
		"second Authorization": func(r *http.Request) {
			r.Header.Add("Authorization", basic("bob", "bobs-app-password"))
			r.Header.Add("Authorization", basic("alice", key))
		},
		"X-Registry-Auth": func(r *http.Request) { r.Header.Set("X-Registry-Auth", key) },
		"query":           func(r *http.Request) { r.URL.RawQuery = "password=" + key },
		// Queries Go reads only in part: the parameter holding the key is
		// dropped by url.ParseQuery, but passed on as sent.
		"query, after a semicolon":   func(r *http.Request) { r.URL.RawQuery = "a=1;password=" + key },
		"query, with a bad escape":   func(r *http.Request) { r.URL.RawQuery = "password=" + key + "%zz" },
		"query, encoded, bad escape": func(r *http.Request) { r.URL.RawQuery = "password=%6Fcik_" + key[len("ocik_"):] + "%zz" },
	}
	for name, hide := range hidden {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/app/", nil)
		hide(req)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET /app/ with the key in the %s: %d, want 401", name, resp.StatusCode)
		}
	}
	mu.Lock()
	for _, a := range got {
		if strings.Contains(strings.ToLower(a), "kkkkkkkk") || strings.Contains(a, base64.StdEncoding.EncodeToString([]byte("alice:" + key))[:20]) {
			t.Errorf("the backend received Authorization %q", a)
		}
	}
	got = nil
	mu.Unlock()
	if status := send("/app/", basic("bob", "bobs-app-password")); status != http.StatusOK {
		t.Errorf("the backend's own credentials: %d", status)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0] != basic("bob", "bobs-app-password") {
		t.Errorf("the backend received %q, want its own credentials", got)
	}
}

// TestNoV1Ping: the V1 ping gets the registry's 404, not the rest of the
// site's answer (Caddy's empty 200 here), so a client whose GET /v2/
// failed reports and retries that failure instead of taking the server
// for a V1 registry; every other path outside /v2/ still reaches the
// next handler.
func TestNoV1Ping(t *testing.T) {
	addr := freeAddr(t)
	cfg := adaptFront(t, `{
	admin off
	log {
		level ERROR
	}
}
http://`+addr+` {
	oci_registry {
		storage `+filepath.Join(t.TempDir(), "data")+`
	}
}`)
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCaddy(t) })
	for _, tc := range []struct {
		path   string
		status int
		body   string
	}{
		{"/v1/_ping", http.StatusNotFound, `"code":"UNSUPPORTED"`},
		{"/v1/other", http.StatusOK, ""}, // the site's, not ours
		{"/v2/", http.StatusOK, "{}"},
	} {
		resp, err := http.Get("http://" + addr + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || !strings.Contains(string(b), tc.body) {
			t.Errorf("GET %s: %d %s, want %d with %q", tc.path, resp.StatusCode, b, tc.status, tc.body)
		}
	}
}
