package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache"
)

// errUpstreamDigest: upstream sent a manifest whose bytes do not hash to
// the digest asked for (or announced).
var errUpstreamDigest = errors.New("upstream content does not match its digest")

// manifestAccept is what a mirror asks upstream for: every manifest type,
// so upstream never converts and the digests stay upstream's whatever the
// client that came first accepted.
var manifestAccept = http.Header{"Accept": {strings.Join([]string{
	MediaTypeOCIIndex,
	MediaTypeOCIManifest,
	MediaTypeDockerManifestList,
	MediaTypeDockerManifest,
	"application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.5",
	"application/vnd.docker.distribution.manifest.v1+json;q=0.5",
}, ", ")}}

// mirroredManifest is the answer of one lookup, shared by the requests a
// revalidation served.
type mirroredManifest struct {
	m     cache.Manifest
	body  []byte
	stale bool // served from the store because upstream failed
	// fetched: when upstream answered (getUpstreamManifest); the tag's
	// fetch time, also when the store write runs later (mirror_pending.go).
	fetched time.Time
	// write, if set, is the store write this answer was given from
	// before it ended (keepFetched, or a write running when another
	// request asked): it may still run, or have failed.
	write *pendingManifest
	// release, if set, gives back the serving budget a large manifest
	// read from the store for this one request holds (manifestmem.go).
	release func()
}

// mirrorManifestGet serves GET and HEAD of a mirrored manifest: by digest
// from the store once fetched; by tag from the store inside the tag's TTL,
// after it revalidated with one upstream HEAD.
func (h *Handler) mirrorManifestGet(w http.ResponseWriter, r *http.Request, rc *request) error {
	m := rc.mirror
	ref, err := ParseReference(rc.arg)
	if err != nil {
		return referenceError(err)
	}
	var res mirroredManifest
	if ref.IsDigest() {
		res, err = h.mirrorManifestByDigest(r.Context(), rc, ref.Digest)
	} else {
		res, err = h.mirrorManifestByTag(r.Context(), rc, ref.Tag)
	}
	if err != nil {
		return err
	}
	if res.release != nil {
		defer res.release()
	}
	if err := h.checkSignature(r, rc, res.m, res.body); err != nil {
		return err
	}
	h.cfg.Store.Touch(res.m.Digest) // its last use, for a size-limited cache
	m.declared.note(rc.name, res.m.Digest, res.body)
	if r.Method == http.MethodGet && !res.fetched.IsZero() {
		// Upstream's answer, to this request or one beside it: a cold
		// pull's blobs are next.
		h.prefetch(r.Context(), rc, res)
	}
	hd := w.Header()
	if res.stale {
		hd.Set("Warning", staleWarning)
	}
	hd.Set("Content-Type", res.m.MediaType)
	hd.Set("Docker-Content-Digest", res.m.Digest.String())
	hd.Set("ETag", `"`+res.m.Digest.String()+`"`)
	hd.Set("Content-Length", strconv.Itoa(len(res.body)))
	if inm := r.Header.Get("If-None-Match"); inm != "" && etagMatches(inm, res.m.Digest.String()) {
		hd.Del("Content-Type")
		hd.Del("Content-Length")
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		n := writeManifestBody(w, res.body)
		m.obs.MirrorBytes(m.cfg.Prefix, "cache", int64(n))
	}
	return nil
}

// storedMirrorManifest reads manifest d of rc's repository from the
// store for one request, a large one in its turn (manifestmem.go); the
// caller releases the budget once the answer is out.
func (h *Handler) storedMirrorManifest(ctx context.Context, rc *request, d cache.Digest) (mirroredManifest, error) {
	hold, err := h.manifestSizes.hold(ctx, d, h.cfg.MaxManifestSize)
	if err != nil {
		return mirroredManifest{}, err
	}
	man, body, err := h.cfg.Store.GetManifest(ctx, rc.name, d)
	if err != nil {
		hold.release()
		return mirroredManifest{}, err
	}
	h.manifestSizes.set(d, man.Size)
	hold.fit(man.Size)
	return mirroredManifest{m: man, body: body, release: hold.release}, nil
}

func (h *Handler) mirrorManifestByDigest(ctx context.Context, rc *request, d cache.Digest) (mirroredManifest, error) {
	m := rc.mirror
	key := rc.name + "@" + d.String()
	// The pending answer first: once its store write ends, the store has
	// it, so no request falls between the two.
	if res, ok := h.pendingAnswer(ctx, m, key, false); ok {
		m.obs.MirrorLookup(m.cfg.Prefix, "manifest", true)
		return res, nil
	}
	if res, err := h.storedMirrorManifest(ctx, rc, d); err == nil {
		m.obs.MirrorLookup(m.cfg.Prefix, "manifest", true)
		return res, nil
	} else if ctx.Err() != nil {
		return mirroredManifest{}, errInternal(err) // the client left (499)
	}
	m.obs.MirrorLookup(m.cfg.Prefix, "manifest", false)
	if err := h.beforeUpstream(rc, "manifest", d.String()); err != nil {
		return mirroredManifest{}, err
	}
	v, err, _ := m.revalidations.Do(key, func() (any, error) {
		// A fetch that ended after this request looked.
		if res, ok := h.pendingAnswer(ctx, m, key, false); ok {
			return res, nil
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.UpstreamTimeout)
		defer cancel()
		return h.fetchManifestToServe(ctx, rc, d.String(), d, "")
	})
	if err != nil {
		return mirroredManifest{}, upstreamError(m, "manifest", err)
	}
	return v.(mirroredManifest), nil
}

func (h *Handler) mirrorManifestByTag(ctx context.Context, rc *request, tag string) (mirroredManifest, error) {
	m := rc.mirror
	store := h.cfg.Store
	key := rc.name + ":" + tag
	if res, ok := h.pendingAnswer(ctx, m, key, true); ok {
		m.obs.MirrorLookup(m.cfg.Prefix, "manifest", true)
		return res, nil
	}
	ti, err := store.TagInfo(ctx, rc.name, tag)
	have := err == nil
	if have && m.now().Sub(ti.Fetched) < m.cfg.TagTTL {
		if res, err := h.storedMirrorManifest(ctx, rc, ti.Digest); err == nil {
			m.obs.MirrorLookup(m.cfg.Prefix, "manifest", true)
			return res, nil
		} else if ctx.Err() != nil {
			return mirroredManifest{}, errInternal(err) // the client left (499)
		}
		have = false
	}
	if !have {
		if err := h.beforeUpstream(rc, "manifest", tag); err != nil {
			return mirroredManifest{}, err
		}
	}
	v, err, _ := m.revalidations.Do(key, func() (any, error) {
		if e := h.pending.get(key); e != nil && m.now().Sub(e.fetched) < m.cfg.TagTTL {
			return e.res, nil // fetched after this request looked
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.UpstreamTimeout)
		defer cancel()
		res, err := h.revalidateTag(ctx, rc, tag, ti, have, true)
		if err != nil && have && temporary(err) && m.now().Sub(ti.Fetched) < m.cfg.TagTTL+m.cfg.StaleIfError {
			man, body, gerr := store.GetManifest(ctx, rc.name, ti.Digest)
			if gerr == nil {
				h.cfg.Logger.Warn("upstream failed; serving the cached tag",
					zap.String("repo", rc.name), zap.String("tag", tag), zap.Error(err))
				return mirroredManifest{m: man, body: body, stale: true}, nil
			}
		}
		return res, err
	})
	if err != nil {
		return mirroredManifest{}, upstreamError(m, "manifest", err)
	}
	res := v.(mirroredManifest)
	m.obs.MirrorLookup(m.cfg.Prefix, "manifest", res.stale)
	return res, nil
}

// revalidateTag asks upstream where tag points: a HEAD first when the
// store has a copy (Docker Hub does not count HEADs against pull limits),
// a GET only when the digest moved or the store has nothing. serve: the
// manifest a GET brings is for a client waiting, which may have it
// before the store does (keepFetched).
func (h *Handler) revalidateTag(ctx context.Context, rc *request, tag string, ti cache.TagInfo, have, serve bool) (mirroredManifest, error) {
	if have {
		if res, same, err := h.unchangedTag(ctx, rc, tag, ti); err != nil || same {
			return res, err
		}
	}
	if serve {
		return h.fetchManifestToServe(ctx, rc, tag, cache.Digest{}, tag)
	}
	return h.fetchManifest(ctx, rc, tag, cache.Digest{}, tag)
}

// unchangedTag asks upstream with a HEAD whether tag still points where
// the store's copy ti does; if so, and the store still has that manifest,
// it notes the tag fetched now and returns the manifest (same).
func (h *Handler) unchangedTag(ctx context.Context, rc *request, tag string, ti cache.TagInfo) (res mirroredManifest, same bool, err error) {
	m := rc.mirror
	store := h.cfg.Store
	resp, err := m.client.Do(ctx, http.MethodHead, m.upstreamName(rc.name), "manifests/"+tag, manifestAccept)
	if err != nil {
		return mirroredManifest{}, false, err
	}
	resp.Body.Close()
	if resp.Header.Get("Docker-Content-Digest") != ti.Digest.String() {
		return mirroredManifest{}, false, nil
	}
	man, body, err := store.GetManifest(ctx, rc.name, ti.Digest)
	if err != nil {
		return mirroredManifest{}, false, nil // fetched again
	}
	if err := store.SetTagFetched(ctx, rc.name, tag, m.now()); err != nil {
		return mirroredManifest{}, false, err
	}
	return mirroredManifest{m: man, body: body}, true, nil
}

// fetchManifest GETs reference from upstream, checks it against want (if
// set) and the digest upstream announced, and stores it byte for byte,
// tagged with tag if given.
func (h *Handler) fetchManifest(ctx context.Context, rc *request, reference string, want cache.Digest, tag string) (mirroredManifest, error) {
	res, err := h.getUpstreamManifest(ctx, rc, reference, want)
	if err != nil {
		return mirroredManifest{}, err
	}
	if err := h.storeFetched(ctx, rc, res, tag); err != nil {
		return mirroredManifest{}, err
	}
	return res, nil
}

// fetchManifestToServe is fetchManifest for a client waiting: it returns
// once the manifest passed its checks, and the store write may still run
// (keepFetched).
func (h *Handler) fetchManifestToServe(ctx context.Context, rc *request, reference string, want cache.Digest, tag string) (mirroredManifest, error) {
	res, err := h.getUpstreamManifest(ctx, rc, reference, want)
	if err != nil {
		return mirroredManifest{}, err
	}
	return h.keepFetched(ctx, rc, res, tag)
}

// getUpstreamManifest is fetchManifest without storing.
func (h *Handler) getUpstreamManifest(ctx context.Context, rc *request, reference string, want cache.Digest) (mirroredManifest, error) {
	m := rc.mirror
	asked := m.now()
	resp, err := m.client.Do(ctx, http.MethodGet, m.upstreamName(rc.name), "manifests/"+reference, manifestAccept)
	if err != nil {
		return mirroredManifest{}, err
	}
	defer resp.Body.Close()
	limit := h.cfg.MaxManifestSize
	received, _, err := holdManifestReceive(ctx, resp.ContentLength, limit)
	if err != nil {
		return mirroredManifest{}, err
	}
	defer received()
	body, err := readManifestBody(resp.Body, resp.ContentLength, limit)
	if err != nil {
		return mirroredManifest{}, fmt.Errorf("read upstream manifest: %w", err)
	}
	if int64(len(body)) > limit {
		return mirroredManifest{}, fmt.Errorf("upstream manifest exceeds the limit of %d bytes", limit)
	}
	release, err := holdManifestWork(ctx, int64(len(body)))
	if err != nil {
		return mirroredManifest{}, err
	}
	defer release()
	m.obs.MirrorBytes(m.cfg.Prefix, "upstream", int64(len(body)))
	mt, d, err := checkUpstreamManifest(resp, body, want)
	if err != nil {
		return mirroredManifest{}, fmt.Errorf("%s: %w", reference, err)
	}
	man := manifestMeta(mt, body)
	man.Digest, man.Size = d, int64(len(body))
	return mirroredManifest{m: man, body: body, fetched: asked}, nil
}

// storeUpstreamManifest stores what getUpstreamManifest fetched, tagged
// with tag if given, and records when the tag was fetched. Only
// storeInTurn calls it: every write of a key waits for the one before.
func (h *Handler) storeUpstreamManifest(ctx context.Context, rc *request, res mirroredManifest, tag string) (err error) {
	defer func() {
		if err == nil {
			manifestStored(rc.name, res.m, int64(len(res.body)))
		}
	}()
	fetched := res.fetched
	if fetched.IsZero() {
		fetched = rc.mirror.now()
	}
	if fp, ok := h.cfg.Store.(fetchedManifestPutter); ok && tag != "" {
		// One metadata transaction (one sync) for the manifest, its tag
		// and the tag's fetch time, on the cold pull's path.
		return fp.PutFetchedManifest(ctx, rc.name, res.m, res.body, tag, fetched)
	}
	var tags []string
	if tag != "" {
		tags = []string{tag}
	}
	if err := h.cfg.Store.PutManifest(ctx, rc.name, res.m, res.body, tags); err != nil {
		return err
	}
	if tag != "" {
		// A tag evicted again in between is fetched by the next pull; this
		// answer is good.
		if err := h.cfg.Store.SetTagFetched(ctx, rc.name, tag, fetched); err != nil && !errors.Is(err, cache.ErrTagUnknown) {
			return err
		}
	}
	return nil
}

// upstreamManifestTypes are the media types a mirror keeps a manifest
// under: those it asks for (manifestAccept).
var upstreamManifestTypes = map[string]bool{
	MediaTypeOCIIndex:           true,
	MediaTypeOCIManifest:        true,
	MediaTypeDockerManifestList: true,
	MediaTypeDockerManifest:     true,
	"application/vnd.docker.distribution.manifest.v1+prettyjws": true,
	"application/vnd.docker.distribution.manifest.v1+json":      true,
}

// checkUpstreamManifest refuses an upstream answer that is not exactly
// one manifest, so that what the mirror stores and serves until the tag's
// TTL (and its stale window) is what upstream meant: one JSON object and
// nothing after it, as long as Content-Length said, of a manifest media
// type on which Content-Type and the document's own mediaType agree (a
// generic Content-Type leaves it to the document), hashing to the digest
// asked for (want, if set) and to the one upstream announced. It returns
// the media type and the digest.
func checkUpstreamManifest(resp *http.Response, body []byte, want cache.Digest) (string, cache.Digest, error) {
	if resp.ContentLength >= 0 && int64(len(body)) != resp.ContentLength {
		return "", cache.Digest{}, fmt.Errorf("%w: %d bytes, Content-Length %d", errUpstreamManifest, len(body), resp.ContentLength)
	}
	if !oneJSONObject(body) {
		return "", cache.Digest{}, fmt.Errorf("%w: not one complete JSON object (%d bytes)", errUpstreamManifest, len(body))
	}
	var doc struct {
		MediaType string `json:"mediaType"`
	}
	_ = json.Unmarshal(body, &doc) // a mediaType that is not a string is none
	ct := resp.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	switch {
	case err == nil && upstreamManifestTypes[mt]:
		if doc.MediaType != "" && doc.MediaType != mt {
			return "", cache.Digest{}, fmt.Errorf("%w: Content-Type %q, mediaType %q", errUpstreamManifest, mt, doc.MediaType)
		}
	case ct == "" || mt == "application/json" || mt == "text/plain" || mt == "application/octet-stream":
		mt = doc.MediaType
		if !upstreamManifestTypes[mt] {
			return "", cache.Digest{}, fmt.Errorf("%w: Content-Type %q, mediaType %q", errUpstreamManifest, ct, doc.MediaType)
		}
	default:
		return "", cache.Digest{}, fmt.Errorf("%w: Content-Type %q is not a manifest's", errUpstreamManifest, ct)
	}
	alg := cache.SHA256
	if !want.IsZero() {
		alg = want.Algorithm
	}
	if h := resp.Header.Get("Docker-Content-Digest"); h != "" {
		announced, err := cache.ParseDigest(h)
		if err != nil {
			return "", cache.Digest{}, fmt.Errorf("%w: Docker-Content-Digest %q", errUpstreamDigest, h)
		}
		if got := cache.FromBytes(announced.Algorithm, body); got != announced {
			return "", cache.Digest{}, fmt.Errorf("%w: announced %s, computed %s", errUpstreamDigest, announced, got)
		}
		if want.IsZero() {
			alg = announced.Algorithm
		}
	}
	d := cache.FromBytes(alg, body)
	if !want.IsZero() && d != want {
		return "", cache.Digest{}, fmt.Errorf("%w: asked for %s, computed %s", errUpstreamDigest, want, d)
	}
	return mt, d, nil
}

// oneJSONObject reports whether body is one JSON object, with nothing but
// white space around it.
func oneJSONObject(body []byte) bool {
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	return len(trimmed) > 0 && trimmed[0] == '{' && json.Valid(body)
}

// manifestMeta reads what the store keeps about a fetched manifest. It
// checks nothing: a mirror keeps what upstream has (children need not
// exist here). The media type is upstream's Content-Type, else the
// document's own.
func manifestMeta(contentType string, body []byte) cache.Manifest {
	var doc manifestDoc
	_ = json.NewDecoder(bytes.NewReader(body)).Decode(&doc)
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil || mt == "" || mt == "application/json" || mt == "text/plain" || mt == "application/octet-stream" {
		mt = doc.MediaType
		switch {
		case mt != "":
		case doc.Manifests != nil:
			mt = MediaTypeOCIIndex
		default:
			mt = MediaTypeOCIManifest
		}
	}
	man := cache.Manifest{MediaType: mt, ArtifactType: doc.ArtifactType, Annotations: doc.Annotations}
	if man.ArtifactType == "" && doc.Config != nil && doc.Manifests == nil {
		man.ArtifactType = doc.Config.MediaType
	}
	if doc.Subject != nil {
		man.Subject, _ = cache.ParseDigest(doc.Subject.Digest)
	}
	return man
}

// mirrorTagsList passes the tag list through from upstream; when upstream
// fails, the tags the store has are served, marked stale.
func (h *Handler) mirrorTagsList(w http.ResponseWriter, r *http.Request, rc *request) error {
	m := rc.mirror
	n, last, err := pageParams(r)
	if err != nil {
		return err
	}
	q := url.Values{}
	if n >= 0 {
		q.Set("n", strconv.Itoa(n))
	}
	if last != "" {
		q.Set("last", last)
	}
	path := "tags/list"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	if err := h.spendMiss(rc, ""); err != nil {
		return err // every tag list asks upstream (none is kept): each counts
	}
	ctx, cancel := context.WithTimeout(r.Context(), m.cfg.UpstreamTimeout)
	defer cancel()
	resp, err := m.client.Do(ctx, http.MethodGet, m.upstreamName(rc.name), path, nil)
	if err != nil {
		if temporary(err) {
			w.Header().Set("Warning", staleWarning)
			h.pending.settleRepo(r.Context(), rc.name) // the tags answered so far
			return h.tagsList(w, r, rc)
		}
		return upstreamError(m, "manifest", err)
	}
	defer resp.Body.Close()
	tags, next, cut, err := readUpstreamTags(resp.Body)
	if err != nil {
		return upstreamError(m, "manifest", fmt.Errorf("upstream tag list unreadable: %w", err))
	}
	// Upstream has more: the client's next page starts after upstream's
	// last entry read, valid or not. From the last valid tag, upstream
	// would send the dropped names again, and a page that held only those
	// would end the listing early. The entry is only a cursor, escaped in
	// the Link and sent back to upstream as any client's last is; one too
	// long for a URL gives way to the last valid tag.
	if next == "" && len(tags) > 0 {
		next = tags[len(tags)-1]
	}
	if (cut || resp.Header.Get("Link") != "") && next != "" {
		setNextLink(w, rc.url("/tags/list"), n, next)
	}
	return writeJSON(w, r, "application/json", tagList{Name: rc.typed, Tags: tags})
}

// Bounds of an upstream tag list passed through. Upstream decides how
// long its list is, and a list of short names costs several times its
// size once decoded; a few clients at once must not make the mirror hold
// hundreds of MiB. A longer list is cut into pages: the client follows
// the Link, as for any paged list, and the next page asks upstream for
// the tags after the last one passed.
const (
	// maxUpstreamTagsPage is what the names of one page may cost, each
	// counted with its string header.
	maxUpstreamTagsPage = 4 << 20
	// maxUpstreamTagsRead is how much of upstream's answer is read for
	// one page: the names, the JSON around them, and what is left out.
	maxUpstreamTagsRead = 2 * maxUpstreamTagsPage
)

// readUpstreamTags reads the tags of upstream's tag list a token at a
// time, never the whole answer at once. Names from upstream are hostile:
// what is not a tag is left out, as sync leaves it out. cut reports that
// the list went on past maxUpstreamTagsPage: tags is its first part.
// next is the last entry read, valid or not (the cursor of the next
// page), unless longer than maxTagCursor.
func readUpstreamTags(body io.Reader) (tags []string, next string, cut bool, err error) {
	dec := json.NewDecoder(io.LimitReader(body, maxUpstreamTagsRead))
	tags = []string{}
	if err := expectDelim(dec, '{'); err != nil {
		return nil, "", false, err
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return nil, "", false, err
		}
		if key != "tags" {
			if err := skipValue(dec); err != nil {
				return nil, "", false, err
			}
			continue
		}
		if tok, err := dec.Token(); err != nil {
			return nil, "", false, err
		} else if tok == nil {
			continue // "tags": null, as distribution answers for none
		} else if tok != json.Delim('[') {
			return nil, "", false, fmt.Errorf("tags: %v, want an array", tok)
		}
		cost := 0
		for dec.More() {
			if cost >= maxUpstreamTagsPage {
				return tags, next, true, nil
			}
			tok, err := dec.Token()
			if err != nil {
				return nil, "", false, err
			}
			t, ok := tok.(string)
			if !ok {
				return nil, "", false, fmt.Errorf("tags: %v is not a string", tok)
			}
			cost += len(t) + 16
			next = ""
			if len(t) <= maxTagCursor {
				next = t
			}
			if ValidTag(t) {
				tags = append(tags, t)
			}
		}
		if _, err := dec.Token(); err != nil { // ]
			return nil, "", false, err
		}
	}
	_, err = dec.Token() // }
	return tags, next, false, err
}

// expectDelim reads the next token, which must be d.
func expectDelim(dec *json.Decoder, d json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if tok != d {
		return fmt.Errorf("%v, want %v", tok, d)
	}
	return nil
}

// maxSkipDepth bounds the nesting of a value skipValue reads past:
// json.Decoder's Token keeps an entry per open array or object with no
// bound of its own (some 45 bytes of allocations per `[`), and upstream
// writes what is skipped.
const maxSkipDepth = 64

// skipValue reads past one value, a token at a time, nested at most
// maxSkipDepth deep.
func skipValue(dec *json.Decoder) error {
	depth := 0
	for {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			if depth++; depth > maxSkipDepth {
				return fmt.Errorf("a value nested more than %d deep", maxSkipDepth)
			}
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
		if depth == 0 {
			return nil
		}
	}
}

// maxTagCursor bounds an entry of upstream's tag list used as the cursor
// of the next page (a valid tag has at most 128 characters).
const maxTagCursor = 1024
