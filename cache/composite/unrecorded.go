package composite

import (
	"context"
	"errors"
	"maps"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
)

// A blob's bytes are written before its record: a push, a fill or a
// commit whose record then fails (PostgreSQL's disk full, PostgreSQL
// down) leaves the bytes in the blob store with no record. GC lists the
// metadata, not every object of the blob store, so nothing would ever
// remove them, and deleting them here is not safe: another replica may
// be writing the same digest (the same object) and recording it. So the
// replica remembers them and records them once the database takes
// records again: a recorded blob no repository links is what GC
// collects, through the marks every writer respects. A restart forgets
// them (they stay, as before); past maxUnrecorded, so does the replica.

// maxUnrecorded bounds the digests a replica remembers.
const maxUnrecorded = 4096

// recordAgainTimeout bounds one background record.
const recordAgainTimeout = 30 * time.Second

type unrecordedBlobs struct {
	mu      sync.Mutex
	m       map[cache.Digest]int64 // digest: size
	running bool
}

func (s *Store) noteUnrecorded(d cache.Digest, size int64) {
	u := &s.unrecorded
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.m == nil {
		u.m = map[cache.Digest]int64{}
	}
	if len(u.m) < maxUnrecorded {
		u.m[d] = size
	}
}

// recordLeft records the remembered blobs in the background, one round at
// a time: after a record succeeded (the database has room again) and on
// every GC round.
func (s *Store) recordLeft() {
	u := &s.unrecorded
	u.mu.Lock()
	if u.running || len(u.m) == 0 {
		u.mu.Unlock()
		return
	}
	u.running = true
	left := maps.Clone(u.m)
	u.mu.Unlock()
	s.fills.mu.Lock()
	if s.fills.ctx.Err() != nil { // closed
		s.fills.mu.Unlock()
		u.mu.Lock()
		u.running = false
		u.mu.Unlock()
		return
	}
	s.fills.wg.Add(1)
	s.fills.mu.Unlock()
	go func() {
		defer s.fills.wg.Done()
		defer func() {
			u.mu.Lock()
			u.running = false
			u.mu.Unlock()
		}()
		recorded := 0
		for d, size := range left {
			if err := s.recordAgain(s.fills.ctx, d, size); err != nil {
				s.log.Debug("blob still unrecorded", zap.String("digest", d.String()), zap.Error(err))
				return // the database still refuses: the next round tries
			}
			u.mu.Lock()
			delete(u.m, d)
			u.mu.Unlock()
			recorded++
		}
		s.log.Info("recorded blobs whose record had failed", zap.Int("blobs", recorded))
	}()
}

// recordAgain records d if its bytes are still in the blob store. Nothing
// deletes them meanwhile: a sweep deletes only blobs it marked, and it
// marks only records.
func (s *Store) recordAgain(ctx context.Context, d cache.Digest, size int64) error {
	ctx, cancel := context.WithTimeout(ctx, recordAgainTimeout)
	defer cancel()
	if _, err := s.blobs.Stat(ctx, d); errors.Is(err, blobstore.ErrNotFound) {
		return nil
	} else if err != nil {
		return err
	}
	_, err := s.meta.RecordBlob(ctx, d, size, s.now())
	if errors.Is(err, metastore.ErrBlobDeleting) {
		return nil // recorded after all, and being collected
	}
	return err
}
