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
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/caddy-oci/caddy-oci/cache"
)

// Manifest media types the registry knows the shape of. Others are stored
// as long as they are JSON objects, and their descriptors are checked by the
// same rules.
const (
	MediaTypeOCIManifest        = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeOCIIndex           = "application/vnd.oci.image.index.v1+json"
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
)

// descriptor is the part of an OCI descriptor the registry looks at.
type descriptor struct {
	MediaType    string            `json:"mediaType"`
	Digest       string            `json:"digest"`
	Size         int64             `json:"size"`
	URLs         []string          `json:"urls,omitempty"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
}

// manifestDoc covers image manifests, indexes and their Docker forms.
type manifestDoc struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	ArtifactType  string            `json:"artifactType"`
	Config        *descriptor       `json:"config"`
	Layers        []descriptor      `json:"layers"`
	Manifests     []descriptor      `json:"manifests"`
	Subject       *descriptor       `json:"subject"`
	Annotations   map[string]string `json:"annotations"`
}

// isIndex reports whether a stored manifest is, for the signature policy,
// an index: a list of manifests and no config. (The media type alone does
// not say: a store accepts other media types of either shape.)
func (doc manifestDoc) isIndex() bool { return doc.Manifests != nil && doc.Config == nil }

// resolve turns a manifest reference into a digest in rc.name.
func (h *Handler) resolve(ctx context.Context, rc *request) (cache.Digest, error) {
	ref, err := ParseReference(rc.arg)
	if err != nil {
		return cache.Digest{}, referenceError(err)
	}
	if ref.IsDigest() {
		return ref.Digest, nil
	}
	d, err := h.cfg.Store.ResolveTag(ctx, rc.name, ref.Tag)
	if err != nil {
		if errors.Is(err, cache.ErrTagUnknown) || errors.Is(err, cache.ErrRepoUnknown) {
			return cache.Digest{}, errManifestUnknown(err)
		}
		return cache.Digest{}, errInternal(err)
	}
	return d, nil
}

func referenceError(err error) *Error {
	if errors.Is(err, ErrTagInvalid) {
		return newError(http.StatusBadRequest, CodeTagInvalid, "invalid tag", err)
	}
	return errBadDigest(err)
}

// manifestGet serves GET and HEAD by tag or digest, byte for byte as
// pushed, with the media type it was pushed with. Accept is not used to
// convert: a registry that converts breaks digests.
func (h *Handler) manifestGet(w http.ResponseWriter, r *http.Request, rc *request) error {
	d, err := h.resolve(r.Context(), rc)
	if err != nil {
		return err
	}
	var m cache.Manifest
	var body []byte
	// A large one waits its turn before it is read (manifestmem.go).
	hold, err := h.manifestSizes.hold(r.Context(), d, h.cfg.MaxManifestSize)
	if err != nil {
		return errInternal(err) // the client left (499)
	}
	defer hold.release()
	if r.Method == http.MethodHead {
		m, err = h.cfg.Store.StatManifest(r.Context(), rc.name, d)
	} else {
		m, body, err = h.cfg.Store.GetManifest(r.Context(), rc.name, d)
	}
	if err == nil {
		h.manifestSizes.set(d, m.Size)
		hold.fit(m.Size)
	}
	if err != nil {
		if errors.Is(err, cache.ErrManifestUnknown) || errors.Is(err, cache.ErrRepoUnknown) {
			return errManifestUnknown(err)
		}
		return errInternal(err)
	}
	if err := h.checkSignature(r, rc, m, body); err != nil {
		return err
	}
	hd := w.Header()
	hd.Set("Content-Type", m.MediaType)
	hd.Set("Docker-Content-Digest", m.Digest.String())
	hd.Set("ETag", `"`+m.Digest.String()+`"`)
	hd.Set("Content-Length", strconv.FormatInt(m.Size, 10))
	if inm := r.Header.Get("If-None-Match"); inm != "" && etagMatches(inm, m.Digest.String()) {
		hd.Del("Content-Type")
		hd.Del("Content-Length")
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_ = writeManifestBody(w, body)
	}
	return nil
}

// putManifest stores the pushed manifest. A push judged a create (auth
// on, and no tag it names pointed elsewhere when it was decided) is
// written as one only (Store.CreateManifest): its caller may have held
// the body back, as long as it liked, after that judgement, while
// someone else, on this replica or another, pushed one of its tags or
// the same bytes under another media type (the Content-Type every pull
// of the manifest gets). The store checks and writes in one transaction
// of its metadata, so no push lands between the two; a refusal is the
// update the push has become, asked of the policy again, and written as
// one if the caller may update.
func (h *Handler) putManifest(r *http.Request, rc *request, m cache.Manifest, body []byte, tags []string) error {
	var err error
	if h.cfg.Authorizer != nil && rc.putNeed != nil && !rc.tagMove {
		err = h.cfg.Store.CreateManifest(r.Context(), rc.name, m, body, tags)
		if errors.Is(err, cache.ErrTagMoved) || errors.Is(err, cache.ErrManifestRetyped) {
			if _, aerr := h.authorizeTagMove(rc.authed, rc); aerr != nil {
				return aerr
			}
			err = h.cfg.Store.PutManifest(r.Context(), rc.name, m, body, tags)
		}
	} else {
		err = h.cfg.Store.PutManifest(r.Context(), rc.name, m, body, tags)
	}
	if err != nil {
		if errors.Is(err, cache.ErrDigestMismatch) {
			return errDigestInvalid("manifest does not match digest", err)
		}
		if errors.Is(err, cache.ErrBlobUnknown) {
			// GC collected a blob between the manifest's check and its
			// put (cache.Manifest.Linked): nothing was stored.
			return newError(http.StatusBadRequest, CodeManifestBlobUnknown,
				"a blob the manifest references was collected while the manifest was pushed; push the blob again", err)
		}
		return errInternal(err)
	}
	manifestStored(rc.name, m, int64(len(body)))
	return nil
}

// jsonMediaType reports whether mt is JSON: every manifest media type of
// the OCI and Docker specs, and of artifacts, is application/json or
// application/<...>+json. mt is served as Content-Type verbatim, so it is
// one bare type: a document's mediaType field is not parsed as a header
// is, and "application/xhtml+xml;x=+json" would be XHTML to a browser.
func jsonMediaType(mt string) bool {
	sub, ok := strings.CutPrefix(mt, "application/")
	if !ok || strings.IndexFunc(sub, notSubtypeChar) >= 0 {
		return false
	}
	return sub == "json" || strings.HasSuffix(sub, "+json") && len(sub) > len("+json")
}

// notSubtypeChar reports whether c may not appear in a media subtype
// (RFC 6838's restricted-name: letters, digits and !#$&-^_.+).
func notSubtypeChar(c rune) bool {
	return !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.ContainsRune("!#$&-^_.+", c))
}

func etagMatches(header, digest string) bool {
	for v := range strings.SplitSeq(header, ",") {
		v = strings.TrimSpace(v)
		v = strings.TrimPrefix(v, "W/")
		if v == "*" || strings.Trim(v, `"`) == digest {
			return true
		}
	}
	return false
}

// maxPushTags bounds the ?tag= parameters of one manifest push: its
// tags commit with the manifest in one transaction, and badger's has a
// size limit (about 2,000 tags of the longest names on the embedded
// store) that would otherwise answer 500.
const maxPushTags = 500

// manifestPut stores a manifest under its digest and points the reference
// tag (if the URL names one) and every ?tag= at it.
func (h *Handler) manifestPut(w http.ResponseWriter, r *http.Request, rc *request) error {
	ref, err := ParseReference(rc.arg)
	if err != nil {
		return referenceError(err)
	}
	var tags []string
	if !ref.IsDigest() {
		tags = append(tags, ref.Tag)
	}
	more := r.URL.Query()["tag"]
	if len(more) > maxPushTags {
		return newError(http.StatusBadRequest, CodeTagInvalid,
			"too many tag parameters: at most "+strconv.Itoa(maxPushTags)+" in one push", nil)
	}
	for _, t := range more {
		if !ValidTag(t) {
			return newError(http.StatusBadRequest, CodeTagInvalid, "invalid tag parameter", fmt.Errorf("%w: %q", ErrTagInvalid, t))
		}
		if !slices.Contains(tags, t) {
			tags = append(tags, t)
		}
	}

	limit := h.cfg.MaxManifestSize
	if r.ContentLength > limit {
		return manifestTooLarge(limit)
	}
	var body []byte
	if rc.pushed != nil {
		body = rc.pushed.body // received by authorization (movesTag), which holds its share
	} else {
		var received func()
		if body, received, err = receiveManifestBody(w, r, limit); errors.Is(err, errClientGone) {
			return errInternal(err) // recorded as 499
		}
		if err != nil {
			return newError(http.StatusBadRequest, CodeManifestInvalid, "reading manifest failed", err)
		}
		defer received()
	}
	if int64(len(body)) > limit {
		return manifestTooLarge(limit)
	}
	release, err := holdManifestWork(r.Context(), int64(len(body)))
	if err != nil {
		return errInternal(err) // the client left: recorded as 499
	}
	defer release()

	alg := cache.SHA256
	if ref.IsDigest() {
		alg = ref.Digest.Algorithm
	}
	d := cache.FromBytes(alg, body)
	if ref.IsDigest() && d != ref.Digest {
		return errDigestInvalid("manifest does not match the digest in the URL",
			fmt.Errorf("computed %s, URL has %s", d, ref.Digest))
	}

	m, err := h.checkManifest(r.Context(), rc, r.Header.Get("Content-Type"), body)
	if err != nil {
		return err
	}
	m.Digest = d
	m.Size = int64(len(body))
	if err := h.putManifest(r, rc, m, body, tags); err != nil {
		return err
	}
	h.manifestSizes.set(m.Digest, int64(len(body)))
	if p := h.signaturePolicy(rc.name); p != nil {
		// The push may be a signature (cosign's tag, a referrer) for a
		// manifest refused a moment ago: the next pull checks again.
		h.sigVerdicts.forgetRefusals(p, rc.name)
		h.forgetMisses(p, rc.name)
	}

	hd := w.Header()
	hd.Set("Location", rc.url("/manifests/"+d.String()))
	hd.Set("Docker-Content-Digest", d.String())
	if !m.Subject.IsZero() {
		hd.Set("OCI-Subject", m.Subject.String())
	}
	for _, t := range tags {
		hd.Add("OCI-Tag", t)
	}
	hd.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
	return nil
}

func manifestTooLarge(limit int64) *Error {
	return newError(http.StatusRequestEntityTooLarge, CodeSizeInvalid,
		fmt.Sprintf("manifest exceeds the limit of %d bytes", limit), nil)
}

// checkManifest validates a pushed manifest and extracts what the store
// keeps about it. Everything it rejects is the client's mistake (400).
func (h *Handler) checkManifest(ctx context.Context, rc *request, contentType string, body []byte) (cache.Manifest, error) {
	var doc manifestDoc
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&doc); err != nil {
		return cache.Manifest{}, errManifestInvalid("manifest is not a valid JSON object", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return cache.Manifest{}, errManifestInvalid("trailing data after the manifest", err)
	}
	if doc.SchemaVersion != 2 {
		return cache.Manifest{}, errManifestInvalid(
			fmt.Sprintf("schemaVersion %d is not supported", doc.SchemaVersion), nil)
	}
	if where := negativeSize(doc); where != "" {
		// Every client that pulls it checks the bytes against the size,
		// and none can hold less than nothing.
		return cache.Manifest{}, errManifestInvalid(where+": size is negative", nil)
	}

	mt := ""
	if contentType != "" {
		base, _, err := mime.ParseMediaType(contentType)
		if err != nil {
			return cache.Manifest{}, errManifestInvalid("invalid Content-Type", err)
		}
		mt = base
	}
	switch {
	case doc.MediaType != "" && mt != "" && doc.MediaType != mt:
		return cache.Manifest{}, errManifestInvalid(
			fmt.Sprintf("mediaType %q in the manifest disagrees with Content-Type %q", doc.MediaType, mt), nil)
	case mt == "" && doc.MediaType != "":
		mt = doc.MediaType
	case mt == "" && doc.Manifests != nil:
		mt = MediaTypeOCIIndex
	case mt == "":
		mt = MediaTypeOCIManifest
	}
	if !jsonMediaType(mt) {
		// It is the Content-Type every pull is answered with, on this
		// site's origin: text/html or SVG would make the pusher's bytes a
		// page of the site.
		return cache.Manifest{}, errManifestInvalid(
			fmt.Sprintf("media type %q is not a manifest media type (application/json or application/...+json)", mt), nil)
	}

	m := cache.Manifest{MediaType: mt, Annotations: doc.Annotations}
	isIndex := mt == MediaTypeOCIIndex || mt == MediaTypeDockerManifestList ||
		(doc.Manifests != nil && doc.Config == nil && doc.Layers == nil)
	if isIndex {
		m.ArtifactType = doc.ArtifactType
		for i, c := range doc.Manifests {
			// A child need not be here (a sparse index): a copy of some
			// platforms only, or children pushed after their index. GC
			// keeps the links of every digest an index names, so a child
			// that arrives later is held by it; one that never does answers
			// MANIFEST_UNKNOWN like any absent manifest.
			if _, err := cache.ParseDigest(c.Digest); err != nil {
				return cache.Manifest{}, descriptorError(fmt.Sprintf("manifests[%d]", i), c, err)
			}
		}
	} else {
		if mt == MediaTypeOCIManifest || mt == MediaTypeDockerManifest {
			if doc.Config == nil {
				return cache.Manifest{}, errManifestInvalid("image manifest without config", nil)
			}
		}
		m.ArtifactType = doc.ArtifactType
		if m.ArtifactType == "" && doc.Config != nil {
			m.ArtifactType = doc.Config.MediaType
		}
		var descs []descriptor
		var wheres []string
		if doc.Config != nil {
			descs, wheres = append(descs, *doc.Config), append(wheres, "config")
		}
		for i, l := range doc.Layers {
			descs, wheres = append(descs, l), append(wheres, fmt.Sprintf("layers[%d]", i))
		}
		linked, err := h.checkBlobs(ctx, rc, wheres, descs)
		if err != nil {
			return cache.Manifest{}, err
		}
		m.Linked = linked
	}
	if doc.Subject != nil {
		sd, err := cache.ParseDigest(doc.Subject.Digest)
		if err != nil {
			return cache.Manifest{}, descriptorError("subject", *doc.Subject, err)
		}
		m.Subject = sd
	}
	for _, f := range []struct{ name, v string }{{"mediaType", m.MediaType}, {"artifactType", m.ArtifactType}} {
		if err := checkTypeField(f.v); err != nil {
			return cache.Manifest{}, errManifestInvalid(f.name+" "+err.Error(), nil)
		}
	}
	return m, nil
}

// negativeSize names the first descriptor of doc with a negative size;
// "" when none has one.
func negativeSize(doc manifestDoc) string {
	if doc.Config != nil && doc.Config.Size < 0 {
		return "config"
	}
	for i, l := range doc.Layers {
		if l.Size < 0 {
			return fmt.Sprintf("layers[%d]", i)
		}
	}
	for i, c := range doc.Manifests {
		if c.Size < 0 {
			return fmt.Sprintf("manifests[%d]", i)
		}
	}
	if doc.Subject != nil && doc.Subject.Size < 0 {
		return "subject"
	}
	return ""
}

// maxTypeLength bounds a manifest's media and artifact types. The store
// keeps them as text beside the manifest (PostgreSQL's text holds no NUL
// and only UTF-8), and they go out again in headers and referrers lists;
// no real type comes near the bound.
const maxTypeLength = 1024

// checkTypeField refuses a type every backend could not keep as it is, so
// that a push is refused the same way (MANIFEST_INVALID) on all of them.
func checkTypeField(v string) error {
	switch {
	case len(v) > maxTypeLength:
		return fmt.Errorf("is longer than %d bytes", maxTypeLength)
	case !utf8.ValidString(v):
		return errors.New("is not valid UTF-8")
	case strings.ContainsRune(v, 0):
		return errors.New("holds a NUL")
	}
	return nil
}

// blobChecks is how many of a manifest's blobs are checked at once: on
// S3 each is a metadata read and a HEAD of about a millisecond and a
// half, which one after another would add up for an image of many layers.
const blobChecks = 8

// checkBlobs checks a manifest's config and layers (descs, named by
// wheres for the error): each must have a valid digest and, unless the
// registry accepts sparse manifests or it is foreign, be linked in the
// repository and still stored. On a store that asks its storage for each
// (StoredBlobChecker) the checks run blobChecks at a time; the
// error is the first failing descriptor's in the manifest's order, as one
// after another would find, and none is started past one that failed.
func (h *Handler) checkBlobs(ctx context.Context, rc *request, wheres []string, descs []descriptor) ([]cache.Digest, error) {
	// A blob is checked once however often the manifest names it (its
	// first mention, so the error is the one the whole list would give):
	// a 4 MiB manifest holds some 40,000 descriptors, and one PUT must
	// not become as many metadata reads and storage HEADs.
	seen := make(map[string]bool, len(descs))
	unique, uniqueWheres := descs[:0:0], wheres[:0:0]
	for i, d := range descs {
		if foreign(d) {
			continue // not expected here: never checked
		}
		if seen[d.Digest] {
			continue
		}
		seen[d.Digest] = true
		unique, uniqueWheres = append(unique, d), append(uniqueWheres, wheres[i])
	}
	descs, wheres = unique, uniqueWheres
	// The digests found linked, one per unique descriptor: the put asks
	// the store that they still are (cache.Manifest.Linked). Sparse
	// manifests check none.
	var linked []cache.Digest
	if !h.cfg.SparseManifests {
		linked = make([]cache.Digest, len(descs))
	}
	check := func(i int) error {
		b := descs[i]
		if foreign(b) {
			return nil
		}
		bd, err := cache.ParseDigest(b.Digest)
		if err != nil {
			return descriptorError(wheres[i], b, err)
		}
		if h.cfg.SparseManifests {
			return nil // sparse: a blob may come later, or never
		}
		linked[i] = bd
		info, err := h.cfg.Store.HasBlob(ctx, rc.name, bd)
		if err == nil {
			err = h.checkBlobStored(ctx, rc.name, bd, info.Size)
		}
		if err != nil {
			if lostBlob(err) {
				_ = h.blobLost(ctx, bd, err)
			}
			if errors.Is(err, cache.ErrBlobUnknown) || errors.Is(err, cache.ErrRepoUnknown) {
				return manifestBlobUnknown(bd, err)
			}
			return errInternal(err)
		}
		return nil
	}
	// Only a store that asks its storage per blob (StoredBlobChecker: a
	// HEAD on S3) gains from checking at once; the single node's checks
	// are a stat each, cheaper than the goroutines.
	_, asks := h.cfg.Store.(StoredBlobChecker)
	if len(descs) <= 1 || h.cfg.SparseManifests || !asks {
		for i := range descs {
			if err := check(i); err != nil {
				return nil, err
			}
		}
		return linked, nil
	}
	var (
		mu    sync.Mutex
		next  int
		first = len(descs) // the index of the first failure so far
		errs  = make([]error, len(descs))
		wg    sync.WaitGroup
	)
	for range min(blobChecks, len(descs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				stop := i >= first
				mu.Unlock()
				if stop {
					// Past the end, or past a failure: an earlier
					// descriptor's error is the answer either way.
					return
				}
				if err := check(i); err != nil {
					mu.Lock()
					errs[i] = err
					first = min(first, i)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if first < len(descs) {
		return nil, errs[first]
	}
	return linked, nil
}

// checkBlobStored asks a store whose HasBlob reads only its metadata
// whether blob d's bytes are still stored (StoredBlobChecker).
func (h *Handler) checkBlobStored(ctx context.Context, repo string, d cache.Digest, size int64) error {
	if c, ok := h.cfg.Store.(StoredBlobChecker); ok {
		return c.CheckBlobStored(ctx, repo, d, size)
	}
	return nil
}

// foreign reports whether a layer is not expected in the registry:
// non-distributable media types, and any descriptor that says where else
// to fetch it.
func foreign(d descriptor) bool {
	return len(d.URLs) > 0 ||
		strings.Contains(d.MediaType, ".nondistributable.") ||
		strings.Contains(d.MediaType, ".foreign.")
}

func descriptorError(where string, d descriptor, err error) *Error {
	if errors.Is(err, cache.ErrDigestUnsupported) {
		// Well formed, but content under it cannot be held here.
		e := newError(http.StatusBadRequest, CodeManifestBlobUnknown,
			where+": digest algorithm not supported", err)
		e.Detail = map[string]string{"digest": d.Digest}
		return e
	}
	return errManifestInvalid(where+": invalid digest", err)
}

func manifestBlobUnknown(d cache.Digest, err error) *Error {
	e := newError(http.StatusBadRequest, CodeManifestBlobUnknown, "manifest references content unknown to the repository", err)
	e.Detail = map[string]string{"digest": d.String()}
	return e
}

// manifestDelete deletes by digest (the manifest, its tags and its
// referrer entry) or by tag (only the tag).
func (h *Handler) manifestDelete(w http.ResponseWriter, r *http.Request, rc *request) error {
	ref, err := ParseReference(rc.arg)
	if err != nil {
		return referenceError(err)
	}
	if ref.IsDigest() {
		err = h.cfg.Store.DeleteManifest(r.Context(), rc.name, ref.Digest)
	} else {
		err = h.cfg.Store.DeleteTag(r.Context(), rc.name, ref.Tag)
	}
	if err != nil {
		if errors.Is(err, cache.ErrManifestUnknown) || errors.Is(err, cache.ErrTagUnknown) || errors.Is(err, cache.ErrRepoUnknown) {
			return errManifestUnknown(err)
		}
		return errInternal(err)
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
	return nil
}
