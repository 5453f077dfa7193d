package registry

// The auth hook: what a request needs, asked of the Authorizer once the
// internal name is known, and the audit of what changed.

import (
	"errors"
	"net/http"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/cache"
)

// Authorizer decides requests (authscope.Authorizer implements it).
type Authorizer interface {
	// Authorize passes (returning the request to go on with, which may
	// carry the caller's identity) or returns an *authscope.Denial.
	Authorize(r *http.Request, need authscope.Need) (*http.Request, error)
	// CanList reports whether the catalog may show repo to r's caller.
	CanList(r *http.Request, repo string) bool
	// Audit records a change the registry made.
	Audit(r *http.Request, e authscope.AuditEvent)
}

// PrefixLister is an Authorizer that can tell, before the catalog is
// scanned, where the repositories a caller may be shown can lie
// (authscope.Authorizer implements it): the catalog then reads only the
// names under those prefixes, so its cost follows what the caller may
// see rather than the size of the registry.
type PrefixLister interface {
	// ListPrefixes returns the prefixes every name r's caller may be
	// shown starts with, or all true when any name may be.
	ListPrefixes(r *http.Request) (prefixes []string, all bool)
}

var _ PrefixLister = (*authscope.Authorizer)(nil)

// Names is the handler's name mapping (nil without mirrors), for the
// token proxy, which must map scopes exactly as requests are mapped.
func (h *Handler) Names() *authscope.Names { return h.names }

// authorize asks the Authorizer what the request needs: GET/HEAD pull,
// POST/PUT/PATCH pull+push, DELETE delete; every upload request
// pull+push; a mount pull on its source; the catalog registry:catalog:*;
// the /v2/ check nothing but a welcome caller. It returns the request to
// serve, or the refusal as an *Error.
func (h *Handler) authorize(w http.ResponseWriter, r *http.Request, rc *request, kind RouteKind, via authscope.Via) (*http.Request, error) {
	if h.cfg.Authorizer == nil {
		return r, nil
	}
	need := authscope.Need{Via: via, Reference: rc.arg}
	if rc.name != "" {
		// A refusal names what the client typed, never the internal name.
		need.Typed = map[string]string{rc.name: rc.typed}
	}
	switch kind {
	case RoutePing:
	case RouteCatalog:
		need.Scopes = []authscope.Scope{authscope.CatalogScope}
	case RouteUploads, RouteUpload:
		need.Scopes = []authscope.Scope{authscope.RepositoryScope(rc.name, authscope.ScopePull, authscope.ScopePush)}
		if from := r.URL.Query().Get("from"); kind == RouteUploads && r.URL.Query().Get("mount") != "" && from != "" {
			// An unmappable source only loses the mount; the upload
			// handler falls back to a plain session.
			if src, err := h.names.Internal(from, via); err == nil && src != rc.name {
				need.Scopes = append(need.Scopes, authscope.RepositoryScope(src, authscope.ScopePull))
				need.Typed[src] = from
			}
		}
	default:
		need.Scopes = []authscope.Scope{authscope.RepositoryScope(rc.name, authscope.ActionsFor(r.Method)...)}
		if kind == RouteManifest && r.Method == http.MethodPut {
			return h.authorizeManifestPut(w, r, rc, need)
		}
	}
	return h.decide(r, rc, need)
}

// authorizeManifestPut decides a manifest push in two steps. The caller
// must first pass as a creator: only then is the body read and the tags
// looked up, so nobody else learns which tags exist (by the answer or by
// its timing) or makes the server read a body. If the push moves a tag,
// the policy is asked again for an update.
func (h *Handler) authorizeManifestPut(w http.ResponseWriter, r *http.Request, rc *request, need authscope.Need) (*http.Request, error) {
	ar, err := h.decide(r, rc, need)
	if err != nil {
		return r, err
	}
	rc.putNeed = &need
	moves, err := h.movesTag(w, ar, rc)
	if err != nil || !moves {
		return ar, err
	}
	return h.authorizeTagMove(ar, rc)
}

// authorizeTagMove asks the policy again for a manifest push found to
// move a tag (or to retype a manifest, see putManifest): an update, not a
// create.
func (h *Handler) authorizeTagMove(r *http.Request, rc *request) (*http.Request, error) {
	need := *rc.putNeed
	need.TagMove = true
	rc.tagMove = true
	return h.decide(r, rc, need)
}

// decide asks the Authorizer about need and turns a refusal into an *Error.
func (h *Handler) decide(r *http.Request, rc *request, need authscope.Need) (*http.Request, error) {
	ar, err := h.cfg.Authorizer.Authorize(r, need)
	if err == nil {
		rc.authed = ar
		return ar, nil
	}
	var d *authscope.Denial
	if !errors.As(err, &d) {
		if errors.Is(err, authscope.ErrUnavailable) {
			// The credentials may be right: a 401 would send the user to
			// change them, a 503 makes clients try again.
			return r, newError(http.StatusServiceUnavailable, CodeUnavailable,
				"credentials cannot be checked now: the identity service is unavailable; try again later", err).
				withHeader("Retry-After", "10")
		}
		return r, err
	}
	e := newError(d.Status, d.Code, d.Message, d)
	if d.Challenge != "" {
		e = e.withHeader("WWW-Authenticate", d.Challenge)
	}
	if d.RetryAfter > 0 {
		e = e.withHeader("Retry-After", authscope.RetryAfter(d.RetryAfter))
	}
	return r, e
}

// movesTag reports whether a manifest PUT points an existing tag at
// another manifest (an update, not a create, to policies). The body is
// received to learn its digest (against the receiving budget and within
// its read deadline, as the handler would: receiveManifestBody) and kept
// in rc.pushed for the handler.
func (h *Handler) movesTag(w http.ResponseWriter, r *http.Request, rc *request) (bool, error) {
	ref, err := ParseReference(rc.arg)
	if err != nil {
		return false, nil // the handler answers it
	}
	var tags []string
	if !ref.IsDigest() {
		tags = append(tags, ref.Tag)
	}
	tags = append(tags, r.URL.Query()["tag"]...)
	var current []cache.Digest
	for _, t := range tags {
		if !ValidTag(t) {
			continue
		}
		if d, err := h.cfg.Store.ResolveTag(r.Context(), rc.name, t); err == nil {
			current = append(current, d)
		}
	}
	if len(current) == 0 || r.ContentLength > h.cfg.MaxManifestSize {
		return false, nil // too large: the handler answers it, unread
	}
	body, received, err := receiveManifestBody(w, r, h.cfg.MaxManifestSize)
	if errors.Is(err, errClientGone) {
		return false, errInternal(err) // recorded as 499
	}
	if err != nil {
		return false, newError(http.StatusBadRequest, CodeManifestInvalid, "reading manifest failed", err)
	}
	rc.pushed = &pushedManifest{body: body, release: received}
	alg := cache.SHA256
	if ref.IsDigest() {
		alg = ref.Digest.Algorithm
	}
	d := cache.FromBytes(alg, body)
	for _, c := range current {
		if c != d {
			return true, nil
		}
	}
	return false, nil
}

// audit records a change that succeeded or failed on the audit log:
// manifest pushes (create, or update for a tag move), blob pushes and
// deletes.
func (h *Handler) audit(w http.ResponseWriter, rc *request, status int) {
	if h.cfg.Authorizer == nil || rc.authed == nil {
		return
	}
	var action string
	switch rc.op {
	case OpManifestPut, OpUploadFinish:
		action = authscope.ActionCreate
		if rc.tagMove {
			action = authscope.ActionUpdate
		}
	case OpManifestDelete, OpBlobDelete:
		action = authscope.ActionDelete
	case OpManifestGet, OpManifestHead:
		if rc.sigPolicy == "" {
			return
		}
		action = authscope.ActionRead // a pull a signature policy refused
	default:
		return
	}
	digest := w.Header().Get("Docker-Content-Digest")
	if digest == "" {
		if _, err := cache.ParseDigest(rc.arg); err == nil {
			digest = rc.arg
		}
	}
	ref := rc.arg
	if rc.op == OpUploadFinish {
		ref = "" // an upload id, not a reference
	}
	h.cfg.Authorizer.Audit(rc.authed, authscope.AuditEvent{
		Action: action, Name: rc.name, Reference: ref, Digest: digest, Status: status,
		SignaturePolicy: rc.sigPolicy,
	})
}
