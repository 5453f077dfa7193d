package authscope

// The browser side of sign-in, served under AuthPath: login, callback,
// logout, the key page and the key API. Every state-changing request
// needs the session's CSRF token and proof that a page of this site sent
// it (see sameOrigin); the session cookie is SameSite=Lax besides. The
// registry API never reads the session cookie, so a cross-site request
// cannot push or delete with a browser's session.

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/internal/logfield"
)

// AuthPath is the root of sign-in and API key management.
const AuthPath = "/_oci/auth/"

// Sign-in defaults.
const (
	DefaultSessionTTL = 12 * time.Hour
	loginTTL          = 10 * time.Minute
	maxBody           = 64 << 10
)

// SignInOptions configure a SignIn.
type SignInOptions struct {
	OIDC *OIDCClient
	// ExternalURL is how browsers reach this server (scheme and host, no
	// path). An http URL is allowed only on a loopback host; cookies are
	// then sent without Secure, as browsers would not return them
	// otherwise over http.
	ExternalURL string
	// Sealer seals the session and sign-in cookies.
	Sealer *Sealer
	// Sessions keeps the live sessions, so that signing out ends one.
	Sessions SessionStore
	// SessionTTL is how long a session lasts. Default: 12h.
	SessionTTL time.Duration
	// APIKeys, if set, lets signed-in users manage keys.
	APIKeys *APIKeys
	// Guesses, if set, bounds the sign-ins one client address may fail
	// at the provider (a code it refuses, an ID token refused here), as
	// logins are bounded: each callback with a code costs a request to
	// the provider's token endpoint, and a script that starts a sign-in
	// for every made-up code could otherwise make as many as it likes,
	// until the provider rate-limits this registry's client for everyone.
	Guesses *Guesses
	// ClientIP is the client's address as the server determines it;
	// nil: r.RemoteAddr's.
	ClientIP func(r *http.Request) string
	// Now is the clock of sessions; nil is time.Now.
	Now    func() time.Time
	Logger *zap.Logger
}

// SignIn serves AuthPath.
type SignIn struct {
	o      SignInOptions
	origin string // scheme://host of ExternalURL
	jar    cookieJar
	used   usedStates
}

// NewSignIn checks o.
func NewSignIn(o SignInOptions) (*SignIn, error) {
	if o.OIDC == nil || o.Sealer == nil || o.Sessions == nil {
		return nil, errors.New("sign-in needs an OIDC client, a sealer and a session store")
	}
	secure, origin, err := CheckExternalURL(o.ExternalURL)
	if err != nil {
		return nil, err
	}
	if o.SessionTTL <= 0 {
		o.SessionTTL = DefaultSessionTTL
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	return &SignIn{o: o, origin: origin, jar: cookieJar{secure: secure, sealer: o.Sealer}}, nil
}

// CheckExternalURL checks an external URL and says whether cookies must
// be Secure: always, except for http on a loopback host (a developer's
// machine), where a browser would drop a Secure cookie.
func CheckExternalURL(s string) (secure bool, origin string, err error) {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return false, "", fmt.Errorf("external URL %q: want scheme://host[:port] only", RedactURL(s))
	}
	h, port := strings.ToLower(u.Hostname()), u.Port()
	switch u.Scheme {
	case "https":
		secure = true
		if port == "443" {
			port = ""
		}
	case "http":
		ip := net.ParseIP(h)
		if h != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return false, "", fmt.Errorf("external URL %q: http is allowed only on a loopback host; use https", s)
		}
		if port == "80" {
			port = ""
		}
	default:
		return false, "", fmt.Errorf("external URL %q: scheme must be https (or http on loopback)", s)
	}
	// The origin as browsers send it in Origin: lower-case host, no
	// default port.
	host := h
	if port != "" {
		host = net.JoinHostPort(h, port)
	} else if strings.Contains(h, ":") {
		host = "[" + h + "]"
	}
	return secure, u.Scheme + "://" + host, nil
}

// RedirectURL is the callback to register at the provider.
func RedirectURL(externalURL string) string {
	return strings.TrimSuffix(externalURL, "/") + AuthPath + "callback"
}

func (s *SignIn) now() time.Time {
	if s.o.Now != nil {
		return s.o.Now()
	}
	return time.Now()
}

// ServeHTTP routes AuthPath.
func (s *SignIn) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w, r, finish := GuardUnreadBody(w, r)
	defer finish()
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Frame-Options", "DENY")
	// Not no-referrer: under it browsers send "Origin: null" with the
	// page's own forms, which sameOrigin could then not tell from a
	// sandboxed attacker. same-origin still sends nothing to others.
	w.Header().Set("Referrer-Policy", "same-origin")
	// Nothing here takes more than a label and a token.
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	rest := strings.TrimPrefix(r.URL.Path, AuthPath)
	switch {
	case rest == "" && r.Method == http.MethodGet:
		s.page(w, r, "", "")
	case rest == "login" && r.Method == http.MethodGet:
		s.login(w, r)
	case rest == "callback" && r.Method == http.MethodGet:
		s.callback(w, r)
	case rest == "logout" && r.Method == http.MethodPost:
		s.logout(w, r)
	case rest == "session" && r.Method == http.MethodGet:
		s.whoami(w, r)
	case rest == "apikeys" || strings.HasPrefix(rest, "apikeys/"):
		s.apiKeys(w, r, strings.TrimPrefix(strings.TrimPrefix(rest, "apikeys"), "/"))
	case rest == "" || rest == "login" || rest == "callback" || rest == "logout" || rest == "session":
		w.Header().Set("Allow", allowOf(rest))
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	default:
		http.NotFound(w, r)
	}
}

func allowOf(rest string) string {
	if rest == "logout" {
		return http.MethodPost
	}
	return http.MethodGet
}

// login starts the code flow: fresh state, nonce and PKCE verifier go into
// the sealed sign-in cookie, and the browser to the provider.
func (s *SignIn) login(w http.ResponseWriter, r *http.Request) {
	var ls loginState
	var err error
	for _, p := range []*string{&ls.State, &ls.Nonce, &ls.Verifier} {
		if *p, err = randomString(32); err != nil {
			s.fail(w, r, http.StatusInternalServerError, "sign-in failed", err)
			return
		}
	}
	to, err := s.o.OIDC.AuthURL(r.Context(), ls.State, ls.Nonce, ls.Verifier)
	if errors.Is(err, ErrUnavailable) {
		s.providerDown(w, r, err)
		return
	}
	if err != nil {
		s.failDiscovery(w, r, http.StatusBadGateway, "the identity provider cannot be reached", err)
		return
	}
	exp := s.now().Add(loginTTL)
	ls.Expires = exp.Unix()
	if err := s.jar.set(w, loginCookie, ls, exp); err != nil {
		s.fail(w, r, http.StatusInternalServerError, "sign-in failed", err)
		return
	}
	http.Redirect(w, r, to, http.StatusFound)
}

// callback finishes the code flow. The state must equal the one sealed
// in this browser's sign-in cookie (a login CSRF otherwise), and the
// cookie is used once.
func (s *SignIn) callback(w http.ResponseWriter, r *http.Request) {
	var ls loginState
	err := s.jar.get(r, loginCookie, &ls)
	s.jar.clear(w, loginCookie)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, "no sign-in in progress in this browser; start again", err)
		return
	}
	if s.now().Unix() >= ls.Expires {
		s.fail(w, r, http.StatusBadRequest, "the sign-in took too long; start again", errors.New("sign-in state expired"))
		return
	}
	q := r.URL.Query()
	if st := q.Get("state"); st == "" || subtle.ConstantTimeCompare([]byte(st), []byte(ls.State)) != 1 {
		s.fail(w, r, http.StatusBadRequest, "sign-in state does not match; start again", errors.New("state mismatch"))
		return
	}
	if !s.used.take(ls.State, time.Unix(ls.Expires, 0), s.now()) {
		s.fail(w, r, http.StatusBadRequest, "this sign-in was already finished; start again", errors.New("sign-in cookie replayed"))
		return
	}
	if e := q.Get("error"); e != "" {
		s.fail(w, r, http.StatusForbidden, "the identity provider refused the sign-in", fmt.Errorf("provider error %q: %q", e, q.Get("error_description")))
		return
	}
	code := q.Get("code")
	if code == "" {
		s.fail(w, r, http.StatusBadRequest, "no authorization code", errors.New("callback without code"))
		return
	}
	clientIP := s.o.ClientIP
	if clientIP == nil {
		clientIP = remoteHost
	}
	guess, err := s.o.Guesses.Begin(r.Context(), clientIP(r), "")
	if err != nil {
		setRetryAfter(w.Header(), err)
		s.fail(w, r, http.StatusTooManyRequests, "too many failed sign-ins from this address; try again later", err)
		return
	}
	user, groups, err := s.o.OIDC.Exchange(r.Context(), code, ls.Nonce, ls.Verifier)
	if errors.Is(err, ErrUnavailable) {
		guess.Refund() // the provider's being down is not the client's doing
		s.providerDown(w, r, err)
		return
	}
	if err != nil {
		guess.End(false)
	} else {
		// A sign-in names its user only once the provider vouched for
		// it: the address's debt is left as it was.
		guess.Refund()
	}
	if err != nil {
		status := http.StatusBadGateway
		if errors.Is(err, errIDToken) {
			status = http.StatusForbidden
		}
		s.failDiscovery(w, r, status, "sign-in refused", err)
		return
	}
	if s.o.APIKeys != nil {
		// The ID token is the only word on the user's groups: the
		// user's keys take them now, so that a group the provider took
		// away leaves them too. Should that fail, the sign-in fails: the
		// page would otherwise show groups the keys do not have.
		if err := s.o.APIKeys.RefreshGroups(user, groups); err != nil {
			s.fail(w, r, http.StatusInternalServerError, "sign-in failed", err)
			return
		}
	}
	exp := s.now().Add(s.o.SessionTTL)
	sess, err := s.startSession(user, groups, exp)
	if err != nil {
		s.fail(w, r, http.StatusInternalServerError, "sign-in failed", err)
		return
	}
	if err := s.jar.set(w, sessionCookie, sess, exp); err != nil {
		s.fail(w, r, http.StatusInternalServerError, "sign-in failed", err)
		return
	}
	s.o.Logger.Info("signed in", zap.String("user", user), zap.Strings("groups", groups), zap.String("remote", r.RemoteAddr))
	http.Redirect(w, r, AuthPath, http.StatusSeeOther)
}

// usedStates remembers the states of the sign-ins that reached their
// callback, until their cookies expire, so that a sign-in cookie is
// used once even when its holder keeps it after the callback cleared it.
// Without it, one GET of login gave a script ten minutes of callbacks,
// each trading a made-up code at the provider's token endpoint: a flood
// that could get this registry's client rate-limited there, and sign-in
// refused for everyone. States past maxUsedStates push out the oldest:
// replaying one takes that many sign-ins first, each of which costs the
// provider as much as the replay.
type usedStates struct {
	mu    sync.Mutex
	until map[string]time.Time
	order []string // oldest first
}

const maxUsedStates = 1 << 16

// take records state as used until exp, or reports that it already was.
func (u *usedStates) take(state string, exp, now time.Time) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if until, ok := u.until[state]; ok && now.Before(until) {
		return false
	}
	if u.until == nil {
		u.until = make(map[string]time.Time)
	}
	// Drop the expired and, past the bound, the oldest: order is by
	// insertion, which is nearly by expiry (every cookie lives loginTTL).
	drop := 0
	for drop < len(u.order) && (len(u.order)-drop >= maxUsedStates || !now.Before(u.until[u.order[drop]])) {
		delete(u.until, u.order[drop])
		drop++
	}
	u.order = append(u.order[drop:], state)
	u.until[state] = exp
	return true
}

// startSession makes a session for user with a fresh ID and CSRF token,
// and records it in the store.
func (s *SignIn) startSession(user string, groups []string, exp time.Time) (Session, error) {
	id, err := randomString(18)
	if err != nil {
		return Session{}, err
	}
	csrf, err := randomString(32)
	if err != nil {
		return Session{}, err
	}
	rec, err := json.Marshal(sessionRecord{User: user, Expires: exp.UTC().Truncate(time.Second)})
	if err != nil {
		return Session{}, err
	}
	if err := s.o.Sessions.CreateSession(id, rec, exp); err != nil {
		return Session{}, fmt.Errorf("storing session: %w", err)
	}
	return Session{ID: id, User: user, Groups: groups, CSRF: csrf, Expires: exp.Unix(), SignedIn: s.now().Unix()}, nil
}

// signedIn is when sess's groups were given: its sign-in, or for a
// cookie from before that was kept, what its expiry says of it.
func (s *SignIn) signedIn(sess Session) time.Time {
	if sess.SignedIn > 0 {
		return time.Unix(sess.SignedIn, 0)
	}
	return time.Unix(sess.Expires, 0).Add(-s.o.SessionTTL)
}

// logout ends the session in the store, so that its cookie, wherever a
// copy of it went, no longer works.
func (s *SignIn) logout(w http.ResponseWriter, r *http.Request) {
	sess, ok := s.session(w, r, true)
	if !ok {
		return
	}
	if err := s.o.Sessions.DeleteSession(sess.ID); err != nil {
		s.fail(w, r, http.StatusInternalServerError, "sign-out failed; try again", err)
		return
	}
	s.jar.clear(w, sessionCookie)
	s.o.Logger.Info("signed out", zap.String("user", sess.User), zap.String("remote", r.RemoteAddr))
	http.Redirect(w, r, AuthPath, http.StatusSeeOther)
}

// session returns the caller's session: its cookie must open and the
// store must still hold it. A state-changing request must also come from
// a page of this site and carry the session's CSRF token. It answers the
// refusal itself.
func (s *SignIn) session(w http.ResponseWriter, r *http.Request, changes bool) (Session, bool) {
	sess, err := s.current(r)
	if signedOut(err) {
		s.fail(w, r, http.StatusUnauthorized, "not signed in", err)
		return Session{}, false
	}
	if err != nil {
		s.fail(w, r, http.StatusInternalServerError, "cannot check the session", err)
		return Session{}, false
	}
	if !changes {
		return sess, true
	}
	if err := s.sameOrigin(r); err != nil {
		s.fail(w, r, http.StatusForbidden, "request refused: it must come from a page of "+s.origin+
			" (Origin: "+s.origin+", or Sec-Fetch-Site: same-origin)", err)
		return Session{}, false
	}
	tok := r.Header.Get("X-CSRF-Token")
	if tok == "" {
		tok = r.PostFormValue("csrf")
	}
	if tok == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(sess.CSRF)) != 1 {
		s.fail(w, r, http.StatusForbidden, "missing or wrong CSRF token", errors.New("csrf mismatch"))
		return Session{}, false
	}
	return sess, true
}

// current returns r's session if its cookie opens, has not expired, and
// the store still holds it. Errors for which signedOut is true mean no
// session; others are the store's faults.
func (s *SignIn) current(r *http.Request) (Session, error) {
	sess, err := s.jar.session(r, s.now())
	if err != nil {
		return Session{}, err
	}
	if err := s.live(sess); err != nil {
		return Session{}, err
	}
	return sess, nil
}

// signedOut reports whether an error of current means the caller has no
// session (as opposed to one that cannot be checked now).
func signedOut(err error) bool {
	return errors.Is(err, ErrSessionInvalid) || errors.Is(err, ErrSessionNotFound)
}

// live checks that the store still holds sess, for the same user.
func (s *SignIn) live(sess Session) error {
	b, err := s.o.Sessions.Session(sess.ID)
	if err != nil {
		return fmt.Errorf("session of %s: %w", sess.User, err)
	}
	var rec sessionRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return fmt.Errorf("session record: %w", err)
	}
	if rec.User != sess.User {
		return fmt.Errorf("%w: the cookie's user %q is not the stored %q", ErrSessionInvalid, sess.User, rec.User)
	}
	return nil
}

// sameOrigin checks that a state-changing request comes from a page of
// this site. Browsers send Origin with every POST and DELETE, and
// Sec-Fetch-Site with every request; neither can a page of another site
// set. A request with neither is refused: a browser would have sent one,
// so it is a script, which has to say where it stands like a page does.
// A session cookie that reached someone else is thereby no key maker by
// itself in a browser; that it never does is the cookie's Path and
// DropSignInCookies's job.
func (s *SignIn) sameOrigin(r *http.Request) error {
	origins := r.Header.Values("Origin")
	sites := r.Header.Values("Sec-Fetch-Site")
	if len(origins) > 1 || len(sites) > 1 {
		return fmt.Errorf("several Origin (%q) or Sec-Fetch-Site (%q) headers", origins, sites)
	}
	origin, site := r.Header.Get("Origin"), r.Header.Get("Sec-Fetch-Site")
	switch {
	case site != "" && site != "same-origin":
		return fmt.Errorf("Sec-Fetch-Site %q", site)
	case origin == s.origin:
		return nil
	case (origin == "" || origin == "null") && site == "same-origin":
		// A browser whose referrer policy hid the origin.
		return nil
	case origin == "":
		return errors.New("no Origin and no Sec-Fetch-Site")
	default:
		return fmt.Errorf("origin %q", origin)
	}
}

// whoami answers the session as JSON, with the CSRF token scripts need
// for the key API.
func (s *SignIn) whoami(w http.ResponseWriter, r *http.Request) {
	sess, ok := s.session(w, r, false)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"user": sess.User, "groups": nonNil(sess.Groups), "csrf_token": sess.CSRF,
		"expires": time.Unix(sess.Expires, 0).UTC(),
	})
}

// fail answers an error: JSON for API callers, text otherwise. The
// reason goes to the log only; the path is logged without its query,
// which holds the authorization code and state on the callback.
// failDiscovery is fail for errors that may come from discovering the
// provider: an issuer that does not match the provider's own spelling is
// a misconfiguration of this server, and the page says so (the log names
// both URLs; the page names none).
func (s *SignIn) failDiscovery(w http.ResponseWriter, r *http.Request, status int, msg string, reason error) {
	if errors.Is(reason, ErrIssuerMismatch) {
		status, msg = http.StatusInternalServerError, "sign-in is misconfigured: the identity provider's issuer does not match the one configured here (the server log names both)"
	}
	s.fail(w, r, status, msg, reason)
}

// providerDown answers a sign-in the provider could not serve (down,
// timing out, its keys unreachable) as the outage it is, as the
// workload-token path does: 503 with Retry-After, and a page telling the
// user to try again rather than that the sign-in was refused. The
// provider's address stays in the log.
func (s *SignIn) providerDown(w http.ResponseWriter, r *http.Request, reason error) {
	w.Header().Set("Retry-After", strconv.Itoa(int(retryDiscoveryAfter/time.Second)))
	s.fail(w, r, http.StatusServiceUnavailable,
		"the identity provider cannot be reached; try again in a moment", reason)
}

func (s *SignIn) fail(w http.ResponseWriter, r *http.Request, status int, msg string, reason error) {
	lvl := s.o.Logger.Info
	if status >= 500 {
		lvl = s.o.Logger.Error
	}
	why := ""
	if reason != nil {
		why = reason.Error()
	}
	lvl("sign-in: "+msg, zap.Int("status", status), logfield.String("error", why),
		logfield.String("method", r.Method), logfield.String("path", r.URL.Path), zap.String("remote", r.RemoteAddr))
	if wantsJSON(r) {
		writeJSON(w, status, map[string]string{"error": msg})
		return
	}
	http.Error(w, msg, status)
}

// wantsJSON tells a script (JSON, or the CSRF header only scripts send)
// from the page's forms.
func wantsJSON(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept"), "application/json") ||
		strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") ||
		r.Header.Get("X-CSRF-Token") != ""
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
