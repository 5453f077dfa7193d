package front

// The client's view of a backend response: headers and the few small
// bodies that name repositories, rewritten from backend names to the names
// the client typed.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/registry"
)

// view is what one request needs to turn backend names back.
type view struct {
	front *Front
	req   *http.Request // as the client sent it
	via   authscope.Via
	kind  registry.RouteKind
	// clientPrefix is the client's path before a name ("/v2/",
	// "/docker.io/v2/").
	clientPrefix string
	// typed maps each backend name of this request (the repository, a
	// mount's source) to what the client typed for it.
	typed map[string]string
}

func (v *view) add(backend, typed string) {
	if v.typed == nil {
		v.typed = map[string]string{}
	}
	v.typed[backend] = typed
}

func (v *view) name(backend string) (string, bool) {
	t, ok := v.typed[backend]
	return t, ok
}

// headers rewrites h in place before the status line goes out.
func (v *view) headers(h http.Header) {
	// The backend's manifests and blobs are a pusher's bytes, now served
	// on this site's origin.
	authscope.InertContent(h)
	// This server's sign-in session (oci_registry's OIDC on the same
	// site) is not the backend's to set, as it is not the backend's to
	// read.
	authscope.DropSignInSetCookies(h)
	if cs := h.Values("Www-Authenticate"); len(cs) > 0 {
		cv := authscope.ChallengeView{Service: v.front.cfg.Service, Name: v.name}
		if v.front.proxy != nil {
			cv.Realm = authscope.ProxyRealm(v.req, v.front.cfg.ProxyScheme, v.via)
		}
		out := make([]string, 0, len(cs))
		for _, c := range cs {
			rc, err := cv.Rewrite(c)
			if err != nil {
				v.front.log.Warn("backend challenge dropped", zap.String("challenge", c), zap.Error(err))
				continue
			}
			out = append(out, rc)
		}
		h["Www-Authenticate"] = out
	}
	for _, k := range []string{"Location", "Content-Location"} {
		if l := h.Get(k); l != "" {
			if u, ok := v.url(l); ok {
				h.Set(k, u)
			} else {
				v.front.log.Warn("backend URL dropped", zap.String("header", k), zap.String("url", l))
				h.Del(k)
			}
		}
	}
	if ls := h.Values("Link"); len(ls) > 0 {
		out := make([]string, 0, len(ls))
		for _, l := range ls {
			if rl, ok := v.link(l); ok {
				out = append(out, rl)
			} else {
				v.front.log.Warn("backend URL dropped", zap.String("header", "Link"), zap.String("url", l))
			}
		}
		h["Link"] = out
		if len(out) == 0 {
			h.Del("Link")
		}
	}
	if v.via.NS != "" {
		h.Set("OCI-Namespace", v.via.NS)
	}
}

// url rewrites a backend URL under /v2/<name>/ for a name of this request
// to the client's path for it; false when the URL must not reach the
// client. The result is relative when the backend named a host: the
// backend's host is not one the client should learn, and the client
// resolves the path against the front it asked. An API URL of a name the
// client did not type, or that does not parse, is not passed on. URLs
// elsewhere (a storage redirect) pass unchanged, but for a passed-through
// request's URL that names the backend's own network (internalHost).
func (v *view) url(s string) (string, bool) {
	u, err := url.Parse(s)
	if err != nil {
		return "", false
	}
	if v.kind < 0 {
		// Passed through (outside the API, an extension): the URL goes
		// to the client as the backend wrote it, unless it names the
		// backend's own network.
		if host := browserHost(s); host != "" && internalHost(host) && !strings.EqualFold(host, v.req.Host) {
			return "", false
		}
	}
	if !registry.MayReachAPI(nil, u.Path) {
		return s, true
	}
	t, err := registry.ParseTarget(nil, &http.Request{URL: u})
	if err != nil || !registry.IsRegistryPath(u.Path) {
		return "", false
	}
	if t.Name == "" {
		// The ping or the catalog: the client's path, wherever it came
		// from.
		rel := url.URL{Path: u.Path, RawQuery: u.RawQuery}
		return rel.String(), true
	}
	typed, ok := v.typed[t.Name]
	if !ok {
		return "", false
	}
	rel := url.URL{Path: v.clientPrefix + typed + u.Path[len(t.Base):], RawQuery: u.RawQuery}
	if v.via.NS != "" {
		// The name means what the client meant only with its ns, which
		// the backend never saw.
		// Appended, so the backend's own parameters (an upload's state)
		// go back byte for byte.
		ns := url.Values{"ns": {v.via.NS}}.Encode()
		if rel.RawQuery == "" {
			rel.RawQuery = ns
		} else {
			rel.RawQuery += "&" + ns
		}
	}
	return rel.String(), true
}

// link rewrites the URL of each `<url>; rel=...` entry of a Link header;
// false when one of them must not reach the client.
func (v *view) link(h string) (string, bool) {
	var b strings.Builder
	for {
		open := strings.IndexByte(h, '<')
		if open < 0 {
			b.WriteString(h)
			return b.String(), true
		}
		end := strings.IndexByte(h[open:], '>')
		if end < 0 {
			return "", false
		}
		end += open
		u, ok := v.url(h[open+1 : end])
		if !ok {
			return "", false
		}
		b.WriteString(h[:open+1])
		b.WriteString(u)
		h = h[end:]
		b.WriteByte('>')
		h = h[1:]
	}
}

// rewritesBody reports whether the body of a response with this status
// and header names repositories and is small: a tag list, or a JSON error
// (whose detail and message may name the backend's repository).
func (v *view) rewritesBody(status int, h http.Header) bool {
	if len(v.typed) == 0 {
		return false
	}
	if v.kind == registry.RouteTags && status == http.StatusOK {
		// Whatever its type says (go-containerregistry's has none): a
		// tag list that cannot be read is not passed on.
		return true
	}
	return status >= 400 && strings.Contains(h.Get("Content-Type"), "json")
}

var errTooBig = errors.New("response too large to rewrite")

// body rewrites a tag list's name, or every repository name in an error
// envelope's strings.
func (v *view) body(status int, raw []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("decoding backend body: %w", err)
	}
	if status < 400 {
		obj, ok := doc.(map[string]any)
		if !ok {
			return nil, errors.New("tag list is not an object")
		}
		if n, ok := obj["name"].(string); ok {
			typed, known := v.typed[n]
			if !known {
				return nil, fmt.Errorf("tag list of %q, which the client did not ask for", n)
			}
			obj["name"] = typed
		}
	} else {
		doc = v.walk(doc)
	}
	out, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("encoding rewritten body: %w", err)
	}
	return append(out, '\n'), nil
}

// walk replaces backend names in every string of an error body.
func (v *view) walk(x any) any {
	switch x := x.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = v.walk(e)
		}
	case []any:
		for i, e := range x {
			x[i] = v.walk(e)
		}
	case string:
		for backend, typed := range v.typed {
			x = replaceName(x, backend, typed)
		}
		return x
	}
	return x
}

// replaceName replaces whole occurrences of name in s: not inside a
// longer name ("docker.io/library/debian" is not replaced within
// "docker.io/library/debian-slim").
func replaceName(s, name, with string) string {
	if name == with || !strings.Contains(s, name) {
		return s
	}
	var b strings.Builder
	for {
		i := strings.Index(s, name)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		end := i + len(name)
		whole := (i == 0 || !nameByte(s[i-1])) && (end == len(s) || !nameByte(s[end]))
		b.WriteString(s[:i])
		if whole {
			b.WriteString(with)
		} else {
			b.WriteString(name)
		}
		s = s[end:]
	}
}

func nameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == '/'
}

// browserHost is the host[:port] a browser or HTTP client would go to
// following s: it drops tabs and newlines anywhere, and reads a backslash
// as a slash (`http:\\10.0.0.1\`, `/\10.0.0.1/`), as browsers do. ""
// for a URL on the same host (a path).
func browserHost(s string) string {
	s = strings.Map(func(r rune) rune {
		switch r {
		case '\t', '\n', '\r':
			return -1
		case '\\':
			return '/'
		}
		return r
	}, strings.TrimSpace(s))
	u, err := url.Parse(s)
	if err != nil {
		return "" // the caller has refused what does not parse
	}
	return u.Host
}

// internalSuffixes are name suffixes of hosts only a backend's own
// network resolves: Kubernetes services, the names RFC 6761 and ICANN
// keep for private use.
var internalSuffixes = []string{".localhost", ".internal", ".svc", ".cluster.local"}

// internalHost reports whether hostport names an address of the network
// the backend runs in rather than one a client is meant to use: a
// loopback, private, link-local or unspecified IP address, a name of one
// label (localhost, a compose service such as harbor-core), or a name
// under internalSuffixes. Names in public form may still be internal; the
// front cannot know, and passes them.
func internalHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.Trim(host, "[]"), ".")
	if i := strings.IndexByte(host, '%'); i >= 0 {
		host = host[:i] // an IPv6 zone
	}
	host = strings.ToLower(host)
	a, err := netip.ParseAddr(host)
	if err != nil {
		var isIP bool
		if a, isIP = browserIPv4(host); isIP && !a.IsValid() {
			return true // an address no browser goes to: nothing to pass
		}
	}
	if a.IsValid() {
		a = a.Unmap()
		return a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() || a.IsUnspecified()
	}
	if !strings.Contains(host, ".") {
		return true
	}
	for _, sfx := range internalSuffixes {
		if strings.HasSuffix(host, sfx) {
			return true
		}
	}
	return false
}

// browserIPv4 reads host as browsers do (the WHATWG URL standard) when its
// last label is a number: an IPv4 address of one to four numbers, each
// decimal, octal (a leading 0) or hex (0x), the last filling the bytes
// left (127.1, 0x7f.0.0.1, 2130706433 are all 127.0.0.1). isIP reports
// whether browsers take host for an address; a is invalid when they
// take it for one but cannot read it.
func browserIPv4(host string) (a netip.Addr, isIP bool) {
	labels := strings.Split(host, ".")
	if _, ok := browserNumber(labels[len(labels)-1]); !ok {
		return netip.Addr{}, false
	}
	if len(labels) > 4 {
		return netip.Addr{}, true
	}
	var n [4]uint64
	for i, l := range labels {
		v, ok := browserNumber(l)
		if !ok {
			return netip.Addr{}, true
		}
		n[i] = v
	}
	last := len(labels) - 1
	for i := range last {
		if n[i] > 255 {
			return netip.Addr{}, true
		}
	}
	if n[last] >= 1<<(8*(4-last)) {
		return netip.Addr{}, true
	}
	v := n[last]
	for i := range last {
		v |= n[i] << (8 * (3 - i))
	}
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true
}

// browserNumber reads one label of a browser's IPv4 address.
func browserNumber(s string) (uint64, bool) {
	base := 10
	switch {
	case len(s) >= 2 && (s[:2] == "0x"):
		base, s = 16, s[2:]
		if s == "" {
			return 0, true
		}
	case len(s) > 1 && s[0] == '0':
		base, s = 8, s[1:]
	}
	if s == "" {
		return 0, false
	}
	v, err := strconv.ParseUint(s, base, 64)
	return v, err == nil
}
