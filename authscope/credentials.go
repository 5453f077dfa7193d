package authscope

// Credentials that leave this server: the token proxy forwards a token
// request to a Docker token service, the front forwards requests to the
// registry behind it. API keys and workload tokens are secrets of this
// server, and neither of those others may ever see one, wherever in the
// request it hides (a header, a form field, the query, with whitespace or
// a changed prefix around it). And a request with two Authorization
// headers is refused: which of them counts would be up to each reader.

import (
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// Refusals of credentials about to be forwarded.
var (
	// ErrAuthorizationRepeated is a request with more than one
	// Authorization header (answered 400).
	ErrAuthorizationRepeated = errors.New("more than one Authorization header")
	// ErrOwnCredential is an API key or workload token of this server
	// in a request bound elsewhere (answered 401).
	ErrOwnCredential = errors.New("credentials for this registry, not for the server behind it")
)

// OneAuthorization refuses a header with more than one Authorization
// value: this server reads the first, a token service or backend may read
// another, so the credentials checked would not be those used.
func OneAuthorization(h http.Header) error {
	if len(h.Values("Authorization")) > 1 {
		return ErrAuthorizationRepeated
	}
	return nil
}

// apiKeyBody is an API key without its prefix (id and secret), found
// anywhere in a value: a key whose prefix was dropped or changed still
// carries its secret.
var apiKeyBody = regexp.MustCompile(`[0-9a-fA-F]{16}_[A-Za-z0-9_-]{43}`)

// holdsOwnSecret reports whether s holds one of this server's secrets
// anywhere in it: an API key, by its prefix in any case or by the shape
// of its id and secret, or a token withhold claims (nil: none), looked
// for in every run of token characters, so that whitespace, quotes or
// other text around it do not hide it.
func holdsOwnSecret(s string, withhold func(string) bool) bool {
	if strings.Contains(strings.ToLower(s), APIKeyPrefix) || apiKeyBody.MatchString(s) {
		return true
	}
	if withhold == nil {
		return false
	}
	for _, f := range strings.FieldsFunc(s, notTokenChar) {
		if withhold(f) {
			return true
		}
	}
	return false
}

// lenientUnescape decodes a query piece as a server might: '+' is a
// space and every valid %XX its byte, where url.QueryUnescape gives up
// on the whole piece at its first bad escape.
func lenientUnescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '+':
			b.WriteByte(' ')
		case c == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]):
			v, _ := strconv.ParseUint(s[i+1:i+3], 16, 8)
			b.WriteByte(byte(v))
			i += 2
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// notTokenChar: not in a JWT (base64url and dots) nor in base64.
func notTokenChar(r rune) bool {
	switch {
	case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9':
		return false
	}
	return !strings.ContainsRune("-_.+/", r)
}

// authorizationSecrets returns what an Authorization value carries: the
// value itself and, for Basic, the decoded user and password (in
// whichever base64 alphabet decodes, as lenient servers accept them, and
// also with every character outside the alphabets dropped, as decoders
// that skip what is not base64 read it).
func authorizationSecrets(v string) []string {
	out := []string{v}
	scheme, rest, _ := strings.Cut(strings.TrimSpace(v), " ")
	if !strings.EqualFold(scheme, "Basic") {
		return out
	}
	rest = strings.TrimSpace(rest)
	forms := []string{rest}
	if kept := strings.Map(keepBase64, rest); kept != rest {
		forms = append(forms, kept)
	}
	for _, f := range forms {
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
			if b, err := enc.DecodeString(f); err == nil {
				out = append(out, string(b))
			}
		}
	}
	return out
}

// keepBase64 maps a character of either base64 alphabet (or padding) to
// itself and drops any other.
func keepBase64(r rune) rune {
	if r == '=' || !notTokenChar(r) && r != '.' {
		return r
	}
	return -1
}

// CheckAuthorization vets the Authorization of a request about to be
// forwarded to a server that is not this one: holding no API key and no
// token withhold (nil: none) claims (ErrOwnCredential), in any of its
// headers, and one header at most (ErrAuthorizationRepeated). Every value
// is examined before the count: a caller that treats only ErrOwnCredential
// as a leak must not be told "repeated" about a key in the second header.
func CheckAuthorization(h http.Header, withhold func(string) bool) error {
	for _, v := range h.Values("Authorization") {
		for _, s := range authorizationSecrets(v) {
			if holdsOwnSecret(s, withhold) {
				return ErrOwnCredential
			}
		}
	}
	return OneAuthorization(h)
}

// CheckForwarded vets a whole request about to be forwarded, as
// CheckAuthorization does its Authorization, and every other header
// value, its query as it will leave (rawQuery) and every name and value
// of form (nil: none) too. Own credentials anywhere are reported before a
// repeated Authorization. The query is read as sent, not as
// url.ParseQuery reads it: that drops a parameter after a `;` or with a
// bad escape, and all of them past 10,000, while the request goes on
// with them.
func CheckForwarded(h http.Header, rawQuery string, form url.Values, withhold func(string) bool) error {
	authErr := CheckAuthorization(h, withhold)
	if errors.Is(authErr, ErrOwnCredential) {
		return authErr
	}
	var values []string
	for k, vs := range h {
		if http.CanonicalHeaderKey(k) != "Authorization" {
			values = append(values, vs...)
		}
	}
	for _, piece := range strings.FieldsFunc(rawQuery, func(r rune) bool { return r == '&' || r == ';' }) {
		values = append(values, piece, lenientUnescape(piece))
	}
	for k, vs := range form {
		values = append(values, k)
		values = append(values, vs...)
	}
	for _, v := range values {
		if holdsOwnSecret(v, withhold) {
			return ErrOwnCredential
		}
	}
	return authErr
}
