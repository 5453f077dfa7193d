package caddymodule

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/authscope/authtest"
	"github.com/caddy-oci/caddy-oci/authscope/ldapauth/slapdtest"
)

// basicFrom is a request for the registry from client addr with Basic
// credentials.
func basicFrom(addr, user, pw string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/v2/app/manifests/v1", nil)
	r.RemoteAddr = addr + ":40000"
	r.SetBasicAuth(user, pw)
	return r
}

var pullApp = authscope.Need{Scopes: []authscope.Scope{authscope.RepositoryScope("app", "pull")}}

// guessFlood sends n wrong passwords for user from addr at once and
// counts the answers by status.
func guessFlood(t *testing.T, az *authscope.Authorizer, n int, addr, user string) map[int]int {
	t.Helper()
	var mu sync.Mutex
	got := map[int]int{}
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := az.Authorize(basicFrom(addr, user, "guess"), pullApp)
			var d *authscope.Denial
			if !errors.As(err, &d) {
				t.Errorf("wrong password: %v", err)
				return
			}
			if d.Status == http.StatusTooManyRequests && d.RetryAfter < time.Second {
				t.Errorf("429 without Retry-After")
			}
			mu.Lock()
			got[d.Status]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	return got
}

// TestLoginLimitHtpasswd: by default, a client that sends many wrong
// passwords at once gets only ten of them checked; the rest, and then
// even the right password from that address, are answered 429 unchecked;
// the user still logs in from elsewhere.
func TestLoginLimitHtpasswd(t *testing.T) {
	dir := t.TempDir()
	hash, _ := bcrypt.GenerateFromPassword([]byte("ci-pw"), bcrypt.MinCost)
	htp := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(htp, []byte("ci:"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := &Auth{Htpasswd: htp, FailDelay: caddy.Duration(50 * time.Millisecond),
		Repositories: map[string]authscope.RepositoryPolicy{"**": {Default: []string{"read"}}}}
	rt, err := a.provision(nil, nil, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	got := guessFlood(t, rt.authorizer, 40, "192.0.2.7", "ci")
	if got[http.StatusUnauthorized] != authscope.DefaultGuessesPerClient || got[http.StatusTooManyRequests] != 40-authscope.DefaultGuessesPerClient {
		t.Fatalf("40 guesses at once were answered %v; want %d checked (401), the rest 429", got, authscope.DefaultGuessesPerClient)
	}
	_, err = rt.authorizer.Authorize(basicFrom("192.0.2.7", "ci", "ci-pw"), pullApp)
	if d := (*authscope.Denial)(nil); !errors.As(err, &d) || d.Status != http.StatusTooManyRequests {
		t.Fatalf("right password from the guessing address: %v, want 429 (not checked)", err)
	}
	if _, err := rt.authorizer.Authorize(basicFrom("198.51.100.3", "ci", "ci-pw"), pullApp); err != nil {
		t.Fatalf("right password from another address: %v", err)
	}
}

// TestLoginLimitLDAP: a flood of guesses never reaches the directory past
// the bound (the directory's own lockout policy would lock the user out).
func TestLoginLimitLDAP(t *testing.T) {
	s := slapdtest.Start(t)
	s.AddUser(t, "alice", "alice-pw")
	a := &Auth{FailDelay: caddy.Duration(10 * time.Millisecond), LoginLimit: &LoginLimit{PerClient: 4, PerAccount: -1},
		LDAP: &LDAP{URL: s.TLSURL, CAFile: s.CAFile, BindDN: slapdtest.ReaderDN, BindPassword: slapdtest.ReaderPassword,
			BaseDN: slapdtest.BaseDN, CacheTTL: -1},
		Repositories: map[string]authscope.RepositoryPolicy{"**": {Default: []string{"read"}}}}
	if err := a.validate(); err != nil {
		t.Fatal(err)
	}
	rt, err := a.provision(nil, nil, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer rt.close()
	got := guessFlood(t, rt.authorizer, 12, "192.0.2.9", "alice")
	if got[http.StatusUnauthorized] != 4 || got[http.StatusTooManyRequests] != 8 {
		t.Fatalf("12 guesses were answered %v; want 4 checked", got)
	}
	_, err = rt.authorizer.Authorize(basicFrom("192.0.2.9", "alice", "alice-pw"), pullApp)
	if d := (*authscope.Denial)(nil); !errors.As(err, &d) || d.Status != http.StatusTooManyRequests {
		t.Fatalf("right password from the guessing address: %v, want 429 (not sent to the directory)", err)
	}
	if _, err := rt.authorizer.Authorize(basicFrom("198.51.100.3", "alice", "alice-pw"), pullApp); err != nil {
		t.Fatalf("alice from another address: %v", err)
	}
}

// TestLoginLimitLDAPNameSpellings: a directory matches user names
// ignoring case and insignificant spaces (" alice ", "alice  " are alice
// to it), so the account bound counts them as one: before, each
// spelling was an account of its own, and an attacker spread over
// addresses had per_account guesses at alice's password for every
// spelling.
func TestLoginLimitLDAPNameSpellings(t *testing.T) {
	s := slapdtest.Start(t)
	s.AddUser(t, "alice", "alice-pw")
	a := &Auth{FailDelay: caddy.Duration(time.Millisecond), LoginLimit: &LoginLimit{PerClient: 100, PerAccount: 3},
		LDAP: &LDAP{URL: s.TLSURL, CAFile: s.CAFile, BindDN: slapdtest.ReaderDN, BindPassword: slapdtest.ReaderPassword,
			BaseDN: slapdtest.BaseDN, CacheTTL: -1},
		Repositories: map[string]authscope.RepositoryPolicy{"**": {Default: []string{"read"}}}}
	if err := a.validate(); err != nil {
		t.Fatal(err)
	}
	rt, err := a.provision(nil, nil, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer rt.close()
	// The directory's side of it: a spelling with spaces logs in as alice.
	if _, err := rt.authorizer.Authorize(basicFrom("198.51.100.50", " alice ", "alice-pw"), pullApp); err != nil {
		t.Fatalf("\" alice \" with alice's password: %v", err)
	}
	for i := range 3 {
		got := guessFlood(t, rt.authorizer, 1, "192.0.2."+string(rune('1'+i)), "alice")
		if got[http.StatusUnauthorized] != 1 {
			t.Fatalf("guess %d at alice: %v", i, got)
		}
	}
	for i, name := range []string{" alice", "alice ", "ALICE  ", "  Alice"} {
		got := guessFlood(t, rt.authorizer, 1, "203.0.113."+string(rune('1'+i)), name)
		if got[http.StatusTooManyRequests] != 1 {
			t.Errorf("a guess at %q, after alice's bound was used up: %v, want 429", name, got)
		}
	}
}

// TestLoginLimitTokenProxy: the token proxy forwards only the bound of
// guesses the token service refuses, then answers 429 itself.
func TestLoginLimitTokenProxy(t *testing.T) {
	is := authtest.New(map[string]string{"ci": "ci-pw"}, func(_, _, _ string, asked []string) []string { return asked })
	tokens := is.Start(t)
	certs := filepath.Join(t.TempDir(), "token.pem")
	if err := os.WriteFile(certs, is.PublicKeyPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	a := &Auth{Token: &TokenAuth{Realm: tokens.URL + "/auth", Service: authtest.Service, Issuer: authtest.IssuerName,
		TrustedCerts: []string{certs}, Proxy: true}}
	rt, err := a.provision(nil, nil, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	got := map[int]int{}
	var wg sync.WaitGroup
	for range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := httptest.NewRequest(http.MethodGet, authscope.TokenPath+"?scope=repository:app:pull", nil)
			r.RemoteAddr = "192.0.2.7:40000"
			r.SetBasicAuth("ci", "guess")
			w := httptest.NewRecorder()
			rt.serve(w, r)
			if w.Code == http.StatusTooManyRequests && w.Header().Get("Retry-After") == "" {
				t.Error("429 without Retry-After")
			}
			mu.Lock()
			got[w.Code]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if n := len(is.Requests()); n != authscope.DefaultGuessesPerClient || got[http.StatusTooManyRequests] != 30-n {
		t.Fatalf("%d of 30 guesses reached the token service, answers %v; want %d", n, got, authscope.DefaultGuessesPerClient)
	}
}

func TestLoginLimitCaddyfile(t *testing.T) {
	for in, want := range map[string]LoginLimit{
		"login_limit off": {PerClient: -1, PerAccount: -1},
		"login_limit {\n per_client 5\n per_account off\n window 10m\n }": {PerClient: 5, PerAccount: -1, Window: caddy.Duration(10 * time.Minute)},
		"login_limit {\n per_account 100\n }":                             {PerAccount: 100},
	} {
		d := caddyfile.NewTestDispenser("auth {\n htpasswd /x\n " + in + "\n}")
		d.Next()
		a, err := unmarshalAuth(d)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if a.LoginLimit == nil || *a.LoginLimit != want {
			t.Errorf("%s: parsed %+v, want %+v", in, a.LoginLimit, want)
		}
	}
	for _, bad := range []string{
		"login_limit on", "login_limit off now", "login_limit {\n per_client 0\n }", "login_limit {\n per_client -3\n }",
		"login_limit {\n window 0s\n }", "login_limit {\n per_ip 3\n }", "login_limit {\n per_client\n }",
	} {
		d := caddyfile.NewTestDispenser("auth {\n htpasswd /x\n " + bad + "\n}")
		d.Next()
		if _, err := unmarshalAuth(d); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if err := (&Auth{Htpasswd: "/x", LoginLimit: &LoginLimit{PerClient: -2}}).validate(); err == nil {
		t.Error("per_client -2 accepted in JSON")
	}
	// oci_front's token block takes it too.
	d := caddyfile.NewTestDispenser("token {\n realm https://auth.example/token\n service r\n proxy\n login_limit {\n per_client 3\n }\n}")
	d.Next()
	ft, err := unmarshalFrontToken(d)
	if err != nil || ft.LoginLimit == nil || ft.LoginLimit.PerClient != 3 {
		t.Fatalf("front token: %+v %v", ft, err)
	}
}
