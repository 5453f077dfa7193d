package registry

// Signature policies: a manifest of a repository under a policy is served
// only with a valid signature (registry/sigpolicy decides). The check runs
// in the two manifest GET/HEAD handlers, local and mirrored, on the
// internal name: every name form a client may use resolves to it before.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/registry/sigpolicy"
)

// How long a verdict is kept per (policy, repository, digest). A pass is
// kept a little, so that the platform manifests of a signed index pulled
// right after it pass too and a pull does not verify the same signature
// for every request; a refusal barely, so that a signature pushed (or
// appearing upstream) just after is honoured at once.
const (
	sigPassTTL = time.Minute
	sigFailTTL = 2 * time.Second
	// sigVerdictsMax bounds the verdicts kept; past it the expired go,
	// and if that is not enough, all.
	sigVerdictsMax = 10000
)

type sigVerdict struct {
	ok bool
	// signed: the pass is a signature's (the manifest's own, or that of
	// a signed index listing it), not per_platform's of an unsigned index.
	signed bool
	until  time.Time
}

// sigVerdicts is the short-lived cache of signature checks.
type sigVerdicts struct {
	mu sync.Mutex
	m  map[string]sigVerdict
}

func (c *sigVerdicts) get(key string, now time.Time) (v sigVerdict, found bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, found = c.m[key]
	if !found || now.After(v.until) {
		return sigVerdict{}, false
	}
	return v, true
}

func (c *sigVerdicts) put(key string, ok, signed bool, now time.Time) {
	ttl := sigFailTTL
	if ok {
		ttl = sigPassTTL
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]sigVerdict{}
	}
	if len(c.m) >= sigVerdictsMax {
		for k, v := range c.m {
			if now.After(v.until) {
				delete(c.m, k)
			}
		}
		if len(c.m) >= sigVerdictsMax {
			clear(c.m)
		}
	}
	c.m[key] = sigVerdict{ok: ok, signed: ok && signed, until: now.Add(ttl)}
}

// forgetRefusals drops the refusals kept for repo under p, so that a
// signature pushed right after a refused pull is honoured by the next one
// on this replica (other replicas keep theirs for sigFailTTL at most).
func (c *sigVerdicts) forgetRefusals(p *sigpolicy.Policy, repo string) {
	prefix := p.Name() + "\x00" + repo + "\x00"
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, v := range c.m {
		if !v.ok && strings.HasPrefix(k, prefix) {
			delete(c.m, k)
		}
	}
}

// signedByParent reports whether an index remembered as listing d (see
// Handler.sigParents) passes p by a signature now. A platform manifest
// passes on its signed index's verdict only for sigPassTTL; a client that
// copies every platform, one after the other with its blobs (skopeo copy
// --all), asks for the later ones long after. Then the index is verified
// again (its signature may have gone) and, if it passes, so does what it
// lists.
func (h *Handler) signedByParent(ctx context.Context, p *sigpolicy.Policy, repo string, mirror *Mirror, d cache.Digest, upstream bool) bool {
	for _, pd := range h.sigParents.get(verdictKey(p, repo, d), h.sigNow()) {
		pm, body, err := h.cfg.Store.GetManifest(ctx, repo, pd)
		if err != nil {
			continue
		}
		var doc manifestDoc
		if json.Unmarshal(body, &doc) != nil || !doc.isIndex() || !slices.ContainsFunc(doc.Manifests, func(c descriptor) bool { return c.Digest == d.String() }) {
			continue
		}
		if signed, err := h.verifyManifestSigned(ctx, p, repo, mirror, pm, body, upstream); err == nil && signed {
			return true
		}
	}
	return false
}

// coverChildren lets the manifests index d lists through on its pass by
// a signature: for sigPassTTL on a verdict, later by verifying d again
// (signedByParent). Nested indexes pass on it the same way, and so, in
// turn, do theirs.
func (h *Handler) coverChildren(p *sigpolicy.Policy, repo string, d cache.Digest, doc manifestDoc, now time.Time) {
	for _, c := range doc.Manifests {
		if cd, err := cache.ParseDigest(c.Digest); err == nil {
			h.sigVerdicts.put(verdictKey(p, repo, cd), true, true, now)
			h.sigParents.add(verdictKey(p, repo, cd), d, now)
		}
	}
}

func verdictKey(p *sigpolicy.Policy, repo string, d cache.Digest) string {
	return p.Name() + "\x00" + repo + "\x00" + d.String()
}

// storeOnlyKey is the key of a refusal found without asking upstream,
// for verdict key k of a mirrored name. It shares k's prefix, so that
// forgetRefusals drops it too.
func storeOnlyKey(k string) string {
	return k + "\x00store"
}

// signaturePolicy returns the first policy that covers internal name repo.
func (h *Handler) signaturePolicy(repo string) *sigpolicy.Policy {
	for _, p := range h.cfg.SignaturePolicies {
		if p.Matches(repo) {
			return p
		}
	}
	return nil
}

// checkSignature refuses m (with 403 DENIED naming the policy) when a
// policy covers rc.name and m has no valid signature under it. body may be
// nil (a HEAD): it is read then.
func (h *Handler) checkSignature(r *http.Request, rc *request, m cache.Manifest, body []byte) error {
	p := h.signaturePolicy(rc.name)
	if p == nil {
		return nil
	}
	err := h.verifyManifest(r.Context(), p, rc.name, rc.mirror, m, body, true)
	if err == nil {
		return nil
	}
	if rc.mirror == nil && !h.cfg.ReadOnly && signingTool(r.UserAgent()) && h.cfg.CanPush(r, rc.name) {
		// cosign and notation GET the manifest they sign, so an image
		// could never be signed once a policy covers it. Someone who
		// may push here may put any image here anyway (not so on a
		// read-only registry, where nobody may); a runtime never
		// sends these User-Agents, so what nodes pull stays checked.
		h.cfg.Logger.Info("unsigned manifest served to a signer who may push",
			zap.String("repo", rc.name), zap.String("digest", m.Digest.String()), zap.String("user_agent", r.UserAgent()))
		return nil
	}
	return h.signatureRefusal(rc, p, m.Digest, err)
}

// signingTool reports whether ua is cosign's or notation's User-Agent.
func signingTool(ua string) bool {
	return strings.HasPrefix(ua, "cosign/") || strings.HasPrefix(ua, "notation/")
}

// verifyManifest returns nil when manifest m of repo passes p, and then
// vouches for the blobs m references (signature_blobs.go). body may be
// nil: it is read then. A signed index lets its platform manifests
// through (cosign signs the index by default); with per_platform an
// unsigned index passes and each platform manifest is checked on its own
// pull. With upstream, a mirror's signatures are fetched when the store's
// do not verify; without, a refusal of a mirrored name binds only other
// checks without (sigFailTTL), since upstream may hold the signature a
// manifest pull will find.
func (h *Handler) verifyManifest(ctx context.Context, p *sigpolicy.Policy, repo string, mirror *Mirror, m cache.Manifest, body []byte, upstream bool) error {
	_, err := h.verifyManifestSigned(ctx, p, repo, mirror, m, body, upstream)
	return err
}

// verifyManifestSigned is verifyManifest that also tells whether the pass
// is a signature's: m's own, or (within sigPassTTL) that of a signed
// index listing m. A pass that is not (an unsigned index under
// per_platform, a signature manifest) covers nothing m lists.
func (h *Handler) verifyManifestSigned(ctx context.Context, p *sigpolicy.Policy, repo string, mirror *Mirror, m cache.Manifest, body []byte, upstream bool) (signed bool, err error) {
	now := h.sigNow()
	key := verdictKey(p, repo, m.Digest)
	if v, found := h.sigVerdicts.get(key, now); found {
		if v.ok {
			h.vouch(ctx, p, repo, m.Digest, body, v.signed)
			return v.signed, nil
		}
		return false, errors.New("refused moments ago")
	}
	if !upstream && mirror != nil {
		if _, found := h.sigVerdicts.get(storeOnlyKey(key), now); found {
			return false, errors.New("refused from the store moments ago")
		}
	}
	if body == nil {
		var err error
		if _, body, err = h.cfg.Store.GetManifest(ctx, repo, m.Digest); err != nil {
			return false, fmt.Errorf("reading the manifest: %w", err)
		}
	}
	var doc manifestDoc
	_ = json.Unmarshal(body, &doc) // stored manifests are JSON objects
	layerTypes := make([]string, len(doc.Layers))
	for i, l := range doc.Layers {
		layerTypes[i] = l.MediaType
	}
	if sigpolicy.IsSignature(layerTypes) {
		// What a client reads to verify: it is not itself signed, and
		// its blobs are served, as far as they are signature material.
		h.vouchSignatureDoc(ctx, p, repo, mirror, upstream, m.Digest, doc, now)
		return false, nil
	}
	isIndex := doc.isIndex()
	subject := sigpolicy.Subject{Repo: repo, Digest: m.Digest.String(), MediaType: m.MediaType, Size: m.Size}
	src := storeSignatures{h: h, repo: repo}
	if h.signedByParent(ctx, p, repo, mirror, m.Digest, upstream) {
		err = nil
	} else {
		err = p.Verify(ctx, src, subject, now)
	}
	if err != nil && upstream && mirror != nil {
		// Signatures live upstream; bring them in (cached in the store
		// like any manifest and blob) and look again.
		if perr := h.pullSignatures(ctx, &request{name: repo, mirror: mirror}, m.Digest); perr != nil {
			h.cfg.Logger.Debug("fetching signatures from upstream failed",
				zap.String("repo", repo), zap.String("digest", m.Digest.String()), zap.Error(perr))
		}
		err = p.Verify(ctx, src, subject, now)
	}
	signed = err == nil
	switch {
	case signed && isIndex:
		h.coverChildren(p, repo, m.Digest, doc, now)
	case err != nil && isIndex && p.PerPlatform():
		err = nil
	}
	switch {
	case err == nil || upstream || mirror == nil:
		h.sigVerdicts.put(key, err == nil, signed, now)
	default:
		// A mirrored name refused from the store alone: a manifest pull
		// may still find the signature upstream, so this refusal binds
		// only checks that never ask (a blob's voucher, a scan), which
		// would otherwise verify it again on every blob request.
		h.sigVerdicts.put(storeOnlyKey(key), false, false, now)
	}
	if err == nil {
		h.vouchDoc(p, repo, m.Digest, doc, now)
	}
	return signed, err
}

func (h *Handler) signatureRefusal(rc *request, p *sigpolicy.Policy, d cache.Digest, why error) *Error {
	rc.sigPolicy = p.Name()
	return newError(http.StatusForbidden, CodeDenied,
		fmt.Sprintf("manifest %s is refused by signature policy %s: no valid signature", d, p.Name()), why)
}

// storeSignatures reads the signatures of one repository from the store.
type storeSignatures struct {
	h    *Handler
	repo string
}

func (s storeSignatures) Candidates(ctx context.Context, d, prefer string, pick func([]string) []string) ([]sigpolicy.Candidate, error) {
	dg, err := cache.ParseDigest(d)
	if err != nil {
		return nil, err
	}
	store := s.h.cfg.Store
	var out []sigpolicy.Candidate
	var tagged cache.Digest
	if td, err := store.ResolveTag(ctx, s.repo, sigpolicy.CosignTag(d)); err == nil {
		tagged = td
	}
	// The signature that passed last time, read whatever the referrers
	// listed before it, as long as it still is one: under cosign's tag,
	// or a manifest of this repository whose subject is d.
	if pd, err := cache.ParseDigest(prefer); err == nil {
		if m, b, err := store.GetManifest(ctx, s.repo, pd); err == nil &&
			(pd == tagged || m.Subject == dg && isSignatureArtifact(m.ArtifactType)) {
			out = append(out, sigpolicy.Candidate{Digest: prefer, Body: b})
		}
	}
	var listed []string
	if !tagged.IsZero() {
		listed = append(listed, tagged.String())
	}
	walked := 0
	err = eachReferrer(ctx, store, s.repo, dg, s.h.cfg.MaxManifestSize, func(page []cache.Manifest, _ bool) (bool, error) {
		for _, r := range page {
			walked++
			if isSignatureArtifact(r.ArtifactType) && r.Digest != tagged {
				listed = append(listed, r.Digest.String())
			}
			if walked >= sigpolicy.MaxListed {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil && !errors.Is(err, cache.ErrManifestUnknown) {
		return nil, err
	}
	for _, c := range pick(listed) {
		cd, err := cache.ParseDigest(c)
		if err != nil {
			continue
		}
		if _, b, err := store.GetManifest(ctx, s.repo, cd); err == nil {
			out = append(out, sigpolicy.Candidate{Digest: c, Body: b})
		}
	}
	return out, nil
}

func (s storeSignatures) Blob(ctx context.Context, d string) ([]byte, error) {
	dg, err := cache.ParseDigest(d)
	if err != nil {
		return nil, err
	}
	// Only a blob this repository holds: another's is not its signature.
	if _, err := s.h.cfg.Store.HasBlob(ctx, s.repo, dg); err != nil {
		return nil, err
	}
	b, err := s.h.cfg.Store.OpenBlob(ctx, dg)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	return io.ReadAll(io.LimitReader(b, sigpolicy.MaxBlobSize+1))
}

// sigPullLayers bounds the signature layers (sigpolicy.MaxBlobSize each)
// one look upstream fetches, across all its signature manifests: a pull
// refused every sigFailTTL must not cost up to MaxCandidates times
// MaxLayers upstream GETs. A signature has one layer (cosign's tag: one
// per signature), so this is ample.
const sigPullLayers = 2 * sigpolicy.MaxLayers

// pullSignatures copies d's signatures from a mirror's upstream into the
// store: the manifests its referrers API lists as signatures, the manifest
// under cosign's tag, and their layers (at most sigPullLayers, the tag's
// first). What is found stays cached like any mirrored content; what
// upstream lacks is simply not there.
func (h *Handler) pullSignatures(ctx context.Context, rc *request, d cache.Digest) error {
	m := rc.mirror
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.UpstreamTimeout)
	defer cancel()
	var bodies [][]byte
	var errs []error
	if resp, err := m.client.Do(ctx, http.MethodGet, m.upstreamName(rc.name), "referrers/"+d.String(), nil); err == nil {
		var idx struct {
			Manifests []descriptor `json:"manifests"`
		}
		err := json.NewDecoder(io.LimitReader(resp.Body, h.cfg.MaxManifestSize)).Decode(&idx)
		resp.Body.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("upstream referrers unreadable: %w", err))
		}
		// Signatures first; then other referrers, since some registries
		// report a referrer's config media type rather than its
		// artifactType (go-containerregistry's does): the verifier tells.
		refs := make([]descriptor, 0, len(idx.Manifests))
		for _, r := range idx.Manifests {
			if isSignatureArtifact(r.ArtifactType) {
				refs = append(refs, r)
			}
		}
		for _, r := range idx.Manifests {
			if !isSignatureArtifact(r.ArtifactType) {
				refs = append(refs, r)
			}
		}
		if len(refs) > sigpolicy.MaxCandidates {
			refs = refs[:sigpolicy.MaxCandidates]
		}
		for _, r := range refs {
			rd, err := cache.ParseDigest(r.Digest)
			if err != nil {
				continue
			}
			if _, b, err := h.cfg.Store.GetManifest(ctx, rc.name, rd); err == nil {
				bodies = append(bodies, b)
				continue
			}
			res, err := h.fetchManifest(ctx, rc, rd.String(), rd, "")
			if err != nil {
				errs = append(errs, err)
				continue
			}
			bodies = append(bodies, res.body)
		}
	} else {
		errs = append(errs, err) // an upstream without the referrers API
	}
	tag := sigpolicy.CosignTag(d.String())
	if res, err := h.fetchManifest(ctx, rc, tag, cache.Digest{}, tag); err == nil {
		// First: cosign's usual form, which the budget below must reach.
		bodies = append([][]byte{res.body}, bodies...)
	} else {
		errs = append(errs, err)
	}
	budget := sigPullLayers
	for _, b := range bodies {
		var doc manifestDoc
		if json.Unmarshal(b, &doc) != nil {
			continue
		}
		// What a check reads (the last sigpolicy.MaxLayers), not one
		// upstream GET for each of the thousands a manifest may list.
		layers := doc.Layers
		if len(layers) > sigpolicy.MaxLayers {
			layers = layers[len(layers)-sigpolicy.MaxLayers:]
		}
		for _, l := range layers {
			if budget == 0 {
				return errors.Join(append(errs, fmt.Errorf("more than %d signature layers upstream: the rest not fetched", sigPullLayers))...)
			}
			budget--
			if err := h.pullSignatureBlob(ctx, rc, l); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// pullSignatureBlob brings one small signature layer into the store,
// verified against its digest, and links it into the repository. A blob
// upstream failed to give (absent, other bytes) is not asked for again
// for sigFailTTL: many signature manifests may name it, and each check
// of each would ask.
func (h *Handler) pullSignatureBlob(ctx context.Context, rc *request, l descriptor) error {
	d, err := cache.ParseDigest(l.Digest)
	if err != nil || l.Size < 0 || l.Size > sigpolicy.MaxBlobSize {
		return fmt.Errorf("signature layer %q: not a small blob", l.Digest)
	}
	store := h.cfg.Store
	if _, err := store.StatBlob(ctx, d); err != nil {
		miss := "bu\x00" + rc.name + "\x00" + d.String()
		if h.sigMisses.has(miss, h.sigNow()) {
			return fmt.Errorf("signature layer %s: upstream failed to give it moments ago", d)
		}
		if err := h.fetchSignatureBlob(ctx, rc, d, l.Size); err != nil {
			h.sigMisses.put(miss, h.sigNow(), sigFailTTL)
			return err
		}
	}
	return store.LinkBlob(ctx, rc.name, d)
}

func (h *Handler) fetchSignatureBlob(ctx context.Context, rc *request, d cache.Digest, size int64) error {
	m := rc.mirror
	resp, err := m.client.Do(ctx, http.MethodGet, m.upstreamName(rc.name), "blobs/"+d.String(), nil)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, size+1))
	resp.Body.Close()
	if err != nil {
		return err
	}
	if _, err := h.cfg.Store.PutBlob(ctx, d, size, bytes.NewReader(body)); err != nil {
		return fmt.Errorf("signature layer %s (%s bytes): %w", d, strconv.FormatInt(size, 10), err)
	}
	return nil
}

func isSignatureArtifact(t string) bool {
	return t == sigpolicy.ArtifactTypeCosign || t == sigpolicy.ArtifactTypeNotation
}
