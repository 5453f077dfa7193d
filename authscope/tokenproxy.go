package authscope

// The token proxy sits between clients and a Docker token service. A
// client asks for the scope *it* computed (`repository:library/debian:pull`
// from a Docker registry-mirrors pull); the registry enforces internal
// names (`docker.io/library/debian`). The proxy translates every scope with
// the same Names mapping as requests, using the Via that the challenge's
// realm carried (ns, path prefix) and the Host header (host aliases), so
// the token service sees, and its ACLs are written against, internal names
// only.

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-oci/caddy-oci/internal/outbound"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/internal/logfield"
)

// maxTokenForm bounds an OAuth2 token request body.
const maxTokenForm = 64 << 10

// ErrScopeRejected is a token request scope the proxy will not forward.
var ErrScopeRejected = errors.New("scope rejected")

// ErrParameterCase is a token request parameter that spells a key the
// proxy controls or forwards (scope, service, account, ns, prefix, the
// realm's own, ...) another way (case, a PHP-style array), or a
// single-valued one given twice.
var ErrParameterCase = errors.New("token request parameter spelled another way or repeated")

// TranslateScopes maps the names of every repository scope in a `scope`
// value (space-separated scopes) from the client's form to internal names.
// Scopes of other types pass unchanged. A scope that does not parse, or
// whose name is invalid or maps to no namespace served here, is an error
// wrapping ErrScopeRejected.
func TranslateScopes(names *Names, value string, v Via) (string, error) {
	fields := strings.Fields(value)
	out := make([]string, 0, len(fields))
	for _, f := range fields {
		s, err := ParseScope(f)
		if err != nil {
			return "", fmt.Errorf("%w: %w", ErrScopeRejected, err)
		}
		if strings.EqualFold(s.Type, "repository") && s.Type != "repository" {
			// A token service that reads types without regard to case
			// would take it for a repository whose name was never
			// translated.
			return "", fmt.Errorf("%w: scope type %q", ErrScopeRejected, s.Type)
		}
		if s.Type == "repository" {
			in, err := names.Internal(s.Name, v)
			if err != nil {
				return "", fmt.Errorf("%w: %w", ErrScopeRejected, err)
			}
			s.Name = in
		}
		out = append(out, s.String())
	}
	return strings.Join(out, " "), nil
}

// TokenProxy serves TokenPath: it forwards token requests (GET, and the
// OAuth2 POST form) to Upstream with their scopes translated, passes
// Authorization through, and returns the response as it came. A request
// with two Authorization headers, or with one of this server's own
// credentials anywhere in what would be forwarded, is refused.
type TokenProxy struct {
	// Upstream is the token service's URL (its realm). Its query
	// parameters are the configuration's: a client's value for any of
	// them is replaced, never forwarded.
	Upstream *url.URL
	// Service is this registry's name at the token service. Every
	// forwarded request carries it as `service`, whatever the client
	// sent; empty means Upstream's own `service` parameter (see Check).
	Service string
	Names   *Names
	// Client makes the upstream requests; nil means a client with a 30s
	// timeout. Redirects are never followed (see ServeHTTP).
	Client *http.Client
	Logger *zap.Logger
	// Withhold reports whether a token is one of this server's own
	// credentials (a workload token, say), which the token service does
	// not know and must never see. It is asked of every run of token
	// characters in any header, query or form value that would be
	// forwarded. API keys are always withheld.
	Withhold func(secret string) bool
	// Guesses, if set, bounds the logins the token service refuses (401)
	// per client address and account name, as the registry's own Basic
	// logins: once a bound is used up, a request with credentials is
	// answered 429 and not forwarded, so neither a flood of guesses nor
	// the token service's own lockout reaches the token service.
	Guesses *Guesses
	// ClientIP is the client's address as the server determines it;
	// nil: r.RemoteAddr's.
	ClientIP func(r *http.Request) string

	// inFlight bounds each client's forwarded requests at once
	// (TokenRequestsPerClient).
	inFlight clientTurns
}

const withheldMessage = "API keys and workload tokens are accepted by the registry itself, not by its token service: send them as Basic credentials to /v2/"

var defaultTokenClient = outbound.Client(30 * time.Second)

// ServeHTTP implements http.Handler.
func (p *TokenProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w, r, finish := GuardUnreadBody(w, r)
	defer finish()
	// The token service's answer may echo what a link sent here put in
	// the query, as whatever Content-Type it likes.
	InertContent(w.Header())
	logger := p.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	fail := func(status int, msg string, err error) {
		logger.Info("token request refused", zap.Int("status", status), logfield.String("reason", err.Error()),
			logfield.String("path", r.URL.Path), logfield.String("query", loggableQuery(r.URL.Query())), zap.String("remote", r.RemoteAddr))
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		code := "UNSUPPORTED"
		switch status {
		case http.StatusUnauthorized:
			code = "UNAUTHORIZED"
		case http.StatusTooManyRequests:
			code = "TOOMANYREQUESTS"
		}
		_, _ = fmt.Fprintf(w, `{"errors":[{"code":"%s","message":%q}]}`+"\n", code, msg)
	}
	if err := OneAuthorization(r.Header); err != nil {
		fail(http.StatusBadRequest, "send one Authorization header", err)
		return
	}
	// Own credentials are looked for in what the client sent, before
	// anything of it is refused or dropped, so the client is told where
	// they belong whatever else is wrong.
	if err := CheckForwarded(http.Header{"Authorization": r.Header.Values("Authorization")}, r.URL.RawQuery, nil, p.Withhold); err != nil {
		fail(http.StatusUnauthorized, withheldMessage, err)
		return
	}
	if err := wellFormedBasic(r); err != nil {
		fail(http.StatusBadRequest, "malformed Basic credentials: send Basic and the base64 of user:password, one space between", err)
		return
	}
	q := r.URL.Query()
	// Credentials go in the Authorization header or a POST form, where
	// the login bound counts them (loginOf); from the query a token
	// service that reads it would take guesses no bound counts, and
	// servers and proxies on the way log queries.
	for _, k := range []string{"password", "refresh_token"} {
		if q.Has(k) {
			fail(http.StatusBadRequest, "send credentials in the Authorization header or a POST form, not in the query", fmt.Errorf("%s in the query", k))
			return
		}
	}
	via := Via{Host: r.Host, NS: q.Get(realmParamNS), PathPrefix: q.Get(realmParamPrefix)}
	uq, err := p.UpstreamValues(q, via)
	if err != nil {
		fail(http.StatusBadRequest, refusalMessage(err), err)
		return
	}
	up := *p.Upstream
	up.RawQuery = uq.Encode()

	var body io.Reader
	var form url.Values // a POST's; GET credentials are in the header only
	switch r.Method {
	case http.MethodGet:
	case http.MethodPost:
		mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if mt != "application/x-www-form-urlencoded" {
			fail(http.StatusUnsupportedMediaType, "token requests are forms", fmt.Errorf("content type %q", mt))
			return
		}
		raw, err := io.ReadAll(io.LimitReader(r.Body, maxTokenForm+1))
		if err != nil {
			fail(http.StatusBadRequest, "unreadable body", err)
			return
		}
		if len(raw) > maxTokenForm {
			fail(http.StatusRequestEntityTooLarge, "form too large", errors.New("form too large"))
			return
		}
		form, err = url.ParseQuery(string(raw))
		if err != nil {
			fail(http.StatusBadRequest, "malformed form", err)
			return
		}
		if err := CheckForwarded(nil, "", form, p.Withhold); err != nil {
			fail(http.StatusUnauthorized, withheldMessage, err)
			return
		}
		upForm, err := p.UpstreamValues(form, via)
		if err != nil {
			fail(http.StatusBadRequest, refusalMessage(err), err)
			return
		}
		body = strings.NewReader(upForm.Encode())
	default:
		w.Header().Set("Allow", "GET, POST")
		fail(http.StatusMethodNotAllowed, "method not allowed", fmt.Errorf("method %s", r.Method))
		return
	}

	req, err := http.NewRequestWithContext(r.Context(), r.Method, up.String(), body)
	if err != nil {
		fail(http.StatusInternalServerError, "internal error", err)
		return
	}
	for _, h := range []string{"Authorization", "User-Agent", "Accept", "Accept-Language"} {
		if v := r.Header.Values(h); len(v) > 0 {
			req.Header[h] = v
		}
	}
	// Everything that would leave is examined, not only where clients
	// usually put credentials.
	if err := CheckForwarded(req.Header, req.URL.RawQuery, form, p.Withhold); err != nil {
		fail(http.StatusUnauthorized, withheldMessage, err)
		return
	}
	clientIP := p.ClientIP
	if clientIP == nil {
		clientIP = remoteHost
	}
	var guess *GuessAttempt
	account, login := loginOf(r, form)
	if login {
		var err error
		if guess, err = p.Guesses.Begin(r.Context(), clientIP(r), account); err != nil {
			setRetryAfter(w.Header(), err)
			fail(http.StatusTooManyRequests, "too many failed logins; try again later", err)
			return
		}
	}
	// Each forwarded request holds a connection to the token service
	// until it answers: one client's are bounded, so that it cannot
	// multiply them (TokenRequestsPerClient).
	release, err := p.inFlight.take(r.Context(), ClientKey(clientIP(r)))
	if err != nil {
		guess.Refund()
		setRetryAfter(w.Header(), err)
		fail(http.StatusTooManyRequests, "too many token requests from this address at once; try again later",
			fmt.Errorf("more than %d token requests of the client at once: %w", TokenRequestsPerClient, err))
		return
	}
	defer release()
	if body != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	// The client as the server determined it (behind trusted proxies,
	// the address they name), so that the token service's own limits
	// count clients, not this server or its load balancer.
	if ip := clientIP(r); ip != "" {
		req.Header.Set("X-Forwarded-For", ip)
	}
	client := p.Client
	if client == nil {
		client = defaultTokenClient
	}
	// A redirect is not followed: the token service's other addresses
	// are not this proxy's to visit, nor its client's to learn.
	c := *client
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Do(req)
	if err != nil {
		guess.Refund() // the token service's being down is not the client's doing
		logger.Warn("token service unreachable", zap.String("upstream", p.Upstream.Redacted()), zap.Error(err))
		unavailable(w, "token service unreachable")
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		guess.Refund()
		logger.Warn("token service redirected: configure the realm it redirects to",
			zap.String("upstream", p.Upstream.Redacted()), zap.Int("status", resp.StatusCode), zap.String("location", resp.Header.Get("Location")))
		unavailable(w, "token service redirected")
		return
	}
	// The answer is read whole, and only so much of it: a token answer is
	// a few KiB, and one streamed on unread could hold the client's
	// connection and this proxy's for as long as the token service likes
	// to send (the client's timeout bounds only its time).
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenAnswer+1))
	switch {
	case err != nil:
		guess.Refund()
		logger.Warn("token service answer cut short", zap.String("upstream", p.Upstream.Redacted()), zap.Error(err))
		unavailable(w, "token service answer cut short")
		return
	case len(answer) > maxTokenAnswer:
		guess.Refund()
		logger.Warn("token service answer too large", zap.String("upstream", p.Upstream.Redacted()),
			zap.Int("status", resp.StatusCode), zap.Int("max_bytes", maxTokenAnswer))
		unavailable(w, fmt.Sprintf("token service answer larger than %d bytes", maxTokenAnswer))
		return
	}
	// Only the token service's refusal of the credentials is a failed
	// login. Only a token it gave to the account is a good one, which
	// exempts the address from the account's bound: a 200 is no proof by
	// itself, since the token service may have checked other credentials
	// than the ones naming the account (a refresh token beside a
	// username, a Basic header before a password form) or none at all
	// (an anonymous token). Any other answer is refunded, proving nothing.
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		guess.End(false)
	case http.StatusOK:
		if guess == nil {
			break
		}
		if account != "" && tokenAnswerNames(answer, account) {
			guess.End(true)
		} else {
			guess.Refund()
		}
	default:
		guess.Refund()
	}
	copyTokenHeaders(w.Header(), resp.Header)
	w.Header().Set("Content-Length", strconv.Itoa(len(answer)))
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(answer)
}

// maxTokenAnswer bounds a token service's answer the proxy passes on; a
// longer one is answered 502. A token answer (a JWT or two with their
// scopes) is a few KiB; registries' own clients cap theirs near 1 MiB.
const maxTokenAnswer = 256 << 10

// tokenAnswerNames reports whether a token service's answer (JSON with
// `token` and/or `access_token`) holds at least one token, and every one
// of them is a JWT whose subject is account (compared as the guess
// bounds compare account names). Opaque tokens name nobody. body is at
// most maxTokenAnswer bytes (ServeHTTP refuses longer answers).
func tokenAnswerNames(body []byte, account string) bool {
	var tr struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
	}
	if json.Unmarshal(body, &tr) != nil {
		return false
	}
	seen := false
	for _, tok := range []string{tr.Token, tr.AccessToken} {
		if tok == "" {
			continue
		}
		parts := strings.Split(tok, ".")
		if len(parts) != 3 {
			return false
		}
		payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
		if err != nil {
			return false
		}
		var claims struct {
			Subject string `json:"sub"`
		}
		if json.Unmarshal(payload, &claims) != nil || claims.Subject == "" || accountKey(claims.Subject) != accountKey(account) {
			return false
		}
		seen = true
	}
	return seen
}

// errBasicMalformed is a Basic Authorization header Go's parser does not
// read.
var errBasicMalformed = errors.New("malformed Basic credentials")

// wellFormedBasic refuses a Basic Authorization header that r.BasicAuth
// does not read (two spaces or a tab after the scheme, base64 without
// padding or in the URL alphabet, no colon). The login bound counts the
// logins loginOf reads, and a token service with a lenient decoder
// (Ruby's Base64.decode64, a split and trim) checks such a password all
// the same: forwarded, it would be a guess no bound counts.
func wellFormedBasic(r *http.Request) error {
	fields := strings.Fields(r.Header.Get("Authorization"))
	if len(fields) == 0 || !strings.EqualFold(fields[0], "Basic") {
		return nil
	}
	if _, _, ok := r.BasicAuth(); !ok {
		return errBasicMalformed
	}
	return nil
}

// loginOf reports whether a token request carries credentials the token
// service checks (a Basic password, an OAuth2 password or refresh token,
// an Authorization header of another scheme), and the account they are
// for ("" when they name none, or the proxy cannot read it: the client's
// bound still counts them).
func loginOf(r *http.Request, form url.Values) (account string, ok bool) {
	user, pass, basic := r.BasicAuth()
	if basic && (user != "" || pass != "") {
		return user, true
	}
	if form.Get("password") != "" || form.Get("refresh_token") != "" {
		return form.Get("username"), true
	}
	if !basic && strings.TrimSpace(r.Header.Get("Authorization")) != "" {
		// Whatever the token service makes of it (a token of its own,
		// a scheme it reads), a 401 is a refused credential.
		return "", true
	}
	return "", false
}

// loggedParams are the token request parameters whose values a log may
// show; any other may hold a password, a refresh token or an API key.
var loggedParams = []string{"scope", "service", "ns", "prefix", "account", "client_id", "grant_type", "offline_token"}

// loggableQuery is q for the log, with the values of parameters other
// than loggedParams replaced by xxxxx.
func loggableQuery(q url.Values) string {
	out := make(url.Values, len(q))
	for k, vs := range q {
		if slices.Contains(loggedParams, k) {
			out[k] = vs
			continue
		}
		for range vs {
			out[k] = append(out[k], "xxxxx")
		}
	}
	s, _ := url.QueryUnescape(out.Encode())
	return s
}

// refusalMessage is what a client whose parameters UpstreamValues refused
// is told.
func refusalMessage(err error) string {
	if errors.Is(err, ErrParameterCase) {
		return err.Error() // names only the client's key and the one it spells
	}
	return "invalid scope"
}

func unavailable(w http.ResponseWriter, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadGateway)
	_, _ = fmt.Fprintf(w, `{"errors":[{"code":"UNAVAILABLE","message":%q}]}`+"\n", msg)
}

// tokenHeaders are the headers of a token service's answer that reach the
// client; the others (Location, Link, Set-Cookie, Server, ...) may name
// the token service's own addresses and hosts.
var tokenHeaders = []string{"Content-Type", "Cache-Control", "Pragma", "Expires", "Retry-After"}

// copyTokenHeaders copies tokenHeaders from the token service's answer,
// and its Basic challenges: a Bearer challenge would send the client to
// the token service's realm.
func copyTokenHeaders(dst, src http.Header) {
	for _, k := range tokenHeaders {
		if vs := src.Values(k); len(vs) > 0 {
			dst[k] = vs
		}
	}
	for _, h := range src.Values("Www-Authenticate") {
		if c, err := ParseChallenge(h); err == nil && strings.EqualFold(c.Scheme, "Basic") {
			dst.Add("Www-Authenticate", c.String())
		}
	}
}

// UpstreamValues turns a token request's query or form, as the client
// sent it through a realm carrying via, into what the token service gets:
// without the proxy's own parameters (ns, prefix), with every scope in
// internal names, and with the configured parameters (Upstream's query
// and Service) as configured, whatever the client sent for them. A scope
// that does not translate is an error wrapping ErrScopeRejected. A key
// that differs only in case from one of those (`Scope`, `SERVICE`) is an
// error wrapping ErrParameterCase: a token service that reads keys without
// regard to case would take it for the untranslated scope or an override
// of the pinned value.
//
// Of the client's other keys only tokenParams pass, each at most once
// (scope as often as it likes). Any other key is dropped: a token service
// reads none of them, and one that did would read it unchecked. A key
// that a token service may read as one of tokenParams or of the keys the
// proxy controls — in another case, or as a PHP-style array (`scope[]`,
// `scope[0]`, which PHP and Rack parse into `scope`) — is refused
// (ErrParameterCase), as is a repeated single-valued key (`account`
// twice: Go's servers read the first, PHP's the last): the client is told
// why, rather than getting a token without what it asked for.
func (p *TokenProxy) UpstreamValues(client url.Values, via Via) (url.Values, error) {
	pinned := p.pinned()
	for k, vs := range client {
		if ctl := p.controlledKey(k, pinned); ctl != "" && ctl != k {
			return nil, fmt.Errorf("%w: %q for %q", ErrParameterCase, k, ctl)
		}
		if _, pin := pinned[k]; len(vs) > 1 && k != "scope" && !pin && slices.Contains(tokenParams, k) {
			return nil, fmt.Errorf("%w: %q more than once", ErrParameterCase, k)
		}
	}
	out := make(url.Values, len(client))
	for k, vs := range client {
		switch {
		case k == realmParamNS, k == realmParamPrefix:
			continue
		case k != "scope" && !slices.Contains(tokenParams, k):
			continue
		case k == "scope":
			scopes := make([]string, len(vs))
			for i, s := range vs {
				t, err := TranslateScopes(p.Names, s, via)
				if err != nil {
					return nil, err
				}
				scopes[i] = t
			}
			vs = scopes
		}
		out[k] = slices.Clone(vs)
	}
	for k, vs := range pinned {
		if len(vs) == 0 {
			delete(out, k)
			continue
		}
		out[k] = slices.Clone(vs)
	}
	return out, nil
}

// tokenParams are the parameters of the Docker token and OAuth2 token
// requests (distribution's token spec), the only ones forwarded besides
// the pinned ones.
var tokenParams = []string{"scope", "service", "account", "client_id", "offline_token",
	"grant_type", "access_type", "username", "password", "refresh_token"}

// controlledKey is the key the proxy controls (translates, drops or pins)
// or forwards (tokenParams) that k may be read as — in any case, with
// leading blanks, or before a PHP-style `[...]` — or "" when k is none of
// them.
func (p *TokenProxy) controlledKey(k string, pinned url.Values) string {
	base := strings.TrimLeft(k, " \t")
	if i := strings.IndexByte(base, '['); i >= 0 {
		base = base[:i]
	}
	for _, c := range append([]string{realmParamNS, realmParamPrefix}, tokenParams...) {
		if strings.EqualFold(base, c) {
			return c
		}
	}
	for c := range pinned {
		if strings.EqualFold(base, c) {
			return c
		}
	}
	return ""
}

// pinned is every parameter the configuration fixes: Upstream's query,
// and service. A service that nothing configures maps to no value: the
// client's is dropped all the same.
func (p *TokenProxy) pinned() url.Values {
	v := p.Upstream.Query()
	if p.Service != "" {
		v["service"] = []string{p.Service}
	}
	if _, ok := v["service"]; !ok {
		v["service"] = nil
	}
	return v
}

// Check reports whether the proxy is configured to forward: Upstream an
// http(s) URL, and one service, named by Service or by Upstream's
// `service` parameter (both, only when they agree).
func (p *TokenProxy) Check() error {
	u := p.Upstream
	if u == nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("the token proxy needs the token service's realm as an http(s) URL")
	}
	inRealm := u.Query()["service"]
	switch {
	case len(inRealm) > 1:
		return fmt.Errorf("token realm %s names service more than once", u.Redacted())
	case len(inRealm) == 1 && p.Service != "" && inRealm[0] != p.Service:
		return fmt.Errorf("token realm %s names service %q, but the service is %q", u.Redacted(), inRealm[0], p.Service)
	case p.Service == "" && (len(inRealm) == 0 || inRealm[0] == ""):
		return errors.New("the token proxy needs the registry's service name at the token service: set service")
	}
	return nil
}
