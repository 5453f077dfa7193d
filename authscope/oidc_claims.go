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
