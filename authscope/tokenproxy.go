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
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"
)

// maxTokenForm bounds an OAuth2 token request body.
const maxTokenForm = 64 << 10

// ErrScopeRejected is a token request scope the proxy will not forward.
var ErrScopeRejected = errors.New("scope rejected")

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
// Authorization through, and returns the response as it came.
type TokenProxy struct {
	// Upstream is the token service's URL (its realm).
	Upstream *url.URL
	Names    *Names
	// Client makes the upstream requests; nil means a client with a 30s
	// timeout that passes redirects back to the client.
	Client *http.Client
	Logger *zap.Logger
	// Withhold reports whether a password or token is one of this
	// server's own credentials (a workload token, say), which the token
	// service does not know and must never see. API keys are always
	// withheld.
	Withhold func(secret string) bool
}

// errWithheld refuses a token request that carries this server's own
// credentials.
var errWithheld = errors.New("credentials for this registry, not for its token service")

const withheldMessage = "API keys and workload tokens are accepted by the registry itself, not by its token service: send them as Basic credentials to /v2/"

// withheld reports whether r or its form carries a credential that must
// not leave this server.
func (p *TokenProxy) withheld(r *http.Request, form url.Values) bool {
	own := func(s string) bool {
		return s != "" && (IsAPIKey(s) || (p.Withhold != nil && p.Withhold(s)))
	}
	if _, pass, ok := r.BasicAuth(); ok && own(pass) {
		return true
	}
	if scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") && own(strings.TrimSpace(tok)) {
		return true
	}
	return own(form.Get("password")) || own(form.Get("refresh_token"))
}

// defaultTokenClient hands a redirect of the token service back to the
// client as it came rather than follow it: the request carries the
// client's credentials, which net/http would pass on to another port of
// the same host or to a subdomain.
var defaultTokenClient = &http.Client{
	Timeout:       30 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// ServeHTTP implements http.Handler.
func (p *TokenProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	logger := p.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	fail := func(status int, msg string, err error) {
		logger.Info("token request refused", zap.Int("status", status), zap.String("reason", err.Error()),
			zap.String("uri", r.RequestURI), zap.String("remote", r.RemoteAddr))
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		code := "UNSUPPORTED"
		if status == http.StatusUnauthorized {
			code = "UNAUTHORIZED"
		}
		_, _ = fmt.Fprintf(w, `{"errors":[{"code":"%s","message":%q}]}`+"\n", code, msg)
	}
	q := r.URL.Query()
	via := Via{Host: r.Host, NS: q.Get(realmParamNS), PathPrefix: q.Get(realmParamPrefix)}
	q.Del(realmParamNS)
	q.Del(realmParamPrefix)
	if err := translateValues(p.Names, q, via); err != nil {
		fail(http.StatusBadRequest, "invalid scope", err)
		return
	}

	up := *p.Upstream
	uq := up.Query()
	for k, vs := range q {
		uq[k] = vs
	}
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
		if err := translateValues(p.Names, form, via); err != nil {
			fail(http.StatusBadRequest, "invalid scope", err)
			return
		}
		body = strings.NewReader(form.Encode())
	default:
		w.Header().Set("Allow", "GET, POST")
		fail(http.StatusMethodNotAllowed, "method not allowed", fmt.Errorf("method %s", r.Method))
		return
	}

	if p.withheld(r, form) {
		fail(http.StatusUnauthorized, withheldMessage, errWithheld)
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
	if body != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		req.Header.Set("X-Forwarded-For", host)
	}
	client := p.Client
	if client == nil {
		client = defaultTokenClient
	}
	resp, err := client.Do(req)
	if err != nil {
		logger.Warn("token service unreachable", zap.String("upstream", p.Upstream.Redacted()), zap.Error(err))
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadGateway)
		_, _ = io.WriteString(w, `{"errors":[{"code":"UNAVAILABLE","message":"token service unreachable"}]}`+"\n")
		return
	}
	defer resp.Body.Close()
	for k, vs := range resp.Header {
		if hopByHop(k) {
			continue
		}
		w.Header()[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}

// translateValues rewrites every `scope` value of q in place.
func translateValues(names *Names, q url.Values, v Via) error {
	scopes := q["scope"]
	for i, s := range scopes {
		t, err := TranslateScopes(names, s, v)
		if err != nil {
			return err
		}
		scopes[i] = t
	}
	return nil
}

func hopByHop(h string) bool {
	switch http.CanonicalHeaderKey(h) {
	case "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}
