package registry

import (
	"errors"
	"net/http"
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
	// arg is the last path element: reference, digest or upload id.
	arg string
	op  string
	// authed is the request as the Authorizer passed it (carrying the
	// caller's identity), for the audit log; nil without auth.
	authed *http.Request
	// tagMove: a manifest PUT that points an existing tag elsewhere.
	tagMove bool
	// mirror serves name when it lies in a mirrored namespace.
	mirror *Mirror
}

type handlerFunc func(h *Handler, w http.ResponseWriter, r *http.Request, rc *request) error

type endpoint struct {
	op string
	fn handlerFunc
}

type routeKind int

const (
	routePing routeKind = iota
	routeCatalog
	routeTags
	routeManifest
	routeBlob
	routeUploads // /blobs/uploads/
	routeUpload  // /blobs/uploads/<id>
	routeReferrers
)

// routes is the whole API: path shape -> method -> operation and handler.
var routes = map[routeKind]map[string]endpoint{
	routePing: {
		http.MethodGet:  {OpPing, (*Handler).ping},
		http.MethodHead: {OpPing, (*Handler).ping},
	},
	routeCatalog: {
		http.MethodGet: {OpCatalog, (*Handler).catalog},
	},
	routeTags: {
		http.MethodGet: {OpTagsList, (*Handler).tagsList},
	},
	routeManifest: {
		http.MethodGet:    {OpManifestGet, (*Handler).manifestGet},
		http.MethodHead:   {OpManifestHead, (*Handler).manifestGet},
		http.MethodPut:    {OpManifestPut, (*Handler).manifestPut},
		http.MethodDelete: {OpManifestDelete, (*Handler).manifestDelete},
	},
	routeBlob: {
		http.MethodGet:    {OpBlobGet, (*Handler).blobGet},
		http.MethodHead:   {OpBlobHead, (*Handler).blobGet},
		http.MethodDelete: {OpBlobDelete, (*Handler).blobDelete},
	},
	routeUploads: {
		http.MethodPost: {OpUploadStart, (*Handler).uploadStart},
	},
	routeUpload: {
		http.MethodGet:    {OpUploadStatus, (*Handler).uploadStatus},
		http.MethodPatch:  {OpUploadChunk, (*Handler).uploadChunk},
		http.MethodPut:    {OpUploadFinish, (*Handler).uploadFinish},
		http.MethodDelete: {OpUploadCancel, (*Handler).uploadCancel},
	},
	routeReferrers: {
		http.MethodGet: {OpReferrers, (*Handler).referrers},
	},
}

var errPathUnknown = errors.New("path unknown")

// matchPath splits an API path into its route and parts. The repository
// name is everything between /v2/ and the action suffix, matched from the
// end, since a name may itself contain "blobs" or "manifests" as a
// component. The name is returned unchecked.
func matchPath(path string) (kind routeKind, name, arg string, err error) {
	if path == "/v2" || path == "/v2/" {
		return routePing, "", "", nil
	}
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return 0, "", "", errPathUnknown
	}
	if rest == "_catalog" {
		return routeCatalog, "", "", nil
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
			return routeUploads, prefix(3), "", nil
		}
		return routeUpload, prefix(3), at(1), nil
	case n >= 3 && at(2) == "blobs" && at(1) == "uploads":
		// POST /v2/<name>/blobs/uploads without the trailing slash
		return routeUploads, prefix(2), "", nil
	case n >= 3 && at(2) == "tags" && at(1) == "list":
		return routeTags, prefix(2), "", nil
	case n >= 3 && at(2) == "manifests" && at(1) != "":
		return routeManifest, prefix(2), at(1), nil
	case n >= 3 && at(2) == "blobs" && at(1) != "":
		return routeBlob, prefix(2), at(1), nil
	case n >= 3 && at(2) == "referrers" && at(1) != "":
		return routeReferrers, prefix(2), at(1), nil
	}
	return 0, "", "", errPathUnknown
}

// splitPathPrefix splits `/<p>/v2/...` into p and `/v2/...`.
func splitPathPrefix(path string) (prefix, rest string, ok bool) {
	p, after, found := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	if !found || p == "" || !IsRegistryPath("/"+after) {
		return "", "", false
	}
	return p, "/" + after, true
}

func (h *Handler) dispatch(w http.ResponseWriter, r *http.Request, rc *request) error {
	path := r.URL.Path
	via := authscope.Via{Host: r.Host, NS: r.URL.Query().Get("ns")}
	if !IsRegistryPath(path) {
		if p, rest, ok := splitPathPrefix(path); ok && h.names.IsPathPrefix(p) {
			via.PathPrefix, path = p, rest
		}
	}
	if via.NS != "" {
		w.Header().Set("OCI-Namespace", via.NS)
	}
	kind, name, arg, err := matchPath(path)
	if err != nil {
		// `/v2/<prefix>/` is the ping of a client configured with the
		// prefix as its mirror path (regctl --path-prefix).
		if p := strings.Trim(strings.TrimPrefix(path, "/v2/"), "/"); IsRegistryPath(path) && h.names.IsPathPrefix(p) {
			kind, err = routePing, nil
		} else {
			return newError(http.StatusNotFound, CodeNotFound, "no such endpoint", err)
		}
	}
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
	if kind == routePing || kind == routeCatalog {
		if r, err = h.authorize(r, rc, kind, via); err != nil {
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
	// The way the client came in, so Location and Link lead back to it.
	rc.base = strings.TrimSuffix(r.URL.Path[:len(r.URL.Path)-len(path)+len("/v2/")+len(name)], "/")
	if r, err = h.authorize(r, rc, kind, via); err != nil {
		return err
	}
	if m := h.mirrorFor(internal); m != nil {
		rc.mirror = m
		fn, ok := mirrorRoutes[ep.op]
		if !ok {
			return errReadOnly(m)
		}
		return fn(h, w, r, rc)
	}
	return ep.fn(h, w, r, rc)
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
