// Package composite is the registry's store built from the three seams of
// the split store (DESIGN.md, "The store splits by engine"): blob bytes in
// a blobstore.Store (a folder, an S3 bucket), everything else in a
// metastore.Store (badger, PostgreSQL), and who does what across replicas
// decided by coord.Leases. It speaks the same language as package cache's
// single-node Store (its types and errors), so the registry runs on either
// without knowing which it has.
//
// Nothing lives only in one process: an upload session is a metadata
// record holding the blob store's session state, so any replica takes its
// next chunk; a chunk is written under a lease on its session, so two
// replicas never write one session at once; GC runs on one replica at a
// time, under a lease.
package composite

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/coord"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
)

// Options configure a Store. Blobs, Meta and Leases are required.
type Options struct {
	Blobs  blobstore.Store
	Meta   metastore.Store
	Leases coord.Leases
	// UploadTTL: a session older than this is expired. Default 24h.
	UploadTTL time.Duration
	// GCGrace: what cache.Options.GCGrace is. Default 1h.
	GCGrace time.Duration
	// SpoolDir holds the local copies of mirror fills in progress (the
	// first clients read them as they arrive). Default: os.TempDir().
	SpoolDir string
	// LocalClock is this process's wall clock; nil is time.Now. Tests set
	// one stepped away from the others' (clock.go).
	LocalClock func() time.Time
	Logger     *zap.Logger
}

// Store is the registry's store over the seams. It is safe for concurrent
// use, and any number of Stores on the same backends (replicas) may run
// at once.
type Store struct {
	blobs  blobstore.Store
	meta   metastore.Store
	leases coord.Leases
	ttl    time.Duration
	grace  time.Duration
	log    *zap.Logger
	now    func() time.Time
	clock  *dbClock // nil without the database's clock

	limits   limitsBox
	gcMu     sync.Mutex
	gcPause  gcPause
	gcCursor gcCursor // under gcMu
	// batch and uploadsPerPass are gcBatch and gcUploadsPerPass; tests
	// make them small.
	batch, uploadsPerPass int
	// holdWait and appendWait are the package's; tests make them short.
	holdWait, appendWait time.Duration
	fills                fillWork
	unrecorded           unrecordedBlobs
	appends              localAppends
	mc                   atomic.Pointer[cache.MirrorCache]
	mirror               mirrorWork
	spoolDir             string

	afterWrite func()                // tests: runs between a blob's write and its record
	passBegun  func(context.Context) // tests: runs once a GC pass holds the lease
}

// New returns a Store over opts' backends. It does not close them.
func New(opts Options) (*Store, error) {
	if opts.Blobs == nil || opts.Meta == nil || opts.Leases == nil {
		return nil, errors.New("composite: a blob store, a metadata store and leases are all required")
	}
	s := &Store{
		blobs:  opts.Blobs,
		meta:   opts.Meta,
		leases: opts.Leases,
		ttl:    opts.UploadTTL,
		grace:  opts.GCGrace,
		log:    opts.Logger,
		now:    opts.LocalClock,

		batch:          gcBatch,
		uploadsPerPass: gcUploadsPerPass,
		holdWait:       holdWait,
		appendWait:     appendWait,
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.ttl <= 0 {
		s.ttl = 24 * time.Hour
	}
	if s.grace <= 0 {
		s.grace = time.Hour
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	if r, ok := s.meta.(metastore.DamageReporter); ok {
		r.ReportDamaged(func(repo string, d cache.Digest, err error) { s.logDamaged(repo, d, err) })
	}
	s.spoolDir = opts.SpoolDir
	if s.spoolDir == "" {
		s.spoolDir = os.TempDir()
	}
	s.fills.m = map[cache.Digest]*fill{}
	s.mirror.used = map[cache.Digest]time.Time{}
	s.mirror.pins = map[cache.Digest]int{}
	s.mirror.kick = make(chan struct{}, 1)
	s.fills.ctx, s.fills.cancel = context.WithCancel(context.Background())
	if db, ok := s.meta.(metastore.Clock); ok {
		s.clock = &dbClock{db: db, local: s.now, background: s.background}
		s.now = s.clock.now
		s.now() // takes the first reading
	}
	return s, nil
}

// Now is the time this store writes and judges stored times by: the
// database's clock where it has one (clock.go). The registry's mirror
// stamps and judges tags with it.
func (s *Store) Now() time.Time { return s.now() }

// blobInfo is a record as the registry sees it.
func blobInfo(r metastore.BlobRecord) cache.BlobInfo {
	return cache.BlobInfo{Digest: r.Digest, Size: r.Size, ModTime: r.Touched}
}

// StatBlob reports a committed blob; cache.ErrBlobUnknown if absent or
// being collected.
func (s *Store) StatBlob(ctx context.Context, d cache.Digest) (cache.BlobInfo, error) {
	r, err := s.meta.Blob(ctx, d)
	if err != nil {
		return cache.BlobInfo{}, mapErr(err)
	}
	return blobInfo(r), nil
}

// OpenBlob opens a committed blob for reading and seeking. The record
// says the bytes are stored and how many there are (GC marks a record
// deleting before it deletes the bytes, and from then on Blob does not
// return it), so a backend that can skip asking (RecordedOpener: S3, the
// read cache) is spared its HEAD: a warm GET from the read cache makes no
// S3 request at all, a cold one a single GET.
func (s *Store) OpenBlob(ctx context.Context, d cache.Digest) (blobstore.Blob, error) {
	r, err := s.meta.Blob(ctx, d)
	if err != nil {
		return nil, mapErr(err)
	}
	var b blobstore.Blob
	if ro, ok := s.blobs.(blobstore.RecordedOpener); ok {
		b, err = ro.OpenRecorded(ctx, d, r.Size)
	} else {
		b, err = s.blobs.Open(ctx, d)
	}
	if err != nil {
		return nil, blobErr(err)
	}
	if b.Size() != r.Size {
		// A backend that asked (a file's stat at its open) found an
		// object of another length than the blob: cut short by a broken
		// tool or a restore. It is not the blob; as good as lost.
		b.Close()
		return nil, fmt.Errorf("%w: %w: %s is %d bytes in the blob store, %d in its record",
			cache.ErrBlobUnknown, blobstore.ErrSizeMismatch, d, b.Size(), r.Size)
	}
	return b, nil
}

// CheckBlobStored implements registry.StoredBlobChecker: whether the
// bytes of blob d, recorded with size bytes, are still in the blob store
// (a folder: one stat; S3: one HEAD, about a millisecond and a half). It
// asks the store behind any read cache (blobstore.Layered), whose copy
// says nothing of the bucket; when the bucket lost d the copies are
// dropped, so the HEAD a client sends next (and any read on this
// replica) asks the bucket too and agrees: 404, and the client pushes
// the blob again. The error wraps cache.ErrBlobUnknown and
// blobstore.ErrNotFound or ErrSizeMismatch when the bytes are lost or of
// another length; a blob store that cannot answer is cache.ErrUnavailable
// (blobErr), never a lost blob.
func (s *Store) CheckBlobStored(ctx context.Context, repo string, d cache.Digest, size int64) error {
	info, err := s.storedBytes().Stat(ctx, d)
	if err == nil && info.Size != size {
		err = fmt.Errorf("%w: %w: %s is %d bytes in the blob store, %d in its record",
			cache.ErrBlobUnknown, blobstore.ErrSizeMismatch, d, info.Size, size)
	}
	if errors.Is(err, blobstore.ErrNotFound) || errors.Is(err, blobstore.ErrSizeMismatch) {
		s.dropCopies(d)
	}
	if err != nil {
		return blobErr(err)
	}
	return nil
}

// dropCopies forgets every read cache's copy of d (blobstore.Layered),
// whose bytes the store behind them no longer holds as recorded.
func (s *Store) dropCopies(d cache.Digest) {
	for b := s.blobs; ; {
		l, ok := b.(blobstore.Layered)
		if !ok {
			return
		}
		l.DropCopy(d)
		b = l.Backend()
	}
}

// BlobURL is the blob store's URL for committed blob d, when it hands
// them out (blobstore.Redirector); ok false otherwise. The registry asks
// after its own checks; a blob being filled has no record yet and is
// streamed from its fill instead.
func (s *Store) BlobURL(ctx context.Context, d cache.Digest, size int64) (string, bool, error) {
	rd, ok := s.blobs.(blobstore.Redirector)
	if !ok {
		return "", false, nil
	}
	return rd.BlobURL(ctx, d, size)
}

// PutBlob stores r as blob want if it hashes to want (and is size bytes
// long, size >= 0). It does not link it to any repository.
func (s *Store) PutBlob(ctx context.Context, want cache.Digest, size int64, r io.Reader) (int64, error) {
	if max := s.limits.get().MaxBlobSize; max > 0 {
		if size > max {
			return 0, fmt.Errorf("%w: %d bytes, limit %d", cache.ErrUploadTooLarge, size, max)
		}
		r = &capped{r: r, left: max}
	}
	if err := s.fence(ctx, want); err != nil {
		return 0, err
	}
	info, err := s.blobs.Put(ctx, want, size, r)
	if err != nil {
		return 0, blobErr(err)
	}
	if s.afterWrite != nil {
		s.afterWrite()
	}
	if err := s.record(ctx, want, info.Size); err != nil {
		return 0, err
	}
	return info.Size, nil
}

// ErrCollected: bytes just written were deleted by a GC sweep that had
// marked an older copy of the same blob unreferenced. Nothing was
// recorded; the client pushes again (the registry answers 503).
var ErrCollected = fmt.Errorf("%w: blob was being collected, push it again", cache.ErrUnavailable)

// record records committed bytes of d. If GC is deleting d (it marked an
// unlinked copy of the same digest just before), the sweep may delete the
// bytes just written: wait until it forgot d, then record only if the
// bytes are still there. Once forgotten, no sweep can touch d again
// before it is recorded (a sweep deletes only what it marked, and it
// marks only records), so the check and the record cannot be overtaken.
//
// Bytes whose record failed (the database full or down) are in the blob
// store with no record, where no sweep would ever find them: they are
// recorded again later (unrecorded.go), as a blob no repository links,
// which GC collects after the grace period like any other.
func (s *Store) record(ctx context.Context, d cache.Digest, size int64) error {
	err := s.recordOnce(ctx, d, size)
	switch {
	case err == nil:
		s.recordLeft() // the database takes records again
	case !errors.Is(err, ErrCollected):
		s.noteUnrecorded(d, size)
	}
	return err
}

func (s *Store) recordOnce(ctx context.Context, d cache.Digest, size int64) error {
	_, err := s.meta.RecordBlob(ctx, d, size, s.now())
	if !errors.Is(err, metastore.ErrBlobDeleting) {
		return mapErr(err)
	}
	if err := s.waitForgotten(ctx, d); err != nil {
		return err
	}
	if _, err := s.blobs.Stat(ctx, d); errors.Is(err, blobstore.ErrNotFound) {
		return fmt.Errorf("%w: %s", ErrCollected, d)
	} else if err != nil {
		return blobErr(err)
	}
	_, err = s.meta.RecordBlob(ctx, d, size, s.now())
	return mapErr(err)
}

// fence keeps GC off d before bytes of d are written or found in place:
// a record of d is touched now, so a sweep can no longer mark it (it
// marks only records untouched for the grace period), and one being
// swept is waited for. Without it a sweep could delete the bytes between
// the write (or a commit that finds them there already) and the record,
// leaving an acknowledged blob with a record and no bytes.
func (s *Store) fence(ctx context.Context, d cache.Digest) error {
	r, err := s.meta.Blob(ctx, d)
	if errors.Is(err, metastore.ErrBlobUnknown) {
		// Absent, or marked and being deleted: wait for any sweep of it.
		return s.waitForgotten(ctx, d)
	}
	if err != nil {
		return mapErr(err)
	}
	_, err = s.meta.RecordBlob(ctx, d, r.Size, s.now())
	if errors.Is(err, metastore.ErrBlobDeleting) {
		return s.waitForgotten(ctx, d)
	}
	return mapErr(err)
}

// A write waits for the sweep that marked its blob to delete and forget
// it. A live sweep does so within its batch's deletes; the mark of a
// sweep whose replica died (kill -9, PauseGC) stays until some replica
// takes the GC lease again, which the background passes do only every
// gc_interval (an hour by default), and every push of that digest would
// wait as long. So past markedTakeover the writer tries the lease itself
// and, once the dead leader's has expired, finishes the marked deletes;
// past markedWaitMax it gives up with ErrMarkedWait (503, Retry-After),
// so no request hangs on a sweep.
const (
	markedTakeover = 2 * time.Second
	markedWaitMax  = 5 * time.Second
)

// ErrMarkedWait: a blob's bytes are being deleted by a GC sweep that did
// not finish in time; the client pushes again later.
var ErrMarkedWait = fmt.Errorf("%w: blob is being collected, push it again", cache.ErrUnavailable)

// waitForgotten waits until GC forgot d.
func (s *Store) waitForgotten(ctx context.Context, d cache.Digest) error {
	start := time.Now() // a wait, not a stored time: not the store's clock
	for delay := 20 * time.Millisecond; ; delay = min(delay*2, time.Second) {
		// Blob says unknown both while deleting and once forgotten; only
		// RecordBlob tells them apart, and recording is what must not
		// happen. DeletingBlobs from just before d answers exactly.
		left, err := s.meta.DeletingBlobs(ctx, before(d), 1)
		if err != nil {
			return mapErr(err)
		}
		if len(left) == 0 || left[0].Digest != d {
			return nil
		}
		if waited := time.Since(start); waited >= markedWaitMax {
			return fmt.Errorf("%w: %s", ErrMarkedWait, d)
		} else if waited >= markedTakeover {
			finished, err := s.finishMarkedElsewhere(ctx)
			if err != nil {
				return err
			}
			if finished {
				continue
			}
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// before is the digest that sorts just before d among digests of its
// algorithm (hex of one length: lower the last digit, borrowing), so a
// listing "after before(d)" starts at d. The zero Digest (from the start)
// when d is the first.
func before(d cache.Digest) cache.Digest {
	h := []byte(d.Hex)
	for i := len(h) - 1; i >= 0; i-- {
		switch h[i] {
		case '0':
			h[i] = 'f'
			continue
		case 'a':
			h[i] = '9'
		default:
			h[i]--
		}
		return cache.Digest{Algorithm: d.Algorithm, Hex: string(h)}
	}
	return cache.Digest{}
}

// capped fails once more than left bytes were read.
type capped struct {
	r    io.Reader
	left int64
}

func (c *capped) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.left -= int64(n)
	if c.left < 0 {
		return n, cache.ErrUploadTooLarge
	}
	return n, err
}

// LinkBlob records that repo holds blob d.
func (s *Store) LinkBlob(ctx context.Context, repo string, d cache.Digest) error {
	return mapErr(s.meta.LinkBlob(ctx, repo, d, s.now()))
}

// HasBlob reports repo's blob d; cache.ErrBlobUnknown if repo does not
// link it. A link older than half the grace period is renewed, as the
// single-node store does: a client asks right before it pushes a
// manifest referencing the blob.
func (s *Store) HasBlob(ctx context.Context, repo string, d cache.Digest) (cache.BlobInfo, error) {
	l, r, err := s.meta.BlobLink(ctx, repo, d)
	if err != nil {
		return cache.BlobInfo{}, mapErr(err)
	}
	if now := s.now(); now.Sub(l.Linked) > s.grace/2 {
		ok, err := s.meta.RenewBlobLink(ctx, repo, d, now, now.Add(-s.grace/2))
		if err != nil {
			return cache.BlobInfo{}, mapErr(err)
		}
		if !ok {
			return cache.BlobInfo{}, fmt.Errorf("%w: %s in %s", cache.ErrBlobUnknown, d, repo)
		}
	}
	return blobInfo(r), nil
}

// UnlinkBlob removes repo's link to d.
func (s *Store) UnlinkBlob(ctx context.Context, repo string, d cache.Digest) error {
	return mapErr(s.meta.UnlinkBlob(ctx, repo, d))
}

// ReposWithBlob lists up to limit repositories that link d.
func (s *Store) ReposWithBlob(ctx context.Context, d cache.Digest, limit int) ([]string, error) {
	rs, err := s.meta.ReposWithBlob(ctx, d, limit)
	return rs, mapErr(err)
}

// CheckSpace: an object store does not fill up the way a disk does; the
// filesystem blob store checks its own reserve as it writes.
func (s *Store) CheckSpace(context.Context, int64) error { return nil }

// mapErr turns the seams' errors into package cache's, which the registry
// maps to protocol errors.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	pairs := []struct{ from, to error }{
		{metastore.ErrBlobUnknown, cache.ErrBlobUnknown},
		{blobstore.ErrNotFound, cache.ErrBlobUnknown},
		{metastore.ErrManifestUnknown, cache.ErrManifestUnknown},
		{metastore.ErrTagUnknown, cache.ErrTagUnknown},
		{metastore.ErrRepoUnknown, cache.ErrRepoUnknown},
		{metastore.ErrUploadUnknown, cache.ErrUploadUnknown},
		{blobstore.ErrSessionUnknown, cache.ErrUploadUnknown},
		{metastore.ErrTooManyUploads, cache.ErrTooManyUploads},
		{metastore.ErrUploadShare, cache.ErrUploadShare},
		{metastore.ErrUploadSpace, cache.ErrUploadSpace},
		{metastore.ErrNameInvalid, cache.ErrNameInvalid},
		{metastore.ErrDigestMismatch, cache.ErrDigestMismatch},
		{blobstore.ErrDigestMismatch, cache.ErrDigestMismatch},
		{blobstore.ErrSizeMismatch, cache.ErrSizeMismatch},
		{blobstore.ErrOffsetMismatch, cache.ErrOffsetMismatch},
		// Another request advanced the session, or a failed commit sealed
		// it: a chunk at this offset cannot land (416).
		{metastore.ErrUploadMoved, cache.ErrOffsetMismatch},
		{blobstore.ErrSessionSealed, cache.ErrOffsetMismatch},
		{blobstore.ErrTooLarge, cache.ErrUploadTooLarge},
		{metastore.ErrUnavailable, cache.ErrUnavailable},
	}
	for _, p := range pairs {
		if errors.Is(err, p.from) {
			if errors.Is(err, p.to) {
				return err
			}
			return fmt.Errorf("%w: %w", p.to, err)
		}
	}
	return err
}

// blobErr is mapErr for the blob store's errors: a failure that is none
// of the seam's own is the object store failing (unreachable, timing
// out, refusing), which the client should retry, not a bug of ours. A
// full store is the operator's to fix, not a retry's: it stays itself.
func blobErr(err error) error {
	m := mapErr(err)
	if m != err || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || cache.IsStorageFull(err) ||
		errors.Is(err, cache.ErrUploadTooLarge) || errors.Is(err, cache.ErrUploadSpace) || errors.Is(err, cache.ErrUnavailable) ||
		errors.Is(err, cache.ErrUploadUnknown) {
		return m
	}
	return fmt.Errorf("%w: blob store: %w", cache.ErrUnavailable, err)
}
