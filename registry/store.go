package registry

// The store as the registry sees it. Each interface is sized to the
// handlers that use it; Store is their sum, which Config takes. The
// registry never learns which backend it has: *cache.Store (a folder and
// badger) is one, a store on object storage and PostgreSQL another.
//
// The vocabulary is cache's: digests, BlobInfo, Manifest, Upload, Fill,
// and the errors handlers match with errors.Is (cache.ErrBlobUnknown,
// ErrManifestUnknown, ErrTagUnknown, ErrRepoUnknown, ErrUploadUnknown,
// ErrDigestMismatch, ErrSizeMismatch, ErrOffsetMismatch, the upload
// limits' errors, cache.IsStorageFull, ErrNameInvalid). A backend wraps
// its own failures in those where they mean the same; anything else is a
// 500. Methods that may wait on the network take the request's context
// (or the detached one of work that outlives its client) first.

import (
	"context"
	"io"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore"
)

// BlobReader finds and opens blobs.
type BlobReader interface {
	// HasBlob reports whether repo links blob d and the blob exists
	// (cache.ErrBlobUnknown otherwise). Asking renews an old link: a
	// client asks right before it pushes a manifest that references it.
	HasBlob(ctx context.Context, repo string, d cache.Digest) (cache.BlobInfo, error)
	// StatBlob reports whether blob d exists, whichever repository links
	// it (cache.ErrBlobUnknown otherwise).
	StatBlob(ctx context.Context, d cache.Digest) (cache.BlobInfo, error)
	// OpenBlob opens blob d to serve it with http.ServeContent
	// (cache.ErrBlobUnknown when it is gone). A backend on local files
	// returns a Blob that keeps the *os.File reachable (see
	// cache.Store.OpenBlob), so that serving it ends in sendfile.
	OpenBlob(ctx context.Context, d cache.Digest) (blobstore.Blob, error)
}

// BlobRedirector is optional: a store whose blobs clients can fetch from
// the storage itself (S3 presigned URLs) has it, and the registry then
// answers a blob GET it has authorised with a 307 there instead of
// streaming the bytes.
type BlobRedirector interface {
	// BlobURL returns a short-lived URL that serves blob d (and ranges of
	// it) without credentials; ok is false when this store streams
	// instead. The URL is a credential for d: it is asked for only after
	// the request was authorised and d found linked. size is the blob's
	// recorded length: bytes the storage lost or holds at another length
	// are an error wrapping blobstore.ErrNotFound or ErrSizeMismatch.
	BlobURL(ctx context.Context, d cache.Digest, size int64) (url string, ok bool, err error)
}

// BlobLinks are the links that make a stored blob a repository's.
type BlobLinks interface {
	// LinkBlob records that repo holds blob d, which must exist
	// (cache.ErrBlobUnknown otherwise).
	LinkBlob(ctx context.Context, repo string, d cache.Digest) error
	// UnlinkBlob removes repo's link to d (cache.ErrBlobUnknown when there
	// is none); the bytes stay for other repositories until GC.
	UnlinkBlob(ctx context.Context, repo string, d cache.Digest) error
	// ReposWithBlob lists up to limit repositories that link d, in
	// lexical order: the candidates of a mount without `from`.
	ReposWithBlob(ctx context.Context, d cache.Digest, limit int) ([]string, error)
}

// Uploads take blob pushes: whole in one request, or a session of chunks
// that any request (and, in a shared store, any replica) continues.
type Uploads interface {
	// PutBlob stores the bytes of r as blob d if they hash to d and,
	// when size >= 0, are size bytes long; it returns the size. Nothing
	// becomes visible unverified. It links no repository; the one the
	// caller links next is in ctx (RepositoryOf), for a store made of
	// several that must put the bytes where that repository lives.
	PutBlob(ctx context.Context, d cache.Digest, size int64, r io.Reader) (int64, error)
	// OpenUpload starts a session for repo, counted against the limits
	// of owner (empty: none).
	OpenUpload(ctx context.Context, repo, owner string) (cache.Upload, error)
	// GetUpload returns repo's session id (cache.ErrUploadUnknown when
	// there is none).
	GetUpload(ctx context.Context, repo, id string) (cache.Upload, error)
	// AppendUpload appends the bytes of r at offset, which must be the
	// session's size (cache.ErrOffsetMismatch otherwise).
	AppendUpload(ctx context.Context, repo, id string, offset int64, r io.Reader) (cache.Upload, error)
	// CommitUpload makes the session's bytes blob d, linked into repo, if
	// they hash to d, and ends the session; a mismatch
	// (cache.ErrDigestMismatch) leaves the session to a retry or a cancel.
	CommitUpload(ctx context.Context, repo, id string, d cache.Digest) (cache.BlobInfo, error)
	// CancelUpload ends the session and frees its bytes.
	CancelUpload(ctx context.Context, repo, id string) error
	// SetUploadLimits sets the bounds of sessions (NewHandler passes
	// Config.Uploads).
	SetUploadLimits(l cache.UploadLimits)
}

// SpaceChecker refuses early a write the storage has no room for.
type SpaceChecker interface {
	// CheckSpace returns an error for which cache.IsStorageFull holds
	// when size bytes (-1: unknown) would not fit. It answers from what
	// the store knows already; ctx only carries the request's repository
	// (RepositoryOf) to a store made of several.
	CheckSpace(ctx context.Context, size int64) error
}

// Manifests are the manifests repositories hold, byte for byte, and the
// referrers index over their subjects.
type Manifests interface {
	// GetManifest returns the manifest repo links under d and its bytes
	// (cache.ErrManifestUnknown when it does not).
	GetManifest(ctx context.Context, repo string, d cache.Digest) (cache.Manifest, []byte, error)
	// StatManifest is GetManifest without the bytes.
	StatManifest(ctx context.Context, repo string, d cache.Digest) (cache.Manifest, error)
	// PutManifest stores body as m in repo and points tags at it, all at
	// once.
	PutManifest(ctx context.Context, repo string, m cache.Manifest, body []byte, tags []string) error
	// CreateManifest is PutManifest for a push that may only create: it
	// applies only if each of tags is absent or points at m.Digest and
	// repo does not hold m.Digest under another media type, checked and
	// written as one step for every replica of the store; otherwise
	// nothing changes and it returns cache.ErrTagMoved or
	// cache.ErrManifestRetyped.
	CreateManifest(ctx context.Context, repo string, m cache.Manifest, body []byte, tags []string) error
	// DeleteManifest removes d from repo with its tags and referrer entry.
	DeleteManifest(ctx context.Context, repo string, d cache.Digest) error
	// Referrers lists the manifests in repo whose subject is d, by
	// digest: those after the digest `after` ("": from the first), at most
	// n (n < 0: all), and whether more remain. Each may carry megabytes of
	// annotations: page through a long list.
	Referrers(ctx context.Context, repo string, d cache.Digest, after string, n int) ([]cache.Manifest, bool, error)
}

// Tags name manifests, and the catalog lists the repositories.
type Tags interface {
	// ResolveTag returns the digest tag points at in repo
	// (cache.ErrTagUnknown, cache.ErrRepoUnknown).
	ResolveTag(ctx context.Context, repo, tag string) (cache.Digest, error)
	// DeleteTag removes the tag, not the manifest.
	DeleteTag(ctx context.Context, repo, tag string) error
	// Tags lists repo's tags in lexical order after last, at most n (n <
	// 0: all), and whether more remain.
	Tags(ctx context.Context, repo, last string, n int) ([]string, bool, error)
	// Repositories lists repositories with the same paging as Tags.
	Repositories(ctx context.Context, last string, n int) ([]string, bool, error)
}

// TagFetchTimes are when a mirror last confirmed its tags upstream.
type TagFetchTimes interface {
	// TagInfo returns where tag points and when it was last confirmed
	// (zero: never; cache.ErrTagUnknown when there is no such tag).
	TagInfo(ctx context.Context, repo, tag string) (cache.TagInfo, error)
	// SetTagFetched records that tag was confirmed at t; the tag must
	// exist (cache.ErrTagUnknown).
	SetTagFetched(ctx context.Context, repo, tag string, t time.Time) error
}

// fetchedManifestPutter is a store that keeps a manifest a mirror fetched
// for a tag and the tag's fetch time in one write (cache.Store: one sync
// of its metadata on a cold pull instead of two). Others get PutManifest
// and SetTagFetched.
type fetchedManifestPutter interface {
	PutFetchedManifest(ctx context.Context, repo string, m cache.Manifest, body []byte, tag string, fetched time.Time) error
}

// Fills bring a mirror's blobs in once, however many requests ask.
type Fills interface {
	// FillAdmitted returns the fill of d in progress, or one of the
	// committed blob, or else starts one from src for repo if admit
	// (asked only then) lets it; started reports the last. The fill runs
	// on the store's time, not ctx's: it outlives the request.
	FillAdmitted(ctx context.Context, repo string, d cache.Digest, src cache.FillSource, admit cache.FillAdmit) (f cache.Fill, started bool, err error)
	// Filling returns the fill of d in progress, or nil.
	Filling(ctx context.Context, d cache.Digest) cache.Fill
}

// Refills is optional: a store whose metadata records a blob apart from
// its bytes (composite: a record in the database, an object in a bucket
// or a folder) has it, for a mirror to fetch again a blob whose bytes
// were lost or damaged behind the registry's back. A store without it
// (the single node: the file is the record) starts that fill with
// FillAdmitted, since it finds the blob absent.
type Refills interface {
	// RefillAdmitted is FillAdmitted for a blob d that the store records
	// and whose bytes its storage lost or holds with another length: it
	// starts a fill although d is recorded (unless the bytes are back),
	// and keeps d's record and links.
	RefillAdmitted(ctx context.Context, repo string, d cache.Digest, src cache.FillSource, admit cache.FillAdmit) (f cache.Fill, started bool, err error)
}

// StoredBlobChecker is optional: a store whose HasBlob answers from its
// metadata alone (composite) has it, for a manifest push to refuse a
// blob whose record outlived its bytes (removed or cut short behind the
// registry's back). Without the check the push succeeds and the image
// can never be pulled; with it the client is told MANIFEST_BLOB_UNKNOWN,
// HEADs the blob (404: the read finds it lost), pushes it again and then
// the manifest. A store whose HasBlob looks at the bytes already (the
// single node's stat) needs none. A manifest's blobs are checked
// concurrently (checkBlobs), so it must be safe for concurrent use.
type StoredBlobChecker interface {
	// CheckBlobStored reports whether blob d, which HasBlob found linked
	// in repo with size bytes, is still stored: nil, or an error wrapping
	// cache.ErrBlobUnknown and blobstore.ErrNotFound or ErrSizeMismatch.
	// It asks the storage itself (a stat of a file, a HEAD of an S3
	// object), never a local copy of it; a storage that cannot answer is
	// an error of neither kind (cache.ErrUnavailable: 503).
	CheckBlobStored(ctx context.Context, repo string, d cache.Digest, size int64) error
}

// CacheUse is what a size-limited mirror cache learns of reads, to evict
// the least recently used content and never what is being read.
type CacheUse interface {
	// Hold keeps blob d from eviction until release is called.
	Hold(d cache.Digest) (release func())
	// Touch marks d used now (a manifest, read whole at once).
	Touch(d cache.Digest)
}

// Store is everything the registry asks of its store.
type Store interface {
	BlobReader
	BlobLinks
	Uploads
	SpaceChecker
	Manifests
	Tags
	TagFetchTimes
	Fills
	CacheUse
}

// repoKey is the context key of the request's repository.
type repoKey struct{}

// WithRepository returns ctx carrying repo, the repository a request is
// about. The handler sets it on every request that names one, so that a
// store made of several (one per namespace prefix) can route the methods
// that take only a digest (StatBlob, OpenBlob, PutBlob, Filling,
// CheckSpace) to the store that repository lives in: a blob pushed whole
// for repo must land where repo's link to it is then made.
func WithRepository(ctx context.Context, repo string) context.Context {
	return context.WithValue(ctx, repoKey{}, repo)
}

// RepositoryOf returns the repository WithRepository put in ctx, if any.
func RepositoryOf(ctx context.Context) (string, bool) {
	repo, ok := ctx.Value(repoKey{}).(string)
	return repo, ok
}
