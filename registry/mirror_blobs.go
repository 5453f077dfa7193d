package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache"
)

// mirrorBlobGet serves GET and HEAD of a mirrored blob. A blob is
// immutable under its digest: once this repository links it, upstream is
// never asked again. Until then upstream is asked first, for this
// repository, whatever the store holds: the store keeps one copy of a
// digest for all repositories, and that another repository holds it says
// nothing about this one, nor may the answer tell the caller that it
// does. Once upstream confirmed the digest here, the store's copy is
// linked and served, or a GET joins (or starts) the store's fill of the
// digest and streams the growing file.
//
// Upstream is asked with a HEAD, except on a GET of a digest the store
// neither holds nor fills for anyone: then the fill's own GET for this
// repository asks, one round trip less on a cold pull. Its refusal
// answers exactly as the HEAD's would (upstreamError), in the same one
// round trip, so the caller still cannot tell which way was taken. A
// GET beside a fill started for this same repository is answered by
// that fill's exchange the same way, with no HEAD of its own (many
// clients pulling one new image at once ask upstream once per blob).
func (h *Handler) mirrorBlobGet(w http.ResponseWriter, r *http.Request, rc *request) error {
	m := rc.mirror
	d, err := parseDigestArg(rc.arg)
	if err != nil {
		return err
	}
	// Before the store or upstream is asked: see signature_blobs.go.
	if err := h.checkBlobSignature(r.Context(), r, rc, d); err != nil {
		return err
	}
	store := h.cfg.Store
	// Held while this request serves it: a size-limited cache never
	// evicts a blob someone is reading, and one evicted a moment ago is
	// simply a miss from here on.
	defer store.Hold(d)()
	if f := store.Filling(r.Context(), d); f != nil && f.Repo() == rc.name {
		switch {
		case r.Method == http.MethodGet:
			// Another client's fill for this repository (or a
			// prefetch's) asks upstream for this very name: its answer
			// is the one a HEAD would get, so this GET joins it without
			// one, and learns upstream's refusal from it too. A fill
			// with every byte in and verified is read the same way: its
			// commit (a sync, or on replicas the upload to the bucket,
			// seconds for a large blob; a prefetched blob is usually
			// there) is no wait of a client's.
			//
			// A fill that committed may still be listed a moment after;
			// bytes lost or cut since (behind the registry's back) are
			// found by the read below, which fetches them again.
			err := h.serveFillOrRefill(w, r, rc, d, f, true, false)
			if !errors.Is(err, errBlobLost) {
				m.obs.MirrorLookup(m.cfg.Prefix, "blob", false)
				return err
			}
		case f.Verified():
			// Its readers may have had every byte before it is
			// committed and linked; a HEAD answers after that, as a
			// plain store hit.
			_ = f.Wait(r.Context())
		}
	}
	// lost: this repository links d, and the storage lost its bytes or
	// holds them damaged (blobLost logged it). The client never learns:
	// it is a miss, fetched from upstream again as a cold one is.
	lost := false
	if info, err := store.HasBlob(r.Context(), rc.name, d); err == nil {
		err := h.serveCachedBlob(w, r, rc, d, info)
		if !errors.Is(err, errBlobLost) {
			m.obs.MirrorLookup(m.cfg.Prefix, "blob", true)
			return err
		}
		lost = true
	} else if lostBlob(err) {
		_ = h.blobLost(r.Context(), d, err)
		lost = true
	}
	if !lost {
		if err := h.beforeUpstream(rc, "blob", d.String()); err != nil {
			return err
		}
	}
	if r.Method == http.MethodGet {
		// Fill only starts a fill when there is none and the store
		// lacks the digest (decided under its lock); otherwise what it
		// returns is another's, unread until upstream confirms.
		f, started, err := h.fill(r.Context(), rc, d, lost)
		if err != nil {
			return err
		}
		if started || lost {
			// A fill joined for a lost blob needs no confirmation:
			// this repository links d, so upstream said so before.
			m.obs.MirrorLookup(m.cfg.Prefix, "blob", false)
			return h.serveFillOrRefill(w, r, rc, d, f, true, lost)
		}
	}
	size, err := h.confirmBlob(r.Context(), rc, d)
	if err != nil {
		return h.unconfirmedBlob(w, r, rc, d, err)
	}
	if lost {
		// A HEAD: upstream's answer is the one to give; the GET that
		// follows fetches the bytes.
	} else if err := store.LinkBlob(r.Context(), rc.name, d); err == nil {
		m.obs.MirrorLookup(m.cfg.Prefix, "blob", true)
		return h.serveLinkedBlob(w, r, rc, d)
	} else if !errors.Is(err, cache.ErrBlobUnknown) {
		return errInternal(err)
	}
	m.obs.MirrorLookup(m.cfg.Prefix, "blob", false)
	if err := m.checkBlobSize(size); err != nil {
		return mirrorBlobTooLarge(m, err) // HEAD too: a GET would be refused
	}
	if r.Method == http.MethodHead {
		setBlobHeaders(w, d)
		if size >= 0 {
			w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		}
		w.WriteHeader(http.StatusOK)
		return nil
	}
	f, started, err := h.fill(r.Context(), rc, d, false)
	if err != nil {
		return err
	}
	if !started && f.Repo() != rc.name {
		if _, err := f.Ready(r.Context()); err != nil && r.Context().Err() == nil {
			// The fill joined is another name's, which upstream may
			// have refused there (its GET asked without a HEAD first).
			// Upstream confirmed this name: fetch it for this one.
			select {
			case <-f.Done():
			case <-r.Context().Done():
				return errInternal(r.Context().Err()) // recorded as 499
			}
			if f, started, err = h.fill(r.Context(), rc, d, false); err != nil {
				return err
			}
		}
	}
	return h.serveFillOrRefill(w, r, rc, d, f, started, false)
}

// serveFillOrRefill is serveFill, except that a fill another replica
// held and ended with nothing committed (it died, or its own fill failed:
// upstream cut, its storage full) is started once more here, before any
// header went out, so this client gets what this replica's own fill gives
// (the blob streamed, or 507 when the storage is full) instead of a 503
// that only says "retry" and would tell a client of a full store to retry
// in vain. Once: a second abandoned fill is answered with its 503.
func (h *Handler) serveFillOrRefill(w http.ResponseWriter, r *http.Request, rc *request, d cache.Digest, f cache.Fill, own, lost bool) error {
	err := h.serveFill(w, r, rc, d, f, own)
	if !errors.Is(err, cache.ErrFillAbandoned) || r.Context().Err() != nil {
		return err
	}
	again, started, ferr := h.fill(r.Context(), rc, d, lost)
	if ferr != nil {
		return ferr
	}
	if !started && again.Repo() != rc.name && again.Repo() != "" {
		return err // another name's fill: not confirmed for this one here
	}
	// Upstream confirmed d for this name before the first fill was
	// followed (or the name links d: lost), so a fill found now, a wait
	// for yet another replica's or the committed blob, is served and then
	// linked here; only a fill started here links the name itself.
	return h.serveFill(w, r, rc, d, again, started || lost)
}

// fill returns the fill of d in progress, or the committed blob as a
// fill, or else starts one from upstream for rc's repository (started),
// within the mirror's cap on fills (429 past it). lost: the store records
// d but lost its bytes (see Refills).
func (h *Handler) fill(ctx context.Context, rc *request, d cache.Digest, lost bool) (cache.Fill, bool, error) {
	m := rc.mirror
	f, started, err := m.startFill(ctx, h.cfg.Store, rc.name, d, lost)
	if errors.Is(err, errNoFillSlot) || (err != nil && ctx.Err() != nil) {
		return nil, false, errTooManyFills(m, err)
	}
	if err != nil {
		return nil, false, errInternal(err)
	}
	if started {
		h.observeFill(m, f)
	}
	return f, started, nil
}

// observeFill reports fill f, started here, to the mirror's metrics once
// it ends.
func (h *Handler) observeFill(m *Mirror, f cache.Fill) {
	go func() {
		<-f.Done()
		err := f.Wait(context.Background())
		size, _ := f.Ready(context.Background())
		m.obs.MirrorFill(m.cfg.Prefix, size, f.Duration(), err)
		if err == nil {
			m.obs.MirrorBytes(m.cfg.Prefix, "upstream", size)
		}
	}()
}

// serveFill streams blob d from fill f as it grows, to a GET upstream
// confirmed for rc's repository, or whose fill f was started for it
// (own: the fill links the repository itself).
func (h *Handler) serveFill(w http.ResponseWriter, r *http.Request, rc *request, d cache.Digest, f cache.Fill, own bool) error {
	store := h.cfg.Store
	size, err := f.Ready(r.Context())
	if err != nil {
		return fillError(r, rc, f, err)
	}
	if size < 0 || r.Header.Get("Range") != "" {
		// Upstream did not say how long, or the client wants a part:
		// serve from the store once the whole blob is in and verified.
		// A whole-blob stream can still end in a broken transfer if the
		// digest fails; a range that ends early could not, so it must
		// never carry bytes the digest check has not passed.
		if err := f.Wait(r.Context()); err != nil {
			return fillError(r, rc, f, err)
		}
		if !own {
			if err := store.LinkBlob(r.Context(), rc.name, d); err != nil {
				return errInternal(err)
			}
		}
		return h.serveLinkedBlob(w, r, rc, d)
	}
	rd, err := f.Reader(r.Context())
	if err != nil {
		if lostBlob(err) && fillCommitted(f) {
			// The fill committed, and the storage lost its bytes or
			// holds them cut short since: not upstream's failure (502)
			// but a loss, which the caller may heal.
			return h.blobLost(r.Context(), d, err)
		}
		return fillError(r, rc, f, err)
	}
	defer rd.Close()
	if err := firstByte(f, rd); err != nil {
		return fillError(r, rc, f, err)
	}
	if !own {
		// The fill links the repository it was started for; upstream
		// confirmed this one holds the digest too. The link outlives
		// the request, as the fill does.
		ctx := context.WithoutCancel(r.Context())
		go func() {
			if f.Wait(ctx) == nil {
				_ = store.LinkBlob(ctx, rc.name, d)
			}
		}()
	}
	setBlobHeaders(w, d)
	http.ServeContent(w, r, "", time.Time{}, rd)
	if rd.Err() != nil {
		// Headers (and some bytes) are out: the only honest end is a
		// broken transfer, never a short success.
		breakTransfer(w)
	}
	return nil
}

// fillCommitted reports whether f ended with its blob committed.
func fillCommitted(f cache.Fill) bool {
	select {
	case <-f.Done():
		return f.Wait(context.Background()) == nil
	default:
		return false
	}
}

// firstByte waits for a fill's first byte (or its end) before any
// header goes out, and leaves rd at the start: a fill that fails before
// its first byte (its spool could not be written) is answered with its
// error, not with a 200's headers and a broken transfer. A fill already
// done is read as it is (a committed blob's reader would read its first
// byte twice).
func firstByte(f cache.Fill, rd cache.FillReader) error {
	select {
	case <-f.Done():
		return nil
	default:
	}
	var b [1]byte
	if _, err := rd.Read(b[:]); err != nil && err != io.EOF {
		return err
	}
	_, err := rd.Seek(0, io.SeekStart)
	return err
}

// fillError is the answer to a request whose fill failed: the client's
// leaving when it left; upstream's words only when the fill fetched this
// repository, since a joined fill's failure is about another name.
func fillError(r *http.Request, rc *request, f cache.Fill, err error) error {
	m := rc.mirror
	switch {
	case r.Context().Err() != nil:
		// Nobody to answer: recorded as the client's leaving (499).
		return errInternal(r.Context().Err())
	case storageFullError(err) != nil:
		return storageFullError(err) // says nothing of the other repository
	case errors.Is(err, errMirrorBlobTooLarge):
		return mirrorBlobTooLarge(m, err) // nor does the mirror's limit
	case errors.Is(err, cache.ErrUnavailable) || outOfFiles(err) || errors.Is(err, cache.ErrFillSpool):
		// The store (or another replica's fill it waited for) failed,
		// this process is out of file descriptors, or the fill could not
		// write its local copy (a read-only disk: 503 with Retry-After),
		// not upstream: the retry fills afresh.
		return errInternal(err)
	case f.Repo() != rc.name:
		return newError(http.StatusBadGateway, CodeUnknown, "upstream "+m.cfg.Prefix+" failed", err)
	default:
		return upstreamError(m, "blob", err)
	}
}

func setBlobHeaders(w http.ResponseWriter, d cache.Digest) {
	hd := w.Header()
	hd.Set("Content-Type", "application/octet-stream")
	hd.Set("Docker-Content-Digest", d.String())
	hd.Set("ETag", `"`+d.String()+`"`)
	hd.Set("Cache-Control", "max-age=31536000")
}

// serveLinkedBlob serves blob d from the store once this repository
// links it.
func (h *Handler) serveLinkedBlob(w http.ResponseWriter, r *http.Request, rc *request, d cache.Digest) error {
	info, err := h.linkedBlob(r.Context(), rc.name, d)
	if err != nil {
		return err
	}
	return h.serveCachedBlob(w, r, rc, d, info)
}

// serveCachedBlob serves blob d, which this repository links (info from
// HasBlob), from the store, counting the bytes as the cache's.
func (h *Handler) serveCachedBlob(w http.ResponseWriter, r *http.Request, rc *request, d cache.Digest, info cache.BlobInfo) error {
	ow, _ := w.(*observedWriter)
	var before int64
	if ow != nil {
		before = ow.written
	}
	err := h.serveBlob(w, r, d, info)
	if ow != nil {
		rc.mirror.obs.MirrorBytes(rc.mirror.cfg.Prefix, "cache", ow.written-before)
	}
	return err
}

// confirmBlob asks upstream whether this repository holds d, with a HEAD
// (which no pull limit counts), and returns the size upstream gives (-1
// unknown). Concurrent requests for the same name and digest share one
// exchange.
func (h *Handler) confirmBlob(ctx context.Context, rc *request, d cache.Digest) (int64, error) {
	m := rc.mirror
	v, err, _ := m.revalidations.Do("blob "+rc.name+"@"+d.String(), func() (any, error) {
		if err := m.rememberedNotFound(rc.name, "blob", d); err != nil {
			return int64(0), err
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.UpstreamTimeout)
		defer cancel()
		resp, err := m.client.Do(ctx, http.MethodHead, m.upstreamName(rc.name), "blobs/"+d.String(), nil)
		if err != nil {
			return int64(0), err
		}
		resp.Body.Close()
		return resp.ContentLength, nil
	})
	if err != nil {
		return 0, err
	}
	return v.(int64), nil
}

// unconfirmedBlob answers a blob request upstream did not confirm. When
// upstream only failed (unreachable, overloaded), a copy that a
// repository of this mirror links serves if the caller may read that
// repository, as for a mount: it then tells the caller nothing it could
// not read anyway. It is not linked here, since upstream never said this
// repository holds it. Otherwise the answer is upstream's failure, the
// same whatever the store holds.
func (h *Handler) unconfirmedBlob(w http.ResponseWriter, r *http.Request, rc *request, d cache.Digest, err error) error {
	m := rc.mirror
	if temporary(err) && h.readableInMirror(r, m, d) {
		if info, serr := h.cfg.Store.StatBlob(r.Context(), d); serr == nil {
			h.cfg.Logger.Warn("upstream failed; serving a readable repository's copy of the blob",
				zap.String("repo", rc.name), zap.String("digest", d.String()), zap.Error(err))
			// A copy the storage lost is no copy: upstream's failure is
			// the answer, not a 404 for a blob upstream may hold.
			if serr := h.serveCachedBlob(w, r, rc, d, info); !errors.Is(serr, errBlobLost) {
				m.obs.MirrorLookup(m.cfg.Prefix, "blob", true)
				return serr
			}
		}
	}
	m.obs.MirrorLookup(m.cfg.Prefix, "blob", false)
	return upstreamError(m, "blob", err)
}

// readableInMirror reports whether a repository of m that r's caller may
// read, and whose signature policy would serve d, links blob d.
func (h *Handler) readableInMirror(r *http.Request, m *Mirror, d cache.Digest) bool {
	repos, err := h.cfg.Store.ReposWithBlob(r.Context(), d, mountCandidates)
	if err != nil {
		return false
	}
	for _, repo := range repos {
		if h.mirrorFor(repo) == m && h.mayServeFrom(r, repo, d) {
			return true
		}
	}
	return false
}

// blobSource is the fill's upstream GET of blob d for repository repo (the
// local name). It runs on the fill's context; a body that stalls for
// BlobIdleTimeout is abandoned. It writes no more than the blob's size as
// a manifest of repo declared it, or else as upstream's HEAD says, when
// the GET's answer does not say (see mirror_declared.go).
func (m *Mirror) blobSource(repo string, d cache.Digest) cache.FillSource {
	return func(ctx context.Context) (io.ReadCloser, int64, error) {
		ctx, cancel := context.WithCancelCause(ctx)
		if err := m.rememberedNotFound(repo, "blob", d); err != nil {
			cancel(nil)
			return nil, 0, err
		}
		idle := time.AfterFunc(m.cfg.UpstreamTimeout, func() { cancel(errUpstreamStalled) })
		resp, err := m.client.Do(ctx, http.MethodGet, m.upstreamName(repo), "blobs/"+d.String(), nil)
		if err != nil {
			idle.Stop()
			cancel(nil)
			return nil, 0, stalledOr(ctx, err)
		}
		want, known := m.declared.size(repo, d)
		if !known && resp.ContentLength < 0 {
			want, known = m.headSize(ctx, repo, d)
		}
		size := resp.ContentLength
		if known {
			size = want
		}
		err = m.checkBlobSize(size)
		if err == nil && known {
			err = checkDeclaredSize(want, resp.ContentLength)
		}
		if err != nil {
			// Refused before the fill writes a byte.
			idle.Stop()
			resp.Body.Close()
			cancel(nil)
			return nil, 0, err
		}
		idle.Reset(m.cfg.BlobIdleTimeout)
		var body io.ReadCloser = &idleBody{ctx: ctx, rc: resp.Body, idle: idle, after: m.cfg.BlobIdleTimeout, cancel: cancel}
		if known {
			body = &exactBody{ReadCloser: body, left: want}
		}
		return m.capBody(body), size, nil
	}
}

// headSize is the size upstream's HEAD of blob d gives, for a GET that
// gave none.
func (m *Mirror) headSize(ctx context.Context, repo string, d cache.Digest) (int64, bool) {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.UpstreamTimeout)
	defer cancel()
	resp, err := m.client.Do(ctx, http.MethodHead, m.upstreamName(repo), "blobs/"+d.String(), nil)
	if err != nil {
		return 0, false
	}
	resp.Body.Close()
	return resp.ContentLength, resp.ContentLength >= 0
}

// stalledOr is err, or errUpstreamStalled (a timeout, for the client's
// 504) when the stall timer is what cancelled ctx.
func stalledOr(ctx context.Context, err error) error {
	if errors.Is(context.Cause(ctx), errUpstreamStalled) {
		return fmt.Errorf("%w (%w)", errUpstreamStalled, err)
	}
	return err
}

// idleBody cancels its request when no byte arrives for `after`.
type idleBody struct {
	ctx    context.Context
	rc     io.ReadCloser
	idle   *time.Timer
	after  time.Duration
	cancel context.CancelCauseFunc
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.idle.Reset(b.after)
	}
	if err != nil && err != io.EOF {
		err = stalledOr(b.ctx, err)
	}
	return n, err
}

func (b *idleBody) Close() error {
	b.idle.Stop()
	err := b.rc.Close()
	b.cancel(nil)
	return err
}
