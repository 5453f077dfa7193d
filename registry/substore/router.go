// Package substore serves one registry from several stores: each
// namespace prefix (a storage sub-path) in a store of its own, with its
// own folder, garbage collection and limits, and everything else in the
// main store. Router is a registry.Store, so the handlers do not know.
//
// Methods that name a repository go to the store of its longest matching
// prefix. Those that take only a digest (StatBlob, OpenBlob, PutBlob,
// Filling, CheckSpace) go to the store of the request's repository, which
// the handler puts in the context (registry.WithRepository): a blob pushed
// whole for repo lands where repo's link to it is made next. Without a
// repository in the context, reads try every store (a digest names the
// same bytes in all of them) and PutBlob refuses, since it could not know
// where the link will be made. Hold, Touch and SetUploadLimits take no
// context and go to every store: holding or touching a digest a store
// lacks does nothing there.
//
// Upload sessions need no lookup table: every upload method names the
// repository, whose store holds the session. A mount from a repository in
// another store fails to link (the blob is not in the target's store), and
// the handler then carries on as a plain upload (202), as the spec lets a
// registry do.
package substore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/registry"
)

// Sub is a namespace prefix and the store that holds it.
type Sub struct {
	// Prefix is one or more whole name components ("team" holds "team"
	// and "team/app", not "teams/app").
	Prefix string
	Store  registry.Store
}

// Router dispatches to the store of each repository.
type Router struct {
	main registry.Store
	subs []Sub // longest prefix first
	all  []registry.Store
}

// ErrNoRepository is PutBlob's error when the context names no
// repository: the router would not know which store the blob belongs in.
var ErrNoRepository = errors.New("substore: no repository in the context to choose a store by")

// New returns a router over main and subs. Prefixes must be valid
// repository names, distinct, and none may lie under another.
func New(main registry.Store, subs []Sub) (*Router, error) {
	if err := CheckPrefixes(prefixesOf(subs)); err != nil {
		return nil, err
	}
	r := &Router{main: main, subs: slices.Clone(subs), all: []registry.Store{main}}
	slices.SortFunc(r.subs, func(a, b Sub) int { return cmp.Compare(len(b.Prefix), len(a.Prefix)) })
	for _, s := range subs {
		r.all = append(r.all, s.Store)
	}
	return r, nil
}

func prefixesOf(subs []Sub) []string {
	p := make([]string, len(subs))
	for i, s := range subs {
		p[i] = s.Prefix
	}
	return p
}

// CheckPrefixes refuses a prefix that is not a repository name, or that
// repeats or nests in another: nested sub-paths would make a
// repository's folder depend on which was written first.
func CheckPrefixes(prefixes []string) error {
	for i, p := range prefixes {
		if _, err := registry.ParseName(p); err != nil {
			return fmt.Errorf("prefix %q is not a repository name: %w", p, err)
		}
		for _, q := range prefixes[:i] {
			if Under(p, q) || Under(q, p) {
				return fmt.Errorf("prefix %q overlaps prefix %q: sub-paths must not nest", p, q)
			}
		}
	}
	return nil
}

// Under reports whether repo is prefix or lies under it, by whole
// components.
func Under(repo, prefix string) bool {
	return repo == prefix || strings.HasPrefix(repo, prefix+"/")
}

// For returns the store repo lives in.
func (r *Router) For(repo string) registry.Store {
	for _, s := range r.subs {
		if Under(repo, s.Prefix) {
			return s.Store
		}
	}
	return r.main
}

// ctxStore is the store of the request's repository, if ctx names one.
func (r *Router) ctxStore(ctx context.Context) (registry.Store, bool) {
	repo, ok := registry.RepositoryOf(ctx)
	if !ok {
		return nil, false
	}
	return r.For(repo), true
}

// HasBlob implements registry.BlobReader.
func (r *Router) HasBlob(ctx context.Context, repo string, d cache.Digest) (cache.BlobInfo, error) {
	return r.For(repo).HasBlob(ctx, repo, d)
}

// CheckBlobStored implements registry.StoredBlobChecker: repo's store
// answers if it checks; otherwise its HasBlob looked at the bytes already.
func (r *Router) CheckBlobStored(ctx context.Context, repo string, d cache.Digest, size int64) error {
	if c, ok := r.For(repo).(registry.StoredBlobChecker); ok {
		return c.CheckBlobStored(ctx, repo, d, size)
	}
	return nil
}

// StatBlob asks the request's store, or else each store until one has d.
func (r *Router) StatBlob(ctx context.Context, d cache.Digest) (cache.BlobInfo, error) {
	if s, ok := r.ctxStore(ctx); ok {
		return s.StatBlob(ctx, d)
	}
	var err error
	for _, s := range r.all {
		var info cache.BlobInfo
		if info, err = s.StatBlob(ctx, d); err == nil || !errors.Is(err, cache.ErrBlobUnknown) {
			return info, err
		}
	}
	return cache.BlobInfo{}, err
}

// OpenBlob opens d in the request's store, or else in the first store
// that has it.
func (r *Router) OpenBlob(ctx context.Context, d cache.Digest) (blobstore.Blob, error) {
	if s, ok := r.ctxStore(ctx); ok {
		return s.OpenBlob(ctx, d)
	}
	var err error
	for _, s := range r.all {
		var b blobstore.Blob
		if b, err = s.OpenBlob(ctx, d); err == nil || !errors.Is(err, cache.ErrBlobUnknown) {
			return b, err
		}
	}
	return nil, err
}

// LinkBlob implements registry.BlobLinks.
func (r *Router) LinkBlob(ctx context.Context, repo string, d cache.Digest) error {
	return r.For(repo).LinkBlob(ctx, repo, d)
}

// UnlinkBlob implements registry.BlobLinks.
func (r *Router) UnlinkBlob(ctx context.Context, repo string, d cache.Digest) error {
	return r.For(repo).UnlinkBlob(ctx, repo, d)
}

// ReposWithBlob lists the repositories of the request's store only: a
// mount, and a mirror's fallback to a readable copy, can use no other.
// Without a repository in ctx it merges every store's list.
func (r *Router) ReposWithBlob(ctx context.Context, d cache.Digest, limit int) ([]string, error) {
	if s, ok := r.ctxStore(ctx); ok {
		repos, err := s.ReposWithBlob(ctx, d, limit)
		return r.owned(s, repos), err
	}
	var all []string
	for _, s := range r.all {
		repos, err := s.ReposWithBlob(ctx, d, limit)
		if err != nil {
			return nil, err
		}
		all = append(all, r.owned(s, repos)...)
	}
	slices.Sort(all)
	if limit >= 0 && len(all) > limit {
		all = all[:limit]
	}
	return all, nil
}

// owned keeps the repositories that live in s: the main store may still
// hold repositories a sub-path has since hidden.
func (r *Router) owned(s registry.Store, repos []string) []string {
	return slices.DeleteFunc(repos, func(repo string) bool { return r.For(repo) != s })
}

// PutBlob stores d in the store of the request's repository, which the
// handler links next.
func (r *Router) PutBlob(ctx context.Context, d cache.Digest, size int64, body io.Reader) (int64, error) {
	s, ok := r.ctxStore(ctx)
	if !ok {
		return 0, ErrNoRepository
	}
	return s.PutBlob(ctx, d, size, body)
}

// OpenUpload implements registry.Uploads: the session lives in repo's
// store, where every later call for it (which names repo) goes.
func (r *Router) OpenUpload(ctx context.Context, repo, owner string) (cache.Upload, error) {
	return r.For(repo).OpenUpload(ctx, repo, owner)
}

// GetUpload implements registry.Uploads.
func (r *Router) GetUpload(ctx context.Context, repo, id string) (cache.Upload, error) {
	return r.For(repo).GetUpload(ctx, repo, id)
}

// AppendUpload implements registry.Uploads.
func (r *Router) AppendUpload(ctx context.Context, repo, id string, offset int64, body io.Reader) (cache.Upload, error) {
	return r.For(repo).AppendUpload(ctx, repo, id, offset, body)
}

// CommitUpload implements registry.Uploads.
func (r *Router) CommitUpload(ctx context.Context, repo, id string, d cache.Digest) (cache.BlobInfo, error) {
	return r.For(repo).CommitUpload(ctx, repo, id, d)
}

// CancelUpload implements registry.Uploads.
func (r *Router) CancelUpload(ctx context.Context, repo, id string) error {
	return r.For(repo).CancelUpload(ctx, repo, id)
}

// SetUploadLimits sets the limits of every store. Each counts its own
// sessions, so the limits apply per store.
func (r *Router) SetUploadLimits(l cache.UploadLimits) {
	for _, s := range r.all {
		s.SetUploadLimits(l)
	}
}

// CheckSpace asks the request's store, whose filesystem the write goes
// to; without a repository in ctx, it refuses when any store is full.
func (r *Router) CheckSpace(ctx context.Context, size int64) error {
	if s, ok := r.ctxStore(ctx); ok {
		return s.CheckSpace(ctx, size)
	}
	for _, s := range r.all {
		if err := s.CheckSpace(ctx, size); err != nil {
			return err
		}
	}
	return nil
}

// GetManifest implements registry.Manifests.
func (r *Router) GetManifest(ctx context.Context, repo string, d cache.Digest) (cache.Manifest, []byte, error) {
	return r.For(repo).GetManifest(ctx, repo, d)
}

// StatManifest implements registry.Manifests.
func (r *Router) StatManifest(ctx context.Context, repo string, d cache.Digest) (cache.Manifest, error) {
	return r.For(repo).StatManifest(ctx, repo, d)
}

// PutManifest implements registry.Manifests.
func (r *Router) PutManifest(ctx context.Context, repo string, m cache.Manifest, body []byte, tags []string) error {
	return r.For(repo).PutManifest(ctx, repo, m, body, tags)
}

// CreateManifest implements registry.Manifests.
func (r *Router) CreateManifest(ctx context.Context, repo string, m cache.Manifest, body []byte, tags []string) error {
	return r.For(repo).CreateManifest(ctx, repo, m, body, tags)
}

// DeleteManifest implements registry.Manifests.
func (r *Router) DeleteManifest(ctx context.Context, repo string, d cache.Digest) error {
	return r.For(repo).DeleteManifest(ctx, repo, d)
}

// Referrers implements registry.Manifests.
func (r *Router) Referrers(ctx context.Context, repo string, d cache.Digest, after string, n int) ([]cache.Manifest, bool, error) {
	return r.For(repo).Referrers(ctx, repo, d, after, n)
}

// ResolveTag implements registry.Tags.
func (r *Router) ResolveTag(ctx context.Context, repo, tag string) (cache.Digest, error) {
	return r.For(repo).ResolveTag(ctx, repo, tag)
}

// DeleteTag implements registry.Tags.
func (r *Router) DeleteTag(ctx context.Context, repo, tag string) error {
	return r.For(repo).DeleteTag(ctx, repo, tag)
}

// Tags implements registry.Tags.
func (r *Router) Tags(ctx context.Context, repo, last string, n int) ([]string, bool, error) {
	return r.For(repo).Tags(ctx, repo, last, n)
}

// TagInfo implements registry.TagFetchTimes.
func (r *Router) TagInfo(ctx context.Context, repo, tag string) (cache.TagInfo, error) {
	return r.For(repo).TagInfo(ctx, repo, tag)
}

// SetTagFetched implements registry.TagFetchTimes.
func (r *Router) SetTagFetched(ctx context.Context, repo, tag string, t time.Time) error {
	return r.For(repo).SetTagFetched(ctx, repo, tag, t)
}

// FillAdmitted implements registry.Fills: the fill runs in repo's store,
// which links the blob.
func (r *Router) FillAdmitted(ctx context.Context, repo string, d cache.Digest, src cache.FillSource, admit cache.FillAdmit) (cache.Fill, bool, error) {
	return r.For(repo).FillAdmitted(ctx, repo, d, src, admit)
}

// RefillAdmitted implements registry.Refills: repo's store refills when
// it can; one that cannot (the single node) finds a lost blob absent, so
// its FillAdmitted fetches it.
func (r *Router) RefillAdmitted(ctx context.Context, repo string, d cache.Digest, src cache.FillSource, admit cache.FillAdmit) (cache.Fill, bool, error) {
	s := r.For(repo)
	if rf, ok := s.(registry.Refills); ok {
		return rf.RefillAdmitted(ctx, repo, d, src, admit)
	}
	return s.FillAdmitted(ctx, repo, d, src, admit)
}

// Filling returns the fill of d in the request's store, or else the first
// in progress in any store.
func (r *Router) Filling(ctx context.Context, d cache.Digest) cache.Fill {
	if s, ok := r.ctxStore(ctx); ok {
		return s.Filling(ctx, d)
	}
	for _, s := range r.all {
		if f := s.Filling(ctx, d); f != nil {
			return f
		}
	}
	return nil
}

// Hold holds d in every store, which Hold has no context to choose from;
// a store that lacks d holds nothing of it.
func (r *Router) Hold(d cache.Digest) (release func()) {
	releases := make([]func(), len(r.all))
	for i, s := range r.all {
		releases[i] = s.Hold(d)
	}
	return func() {
		for _, rel := range releases {
			rel()
		}
	}
}

// Touch marks d used in every store (see Hold).
func (r *Router) Touch(d cache.Digest) {
	for _, s := range r.all {
		s.Touch(d)
	}
}

var (
	_ registry.Store   = (*Router)(nil)
	_ registry.Refills = (*Router)(nil)
)
