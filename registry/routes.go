package registry

import (
	"errors"
	"net/http"
	"net/url"
	pathpkg "path"
	"slices"
	"strings"

	"github.com/caddy-oci/caddy-oci/authscope"
)

// request is what routing learned about one request.
type request struct {
	// name is the repository, checked against the grammar.
	name string
	// base is the request path up to and including the name
	// ("/v2/library/debian"), so Location headers point back the way the
	// client came in.
	base string
	// typed is the name as the client typed it, for bodies that name the
	// repository (tags/list): a client never sees a name it did not type.
	typed string
	// nsQuery is the request's `ns` as a query ("ns=docker.io"), or empty,
	// carried into Location and Link so that following them resolves the
	// same name.
	nsQuery string
	// arg is the last path element: reference, digest or upload id.
	arg string
	// via is how the request came in, to map other names it carries (a
	// mount's source) as its own was mapped.
	via authscope.Via
	op  string
	// authed is the request as the Authorizer passed it (carrying the
	// caller's identity), for the audit log; nil without auth.
	authed *http.Request
	// caller is a mirrored request as auth passed it, whose client a
	// miss is counted against (mirror_misses.go).
	caller *http.Request
	// tagMove: a manifest PUT that points an existing tag elsewhere (or
	// gives a manifest held here another media type): an update.
	tagMove bool
	// putNeed is what a manifest PUT was authorized for, to ask again
	// when it turns out to be an update (putManifest); nil without auth.
	putNeed *authscope.Need
	// pushed is a manifest PUT's body, when authorization received it
	// (movesTag); nil otherwise.
	pushed *pushedManifest
	// mirror serves name when it lies in a mirrored namespace.
	mirror *Mirror
	// sigPolicy names the signature policy that refused the manifest,
	// for the audit log.
	sigPolicy string
}

type handlerFunc func(h *Handler, w http.ResponseWriter, r *http.Request, rc *request) error

type endpoint struct {
	op string
	fn handlerFunc
}

// RouteKind is the shape of an API path, which names the resource a
// request is about.
type RouteKind int

// The API's path shapes.
const (
	RoutePing RouteKind = iota
	RouteCatalog
	RouteTags
	RouteManifest
	RouteBlob
	RouteUploads // /blobs/uploads/
	RouteUpload  // /blobs/uploads/<id>
	RouteReferrers
)

// routes is the whole API: path shape -> method -> operation and handler.
var routes = map[RouteKind]map[string]endpoint{
	RoutePing: {
		http.MethodGet:  {OpPing, (*Handler).ping},
		http.MethodHead: {OpPing, (*Handler).ping},
	},
	RouteCatalog: {
		http.MethodGet: {OpCatalog, (*Handler).catalog},
	},
	RouteTags: {
		http.MethodGet: {OpTagsList, (*Handler).tagsList},
	},
	RouteManifest: {
		http.MethodGet:    {OpManifestGet, (*Handler).manifestGet},
		http.MethodHead:   {OpManifestHead, (*Handler).manifestGet},
		http.MethodPut:    {OpManifestPut, (*Handler).manifestPut},
		http.MethodDelete: {OpManifestDelete, (*Handler).manifestDelete},
	},
	RouteBlob: {
		http.MethodGet:    {OpBlobGet, (*Handler).blobGet},
		http.MethodHead:   {OpBlobHead, (*Handler).blobGet},
		http.MethodDelete: {OpBlobDelete, (*Handler).blobDelete},
	},
	RouteUploads: {
		http.MethodPost: {OpUploadStart, (*Handler).uploadStart},
	},
	RouteUpload: {
		http.MethodGet:    {OpUploadStatus, (*Handler).uploadStatus},
		http.MethodPatch:  {OpUploadChunk, (*Handler).uploadChunk},
		http.MethodPut:    {OpUploadFinish, (*Handler).uploadFinish},
		http.MethodDelete: {OpUploadCancel, (*Handler).uploadCancel},
	},
	RouteReferrers: {
		http.MethodGet: {OpReferrers, (*Handler).referrers},
	},
}

// ErrPathUnknown is a path outside the distribution API.
var ErrPathUnknown = errors.New("path unknown")

// matchPath splits an API path into its route and parts. The repository
// name is everything between /v2/ and the action suffix, matched from the
// end, since a name may itself contain "blobs" or "manifests" as a
// component. The name is returned unchecked.
func matchPath(path string) (kind RouteKind, name, arg string, err error) {
	if path == "/v2" || path == "/v2/" {
		return RoutePing, "", "", nil
	}
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return 0, "", "", ErrPathUnknown
	}
	if rest == "_catalog" {
		return RouteCatalog, "", "", nil
	}
	segs := strings.Split(rest, "/")
	n := len(segs)
	at := func(i int) string { // segment i from the end, 1-based
		if i > n {
			return "\x00"
		}
		return segs[n-i]
	}
	prefix := func(k int) string { return strings.Join(segs[:n-k], "/") }
	switch {
	case n >= 3 && at(3) == "blobs" && at(2) == "uploads":
		if at(1) == "" {
			return RouteUploads, prefix(3), "", nil
		}
		return RouteUpload, prefix(3), at(1), nil
	case n >= 3 && at(2) == "blobs" && at(1) == "uploads":
		// POST /v2/<name>/blobs/uploads without the trailing slash
		return RouteUploads, prefix(2), "", nil
	case n >= 3 && at(2) == "tags" && at(1) == "list":
		return RouteTags, prefix(2), "", nil
	case n >= 3 && at(2) == "manifests" && at(1) != "":
		return RouteManifest, prefix(2), at(1), nil
	case n >= 3 && at(2) == "blobs" && at(1) != "":
		return RouteBlob, prefix(2), at(1), nil
	case n >= 3 && at(2) == "referrers" && at(1) != "":
		return RouteReferrers, prefix(2), at(1), nil
	}
	return 0, "", "", ErrPathUnknown
}

// splitPathPrefix splits `/<p>/v2/...` into p and `/v2/...`.
func splitPathPrefix(path string) (prefix, rest string, ok bool) {
	p, after, found := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	if !found || p == "" || !IsRegistryPath("/"+after) {
		return "", "", false
	}
	return p, "/" + after, true
}

// MayReachAPI reports whether path is a path of the API (`/v2` and below,
// or `/<prefix>/v2` and below for a namespace prefix of names) as a
// server less strict than this one may read it: percent-decoded again,
// case-folded, with backslashes as slashes, `;` parameters dropped,
// repeated slashes and dot segments resolved, or cut at a control
// character. Such a path that ParseTarget refuses is answered, never
// passed to another handler or a backend, which might serve it as the
// API without the name mapping and auth that the API gets here.
func MayReachAPI(names *authscope.Names, path string) bool {
	// The path as it came is the first reading; most requests are API
	// requests spelled plainly, and need none of the others built.
	if reachesAPI(names, path) {
		return true
	}
	for _, p := range lenientForms(path)[1:] {
		if reachesAPI(names, p) {
			return true
		}
	}
	return false
}

// reachesAPI reports whether path, read as it is, is an API path.
func reachesAPI(names *authscope.Names, path string) bool {
	if IsRegistryPath(path) {
		return true
	}
	prefix, _, ok := splitPathPrefix(path)
	return ok && names.IsPathPrefix(prefix)
}

// OwnRoot is the root of this server's endpoints outside the API: the
// token proxy, the sign-in pages.
const OwnRoot = "/_oci"

// MayReachOwn reports whether path is OwnRoot or below as a server less
// strict than this one may read it (the readings of MayReachAPI). A
// handler that serves any endpoint under OwnRoot answers every such path
// itself (404 for those not exactly its own): passed on, `/_OCI/token` or
// `/x/../_oci/auth/` could reach a backend's endpoint of the same name, or
// this server's, past the checks of the handler in front.
func MayReachOwn(path string) bool {
	for _, p := range lenientForms(path) {
		if p == OwnRoot || strings.HasPrefix(p, OwnRoot+"/") {
			return true
		}
	}
	return false
}

// maxDecodes bounds how often lenientForms percent-decodes a path.
const maxDecodes = 3

// lenientForms is path as lenient servers may read it (see MayReachAPI).
func lenientForms(path string) []string {
	forms := []string{path}
	for i := 0; ; i++ {
		p := strings.ToLower(strings.ReplaceAll(path, `\`, "/"))
		forms = append(forms, p, cleanPath(p))
		if cut := strings.IndexFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f }); cut >= 0 {
			forms = append(forms, cleanPath(p[:cut]))
		}
		decoded, err := url.PathUnescape(path)
		if i == maxDecodes || err != nil || decoded == path {
			return forms
		}
		path = decoded
	}
}

// cleanPath drops the `;` parameters of each segment of p and resolves
// its repeated slashes and dot segments.
func cleanPath(p string) string {
	segs := strings.Split(p, "/")
	for i, s := range segs {
		segs[i], _, _ = strings.Cut(s, ";")
	}
	return pathpkg.Clean("/" + strings.Join(segs, "/"))
}

// Target is what a request's URL names, before its name is mapped: the
// path shape, the repository as the client typed it, and how the request
// reached the server. The registry and the front (registry/front) read
// requests through ParseTarget alike, so both see every client's path
// forms the same way.
type Target struct {
	Kind RouteKind
	// Name is the repository as typed, unchecked; empty for the ping and
	// the catalog.
	Name string
	// Arg is the last path element: reference, digest or upload id.
	Arg string
	// Via is the request's Host, `ns` and `/<prefix>/v2/` path prefix.
	Via authscope.Via
	// Base is the request path up to and including Name
	// ("/docker.io/v2/library/debian"), so that Location and Link headers
	// lead back the way the client came in; empty without a name.
	Base string
}

// ParseTarget reads r's path and query. names (nil: no namespaces) tells
// `/<prefix>/v2/...` paths from others. On an error wrapping
// ErrPathUnknown the returned Target still carries Via.
func ParseTarget(names *authscope.Names, r *http.Request) (Target, error) {
	path := r.URL.Path
	t := Target{Via: authscope.Via{Host: r.Host, NS: r.URL.Query().Get("ns")}}
	if !IsRegistryPath(path) {
		if p, rest, ok := splitPathPrefix(path); ok && names.IsPathPrefix(p) {
			t.Via.PathPrefix, path = p, rest
		}
	}
	kind, name, arg, err := matchPath(path)
	if err != nil {
		// `/v2/<prefix>/` is the ping of a client configured with the
		// prefix as its mirror path (regctl --path-prefix).
		if p := strings.TrimSuffix(strings.TrimPrefix(path, "/v2/"), "/"); IsRegistryPath(path) && names.IsPathPrefix(p) {
			return Target{Kind: RoutePing, Via: t.Via}, nil
		}
		return t, err
	}
	t.Kind, t.Name, t.Arg = kind, name, arg
	if name != "" {
		t.Base = strings.TrimSuffix(r.URL.Path[:len(r.URL.Path)-len(path)+len("/v2/")+len(name)], "/")
	}
	return t, nil
}

func (h *Handler) dispatch(w http.ResponseWriter, r *http.Request, rc *request) error {
	if err := authscope.OneAuthorization(r.Header); err != nil {
		// Which credentials count would be up to each proxy on the way.
		return newError(http.StatusBadRequest, CodeUnauthorized, "send one Authorization header", err)
	}
	if r.URL.RawQuery != "" { // most requests have none: no map made for them
		if _, err := url.ParseQuery(r.URL.RawQuery); err != nil {
			// Go reads such a query in part (a bad escape or a `;` loses
			// its parameter, more than 10,000 parameters lose them all),
			// and every reader of it would act on what it missed: a push
			// whose tags vanished would be answered 201.
			return newError(http.StatusBadRequest, CodeUnsupported, "the query string cannot be read: "+err.Error(), err)
		}
	}
	t, err := ParseTarget(h.names, r)
	via := t.Via
	if via.NS != "" {
		w.Header().Set("OCI-Namespace", via.NS)
	}
	if err != nil {
		return newError(http.StatusNotFound, CodeNotFound, "no such endpoint", err)
	}
	kind, name, arg := t.Kind, t.Name, t.Arg
	methods := routes[kind]
	ep, ok := methods[r.Method]
	if !ok {
		rc.op = OpUnsupported
		allow := make([]string, 0, len(methods))
		for m := range methods {
			allow = append(allow, m)
		}
		slices.Sort(allow)
		return newError(http.StatusMethodNotAllowed, CodeUnsupported, "method not allowed", nil).
			withHeader("Allow", strings.Join(allow, ", "))
	}
	rc.op = ep.op
	rc.arg = arg
	if kind == RoutePing || kind == RouteCatalog {
		if r, err = h.authorize(w, r, rc, kind, via); err != nil {
			return err
		}
		return ep.fn(h, w, r, rc)
	}
	rc.name = name
	internal, err := h.names.Internal(name, via)
	switch {
	case errors.Is(err, authscope.ErrNamespaceUnknown):
		return newError(http.StatusNotFound, CodeNameUnknown, "namespace not served here", err)
	case err != nil:
		return newError(http.StatusBadRequest, CodeNameInvalid, "invalid repository name", err)
	}
	rc.name = internal
	// For a store made of several, which routes by repository.
	r = r.WithContext(WithRepository(r.Context(), internal))
	// The way the client came in, so Location and Link lead back to it.
	rc.base, rc.typed, rc.via = t.Base, name, via
	if via.NS != "" {
		rc.nsQuery = url.Values{"ns": {via.NS}}.Encode()
	}
	if h.cfg.ReadOnly && !readsOnly(r.Method) {
		// Before auth, which may read a manifest's body: the same answer
		// for every caller, and no credentials asked for a write that
		// cannot happen.
		return errRegistryReadOnly()
	}
	defer func() { rc.pushed.done() }() // set by authorize, held through the handler
	if r, err = h.authorize(w, r, rc, kind, via); err != nil {
		return err
	}
	if m := h.mirrorFor(internal); m != nil {
		if !m.serves(internal) {
			return newError(http.StatusNotFound, CodeNameUnknown, "repository not mirrored here", nil)
		}
		rc.mirror, rc.caller = m, r
		fn, ok := mirrorRoutes[ep.op]
		if !ok {
			return errReadOnly(m, h.names.WhyMirrored(name, via))
		}
		return fn(h, w, r, rc)
	}
	return ep.fn(h, w, r, rc)
}

// url is a path under the repository as the client named it
// (rc.base+suffix), with its `ns` kept.
func (rc *request) url(suffix string) string {
	if rc.nsQuery == "" {
		return rc.base + suffix
	}
	return rc.base + suffix + "?" + rc.nsQuery
}

// ping answers the API version check.
func (h *Handler) ping(w http.ResponseWriter, r *http.Request, _ *request) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", "2")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write([]byte("{}"))
	}
	return nil
}
