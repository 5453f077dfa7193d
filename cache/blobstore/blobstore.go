// Package blobstore is the seam between the registry's store and the place
// blob bytes live (a folder, an S3 bucket). It knows bytes and digests
// only: which repository links a blob, when it was pushed and who may read
// it are the metadata store's business, and who may delete what when is
// coordination's.
//
// The interfaces are small so each caller takes only what it uses: a pull
// needs a Reader, GC a Deleter, a push a Putter or Sessions. Store is the
// sum a backend implements. Every backend runs the same contract tests
// (package storetest).
package blobstore

import (
	"context"
	"errors"
	"io"
)

// Errors a backend returns; callers test them with errors.Is.
var (
	// ErrNotFound: no blob with that digest.
	ErrNotFound = errors.New("blob not found")
	// ErrRange: a range that does not lie within the blob (HTTP's 416).
	ErrRange = errors.New("range not satisfiable")
	// ErrDigestMismatch: the bytes do not hash to the digest the caller
	// claimed. Nothing became visible.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrSizeMismatch: the bytes are not as long as the caller declared.
	// Nothing became visible.
	ErrSizeMismatch = errors.New("size mismatch")
	// ErrOffsetMismatch: a chunk was offered at an offset other than the
	// session's size. Nothing was written.
	ErrOffsetMismatch = errors.New("offset mismatch")
	// ErrTooLarge: the blob is larger than the backend can hold.
	ErrTooLarge = errors.New("blob too large")
	// ErrSessionUnknown: the session's bytes are gone (committed,
	// cancelled or expired) or its state is not one this backend made.
	ErrSessionUnknown = errors.New("upload session unknown")
	// ErrSessionSealed: the session was assembled by a Commit that failed
	// verification; it takes no more chunks, only another Commit or Cancel.
	ErrSessionSealed = errors.New("upload session sealed")
	// ErrStorageFull: the storage has no room for the bytes (a
	// filesystem's reserve or ENOSPC, an object store's 507). Nothing
	// became visible; the same write succeeds once space is freed. The
	// metadata seam's engines use it too (PostgreSQL's disk full), so one
	// error reaches the client as 507 whichever store ran out.
	ErrStorageFull = errors.New("storage is full")
)

// Info describes a stored blob.
type Info struct {
	Digest Digest
	Size   int64
}

// Blob is an open blob. It is what http.ServeContent needs: Seek to find
// the size and to jump to a range, Read from there. A Blob is not safe for
// concurrent use.
type Blob interface {
	io.ReadSeekCloser
	// Size is the blob's length in bytes.
	Size() int64
}

// Reader reads stored blobs. Nothing here lists: each call addresses one
// digest, so it costs the same whatever the store holds.
type Reader interface {
	// Stat reports whether the blob exists and its size; ErrNotFound if not.
	Stat(ctx context.Context, d Digest) (Info, error)
	// Open opens the whole blob for reading and seeking; ErrNotFound if
	// absent. The Blob reads under ctx, so it lives no longer than ctx.
	Open(ctx context.Context, d Digest) (Blob, error)
	// OpenRange returns length bytes from offset (length -1: to the end).
	// The range must lie within the blob and hold at least one byte,
	// ErrRange otherwise (so any range of an empty blob is ErrRange);
	// ErrNotFound if the blob is absent.
	OpenRange(ctx context.Context, d Digest, offset, length int64) (io.ReadCloser, error)
}

// Putter stores a blob whose digest the caller knows up front (a
// monolithic push, a mirror fill).
type Putter interface {
	// Put stores the bytes of r as blob d if they hash to d and, when size
	// >= 0, are exactly size bytes long (ErrDigestMismatch,
	// ErrSizeMismatch). The blob is never visible before it is verified:
	// on any error nothing new is visible. Putting a digest that exists
	// already succeeds and leaves the same bytes in place.
	Put(ctx context.Context, d Digest, size int64, r io.Reader) (Info, error)
}

// Deleter removes blobs.
type Deleter interface {
	// Delete removes blob d. A blob that is not there is not an error, so
	// a sweep that is retried after a crash does not fail on its own work.
	Delete(ctx context.Context, d Digest) error
}

// Sessions opens resumable write sessions: the chunked upload of the
// distribution spec, whose digest is known only when it ends. A session is
// carried between requests (and replicas) as its State: the metadata store
// keeps the bytes, any replica hands them to Resume and carries on.
type Sessions interface {
	// NewSession starts an empty session.
	NewSession(ctx context.Context) (Session, error)
	// ResumeSession continues the session whose State was state, on this
	// or any other instance of the same backend. ErrSessionUnknown if the
	// state is not one this backend made.
	ResumeSession(ctx context.Context, state []byte) (Session, error)
}

// Session is one resumable write. It is not safe for concurrent use, and
// two instances resumed from the same state must not both Append: the
// caller serialises a session's requests (a lock, or compare-and-swap on
// the stored state) and stores State after each Append.
type Session interface {
	// ID names the session. It is random and unguessable, and safe in
	// a URL, a file name and an object key.
	ID() string
	// Size is the number of bytes appended so far.
	Size() int64
	// State is the session serialised, including the hash of the bytes so
	// far, so a resumed session verifies its commit without reading them
	// again. It changes with every Append and every Commit.
	State() ([]byte, error)
	// Append writes the bytes of r at offset, which must be Size()
	// (ErrOffsetMismatch otherwise). It is all or nothing: on an error the
	// session (and its State) is as it was before the call.
	Append(ctx context.Context, offset int64, r io.Reader) (int64, error)
	// Commit makes the session's bytes blob d, if they hash to d and, when
	// size >= 0, are size bytes long (ErrDigestMismatch,
	// ErrSizeMismatch). The blob appears at once, complete and verified,
	// or not at all. A commit that fails verification leaves the session
	// to another Commit or a Cancel; one that succeeds ends it.
	Commit(ctx context.Context, d Digest, size int64) (Info, error)
	// Cancel ends the session and frees its bytes. Cancelling a session
	// that is already gone is not an error.
	Cancel(ctx context.Context) error
}

// Redirector is what a backend offers whose blobs clients can fetch
// from it directly (an S3 presigned URL), so the bytes need not pass
// through the registry. It is optional: a caller checks for it with a type
// assertion, and a backend may have it switched off (ok false).
type Redirector interface {
	// BlobURL returns a URL that answers a GET (and a ranged GET) of blob
	// d for a short time, without further credentials; ok is false when
	// the backend does not redirect. The caller asks only for blobs its
	// records say are there, and only once it decided the client may read
	// them, since the URL is a credential. size >= 0 is the length those
	// records give: bytes the backend lost (ErrNotFound) or holds at
	// another length (ErrSizeMismatch) are reported so, not handed out as
	// a URL that answers 404 or short bytes, so the caller can heal them.
	BlobURL(ctx context.Context, d Digest, size int64) (url string, ok bool, err error)
}

// RecordedOpener is what a backend offers whose Open asks the server
// whether the blob exists and how large it is (a HEAD on S3) before any
// byte moves. A caller whose metadata already says so (the blob's record:
// committed, not being deleted, its size) opens with OpenRecorded instead
// and spares that round trip. It is optional: a caller checks for it with
// a type assertion and falls back to Open.
type RecordedOpener interface {
	// OpenRecorded opens blob d of size bytes, as the caller's record
	// says, without asking the backend first. A blob the backend lost
	// anyway fails at the first Read (wrapping ErrNotFound) instead of
	// here; a local copy of d, whose bytes are d's, may serve it.
	OpenRecorded(ctx context.Context, d Digest, size int64) (Blob, error)
}

// Starter is a Blob opened lazily (OpenRecorded) that can start reading
// now. A caller about to commit to an answer (a 200 and its length) calls
// Start first, so that a blob the backend lost, or a backend that is
// down, is an error it can still answer with, not a body cut short.
type Starter interface {
	// Start begins the read from the blob's current offset. It returns
	// the error the first Read would have (wrapping ErrNotFound for a blob
	// the backend does not hold).
	Start() error
}

// Checker is a Blob opened lazily (OpenRecorded) that can ask the
// backend whether its bytes are still stored without reading any. A HEAD
// of a blob calls it where a GET calls Start: a client HEADs a blob before
// pushing it and skips the upload on a 200, so a HEAD must not say 200 for
// a blob a GET would answer 404 (its object deleted behind the registry's
// back), or the manifest pushed next references bytes nobody can pull.
type Checker interface {
	// Check asks the backend for the blob (one HEAD on S3). It returns
	// the error Start would: wrapping ErrNotFound when the backend does
	// not hold it, ErrSizeMismatch when its object is not the recorded
	// size, the backend's error when it cannot answer.
	Check() error
}

// Layered is a backend that keeps copies of another backend's blobs (a
// local read cache). Its Open may serve a copy, and makes one of what it
// reads; a caller that must read the stored bytes themselves and leave
// the copies alone (the scrub) reads Backend instead.
type Layered interface {
	// Backend is the store the copies are taken from.
	Backend() Store
	// DropCopy forgets the copy of d, if any, for a caller that found
	// Backend lost d (or holds it at another length): reads of d then
	// ask Backend, and agree with it, instead of serving a copy of bytes
	// nobody else can read.
	DropCopy(d Digest)
}

// Store is everything a blob backend offers.
type Store interface {
	Reader
	Putter
	Deleter
	Sessions
}
