package authscope

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Scope is one entry of a Docker token scope: what a client asks a token
// service for and what a registry demands in a challenge, e.g.
// `repository:library/debian:pull,push` or `registry:catalog:*`.
type Scope struct {
	Type    string   // "repository", "registry", ...
	Class   string   // optional, from `repository(plugin):...`
	Name    string   // may contain "host:port", so it may hold colons
	Actions []string // in the order given, without duplicates
}

// ErrScopeInvalid is returned for text that is not a scope.
var ErrScopeInvalid = errors.New("invalid scope")

// ParseScope parses one scope. The name may hold a port ("localhost:5000/x"),
// so the type ends at the first colon and the actions start after the last.
func ParseScope(s string) (Scope, error) {
	first := strings.IndexByte(s, ':')
	last := strings.LastIndexByte(s, ':')
	if first <= 0 || last == first || last == len(s)-1 {
		return Scope{}, fmt.Errorf("%w: %q", ErrScopeInvalid, s)
	}
	typ, name, actions := s[:first], s[first+1:last], s[last+1:]
	var class string
	if open := strings.IndexByte(typ, '('); open >= 0 {
		if !strings.HasSuffix(typ, ")") || open == 0 {
			return Scope{}, fmt.Errorf("%w: %q", ErrScopeInvalid, s)
		}
		typ, class = typ[:open], typ[open+1:len(typ)-1]
		if !isToken(class) {
			return Scope{}, fmt.Errorf("%w: class in %q", ErrScopeInvalid, s)
		}
	}
	if !isToken(typ) || name == "" || strings.ContainsAny(name, " \t\r\n\"") {
		return Scope{}, fmt.Errorf("%w: %q", ErrScopeInvalid, s)
	}
	sc := Scope{Type: typ, Class: class, Name: name}
	for _, a := range strings.Split(actions, ",") {
		if a != "*" && !isToken(a) {
			return Scope{}, fmt.Errorf("%w: action %q", ErrScopeInvalid, a)
		}
		if !slices.Contains(sc.Actions, a) {
			sc.Actions = append(sc.Actions, a)
		}
	}
	return sc, nil
}

// ParseScopes parses a space-separated list of scopes, as found in one
// `scope` parameter of a challenge or token request. Empty entries are
// skipped.
func ParseScopes(s string) ([]Scope, error) {
	var out []Scope
	for _, f := range strings.Fields(s) {
		sc, err := ParseScope(f)
		if err != nil {
			return nil, err
		}
		out = append(out, sc)
	}
	return out, nil
}

// String formats the scope in the grammar ParseScope reads.
func (s Scope) String() string {
	typ := s.Type
	if s.Class != "" {
		typ += "(" + s.Class + ")"
	}
	return typ + ":" + s.Name + ":" + strings.Join(s.Actions, ",")
}

// FormatScopes joins scopes with spaces, for one `scope` parameter.
func FormatScopes(scopes []Scope) string {
	parts := make([]string, len(scopes))
	for i, s := range scopes {
		parts[i] = s.String()
	}
	return strings.Join(parts, " ")
}

// isToken reports whether s is a non-empty run of the characters the scope
// grammar allows in types, classes and actions.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}
