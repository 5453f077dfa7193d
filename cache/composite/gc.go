package composite

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/coord"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
)

// gcBatch is how many records one query of a GC pass lists, and one
// transaction removes: requests of every replica go on between batches.
const gcBatch = 256

// gcUploadsPerPass bounds the upload sessions one pass examines: the
// rest wait for the next pass (expireUploads).
const gcUploadsPerPass = 16 * gcBatch

// gcCursor is where this replica's next pass resumes. Kept in memory: a
// new leader starts from the beginning, which costs one pass's bound.
type gcCursor struct {
	uploads    metastore.Upload
	leftovers  string // blobstore.Sweeper's
	unrecorded string // blobstore.Lister's
}

// gcTTL is the GC lease: the leader renews it while it works; if it dies
// another replica may collect gcTTL later.
const gcTTL = 30 * time.Second

// ErrGCElsewhere: another replica holds the GC lease; this pass did
// nothing.
var ErrGCElsewhere = errors.New("GC is running on another replica")

// GC collects what nothing references any more, with the single-node
// store's grace period: expired upload sessions, blob links no manifest of
// their repository references, blobs no repository links, then what
// unfinished uploads left in the blob store with no session record
// (gcsweep.go). One replica at a time runs it (a lease); the others get
// ErrGCElsewhere. It lists the metadata store in batches, and of the blob
// store only the uploads in progress and the sessions' objects, a bounded
// number of pages per pass, so its cost follows what changed and requests
// continue throughout.
func (s *Store) GC(ctx context.Context) (cache.GCStats, error) {
	var st cache.GCStats
	work, end, err := s.holdPass(ctx, "gc", ErrGCElsewhere)
	if err != nil {
		return st, err
	}
	defer end()

	if s.passBegun != nil {
		s.passBegun(work)
	}
	now := s.now()
	cutoff := now.Add(-s.grace)
	st.Full = true
	if err := s.expireUploads(work, now, &st); err != nil {
		return st, err
	}
	if err := s.dropLinks(work, cutoff, &st); err != nil {
		return st, err
	}
	if err := s.sweepBlobs(work, cutoff, &st); err != nil {
		return st, err
	}
	leftovers, err := s.sweepLeftovers(work, now)
	if err == nil {
		err = s.recordUnrecorded(work, cutoff)
	}
	if st.LinksRemoved+st.BlobsRemoved+st.UploadsExpired+leftovers > 0 {
		s.log.Info("garbage collected",
			zap.Int("links_removed", st.LinksRemoved), zap.Int("blobs_removed", st.BlobsRemoved),
			zap.Int64("bytes_removed", st.BytesRemoved), zap.Int("uploads_expired", st.UploadsExpired),
			zap.Int("leftovers_removed", leftovers), zap.Duration("took", s.now().Sub(now)))
	}
	return st, err
}

// expireUploads frees expired sessions: at most uploadsPerPass of them
// examined per pass, in batches, from where the last pass of this replica
// stopped, so a pass costs the same however many sessions are open and
// sessions it must leave are not examined first every time. Reaching the
// end, the next pass starts over.
func (s *Store) expireUploads(ctx context.Context, now time.Time, st *cache.GCStats) error {
	var idleBefore time.Time
	if idle := s.limits.get().IdleTimeout; idle > 0 {
		idleBefore = now.Add(-idle)
	}
	s.gcMu.Lock()
	after := s.gcCursor.uploads
	s.gcMu.Unlock()
	defer func() {
		s.gcMu.Lock()
		s.gcCursor.uploads = after
		s.gcMu.Unlock()
	}()
	for left := s.uploadsPerPass; left > 0; {
		if err := ctx.Err(); err != nil {
			return err // paused, or the lease lost: not every backend checks
		}
		n := min(s.batch, left)
		us, err := s.meta.ExpiredUploads(ctx, now.Add(-s.ttl), idleBefore, after, n)
		if err != nil {
			return mapErr(err)
		}
		for _, u := range us {
			expired, err := s.expireUpload(ctx, u)
			if err != nil {
				return err
			}
			if expired {
				st.UploadsExpired++
			}
			after = u
			left--
		}
		if len(us) < n {
			after = metastore.Upload{}
			return nil
		}
	}
	return nil
}

// expireUpload frees the bytes of expired session u, then forgets it. A
// session a request is writing right now (it holds the lease), or whose
// bytes the blob store could not free (S3 down), keeps its record: a
// later pass tries again, where a forgotten record would leave its bytes
// to the orphan sweep.
func (s *Store) expireUpload(ctx context.Context, u metastore.Upload) (bool, error) {
	l, ok, err := s.leases.Acquire(ctx, "upload/"+u.ID, sessionTTL)
	if err != nil {
		return false, mapErr(err)
	}
	if !ok {
		return false, nil
	}
	defer func() { _ = l.Release(context.WithoutCancel(ctx)) }()
	sess, err := s.blobs.ResumeSession(ctx, u.State)
	if err != nil && !errors.Is(err, blobstore.ErrSessionUnknown) {
		s.log.Warn("GC cannot read an expired upload session; it stays", zap.String("upload", u.ID), zap.Error(err))
		return false, nil
	}
	if sess != nil {
		if err := sess.Cancel(ctx); err != nil {
			s.log.Warn("GC could not free an expired upload session; the next pass tries again",
				zap.String("upload", u.ID), zap.Error(err))
			return false, nil
		}
	}
	if err := s.meta.DeleteUpload(ctx, u.ID); err != nil && !errors.Is(err, metastore.ErrUploadUnknown) {
		return false, mapErr(err)
	}
	return true, nil
}

func (s *Store) dropLinks(ctx context.Context, cutoff time.Time, st *cache.GCStats) error {
	var after metastore.Link
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		ls, err := s.meta.UnreferencedLinks(ctx, cutoff, after, s.batch)
		if err != nil {
			return mapErr(err)
		}
		if len(ls) == 0 {
			return nil
		}
		dropped, err := s.meta.DropLinks(ctx, ls, cutoff)
		if err != nil {
			return mapErr(err)
		}
		st.LinksRemoved += len(dropped)
		if len(ls) < s.batch {
			return nil
		}
		after = ls[len(ls)-1]
	}
}

// sweepBlobs finishes what a sweep that died left marked, then marks,
// deletes and forgets the unlinked blobs past the grace period.
func (s *Store) sweepBlobs(ctx context.Context, cutoff time.Time, st *cache.GCStats) error {
	if err := s.finishMarked(ctx, st); err != nil {
		return err
	}
	var after cache.Digest
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		rs, err := s.meta.UnlinkedBlobs(ctx, cutoff, after, s.batch)
		if err != nil {
			return mapErr(err)
		}
		if len(rs) == 0 {
			return nil
		}
		st.BlobsExamined += len(rs)
		ds := make([]cache.Digest, len(rs))
		for i, r := range rs {
			ds[i] = r.Digest
		}
		marked, err := s.meta.MarkBlobsDeleting(ctx, ds, cutoff)
		if err != nil {
			return mapErr(err)
		}
		if err := s.deleteBlobs(ctx, marked, st); err != nil {
			return err
		}
		if len(rs) < s.batch {
			return nil
		}
		after = rs[len(rs)-1].Digest
	}
}

// finishMarked deletes and forgets the blobs a sweep marked and did not
// finish (its replica died, or it was paused). Only the GC lease's holder
// may: a live sweep may still delete a marked blob's bytes, and if
// anyone else forgot the blob first, a push could record new bytes that
// the late delete then takes.
func (s *Store) finishMarked(ctx context.Context, st *cache.GCStats) error {
	var after cache.Digest
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		rs, err := s.meta.DeletingBlobs(ctx, after, s.batch)
		if err != nil {
			return mapErr(err)
		}
		if err := s.deleteBlobs(ctx, rs, st); err != nil {
			return err
		}
		if len(rs) < s.batch {
			return nil
		}
		after = rs[len(rs)-1].Digest
	}
}

// finishMarkedElsewhere is finishMarked for a write waiting on a marked
// blob (waitForgotten), if the GC lease is free: its holder died or
// stopped with marks left, and the background passes may not come for
// an interval. finished is false when another replica holds the lease
// (its sweep is alive and finishes the marks itself).
func (s *Store) finishMarkedElsewhere(ctx context.Context) (finished bool, err error) {
	work, end, err := s.holdPass(ctx, "gc", ErrGCElsewhere)
	if errors.Is(err, ErrGCElsewhere) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer end()
	var st cache.GCStats
	err = s.finishMarked(work, &st)
	if st.BlobsRemoved > 0 {
		s.log.Info("finished the deletes a GC sweep left marked, for a push of one of them",
			zap.Int("blobs_removed", st.BlobsRemoved), zap.Int64("bytes_removed", st.BytesRemoved))
	}
	return err == nil, err
}

// deleteFenceMargin is how long before the GC lease's deadline a delete
// must reach the blob store: the store's clock may be behind this one's.
const deleteFenceMargin = gcTTL / 6

// fenced is ctx for a delete of marked bytes: Check passed just before,
// but a process stopped right after it sends the delete when it wakes,
// however late; a blob store that can refuses it past the lease's
// deadline (blobstore.WithNotAfter), so it cannot take bytes another
// replica's push wrote again after taking GC over.
func fenced(ctx context.Context) context.Context {
	if d, ok := coord.Deadline(ctx); ok {
		return blobstore.WithNotAfter(ctx, d.Add(-deleteFenceMargin))
	}
	return ctx
}

// deleteBlobs deletes the bytes of marked blobs, then forgets them. A
// delete that fails leaves the mark for the next pass.
func (s *Store) deleteBlobs(ctx context.Context, rs []metastore.BlobRecord, st *cache.GCStats) error {
	if len(rs) == 0 {
		return nil
	}
	gone := make([]cache.Digest, 0, len(rs))
	for _, r := range rs {
		// Past the lease's deadline another replica may have finished
		// this mark, and a push written the digest's bytes again.
		if err := coord.Check(ctx); err != nil {
			return err
		}
		if err := s.blobs.Delete(fenced(ctx), r.Digest); err != nil {
			s.log.Warn("GC could not delete a blob; the next pass tries again",
				zap.String("digest", r.Digest.String()), zap.Error(err))
			continue
		}
		gone = append(gone, r.Digest)
		st.BlobsRemoved++
		st.BytesRemoved += r.Size
	}
	return mapErr(s.meta.ForgetBlobs(ctx, gone))
}

// holdPass takes the lease key of a pass one replica at a time runs (GC,
// eviction, scrub) for as long as the pass: work ends when ctx does or
// the lease is lost, end releases it. elsewhere is the error when another
// replica holds it.
func (s *Store) holdPass(ctx context.Context, key string, elsewhere error) (work context.Context, end func(), err error) {
	held, release, ok, err := coord.Hold(ctx, s.leases, key, gcTTL)
	if err != nil {
		return nil, nil, mapErr(err)
	}
	if !ok {
		return nil, nil, elsewhere
	}
	work, cancel := context.WithCancel(held)
	stop := context.AfterFunc(ctx, cancel)
	return work, func() { cancel(); stop(); release() }, nil
}

// RunGC collects every interval until ctx ends; a pass another replica
// is running is skipped quietly, and so is every pass while paused
// (PauseGC).
func (s *Store) RunGC(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.gcRound(ctx)
	}
}
