package authscope

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strings"
)

// Name mapping: clients reach a mirror in several ways (CLIENTS.md) —
// `/v2/docker.io/library/debian`, containerd's `/docker.io/v2/library/debian`
// and `?ns=docker.io`, Docker's un-prefixed `registry-mirrors` requests, a
// host alias. Names turns each of these into one internal name
// (`docker.io/library/debian`); everything after that speaks internal names
// only. The same mapping serves requests and token scopes, so a token
// service sees exactly the names the registry enforces.

// MaxNameLength is the longest repository name accepted (the spec: fewer
// than 256 characters).
const MaxNameLength = 255

var nameRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)

// ErrNameInvalid is returned for a name outside the distribution spec's
// grammar.
var ErrNameInvalid = errors.New("invalid repository name")

// ErrNamespaceUnknown is returned when a request names an upstream
// (`?ns=`, `/<prefix>/v2/`) that is not configured here.
var ErrNamespaceUnknown = errors.New("namespace not served here")

// ValidName reports whether s is a repository name by the spec's grammar
// (`[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`,
// at most MaxNameLength characters). The grammar has no room for "..",
// empty components or leading slashes, so a valid name is also safe as a
// path below a folder.
func ValidName(s string) bool {
	return len(s) > 0 && len(s) <= MaxNameLength && nameRE.MatchString(s)
}

// Namespace is one mirrored upstream as clients name it.
type Namespace struct {
	// Prefix is the first component of every internal name in the
	// namespace, e.g. "docker.io".
	Prefix string
	// Aliases are other registry host names that mean this namespace in
	// `?ns=` and `/<alias>/v2/` (e.g. "registry-1.docker.io").
	Aliases []string
	// Hosts are request hosts whose un-prefixed names belong here (a host
	// alias such as "docker.mirror.example"). Without a port a host
	// matches on any port.
	Hosts []string
	// Default makes un-prefixed names on any other host belong here
	// (Docker's registry-mirrors), except names under Names' local
	// prefixes.
	Default bool
	// LibraryPrefix, when set, is put before one-component names
	// ("debian" -> "library/debian" on Docker Hub).
	LibraryPrefix string
}

// WithDefaults fills in what a namespace of a well-known upstream needs
// when the config leaves it out: docker.io is also reached as
// registry-1.docker.io and index.docker.io (containerd's and regctl's
// `ns`), and puts "library/" before one-component names.
func (ns Namespace) WithDefaults() Namespace {
	if ns.Prefix == "docker.io" {
		aliases := slices.Clone(ns.Aliases)
		for _, a := range []string{"registry-1.docker.io", "index.docker.io"} {
			if !slices.Contains(aliases, a) {
				aliases = append(aliases, a)
			}
		}
		ns.Aliases = aliases
		if ns.LibraryPrefix == "" {
			ns.LibraryPrefix = "library"
		}
	}
	return ns
}

// Via is how a request reached the server, apart from the name in its path.
type Via struct {
	Host       string // the request's Host header
	NS         string // the `ns` query parameter
	PathPrefix string // <p> of a `/<p>/v2/...` path
}

// Names maps what clients type to internal names.
type Names struct {
	spaces []Namespace
	local  []string
}

// NewNames checks the namespaces and returns their mapping. local lists
// name prefixes that stay in the local registry even when a namespace is
// the default.
func NewNames(spaces []Namespace, local []string) (*Names, error) {
	// The errors name the config directives (mirror, alias, default,
	// library_prefix, local) of both oci_registry and oci_front.
	seen := map[string]string{} // prefix or alias -> the mirror's prefix
	var deflt string
	for _, ns := range spaces {
		if !ValidName(ns.Prefix) || strings.Contains(ns.Prefix, "/") {
			return nil, fmt.Errorf("mirror %q: the prefix must be one name component such as docker.io", ns.Prefix)
		}
		for _, k := range append([]string{ns.Prefix}, ns.Aliases...) {
			if other, ok := seen[k]; ok {
				return nil, fmt.Errorf("mirror %s: %q is already a prefix or alias of mirror %s", ns.Prefix, k, other)
			}
			seen[k] = ns.Prefix
		}
		if ns.LibraryPrefix != "" && !ValidName(ns.LibraryPrefix) {
			return nil, fmt.Errorf("mirror %s: library_prefix %q is not a valid name", ns.Prefix, ns.LibraryPrefix)
		}
		if ns.Default {
			if deflt != "" {
				return nil, fmt.Errorf("mirror %s: default: mirror %s is already the default, and at most one mirror may be", ns.Prefix, deflt)
			}
			deflt = ns.Prefix
		}
	}
	for _, l := range local {
		if !ValidName(l) {
			return nil, fmt.Errorf("local %q: not a valid repository name prefix", l)
		}
		if m, ok := seen[firstComponent(l)]; ok {
			msg := fmt.Sprintf("local %s: lies inside mirror %s, whose names are all mirrored and read-only", l, m)
			if rest, ok := strings.CutPrefix(l, firstComponent(l)+"/"); ok && deflt != "" {
				msg += fmt.Sprintf("; a local prefix is written as clients type it: local %s", rest)
			}
			return nil, errors.New(msg)
		}
	}
	return &Names{spaces: spaces, local: local}, nil
}

// byKey finds the namespace whose prefix or alias is k.
func (n *Names) byKey(k string) *Namespace {
	for i := range n.spaces {
		ns := &n.spaces[i]
		if ns.Prefix == k {
			return ns
		}
		for _, a := range ns.Aliases {
			if a == k {
				return ns
			}
		}
	}
	return nil
}

// IsPathPrefix reports whether p, from a `/<p>/v2/...` path, names a
// namespace.
func (n *Names) IsPathPrefix(p string) bool { return n != nil && n.byKey(p) != nil }

// Lookup returns the namespace an internal name lies in, or nil for the
// local registry.
func (n *Names) Lookup(internal string) *Namespace {
	if n == nil {
		return nil
	}
	first := firstComponent(internal)
	for i := range n.spaces {
		if n.spaces[i].Prefix == first && len(internal) > len(first) {
			return &n.spaces[i]
		}
	}
	return nil
}

// Internal maps the name a client typed, reaching the server via v, to the
// internal name. The result is always a valid name; a typed name that is
// invalid, or that maps to an invalid one, gives ErrNameInvalid, and an
// upstream named by v that is not configured gives ErrNamespaceUnknown.
func (n *Names) Internal(typed string, v Via) (string, error) {
	if !ValidName(typed) {
		return "", fmt.Errorf("%w: %q", ErrNameInvalid, typed)
	}
	ns, err := n.selected(typed, v)
	if err != nil {
		return "", err
	}
	name := typed
	if ns == nil {
		// Local, or already internal (`/v2/docker.io/library/debian`):
		// the name carries its prefix.
		if ns = n.Lookup(typed); ns == nil {
			return typed, nil
		}
	} else if !strings.HasPrefix(typed, ns.Prefix+"/") {
		// Already internal when it starts with the prefix: regctl's
		// --path-prefix with ?ns=, and the second of containerd's two
		// scopes.
		name = ns.Prefix + "/" + typed
	}
	// Every spelling of a one-component upstream name gets the library
	// prefix, `docker.io/alpine` as much as `alpine`: policies are written
	// on internal names, so two spellings of one image must never be two
	// names.
	if rest := strings.TrimPrefix(name, ns.Prefix+"/"); ns.LibraryPrefix != "" && !strings.Contains(rest, "/") {
		name = ns.Prefix + "/" + ns.LibraryPrefix + "/" + rest
	}
	if !ValidName(name) {
		return "", fmt.Errorf("%w: %q maps to %q", ErrNameInvalid, typed, name)
	}
	return name, nil
}

// selected picks the namespace the request means, or nil for local.
func (n *Names) selected(typed string, v Via) (*Namespace, error) {
	if n == nil {
		return nil, nil
	}
	if v.PathPrefix != "" {
		if ns := n.byKey(v.PathPrefix); ns != nil {
			return ns, nil
		}
		return nil, fmt.Errorf("%w: %q", ErrNamespaceUnknown, v.PathPrefix)
	}
	if v.NS != "" && !sameHost(v.NS, v.Host) {
		if ns := n.byKey(v.NS); ns != nil {
			return ns, nil
		}
		if n.Lookup(typed) == nil {
			return nil, fmt.Errorf("%w: %q", ErrNamespaceUnknown, v.NS)
		}
		// The name already says which mirror it means and ns names a
		// host we do not know: regctl sends whatever hostname it has
		// configured for docker.io, even on `/v2/docker.io/...`. The
		// path decides, as it would without ns.
	}
	if n.Lookup(typed) != nil {
		// `/v2/docker.io/library/debian`: the name carries its prefix.
		return nil, nil
	}
	for i := range n.spaces {
		for _, h := range n.spaces[i].Hosts {
			if hostMatches(h, v.Host) {
				return &n.spaces[i], nil
			}
		}
	}
	// An ns naming this server (containerd pushing to it through a
	// _default hosts.toml) asks for the local registry, not the default
	// mirror.
	ownNS := v.NS != ""
	for i := range n.spaces {
		if n.spaces[i].Default && !ownNS && !n.isLocal(typed) {
			return &n.spaces[i], nil
		}
	}
	return nil, nil
}

// WhyMirrored explains, for a refused write, how a name the client typed
// without a mirror's prefix came to lie in that mirror: by the default
// mirror or by a `host` of one. It is empty when the client named the
// mirror itself (its prefix in the name or the path, or `ns`), or when
// the name is not mirrored. The explanation names the config line that
// keeps the name local, since a push to `me/app` on a server whose
// default mirror is docker.io otherwise reads as a refusal of docker.io.
func (n *Names) WhyMirrored(typed string, v Via) string {
	if n == nil || !ValidName(typed) || v.PathPrefix != "" || (v.NS != "" && n.byKey(v.NS) != nil) || n.Lookup(typed) != nil {
		return ""
	}
	ns, err := n.selected(typed, v)
	if err != nil || ns == nil {
		return ""
	}
	internal, err := n.Internal(typed, v)
	if err != nil {
		return ""
	}
	first := firstComponent(typed)
	for _, h := range ns.Hosts {
		if hostMatches(h, v.Host) {
			return fmt.Sprintf("%q was taken as %q because host %s belongs to mirror %s; push through another host name, or to a name outside the mirror",
				typed, internal, h, ns.Prefix)
		}
	}
	return fmt.Sprintf("%q was taken as %q because %s is the default mirror; \"local %s\" in oci_registry keeps %s/... local",
		typed, internal, ns.Prefix, first, first)
}

func (n *Names) isLocal(name string) bool {
	for _, l := range n.local {
		if name == l || strings.HasPrefix(name, l+"/") {
			return true
		}
	}
	return false
}

func firstComponent(name string) string {
	first, _, _ := strings.Cut(name, "/")
	return first
}

// hostMatches compares a configured host with a request's Host header; a
// configured host without a port matches any port. Case and a trailing
// dot (the absolute spelling of a DNS name, which reaches the same
// server) do not count: a client that spells a mirror's host so must not
// get the default mirror's image of the same name instead.
func hostMatches(configured, requested string) bool {
	configured, requested = absoluteHost(configured), absoluteHost(requested)
	if strings.EqualFold(configured, requested) {
		return true
	}
	if _, _, err := net.SplitHostPort(configured); err == nil {
		return false
	}
	h, _, err := net.SplitHostPort(requested)
	return err == nil && strings.EqualFold(configured, h)
}

// absoluteHost is h (host or host:port) without its name's trailing dot.
func absoluteHost(h string) string {
	if host, port, err := net.SplitHostPort(h); err == nil {
		if t := strings.TrimSuffix(host, "."); t != host {
			return net.JoinHostPort(t, port)
		}
		return h
	}
	return strings.TrimSuffix(h, ".")
}

// sameHost reports whether ns names this server itself (containerd sends
// the image's own registry as ns; when that is us, the name is local).
func sameHost(ns, host string) bool {
	return host != "" && (strings.EqualFold(ns, host) || hostMatches(ns, host))
}
