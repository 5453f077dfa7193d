package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore"
)

// parseDigestArg parses a digest from the URL or a query parameter; a bad
// one is the client's mistake.
func parseDigestArg(s string) (cache.Digest, error) {
	d, err := cache.ParseDigest(s)
	if err != nil {
		return cache.Digest{}, errBadDigest(err)
	}
	return d, nil
}

// blobGet serves GET and HEAD of /v2/<name>/blobs/<digest> from the
// store, through http.ServeContent so Range, conditional requests and
// (on the filesystem store) sendfile all work.
func (h *Handler) blobGet(w http.ResponseWriter, r *http.Request, rc *request) error {
	d, err := parseDigestArg(rc.arg)
	if err != nil {
		return err
	}
	if err := h.checkBlobSignature(r.Context(), r, rc, d); err != nil {
		return err
	}
	info, err := h.linkedBlob(r.Context(), rc.name, d)
	if err != nil {
		return err
	}
	return h.serveBlob(w, r, d, info)
}

// linkedBlob is what the store holds of blob d for repo, or the error to
// answer when repo does not link it.
func (h *Handler) linkedBlob(ctx context.Context, repo string, d cache.Digest) (cache.BlobInfo, error) {
	info, err := h.cfg.Store.HasBlob(ctx, repo, d)
	if err != nil {
		if lostBlob(err) {
			return info, h.blobLost(ctx, d, err)
		}
		if errors.Is(err, cache.ErrBlobUnknown) {
			return info, errBlobUnknown(err)
		}
		return info, errInternal(err)
	}
	return info, nil
}

// maxRanges bounds the ranges of one blob request answered as such. Each
// costs a multipart part header, more than it costs to ask for, and
// clients ask for one; past this the whole blob is served, as RFC 9110
// lets a server ignore Range.
const maxRanges = 16

// serveBlob sends blob d, with info from linkedBlob, from the store, or
// a GET of it to the storage itself when the store redirects.
func (h *Handler) serveBlob(w http.ResponseWriter, r *http.Request, d cache.Digest, info cache.BlobInfo) error {
	// A range the registry refuses is refused here, redirect or not:
	// object stores ignore some (bytes=500-0) and send the whole blob.
	var readFrom int64 // where the answer's first byte is
	if rh := r.Header.Get("Range"); rh != "" {
		ranges, err := ParseRange(rh, info.Size)
		if err == nil && len(ranges) > 0 {
			readFrom = ranges[0].Start
		}
		switch {
		case errors.Is(err, ErrRangeUnit), err == nil && len(ranges) > maxRanges:
			readFrom = 0
			r.Header.Del("Range")
		case err != nil:
			w.Header().Set("Docker-Content-Digest", d.String())
			return newError(http.StatusRequestedRangeNotSatisfiable, CodeRangeInvalid,
				"requested range not satisfiable", err).
				withHeader("Content-Range", fmt.Sprintf("bytes */%d", info.Size))
		}
	}
	if done, err := h.redirectBlob(w, r, d, info.Size); done || err != nil {
		return err
	}
	f, err := h.cfg.Store.OpenBlob(r.Context(), d)
	if err != nil {
		if lostBlob(err) {
			return h.blobLost(r.Context(), d, err)
		}
		if errors.Is(err, cache.ErrBlobUnknown) {
			// collected between the link check and the open
			return errBlobUnknown(err)
		}
		return errInternal(err)
	}
	defer f.Close()
	if f.Size() != info.Size {
		// A store that reports a file's length as the blob's (the
		// single node's) changed it between the link check and the
		// open: not the bytes to answer with.
		return h.blobLost(r.Context(), d, fmt.Errorf("%w: %d bytes at open, %d before", blobstore.ErrSizeMismatch, f.Size(), info.Size))
	}

	hd := w.Header()
	hd.Set("Content-Type", "application/octet-stream")
	hd.Set("Docker-Content-Digest", d.String())
	hd.Set("ETag", `"`+d.String()+`"`)
	// Content is immutable under its digest.
	hd.Set("Cache-Control", "max-age=31536000")
	if c, ok := f.(blobstore.Checker); ok && r.Method == http.MethodHead {
		// The HEAD a client sends before it pushes a blob, and skips the
		// push on a 200: it must answer as the GET would (see Checker).
		if err := c.Check(); err != nil {
			return h.startErr(r.Context(), d, err)
		}
	}
	if st, ok := f.(blobstore.Starter); ok && r.Method != http.MethodHead {
		// Opened from the metadata's record alone: the backend is asked
		// now, from where the answer starts (ServeContent's seeks to the
		// end and back keep that read), while a failure can still be the
		// answer rather than a body cut short.
		if _, err := f.Seek(readFrom, io.SeekStart); err != nil {
			return errInternal(err)
		}
		if err := st.Start(); err != nil {
			return h.startErr(r.Context(), d, err)
		}
	}
	if r.Header.Get("Range") == "" && !conditional(r) {
		// The common whole-blob GET: hand the bare blob to the writer
		// (on the filesystem store, its file, whose WriteTo takes
		// io.Copy to sendfile). ServeContent wraps it in a LimitedReader, and
		// Caddy's idle-timeout writer adds another, which hides the file
		// from sendfile and turns every GET into a user-space copy.
		hd.Set("Content-Length", strconv.FormatInt(info.Size, 10))
		hd.Set("Accept-Ranges", "bytes")
		hd.Set("Last-Modified", info.ModTime.UTC().Format(http.TimeFormat))
		w.WriteHeader(http.StatusOK)
		if r.Method != http.MethodHead {
			n, err := io.Copy(w, f)
			h.endShort(w, r, d, n, info.Size, err)
		}
		return nil
	}
	if _, lazy := f.(blobstore.Starter); lazy {
		// Its bytes come over the network and may end early (the
		// object cut short after Start): ServeContent drops a read's
		// error, so it is kept here. A file (whose length was checked
		// at open) is passed bare, for sendfile.
		rd := &readErr{Blob: f}
		http.ServeContent(w, r, "", info.ModTime, rd)
		if rd.err != nil {
			h.endShort(w, r, d, 0, 1, rd.err)
		}
		return nil
	}
	// A file cut short after its open ends a read early without an
	// error, and ServeContent ends the answer cleanly: what it sent is
	// counted against what it declared. The counter keeps ReadFrom, so
	// the copy still reaches sendfile where the writer offers it.
	sent := &observedWriter{ResponseWriter: w}
	http.ServeContent(sent, r, "", info.ModTime, f)
	if want := declaredBody(r, sent); sent.written < want {
		h.endShort(w, r, d, sent.written, want, whyShort(f, info.Size))
	}
	return nil
}

// errSendFailed: an answer's copy ended short and the blob's file is
// whole; the client's connection failed.
var errSendFailed = errors.New("the answer's copy ended short with the file whole")

// whyShort tells why the copy of file f, of the blob's size, ended short:
// the file cut (blobstore.ErrSizeMismatch), or errSendFailed. Asked only
// then, off the common path.
func whyShort(f blobstore.Blob, size int64) error {
	if st, ok := f.(interface{ Stat() (os.FileInfo, error) }); ok {
		if fi, err := st.Stat(); err == nil && fi.Size() < size {
			return fmt.Errorf("%w: the file has %d of the blob's %d bytes", blobstore.ErrSizeMismatch, fi.Size(), size)
		}
	}
	return errSendFailed
}

// declaredBody is the length of the body an answer that ServeContent
// wrote declared (0 for one without a body: HEAD, 304, 412, 416).
func declaredBody(r *http.Request, w *observedWriter) int64 {
	if r.Method == http.MethodHead || w.statusCode()/100 != 2 {
		return 0
	}
	n, err := strconv.ParseInt(w.Header().Get("Content-Length"), 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// endShort ends an answer whose headers are out and whose body ran short
// (n of size bytes sent, read error err) with a broken transfer: a clean
// end would hand the client fewer bytes than the blob as if they were
// all. A short copy because the client left is not the storage's.
func (h *Handler) endShort(w http.ResponseWriter, r *http.Request, d cache.Digest, n, size int64, err error) {
	if n >= size || r.Context().Err() != nil {
		return
	}
	log := h.cfg.Logger.Debug // the client's connection failed, or the storage's
	if err == nil || lostBlob(err) || errors.Is(err, io.ErrUnexpectedEOF) {
		log = h.cfg.Logger.Warn // the bytes stored are fewer than the blob's
	}
	repo, _ := RepositoryOf(r.Context())
	log("blob ended short of its size while served; transfer broken",
		zap.String("repo", repo), zap.String("digest", d.String()), zap.Int64("sent", n), zap.Int64("size", size), zap.Error(err))
	breakTransfer(w)
}

// breakTransfer ends an answer whose headers were written with a broken
// transfer. What was written may still sit in the server's write buffer
// (a small blob's headers and first bytes); it goes out first, or the
// connection would close with no answer at all and the client could not
// tell a refusal from a network failure.
func breakTransfer(w http.ResponseWriter) {
	_ = http.NewResponseController(w).Flush()
	panic(http.ErrAbortHandler)
}

// readErr keeps the first read error of a blob served by ServeContent.
type readErr struct {
	blobstore.Blob
	err error
}

func (r *readErr) Read(p []byte) (int, error) {
	n, err := r.Blob.Read(p)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}

// redirectBlob answers a GET of blob d (size bytes long, as recorded)
// with a 307 to the URL the store signs for it, if the store redirects
// (BlobRedirector). HEADs are answered here: they cost no bytes, and the
// metadata answers them. The caller has authorised the request and found
// d linked: the URL is a credential for d. A client sends its Range again
// to the new location, which honours it. Bytes the storage lost are
// answered as lost (blobLost), as a streamed GET's are: a mirror fetches
// them again, instead of sending the client to the storage's 404.
func (h *Handler) redirectBlob(w http.ResponseWriter, r *http.Request, d cache.Digest, size int64) (bool, error) {
	rd, ok := h.cfg.Store.(BlobRedirector)
	if !ok || r.Method != http.MethodGet {
		return false, nil
	}
	u, ok, err := rd.BlobURL(r.Context(), d, size)
	if lostBlob(err) {
		return true, h.blobLost(r.Context(), d, err)
	}
	if err != nil {
		return false, errInternal(err)
	}
	if !ok {
		return false, nil
	}
	if credentialsFollow(r, u) {
		// Streamed instead: see credentialsFollow.
		if h.redirectCredentialsWarned.CompareAndSwap(false, true) {
			h.cfg.Logger.Warn("blob GETs with credentials are streamed, not redirected: the storage endpoint's host is the registry's "+
				"or under it, and clients that follow redirects by Go's rules would send it their credentials; give the endpoint "+
				"another host name to redirect them",
				zap.String("host", r.Host), zap.String("endpoint", withoutQuery(u)))
		}
		return false, nil
	}
	hd := w.Header()
	hd.Set("Location", u)
	hd.Set("Docker-Content-Digest", d.String())
	// The URL expires: nothing may keep this answer.
	hd.Set("Cache-Control", "no-store")
	hd.Set("Content-Length", "0")
	w.WriteHeader(http.StatusTemporaryRedirect)
	// Never the URL itself in a log: its query signs for the blob.
	h.cfg.Logger.Debug("blob redirected", zap.String("digest", d.String()), zap.String("to", withoutQuery(u)))
	return true, nil
}

// credentialsFollow reports whether a client following a redirect of r
// to target would send it r's credentials. Go's HTTP client keeps
// Authorization and Cookie on a redirect to the same host name (any port)
// or a subdomain of it: with the registry at localhost:5002 and the S3
// endpoint at localhost:7071, a Go program's Basic password reached the
// S3 server with the presigned GET (which AWS S3 refuses outright, as
// signed twice). Such a GET is streamed by the registry instead.
func credentialsFollow(r *http.Request, target string) bool {
	if r.Header.Get("Authorization") == "" && r.Header.Get("Cookie") == "" {
		return false
	}
	tu, err := url.Parse(target)
	if err != nil {
		return true
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	to := strings.TrimSuffix(strings.ToLower(tu.Hostname()), ".")
	return to == host || host != "" && strings.HasSuffix(to, "."+host)
}

// withoutQuery is u without its query and fragment (where a presigned
// URL carries its signature).
func withoutQuery(u string) string {
	if i := strings.IndexAny(u, "?#"); i >= 0 {
		return u[:i]
	}
	return u
}

// conditional reports whether r carries a precondition that ServeContent
// must evaluate.
func conditional(r *http.Request) bool {
	for _, k := range []string{"If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range"} {
		if r.Header.Get(k) != "" {
			return true
		}
	}
	return false
}

// blobDelete removes the blob from this repository only; the content stays
// for the other repositories that link it until GC.
func (h *Handler) blobDelete(w http.ResponseWriter, r *http.Request, rc *request) error {
	d, err := parseDigestArg(rc.arg)
	if err != nil {
		return err
	}
	if err := h.cfg.Store.UnlinkBlob(r.Context(), rc.name, d); err != nil {
		if errors.Is(err, cache.ErrBlobUnknown) {
			return errBlobUnknown(err)
		}
		return errInternal(err)
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// blobStored reports whether blob d, which the metadata records, is
// still stored: nil, cache.ErrBlobUnknown, or what the backend failed
// with. It asks a backend that opens from the record alone (Checker).
func (h *Handler) blobStored(ctx context.Context, d cache.Digest) error {
	f, err := h.cfg.Store.OpenBlob(ctx, d)
	if err != nil {
		return err
	}
	defer f.Close()
	if c, ok := f.(blobstore.Checker); ok {
		if err := c.Check(); lostBlob(err) {
			_ = h.blobLost(ctx, d, err)
			return fmt.Errorf("%w: %w", cache.ErrBlobUnknown, err)
		} else if err != nil {
			return err
		}
	}
	return nil
}

// startErr is the answer for a blob whose backend failed the start of its
// read: gone from the backend (behind the metadata's back) or damaged
// there is BLOB_UNKNOWN (blobLost), anything else the backend being
// unavailable.
func (h *Handler) startErr(ctx context.Context, d cache.Digest, err error) error {
	if lostBlob(err) {
		return h.blobLost(ctx, d, err)
	}
	return errInternal(fmt.Errorf("%w: blob store: %w", cache.ErrUnavailable, err))
}

// errBlobLost marks the answer to a blob the metadata records and the
// storage lost, or holds with another length (deleted or cut short behind
// the registry's back: an operator, fsck, a broken tool, a bucket
// restore). A hosted blob answers BLOB_UNKNOWN, so a client that HEADs
// before it pushes uploads it again (which replaces the damaged object);
// a mirror fetches it from upstream again (mirror_blobs.go).
var errBlobLost = errors.New("blob lost from the storage")

// lostBlob reports whether err says the storage does not hold the blob
// the metadata records, or holds another length of it.
func lostBlob(err error) bool {
	return errors.Is(err, blobstore.ErrNotFound) || errors.Is(err, blobstore.ErrSizeMismatch)
}

// blobLost logs the finding (at warn: the storage was changed behind the
// registry's back) and returns the answer: 404 BLOB_UNKNOWN, wrapping
// errBlobLost.
func (h *Handler) blobLost(ctx context.Context, d cache.Digest, err error) error {
	repo, _ := RepositoryOf(ctx)
	h.cfg.Logger.Warn("blob lost or damaged in the storage", zap.String("repo", repo), zap.String("digest", d.String()), zap.Error(err))
	return errBlobUnknown(fmt.Errorf("%w: %w", errBlobLost, err))
}
