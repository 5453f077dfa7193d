// Package upstream is a mirror's HTTP client for one remote registry: the
// Docker token dance (anonymous or with credentials, tokens reused until
// they expire), 429 and 5xx retried with backoff that honours Retry-After,
// and failover across the configured URLs on connection errors and 5xx.
// It knows the distribution API's URL shapes and error envelope, nothing
// of the store.
//
// Everything upstream says is hostile until checked. Redirects are
// followed only for blobs (registries send those to storage, and the
// digest checks what comes back), never from https to http, never to
// link-local addresses (cloud metadata), to loopback or private networks
// only from an upstream that is there itself (checked before the request
// and again on each address the dial connects to), and carry
// credentials only back to the origin they were sent to. A challenge's
// token realm gets a request only when it is https, or plain http on the
// upstream's own host name when the upstream itself is plain http (a
// registry and its token service on a private network): a realm that
// downgrades an https upstream, or points plain http at another host, is
// refused before anything is sent to it.
package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddy-oci/caddy-oci/internal/outbound"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/internal/configfile"
)

// Config describes one remote registry.
type Config struct {
	// URLs are tried in order; the next one is used when one cannot be
	// reached or keeps answering 5xx. A URL's path, if any, is put before
	// the repository name (`https://mirror.example/docker.io` asks for
	// `/v2/docker.io/<repo>/...`).
	URLs []string
	// Username and Password are sent to the token service (or as Basic
	// auth to a registry that asks for it). Empty: anonymous.
	Username, Password string
	// CAFile adds a PEM bundle to the trusted roots.
	CAFile string
	// InsecureSkipVerify disables TLS verification (loopback tests only).
	InsecureSkipVerify bool
	// Attempts per URL for 429 and 5xx answers. Default 3.
	Attempts int
	// RetryDelay is the wait before the first retry without a
	// Retry-After; each later one doubles it (with jitter), up to
	// MaxRetryWait. Default 100ms.
	RetryDelay time.Duration
	// MaxRetryWait caps one wait between attempts; a Retry-After longer
	// than this is not waited for. Default 5s, or RetryDelay if longer.
	MaxRetryWait time.Duration
	// DialTimeout bounds connecting to upstream or its token service: TCP
	// and the TLS handshake each. Default 10s.
	DialTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for the headers of one
	// answer, once the request is sent. Default 30s.
	ResponseHeaderTimeout time.Duration
	// Transport overrides the HTTP transport (tests). The address rule
	// for redirects and token realms is then only checked before each
	// request, not at the dial: that is the default transport's.
	Transport http.RoundTripper
	Logger    *zap.Logger
	// OnResponse, if set, is called once per HTTP exchange with upstream
	// (token requests included) with its method and status; status 0 is a
	// connection failure.
	OnResponse func(method string, status int)
	// OnWait, if set, is called once per HTTP exchange that got an answer
	// with how long upstream took to send its headers (redirects it sent
	// followed), by what was asked: "manifest", "blob", "token" or
	// "other". That wait is upstream's share of a cold pull's first byte.
	OnWait func(kind string, wait time.Duration)
	// OnAnswer, if set, is told the outcome of each Do (after retries
	// and failover): the mirror remembers upstream's "not found" for a
	// while, and forgets it once upstream has the content (mirror_misses.go).
	OnAnswer func(repo, path string, resp *http.Response, err error)

	// resolver looks up host names, for the address rule and the dial
	// alike (tests: a DNS server whose answers they choose). Nil: the
	// system's.
	resolver *net.Resolver
	// proxy picks a request's HTTP proxy (tests). Nil: the environment's
	// (HTTPS_PROXY, HTTP_PROXY, NO_PROXY).
	proxy func(*http.Request) (*url.URL, error)
}

// Error is an upstream answer that was not a success, or a failure to get
// one (Status 0). Its text names upstream's address and what upstream
// said: it is for logs, never for the mirror's clients.
type Error struct {
	Status  int
	Code    string // from the upstream's error envelope, if any
	Message string
	Err     error // transport failure, when Status is 0
	// RetryAfter is upstream's Retry-After on a 429 or 503 (seconds or
	// an HTTP date), at most MaxRetryAfter; 0 when it sent none, a zero
	// or a date past, or something that is neither.
	RetryAfter time.Duration
}

// MaxRetryAfter bounds the Retry-After an Error carries: an upstream
// asking for longer is asked again after this anyway.
const MaxRetryAfter = time.Hour

func (e *Error) Error() string {
	switch {
	case e.Status == 0:
		return "upstream unreachable: " + e.Err.Error()
	case e.Code != "":
		return fmt.Sprintf("upstream answered %d %s: %s", e.Status, e.Code, e.Message)
	default:
		return fmt.Sprintf("upstream answered %d", e.Status)
	}
}

func (e *Error) Unwrap() error { return e.Err }

// Timeout reports whether upstream did not answer in time: no
// connection, no response headers or a stalled body within the limits,
// or the caller's deadline passed.
func (e *Error) Timeout() bool {
	if e.Status != 0 || e.Err == nil {
		return false
	}
	var ne net.Error
	return errors.Is(e.Err, context.DeadlineExceeded) || (errors.As(e.Err, &ne) && ne.Timeout())
}

// Temporary reports whether the failure says nothing about the content:
// upstream unreachable, overloaded or failing. A cached copy may then be
// served instead (stale-if-error).
func (e *Error) Temporary() bool {
	return e.Status == 0 || e.Status == http.StatusTooManyRequests || e.Status >= 500 ||
		e.Status == http.StatusRequestTimeout
}

// Client talks to one remote registry. Safe for concurrent use. New does
// not contact the registry.
type Client struct {
	bases    []*url.URL
	user     string
	pass     string
	hc       *http.Client
	attempts int
	delay    time.Duration
	maxWait  time.Duration
	log      *zap.Logger
	onResp   func(string, int)
	onWait   func(string, time.Duration)
	onAnswer func(repo, path string, resp *http.Response, err error)
	now      func() time.Time // the clock tokens expire by; tests move it
	resolver *net.Resolver

	mu     sync.Mutex
	tokens map[string]token // by tokenKey
	// tokenBytes is what tokens holds, counted as keptTokenCost does.
	tokenBytes int64
	basic      map[string]bool // hosts that asked for Basic auth
	// bearer: each host's last Bearer challenge, scope dropped. A
	// repository's first request fetches its token with it up front
	// instead of learning the realm from a 401 (one round trip less).
	bearer map[string]authscope.Challenge
	sf     singleflight.Group
	// holdUntil is, per upstream URL, when it last asked, with a 429
	// (or a 503 with a Retry-After), to be left alone until. No request is sent to
	// it before (a pull gets the 429 at once), and scheduled sync waits
	// for it (HoldUntil): otherwise every pull, made-up names included,
	// went on asking a rate-limited upstream, up to Attempts times each,
	// and kept the mirror's address or account limited for everyone.
	holdUntil map[*url.URL]time.Time
	// holdStatus is the status (429 or 503) that set each hold, which
	// the requests it refuses answer with.
	holdStatus map[*url.URL]int
	// held429s counts, per upstream URL, the 429s without Retry-After
	// since its last success: each doubles the hold (from RetryDelay, up
	// to MaxRetryWait), as Docker Hub's pull limit sends none.
	held429s map[*url.URL]int
}

type token struct {
	value   string
	expires time.Time
}

// Tokens are kept per repository, and the repositories are the callers'
// to choose: a pull of any made-up name under a mirror's prefix fetches a
// token (Docker Hub hands out anonymous ones, about 4 KiB each, for names
// it does not have), and nothing dropped them. 60,000 anonymous GETs of
// made-up names grew a mirror by 325 MiB, for good. So what they hold is
// bounded: past tokenBytesMax, the expired ones go, then arbitrary ones
// until a quarter is free (a sweep per quarter of the budget, not one per
// token). A token dropped early costs its repository one token request.
const (
	tokenBytesMax = 16 << 20
	// tokenEntryCost is what a kept token costs besides its key and value.
	tokenEntryCost = 64
)

func keptTokenCost(key string, t token) int64 {
	return int64(len(key)+len(t.value)) + tokenEntryCost
}

// keepToken keeps t under key within tokenBytesMax (c.mu held).
func (c *Client) keepToken(key string, t token) {
	if old, ok := c.tokens[key]; ok {
		c.tokenBytes -= keptTokenCost(key, old)
		delete(c.tokens, key)
	}
	cost := keptTokenCost(key, t)
	if cost > tokenBytesMax/4 {
		return // used by the request that fetched it, not kept
	}
	if c.tokenBytes+cost > tokenBytesMax {
		now := c.now()
		for k, old := range c.tokens {
			if !now.Before(old.expires) {
				c.tokenBytes -= keptTokenCost(k, old)
				delete(c.tokens, k)
			}
		}
		for k, old := range c.tokens {
			if c.tokenBytes+cost <= tokenBytesMax*3/4 {
				break
			}
			c.tokenBytes -= keptTokenCost(k, old)
			delete(c.tokens, k)
		}
	}
	c.tokens[key] = t
	c.tokenBytes += cost
}

// New checks cfg and returns a Client.
func New(cfg Config) (*Client, error) {
	if len(cfg.URLs) == 0 {
		return nil, errors.New("upstream: no URL")
	}
	c := &Client{
		user: cfg.Username, pass: cfg.Password,
		attempts: cfg.Attempts, delay: cfg.RetryDelay, maxWait: cfg.MaxRetryWait,
		log: cfg.Logger, onResp: cfg.OnResponse, onWait: cfg.OnWait, onAnswer: cfg.OnAnswer,
		tokens: map[string]token{}, basic: map[string]bool{},
		bearer: map[string]authscope.Challenge{},
		now:    time.Now,
	}
	if c.attempts <= 0 {
		c.attempts = 3
	}
	if c.delay <= 0 {
		c.delay = 100 * time.Millisecond
	}
	if c.maxWait <= 0 {
		c.maxWait = max(5*time.Second, c.delay)
	}
	if c.log == nil {
		c.log = zap.NewNop()
	}
	if c.onResp == nil {
		c.onResp = func(string, int) {}
	}
	if c.onWait == nil {
		c.onWait = func(string, time.Duration) {}
	}
	for _, s := range cfg.URLs {
		u, err := parseBase(s)
		if err != nil {
			return nil, err
		}
		c.bases = append(c.bases, u)
	}
	dial, header := cfg.DialTimeout, cfg.ResponseHeaderTimeout
	if dial <= 0 {
		dial = 10 * time.Second
	}
	if header <= 0 {
		header = 30 * time.Second
	}
	c.resolver = cfg.resolver
	if c.resolver == nil {
		c.resolver = net.DefaultResolver
	}
	rt := cfg.Transport
	if rt == nil {
		tc := &tls.Config{
			InsecureSkipVerify: cfg.InsecureSkipVerify, //nolint:gosec // operator's choice, for loopback tests
			// Each new connection (parallel layers, storage redirects)
			// resumes a session instead of a full handshake.
			ClientSessionCache: tls.NewLRUClientSessionCache(0),
		}
		if cfg.CAFile != "" {
			pem, err := configfile.Read(cfg.CAFile)
			if err != nil {
				return nil, fmt.Errorf("upstream: CA file: %w", err)
			}
			pool, err := x509.SystemCertPool()
			if err != nil {
				pool = x509.NewCertPool()
			}
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("upstream: no certificate in %s", cfg.CAFile)
			}
			tc.RootCAs = pool
		}
		proxy := cfg.proxy
		if proxy == nil {
			proxy = http.ProxyFromEnvironment
		}
		rt = newGuardedTransport(&http.Transport{
			Proxy:                  proxy,
			TLSClientConfig:        tc,
			TLSHandshakeTimeout:    dial,
			ResponseHeaderTimeout:  header,
			ForceAttemptHTTP2:      true,
			MaxResponseHeaderBytes: MaxResponseHeaderBytes,
			MaxIdleConnsPerHost:    32,
			IdleConnTimeout:        90 * time.Second,
		}, dial, c.resolver)
	}
	c.hc = &http.Client{Transport: rt, CheckRedirect: c.checkRedirect}
	return c, nil
}

// parseBase checks one configured upstream URL. Credentials belong in
// Username and Password, where they are sent only as upstream asks; in the
// URL they would reach every log line that names it. No error repeats
// what may be a password.
func parseBase(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		shown := s
		if i := strings.LastIndex(s, "@"); i >= 0 {
			shown = "…" + s[i:]
		}
		if !strings.Contains(s, "://") && !strings.Contains(s, "@") {
			// "ghcr.io": a host where a URL belongs.
			return nil, fmt.Errorf("upstream: %q is not an http(s) URL; write https://%s", shown, s)
		}
		return nil, fmt.Errorf("upstream: %q is not an http(s) URL", shown)
	}
	if u.User != nil {
		return nil, fmt.Errorf("upstream %s: credentials do not belong in the URL; set username and password instead", u.Redacted())
	}
	u.Path = strings.Trim(u.Path, "/")
	return u, nil
}

// CheckURL checks an upstream URL as New does, for config parsers that
// want to point at the line that names it.
func CheckURL(s string) error {
	_, err := parseBase(s)
	return err
}

// MaxResponseHeaderBytes bounds the headers of one answer from upstream,
// a blob's storage or a token service: outbound's bound, shared by every
// client of the process.
const MaxResponseHeaderBytes = outbound.MaxResponseHeaderBytes

// maxRedirects bounds a blob's redirect chain; registries use one or two.
const maxRedirects = 5

// redirectsKey marks, in a request's context, a request that may follow
// redirects (a blob's).
type redirectsKey struct{}

var (
	errTooManyRedirects = errors.New("upstream: too many redirects")
	errDowngrade        = errors.New("upstream: redirect from https to http refused")
)

// checkRedirect is the redirect policy of every request to upstream.
// Manifests, tag lists, referrers and tokens must come from where they
// were asked for: their redirect is not followed but answered as it came
// (an error to the caller). A blob may go elsewhere (storage), never to
// plain http once on https, never into networks checkTarget keeps upstream
// out of, and with credentials only while scheme, host and port stay those
// of the request the client sent. The dial of such a hop applies the
// same rule to each address it connects to (guardedTransport).
func (c *Client) checkRedirect(req *http.Request, via []*http.Request) error {
	if follow, _ := req.Context().Value(redirectsKey{}).(bool); !follow {
		return http.ErrUseLastResponse
	}
	if len(via) >= maxRedirects {
		return errTooManyRedirects
	}
	for _, prev := range via {
		if prev.URL.Scheme == "https" && req.URL.Scheme != "https" {
			return errDowngrade
		}
	}
	if !sameOrigin(req.URL, via[0].URL) {
		if err := checkTarget(req.Context(), c.resolver, req.URL, via[0].URL); err != nil {
			return err
		}
		// net/http keeps them for a subdomain or another port.
		req.Header.Del("Authorization")
		req.Header.Del("Cookie")
	}
	return nil
}

// sameOrigin reports whether a and b have the same scheme, host and port.
func sameOrigin(a, b *url.URL) bool {
	return a.Scheme == b.Scheme && strings.EqualFold(a.Hostname(), b.Hostname()) && port(a) == port(b)
}

func port(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	if u.Scheme == "https" {
		return "443"
	}
	return "80"
}

// realmAllowed is the rule for a challenge's token realm (see the package
// doc): https anywhere, plain http only on a plain-http upstream's own
// host name, never with credentials in the URL.
func realmAllowed(base, realm *url.URL) bool {
	if realm.Host == "" || realm.User != nil {
		return false
	}
	switch realm.Scheme {
	case "https":
		return true
	case "http":
		return base.Scheme == "http" && strings.EqualFold(realm.Hostname(), base.Hostname())
	}
	return false
}

// Do sends method to /v2/<repo>/<path> (path may carry a query; an empty
// repo sends to /v2/<path>, for _catalog, with the catalog's token scope) on the
// first URL that answers, authenticating as upstream asks, and returns the
// response when it is a success (2xx, or 304). Any other answer is
// returned as *Error, with the body read and closed.
func (c *Client) Do(ctx context.Context, method, repo, path string, hdr http.Header) (*http.Response, error) {
	resp, err := c.do(ctx, method, repo, path, hdr)
	if c.onAnswer != nil {
		c.onAnswer(repo, path, resp, err)
	}
	return resp, err
}

func (c *Client) do(ctx context.Context, method, repo, path string, hdr http.Header) (*http.Response, error) {
	var last error
	for _, base := range c.bases {
		resp, err := c.tryBase(ctx, base, method, repo, path, hdr)
		if err == nil {
			return resp, nil
		}
		last = err
		var ue *Error
		if ctx.Err() != nil || !errors.As(err, &ue) || !(ue.Status == 0 || ue.Status >= 500 || ue.Status == http.StatusTooManyRequests) {
			return nil, err
		}
		c.log.Debug("upstream failed, trying the next", zap.String("url", base.Redacted()), zap.Error(err))
	}
	return nil, last
}

// tryBase is Do against one URL, with retries of 429 and 5xx.
func (c *Client) tryBase(ctx context.Context, base *url.URL, method, repo, path string, hdr http.Header) (*http.Response, error) {
	for attempt := 1; ; attempt++ {
		if until, status := c.held(base); !until.IsZero() {
			return nil, &Error{Status: status,
				Message:    "not asked: upstream asked to be left alone until " + until.UTC().Format(time.RFC3339Nano),
				RetryAfter: until.Sub(c.now())}
		}
		resp, err := c.authorized(ctx, base, method, repo, path, hdr)
		if err != nil {
			// The token service base sends its requests to limits the
			// mirror: base is left alone as if it answered so, or every
			// pull of a made-up name would go on asking it for tokens.
			var ue *Error
			if errors.As(err, &ue) && (ue.Status == http.StatusTooManyRequests ||
				ue.Status == http.StatusServiceUnavailable && ue.RetryAfter > 0) {
				c.hold(base, ue.Status, ue.RetryAfter)
			}
			return nil, err
		}
		if resp.StatusCode < 300 || resp.StatusCode == http.StatusNotModified {
			c.unhold(base)
			return resp, nil
		}
		uerr := readError(resp)
		if resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode < 500 {
			return nil, uerr
		}
		switch {
		case resp.StatusCode == http.StatusTooManyRequests:
			c.hold(base, resp.StatusCode, uerr.RetryAfter)
		case resp.StatusCode == http.StatusServiceUnavailable && uerr.RetryAfter > 0:
			// Unavailable for a time it names: an upstream that is
			// down for maintenance or overloaded is left alone as a
			// rate-limited one is (a 5xx without one may be one
			// repository's fault, and holds nothing).
			c.hold(base, resp.StatusCode, uerr.RetryAfter)
		}
		wait, ok := c.retryWait(uerr.RetryAfter, attempt)
		if !ok || attempt >= c.attempts {
			return nil, uerr
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, &Error{Err: ctx.Err()}
		}
	}
}

// retryWait is how long to wait before attempt+1: the server's
// Retry-After if given (false when longer than the cap), else exponential
// backoff with jitter.
func (c *Client) retryWait(retryAfter time.Duration, attempt int) (time.Duration, bool) {
	if retryAfter > c.maxWait {
		return 0, false
	}
	if retryAfter > 0 {
		return retryAfter, true
	}
	// Doubling stops at maxWait before it can overflow (max_retries has
	// no upper bound): a negative wait would panic in rand.Int64N.
	d := c.maxWait
	if shift := attempt - 1; shift < 63 && c.delay <= c.maxWait>>shift {
		d = c.delay << shift
	}
	if j := time.Duration(rand.Int64N(int64(d)/2 + 1)); d <= c.maxWait-j {
		d += j
	} else {
		d = c.maxWait
	}
	return d, true
}

// hold records base's request to be left alone for wait (a 429's
// Retry-After; none given: RetryDelay, doubled by each such 429 since
// base's last success, up to MaxRetryWait).
func (c *Client) hold(base *url.URL, status int, wait time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.holdUntil == nil {
		c.holdUntil = make(map[*url.URL]time.Time, len(c.bases))
		c.holdStatus = make(map[*url.URL]int, len(c.bases))
		c.held429s = make(map[*url.URL]int, len(c.bases))
	}
	if wait <= 0 {
		n := c.held429s[base]
		c.held429s[base] = n + 1
		wait = c.maxWait
		if n < 63 && c.delay <= c.maxWait>>n {
			wait = c.delay << n
		}
	}
	if until := c.now().Add(wait); until.After(c.holdUntil[base]) {
		c.holdUntil[base], c.holdStatus[base] = until, status
	}
}

// unhold forgets base's 429s without Retry-After once it answers.
func (c *Client) unhold(base *url.URL) {
	c.mu.Lock()
	delete(c.held429s, base)
	c.mu.Unlock()
}

// held is when base's hold ends, zero when it is not held, and the
// status that set it.
func (c *Client) held(base *url.URL) (time.Time, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if until := c.holdUntil[base]; until.After(c.now()) {
		return until, c.holdStatus[base]
	}
	return time.Time{}, 0
}

// HoldUntil is when the first upstream URL that a 429 asked to be left
// alone, to any user of the client, may be asked again; zero when one of
// them is not held. Background work (scheduled sync) waits for it before
// its next request, so a rate limit one pull ran into slows the prefetch
// too.
func (c *Client) HoldUntil() time.Time {
	var first time.Time
	for _, base := range c.bases {
		until, _ := c.held(base)
		if until.IsZero() {
			return time.Time{}
		}
		if first.IsZero() || until.Before(first) {
			first = until
		}
	}
	return first
}

// authorized sends the request with what the host asked for last time;
// on a 401 it answers the challenge once and sends again.
func (c *Client) authorized(ctx context.Context, base *url.URL, method, repo, path string, hdr http.Header) (*http.Response, error) {
	tok, hostCh, due := c.tokenDue(base, repo)
	if due {
		var err error
		if tok, err = c.fetchToken(ctx, base, repo, hostCh); err != nil {
			return nil, err
		}
	}
	resp, err := c.send(ctx, base, method, repo, path, hdr, tok)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	chs := resp.Header.Values("WWW-Authenticate")
	uerr := readError(resp)
	var ch authscope.Challenge
	for _, h := range chs {
		if parsed, err := authscope.ParseChallenge(h); err == nil {
			ch = parsed
			if strings.EqualFold(parsed.Scheme, "Bearer") {
				break
			}
		}
	}
	switch {
	case strings.EqualFold(ch.Scheme, "Bearer"):
		if tok, err = c.fetchToken(ctx, base, repo, ch); err != nil {
			return nil, err
		}
		hostwide := authscope.Challenge{Scheme: ch.Scheme, Params: slices.Clone(ch.Params)}
		hostwide.Del("scope") // another repository's token asks its own
		c.mu.Lock()
		c.bearer[base.Host] = hostwide
		c.mu.Unlock()
	case strings.EqualFold(ch.Scheme, "Basic") && c.user != "":
		c.mu.Lock()
		c.basic[base.Host] = true
		c.mu.Unlock()
	default:
		return nil, uerr
	}
	return c.send(ctx, base, method, repo, path, hdr, tok)
}

// tokenDue returns repo's live token at base's host, if one is kept;
// without one, the host's Bearer challenge (due) when the host asked for
// tokens before, so this request would only earn a 401 naming the same
// realm.
func (c *Client) tokenDue(base *url.URL, repo string) (tok string, ch authscope.Challenge, due bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.tokens[tokenKey(base, repo)]; ok && c.now().Before(t.expires) {
		return t.value, ch, false
	}
	ch, due = c.bearer[base.Host]
	return "", ch, due
}

// send sends one request, with bearer as its token when not empty (the
// one the caller found or fetched: kept tokens may be dropped meanwhile,
// see tokenBytesMax), else with the mirror's credentials when the host
// asked for Basic.
func (c *Client) send(ctx context.Context, base *url.URL, method, repo, path string, hdr http.Header, bearer string) (*http.Response, error) {
	name := upstreamName(base, repo)
	u := base.Scheme + "://" + base.Host + "/v2/" + name + "/" + path
	if name == "" {
		u = base.Scheme + "://" + base.Host + "/v2/" + path // registry-wide: _catalog
	}
	ctx = withOrigin(ctx, base)
	if strings.HasPrefix(path, "blobs/") {
		ctx = context.WithValue(ctx, redirectsKey{}, true)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, &Error{Err: err}
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	// Blobs and manifests are the bytes their digests name. Without this,
	// Go asks for gzip and decodes any Content-Encoding: gzip, so a layer
	// (gzip data itself) that storage labels so would arrive as other
	// bytes and fail its digest. Kept on redirects.
	req.Header.Set("Accept-Encoding", "identity")
	c.mu.Lock()
	basic := c.basic[base.Host]
	c.mu.Unlock()
	switch {
	case bearer != "":
		req.Header.Set("Authorization", "Bearer "+bearer)
	case basic:
		req.SetBasicAuth(c.user, c.pass)
	}
	start := time.Now()
	resp, err := c.hc.Do(req)
	if err != nil {
		c.onResp(method, 0)
		return nil, &Error{Err: err}
	}
	c.onResp(method, resp.StatusCode)
	c.onWait(pathKind(path), time.Since(start))
	return resp, nil
}

// pathKind is what a request of path (below the repository) asks for,
// a fixed word for metrics.
func pathKind(path string) string {
	switch {
	case strings.HasPrefix(path, "manifests/"):
		return "manifest"
	case strings.HasPrefix(path, "blobs/"):
		return "blob"
	default:
		return "other"
	}
}

// upstreamName is repo as the upstream at base names it: after base's
// path, if any.
func upstreamName(base *url.URL, repo string) string {
	if base.Path == "" {
		return repo
	}
	return strings.TrimSuffix(base.Path+"/"+repo, "/")
}

// tokenKey is where repo's token at base is kept: by host and the name
// requests carry, as two URLs on one host under different paths name a
// repository differently, and a token is for one name. The registry-wide
// token ("", the catalog's) keeps a key no name has.
func tokenKey(base *url.URL, repo string) string {
	if repo == "" {
		return base.Host + " "
	}
	return base.Host + " " + upstreamName(base, repo)
}

// fetchToken gets a pull token for repo from the challenge's realm and
// keeps it for later requests to the same host and repository. Concurrent
// callers for one key share one token request.
func (c *Client) fetchToken(ctx context.Context, base *url.URL, repo string, ch authscope.Challenge) (string, error) {
	key := tokenKey(base, repo)
	v, err, _ := c.sf.Do(key, func() (any, error) {
		realm, _ := ch.Get("realm")
		ru, err := url.Parse(realm)
		if err != nil || !realmAllowed(base, ru) {
			shown := "unparsable"
			if err == nil {
				shown = ru.Redacted()
			}
			return nil, &Error{Status: http.StatusUnauthorized, Code: "UNAUTHORIZED",
				Message: fmt.Sprintf("token realm %q refused: not https, nor http on the host of %s", shown, base.Redacted())}
		}
		refused := func(ru *url.URL) *Error {
			return &Error{Status: http.StatusUnauthorized, Code: "UNAUTHORIZED",
				Message: fmt.Sprintf("token realm %q refused: an internal address %s may not send the mirror to", ru.Redacted(), base.Redacted())}
		}
		if err := checkTarget(ctx, c.resolver, ru, base); err != nil {
			// The realm gets the mirror's credentials: the same networks
			// are closed to it as to a blob redirect (and its dial is held
			// to them too, see guardedTransport).
			return nil, refused(ru)
		}
		q := ru.Query()
		if svc, ok := ch.Get("service"); ok {
			q.Set("service", svc)
		}
		// The name the requests carry, prefix and all: a token for the
		// name without it earns a 401 and a second token request.
		scope := "repository:" + upstreamName(base, repo) + ":pull"
		if repo == "" {
			scope = "registry:catalog:*"
		}
		if s, ok := ch.Get("scope"); ok && s != "" {
			scope = s
		}
		q.Set("scope", scope)
		ru.RawQuery = q.Encode()
		req, err := http.NewRequestWithContext(withOrigin(ctx, base), http.MethodGet, ru.String(), nil)
		if err != nil {
			return nil, &Error{Err: err}
		}
		if c.user != "" {
			req.SetBasicAuth(c.user, c.pass)
		}
		start := time.Now()
		resp, err := c.hc.Do(req)
		if err != nil {
			c.onResp(http.MethodGet, 0)
			if errors.Is(err, errInternalAddress) {
				// The realm's name answered a refused address when dialled.
				return nil, refused(ru)
			}
			return nil, &Error{Err: fmt.Errorf("token service: %w", err)}
		}
		c.onResp(http.MethodGet, resp.StatusCode)
		c.onWait("token", time.Since(start))
		if resp.StatusCode != http.StatusOK {
			e := readError(resp)
			if e.Message == "" {
				e.Message = "token service refused"
			}
			return nil, e
		}
		defer resp.Body.Close()
		var tr struct {
			Token       string    `json:"token"`
			AccessToken string    `json:"access_token"`
			ExpiresIn   int       `json:"expires_in"`
			IssuedAt    time.Time `json:"issued_at"`
		}
		if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&tr); err != nil {
			return nil, &Error{Status: http.StatusBadGateway, Message: "token service answer unreadable", Err: err}
		}
		t := tr.Token
		if t == "" {
			t = tr.AccessToken
		}
		if t == "" {
			return nil, &Error{Status: http.StatusBadGateway, Message: "token service sent no token"}
		}
		life := time.Duration(tr.ExpiresIn) * time.Second
		if life <= 0 {
			life = 60 * time.Second
		}
		// Renew a little early so a token does not expire in flight.
		life -= life / 10
		c.mu.Lock()
		c.keepToken(key, token{value: t, expires: c.now().Add(life)})
		c.mu.Unlock()
		return t, nil
	})
	if err != nil {
		return "", err
	}
	return v.(string), nil
}

// readError turns a failed response into an *Error, reading (a bounded
// part of) the body and closing it.
func readError(resp *http.Response) *Error {
	defer resp.Body.Close()
	e := &Error{Status: resp.StatusCode}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		e.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var env struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if json.Unmarshal(body, &env) == nil && len(env.Errors) > 0 {
		e.Code, e.Message = env.Errors[0].Code, env.Errors[0].Message
	}
	return e
}

// parseRetryAfter reads a Retry-After value (RFC 9110: delay-seconds or
// an HTTP date) as a delay from now, at most MaxRetryAfter. Anything else,
// a negative number or a date past is 0.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	if v[0] >= '0' && v[0] <= '9' {
		secs, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			if !errors.Is(err, strconv.ErrRange) {
				return 0
			}
			return MaxRetryAfter
		}
		if secs >= uint64(MaxRetryAfter/time.Second) {
			return MaxRetryAfter
		}
		d = time.Duration(secs) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), MaxRetryAfter)
}
