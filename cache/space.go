package cache

// Free space. badger memory-maps its write-ahead log and tables as sparse
// files: a write into a page the filesystem has no room for kills the
// process with SIGBUS instead of returning an error (dgraph-io/badger#1682).
// So blob bytes — uploads, mirror fills, manifests — never take the last
// part of the filesystem: they are refused while less than a reserve would
// remain, and that reserve is badger's room to grow. Metadata writes (links,
// tags, upload sessions, deletes) go on inside the reserve, so the registry
// stays usable for everything but new bytes. Only when something else has
// eaten into the reserve down to its last part (metaFloor: another program
// filled the disk) are metadata writes refused too, before badger could
// touch a page the filesystem cannot give.
//
// The guard of blob bytes is blobfile.Space, shared with the filesystem
// blob backend; the metadata floor is badger's, so it is here.

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache/internal/blobfile"
)

// ErrStorageFull: accepting the bytes would leave less free space on the
// storage's filesystem than the reserve, or the filesystem refused them
// (ENOSPC, EDQUOT). Nothing was stored; the same write succeeds once space
// is freed. Test with IsStorageFull, which also knows the errno.
var ErrStorageFull = blobfile.ErrStorageFull

// IsStorageFull reports whether err comes from a full storage: the reserve
// refused the bytes, or the filesystem did.
func IsStorageFull(err error) bool { return blobfile.IsStorageFull(err) }

// SpaceReserve is the free space writes of blob bytes leave on the
// storage's filesystem: the larger of Bytes and Percent of the
// filesystem's size. The zero value reserves nothing.
type SpaceReserve = blobfile.Reserve

// DefaultReserve is 256 MiB, or 1% of a filesystem larger than 25 GiB.
// badger needs a few tens of MiB at most to flush and compact its small
// tables (8 MiB memtables, store.go); the rest is slack for concurrent
// writers, which each may take up to a window past their last look.
var DefaultReserve = SpaceReserve{Bytes: 256 << 20, Percent: 1}

// SpaceObserver sees the storage's free space each time the store measures
// it (before and during writes of blob bytes, and every spaceInterval).
// Calls come from any goroutine: they must be quick and must not call the
// store.
type SpaceObserver = blobfile.SpaceObserver

// metaFloorMax caps metaFloor: badger with the options of store.go needs a
// few memtables (8 MiB each) and a flushed table or two at a time.
const metaFloorMax = 64 << 20

// spaceGuard is the guard of blob bytes on the store's filesystem, plus
// the floor below which metadata writes are refused too.
type spaceGuard struct {
	*blobfile.Space
	metaDir string // badger's folder, maybe on another filesystem
	reserve SpaceReserve
	log     *zap.Logger

	mu          sync.Mutex // orders state changes, so the log lines alternate
	metaRefused bool
}

func newSpaceGuard(dir, metaDir string, reserve SpaceReserve, log *zap.Logger, obs SpaceObserver) *spaceGuard {
	return &spaceGuard{Space: blobfile.NewSpace(dir, reserve, log, obs), metaDir: metaDir, reserve: reserve, log: log}
}

// metaFloor is the free space below which metadata writes are refused
// too: half the reserve, at most metaFloorMax. No reserve, no floor.
func (g *spaceGuard) metaFloor(total int64) int64 {
	return min(g.reserve.Of(total)/2, metaFloorMax)
}

// admitMeta refuses (ErrStorageFull) a metadata write when the
// filesystem of badger's folder has less than metaFloor free: badger
// writes through memory maps, where a full filesystem is a SIGBUS.
func (g *spaceGuard) admitMeta() error {
	free, total, err := blobfile.FreeSpace(g.metaDir)
	if err != nil {
		return nil
	}
	floor := g.metaFloor(total)
	refused := free < floor
	g.mu.Lock()
	if refused != g.metaRefused {
		g.metaRefused = refused
		if refused {
			g.log.Warn("storage nearly full: metadata changes are refused too until space is freed",
				zap.String("dir", g.metaDir), zap.Int64("free", free), zap.Int64("floor", floor))
		} else {
			g.log.Info("metadata changes are accepted again",
				zap.String("dir", g.metaDir), zap.Int64("free", free), zap.Int64("floor", floor))
		}
	}
	g.mu.Unlock()
	if refused {
		return fmt.Errorf("%w: %d bytes free for metadata, %d kept for its database", ErrStorageFull, free, floor)
	}
	return nil
}

// admitOpen is admitMeta for opening the database, whose folder may not
// exist yet: the free space is that of its nearest existing parent.
func (g *spaceGuard) admitOpen() error {
	free, total, _, err := blobfile.FreeSpaceFor(g.metaDir)
	if err != nil {
		return nil
	}
	if floor := g.metaFloor(total); free < floor {
		return fmt.Errorf("%w: %d bytes free on the filesystem of %s, %d needed to open its database", ErrStorageFull, free, g.metaDir, floor)
	}
	return nil
}

// CheckSpace refuses (ErrStorageFull) a write of size bytes (-1: unknown)
// of blob content that would leave less than the reserve free. The write
// paths check for themselves; callers that know a length before the
// bytes arrive (a chunk's Content-Length) use it to refuse early. ctx is
// unused: one store has one filesystem, whatever the repository.
func (s *Store) CheckSpace(_ context.Context, size int64) error {
	return s.space.Admit(size)
}

// spaceInterval is how often the free space is measured when nothing is
// written, so the observer's figures stay current and the log says when
// space was freed.
const spaceInterval = 15 * time.Second

func (s *Store) spaceLoop() {
	defer s.wg.Done()
	t := time.NewTicker(spaceInterval)
	defer t.Stop()
	s.space.Measure()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.space.Measure()
		}
	}
}
