package front

// What the front passes on. A request under the API is passed only when
// it parses into a name, a route and a last element the route takes, and
// then in a canonical form the front writes itself; a backend never sees
// the client's own spelling of an API path, which it might read
// differently (dot segments, repeated slashes, a trailing slash, encoded
// slashes) and answer with its own names and realm.

import (
	"fmt"
	"net/http"
	"path"
	"regexp"
	"strings"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/registry"
)

// target reads r as an API request the front can map: registry's
// ParseTarget, with the last element checked against its route (a tag or
// digest for manifests, a digest for blobs and referrers, an upload id).
// Names are checked when they are mapped.
func (f *Front) target(r *http.Request) (registry.Target, error) {
	t, err := registry.ParseTarget(f.names, r)
	if err != nil {
		return t, err
	}
	if !validArg(t.Kind, t.Arg) {
		return t, fmt.Errorf("%w: %q is not what %s takes", registry.ErrPathUnknown, t.Arg, r.URL.Path)
	}
	return t, nil
}

// digestRE is the distribution spec's digest grammar, of any algorithm:
// the backend, not the front, knows which it stores.
var digestRE = regexp.MustCompile(`^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$`)

// maxArg bounds a digest or upload id (a sha512 digest is 135 bytes).
const maxArg = 256

func validDigest(s string) bool { return len(s) <= maxArg && digestRE.MatchString(s) }

// validUploadID takes what registries hand out (UUIDs, random strings):
// one path segment of URL-safe characters, never a dot segment.
func validUploadID(s string) bool {
	if s == "" || len(s) > maxArg || strings.Trim(s, ".") == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~' || c == '=') {
			return false
		}
	}
	return true
}

func validArg(kind registry.RouteKind, arg string) bool {
	switch kind {
	case registry.RouteManifest:
		return registry.ValidTag(arg) || validDigest(arg)
	case registry.RouteBlob, registry.RouteReferrers:
		return validDigest(arg)
	case registry.RouteUpload:
		return validUploadID(arg)
	}
	return arg == ""
}

// extensionPrefixes are the API paths of backends' own extensions, passed
// on as they are (with the backend's challenges still rewritten): zot's
// search and user preferences, and the OCI extensions discovery.
var extensionPrefixes = []string{"/v2/_zot/ext/", "/v2/_oci/ext/"}

// isExtension reports whether r is a request for an extension path, in
// the one spelling that every server reads alike: no encoded characters,
// no dot segments, repeated slashes, backslashes or control characters.
func isExtension(r *http.Request) bool {
	p := r.URL.Path
	if r.URL.RawPath != "" || path.Clean(p) != strings.TrimSuffix(p, "/") || strings.ContainsAny(p, "\\;%") {
		return false
	}
	for _, c := range p {
		if c < 0x20 || c == 0x7f {
			return false
		}
	}
	for _, e := range extensionPrefixes {
		if strings.HasPrefix(p, e) && len(p) > len(e) {
			return true
		}
	}
	return false
}

// refusePath answers an API path the front will not pass on.
func (f *Front) refusePath(w http.ResponseWriter, r *http.Request, t registry.Target, err error) {
	f.refuse(w, r, t, registry.NewError(http.StatusNotFound, registry.CodeNotFound, "no such endpoint", err))
}

// passThrough hands a request outside the API to next as it came, with
// the backend's challenges, Location and Link still put in the client's
// view: a backend may challenge any path, naming its own realm.
func (f *Front) passThrough(w http.ResponseWriter, r *http.Request, via authscope.Via, next Next) error {
	apiArea := registry.MayReachAPI(f.names, r.URL.Path) || registry.MayReachOwn(r.URL.Path)
	if apiArea && r.Method == http.MethodConnect {
		f.refuse(w, r, registry.Target{}, registry.NewError(http.StatusMethodNotAllowed, registry.CodeUnsupported, "the registry API does not switch protocols", nil))
		return nil
	}
	out := r.Clone(r.Context())
	if apiArea {
		// A backend's extensions under /v2/ (zot's search, OCI's
		// discovery) are registry API as much as the rest: an upgrade
		// there would make the connection a raw tunnel to the backend,
		// whose later requests the front would neither map nor check,
		// as on the API paths (Serve). Paths outside the API keep it: a
		// backend's web UI may use WebSockets.
		out.Header.Del("Upgrade")
	}
	// A sign-in session of this server (oci_registry's OIDC on the same
	// host) is never the backend's business.
	authscope.DropSignInCookies(out.Header)
	v := &view{front: f, req: r, via: authscope.Via{Host: via.Host}, kind: -1}
	rw := &responseWriter{ResponseWriter: w, view: v, head: r.Method == http.MethodHead}
	err := next(rw, out)
	if ferr := rw.finish(); ferr != nil && err == nil {
		err = ferr
	}
	return err
}
