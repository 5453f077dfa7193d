// Package cache is the registry's store: content-addressed blobs on disk
// (one file per digest) and metadata in badger (repositories, blob and
// manifest links, tags, referrers, upload sessions). It knows nothing of
// HTTP.
//
// THIS FILE IS THE CONTRACT between cache and its callers (registry,
// caddymodule). Bodies that panic are to be implemented; signatures and
// documented behaviour are fixed unless changed on purpose by all callers.
package cache

import (
	"errors"
	"io"
	"os"
	"time"

	"go.uber.org/zap"
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
)

// Options configure a Store.
type Options struct {
	// Dir is the root folder; created if missing. Layout:
	//   blobs/<alg>/<2 hex>/<hex>   committed, verified content
	//   uploads/<id>                data of upload sessions
	//   tmp/                        temp files of in-flight writes
	//   meta/                       badger
	Dir string
	// UploadTTL: an upload session untouched for longer is expired and its
	// data removed. Default 24h.
	UploadTTL time.Duration
	// GCGrace: a blob file younger than this is never collected, so a blob
	// committed by an in-flight push whose manifest has not arrived yet
	// survives. Default 1h.
	GCGrace time.Duration
	// GCInterval: how often the store collects unlinked blobs and expired
	// uploads on its own. Zero disables the background loop (GC can still
	// be run with Store.GC).
	GCInterval time.Duration
	Logger     *zap.Logger
}

// Store is safe for concurrent use. Open it once per directory per process.
type Store struct {
	// unexported fields
}

// Open opens (creating if needed) the store in opts.Dir.
func Open(opts Options) (*Store, error) { panic("not implemented") }

// Close stops background work and closes badger.
func (s *Store) Close() error { panic("not implemented") }

// ---- blobs: the content-addressed layer, shared by all repositories ----

// BlobInfo describes a committed blob.
type BlobInfo struct {
	Digest  Digest
	Size    int64
	ModTime time.Time
}

// StatBlob reports whether the blob exists in the content store, regardless
// of which repositories link it. ErrBlobUnknown when absent.
func (s *Store) StatBlob(d Digest) (BlobInfo, error) { panic("not implemented") }

// OpenBlob opens a committed blob for reading (an *os.File so callers can
// use http.ServeContent / sendfile). ErrBlobUnknown when absent.
func (s *Store) OpenBlob(d Digest) (*os.File, error) { panic("not implemented") }

// PutBlob writes r to the content store if its bytes hash to want (and, if
// size >= 0, are exactly size bytes long): temp file, hash while writing,
// verify, fsync, rename. The blob becomes visible only complete and
// verified; on any error nothing is visible. If the blob already exists the
// bytes are still read and verified, then discarded. Returns the size.
// It does not link the blob to any repository.
func (s *Store) PutBlob(want Digest, size int64, r io.Reader) (int64, error) { panic("not implemented") }

// ---- repositories: links, tags, manifests, referrers ----

// LinkBlob records that repo holds blob d (which must exist in the content
// store: ErrBlobUnknown otherwise). Creates the repository if new.
func (s *Store) LinkBlob(repo string, d Digest) error { panic("not implemented") }

// HasBlob reports whether repo links blob d and the blob exists.
// ErrBlobUnknown otherwise.
func (s *Store) HasBlob(repo string, d Digest) (BlobInfo, error) { panic("not implemented") }

// UnlinkBlob removes repo's link to d; the content stays for other
// repositories until GC. ErrBlobUnknown when repo did not link it.
func (s *Store) UnlinkBlob(repo string, d Digest) error { panic("not implemented") }

// ReposWithBlob lists repositories that link d (for a mount without
// `from`), in lexical order, at most limit of them (limit <= 0: all).
func (s *Store) ReposWithBlob(d Digest, limit int) ([]string, error) { panic("not implemented") }

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
}

// PutManifest stores body (as a blob in the content store, byte for byte)
// and links it to repo with the metadata in m (m.Digest must be the digest
// of body; ErrDigestMismatch otherwise). If m.Subject is set a referrer
// entry is added under the subject. Then points each of tags at it. All
// metadata changes commit in one badger transaction.
func (s *Store) PutManifest(repo string, m Manifest, body []byte, tags []string) error {
	panic("not implemented")
}

// GetManifest returns the manifest repo links under digest d, with its
// bytes. ErrManifestUnknown when repo does not link it.
func (s *Store) GetManifest(repo string, d Digest) (Manifest, []byte, error) { panic("not implemented") }

// StatManifest is GetManifest without the bytes.
func (s *Store) StatManifest(repo string, d Digest) (Manifest, error) { panic("not implemented") }

// ResolveTag returns the digest tag points at in repo. ErrTagUnknown when
// the tag does not exist.
func (s *Store) ResolveTag(repo, tag string) (Digest, error) { panic("not implemented") }

// DeleteTag removes one tag; the manifest stays. ErrTagUnknown if absent.
func (s *Store) DeleteTag(repo, tag string) error { panic("not implemented") }

// DeleteManifest unlinks manifest d from repo, removes every tag of repo
// pointing at it and its referrer entry (if it had a subject), in one
// transaction. ErrManifestUnknown when repo does not link it.
func (s *Store) DeleteManifest(repo string, d Digest) error { panic("not implemented") }

// Tags lists repo's tags in lexical order, starting after `last` (empty:
// from the start), at most n (n < 0: all). more reports whether tags
// remain after the returned page. ErrRepoUnknown if the repository does
// not exist.
func (s *Store) Tags(repo string, last string, n int) (tags []string, more bool, err error) {
	panic("not implemented")
}

// Repositories lists repository names in lexical order with the same
// paging rules as Tags. A repository exists from its first link.
func (s *Store) Repositories(last string, n int) (repos []string, more bool, err error) {
	panic("not implemented")
}

// Referrers lists the manifests in repo whose subject is d, ordered by
// digest. An unknown subject gives an empty list, not an error.
func (s *Store) Referrers(repo string, d Digest) ([]Manifest, error) { panic("not implemented") }

// ---- upload sessions ----

// Upload is the state of a resumable upload session. Sessions are kept in
// badger and their data in uploads/<id>, so they survive a restart.
type Upload struct {
	ID      string
	Repo    string
	Size    int64 // bytes received and durably accounted for so far
	Started time.Time
	Updated time.Time
}

// NewUpload starts a session for repo with a random, unguessable ID.
func (s *Store) NewUpload(repo string) (Upload, error) { panic("not implemented") }

// GetUpload returns the session id of repo. ErrUploadUnknown when it does
// not exist, has expired, or belongs to another repository.
func (s *Store) GetUpload(repo, id string) (Upload, error) { panic("not implemented") }

// AppendUpload appends r to the session if offset equals the session's
// current size (ErrOffsetMismatch otherwise, nothing written). The hash
// state and new size are persisted when the chunk completes, so a
// restart resumes at the last complete chunk; bytes from a chunk cut off
// mid-way are discarded. Concurrent appends to one session are serialised;
// the second sees ErrOffsetMismatch. Returns the new session state.
func (s *Store) AppendUpload(repo, id string, offset int64, r io.Reader) (Upload, error) {
	panic("not implemented")
}

// CommitUpload finishes the session: the data must hash to want
// (ErrDigestMismatch otherwise; the session stays so the client may
// retry or cancel), then it is fsynced and renamed into the content store,
// linked to repo, and the session is removed. sha256 is hashed
// incrementally during appends; other algorithms are computed at commit.
func (s *Store) CommitUpload(repo, id string, want Digest) (BlobInfo, error) {
	panic("not implemented")
}

// CancelUpload removes the session and its data. ErrUploadUnknown if absent.
func (s *Store) CancelUpload(repo, id string) error { panic("not implemented") }

// ---- maintenance ----

// GCStats reports what one collection did.
type GCStats struct {
	BlobsRemoved   int
	BytesRemoved   int64
	UploadsExpired int
}

// GC removes blob files no repository links (as blob or manifest) that are
// older than the grace period, and expires stale upload sessions. Safe to
// run while the store serves requests.
func (s *Store) GC() (GCStats, error) { panic("not implemented") }
