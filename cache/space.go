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

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"go.uber.org/zap"
)

// ErrStorageFull: accepting the bytes would leave less free space on the
// storage's filesystem than the reserve, or the filesystem refused them
// (ENOSPC, EDQUOT). Nothing was stored; the same write succeeds once space
// is freed. Test with IsStorageFull, which also knows the errno.
var ErrStorageFull = errors.New("storage is full")

// IsStorageFull reports whether err comes from a full storage: the reserve
// refused the bytes, or the filesystem did.
func IsStorageFull(err error) bool {
	return errors.Is(err, ErrStorageFull) || isNoSpace(err)
}

// SpaceReserve is the free space writes of blob bytes leave on the
// storage's filesystem: the larger of Bytes and Percent of the
// filesystem's size. The zero value reserves nothing.
type SpaceReserve struct {
	Bytes   int64
	Percent float64
}

// DefaultReserve is 256 MiB, or 1% of a filesystem larger than 25 GiB.
// badger needs a few tens of MiB at most to flush and compact its small
// tables (8 MiB memtables, store.go); the rest is slack for concurrent
// writers, which each may take up to a window past their last look.
var DefaultReserve = SpaceReserve{Bytes: 256 << 20, Percent: 1}

// of is the reserve on a filesystem of total bytes.
func (r SpaceReserve) of(total int64) int64 {
	return max(r.Bytes, int64(float64(total)*r.Percent/100))
}

// SpaceObserver sees the storage's free space each time the store measures
// it (before and during writes of blob bytes, and every spaceInterval).
// Calls come from any goroutine: they must be quick and must not call the
// store.
type SpaceObserver interface {
	// StorageSpace reports the free bytes of the filesystem holding dir,
	// the reserve in bytes, and whether free space is at or below it (new
	// blob bytes are refused).
	StorageSpace(dir string, free, reserve int64, reached bool)
}

// spaceWindow is how many bytes a write may take between two looks at the
// free space, and the room a write of unknown length must find before it
// starts. A statfs per window costs nothing next to a window of disk
// writes.
const spaceWindow = 4 << 20

// metaFloorMax caps metaFloor: badger with the options of store.go needs a
// few memtables (8 MiB each) and a flushed table or two at a time.
const metaFloorMax = 64 << 20

// spaceGuard measures the free space of one filesystem and refuses writes
// that would eat into the reserve.
type spaceGuard struct {
	dir     string // any path on the filesystem blobs are written to
	metaDir string // badger's folder, maybe on another filesystem
	reserve SpaceReserve
	log     *zap.Logger
	obs     SpaceObserver // may be nil

	mu          sync.Mutex // orders state changes, so the log lines alternate
	reached     bool
	metaRefused bool
}

// metaFloor is the free space below which metadata writes are refused
// too: half the reserve, at most metaFloorMax. No reserve, no floor.
func (g *spaceGuard) metaFloor(total int64) int64 {
	return min(g.reserve.of(total)/2, metaFloorMax)
}

// admitMeta refuses (ErrStorageFull) a metadata write when the
// filesystem of badger's folder has less than metaFloor free: badger
// writes through memory maps, where a full filesystem is a SIGBUS.
func (g *spaceGuard) admitMeta() error {
	free, total, err := freeSpace(g.metaDir)
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

// admit refuses (ErrStorageFull) a write of size bytes (-1: unknown, then
// a window) that would leave less than the reserve free. When the free
// space cannot be measured it lets the write go: the filesystem's own
// ENOSPC still maps to ErrStorageFull.
func (g *spaceGuard) admit(size int64) error {
	free, reserve, ok := g.measure()
	if !ok {
		return nil
	}
	need := size
	if need < 0 {
		need = spaceWindow
	}
	if free-need < reserve {
		return fmt.Errorf("%w: %d bytes free, %d needed, %d kept in reserve", ErrStorageFull, free, need, reserve)
	}
	return nil
}

// measure takes the free space and the reserve in bytes, updating the
// state (log, observer). ok is false when statfs fails.
func (g *spaceGuard) measure() (free, reserve int64, ok bool) {
	free, total, err := freeSpace(g.dir)
	if err != nil {
		g.log.Debug("cannot measure free space", zap.String("dir", g.dir), zap.Error(err))
		return 0, 0, false
	}
	reserve = g.reserve.of(total)
	reached := free <= reserve
	g.mu.Lock()
	if reached != g.reached {
		g.reached = reached
		if reached {
			g.log.Warn("storage reserve reached: new blob bytes are refused until space is freed",
				zap.String("dir", g.dir), zap.Int64("free", free), zap.Int64("reserve", reserve))
		} else {
			g.log.Info("storage has room again above its reserve",
				zap.String("dir", g.dir), zap.Int64("free", free), zap.Int64("reserve", reserve))
		}
	}
	if g.obs != nil {
		g.obs.StorageSpace(g.dir, free, reserve, reached)
	}
	g.mu.Unlock()
	return free, reserve, true
}

// writer wraps w, a file being filled after admit, so that every window
// of bytes is admitted again: concurrent writers share the free space, and
// a write of unknown length is refused once it would cross the reserve.
// A refusal or ENOSPC comes back from Write; the caller removes or cuts
// off what it wrote.
func (g *spaceGuard) writer(w io.Writer) io.Writer {
	return &spaceWriter{g: g, w: w, left: spaceWindow}
}

type spaceWriter struct {
	g    *spaceGuard
	w    io.Writer
	left int64 // bytes admitted and not written yet
}

func (sw *spaceWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > sw.left {
		window := max(spaceWindow, int64(len(p)))
		if err := sw.g.admit(window); err != nil {
			return 0, err
		}
		sw.left = window
	}
	n, err := sw.w.Write(p)
	sw.left -= int64(n)
	if isNoSpace(err) {
		sw.g.measure() // someone else filled the disk: show it
	}
	return n, err
}

// CheckSpace refuses (ErrStorageFull) a write of size bytes (-1: unknown)
// of blob content that would leave less than the reserve free. The write
// paths check for themselves; callers that know a length before the
// bytes arrive (a chunk's Content-Length) use it to refuse early.
func (s *Store) CheckSpace(size int64) error {
	return s.space.admit(size)
}

// spaceInterval is how often the free space is measured when nothing is
// written, so the observer's figures stay current and the log says when
// space was freed.
const spaceInterval = 15 * time.Second

func (s *Store) spaceLoop() {
	defer s.wg.Done()
	t := time.NewTicker(spaceInterval)
	defer t.Stop()
	s.space.measure()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.space.measure()
		}
	}
}
