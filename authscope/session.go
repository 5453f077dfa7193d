package authscope

// Sealed cookies: the browser session after an OIDC sign-in, and the
// short-lived state of a sign-in in progress. Both are JSON sealed with
// AES-256-GCM, so the browser can neither read nor change them; the
// cookie's name is the additional data, so a value sealed for one cookie
// is refused as the other.

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
)

// SessionKeySize is the size of the key sessions are sealed with
// (AES-256).
const SessionKeySize = 32

// ErrSessionInvalid is a cookie that does not open, or whose time is up.
var ErrSessionInvalid = errors.New("invalid session")

// Session is a signed-in browser.
type Session struct {
	User   string   `json:"u"`
	Groups []string `json:"g,omitempty"`
	// CSRF must come back with every state-changing request of the
	// session (header X-CSRF-Token or form field csrf).
	CSRF    string `json:"c"`
	Expires int64  `json:"e"` // unix seconds
}

// loginState is a sign-in between the redirect to the provider and the
// callback.
type loginState struct {
	State    string `json:"s"`
	Nonce    string `json:"n"`
	Verifier string `json:"v"` // PKCE code verifier
	Expires  int64  `json:"e"`
}

// Sealer seals and opens cookie values. The key is fetched on first use
// (from the store, which may not be open yet at start-up) and kept once
// fetched.
type Sealer struct {
	// Key returns the SessionKeySize-byte key.
	Key func() ([]byte, error)

	mu   sync.Mutex
	aead cipher.AEAD
}

func (s *Sealer) cipher() (cipher.AEAD, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.aead != nil {
		return s.aead, nil
	}
	key, err := s.Key()
	if err != nil {
		return nil, fmt.Errorf("session key: %w", err)
	}
	if len(key) != SessionKeySize {
		return nil, fmt.Errorf("session key: %d bytes, want %d", len(key), SessionKeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("session key: %w", err)
	}
	if s.aead, err = cipher.NewGCM(block); err != nil {
		return nil, fmt.Errorf("session key: %w", err)
	}
	return s.aead, nil
}

// Seal returns v as a cookie value for the cookie called name.
func (s *Sealer) Seal(name string, v any) (string, error) {
	aead, err := s.cipher()
	if err != nil {
		return "", err
	}
	plain, err := json.Marshal(v)
	if err != nil {
		return "", fmt.Errorf("sealing %s: %w", name, err)
	}
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plain)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("sealing %s: %w", name, err)
	}
	return base64.RawURLEncoding.EncodeToString(aead.Seal(nonce, nonce, plain, []byte(name))), nil
}

// Open reads a value Seal made for the cookie called name into v.
func (s *Sealer) Open(name, value string, v any) error {
	aead, err := s.cipher()
	if err != nil {
		return err
	}
	raw, err := base64.RawURLEncoding.DecodeString(value)
	if err != nil || len(raw) < aead.NonceSize()+aead.Overhead() {
		return fmt.Errorf("%w: malformed %s cookie", ErrSessionInvalid, name)
	}
	plain, err := aead.Open(nil, raw[:aead.NonceSize()], raw[aead.NonceSize():], []byte(name))
	if err != nil {
		return fmt.Errorf("%w: %s cookie does not open", ErrSessionInvalid, name)
	}
	if err := json.Unmarshal(plain, v); err != nil {
		return fmt.Errorf("%w: %s cookie: %w", ErrSessionInvalid, name, err)
	}
	return nil
}

// maxCookieSize keeps a session under what every browser stores (4096
// bytes for name, value and attributes).
const maxCookieSize = 3800

// cookieJar names and sets the two cookies. Over https they carry the
// __Host- prefix, which browsers accept only with Secure, Path=/ and no
// Domain, so a sibling subdomain cannot plant one.
type cookieJar struct {
	secure bool
	sealer *Sealer
}

func (j cookieJar) name(base string) string {
	if j.secure {
		return "__Host-" + base
	}
	return base
}

const (
	sessionCookie = "oci_session"
	loginCookie   = "oci_login"
)

// DropSignInCookies removes this server's sign-in cookies from h, for a
// request that leaves it (a proxied one): a session must never reach
// another service. Other cookies stay.
func DropSignInCookies(h http.Header) {
	if h.Get("Cookie") == "" {
		return
	}
	r := http.Request{Header: h}
	var keep []string
	dropped := false
	for _, c := range r.Cookies() {
		switch strings.TrimPrefix(c.Name, "__Host-") {
		case sessionCookie, loginCookie:
			dropped = true
		default:
			keep = append(keep, c.String())
		}
	}
	if !dropped {
		return
	}
	h.Del("Cookie")
	if len(keep) > 0 {
		h.Set("Cookie", strings.Join(keep, "; "))
	}
}

// set seals v into the cookie base, living until expires.
func (j cookieJar) set(w http.ResponseWriter, base string, v any, expires time.Time) error {
	name := j.name(base)
	val, err := j.sealer.Seal(name, v)
	if err != nil {
		return err
	}
	if len(name)+len(val) > maxCookieSize {
		return fmt.Errorf("%s cookie would be %d bytes, more than browsers keep (too many groups?)", name, len(val))
	}
	http.SetCookie(w, &http.Cookie{
		Name: name, Value: val, Path: "/", Expires: expires,
		MaxAge: max(1, int(time.Until(expires).Seconds())),
		Secure: j.secure, HttpOnly: true, SameSite: http.SameSiteLaxMode,
	})
	return nil
}

// get opens the cookie base of r into v.
func (j cookieJar) get(r *http.Request, base string, v any) error {
	name := j.name(base)
	c, err := r.Cookie(name)
	if err != nil {
		return fmt.Errorf("%w: no %s cookie", ErrSessionInvalid, name)
	}
	return j.sealer.Open(name, c.Value, v)
}

// clear tells the browser to drop the cookie base.
func (j cookieJar) clear(w http.ResponseWriter, base string) {
	http.SetCookie(w, &http.Cookie{
		Name: j.name(base), Value: "", Path: "/", MaxAge: -1,
		Secure: j.secure, HttpOnly: true, SameSite: http.SameSiteLaxMode,
	})
}

// session returns r's session if it opens and has not expired at now.
func (j cookieJar) session(r *http.Request, now time.Time) (Session, error) {
	var s Session
	if err := j.get(r, sessionCookie, &s); err != nil {
		return Session{}, err
	}
	if s.User == "" || s.CSRF == "" || now.Unix() >= s.Expires {
		return Session{}, fmt.Errorf("%w: expired", ErrSessionInvalid)
	}
	return s, nil
}

// randomString is n random bytes, base64url: states, nonces, verifiers,
// CSRF tokens.
func randomString(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}
