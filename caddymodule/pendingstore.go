package caddymodule

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/registry"
)

// pendingStore stands for a store of a storage sub-path (or the main
// one beside sub-paths) that could not open when the handler was built:
// its filesystem was full or read-only at start. Only the repositories
// it holds wait for it. Each call tries to open it again (an open
// refused for room is a statfs, no database), so the first request after
// space is freed, or the filesystem is writable again, opens it, without
// a restart. Until then reads answer 503 UNAVAILABLE with Retry-After
// and writes the open's error (507 STORAGE_FULL when full, 503 when
// read-only), as the whole registry does when its only store is in that
// state.
type pendingStore struct {
	shared *sharedStore
	name   string // for errors: "sub_storage team" or "the main storage"
	// opened runs once, with the store, when it opens: it does what
	// building the handler does for a store open from the start.
	opened func(*cache.Store)

	st     atomic.Pointer[cache.Store] // once open
	mu     sync.Mutex                  // serialises opening, and limits
	limits *cache.UploadLimits         // SetUploadLimits' before the open
}

// store returns the open store, opening it if it can. A write gets the
// open's error; a read gets cache.ErrUnavailable (503 with Retry-After)
// with the reason, since no pull is refused for a lack of room.
func (p *pendingStore) store(write bool) (*cache.Store, error) {
	if st := p.st.Load(); st != nil {
		return st, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if st := p.st.Load(); st != nil {
		return st, nil
	}
	st, err := p.shared.open()
	if err != nil {
		if write {
			return nil, fmt.Errorf("%s: %w", p.name, err)
		}
		return nil, fmt.Errorf("%w: %s cannot be read until it opens: %v", cache.ErrUnavailable, p.name, err)
	}
	if p.limits != nil {
		st.SetUploadLimits(*p.limits)
	}
	if p.opened != nil {
		p.opened(st)
	}
	p.st.Store(st)
	return st, nil
}

func (p *pendingStore) read() (*cache.Store, error)  { return p.store(false) }
func (p *pendingStore) write() (*cache.Store, error) { return p.store(true) }

// HasBlob implements registry.BlobReader.
func (p *pendingStore) HasBlob(ctx context.Context, repo string, d cache.Digest) (cache.BlobInfo, error) {
	st, err := p.read()
	if err != nil {
		return cache.BlobInfo{}, err
	}
	return st.HasBlob(ctx, repo, d)
}

// StatBlob implements registry.BlobReader.
func (p *pendingStore) StatBlob(ctx context.Context, d cache.Digest) (cache.BlobInfo, error) {
	st, err := p.read()
	if err != nil {
		return cache.BlobInfo{}, err
	}
	return st.StatBlob(ctx, d)
}

// OpenBlob implements registry.BlobReader.
func (p *pendingStore) OpenBlob(ctx context.Context, d cache.Digest) (blobstore.Blob, error) {
	st, err := p.read()
	if err != nil {
		return nil, err
	}
	return st.OpenBlob(ctx, d)
}

// LinkBlob implements registry.BlobLinks.
func (p *pendingStore) LinkBlob(ctx context.Context, repo string, d cache.Digest) error {
	st, err := p.write()
	if err != nil {
		return err
	}
	return st.LinkBlob(ctx, repo, d)
}

// UnlinkBlob implements registry.BlobLinks.
func (p *pendingStore) UnlinkBlob(ctx context.Context, repo string, d cache.Digest) error {
	st, err := p.write()
	if err != nil {
		return err
	}
	return st.UnlinkBlob(ctx, repo, d)
}

// ReposWithBlob implements registry.BlobLinks.
func (p *pendingStore) ReposWithBlob(ctx context.Context, d cache.Digest, limit int) ([]string, error) {
	st, err := p.read()
	if err != nil {
		return nil, err
	}
	return st.ReposWithBlob(ctx, d, limit)
}

// PutBlob implements registry.Uploads.
func (p *pendingStore) PutBlob(ctx context.Context, d cache.Digest, size int64, r io.Reader) (int64, error) {
	st, err := p.write()
	if err != nil {
		return 0, err
	}
	return st.PutBlob(ctx, d, size, r)
}

// OpenUpload implements registry.Uploads.
func (p *pendingStore) OpenUpload(ctx context.Context, repo, owner string) (cache.Upload, error) {
	st, err := p.write()
	if err != nil {
		return cache.Upload{}, err
	}
	return st.OpenUpload(ctx, repo, owner)
}

// GetUpload implements registry.Uploads.
func (p *pendingStore) GetUpload(ctx context.Context, repo, id string) (cache.Upload, error) {
	st, err := p.read()
	if err != nil {
		return cache.Upload{}, err
	}
	return st.GetUpload(ctx, repo, id)
}

// AppendUpload implements registry.Uploads.
func (p *pendingStore) AppendUpload(ctx context.Context, repo, id string, offset int64, r io.Reader) (cache.Upload, error) {
	st, err := p.write()
	if err != nil {
		return cache.Upload{}, err
	}
	return st.AppendUpload(ctx, repo, id, offset, r)
}

// CommitUpload implements registry.Uploads.
func (p *pendingStore) CommitUpload(ctx context.Context, repo, id string, d cache.Digest) (cache.BlobInfo, error) {
	st, err := p.write()
	if err != nil {
		return cache.BlobInfo{}, err
	}
	return st.CommitUpload(ctx, repo, id, d)
}

// CancelUpload implements registry.Uploads.
func (p *pendingStore) CancelUpload(ctx context.Context, repo, id string) error {
	st, err := p.write()
	if err != nil {
		return err
	}
	return st.CancelUpload(ctx, repo, id)
}

// SetUploadLimits implements registry.Uploads: kept for the open when
// the store is not open yet.
func (p *pendingStore) SetUploadLimits(l cache.UploadLimits) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if st := p.st.Load(); st != nil {
		st.SetUploadLimits(l)
		return
	}
	p.limits = &l
}

// CheckSpace implements registry.SpaceChecker.
func (p *pendingStore) CheckSpace(ctx context.Context, size int64) error {
	st, err := p.write()
	if err != nil {
		return err
	}
	return st.CheckSpace(ctx, size)
}

// GetManifest implements registry.Manifests.
func (p *pendingStore) GetManifest(ctx context.Context, repo string, d cache.Digest) (cache.Manifest, []byte, error) {
	st, err := p.read()
	if err != nil {
		return cache.Manifest{}, nil, err
	}
	return st.GetManifest(ctx, repo, d)
}

// StatManifest implements registry.Manifests.
func (p *pendingStore) StatManifest(ctx context.Context, repo string, d cache.Digest) (cache.Manifest, error) {
	st, err := p.read()
	if err != nil {
		return cache.Manifest{}, err
	}
	return st.StatManifest(ctx, repo, d)
}

// PutManifest implements registry.Manifests.
func (p *pendingStore) PutManifest(ctx context.Context, repo string, m cache.Manifest, body []byte, tags []string) error {
	st, err := p.write()
	if err != nil {
		return err
	}
	return st.PutManifest(ctx, repo, m, body, tags)
}

// CreateManifest implements registry.Manifests.
func (p *pendingStore) CreateManifest(ctx context.Context, repo string, m cache.Manifest, body []byte, tags []string) error {
	st, err := p.write()
	if err != nil {
		return err
	}
	return st.CreateManifest(ctx, repo, m, body, tags)
}

// DeleteManifest implements registry.Manifests.
func (p *pendingStore) DeleteManifest(ctx context.Context, repo string, d cache.Digest) error {
	st, err := p.write()
	if err != nil {
		return err
	}
	return st.DeleteManifest(ctx, repo, d)
}

// Referrers implements registry.Manifests.
func (p *pendingStore) Referrers(ctx context.Context, repo string, d cache.Digest, after string, n int) ([]cache.Manifest, bool, error) {
	st, err := p.read()
	if err != nil {
		return nil, false, err
	}
	return st.Referrers(ctx, repo, d, after, n)
}

// ResolveTag implements registry.Tags.
func (p *pendingStore) ResolveTag(ctx context.Context, repo, tag string) (cache.Digest, error) {
	st, err := p.read()
	if err != nil {
		return cache.Digest{}, err
	}
	return st.ResolveTag(ctx, repo, tag)
}

// DeleteTag implements registry.Tags.
func (p *pendingStore) DeleteTag(ctx context.Context, repo, tag string) error {
	st, err := p.write()
	if err != nil {
		return err
	}
	return st.DeleteTag(ctx, repo, tag)
}

// Tags implements registry.Tags.
func (p *pendingStore) Tags(ctx context.Context, repo, last string, n int) ([]string, bool, error) {
	st, err := p.read()
	if err != nil {
		return nil, false, err
	}
	return st.Tags(ctx, repo, last, n)
}

// Repositories implements registry.Tags.
func (p *pendingStore) Repositories(ctx context.Context, last string, n int) ([]string, bool, error) {
	st, err := p.read()
	if err != nil {
		return nil, false, err
	}
	return st.Repositories(ctx, last, n)
}

// TagInfo implements registry.TagFetchTimes.
func (p *pendingStore) TagInfo(ctx context.Context, repo, tag string) (cache.TagInfo, error) {
	st, err := p.read()
	if err != nil {
		return cache.TagInfo{}, err
	}
	return st.TagInfo(ctx, repo, tag)
}

// SetTagFetched implements registry.TagFetchTimes.
func (p *pendingStore) SetTagFetched(ctx context.Context, repo, tag string, t time.Time) error {
	st, err := p.write()
	if err != nil {
		return err
	}
	return st.SetTagFetched(ctx, repo, tag, t)
}

// PutFetchedManifest implements registry.TagFetchTimes.
func (p *pendingStore) PutFetchedManifest(ctx context.Context, repo string, m cache.Manifest, body []byte, tag string, fetched time.Time) error {
	st, err := p.write()
	if err != nil {
		return err
	}
	return st.PutFetchedManifest(ctx, repo, m, body, tag, fetched)
}

// FillAdmitted implements registry.Fills.
func (p *pendingStore) FillAdmitted(ctx context.Context, repo string, d cache.Digest, src cache.FillSource, admit cache.FillAdmit) (cache.Fill, bool, error) {
	st, err := p.write()
	if err != nil {
		return nil, false, err
	}
	return st.FillAdmitted(ctx, repo, d, src, admit)
}

// Filling implements registry.Fills: no fill runs in a store not open.
func (p *pendingStore) Filling(ctx context.Context, d cache.Digest) cache.Fill {
	st := p.open()
	if st == nil {
		return nil
	}
	return st.Filling(ctx, d)
}

// Hold implements registry.CacheUse: a store not open evicts nothing.
func (p *pendingStore) Hold(d cache.Digest) (release func()) {
	st := p.open()
	if st == nil {
		return func() {}
	}
	return st.Hold(d)
}

// Touch implements registry.CacheUse.
func (p *pendingStore) Touch(d cache.Digest) {
	if st := p.open(); st != nil {
		st.Touch(d)
	}
}

// open is the store if it has opened, else nil (without trying).
func (p *pendingStore) open() *cache.Store { return p.st.Load() }

var _ registry.Store = (*pendingStore)(nil)
