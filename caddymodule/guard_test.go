package caddymodule

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"
)

// TestGuard: auth's guard passes a path of the site on only for the users
// it names, identified by the registry's own credentials, in whatever
// spelling Caddy's path matcher takes; wrong passwords there count
// against login_limit as at the registry. Anonymous callers and other
// paths are not let in / left alone.
func TestGuard(t *testing.T) {
	dir := t.TempDir()
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	htp := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(htp, []byte("alice:"+string(hash)+"\nbob:"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := caddyfile.NewTestDispenser(`auth {
		htpasswd ` + htp + `
		fail_delay 10ms
		guard /metrics alice
		access ** {
			anonymous read
		}
	}`)
	d.Next()
	a, err := unmarshalAuth(d)
	if err != nil {
		t.Fatal(err)
	}
	a.FailDelay = caddy.Duration(10 * time.Millisecond)
	if err := a.validate(); err != nil {
		t.Fatal(err)
	}
	if len(a.Guards) != 1 || a.Guards[0].Path != "/metrics" || !slices.Equal(a.Guards[0].Users, []string{"alice"}) {
		t.Fatalf("guards %+v", a.Guards)
	}
	rt, err := a.provision(nil, nil, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	try := func(path, user, pw, addr string) (passed bool, status int, challenge string) {
		r := httptest.NewRequest(http.MethodGet, path, nil)
		r.RemoteAddr = addr + ":40000"
		if user != "" {
			r.SetBasicAuth(user, pw)
		}
		w := httptest.NewRecorder()
		out := rt.guard(w, r)
		if out != nil && out.Header.Get("Authorization") != "" {
			t.Errorf("%s: credentials passed on", path)
		}
		return out != nil, w.Code, w.Header().Get("WWW-Authenticate")
	}
	for _, tt := range []struct {
		path, user, pw string
		pass           bool
		status         int
	}{
		{"/metrics", "", "", false, http.StatusUnauthorized},
		{"/METRICS", "", "", false, http.StatusUnauthorized},
		{"//metrics", "", "", false, http.StatusUnauthorized},
		{"/metrics", "bob", "pw", false, http.StatusForbidden},
		{"/metrics", "alice", "wrong", false, http.StatusUnauthorized},
		{"/metrics", "alice", "pw", true, 0},
		{"/Metrics", "alice", "pw", true, 0},
		{"/other", "", "", true, 0},
	} {
		passed, status, challenge := try(tt.path, tt.user, tt.pw, "192.0.2.1")
		if passed != tt.pass || !passed && status != tt.status {
			t.Errorf("%s as %q: passed %v, status %d; want %v, %d", tt.path, tt.user, passed, status, tt.pass, tt.status)
		}
		if status == http.StatusUnauthorized && challenge == "" {
			t.Errorf("%s as %q: 401 without a challenge", tt.path, tt.user)
		}
	}
	// login_limit: ten failures a minute per client by default.
	limited := false
	for range 15 {
		if _, status, _ := try("/metrics", "alice", "guess", "192.0.2.9"); status == http.StatusTooManyRequests {
			limited = true
		}
	}
	if !limited {
		t.Error("15 wrong passwords for a guarded path from one client: none refused by login_limit")
	}

	for _, bad := range []string{"metrics", "/v2/x", "/_oci/x", "/_OCI/auth"} {
		a := &Auth{Htpasswd: htp, Guards: []PathGuard{{Path: bad}}}
		if err := a.validate(); err == nil {
			t.Errorf("guard %q accepted", bad)
		}
	}
}
