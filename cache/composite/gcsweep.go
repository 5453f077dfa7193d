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

// The orphan sweep: what unfinished writes left in the blob store that
// no session record refers to any more. A replica killed mid-push, or a
// session ended (committed, cancelled, expired) while S3 could not be
// reached, leaves multipart uploads whose parts S3 keeps (and bills)
// until someone aborts them, and session objects (tails, a commit's
// completed data object that no link names: cut off before its link, or
// left by a Delete cut off after the link). Expiry frees the bytes of
// sessions that still have a record; this frees the rest.
//
// It lists the blob store (blobstore.Sweeper), so it runs only in a GC
// pass, under the GC lease, a bounded number of pages per pass from
// where the last one stopped.

// leftoverPagesPerPass bounds the listing one pass does.
const leftoverPagesPerPass = 16

// putMaxAge is the least age of a leftover of no session (a Put or a
// commit's copy at a blob key) before it counts as abandoned. Nothing
// bounds how long a write of a huge blob from a slow upstream takes, as
// upload_ttl bounds a session, so a short upload_ttl and gc_grace must
// not cut one off.
const putMaxAge = 24 * time.Hour

// sweepLeftovers frees leftovers older than the upload TTL and the grace
// period, whichever is longer, whose session has no record: no session
// still open can own one (a session's bytes are written after its record
// and expire with it). A leftover of no session must be older than
// putMaxAge too. A session with a record, expired or not, is left to
// expiry, which keeps the record until its bytes are gone.
func (s *Store) sweepLeftovers(ctx context.Context, now time.Time) (int, error) {
	sw, ok := s.blobs.(blobstore.Sweeper)
	if !ok {
		return 0, nil
	}
	before := now.Add(-max(s.ttl, s.grace))
	s.gcMu.Lock()
	cursor := s.gcCursor.leftovers
	s.gcMu.Unlock()
	defer func() {
		s.gcMu.Lock()
		s.gcCursor.leftovers = cursor
		s.gcMu.Unlock()
	}()
	dropped := 0
	for range leftoverPagesPerPass {
		if err := ctx.Err(); err != nil {
			return dropped, err
		}
		ls, next, err := sw.Leftovers(ctx, cursor, s.batch)
		if err != nil {
			return dropped, fmt.Errorf("listing what unfinished uploads left: %w", err)
		}
		for _, l := range ls {
			if l.Since.IsZero() {
				continue // a server that gave no time: its age is unknown
			}
			if !l.Since.Before(before) || l.Session == "" && !l.Since.Before(now.Add(-putMaxAge)) {
				continue
			}
			if l.Session != "" {
				_, err := s.meta.Upload(ctx, l.Session)
				if err == nil {
					continue
				}
				if !errors.Is(err, metastore.ErrUploadUnknown) {
					return dropped, mapErr(err)
				}
			}
			if err := sw.DropLeftover(ctx, l); err != nil {
				s.log.Warn("GC could not free what an unfinished upload left; the next pass tries again",
					zap.String("key", l.Key), zap.String("session", l.Session), zap.Error(err))
				continue
			}
			dropped++
		}
		cursor = next
		if next == "" {
			break
		}
	}
	return dropped, nil
}
