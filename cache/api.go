// Package cache is the registry's store: content-addressed blobs on disk
// (one file per digest) and metadata in badger (repositories, blob and
// manifest links, tags, referrers, upload sessions). It knows nothing of
// HTTP.
//
// THIS FILE IS THE CONTRACT between cache and its callers (registry,
// caddymodule): errors, options and the types callers see. The methods are
// implemented beside it — store.go (Open, Close), blobs.go, repos.go,
// uploads.go, gc.go, evict.go — with their documented behaviour; signatures are fixed
// unless changed on purpose by all callers.
//
// The registry reaches the store only through its own interfaces
// (registry.Store), which this store satisfies and other backends
// implement over the network. The methods it calls on a request's behalf
// take a context.Context first, which there bounds or cancels the call.
// This store works on local disk and badger: it stops a listing (Tags,
// Repositories, Referrers, ReposWithBlob) with ctx's error when ctx ends;
// any other call runs to its end, which is short, or bounded by the
// reader it was given (a request's body ends with its request). A fill
// runs on the store's own context, whatever the context of the call that
// started it. The types such methods return (Fill, FillReader,
// blobstore.Blob) are interfaces so that other backends can return their
// own.
package cache

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache/metastore"
)

// Errors returned by the store; callers map them to protocol errors with
// errors.Is.
var (
	ErrBlobUnknown     = errors.New("blob unknown")
	ErrManifestUnknown = errors.New("manifest unknown")
	ErrTagUnknown      = errors.New("tag unknown")
	ErrUploadUnknown   = errors.New("upload unknown")
	ErrRepoUnknown     = errors.New("repository unknown")
	// ErrDigestMismatch: the bytes written do not hash to the digest the
	// caller claimed. Nothing was stored.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrOffsetMismatch: a chunk was offered at an offset other than the
	// session's current size. Nothing was written.
	ErrOffsetMismatch = errors.New("offset mismatch")
	// ErrSizeMismatch: a committed upload's size differs from the size the
	// caller declared. Nothing was stored.
	ErrSizeMismatch = errors.New("size mismatch")
	// ErrTooManyUploads: opening a session would pass a limit on open
	// sessions (UploadLimits). Nothing was created.
	ErrTooManyUploads = errors.New("too many open uploads")
	// ErrUploadSpace: the bytes of open uploads reached
	// UploadLimits.TotalBytes. The chunk was dropped; the session is as it
	// was before it.
	ErrUploadSpace = errors.New("upload space exhausted")
	// ErrUploadShare (an ErrUploadSpace): the same for the open uploads of
	// one owner and UploadLimits.PerOwnerBytes.
	ErrUploadShare = fmt.Errorf("%w: the client's share is held", ErrUploadSpace)
	// ErrUploadTooLarge: a blob grew past UploadLimits.MaxBlobSize. Its
	// session, if any, is removed and its bytes freed.
	ErrUploadTooLarge = errors.New("blob too large")
	// ErrFillSpool: a mirror fill failed writing its local copy (its
	// temporary file could not be made or written: a disk read-only,
	// failing or full), not reading its source. The error wraps the
	// filesystem's too. Upstream is not to blame.
	ErrFillSpool = errors.New("writing the fill's local copy failed")
	// ErrNameInvalid: a repository name or tag the store cannot key (empty,
	// or holding a NUL byte). The registry checks the spec's grammar before
	// calling the store, so callers only see this on a bug; it is never a
	// server error.
	ErrNameInvalid = errors.New("invalid name")
	// ErrUnavailable: an engine the store depends on (a database, an
	// object store) cannot be reached or did not answer in time. Nothing
	// was changed, or the change is unknown; the request may be retried
	// (the registry answers 503). The single-node store never returns it.
	// It is the metadata seam's own, so an outage that reaches the
	// registry through any path (the auth layer's records included) is
	// recognised as one.
	ErrUnavailable = metastore.ErrUnavailable
	// ErrFillAbandoned (an ErrUnavailable): the fill this request waited
	// for was another replica's, and its lease ended with nothing
	// committed (that replica died, or its fill failed: upstream cut,
	// storage full). Why is not known here; a fill started afresh learns
	// its own outcome.
	ErrFillAbandoned = fmt.Errorf("%w: the replica filling it stopped before it committed", ErrUnavailable)
	// ErrTagMoved: CreateManifest found one of its tags pointing at
	// another manifest. Nothing was changed.
	ErrTagMoved = metastore.ErrTagMoved
	// ErrManifestRetyped: CreateManifest found the repository holding the
	// manifest under another media type. Nothing was changed.
	ErrManifestRetyped = metastore.ErrManifestRetyped
)

// Options configure a Store.
type Options struct {
	// Dir is the root folder; created if missing. Layout:
	//   blobs/<alg>/<2 hex>/<hex>   committed, verified content
	//   uploads/<id>                data of upload sessions
	//   tmp/                        temp files of in-flight writes
	//   quarantine/                 blob files a scrub found damaged
	//   meta/                       badger (unless MetadataDir is set)
	Dir string
	// MetadataDir, if set, is where badger keeps the metadata instead of
	// Dir/meta: another filesystem keeps badger's memory-mapped files out
	// of reach of blob bytes and of other programs filling Dir's.
	MetadataDir string
	// Reserve is the free space blob bytes (uploads, mirror fills,
	// manifests) leave on Dir's filesystem; writes that would cross it fail
	// with ErrStorageFull (space.go). The zero value reserves nothing;
	// DefaultReserve is what a server should use.
	Reserve SpaceReserve
	// SpaceObserver, if set, sees the free space whenever it is measured.
	SpaceObserver SpaceObserver
	// UploadTTL: an upload session older than this (since it was opened)
	// is expired and its data removed, however busy. Default 24h.
	// UploadLimits.IdleTimeout expires idle sessions sooner.
	UploadTTL time.Duration
	// GCGrace: a blob file younger than this is never collected, nor a
	// blob link made (or asked for) more recently, so the blobs of an
	// in-flight push whose manifest has not arrived yet survive. Default 1h.
	GCGrace time.Duration
	// GCInterval: how often the store collects unlinked blobs and expired
	// uploads on its own. Zero disables the background loop (GC can still
	// be run with Store.GC).
	GCInterval time.Duration
	// GCFullInterval: how often a GC pass examines the whole store rather
	// than only what changed since the last pass (the safety net for
	// anything the candidates missed). The first pass on a store that never
	// had a full one is full. Default 24h.
	GCFullInterval time.Duration
	// ScrubInterval: how often every blob file is read and hashed
	// again, counted from the end of the last complete pass; a file whose
	// bytes are no longer its digest's goes to quarantine/ (scrub.go).
	// Zero: no background scrub (Store.Scrub still runs one).
	ScrubInterval time.Duration
	// ScrubRate is a pass's pace in bytes per second; DefaultScrubRate
	// if zero.
	ScrubRate int64
	// ScrubObserver, if set, sees the scrub's progress.
	ScrubObserver ScrubObserver
	Logger        *zap.Logger
	// keepTablePages: no background release of the tables' pages
	// (tablepages.go), for the tests of that release itself, which
	// measure what is resident and must not race the loop.
	keepTablePages bool
}

// DatabaseDir is the folder of the store's database: MetadataDir, or
// meta/ inside Dir.
func (o Options) DatabaseDir() string {
	if o.MetadataDir != "" {
		return o.MetadataDir
	}
	return filepath.Join(o.Dir, "meta")
}

// BlobInfo describes a committed blob.
type BlobInfo struct {
	Digest  Digest
	Size    int64
	ModTime time.Time
}

// Manifest is a manifest as a repository holds it. Bytes are the exact
// bytes pushed (or fetched); Digest is computed over them.
type Manifest struct {
	Digest    Digest
	MediaType string
	Size      int64
	// Subject is the digest in the manifest's `subject` field, if any.
	Subject Digest
	// ArtifactType is what the referrers API reports: the manifest's
	// artifactType, else (image manifests) its config media type.
	ArtifactType string
	// Annotations as found in the manifest (for the referrers API).
	Annotations map[string]string
	// Linked are blobs the caller found linked in the repository before
	// the put (a push's config and layers). PutManifest and
	// CreateManifest fail with ErrBlobUnknown, changing nothing, if one
	// of them is no longer linked when they commit (GC dropped the link
	// in between). Not stored.
	Linked []Digest
}

// Upload is the state of a resumable upload session. Sessions are kept in
// badger and their data in uploads/<id>, so they survive a restart.
type Upload struct {
	ID   string
	Repo string
	// Owner is who opened the session (a user or a client address, as
	// the caller names it), for UploadLimits.PerOwner; may be empty.
	Owner   string
	Size    int64 // bytes received and durably accounted for so far
	Started time.Time
	Updated time.Time
}

// UploadLimits bound what clients may hold in uploads (uploadlimits.go).
// Zero fields are no limit. They are counted from badger at Open and kept
// beside every change, so they hold under concurrency and after a restart.
type UploadLimits struct {
	// PerOwner: open sessions of one owner (sessions without an owner are
	// not counted).
	PerOwner int
	// PerRepo: open sessions of one repository.
	PerRepo int
	// MaxBlobSize: bytes of one blob, in a session or a PutBlob. Checked
	// as the bytes arrive.
	MaxBlobSize int64
	// TotalBytes: bytes held by all open sessions together, plus those of
	// chunks and PutBlobs being written.
	TotalBytes int64
	// PerOwnerBytes: bytes held by the open sessions of one owner, plus
	// those of its chunks being written, so that one client cannot take
	// all of TotalBytes (sessions without an owner are not counted).
	PerOwnerBytes int64
	// IdleTimeout: a session without a new chunk for this long expires,
	// before UploadTTL.
	IdleTimeout time.Duration
}

// UploadUsage is what open uploads hold right now.
type UploadUsage struct {
	Sessions int
	Bytes    int64 // recorded bytes of sessions plus writes in flight
}

// GCStats reports what one collection did.
type GCStats struct {
	// LinksRemoved: blob links dropped because no manifest of their
	// repository references them any more.
	LinksRemoved   int
	BlobsRemoved   int
	BytesRemoved   int64
	UploadsExpired int

	// Full: the pass examined every repository and blob file, not only
	// the candidates marked since the last pass.
	Full bool
	// ReposExamined: repositories whose links and manifests were read.
	// BlobsExamined: blobs whose links were looked up.
	ReposExamined int
	BlobsExamined int
}

// removedAny reports whether the pass removed anything.
func (st GCStats) removedAny() bool {
	return st.LinksRemoved+st.BlobsRemoved+st.UploadsExpired > 0
}

// MirrorCache bounds the bytes of mirrored content (evict.go). Content is
// mirrored when every repository that links it (as blob or manifest) is a
// mirror's; anything a local repository links is pushed content and is
// never evicted, nor is a blob held (Store.Hold, an open FillReader) or
// being filled.
type MirrorCache struct {
	// Mirrored reports whether a repository belongs to a mirror. Nil:
	// nothing is mirrored, nothing is counted or evicted.
	Mirrored func(repo string) bool
	// MaxBytes is the limit; above it the least recently used mirrored
	// content is evicted until 90% of it is left. Zero: unlimited (the
	// size is still counted for the observer).
	MaxBytes int64
	// Observer, if set, sees the size and the evictions.
	Observer MirrorCacheObserver
}

// MirrorCacheObserver gets the size of mirrored content whenever it
// changes and what each eviction pass removed. Calls come from any
// goroutine, some from inside a commit: they must be quick and must not
// call the store.
type MirrorCacheObserver interface {
	MirrorCacheSize(bytes int64)
	MirrorEvicted(items int, bytes int64)
}

// EvictStats reports one eviction pass.
type EvictStats struct {
	Size         int64 // mirrored bytes after the pass
	ItemsEvicted int   // blobs and manifests removed
	BytesEvicted int64
}
