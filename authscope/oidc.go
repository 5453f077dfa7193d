package authscope

// The OIDC relying party: the authorization code flow with PKCE (S256),
// state and nonce, and verification of the ID token by go-oidc (issuer,
// audience, expiry, signature by the provider's JWKS). The provider is
// discovered on first use, not at start-up, so an unreachable provider
// does not keep Caddy from starting; a failed discovery is retried by
// the next sign-in.

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

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
	// HTTPClient talks to the provider; nil is http.DefaultClient.
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

func withClient(ctx context.Context, hc *http.Client) context.Context {
	if hc != nil {
		return oidc.ClientContext(ctx, hc)
	}
	return ctx
}

func (c *OIDCClient) discover(ctx context.Context) (*oidc.Provider, error) {
	return c.provider.get(ctx, c.Issuer, c.HTTPClient)
}

// retryDiscoveryAfter is how long a failed discovery is remembered, so
// that a provider that is down costs each request a quick error instead
// of another wait for a timeout.
const retryDiscoveryAfter = 10 * time.Second

// lazyProvider discovers an issuer on first use and keeps the result.
type lazyProvider struct {
	mu       sync.Mutex
	p        *oidc.Provider
	err      error
	failedAt time.Time
}

func (l *lazyProvider) get(ctx context.Context, issuer string, hc *http.Client) (*oidc.Provider, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.p != nil {
		return l.p, nil
	}
	if l.err != nil && time.Since(l.failedAt) < retryDiscoveryAfter {
		return nil, l.err
	}
	ctx, cancel := context.WithTimeout(ctx, discoveryTimeout)
	defer cancel()
	// go-oidc keeps the context for later JWKS fetches without its
	// cancellation, so the timeout bounds only this discovery.
	p, err := oidc.NewProvider(withClient(ctx, hc), issuer)
	if err != nil {
		l.err, l.failedAt = fmt.Errorf("discovering OIDC issuer %s: %w", issuer, err), time.Now()
		return nil, l.err
	}
	l.p, l.err = p, nil
	return p, nil
}

func (c *OIDCClient) oauth2Config(p *oidc.Provider) *oauth2.Config {
	scopes := c.Scopes
	if len(scopes) == 0 {
		scopes = DefaultOIDCScopes
	}
	return &oauth2.Config{
		ClientID:     c.ClientID,
		ClientSecret: c.ClientSecret,
		Endpoint:     p.Endpoint(),
		RedirectURL:  c.RedirectURL,
		Scopes:       append([]string{oidc.ScopeOpenID}, scopes...),
	}
}

// AuthURL is where to send the browser to sign in with the given state,
// nonce and PKCE verifier.
func (c *OIDCClient) AuthURL(ctx context.Context, state, nonce, verifier string) (string, error) {
	p, err := c.discover(ctx)
	if err != nil {
		return "", err
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
		return "", nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, discoveryTimeout)
	defer cancel()
	tok, err := c.oauth2Config(p).Exchange(c.ctx(ctx), code, oauth2.VerifierOption(verifier))
	if err != nil {
		return "", nil, fmt.Errorf("exchanging the authorization code: %w", err)
	}
	raw, ok := tok.Extra("id_token").(string)
	if !ok || raw == "" {
		return "", nil, fmt.Errorf("%w: the token response has no id_token", errIDToken)
	}
	idt, err := p.Verifier(&oidc.Config{ClientID: c.ClientID, Now: c.Now}).Verify(c.ctx(ctx), raw)
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
	return user, groups, nil
}
