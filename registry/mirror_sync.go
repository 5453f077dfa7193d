package registry

// The registry's side of scheduled sync (package registry/mirrorsync):
// listing upstream, and bringing a tag, a manifest or a blob into the
// store through exactly the paths a pull takes (the same revalidation,
// the same checks of upstream's manifests, the same fills, links and tag
// fetch times), so that nothing sync stores differs from what a pull
// would have stored, and a pull after it finds everything in place.
//
// Every store call of sync is in this file.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/registry/sigpolicy"
)

// maxListPages bounds the pages of one tag or catalog listing: an upstream
// whose Link never ends cannot keep a run busy forever.
const maxListPages = 10000

// maxSyncListing bounds what one listing (a repository's tags, the
// catalog) may cost across all its pages, each name counted with what
// keeping it costs (listedNameCost).
const maxSyncListing = 32 << 20

// SyncSource fetches one mirror's (or copy source's) content into the
// store for scheduled sync. Repository names it takes are upstream's; it
// stores them under the source's prefix.
type SyncSource struct {
	h *Handler
	m *Mirror
}

// SyncManifest is a manifest as stored: media type, digest and bytes.
type SyncManifest struct {
	MediaType string
	Digest    cache.Digest
	Body      []byte
	// covers is set (only here) on an index that passed a signature
	// policy by a signature: its own, or that of the index that listed
	// it. Given back to Manifest as the parent, it lets the platform
	// manifests it lists through on that signature, however long after
	// (see Manifest).
	covers *sigCoverage
	// commit, set by Tag for a sync_into, points the tag at the manifest
	// (stored by digest only until then).
	commit func(context.Context) error
}

// Commit makes the tag Tag returned man for point at it, once what it
// selects is stored. A mirror's tag is stored by Tag itself (a pull
// fetches what is missing on demand), and Commit does nothing; a
// sync_into's prefix is local content, which no pull fills, so its tag is
// set only by Commit: a tag there is never visible before its children
// and blobs (a run killed midway, or one that failed on a child, leaves
// the tag where it was).
func (m SyncManifest) Commit(ctx context.Context) error {
	if m.commit == nil {
		return nil
	}
	return m.commit(ctx)
}

// sigCoverage: the manifests a signed index lists, in one repository
// under one policy. Digests are content: a signature over the index is a
// signature over each manifest it names.
type sigCoverage struct {
	policy   *sigpolicy.Policy
	repo     string
	children map[cache.Digest]bool
}

// coverage is what an index with this body covers once it passed p in
// repo by a signature; nil when it is not an index.
func coverage(p *sigpolicy.Policy, repo string, body []byte) *sigCoverage {
	var doc manifestDoc
	if json.Unmarshal(body, &doc) != nil || !doc.isIndex() {
		return nil
	}
	c := &sigCoverage{policy: p, repo: repo, children: map[cache.Digest]bool{}}
	for _, m := range doc.Manifests {
		if d, err := cache.ParseDigest(m.Digest); err == nil {
			c.children[d] = true
		}
	}
	return c
}

// SyncSource returns the sync side of m, which is one of the handler's
// mirrors or a NewCopySource.
func (h *Handler) SyncSource(m *Mirror) *SyncSource {
	if h.mirrors[m.Prefix()] != m {
		// A copy source: NewHandler never saw it. (A mirror was attached
		// there, before any request could read its observer.)
		m.attach(h.cfg.Observer)
	}
	return &SyncSource{h: h, m: m}
}

// Prefix is where the source stores: the mirror's prefix, or a
// sync_into's local prefix.
func (s *SyncSource) Prefix() string { return s.m.cfg.Prefix }

// HoldUntil is when upstream's last 429 (to a pull or to sync) asked to
// be left alone until; zero when it did not or that has passed.
func (s *SyncSource) HoldUntil() time.Time { return s.m.client.HoldUntil() }

// request is the internal request of repo (upstream's name) for the
// store paths; upstream's names are hostile until checked.
func (s *SyncSource) request(repo string) (*request, error) {
	name, ok := s.m.internalName(repo)
	if !authscope.ValidName(repo) || !authscope.ValidName(name) {
		return nil, fmt.Errorf("%w: repository %q", cache.ErrNameInvalid, repo)
	}
	if !ok || !s.m.serves(name) {
		// The mirror's credentials reach only its repositories, for a
		// sync as for a pull (which answers 404 for the others).
		return nil, fmt.Errorf("%w: %q is not among the mirror's repositories", cache.ErrRepoUnknown, repo)
	}
	return &request{name: name, typed: name, mirror: s.m}, nil
}

// Repositories lists upstream's catalog, every page of it.
func (s *SyncSource) Repositories(ctx context.Context) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	var spent int
	err := s.list(ctx, "", "_catalog", func(body io.Reader) (int, error) {
		n := 0 // new names, served or not: a page of others is progress
		err := readListedNames(body, "repositories", &spent, func(r string) {
			if seen[r] {
				return
			}
			seen[r] = true
			n++
			if s.serves(r) {
				out = append(out, r)
			}
		})
		if err != nil {
			return 0, fmt.Errorf("upstream catalog: %w", err)
		}
		return n, nil
	})
	return out, err
}

// serves reports whether the mirror serves upstream's repository repo:
// a sync lists only those, as a pull reaches only those.
func (s *SyncSource) serves(repo string) bool { return s.m.ServesUpstream(repo) }

// Tags lists upstream's tags of repo, every page of it, in upstream's
// order.
func (s *SyncSource) Tags(ctx context.Context, repo string) ([]string, error) {
	rc, err := s.request(repo)
	if err != nil {
		return nil, err
	}
	var out []string
	seen := map[string]bool{}
	var spent int
	err = s.list(ctx, s.m.upstreamName(rc.name), "tags/list", func(body io.Reader) (int, error) {
		// An invalid name is left out but still new: a page of only
		// those is not the "nothing new" that ends the listing.
		n := 0
		err := readListedNames(body, "tags", &spent, func(t string) {
			if !seen[t] {
				seen[t] = true
				n++
				if ValidTag(t) {
					out = append(out, t)
				}
			}
		})
		if err != nil {
			return 0, fmt.Errorf("upstream tag list: %w", err)
		}
		return n, nil
	})
	return out, err
}

// listedNameCost is what keeping a listed name costs: its bytes, and
// its place in the listing's slice and seen map.
func listedNameCost(name string) int { return len(name) + 64 }

// errListingTooLong: an upstream listing whose names cost more than
// maxSyncListing.
var errListingTooLong = fmt.Errorf("more names than sync reads in one listing (%d MiB of names)", maxSyncListing>>20)

// readListedNames reads the array under key of one page of a listing
// ({"tags": [...]} or {"repositories": [...]}) a name at a time, never
// the page whole, and hands each name to add. Every name read, new or
// not, is charged to *spent, the listing's running cost across its
// pages: past maxSyncListing the listing fails, since upstream decides
// how long it is (and how often it repeats a name) and a run must not
// hold an unbounded list.
func readListedNames(body io.Reader, key string, spent *int, add func(string)) error {
	dec := json.NewDecoder(io.LimitReader(body, 32<<20))
	if err := expectDelim(dec, '{'); err != nil {
		return fmt.Errorf("unreadable: %w", err)
	}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return fmt.Errorf("unreadable: %w", err)
		}
		if k != key {
			if err := skipValue(dec); err != nil {
				return fmt.Errorf("unreadable: %w", err)
			}
			continue
		}
		tok, err := dec.Token()
		switch {
		case err != nil:
			return fmt.Errorf("unreadable: %w", err)
		case tok == nil:
			continue // null, as distribution answers for none
		case tok != json.Delim('['):
			return fmt.Errorf("unreadable: %s: %v, want an array", key, tok)
		}
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return fmt.Errorf("unreadable: %w", err)
			}
			name, ok := tok.(string)
			if !ok {
				return fmt.Errorf("unreadable: %s: %v is not a string", key, tok)
			}
			if *spent += listedNameCost(name); *spent > maxSyncListing {
				return errListingTooLong
			}
			add(name)
		}
		if _, err := dec.Token(); err != nil { // ]
			return fmt.Errorf("unreadable: %w", err)
		}
	}
	if _, err := dec.Token(); err != nil { // }
		return fmt.Errorf("unreadable: %w", err)
	}
	return nil
}

// list GETs path in repo (or registry-wide) page by page, following
// upstream's Link: rel="next". Only the query of the link is used, so a
// link cannot send the client to another host or path. page returns how
// many entries were new: a page of none ends the listing (some
// registries answer a `last` past the end with the first page again).
func (s *SyncSource) list(ctx context.Context, repo, path string, page func(io.Reader) (int, error)) error {
	query := "n=1000"
	for range maxListPages {
		resp, err := s.exchange(ctx, http.MethodGet, repo, path+"?"+query, nil)
		if err != nil {
			return err
		}
		n, err := page(resp.Body)
		link := resp.Header.Get("Link")
		resp.Body.Close()
		if err != nil {
			return err
		}
		next := nextQuery(link)
		if n == 0 || next == "" || next == query {
			return nil
		}
		query = next
	}
	return fmt.Errorf("upstream listing of %q has more than %d pages", repo+"/"+path, maxListPages)
}

// exchange is one upstream request bounded by the mirror's timeout. The
// body stays readable until closed.
func (s *SyncSource) exchange(ctx context.Context, method, repo, path string, hdr http.Header) (*http.Response, error) {
	ctx, cancel := context.WithTimeout(ctx, s.m.cfg.UpstreamTimeout)
	resp, err := s.m.client.Do(ctx, method, repo, path, hdr)
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// nextQuery is the query of a Link header's rel="next" target, or "".
func nextQuery(link string) string {
	for part := range strings.SplitSeq(link, ",") {
		target, params, ok := strings.Cut(part, ";")
		if !ok || !strings.Contains(strings.ReplaceAll(params, " ", ""), `rel="next"`) {
			continue
		}
		target = strings.Trim(strings.TrimSpace(target), "<>")
		u, err := url.Parse(target)
		if err != nil {
			return ""
		}
		return u.RawQuery
	}
	return ""
}

// Tag brings repo:tag into the store as a pull after the tag's TTL would:
// a HEAD when the store has the tag, a GET only when the digest moved or
// the store has nothing; the tag's fetch time is renewed either way.
// fetched reports a GET of the manifest.
func (s *SyncSource) Tag(ctx context.Context, repo, tag string) (SyncManifest, bool, error) {
	rc, err := s.request(repo)
	if err != nil {
		return SyncManifest{}, false, err
	}
	if !ValidTag(tag) {
		return SyncManifest{}, false, fmt.Errorf("%w: %q", ErrTagInvalid, tag)
	}
	h, m := s.h, s.m
	key := rc.name + ":" + tag
	// Sync brings the tag into the store: a pull's answer still on its
	// way there is waited for, before (here) and after (awaitStored).
	h.pending.settle(ctx, key)
	ti, err := h.cfg.Store.TagInfo(ctx, rc.name, tag)
	have := err == nil
	if h.signaturePolicy(rc.name) != nil {
		return s.verifiedTag(ctx, rc, tag, ti, have)
	}
	if m.copy {
		return s.copyTag(ctx, rc, tag, ti, have)
	}
	v, err, _ := m.revalidations.Do(key, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.UpstreamTimeout)
		defer cancel()
		return h.revalidateTag(ctx, rc, tag, ti, have, false)
	})
	if err != nil {
		return SyncManifest{}, false, err
	}
	res := v.(mirroredManifest)
	if err := h.awaitStored(ctx, rc, res, tag); err != nil {
		return SyncManifest{}, false, err
	}
	return SyncManifest{MediaType: res.m.MediaType, Digest: res.m.Digest, Body: res.body}, !have || res.m.Digest != ti.Digest, nil
}

// copyTag is Tag for a sync_into: a moved or new tag's manifest is stored
// by digest only, and the tag set by the returned manifest's Commit.
func (s *SyncSource) copyTag(ctx context.Context, rc *request, tag string, ti cache.TagInfo, have bool) (SyncManifest, bool, error) {
	h, m := s.h, s.m
	ctx, cancel := context.WithTimeout(ctx, m.cfg.UpstreamTimeout)
	defer cancel()
	if have {
		res, same, err := h.unchangedTag(ctx, rc, tag, ti)
		if err != nil {
			return SyncManifest{}, false, err
		}
		if same {
			return SyncManifest{MediaType: res.m.MediaType, Digest: res.m.Digest, Body: res.body}, false, nil
		}
	}
	res, err := h.fetchManifest(ctx, rc, tag, cache.Digest{}, "")
	if err != nil {
		return SyncManifest{}, false, err
	}
	sm := SyncManifest{MediaType: res.m.MediaType, Digest: res.m.Digest, Body: res.body}
	sm.commit = func(ctx context.Context) error { return h.storeFetched(ctx, rc, res, tag) }
	return sm, true, nil
}

// Manifest brings repo@d, which the index parent lists, into the store,
// from upstream only when the store lacks it. fetched reports a GET.
//
// Under a signature policy, d passes when parent passed by a signature
// (parent.covers, set by Tag or Manifest of this source): the pass is
// carried through the sync of one tag in the values, not remembered for a
// while, so a sync that spends long on one platform's blobs does not find
// the next platform refused. Otherwise d must pass on its own.
func (s *SyncSource) Manifest(ctx context.Context, repo string, parent SyncManifest, d cache.Digest) (SyncManifest, bool, error) {
	rc, err := s.request(repo)
	if err != nil {
		return SyncManifest{}, false, err
	}
	h, m := s.h, s.m
	key := rc.name + "@" + d.String()
	h.pending.settle(ctx, key) // as in Tag
	if man, body, err := h.cfg.Store.GetManifest(ctx, rc.name, d); err == nil {
		covers, err := s.verify(ctx, rc, parent, mirroredManifest{m: man, body: body})
		if err != nil {
			return SyncManifest{}, false, err
		}
		return SyncManifest{MediaType: man.MediaType, Digest: man.Digest, Body: body, covers: covers}, false, nil
	}
	if h.signaturePolicy(rc.name) == nil {
		// Shared with pulls of the same digest: nothing to verify.
		v, err, _ := m.revalidations.Do(key, func() (any, error) {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.UpstreamTimeout)
			defer cancel()
			return h.fetchManifest(ctx, rc, d.String(), d, "")
		})
		if err != nil {
			return SyncManifest{}, false, err
		}
		res := v.(mirroredManifest)
		if err := h.awaitStored(ctx, rc, res, ""); err != nil {
			return SyncManifest{}, false, err
		}
		return SyncManifest{MediaType: res.m.MediaType, Digest: res.m.Digest, Body: res.body}, true, nil
	}
	type result struct {
		res    mirroredManifest
		covers *sigCoverage
	}
	// Never shared with a pull's fetch, which stores before a check (the
	// pull checks when it serves): what it returns was not verified.
	// Nor shared between a call that may pass on its parent's signature
	// and one that may not.
	syncKey := "sync " + key
	if parent.covers != nil {
		syncKey += " covered by " + parent.Digest.String()
	}
	v, err, _ := m.revalidations.Do(syncKey, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.UpstreamTimeout)
		defer cancel()
		res, err := h.getUpstreamManifest(ctx, rc, d.String(), d)
		if err != nil {
			return nil, err
		}
		covers, err := s.verify(ctx, rc, parent, res)
		if err != nil {
			return nil, err
		}
		return result{res: res, covers: covers}, h.storeFetched(ctx, rc, res, "")
	})
	if err != nil {
		return SyncManifest{}, false, err
	}
	r := v.(result)
	return SyncManifest{MediaType: r.res.m.MediaType, Digest: r.res.m.Digest, Body: r.res.body, covers: r.covers}, true, nil
}

// ErrSignaturePolicy is what sync meets when a signature policy
// (require_signature) covers where it stores and refuses a manifest:
// the manifest is not stored, and nothing it references is fetched.
var ErrSignaturePolicy = errors.New("refused by signature policy")

// verify checks res, a manifest of rc.name that parent lists (parent is
// zero for a tag's manifest), against the signature policy that covers
// the name, if any, looking for its signatures upstream too (they are
// stored, so that pulls of what sync stores pass). It returns what res
// covers in turn when it is an index that passed by a signature.
func (s *SyncSource) verify(ctx context.Context, rc *request, parent SyncManifest, res mirroredManifest) (*sigCoverage, error) {
	h := s.h
	p := h.signaturePolicy(rc.name)
	if p == nil {
		return nil, nil
	}
	if c := parent.covers; c != nil && c.policy == p && c.repo == rc.name && c.children[res.m.Digest] {
		// Listed by an index that passed by a signature in this sync: as
		// a pull of it right after the index would (verifyManifest), it
		// passes and vouches for its own blobs.
		now := h.sigNow()
		h.sigVerdicts.put(verdictKey(p, rc.name, res.m.Digest), true, true, now)
		var doc manifestDoc
		_ = json.Unmarshal(res.body, &doc)
		h.vouchDoc(p, rc.name, res.m.Digest, doc, now)
		return coverage(p, rc.name, res.body), nil
	}
	signed, err := h.verifyManifestSigned(ctx, p, rc.name, s.m, res.m, res.body, true)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %s: %v", ErrSignaturePolicy, p.Name(), res.m.Digest, err)
	}
	if !signed {
		return nil, nil // an unsigned index under per_platform covers nothing
	}
	return coverage(p, rc.name, res.body), nil
}

// verifiedTag is Tag under a signature policy: the manifest upstream
// names is verified before it is stored, and a refused one is not; a tag
// the store holds already (a pull stored it) is verified as it stands.
func (s *SyncSource) verifiedTag(ctx context.Context, rc *request, tag string, ti cache.TagInfo, have bool) (SyncManifest, bool, error) {
	h, m := s.h, s.m
	type result struct {
		res     mirroredManifest
		fetched bool
		covers  *sigCoverage
	}
	v, err, _ := m.revalidations.Do("sync "+rc.name+":"+tag, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.UpstreamTimeout)
		defer cancel()
		if have {
			resp, err := m.client.Do(ctx, http.MethodHead, m.upstreamName(rc.name), "manifests/"+tag, manifestAccept)
			if err != nil {
				return nil, err
			}
			resp.Body.Close()
			if resp.Header.Get("Docker-Content-Digest") == ti.Digest.String() {
				if man, body, err := h.cfg.Store.GetManifest(ctx, rc.name, ti.Digest); err == nil {
					res := mirroredManifest{m: man, body: body}
					covers, err := s.verify(ctx, rc, SyncManifest{}, res)
					if err != nil {
						return nil, err
					}
					if err := h.cfg.Store.SetTagFetched(ctx, rc.name, tag, m.now()); err != nil {
						return nil, err
					}
					return result{res: res, covers: covers}, nil
				}
			}
		}
		res, err := h.getUpstreamManifest(ctx, rc, tag, cache.Digest{})
		if err != nil {
			return nil, err
		}
		covers, err := s.verify(ctx, rc, SyncManifest{}, res)
		if err != nil {
			return nil, err
		}
		storeTag := tag
		if m.copy {
			storeTag = "" // set by Commit, as in copyTag
		}
		if err := h.storeFetched(ctx, rc, res, storeTag); err != nil {
			return nil, err
		}
		return result{res: res, fetched: true, covers: covers}, nil
	})
	if err != nil {
		return SyncManifest{}, false, err
	}
	r := v.(result)
	sm := SyncManifest{MediaType: r.res.m.MediaType, Digest: r.res.m.Digest, Body: r.res.body, covers: r.covers}
	if r.fetched && m.copy {
		sm.commit = func(ctx context.Context) error { return h.storeFetched(ctx, rc, r.res, tag) }
	}
	return sm, r.fetched, nil
}

// Blob brings blob d of repo into the store and links it there, as a
// pull's GET would: nothing when the repository links it already; a fill
// of its own when the store neither holds nor fills d; else, once
// upstream confirmed (HEAD) that repo holds d, the store's copy or the
// fill in progress for another repository, linked here. fetched reports
// that this call's fill fetched the bytes.
func (s *SyncSource) Blob(ctx context.Context, repo string, d cache.Digest) (fetched bool, err error) {
	rc, err := s.request(repo)
	if err != nil {
		return false, err
	}
	h, store := s.h, s.h.cfg.Store
	info, err := store.HasBlob(ctx, rc.name, d)
	if err == nil {
		// The record alone is not the bytes: a folder's file or an S3
		// object may be removed or cut short behind the store's back (a
		// stat, a HEAD).
		if err = h.checkBlobStored(ctx, rc.name, d, info.Size); err == nil {
			return false, nil
		} else if !lostBlob(err) {
			return false, err // the storage could not say
		}
	}
	lost := lostBlob(err)
	if lost {
		_ = h.blobLost(ctx, d, err)
	}
	defer store.Hold(d)()
	f, started, err := h.fill(ctx, rc, d, lost)
	if err != nil {
		return false, err
	}
	if started || lost {
		// A fill joined for a lost blob needs no confirmation: this
		// repository links d, so upstream said so before.
		return started, f.Wait(ctx)
	}
	if _, err := h.confirmBlob(ctx, rc, d); err != nil {
		return false, err
	}
	if err := f.Wait(ctx); err != nil {
		if ctx.Err() != nil {
			return false, err
		}
		// Another repository's fill failed (upstream may refuse it
		// there); upstream confirmed this one: fetch for it.
		if f, started, err = h.fill(ctx, rc, d, false); err != nil {
			return false, err
		}
		if err := f.Wait(ctx); err != nil {
			return false, err
		}
		if started {
			return true, nil
		}
	}
	if err := store.LinkBlob(context.WithoutCancel(ctx), rc.name, d); err != nil && !errors.Is(err, cache.ErrBlobUnknown) {
		return false, err
	} else if err != nil {
		return false, fmt.Errorf("blob %s gone before it was linked: %w", d, err)
	}
	return false, nil
}
