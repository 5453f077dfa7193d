// Package oidctest is an OpenID Connect provider for tests: discovery,
// JWKS, an authorization endpoint that signs the configured user in at
// once and redirects back with a code, and a token endpoint that checks
// the client, the redirect URI and the PKCE verifier (S256) and returns
// an ID token signed with a real RSA key. Hooks let a test make the ID
// token wrong in every way a relying party must refuse.
//
// It imports nothing of authscope, so tests compare the relying party
// against an independent implementation of the other side.
package oidctest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/caddy-oci/caddy-oci/internal/outbound/outboundtest"
)

// Client credentials the provider knows.
const (
	ClientID     = "registry"
	ClientSecret = "registry-secret"
	keyID        = "test-key-1"
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

// Provider is a running test provider.
type Provider struct {
	*httptest.Server

	mu sync.Mutex
	// Claims are the ID token's claims besides iss, aud, exp, iat and
	// nonce, e.g. preferred_username and groups.
	Claims map[string]any
	// Mutate, if set, changes the claims of the next ID tokens after
	// the standard ones are set (a wrong aud, an old exp, another nonce).
	Mutate func(claims map[string]any)
	// Tamper, if set, changes the signed ID token (flip a byte).
	Tamper func(token string) string
	codes  map[string]grant
	// Discoveries counts discovery requests.
	Discoveries int
	// JWKSFetches counts requests for the signing keys.
	JWKSFetches int
	// extra are keys served besides the provider's own, by kid.
	extra map[string]*rsa.PrivateKey
	// keysDown makes the key set endpoint answer 503 (SetKeysDown).
	keysDown bool
	// padded are the paths whose answers carry a megabyte of headers
	// (PadHeaders); stuffed, those whose bodies end in 2 MiB of spaces
	// (PadBody).
	padded, stuffed map[string]bool
}

type grant struct {
	nonce, challenge, redirect string
}

// New starts a provider that signs user in with groups.
func New(t testing.TB, user string, groups ...string) *Provider {
	p := &Provider{
		Claims: map[string]any{"sub": "id-" + user, "preferred_username": user, "groups": groups},
		codes:  map[string]grant{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", p.discovery)
	mux.HandleFunc("GET /jwks", p.jwks)
	mux.HandleFunc("GET /authorize", p.authorize)
	mux.HandleFunc("POST /token", p.token)
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		pad, stuff := p.padded[r.URL.Path], p.stuffed[r.URL.Path]
		p.mu.Unlock()
		if pad {
			outboundtest.PadHeaders(w.Header(), 1024)
		}
		mux.ServeHTTP(w, r)
		if stuff {
			// Still valid JSON: whitespace may follow the value.
			_, _ = w.Write([]byte(strings.Repeat(" ", 2<<20)))
		}
	}))
	t.Cleanup(p.Close)
	return p
}

// Issuer is the provider's issuer URL.
func (p *Provider) Issuer() string { return p.URL }

// SetUser changes who the next sign-in is.
func (p *Provider) SetUser(user string, groups ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.Claims = map[string]any{"sub": "id-" + user, "preferred_username": user, "groups": groups}
}

// SetMutate sets Mutate under the provider's lock.
func (p *Provider) SetMutate(f func(map[string]any)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.Mutate = f
}

// SetTamper sets Tamper under the provider's lock.
func (p *Provider) SetTamper(f func(string) string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.Tamper = f
}

func (p *Provider) discovery(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.Discoveries++
	p.mu.Unlock()
	writeJSON(w, map[string]any{
		"issuer":                                p.URL,
		"authorization_endpoint":                p.URL + "/authorize",
		"token_endpoint":                        p.URL + "/token",
		"jwks_uri":                              p.URL + "/jwks",
		"response_types_supported":              []string{"code"},
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"code_challenge_methods_supported":      []string{"S256"},
	})
}

func (p *Provider) jwks(w http.ResponseWriter, r *http.Request) {
	jwk := func(kid string, pub *rsa.PublicKey) map[string]any {
		return map[string]any{
			"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
			"n": base64.RawURLEncoding.EncodeToString(pub.N.Bytes()),
			"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(pub.E)).Bytes()),
		}
	}
	keys := []map[string]any{jwk(keyID, &Key().PublicKey)}
	p.mu.Lock()
	p.JWKSFetches++
	if p.keysDown {
		p.mu.Unlock()
		http.Error(w, "keys unavailable", http.StatusServiceUnavailable)
		return
	}
	for kid, k := range p.extra {
		keys = append(keys, jwk(kid, &k.PublicKey))
	}
	p.mu.Unlock()
	writeJSON(w, map[string]any{"keys": keys})
}

// AddKey publishes another signing key under kid, as a provider does
// when it rotates keys.
func (p *Provider) AddKey(kid string, k *rsa.PrivateKey) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.extra == nil {
		p.extra = map[string]*rsa.PrivateKey{}
	}
	p.extra[kid] = k
}

// SetKeysDown makes the key set endpoint fail with 503 (down true), as
// a provider's outage does, or serve again.
func (p *Provider) SetKeysDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.keysDown = down
}

// PadHeaders makes the answers for path (e.g. "/jwks") carry a megabyte
// of headers, as a hostile or broken provider might.
func (p *Provider) PadHeaders(path string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.padded == nil {
		p.padded = map[string]bool{}
	}
	p.padded[path] = true
}

// PadBody makes the answers for path end in 2 MiB of spaces, which
// leave a JSON answer valid and only larger.
func (p *Provider) PadBody(path string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stuffed == nil {
		p.stuffed = map[string]bool{}
	}
	p.stuffed[path] = true
}

// Fetches returns how many times discovery and the keys were fetched.
func (p *Provider) Fetches() (discoveries, jwks int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.Discoveries, p.JWKSFetches
}

// authorize signs the user in without asking and redirects back with a
// code, as a provider with a remembered login does.
func (p *Provider) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("client_id") != ClientID || q.Get("response_type") != "code" ||
		q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" || q.Get("redirect_uri") == "" {
		http.Error(w, "bad authorization request", http.StatusBadRequest)
		return
	}
	code := randomString()
	p.mu.Lock()
	p.codes[code] = grant{nonce: q.Get("nonce"), challenge: q.Get("code_challenge"), redirect: q.Get("redirect_uri")}
	p.mu.Unlock()
	to, err := url.Parse(q.Get("redirect_uri"))
	if err != nil {
		http.Error(w, "bad redirect_uri", http.StatusBadRequest)
		return
	}
	v := to.Query()
	v.Set("code", code)
	v.Set("state", q.Get("state"))
	to.RawQuery = v.Encode()
	http.Redirect(w, r, to.String(), http.StatusFound)
}

func (p *Provider) token(w http.ResponseWriter, r *http.Request) {
	id, secret, ok := r.BasicAuth()
	if !ok {
		id, secret = r.PostFormValue("client_id"), r.PostFormValue("client_secret")
	}
	if id != ClientID || subtle.ConstantTimeCompare([]byte(secret), []byte(ClientSecret)) != 1 {
		tokenError(w, http.StatusUnauthorized, "invalid_client")
		return
	}
	if r.PostFormValue("grant_type") != "authorization_code" {
		tokenError(w, http.StatusBadRequest, "unsupported_grant_type")
		return
	}
	p.mu.Lock()
	g, ok := p.codes[r.PostFormValue("code")]
	delete(p.codes, r.PostFormValue("code")) // codes are single use
	p.mu.Unlock()
	sum := sha256.Sum256([]byte(r.PostFormValue("code_verifier")))
	if !ok || g.redirect != r.PostFormValue("redirect_uri") ||
		base64.RawURLEncoding.EncodeToString(sum[:]) != g.challenge {
		tokenError(w, http.StatusBadRequest, "invalid_grant")
		return
	}
	claims := map[string]any{"aud": ClientID}
	if g.nonce != "" {
		claims["nonce"] = g.nonce
	}
	p.mu.Lock()
	mutate, tamper := p.Mutate, p.Tamper
	for k, v := range p.Claims {
		claims[k] = v
	}
	p.mu.Unlock()
	idt := p.sign(claims, mutate)
	if tamper != nil {
		idt = tamper(idt)
	}
	writeJSON(w, map[string]any{"access_token": randomString(), "token_type": "Bearer", "expires_in": 300, "id_token": idt})
}

// Token signs an ID token for audience with claims (besides iss, aud,
// iat and exp, which it sets), as a CI system's workload token.
func (p *Provider) Token(audience string, claims map[string]any) string {
	c := map[string]any{"aud": audience}
	for k, v := range claims {
		c[k] = v
	}
	return p.sign(c, nil)
}

func (p *Provider) sign(claims map[string]any, mutate func(map[string]any)) string {
	now := time.Now()
	c := jwt.MapClaims{"iss": p.URL, "iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix()}
	for k, v := range claims {
		c[k] = v
	}
	if mutate != nil {
		mutate(c)
	}
	t := jwt.NewWithClaims(jwt.SigningMethodRS256, c)
	t.Header["kid"] = keyID
	s, err := t.SignedString(Key())
	if err != nil {
		panic(err)
	}
	return s
}

// SignWith signs claims with another key under the provider's kid: a
// forged token.
func SignWith(k *rsa.PrivateKey, claims map[string]any) string {
	return SignWithKid(k, keyID, claims)
}

// SignWithKid signs claims with k under kid.
func SignWithKid(k *rsa.PrivateKey, kid string, claims map[string]any) string {
	t := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims(claims))
	t.Header["kid"] = kid
	s, err := t.SignedString(k)
	if err != nil {
		panic(err)
	}
	return s
}

func tokenError(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func randomString() string {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}
