// Package authtest is a Docker token service for tests that signs exactly
// as docker_auth does: RS256, `kid` = RFC 7638 thumbprint, no `x5c`,
// `nbf` = iat-10s, `aud` = the service, and actions the user may not have
// silently dropped. It answers GET and the OAuth2 POST form, with Basic
// credentials or anonymously, and records every scope it was asked for.
//
// It deliberately imports nothing of authscope: the thumbprint and the
// scope grammar are computed here on their own, so tests compare the
// registry against an independent implementation, and authscope's own
// tests can use it without an import cycle.
package authtest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
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

// Defaults of a new Issuer.
const (
	IssuerName = "Acme auth server"
	Service    = "registry.test"
)

var (
	keyOnce sync.Once
	key     *rsa.PrivateKey
)

// Key is one RSA key for the whole test binary: generating one is slow.
func Key() *rsa.PrivateKey {
	keyOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		key = k
	})
	return key
}

// ACL decides which of the asked actions a user (empty: anonymous) gets
// on a resource.
type ACL func(user, typ, name string, asked []string) []string

// Access is one entry of a token's `access` claim.
type Access struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

// Issuer is the token service. Its fields may be changed before the first
// request.
type Issuer struct {
	Name    string // iss
	Service string // aud
	Key     *rsa.PrivateKey
	Users   map[string]string // user -> password
	ACL     ACL
	Now     func() time.Time

	mu       sync.Mutex
	asked    []string
	requests []Request
}

// Request is what one token request carried, as the issuer received it.
type Request struct {
	Method string
	Query  url.Values // the URL's query
	Form   url.Values // a POST's form body; nil for GET
}

// New is an Issuer with the package defaults and the shared key.
func New(users map[string]string, acl ACL) *Issuer {
	return &Issuer{Name: IssuerName, Service: Service, Key: Key(), Users: users, ACL: acl, Now: time.Now}
}

// Start serves the issuer on loopback until the test ends.
func (is *Issuer) Start(t testing.TB) *httptest.Server {
	srv := httptest.NewServer(is)
	t.Cleanup(srv.Close)
	return srv
}

// PublicKeyPEM is the issuer's public key as a trusted-certs bundle holds
// it.
func (is *Issuer) PublicKeyPEM() []byte {
	der, err := x509.MarshalPKIXPublicKey(&is.Key.PublicKey)
	if err != nil {
		panic(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// KeyID is the RFC 7638 thumbprint of the issuer's key, docker_auth's kid.
func (is *Issuer) KeyID() string {
	pub := is.Key.PublicKey
	b64 := base64.RawURLEncoding
	canon := fmt.Sprintf(`{"e":"%s","kty":"RSA","n":"%s"}`,
		b64.EncodeToString(big.NewInt(int64(pub.E)).Bytes()), b64.EncodeToString(pub.N.Bytes()))
	sum := sha256.Sum256([]byte(canon))
	return b64.EncodeToString(sum[:])
}

// Sign makes a token as docker_auth would for sub with access (any value
// that marshals to the claim's JSON). edit, when given, may change the
// token's claims, header and method before signing; it returns the key to
// sign with, or nil for the issuer's.
func (is *Issuer) Sign(sub string, access any, edit func(*jwt.Token) any) (string, error) {
	now := is.Now()
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
		"iss":    is.Name,
		"sub":    sub,
		"aud":    is.Service,
		"exp":    now.Add(5 * time.Minute).Unix(),
		"nbf":    now.Add(-10 * time.Second).Unix(),
		"iat":    now.Unix(),
		"jti":    fmt.Sprint(now.UnixNano()),
		"access": access,
	})
	tok.Header["kid"] = is.KeyID()
	var k any = is.Key
	if edit != nil {
		if e := edit(tok); e != nil {
			k = e
		}
	}
	return tok.SignedString(k)
}

// ServeHTTP answers token requests: GET with query parameters, or the
// OAuth2 POST form with grant_type=password.
func (is *Issuer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
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
	is.mu.Lock()
	is.requests = append(is.requests, Request{Method: r.Method, Query: r.URL.Query(), Form: r.PostForm})
	is.mu.Unlock()
	user := ""
	if u, p, ok := r.BasicAuth(); ok {
		if want, known := is.Users[u]; !known || want != p {
			w.Header().Set("WWW-Authenticate", `Basic realm="Acme auth"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		user = u
	} else if r.Method == http.MethodPost && q.Get("grant_type") == "password" {
		if want, known := is.Users[q.Get("username")]; !known || want != q.Get("password") {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		user = q.Get("username")
	}
	access := []Access{}
	for _, v := range q["scope"] {
		for _, f := range strings.Fields(v) {
			is.mu.Lock()
			is.asked = append(is.asked, f)
			is.mu.Unlock()
			a, ok := parseScope(f)
			if !ok {
				http.Error(w, "malformed scope "+f, http.StatusBadRequest)
				return
			}
			a.Actions = is.ACL(user, a.Type, a.Name, a.Actions)
			if a.Actions == nil {
				a.Actions = []string{}
			}
			access = append(access, a)
		}
	}
	tok, err := is.Sign(user, access, nil)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{"token": tok, "access_token": tok})
}

// parseScope splits type[(class)]:name:actions on the first and the last
// colon, since a name may hold host:port.
func parseScope(s string) (Access, bool) {
	first, last := strings.Index(s, ":"), strings.LastIndex(s, ":")
	if first < 0 || first == last {
		return Access{}, false
	}
	typ, _, _ := strings.Cut(s[:first], "(")
	name := s[first+1 : last]
	if typ == "" || name == "" || s[last+1:] == "" {
		return Access{}, false
	}
	return Access{Type: typ, Name: name, Actions: strings.Split(s[last+1:], ",")}, true
}

// ScopesAsked is every scope the issuer was asked for, as received.
func (is *Issuer) ScopesAsked() []string {
	is.mu.Lock()
	defer is.mu.Unlock()
	return slices.Clone(is.asked)
}

// Requests is every token request the issuer received, in order.
func (is *Issuer) Requests() []Request {
	is.mu.Lock()
	defer is.mu.Unlock()
	return slices.Clone(is.requests)
}

// GrantIf keeps the asked actions listed in allowed (docker_auth drops
// the others silently).
func GrantIf(asked []string, allowed ...string) []string {
	out := []string{}
	for _, a := range asked {
		if slices.Contains(allowed, a) {
			out = append(out, a)
		}
	}
	return out
}
