package authscope

// Mapping the claims of a verified OIDC token (an ID token after sign-in,
// or a workload's bearer token) to a user name and groups.

import (
	"errors"
	"fmt"
	"strings"
)

// Default claims.
const (
	DefaultUsernameClaim = "preferred_username"
	DefaultGroupsClaim   = "groups"
	maxGroups            = 256
)

// ClaimMapping names the claims that hold a user name and groups.
type ClaimMapping struct {
	// Username is the claim of the user name; when it is missing or
	// empty, `sub` is used.
	Username string
	// Groups is the claim of the groups: an array of strings or one
	// string. A token without it has no groups.
	Groups string
}

// emailClaim is the claim OIDC gives an address in; email_verified says
// whether the provider checked it.
const emailClaim = "email"

// verifiedAddress refuses an address as a user name when the provider
// says it did not check that the user owns it: at providers that let
// users set their own address (Keycloak's account console, self sign-up),
// anyone could otherwise sign in as admin@example.org and get that
// name's grants. A provider that sends no email_verified (Azure AD) is
// taken at its word. Cognito sends the flag as a string.
func verifiedAddress(claim string, claims map[string]any) error {
	if claim != emailClaim {
		return nil
	}
	switch v := claims["email_verified"].(type) {
	case nil:
		return nil
	case bool:
		if v {
			return nil
		}
	case string:
		if v == "true" {
			return nil
		}
	}
	return fmt.Errorf("claim %q names the user, and the provider has not verified the address (email_verified %v): verify it at the provider, or name users by another claim", claim, claims["email_verified"])
}

// identity maps claims. Names are refused when they hold control
// characters or NUL (they end up in logs and storage keys).
func (m ClaimMapping) identity(claims map[string]any) (user string, groups []string, err error) {
	uc := m.Username
	if uc == "" {
		uc = DefaultUsernameClaim
	}
	// Only a missing or empty claim falls back to sub: a claim of
	// another type is a provider (or mapping) mistake, not a reason to
	// read another namespace of names.
	switch v := claims[uc].(type) {
	case nil:
	case string:
		user = v
	default:
		return "", nil, fmt.Errorf("claim %q: not a string", uc)
	}
	if user == "" {
		user, _ = claims["sub"].(string)
	} else if err := verifiedAddress(uc, claims); err != nil {
		return "", nil, err
	}
	if user == "" || strings.ContainsFunc(user, isControl) {
		return "", nil, fmt.Errorf("no usable user name in claim %q or sub", uc)
	}
	gc := m.Groups
	if gc == "" {
		gc = DefaultGroupsClaim
	}
	switch v := claims[gc].(type) {
	case nil:
	case string:
		groups = []string{v}
	case []any:
		for _, g := range v {
			s, ok := g.(string)
			if !ok {
				return "", nil, fmt.Errorf("claim %q: not a list of strings", gc)
			}
			groups = append(groups, s)
		}
	default:
		return "", nil, fmt.Errorf("claim %q: not a string or a list of strings", gc)
	}
	if len(groups) > maxGroups {
		return "", nil, fmt.Errorf("claim %q: more than %d groups", gc, maxGroups)
	}
	for _, g := range groups {
		if g == "" || strings.ContainsFunc(g, isControl) {
			return "", nil, errors.New("claim " + gc + ": empty or unprintable group name")
		}
	}
	return user, groups, nil
}
