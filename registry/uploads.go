package registry

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
)

// mountCandidates bounds how many repositories holding a blob are
// considered for a mount without `from`.
const mountCandidates = 100

// uploadStart serves POST /v2/<name>/blobs/uploads/: a cross-repository
// mount (?mount=), a monolithic upload (?digest= with the body), or the
// start of a session.
func (h *Handler) uploadStart(w http.ResponseWriter, r *http.Request, rc *request) error {
	q := r.URL.Query()
	if q.Has("mount") {
		d, err := parseDigestArg(q.Get("mount"))
		if err != nil {
			return err
		}
		mounted, err := h.mount(r, rc, d, q.Get("from"))
		if err != nil {
			return err
		}
		if mounted {
			rc.op = OpBlobMount
			return blobCreated(w, rc, d)
		}
		// Not mountable: the spec says to carry on as a plain upload.
	} else if q.Has("digest") {
		rc.op = OpUploadMonolithic
		d, err := parseDigestArg(q.Get("digest"))
		if err != nil {
			return err
		}
		if err := h.checkDeclaredSize(r.ContentLength); err != nil {
			return err
		}
		release, ok := h.monolithic.take(h.uploadOwner(r), h.cfg.Uploads.PerOwner)
		if !ok {
			return h.uploadRefusal(fmt.Errorf("%w: %d monolithic pushes of this client in flight", cache.ErrTooManyUploads, h.cfg.Uploads.PerOwner))
		}
		defer release()
		size, err := h.cfg.Store.PutBlob(r.Context(), d, r.ContentLength, bodyOf(r))
		if err != nil {
			return h.writeFailure(r, err)
		}
		if err := h.cfg.Store.LinkBlob(r.Context(), rc.name, d); err != nil {
			return errInternal(err)
		}
		h.uploadCommitted(size)
		return blobCreated(w, rc, d)
	}

	u, err := h.cfg.Store.OpenUpload(r.Context(), rc.name, h.uploadOwner(r))
	if err != nil {
		if e := h.uploadRefusal(err); e != nil {
			return e
		}
		return errInternal(err)
	}
	setUploadHeaders(w, rc, u, false)
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// mount links d into rc.name from a repository the client may read:
// `from` when given, else any repository that holds it. It reports false
// (and no error) when no such repository exists.
func (h *Handler) mount(r *http.Request, rc *request, d cache.Digest, from string) (bool, error) {
	var candidates []string
	if from != "" {
		// The name as the client typed it, mapped as the request's own
		// (and as authorize mapped it to ask the policy): a source that
		// does not map only loses the mount.
		internal, err := h.names.Internal(from, rc.via)
		if err != nil {
			return false, nil
		}
		from = internal
		if _, err := h.cfg.Store.HasBlob(r.Context(), from, d); err != nil {
			if errors.Is(err, cache.ErrBlobUnknown) {
				return false, nil
			}
			return false, errInternal(err)
		}
		candidates = []string{from}
	} else {
		repos, err := h.cfg.Store.ReposWithBlob(r.Context(), d, mountCandidates)
		if err != nil {
			return false, errInternal(err)
		}
		candidates = repos
	}
	for _, repo := range candidates {
		if !h.mayServeFrom(r, repo, d) {
			continue
		}
		// A mount spares the client its push as a HEAD's 200 does:
		// not for bytes the storage lost behind the metadata's back.
		if err := h.blobStored(r.Context(), d); errors.Is(err, cache.ErrBlobUnknown) {
			return false, nil
		} else if err != nil {
			return false, h.startErr(r.Context(), d, err)
		}
		if err := h.cfg.Store.LinkBlob(r.Context(), rc.name, d); err != nil {
			if errors.Is(err, cache.ErrBlobUnknown) {
				return false, nil // collected meanwhile
			}
			return false, errInternal(err)
		}
		return true, nil
	}
	return false, nil
}

// uploadStatus serves GET /v2/<name>/blobs/uploads/<id>.
func (h *Handler) uploadStatus(w http.ResponseWriter, r *http.Request, rc *request) error {
	u, err := h.getUpload(r, rc)
	if err != nil {
		return err
	}
	setUploadHeaders(w, rc, u, true)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// uploadChunk serves PATCH: a chunk with Content-Range, or (without it) a
// stream appended at the current end.
func (h *Handler) uploadChunk(w http.ResponseWriter, r *http.Request, rc *request) error {
	u, err := h.getUpload(r, rc)
	if err != nil {
		return err
	}
	u, err = h.appendBody(w, r, rc, u)
	if err != nil {
		return err
	}
	setUploadHeaders(w, rc, u, false)
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// uploadFinish serves PUT ?digest=: the optional last chunk, then the
// commit, verified against the digest.
func (h *Handler) uploadFinish(w http.ResponseWriter, r *http.Request, rc *request) error {
	q := r.URL.Query()
	if !q.Has("digest") {
		return errDigestInvalid("digest parameter is required to finish an upload", nil)
	}
	d, err := parseDigestArg(q.Get("digest"))
	if err != nil {
		return err
	}
	u, err := h.getUpload(r, rc)
	if err != nil {
		return err
	}
	if hasBody(r) || r.Header.Get("Content-Range") != "" {
		if u, err = h.appendBody(w, r, rc, u); err != nil {
			return err
		}
	}
	info, err := h.cfg.Store.CommitUpload(r.Context(), rc.name, u.ID, d)
	if err != nil {
		if errors.Is(err, cache.ErrOffsetMismatch) {
			return h.sessionBusy(r, rc, u, err)
		}
		return h.writeFailure(r, err)
	}
	h.uploadCommitted(info.Size)
	return blobCreated(w, rc, d)
}

// uploadCancel serves DELETE /v2/<name>/blobs/uploads/<id>.
func (h *Handler) uploadCancel(w http.ResponseWriter, r *http.Request, rc *request) error {
	if _, err := h.getUpload(r, rc); err != nil {
		return err // another user's session is unknown to the caller
	}
	if err := h.cfg.Store.CancelUpload(r.Context(), rc.name, rc.arg); err != nil {
		switch {
		case errors.Is(err, cache.ErrUploadUnknown):
			return errUploadUnknown(err)
		case errors.Is(err, cache.ErrOffsetMismatch):
			u, gerr := h.getUpload(r, rc)
			if gerr != nil {
				return gerr
			}
			return h.sessionBusy(r, rc, u, err)
		}
		return errInternal(err)
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// sessionBusy answers a commit or cancel refused because another request
// is writing the session (a chunk still arriving): the client's own
// requests overlap, so it is a 416 with the session's Range, as for a
// second chunk at one offset, never a 500.
func (h *Handler) sessionBusy(r *http.Request, rc *request, u cache.Upload, err error) error {
	if cur, gerr := h.cfg.Store.GetUpload(r.Context(), rc.name, u.ID); gerr == nil {
		u = cur
	}
	return rangeError(rc, u, "a chunk of this upload is still being written", err)
}

// getUpload returns the session r names, if r's caller may touch it:
// a session opened by a signed-in user is that user's alone, and to
// anyone else it is unknown (the same 404 as an id that never existed,
// so that the answer tells nothing). Anyone who may push the repository
// may touch an anonymous caller's session: client addresses change
// behind NAT and load balancers, and the id itself is the secret.
func (h *Handler) getUpload(r *http.Request, rc *request) (cache.Upload, error) {
	if !validUploadID(rc.arg) {
		return cache.Upload{}, errUploadUnknown(nil)
	}
	u, err := h.cfg.Store.GetUpload(r.Context(), rc.name, rc.arg)
	if err != nil {
		if errors.Is(err, cache.ErrUploadUnknown) {
			return cache.Upload{}, errUploadUnknown(err)
		}
		return cache.Upload{}, errInternal(err)
	}
	if strings.HasPrefix(u.Owner, ownerUser) && u.Owner != h.uploadOwner(r) {
		return cache.Upload{}, errUploadUnknown(fmt.Errorf("%w: session %s of %s asked for by %s", cache.ErrUploadUnknown, u.ID, u.Owner, h.uploadOwner(r)))
	}
	return u, nil
}

// appendBody appends the request body to session u, checking its
// Content-Range (when present) against the session's size. A chunk at the
// wrong offset, or whose length disagrees with its range, gets 416 with the
// session's current Range so the client can resume.
func (h *Handler) appendBody(w http.ResponseWriter, r *http.Request, rc *request, u cache.Upload) (cache.Upload, error) {
	body := bodyOf(r)
	want := int64(-1) // bytes the chunk declares, -1 for a stream
	if cr := r.Header.Get("Content-Range"); cr != "" {
		start, end, err := ParseContentRange(cr)
		if err != nil {
			return u, rangeError(rc, u, "invalid Content-Range", err)
		}
		if start != u.Size {
			return u, rangeError(rc, u, fmt.Sprintf("chunk starts at %d, upload is at %d", start, u.Size), cache.ErrOffsetMismatch)
		}
		want = end - start + 1
		if r.ContentLength >= 0 && r.ContentLength != want {
			return u, rangeError(rc, u, fmt.Sprintf("Content-Length %d disagrees with Content-Range %q", r.ContentLength, cr), nil)
		}
		body = io.LimitReader(body, want)
	}
	declared := want
	if declared < 0 {
		declared = r.ContentLength // -1: a stream of unknown length
	}
	if declared >= 0 {
		end := u.Size + declared
		if end < u.Size {
			end = math.MaxInt64 // a declared length near the int64 limit
		}
		if err := h.checkDeclaredSize(end); err != nil {
			return u, err
		}
	}
	if err := h.cfg.Store.CheckSpace(r.Context(), max(want, r.ContentLength)); err != nil {
		return u, errStorageFull(err) // before a byte of a chunk too big for the room
	}
	// A DELETE of the session while this body stalls ends the blocked
	// read at once (the PATCH then answers 404), rather than when the
	// client sends again or the server's idle timeout fires.
	ctx := cache.WithChunkInterrupt(r.Context(), func() {
		_ = http.NewResponseController(w).SetReadDeadline(time.Now())
	})
	nu, err := h.cfg.Store.AppendUpload(ctx, rc.name, u.ID, u.Size, body)
	if err != nil {
		switch {
		case errors.Is(err, cache.ErrOffsetMismatch):
			// another request appended first
			cur, gerr := h.cfg.Store.GetUpload(r.Context(), rc.name, u.ID)
			if gerr == nil {
				u = cur
			}
			return u, rangeError(rc, u, "upload offset moved", err)
		case errors.Is(err, cache.ErrUploadUnknown):
			return u, errUploadUnknown(err)
		}
		return u, h.writeFailure(r, err)
	}
	if want >= 0 && nu.Size-u.Size != want {
		e := newError(http.StatusBadRequest, CodeSizeInvalid,
			fmt.Sprintf("chunk declared %d bytes, %d arrived", want, nu.Size-u.Size), nil)
		e.Header = http.Header{}
		e.Header.Set("Location", uploadLocation(rc, nu.ID))
		e.Header.Set("Range", uploadRange(nu.Size))
		return nu, e
	}
	return nu, nil
}

func rangeError(rc *request, u cache.Upload, msg string, cause error) *Error {
	return newError(http.StatusRequestedRangeNotSatisfiable, CodeRangeInvalid, msg, cause).
		withHeader("Location", uploadLocation(rc, u.ID)).
		withHeader("Range", uploadRange(u.Size)).
		withHeader("Docker-Upload-UUID", u.ID)
}

// writeFailure classifies an error from writing a request body into the
// store: the client's mistakes (wrong digest or size, a body cut short) are
// 400s, anything else is the server's.
func (h *Handler) writeFailure(r *http.Request, err error) error {
	if e := h.uploadRefusal(err); e != nil {
		return e
	}
	switch {
	case errors.Is(err, cache.ErrDigestMismatch):
		return errDigestInvalid("content does not match digest", err)
	case errors.Is(err, cache.ErrSizeMismatch):
		return newError(http.StatusBadRequest, CodeSizeInvalid, "content does not match Content-Length", err)
	case errors.Is(err, cache.ErrUploadUnknown):
		return errUploadUnknown(err)
	case errors.Is(err, cache.ErrDigestUnsupported), errors.Is(err, cache.ErrDigestInvalid):
		return errBadDigest(err)
	}
	if cb, ok := r.Body.(*countingBody); ok && cb.err != nil {
		return newError(http.StatusBadRequest, CodeBlobUploadInvalid, "reading request body failed", err)
	}
	return errInternal(err)
}

func (h *Handler) uploadCommitted(size int64) {
	if h.cfg.Observer != nil {
		h.cfg.Observer.UploadCommitted(size)
	}
}

// blobCreated answers a completed upload or mount.
func blobCreated(w http.ResponseWriter, rc *request, d cache.Digest) error {
	hd := w.Header()
	hd.Set("Location", rc.url("/blobs/"+d.String()))
	hd.Set("Docker-Content-Digest", d.String())
	hd.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
	return nil
}

// setUploadHeaders sets Location, Docker-Upload-UUID and Range of a session.
// Range is "0-<last byte>"; for an empty session it is sent only when
// always is set (upload status, where clients and the conformance suite
// require it) and then reads "0-0", as the reference registry does.
func setUploadHeaders(w http.ResponseWriter, rc *request, u cache.Upload, always bool) {
	hd := w.Header()
	hd.Set("Location", uploadLocation(rc, u.ID))
	hd.Set("Docker-Upload-UUID", u.ID)
	if u.Size > 0 || always {
		hd.Set("Range", uploadRange(u.Size))
	}
	hd.Set("Content-Length", "0")
}

func uploadLocation(rc *request, id string) string {
	return rc.url("/blobs/uploads/" + id)
}

func uploadRange(size int64) string {
	if size <= 0 {
		return "0-0"
	}
	return fmt.Sprintf("0-%d", size-1)
}

// bodyOf is r's body, never nil.
func bodyOf(r *http.Request) io.Reader {
	if r.Body == nil {
		return http.NoBody
	}
	return r.Body
}

// hasBody reports whether the request carries content.
func hasBody(r *http.Request) bool {
	if r.ContentLength > 0 {
		return true
	}
	return r.ContentLength < 0 && r.Body != nil && r.Body != http.NoBody
}

// validUploadID accepts what the store hands out (and a little more), and
// keeps anything path-like away from it.
func validUploadID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
