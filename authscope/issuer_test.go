package authscope

// A token service for tests that signs exactly as docker_auth does: RS256,
// kid = RFC 7638 thumbprint, no x5c, nbf = iat-10s, aud = service, and
// actions the user may not have silently dropped. It answers GET and the
// OAuth2 POST form, with Basic credentials or anonymously, and records the
// scopes it was asked for.

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const (
	testIssuerName = "Acme auth server"
	testService    = "registry.test"
)

var (
	testRSAOnce sync.Once
	testRSAKey  *rsa.PrivateKey
)

// testKey is one RSA key for the whole package run (generation is slow).
func testKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	testRSAOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		testRSAKey = k
	})
	return testRSAKey
}

// acl decides the actions a user (empty: anonymous) gets on a name.
type acl func(user, typ, name string, asked []string) []string

type testIssuer struct {
	t     testing.TB
	key   *rsa.PrivateKey
	users map[string]string // user -> password
	acl   acl
	now   func() time.Time

	mu    sync.Mutex
	asked []string // every scope requested, as received
}

func newTestIssuer(t testing.TB, users map[string]string, a acl) *testIssuer {
	return &testIssuer{t: t, key: testKey(t), users: users, acl: a, now: time.Now}
}

// keySet trusts the issuer's key as a PEM public key bundle would.
func (is *testIssuer) keySet() *KeySet {
	ks := NewKeySet()
	if err := ks.add(&is.key.PublicKey, ""); err != nil {
		is.t.Fatal(err)
	}
	return ks
}

func (is *testIssuer) verifier() *TokenVerifier {
	return &TokenVerifier{Keys: is.keySet(), Issuer: testIssuerName, Service: testService}
}

// sign makes a docker_auth token. edit may change the token's claims,
// header and method; it returns the signing key, or nil for the issuer's.
func (is *testIssuer) sign(sub string, access []AccessEntry, edit func(*jwt.Token) any) string {
	is.t.Helper()
	now := is.now()
	claims := jwt.MapClaims{
		"iss":    testIssuerName,
		"sub":    sub,
		"aud":    testService,
		"exp":    now.Add(5 * time.Minute).Unix(),
		"nbf":    now.Add(-10 * time.Second).Unix(),
		"iat":    now.Unix(),
		"jti":    "1234",
		"access": access,
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
	kid, err := JWKThumbprint(&is.key.PublicKey)
	if err != nil {
		is.t.Fatal(err)
	}
	tok.Header["kid"] = kid
	var key any = is.key
	if edit != nil {
		if k := edit(tok); k != nil {
			key = k
		}
	}
	s, err := tok.SignedString(key)
	if err != nil {
		is.t.Fatal(err)
	}
	return s
}

func (is *testIssuer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var q url.Values
	switch r.Method {
	case http.MethodGet:
		q = r.URL.Query()
	case http.MethodPost:
		if err := r.ParseForm(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		q = r.PostForm
	default:
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	user := ""
	if u, p, ok := r.BasicAuth(); ok {
		if want, known := is.users[u]; !known || want != p {
			w.Header().Set("WWW-Authenticate", `Basic realm="Acme auth"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		user = u
	} else if r.Method == http.MethodPost && q.Get("grant_type") == "password" {
		if want, known := is.users[q.Get("username")]; !known || want != q.Get("password") {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		user = q.Get("username")
	}
	var access []AccessEntry
	for _, v := range q["scope"] {
		for _, f := range strings.Fields(v) {
			is.mu.Lock()
			is.asked = append(is.asked, f)
			is.mu.Unlock()
			s, err := ParseScope(f)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			granted := is.acl(user, s.Type, s.Name, s.Actions)
			access = append(access, AccessEntry{Type: s.Type, Name: s.Name, Actions: granted})
		}
	}
	tok := is.sign(user, access, nil)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{"token": tok, "access_token": tok})
}

func (is *testIssuer) scopesAsked() []string {
	is.mu.Lock()
	defer is.mu.Unlock()
	return slices.Clone(is.asked)
}

func (is *testIssuer) server(t testing.TB) *httptest.Server {
	srv := httptest.NewServer(is)
	t.Cleanup(srv.Close)
	return srv
}

// grantIf grants only the asked actions listed in allowed (docker_auth
// drops the others silently).
func grantIf(asked []string, allowed ...string) []string {
	out := []string{}
	for _, a := range asked {
		if slices.Contains(allowed, a) {
			out = append(out, a)
		}
	}
	return out
}
