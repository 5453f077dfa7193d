package registry

// Blobs under a signature policy. Refusing an unsigned manifest is not
// enough: a client that knows a layer digest of it (from a build log,
// another registry, a tar) could still GET the layer by digest, and a
// mirror would fetch it from upstream on demand. So in a repository under
// a policy a blob is served only when a manifest of that repository that
// passed the policy references it, as config or layer: the manifest is
// "vouched for" when it passes, here, for sigVouchTTL. Signature manifests
// pass as what a client reads to verify, so their blobs are served too.
//
// The check runs before the store or upstream is asked: a refusal (403
// DENIED naming the policy) is the same whether or not the blob exists,
// and a mirror fetches nothing for a blob no verified manifest named.
// A HEAD of a local repository's blob is not checked (pushes need it).
//
// Replicas sharing a store do not share this memory: a client's manifest
// pull may land on one and its blob pulls on another. On a miss the
// repository's tagged manifests (at most sigScanManifests, once per
// sigScanEvery) are verified from the store, which finds what another
// replica served by tag; a signed manifest pulled only by digest vouches
// on the replica that served it.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/registry/sigpolicy"
)

const (
	// sigVouchTTL is how long a pass vouches for the manifest's blobs:
	// long enough for a slow pull of many layers after its manifest. A
	// signature removed stops the manifest within sigPassTTL and its
	// blobs within this.
	sigVouchTTL = time.Hour
	// sigVoucherTTL is how long the manifests that vouched for a blob are
	// remembered: a blob asked for after its vouch expired (the last
	// layers of a slow pull) is served when one of them passes again.
	// Only a relation: nothing passes on it alone.
	sigVoucherTTL = 24 * time.Hour
	// sigVouchesMax bounds the entries kept (as sigVerdictsMax does).
	sigVouchesMax = 100000
	// sigScanManifests bounds the manifests one scan of a repository
	// looks at (tags, and the platforms of the indexes they name).
	sigScanManifests = 256
	// sigScanEvery: a repository is scanned at most this often, so that
	// asking for digests that no signed manifest names costs one scan,
	// not one per request.
	sigScanEvery = 2 * time.Second
	// sigMaterialLayers bounds the layers of one signature manifest read
	// to check them (sigpolicy.MaxBlobSize each), the last ones, besides
	// its config: those a signature check reads (cosign adds a layer per
	// signature under its tag, rarely many).
	sigMaterialLayers = sigpolicy.MaxLayers
	// sigMissesMax bounds the misses kept (sigMisses): past it the
	// expired go, and if that is not enough, all, which costs only the
	// checks they spared.
	sigMissesMax = 10000
)

// expiringSet is a set of keys that expire, bounded in size.
type expiringSet struct {
	mu  sync.Mutex
	max int
	m   map[string]time.Time
}

func (s *expiringSet) has(key string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	until, ok := s.m[key]
	return ok && !now.After(until)
}

func (s *expiringSet) put(key string, now time.Time, ttl time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]time.Time{}
	}
	if len(s.m) >= s.max {
		for k, until := range s.m {
			if now.After(until) {
				delete(s.m, k)
			}
		}
		if len(s.m) >= s.max {
			clear(s.m)
		}
	}
	s.m[key] = now.Add(ttl)
}

// forget drops the keys that start with one of prefixes.
func (s *expiringSet) forget(prefixes ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.m {
		for _, p := range prefixes {
			if strings.HasPrefix(k, p) {
				delete(s.m, k)
				break
			}
		}
	}
}

// forgetMisses drops what checks of repo under p found missing (see
// sigMisses), as forgetRefusals drops its refusals: a push may be the
// signature or the signature blob they lacked.
func (h *Handler) forgetMisses(p *sigpolicy.Policy, repo string) {
	h.sigMisses.forget(vouchKey("bx", p, repo, ""), vouchKey("ms", p, repo, ""), vouchKey("mu", p, repo, ""), "bu\x00"+repo+"\x00")
}

// putAll puts keys and then mark, under one lock, so that a reader who
// sees mark sees every key.
func (s *expiringSet) putAll(keys []string, mark string, now time.Time, ttl time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]time.Time{}
	}
	if len(s.m)+len(keys)+1 > s.max {
		for k, until := range s.m {
			if now.After(until) {
				delete(s.m, k)
			}
		}
		if len(s.m)+len(keys)+1 > s.max {
			clear(s.m)
		}
	}
	for _, k := range keys {
		s.m[k] = now.Add(ttl)
	}
	s.m[mark] = now.Add(ttl)
}

// digestRelation remembers, per key (a policy, a repository and a
// digest), the manifests related to it: the indexes that passed by a
// signature and list a manifest, the manifests that passed and reference
// a blob. Only a relation is kept, never a pass: whoever uses it verifies
// the related manifest again. Entries last ttl from their last add; at
// most digestRelationMax manifests per key (the newest stay).
type digestRelation struct {
	ttl time.Duration
	mu  sync.Mutex
	m   map[string]relatedDigests
}

type relatedDigests struct {
	digests []cache.Digest
	until   time.Time
}

const digestRelationMax = 4

func (c *digestRelation) get(key string, now time.Time) []cache.Digest {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.m[key]
	if !ok || now.After(s.until) {
		return nil
	}
	return slices.Clone(s.digests)
}

func (c *digestRelation) add(key string, d cache.Digest, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]relatedDigests{}
	}
	if len(c.m) >= sigVouchesMax {
		for k, s := range c.m {
			if now.After(s.until) {
				delete(c.m, k)
			}
		}
		if len(c.m) >= sigVouchesMax {
			clear(c.m)
		}
	}
	s := c.m[key]
	if now.After(s.until) {
		s.digests = nil
	}
	s.digests = slices.DeleteFunc(s.digests, func(x cache.Digest) bool { return x == d })
	s.digests = append(s.digests, d)
	if len(s.digests) > digestRelationMax {
		s.digests = s.digests[len(s.digests)-digestRelationMax:]
	}
	s.until = now.Add(c.ttl)
	c.m[key] = s
}

func vouchKey(kind string, p *sigpolicy.Policy, repo string, d string) string {
	return kind + "\x00" + p.Name() + "\x00" + repo + "\x00" + d
}

// vouchDoc vouches for the blobs of manifest d (parsed as doc) of repo,
// which passed p. An index vouches for no blob: it lists manifests, and
// each of those vouches for its own config and layers when it passes
// itself. Whatever else an index carries (a crafted one may add a
// "layers" list) is nothing a client pulls through it, and an unsigned
// index passes under per_platform: were its "layers" vouched for, any
// blob of the repository could be had by naming it in an index.
func (h *Handler) vouchDoc(p *sigpolicy.Policy, repo string, d cache.Digest, doc manifestDoc, now time.Time) {
	var keys []string
	if !doc.isIndex() {
		if doc.Config != nil {
			keys = append(keys, vouchKey("b", p, repo, doc.Config.Digest))
		}
		for _, l := range doc.Layers {
			keys = append(keys, vouchKey("b", p, repo, l.Digest))
		}
	}
	for _, k := range keys {
		h.sigVouchers.add(k, d, now)
	}
	h.sigVouches.putAll(keys, vouchKey("m", p, repo, d.String()), now, sigVouchTTL)
}

// vouchSignatureDoc vouches for the blobs of signature manifest d of
// repo that are what a signature's are: at most sigpolicy.MaxBlobSize,
// the config a JSON object, each layer a JSON object or (COSE) a CBOR
// array. A manifest is a signature by the media types its descriptors
// claim, which whoever pushed it (or an upstream) wrote: without looking
// at the bytes, a "signature" naming an unsigned image's layers would
// make them servable. A mirror's missing signature blob is fetched
// (small, verified) when upstream may be asked. Blobs are content: a
// manifest checked once is not read again while vouched for. One with a
// blob missing is checked again, since the blob may come (a scan, which
// never asks upstream, may have met it first), but at most once per
// sigFailTTL: each check reads up to sigMaterialLayers blobs, and asks
// upstream for the missing ones, for any anonymous GET of the manifest.
func (h *Handler) vouchSignatureDoc(ctx context.Context, p *sigpolicy.Policy, repo string, mirror *Mirror, upstream bool, d cache.Digest, doc manifestDoc, now time.Time) {
	mark := vouchKey("m", p, repo, d.String())
	if h.sigVouches.has(mark, now) {
		return
	}
	asks := mirror != nil && upstream
	triedUpstream, triedStore := vouchKey("mu", p, repo, d.String()), vouchKey("ms", p, repo, d.String())
	if h.sigMisses.has(triedUpstream, now) || (!asks && h.sigMisses.has(triedStore, now)) {
		return
	}
	blobs := doc.Layers
	if len(blobs) > sigMaterialLayers {
		blobs = blobs[len(blobs)-sigMaterialLayers:]
	}
	if doc.Config != nil {
		blobs = append([]descriptor{*doc.Config}, blobs...)
	}
	var keys []string
	missing := false
	for i, b := range blobs {
		ok, absent := h.signatureMaterial(ctx, repo, mirror, upstream, b, i == 0 && doc.Config != nil)
		if ok {
			k := vouchKey("b", p, repo, b.Digest)
			keys = append(keys, k)
			h.sigVouchers.add(k, d, now)
		}
		missing = missing || absent
	}
	if missing {
		for _, k := range keys {
			h.sigVouches.put(k, now, sigVouchTTL)
		}
		if asks {
			h.sigMisses.put(triedUpstream, now, sigFailTTL)
		} else {
			h.sigMisses.put(triedStore, now, sigFailTTL)
		}
		return
	}
	h.sigVouches.putAll(keys, mark, now, sigVouchTTL)
}

// signatureMaterial reports whether blob b of repo is small and shaped as
// a signature manifest's config (a JSON object) or layer (a JSON object,
// or a COSE_Sign1 CBOR array, tagged or not): never a layer tar, which
// starts with a file name or gzip's or zstd's magic. absent: the store
// does not hold it (and upstream was not asked).
func (h *Handler) signatureMaterial(ctx context.Context, repo string, mirror *Mirror, upstream bool, b descriptor, config bool) (ok, absent bool) {
	d, err := cache.ParseDigest(b.Digest)
	if err != nil || b.Size < 0 || b.Size > sigpolicy.MaxBlobSize {
		return false, false
	}
	if _, err := h.cfg.Store.HasBlob(ctx, repo, d); err != nil {
		if mirror == nil || !upstream {
			return false, true
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), mirror.cfg.UpstreamTimeout)
		defer cancel()
		if h.pullSignatureBlob(ctx, &request{name: repo, mirror: mirror}, b) != nil {
			return false, true
		}
	}
	body, err := storeSignatures{h: h, repo: repo}.Blob(ctx, d.String())
	if err != nil || int64(len(body)) > sigpolicy.MaxBlobSize {
		return false, err != nil
	}
	if len(body) > 0 && (body[0] == 0xd2 || body[0] == 0x84) {
		// One well-formed CBOR item and nothing after it: a tar whose
		// first name starts with such a byte is not that.
		return !config && b.MediaType == sigpolicy.MediaTypeCOSE && cbor.Wellformed(body) == nil, false
	}
	var obj map[string]json.RawMessage
	return json.Unmarshal(body, &obj) == nil, false
}

// vouch vouches for manifest d of repo, passed by a verdict remembered
// (its platform manifests pass with a signed index without having been
// read), unless it is vouched for already; signed: by a signature, so
// that a nested index lets what it lists through too. body may be nil.
func (h *Handler) vouch(ctx context.Context, p *sigpolicy.Policy, repo string, d cache.Digest, body []byte, signed bool) {
	now := h.sigNow()
	if h.sigVouches.has(vouchKey("m", p, repo, d.String()), now) {
		return
	}
	if body == nil {
		var err error
		if _, body, err = h.cfg.Store.GetManifest(ctx, repo, d); err != nil {
			return // gone meanwhile: nothing to vouch for
		}
	}
	var doc manifestDoc
	if json.Unmarshal(body, &doc) == nil {
		if signed && doc.isIndex() {
			h.coverChildren(p, repo, d, doc, now)
		}
		h.vouchDoc(p, repo, d, doc, now)
	}
}

// checkBlobSignature refuses blob d of rc.name with 403 DENIED naming the
// policy when a policy covers the repository and no manifest of it that
// passed references d. A HEAD of a local repository's blob is let
// through: it carries no bytes, and every pushing client asks it before
// uploading a layer (refusing it fails the push of any image, signed or
// not, since a signature comes after its image). A mirror's HEAD is
// checked: nothing is pushed there, and it would ask upstream.
func (h *Handler) checkBlobSignature(ctx context.Context, r *http.Request, rc *request, d cache.Digest) error {
	p := h.signaturePolicy(rc.name)
	if p == nil || (r.Method == http.MethodHead && rc.mirror == nil) || h.blobVouched(ctx, p, rc.name, rc.mirror, d) {
		return nil
	}
	rc.sigPolicy = p.Name()
	return newError(http.StatusForbidden, CodeDenied,
		fmt.Sprintf("blob %s is refused by signature policy %s: no manifest of this repository with a valid signature references it", d, p.Name()), nil)
}

// blobVouched reports whether a manifest of repo that passed p references
// d: one seen passing, or else one found by scanning the repository.
func (h *Handler) blobVouched(ctx context.Context, p *sigpolicy.Policy, repo string, mirror *Mirror, d cache.Digest) bool {
	key := vouchKey("b", p, repo, d.String())
	if h.sigVouches.has(key, h.sigNow()) {
		return true
	}
	// The vouch expired (a slow pull's last layers): the manifests that
	// gave it, verified again, give it again if they still pass. From
	// the store only, as a scan. When none did, they are not asked again
	// for sigFailTTL: each may be an index's platform, verified through
	// its parents, and a client may repeat the request at will. A pass
	// meanwhile (a pull of one of them) vouches, which is looked at first.
	if miss := vouchKey("bx", p, repo, d.String()); !h.sigMisses.has(miss, h.sigNow()) {
		vouchers := h.sigVouchers.get(key, h.sigNow())
		for _, md := range vouchers {
			if m, body, err := h.cfg.Store.GetManifest(ctx, repo, md); err == nil && h.verifyManifest(ctx, p, repo, mirror, m, body, false) == nil && h.sigVouches.has(key, h.sigNow()) {
				return true
			}
		}
		if len(vouchers) > 0 {
			h.sigMisses.put(miss, h.sigNow(), sigFailTTL)
		}
	}
	h.scanRepository(ctx, p, repo, mirror)
	return h.sigVouches.has(key, h.sigNow())
}

// scanRepository verifies the manifests repo's tags name (and the
// platform manifests of those that are indexes) from the store, so that
// each one that passes vouches for its blobs. Only the store is read:
// a scan never makes a mirror ask upstream.
// Concurrent callers (a client's parallel layer requests) share one scan
// and wait for it, rather than each being refused while it runs.
func (h *Handler) scanRepository(ctx context.Context, p *sigpolicy.Policy, repo string, mirror *Mirror) {
	mark := vouchKey("s", p, repo, "")
	if h.sigVouches.has(mark, h.sigNow()) {
		return
	}
	_, _, _ = h.sigScans.Do(mark, func() (any, error) {
		if !h.sigVouches.has(mark, h.sigNow()) {
			h.scan(context.WithoutCancel(ctx), p, repo, mirror)
			h.sigVouches.put(mark, h.sigNow(), sigScanEvery)
		}
		return nil, nil
	})
}

func (h *Handler) scan(ctx context.Context, p *sigpolicy.Policy, repo string, mirror *Mirror) {
	store := h.cfg.Store
	tags, _, err := store.Tags(ctx, repo, "", sigScanManifests)
	if err != nil {
		return
	}
	budget := sigScanManifests
	seen := map[cache.Digest]bool{}
	var visit func(d cache.Digest, depth int)
	visit = func(d cache.Digest, depth int) {
		if budget == 0 || seen[d] {
			return
		}
		seen[d] = true
		budget--
		m, body, err := store.GetManifest(ctx, repo, d)
		if err != nil {
			return
		}
		if h.verifyManifest(ctx, p, repo, mirror, m, body, false) != nil {
			return
		}
		var doc manifestDoc
		if depth > 0 || json.Unmarshal(body, &doc) != nil {
			return
		}
		for _, c := range doc.Manifests {
			if cd, err := cache.ParseDigest(c.Digest); err == nil {
				visit(cd, depth+1)
			}
		}
	}
	for _, tag := range tags {
		if d, err := store.ResolveTag(ctx, repo, tag); err == nil {
			visit(d, 0)
		}
	}
}

// mayServeFrom reports whether blob d may be taken out of repo for r's
// caller, by a mount or a mirror's fallback when upstream fails: the
// caller may read repo, and a GET of d there would not be refused by its
// signature policy.
func (h *Handler) mayServeFrom(r *http.Request, repo string, d cache.Digest) bool {
	if !h.cfg.CanRead(r, repo) {
		return false
	}
	p := h.signaturePolicy(repo)
	return p == nil || h.blobVouched(r.Context(), p, repo, h.mirrorFor(repo), d)
}
