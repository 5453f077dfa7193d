package authscope

// The OIDC relying party: the authorization code flow with PKCE (S256),
// state and nonce, and verification of the ID token by go-oidc (issuer,
// audience, expiry, signature by the provider's JWKS). The provider is
// discovered on first use, not at start-up, so an unreachable provider
// does not keep Caddy from starting; a failed discovery is retried by
// the next sign-in.

import (
	"context"
	"crypto"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddy-oci/caddy-oci/internal/outbound"
	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
)

// discoveryTimeout bounds provider discovery and the code exchange, so a
// hung provider fails a sign-in instead of holding it open.
const discoveryTimeout = 15 * time.Second

// OIDCClient signs users in at one provider.
type OIDCClient struct {
	Issuer       string
	ClientID     string
	ClientSecret string
	// Scopes requested besides openid. Default: profile, email, groups.
	Scopes []string
	// RedirectURL is this server's callback, as registered at the
	// provider.
	RedirectURL string
	Claims      ClaimMapping
	// HTTPClient talks to the provider; nil is a client with outbound's
	// bounds.
	HTTPClient *http.Client
	// Now is the clock the ID token's expiry is checked by; nil is
	// time.Now.
	Now func() time.Time

	provider lazyProvider
}

// DefaultOIDCScopes are requested when Scopes is empty.
var DefaultOIDCScopes = []string{"profile", "email", "groups"}

func (c *OIDCClient) ctx(ctx context.Context) context.Context {
	return withClient(ctx, c.HTTPClient)
}

// withClient has go-oidc and oauth2 talk to the provider with
// providerClient(hc).
func withClient(ctx context.Context, hc *http.Client) context.Context {
	return oidc.ClientContext(ctx, providerClient(hc))
}

// defaultProviderClient talks to OIDC providers when the caller gave no
// client: discovery, keys and the code exchange each have their own
// deadline, so its timeout only catches a body that never ends.
var defaultProviderClient = outbound.Client(time.Minute)

// maxProviderAnswer bounds an answer of the provider (discovery document,
// key set, token response). go-oidc reads the discovery document whole,
// with no bound: a provider (or whatever the issuer URL reaches) that
// streams one without end grew the process by gigabytes within
// discoveryTimeout (2.7 GiB of RSS from one anonymous GET of the sign-in
// page, attack9), again at each retry.
const maxProviderAnswer = 1 << 20

// providerClient is hc (nil: defaultProviderClient) with every answer
// read up to maxProviderAnswer; its transport, and so its connections,
// are hc's.
func providerClient(hc *http.Client) *http.Client {
	if hc == nil {
		hc = defaultProviderClient
	}
	bounded := *hc
	rt := bounded.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	bounded.Transport = outbound.LimitBodies(rt, maxProviderAnswer)
	return &bounded
}

func (c *OIDCClient) discover(ctx context.Context) (*discovered, error) {
	return c.provider.get(ctx, c.Issuer, c.HTTPClient, c.Now)
}

// retryDiscoveryAfter is how long a failed discovery is remembered, so
// that a provider that is down costs each request a quick error instead
// of another wait for a timeout.
const retryDiscoveryAfter = 10 * time.Second

// lazyProvider discovers an issuer on first use and keeps the result.
// One discovery runs at a time, for all callers, and runs to its end
// even when the caller that started it gives up: a client hanging up
// must not leave a failure that refuses everyone else.
type lazyProvider struct {
	mu       sync.Mutex
	d        *discovered
	err      error
	failedAt time.Time
	inflight chan struct{} // closed when the running discovery ends
}

// discovered is a provider after discovery: its endpoints, and its
// signing keys behind a fetch limit.
type discovered struct {
	issuer string
	p      *oidc.Provider
	keys   *providerKeys
	algs   []string
	// authStyle is how the client secret goes to the token endpoint, as
	// the provider advertises it. oauth2's default (auto-detect) sends
	// every refused code twice, once per style, and learns nothing from
	// a refusal: each callback with a made-up code cost the provider two
	// requests.
	authStyle oauth2.AuthStyle
}

// verifier verifies the provider's tokens for config. It stands in for
// p.Verifier, whose key set fetches the provider's keys again for every
// token that names an unknown key.
func (d *discovered) verifier(config *oidc.Config) *oidc.IDTokenVerifier {
	cfg := *config
	cfg.SupportedSigningAlgs = d.algs
	return oidc.NewVerifier(d.issuer, d.keys, &cfg)
}

func (l *lazyProvider) get(ctx context.Context, issuer string, hc *http.Client, now func() time.Time) (*discovered, error) {
	l.mu.Lock()
	if l.d != nil {
		defer l.mu.Unlock()
		return l.d, nil
	}
	if l.err != nil && time.Since(l.failedAt) < retryDiscoveryAfter {
		defer l.mu.Unlock()
		return nil, l.err
	}
	wait := l.inflight
	if wait == nil {
		wait = make(chan struct{})
		l.inflight = wait
		go l.discover(context.WithoutCancel(ctx), issuer, hc, now, wait)
	}
	l.mu.Unlock()
	select {
	case <-wait:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.d != nil {
		return l.d, nil
	}
	return nil, l.err
}

// discover runs one discovery and closes done.
func (l *lazyProvider) discover(ctx context.Context, issuer string, hc *http.Client, now func() time.Time, done chan struct{}) {
	ctx, cancel := context.WithTimeout(ctx, discoveryTimeout)
	defer cancel()
	d, err := discover(ctx, issuer, hc, now)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.err, l.failedAt = fmt.Errorf("discovering OIDC issuer %s: %w", issuer, err), time.Now()
	} else {
		l.d, l.err = d, nil
	}
	l.inflight = nil
	close(done)
}

// ErrIssuerMismatch is a discovery whose document names another issuer
// than the configured one. ID tokens carry the provider's spelling and
// must match it exactly, so this is the operator's to fix in the config,
// not a provider that cannot be reached.
var ErrIssuerMismatch = errors.New("the configured OIDC issuer is not the one the provider advertises")

func discover(ctx context.Context, issuer string, hc *http.Client, now func() time.Time) (*discovered, error) {
	p, err := oidc.NewProvider(withClient(ctx, hc), issuer)
	var mm *oidc.IssuerMismatchError
	if errors.As(err, &mm) {
		// Most often a trailing slash ("https://id.example/" for
		// "https://id.example"), as Dex and others spell it.
		return nil, fmt.Errorf("%w: configured %q, advertised %q in its discovery document; set issuer to exactly %q",
			ErrIssuerMismatch, mm.Provided, mm.Discovered, mm.Discovered)
	}
	if err != nil {
		return nil, err
	}
	var meta struct {
		JWKSURL     string   `json:"jwks_uri"`
		Algs        []string `json:"id_token_signing_alg_values_supported"`
		AuthMethods []string `json:"token_endpoint_auth_methods_supported"`
	}
	if err := p.Claims(&meta); err != nil {
		return nil, err
	}
	if meta.JWKSURL == "" {
		return nil, errors.New("the discovery document has no jwks_uri")
	}
	return &discovered{issuer: issuer, p: p, algs: signingAlgs(meta.Algs), authStyle: tokenAuthStyle(meta.AuthMethods),
		keys: &providerKeys{url: meta.JWKSURL, hc: hc, now: now}}, nil
}

// tokenAuthStyle is how to send the client secret to a provider that
// advertises methods: Basic auth when it lists client_secret_basic or
// lists nothing (OpenID Connect Discovery's default), the form when it
// lists only client_secret_post; else oauth2's guess.
func tokenAuthStyle(methods []string) oauth2.AuthStyle {
	switch {
	case len(methods) == 0 || slices.Contains(methods, "client_secret_basic"):
		return oauth2.AuthStyleInHeader
	case slices.Contains(methods, "client_secret_post"):
		return oauth2.AuthStyleInParams
	}
	return oauth2.AuthStyleAutoDetect
}

// signingAlgs keeps the algorithms of advertised that go-oidc verifies
// with public keys; none left means go-oidc's default, RS256.
func signingAlgs(advertised []string) []string {
	var out []string
	for _, a := range advertised {
		switch a {
		case oidc.RS256, oidc.RS384, oidc.RS512, oidc.ES256, oidc.ES384, oidc.ES512,
			oidc.PS256, oidc.PS384, oidc.PS512, oidc.EdDSA:
			out = append(out, a)
		}
	}
	return out
}

// jwksRefreshEvery is the least time between two fetches of a provider's
// keys. go-oidc's own key set fetches them again for every token that
// names an unknown key, and the claims checked before the signature are
// no secret, so anyone could otherwise make this server hammer the
// provider's JWKS endpoint with made-up tokens.
const jwksRefreshEvery = 30 * time.Second

// maxJWKSSize bounds the provider's key set document.
const maxJWKSSize = 1 << 20

// providerKeys is an oidc.KeySet over the provider's jwks_uri, fetched
// on first use and again when a token's signature fails, at most once
// per jwksRefreshEvery (a failed fetch counts).
type providerKeys struct {
	url string
	hc  *http.Client
	now func() time.Time

	fetchMu sync.Mutex // one fetch at a time
	mu      sync.Mutex // keys, gen, fetchedAt
	keys    []crypto.PublicKey
	gen     int // counts fetch attempts
	at      time.Time
	failed  error // the last fetch's error, nil once one succeeds
}

// jwksRetryFailedAfter is the least time between two fetches of the keys
// when the last one failed: the provider's outage is answered 503 until
// a fetch succeeds, so recovery should not wait jwksRefreshEvery.
const jwksRetryFailedAfter = 5 * time.Second

// errKeysUnavailable: the provider's keys could not be fetched, so a
// token's signature cannot be checked either way: an outage (503), not a
// refused token (401).
var errKeysUnavailable = fmt.Errorf("%w: fetching the OIDC provider's keys", ErrUnavailable)

type keyFailureKey struct{}

// keyFailure carries, for one verification, that the keys could not be
// fetched: go-oidc passes a KeySet's error on as text only.
type keyFailure struct{ err error }

func withKeyFailure(ctx context.Context) (context.Context, *keyFailure) {
	kf := &keyFailure{}
	return context.WithValue(ctx, keyFailureKey{}, kf), kf
}

func (k *providerKeys) clock() time.Time {
	if k.now != nil {
		return k.now()
	}
	return time.Now()
}

func (k *providerKeys) snapshot() ([]crypto.PublicKey, int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.keys, k.gen
}

// VerifySignature implements oidc.KeySet.
func (k *providerKeys) VerifySignature(ctx context.Context, jwt string) ([]byte, error) {
	keys, gen := k.snapshot()
	if len(keys) > 0 {
		if payload, err := (&oidc.StaticKeySet{PublicKeys: keys}).VerifySignature(ctx, jwt); err == nil {
			return payload, nil
		}
	}
	fresh, err := k.refresh(ctx, gen)
	if err != nil {
		if kf, ok := ctx.Value(keyFailureKey{}).(*keyFailure); ok && errors.Is(err, errKeysUnavailable) {
			kf.err = err
		}
		return nil, err
	}
	return (&oidc.StaticKeySet{PublicKeys: fresh}).VerifySignature(ctx, jwt)
}

// refresh fetches the keys again, unless someone did since the caller's
// snapshot gen (their keys are then the answer) or the last fetch is
// younger than jwksRefreshEvery.
func (k *providerKeys) refresh(ctx context.Context, gen int) ([]crypto.PublicKey, error) {
	k.fetchMu.Lock()
	defer k.fetchMu.Unlock()
	k.mu.Lock()
	keys, cur, at, failed := k.keys, k.gen, k.at, k.failed
	k.mu.Unlock()
	every := jwksRefreshEvery
	if failed != nil {
		every = jwksRetryFailedAfter
	}
	switch {
	case cur != gen && failed != nil, cur > 0 && failed != nil && k.clock().Sub(at) < every:
		return nil, fmt.Errorf("%w: %w", errKeysUnavailable, failed)
	case cur != gen:
		return keys, nil
	case cur > 0 && k.clock().Sub(at) < every:
		return nil, errors.New("token signed by an unknown key (the provider's keys were fetched moments ago)")
	}
	// The fetch outlives a caller that gives up, so that a client that
	// disconnects does not leave everyone without keys until the next
	// refresh.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), discoveryTimeout)
	defer cancel()
	fresh, err := k.fetch(fctx)
	k.mu.Lock()
	k.gen++
	k.at = k.clock()
	k.failed = err
	if err == nil {
		k.keys = fresh
	}
	k.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errKeysUnavailable, err)
	}
	return fresh, nil
}

// fetch reads the signing keys of the JWK set at k.url; keys for
// encryption and of unknown types are skipped.
func (k *providerKeys) fetch(ctx context.Context) ([]crypto.PublicKey, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := providerClient(k.hc).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", k.url, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSSize+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxJWKSSize {
		return nil, fmt.Errorf("%s: key set larger than %d bytes", k.url, maxJWKSSize)
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf("%s: %w", k.url, err)
	}
	var keys []crypto.PublicKey
	for _, raw := range set.Keys {
		var j jwk
		if json.Unmarshal(raw, &j) != nil || (j.Use != "" && j.Use != "sig") {
			continue
		}
		if pub, err := j.publicKey(); err == nil {
			keys = append(keys, pub)
		}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s: no signing key", k.url)
	}
	return keys, nil
}

func (c *OIDCClient) oauth2Config(d *discovered) *oauth2.Config {
	scopes := c.Scopes
	if len(scopes) == 0 {
		scopes = DefaultOIDCScopes
	}
	ep := d.p.Endpoint()
	ep.AuthStyle = d.authStyle
	return &oauth2.Config{
		ClientID:     c.ClientID,
		ClientSecret: c.ClientSecret,
		Endpoint:     ep,
		RedirectURL:  c.RedirectURL,
		Scopes:       append([]string{oidc.ScopeOpenID}, scopes...),
	}
}

// providerDown marks err, the provider not answering (discovery, its
// token endpoint), as an outage: ErrUnavailable, which callers answer 503
// with Retry-After, since the same request works once the provider is
// back. Not a mismatched issuer (the operator's to fix), nor a failure
// because the caller left (ctx, the caller's own context, is done).
func providerDown(ctx context.Context, err error) error {
	if errors.Is(err, ErrIssuerMismatch) || errors.Is(err, ErrUnavailable) || ctx.Err() != nil {
		return err
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// AuthURL is where to send the browser to sign in with the given state,
// nonce and PKCE verifier.
func (c *OIDCClient) AuthURL(ctx context.Context, state, nonce, verifier string) (string, error) {
	p, err := c.discover(ctx)
	if err != nil {
		return "", providerDown(ctx, err)
	}
	return c.oauth2Config(p).AuthCodeURL(state, oidc.Nonce(nonce), oauth2.S256ChallengeOption(verifier)), nil
}

// errIDToken is any refusal of the provider's answer.
var errIDToken = errors.New("ID token refused")

// Exchange trades code for tokens and returns the user and groups of the
// verified ID token, which must carry nonce.
func (c *OIDCClient) Exchange(ctx context.Context, code, nonce, verifier string) (user string, groups []string, err error) {
	p, err := c.discover(ctx)
	if err != nil {
		return "", nil, providerDown(ctx, err)
	}
	caller := ctx
	ctx, cancel := context.WithTimeout(ctx, discoveryTimeout)
	defer cancel()
	tok, err := c.oauth2Config(p).Exchange(c.ctx(ctx), code, oauth2.VerifierOption(verifier))
	if err != nil {
		err = fmt.Errorf("exchanging the authorization code: %w", err)
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && re.Response != nil && re.Response.StatusCode < 500 {
			return "", nil, err // the provider answered: it refused the code
		}
		return "", nil, providerDown(caller, err)
	}
	raw, ok := tok.Extra("id_token").(string)
	if !ok || raw == "" {
		return "", nil, fmt.Errorf("%w: the token response has no id_token", errIDToken)
	}
	vctx, kf := withKeyFailure(c.ctx(ctx))
	idt, err := p.verifier(&oidc.Config{ClientID: c.ClientID, Now: c.Now}).Verify(vctx, raw)
	if kf.err != nil {
		// The keys could not be fetched: the token may be fine.
		return "", nil, kf.err
	}
	if err != nil {
		return "", nil, fmt.Errorf("%w: %w", errIDToken, err)
	}
	if subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(nonce)) != 1 {
		return "", nil, fmt.Errorf("%w: nonce does not match this sign-in", errIDToken)
	}
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		return "", nil, fmt.Errorf("%w: %w", errIDToken, err)
	}
	user, groups, err = c.Claims.identity(claims)
	if err != nil {
		return "", nil, fmt.Errorf("%w: %w", errIDToken, err)
	}
	// A person may not pass for a CI job.
	if strings.HasPrefix(user, WorkloadPrefix) {
		return "", nil, fmt.Errorf("%w: user name %q: %q is kept for workload tokens", errIDToken, user, WorkloadPrefix)
	}
	for _, g := range groups {
		if strings.HasPrefix(g, WorkloadPrefix) {
			return "", nil, fmt.Errorf("%w: group %q: %q is kept for workload tokens", errIDToken, g, WorkloadPrefix)
		}
	}
	return user, groups, nil
}
