// Package upstream is a mirror's HTTP client for one remote registry: the
// Docker token dance (anonymous or with credentials, tokens reused until
// they expire), 429 and 5xx retried with backoff that honours Retry-After,
// and failover across the configured URLs on connection errors and 5xx.
// It knows the distribution API's URL shapes and error envelope, nothing
// of the store.
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
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/caddy-oci/caddy-oci/authscope"
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
	// MaxRetryWait caps one wait between attempts; a Retry-After longer
	// than this is not waited for. Default 5s.
	MaxRetryWait time.Duration
	// Transport overrides the HTTP transport (tests).
	Transport http.RoundTripper
	Logger    *zap.Logger
	// OnResponse, if set, is called once per HTTP exchange with upstream
	// (token requests included) with its method and status; status 0 is a
	// connection failure.
	OnResponse func(method string, status int)
}

// Error is an upstream answer that was not a success, or a failure to get
// one (Status 0).
type Error struct {
	Status  int
	Code    string // from the upstream's error envelope, if any
	Message string
	Err     error // transport failure, when Status is 0
}

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
	maxWait  time.Duration
	log      *zap.Logger
	onResp   func(string, int)
	now      func() time.Time // the clock tokens expire by; tests move it

	mu     sync.Mutex
	tokens map[string]token // by host + repository
	basic  map[string]bool  // hosts that asked for Basic auth
	sf     singleflight.Group
}

type token struct {
	value   string
	expires time.Time
}

// New checks cfg and returns a Client.
func New(cfg Config) (*Client, error) {
	if len(cfg.URLs) == 0 {
		return nil, errors.New("upstream: no URL")
	}
	c := &Client{
		user: cfg.Username, pass: cfg.Password,
		attempts: cfg.Attempts, maxWait: cfg.MaxRetryWait,
		log: cfg.Logger, onResp: cfg.OnResponse,
		tokens: map[string]token{}, basic: map[string]bool{},
		now: time.Now,
	}
	if c.attempts <= 0 {
		c.attempts = 3
	}
	if c.maxWait <= 0 {
		c.maxWait = 5 * time.Second
	}
	if c.log == nil {
		c.log = zap.NewNop()
	}
	if c.onResp == nil {
		c.onResp = func(string, int) {}
	}
	for _, s := range cfg.URLs {
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("upstream: %q is not an http(s) URL", s)
		}
		u.Path = strings.Trim(u.Path, "/")
		c.bases = append(c.bases, u)
	}
	rt := cfg.Transport
	if rt == nil {
		tc := &tls.Config{InsecureSkipVerify: cfg.InsecureSkipVerify} //nolint:gosec // operator's choice, for loopback tests
		if cfg.CAFile != "" {
			pem, err := os.ReadFile(cfg.CAFile)
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
		rt = &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSClientConfig:       tc,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: 30 * time.Second,
			ForceAttemptHTTP2:     true,
			MaxIdleConnsPerHost:   32,
			IdleConnTimeout:       90 * time.Second,
		}
	}
	// Registries redirect blob GETs to storage; the redirect must not
	// carry our Authorization (net/http drops it across hosts).
	c.hc = &http.Client{Transport: rt}
	return c, nil
}

// Do sends method to /v2/<repo>/<path> (path may carry a query) on the
// first URL that answers, authenticating as upstream asks, and returns the
// response when it is a success (2xx, or 304). Any other answer is
// returned as *Error, with the body read and closed.
func (c *Client) Do(ctx context.Context, method, repo, path string, hdr http.Header) (*http.Response, error) {
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
		c.log.Debug("upstream failed, trying the next", zap.String("url", base.String()), zap.Error(err))
	}
	return nil, last
}

// tryBase is Do against one URL, with retries of 429 and 5xx.
func (c *Client) tryBase(ctx context.Context, base *url.URL, method, repo, path string, hdr http.Header) (*http.Response, error) {
	for attempt := 1; ; attempt++ {
		resp, err := c.authorized(ctx, base, method, repo, path, hdr)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode < 300 || resp.StatusCode == http.StatusNotModified {
			return resp, nil
		}
		uerr := readError(resp)
		if resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode < 500 {
			return nil, uerr
		}
		wait, ok := c.retryWait(resp.Header.Get("Retry-After"), attempt)
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
func (c *Client) retryWait(retryAfter string, attempt int) (time.Duration, bool) {
	if retryAfter != "" {
		var d time.Duration
		if secs, err := strconv.Atoi(strings.TrimSpace(retryAfter)); err == nil && secs >= 0 {
			d = time.Duration(secs) * time.Second
		} else if t, err := http.ParseTime(retryAfter); err == nil {
			d = time.Until(t)
		}
		if d > c.maxWait {
			return 0, false
		}
		if d > 0 {
			return d, true
		}
	}
	d := 100 * time.Millisecond << (attempt - 1)
	d += time.Duration(rand.Int64N(int64(d)/2 + 1))
	return min(d, c.maxWait), true
}

// authorized sends the request with what the host asked for last time;
// on a 401 it answers the challenge once and sends again.
func (c *Client) authorized(ctx context.Context, base *url.URL, method, repo, path string, hdr http.Header) (*http.Response, error) {
	resp, err := c.send(ctx, base, method, repo, path, hdr)
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
		if _, err := c.fetchToken(ctx, base, repo, ch); err != nil {
			return nil, err
		}
	case strings.EqualFold(ch.Scheme, "Basic") && c.user != "":
		c.mu.Lock()
		c.basic[base.Host] = true
		c.mu.Unlock()
	default:
		return nil, uerr
	}
	return c.send(ctx, base, method, repo, path, hdr)
}

func (c *Client) send(ctx context.Context, base *url.URL, method, repo, path string, hdr http.Header) (*http.Response, error) {
	name := repo
	if base.Path != "" {
		name = base.Path + "/" + repo
	}
	u := base.Scheme + "://" + base.Host + "/v2/" + name + "/" + path
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, &Error{Err: err}
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	c.mu.Lock()
	tok, ok := c.tokens[base.Host+" "+repo]
	basic := c.basic[base.Host]
	c.mu.Unlock()
	switch {
	case ok && c.now().Before(tok.expires):
		req.Header.Set("Authorization", "Bearer "+tok.value)
	case basic:
		req.SetBasicAuth(c.user, c.pass)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.onResp(method, 0)
		return nil, &Error{Err: err}
	}
	c.onResp(method, resp.StatusCode)
	return resp, nil
}

// fetchToken gets a pull token for repo from the challenge's realm and
// keeps it for later requests to the same host and repository. Concurrent
// callers for one key share one token request.
func (c *Client) fetchToken(ctx context.Context, base *url.URL, repo string, ch authscope.Challenge) (string, error) {
	key := base.Host + " " + repo
	v, err, _ := c.sf.Do(key, func() (any, error) {
		realm, _ := ch.Get("realm")
		ru, err := url.Parse(realm)
		if err != nil || (ru.Scheme != "http" && ru.Scheme != "https") {
			return nil, &Error{Status: http.StatusUnauthorized, Code: "UNAUTHORIZED", Message: fmt.Sprintf("bad token realm %q", realm)}
		}
		q := ru.Query()
		if svc, ok := ch.Get("service"); ok {
			q.Set("service", svc)
		}
		scope := "repository:" + repo + ":pull"
		if s, ok := ch.Get("scope"); ok && s != "" {
			scope = s
		}
		q.Set("scope", scope)
		ru.RawQuery = q.Encode()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, ru.String(), nil)
		if err != nil {
			return nil, &Error{Err: err}
		}
		if c.user != "" {
			req.SetBasicAuth(c.user, c.pass)
		}
		resp, err := c.hc.Do(req)
		if err != nil {
			c.onResp(http.MethodGet, 0)
			return nil, &Error{Err: fmt.Errorf("token service: %w", err)}
		}
		c.onResp(http.MethodGet, resp.StatusCode)
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
		c.tokens[key] = token{value: t, expires: c.now().Add(life)}
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
