package authscope

// Verification of bearer tokens issued by a Docker token service
// (docker_auth, or any that follows the Docker token spec).

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// DefaultLeeway is the clock skew allowed on exp and nbf when
// TokenVerifier.Leeway is zero.
const DefaultLeeway = 30 * time.Second

// Algorithms are the only signing algorithms accepted. HMAC is absent on
// purpose: a registry holds no shared secret, and accepting HS256 would
// let anyone sign with the (public) verification key; so is "none".
var Algorithms = []string{"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA"}

// Errors of token verification.
var (
	// ErrTokenInvalid: not a token we accept (signature, key, claims, time).
	ErrTokenInvalid = errors.New("invalid token")
	// ErrScopeInsufficient: a good token that does not grant the request.
	ErrScopeInsufficient = errors.New("insufficient scope")
)

// TokenVerifier checks tokens from one token service.
type TokenVerifier struct {
	Keys *KeySet
	// Issuer must equal the token's iss.
	Issuer string
	// Service must be one of the token's aud.
	Service string
	// Leeway for exp and nbf; zero means DefaultLeeway.
	Leeway time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// AccessEntry is one element of a token's `access` claim.
type AccessEntry struct {
	Type    string   `json:"type"`
	Class   string   `json:"class,omitempty"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

// TokenClaims are the claims of a Docker token.
type TokenClaims struct {
	jwt.RegisteredClaims
	Access []AccessEntry `json:"access"`
}

// Grants reports whether the token allows every action of s. Entries for
// the same type and name add up; "*" grants every action.
func (c *TokenClaims) Grants(s Scope) bool {
	for _, want := range s.Actions {
		ok := false
		for _, e := range c.Access {
			if e.Type == s.Type && e.Name == s.Name && (slices.Contains(e.Actions, want) || slices.Contains(e.Actions, "*")) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// Verify parses and checks a token: algorithm, key, signature, iss, aud,
// exp (required) and nbf. It does not look at the access claim; see
// TokenClaims.Grants. Errors wrap ErrTokenInvalid.
func (v *TokenVerifier) Verify(raw string) (*TokenClaims, error) {
	now := time.Now
	if v.Now != nil {
		now = v.Now
	}
	leeway := v.Leeway
	if leeway == 0 {
		leeway = DefaultLeeway
	}
	if v.Keys == nil || v.Issuer == "" || v.Service == "" {
		// jwt skips the checks for empty expectations; refuse instead.
		return nil, fmt.Errorf("%w: verifier has no keys, issuer or service", ErrTokenInvalid)
	}
	claims := new(TokenClaims)
	_, err := jwt.ParseWithClaims(raw, claims,
		func(t *jwt.Token) (any, error) { return v.Keys.key(t.Header, now()) },
		jwt.WithValidMethods(Algorithms),
		jwt.WithIssuer(v.Issuer),
		jwt.WithAudience(v.Service),
		jwt.WithLeeway(leeway),
		jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(now),
	)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTokenInvalid, err)
	}
	return claims, nil
}
