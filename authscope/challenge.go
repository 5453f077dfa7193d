package authscope

import (
	"errors"
	"fmt"
	"strings"
)

// Challenge is one `WWW-Authenticate` challenge: a scheme ("Bearer",
// "Basic") and its auth-params in the order they came, so a rewritten
// challenge keeps parameters it does not touch.
type Challenge struct {
	Scheme string
	Params []Param
}

// Param is one auth-param of a challenge.
type Param struct{ Key, Value string }

// ErrChallengeInvalid is returned for a header that is not a challenge.
var ErrChallengeInvalid = errors.New("invalid challenge")

// Get returns the value of parameter key (case-insensitive) and whether it
// was present.
func (c Challenge) Get(key string) (string, bool) {
	for _, p := range c.Params {
		if strings.EqualFold(p.Key, key) {
			return p.Value, true
		}
	}
	return "", false
}

// Set replaces the value of key, or appends it when absent.
func (c *Challenge) Set(key, value string) {
	for i, p := range c.Params {
		if strings.EqualFold(p.Key, key) {
			c.Params[i].Value = value
			return
		}
	}
	c.Params = append(c.Params, Param{Key: key, Value: value})
}

// Del removes key.
func (c *Challenge) Del(key string) {
	out := c.Params[:0]
	for _, p := range c.Params {
		if !strings.EqualFold(p.Key, key) {
			out = append(out, p)
		}
	}
	c.Params = out
}

// String formats the challenge with every value quoted.
func (c Challenge) String() string {
	var b strings.Builder
	b.WriteString(c.Scheme)
	for i, p := range c.Params {
		if i == 0 {
			b.WriteByte(' ')
		} else {
			b.WriteByte(',')
		}
		b.WriteString(p.Key)
		b.WriteString(`="`)
		for j := 0; j < len(p.Value); j++ {
			if ch := p.Value[j]; ch == '"' || ch == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(p.Value[j])
		}
		b.WriteByte('"')
	}
	return b.String()
}

// ParseChallenge parses one challenge: `Scheme k="v", k2=v2`. Quoted
// values may hold commas, spaces and backslash escapes. A header carrying
// several challenges is not split here: registries send one per header.
func ParseChallenge(h string) (Challenge, error) {
	h = strings.TrimSpace(h)
	scheme, rest, _ := strings.Cut(h, " ")
	if !isToken(scheme) {
		return Challenge{}, fmt.Errorf("%w: %q", ErrChallengeInvalid, h)
	}
	c := Challenge{Scheme: scheme}
	for {
		rest = strings.TrimLeft(rest, " \t,")
		if rest == "" {
			return c, nil
		}
		eq := strings.IndexByte(rest, '=')
		if eq <= 0 {
			return Challenge{}, fmt.Errorf("%w: %q", ErrChallengeInvalid, h)
		}
		key := strings.TrimSpace(rest[:eq])
		if !isToken(key) {
			return Challenge{}, fmt.Errorf("%w: key %q", ErrChallengeInvalid, key)
		}
		rest = strings.TrimLeft(rest[eq+1:], " \t")
		var val string
		if strings.HasPrefix(rest, `"`) {
			var b strings.Builder
			i, closed := 1, false
			for ; i < len(rest); i++ {
				ch := rest[i]
				if ch == '\\' && i+1 < len(rest) {
					i++
					b.WriteByte(rest[i])
					continue
				}
				if ch == '"' {
					closed = true
					break
				}
				b.WriteByte(ch)
			}
			if !closed {
				return Challenge{}, fmt.Errorf("%w: unterminated quote in %q", ErrChallengeInvalid, h)
			}
			val, rest = b.String(), rest[i+1:]
		} else {
			end := strings.IndexAny(rest, ", \t")
			if end < 0 {
				end = len(rest)
			}
			val, rest = rest[:end], rest[end:]
		}
		c.Params = append(c.Params, Param{Key: key, Value: val})
	}
}
