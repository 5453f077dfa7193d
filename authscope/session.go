package authscope

// Sealed cookies: the browser session after an OIDC sign-in, and the
// short-lived state of a sign-in in progress. Both are JSON sealed with
// AES-256-GCM, so the browser can neither read nor change them; the
// cookie's name is the additional data, so a value sealed for one cookie
// is refused as the other. A session also lives in the store under its
// ID, so that signing out ends it for good, not when its cookie expires.

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
	// ID names the session in the SessionStore; a session the store does
	// not know (signed out, or older than IDs) is no session.
	ID     string   `json:"i"`
	User   string   `json:"u"`
	Groups []string `json:"g,omitempty"`
	// CSRF must come back with every state-changing request of the
	// session (header X-CSRF-Token or form field csrf).
	CSRF    string `json:"c"`
	Expires int64  `json:"e"` // unix seconds
	// SignedIn is when the ID token gave Groups (unix seconds); 0 in
	// cookies from before it was kept.
	SignedIn int64 `json:"t,omitempty"`
}

// ErrSessionNotFound is a session ID the store does not know: never
// made, signed out, or expired.
var ErrSessionNotFound = errors.New("no such session")

// SessionStore keeps the sessions that are signed in, by ID, with records
// opaque to it. It is all sign-in needs of storage.
type SessionStore interface {
	// CreateSession stores a new session's record, live until expires;
	// after that the store may forget it. An existing id is an error.
	CreateSession(id string, record []byte, expires time.Time) error
	// Session returns the record of a live id, or an error wrapping
	// ErrSessionNotFound.
	Session(id string) ([]byte, error)
	// DeleteSession ends id; a missing id is not an error.
	DeleteSession(id string) error
}

// sessionRecord is what the store keeps of a session: enough to check a
// cookie against, and to find a user's sessions later.
type sessionRecord struct {
	User    string    `json:"user"`
	Expires time.Time `json:"expires"`
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

// cookieJar names and sets the two cookies. Both are scoped to AuthPath,
// so a browser sends them to the sign-in pages only, never to other
// handlers of the site (a reverse_proxy next to the registry). Over https
// they are Secure and carry the __Secure- prefix, which browsers accept
// only from a Secure origin with Secure set; the __Host- prefix would
// demand Path=/. Since a sibling subdomain could still plant a cookie of
// the same name, a request with more than one is refused.
type cookieJar struct {
	secure bool
	sealer *Sealer
}

func (j cookieJar) name(base string) string {
	if j.secure {
		return "__Secure-" + base
	}
	return base
}

const (
	sessionCookie = "oci_session"
	loginCookie   = "oci_login"
	cookiePath    = AuthPath
)

// isSignInCookie reports whether a cookie called name is one of the
// sign-in cookies, under any prefix this server has used.
func isSignInCookie(name string) bool {
	for _, prefix := range []string{"__Host-", "__Secure-"} {
		if len(name) > len(prefix) && strings.EqualFold(name[:len(prefix)], prefix) {
			name = name[len(prefix):]
			break
		}
	}
	return strings.EqualFold(name, sessionCookie) || strings.EqualFold(name, loginCookie)
}

// DropSignInCookies removes this server's sign-in cookies from h, for a
// request that leaves it (proxied, or passed to the next handler): a
// session must never reach another service. It reads every Cookie
// header; other cookies stay, as they came, in one Cookie header.
func DropSignInCookies(h http.Header) {
	var keep []string
	dropped := false
	for _, line := range h.Values("Cookie") {
		for _, part := range strings.Split(line, ";") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			name, _, _ := strings.Cut(part, "=")
			if isSignInCookie(strings.TrimSpace(name)) {
				dropped = true
				continue
			}
			keep = append(keep, part)
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

// DropSignInSetCookies removes from h, an answer another handler or a
// backend wrote (passed through to this server's client), every
// Set-Cookie that names one of this server's sign-in cookies: it may
// neither replace a session (with one it holds of its own: a session
// fixation) nor clear it. The name is read as browsers read it: up to
// the first `=` of the part before the first `;`, trimmed (a pair
// without `=` is read as a bare name too).
func DropSignInSetCookies(h http.Header) {
	lines := h.Values("Set-Cookie")
	keep := lines[:0:0]
	for _, line := range lines {
		pair, _, _ := strings.Cut(line, ";")
		name, _, _ := strings.Cut(pair, "=")
		if !isSignInCookie(strings.TrimSpace(name)) {
			keep = append(keep, line)
		}
	}
	if len(keep) == len(lines) {
		return
	}
	h.Del("Set-Cookie")
	for _, line := range keep {
		h.Add("Set-Cookie", line)
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
		Name: name, Value: val, Path: cookiePath, Expires: expires,
		MaxAge: max(1, int(time.Until(expires).Seconds())),
		Secure: j.secure, HttpOnly: true, SameSite: http.SameSiteLaxMode,
	})
	return nil
}

// get opens the cookie base of r into v. More than one cookie of that
// name is refused: the second one was planted (see cookieJar).
func (j cookieJar) get(r *http.Request, base string, v any) error {
	name := j.name(base)
	var found []*http.Cookie
	for _, c := range r.Cookies() {
		if c.Name == name {
			found = append(found, c)
		}
	}
	switch len(found) {
	case 0:
		return fmt.Errorf("%w: no %s cookie", ErrSessionInvalid, name)
	case 1:
		return j.sealer.Open(name, found[0].Value, v)
	default:
		return fmt.Errorf("%w: %d %s cookies", ErrSessionInvalid, len(found), name)
	}
}

// clear tells the browser to drop the cookie base.
func (j cookieJar) clear(w http.ResponseWriter, base string) {
	http.SetCookie(w, &http.Cookie{
		Name: j.name(base), Value: "", Path: cookiePath, MaxAge: -1,
		Secure: j.secure, HttpOnly: true, SameSite: http.SameSiteLaxMode,
	})
}

// session returns r's session if it opens and has not expired at now.
func (j cookieJar) session(r *http.Request, now time.Time) (Session, error) {
	var s Session
	if err := j.get(r, sessionCookie, &s); err != nil {
		return Session{}, err
	}
	if s.ID == "" || s.User == "" || s.CSRF == "" || now.Unix() >= s.Expires {
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
