package composite

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
)

// The unrecorded sweep: bytes in the blob store that no record names. A
// replica remembers the blobs whose record failed (unrecorded.go) only
// until it stops; one restarted, or killed, before the database took
// records again forgot them, and GC, which lists records, would never
// find them. So GC lists the blob store's committed blobs too
// (blobstore.Lister), a bounded number of pages per pass from where the
// last pass stopped, as the single-node store walks its blob files, and
// records each one older than the grace period that has no record, as
// the replica that wrote it would have: a recorded blob no repository
// links is collected a grace period later through the marks every writer
// respects. Recording, not deleting: a push or a fill of the same digest
// in flight on another replica (a Put over the same object, then its own
// record) meets a record, or a mark it waits out, never bytes deleted
// under it; and the object's time says little of a fill still running
// (a multipart object bears its upload's start).

// unrecordedPagesPerPass bounds the listing one pass does.
const unrecordedPagesPerPass = 16

// recordUnrecorded records the committed blobs older than cutoff that
// have no record.
func (s *Store) recordUnrecorded(ctx context.Context, cutoff time.Time) error {
	ls, ok := s.blobs.(blobstore.Lister)
	if !ok {
		return nil
	}
	s.gcMu.Lock()
	cursor := s.gcCursor.unrecorded
	s.gcMu.Unlock()
	defer func() {
		s.gcMu.Lock()
		s.gcCursor.unrecorded = cursor
		s.gcMu.Unlock()
	}()
	recorded := 0
	defer func() {
		if recorded > 0 {
			s.log.Info("GC recorded blobs that had no record; unlinked, they are collected after the grace period",
				zap.Int("blobs", recorded))
		}
	}()
	for range unrecordedPagesPerPass {
		if err := ctx.Err(); err != nil {
			return err
		}
		bs, next, err := ls.Blobs(ctx, cursor, s.batch)
		if err != nil {
			return fmt.Errorf("listing the blob store's blobs: %w", err)
		}
		for _, b := range bs {
			if b.Since.IsZero() || !b.Since.Before(cutoff) {
				continue // young: its writer may be recording it now
			}
			_, err := s.meta.Blob(ctx, b.Digest)
			if err == nil {
				continue
			}
			if !errors.Is(err, metastore.ErrBlobUnknown) {
				return mapErr(err)
			}
			info, err := s.blobs.Stat(ctx, b.Digest)
			if errors.Is(err, blobstore.ErrNotFound) {
				continue // deleted since the listing
			}
			if err != nil {
				return blobErr(err)
			}
			_, err = s.meta.RecordBlob(ctx, b.Digest, info.Size, s.now())
			switch {
			case errors.Is(err, metastore.ErrBlobDeleting):
				continue // recorded after all, and being collected
			case errors.Is(err, metastore.ErrSizeMismatch):
				continue // recorded since, with its true size
			case err != nil:
				return mapErr(err)
			}
			recorded++
		}
		cursor = next
		if next == "" {
			break
		}
	}
	return nil
}
