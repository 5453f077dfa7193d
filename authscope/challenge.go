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

// ChallengeView turns a challenge that a registry behind a front sent into
// what the front's client may see: the realm and service the client should
// use, and scopes in the names the client typed. A challenge naming a
// repository the client never typed would teach it, and its token
// requests, the backend's names; such scopes are dropped instead.
type ChallengeView struct {
	// Realm replaces the realm when not empty: the front's token proxy
	// (see ProxyRealm).
	Realm string
	// Service replaces service when not empty.
	Service string
	// Name maps a backend repository name to the name the client typed,
	// or false when the client typed none for it.
	Name func(backend string) (string, bool)
}

// Rewrite returns header h as the client should see it. Only Bearer
// challenges carry realms and scopes; other schemes pass unchanged. A
// header that does not parse is an error: passing it on could leak
// backend names.
func (v ChallengeView) Rewrite(h string) (string, error) {
	c, err := ParseChallenge(h)
	if err != nil {
		return "", err
	}
	if !strings.EqualFold(c.Scheme, "Bearer") {
		return h, nil
	}
	if v.Realm != "" {
		c.Set("realm", v.Realm)
	}
	if v.Service != "" {
		c.Set("service", v.Service)
	}
	if value, ok := c.Get("scope"); ok {
		var kept []string
		for _, f := range strings.Fields(value) {
			s, err := ParseScope(f)
			if err != nil {
				continue
			}
			if s.Type == "repository" {
				typed, ok := v.Name(s.Name)
				if !ok {
					continue
				}
				s.Name = typed
			}
			kept = append(kept, s.String())
		}
		if len(kept) == 0 {
			c.Del("scope")
		} else {
			c.Set("scope", strings.Join(kept, " "))
		}
	}
	return c.String(), nil
}
