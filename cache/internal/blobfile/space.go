package blobfile

// Free space: writes of blob bytes are refused while they would leave
// less than a reserve free on the filesystem they go to, so that what
// else lives there (package cache's badger, which meets a full
// filesystem with SIGBUS, not an error) keeps room to work.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
)

// ErrStorageFull: accepting the bytes would leave less free space on the
// storage's filesystem than the reserve, or the filesystem refused them
// (ENOSPC, EDQUOT). Nothing was stored; the same write succeeds once space
// is freed. Test with IsStorageFull, which also knows the errno.
var ErrStorageFull = blobstore.ErrStorageFull

// IsStorageFull reports whether err comes from a full storage: the reserve
// refused the bytes, or the filesystem did.
func IsStorageFull(err error) bool {
	return errors.Is(err, ErrStorageFull) || IsNoSpace(err)
}

// Reserve is the free space writes of blob bytes leave on the storage's
// filesystem: the larger of Bytes and Percent of the filesystem's size.
// The zero value reserves nothing.
type Reserve struct {
	Bytes   int64
	Percent float64
}

// Of is the reserve on a filesystem of total bytes.
func (r Reserve) Of(total int64) int64 {
	return max(r.Bytes, int64(float64(total)*r.Percent/100))
}

// SpaceObserver sees the storage's free space each time it is measured
// (before and during writes of blob bytes, and whenever the owner of a
// Space measures it). Calls come from any goroutine: they must be quick
// and must not call the store.
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

// Space measures the free space of one filesystem and refuses writes
// that would eat into the reserve. Safe for concurrent use. A nil *Space
// guards nothing: it admits every write.
type Space struct {
	dir     string // any path on the filesystem blobs are written to
	reserve Reserve
	log     *zap.Logger
	obs     SpaceObserver // may be nil

	mu      sync.Mutex // orders state changes, so the log lines alternate
	reached bool
}

// NewSpace guards the filesystem holding dir with reserve. log and obs
// may be nil.
func NewSpace(dir string, reserve Reserve, log *zap.Logger, obs SpaceObserver) *Space {
	if log == nil {
		log = zap.NewNop()
	}
	return &Space{dir: dir, reserve: reserve, log: log, obs: obs}
}

// Admit refuses (ErrStorageFull) a write of size bytes (-1: unknown, then
// a window) that would leave less than the reserve free. When the free
// space cannot be measured it lets the write go: the filesystem's own
// ENOSPC still maps to ErrStorageFull.
func (g *Space) Admit(size int64) error {
	if g == nil {
		return nil
	}
	free, reserve, ok := g.Measure()
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

// Measure takes the free space and the reserve in bytes, updating the
// state (log, observer). ok is false when statfs fails.
func (g *Space) Measure() (free, reserve int64, ok bool) {
	free, total, err := FreeSpace(g.dir)
	if err != nil {
		g.log.Debug("cannot measure free space", zap.String("dir", g.dir), zap.Error(err))
		return 0, 0, false
	}
	reserve = g.reserve.Of(total)
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

// Writer wraps w, a file being filled after Admit, so that every window
// of bytes is admitted again: concurrent writers share the free space, and
// a write of unknown length is refused once it would cross the reserve.
// A refusal or ENOSPC comes back from Write; the caller removes or cuts
// off what it wrote.
func (g *Space) Writer(w io.Writer) io.Writer {
	if g == nil {
		return w
	}
	return &spaceWriter{g: g, w: w, left: spaceWindow}
}

type spaceWriter struct {
	g    *Space
	w    io.Writer
	left int64 // bytes admitted and not written yet
}

func (sw *spaceWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > sw.left {
		window := max(spaceWindow, int64(len(p)))
		if err := sw.g.Admit(window); err != nil {
			return 0, err
		}
		sw.left = window
	}
	n, err := sw.w.Write(p)
	sw.left -= int64(n)
	if IsNoSpace(err) {
		sw.g.Measure() // someone else filled the disk: show it
	}
	return n, err
}

// FreeSpaceFor is FreeSpace of the filesystem that will hold dir, which
// may not exist yet (a database's folder before its first open): that of
// its nearest existing parent, whose path it returns too.
func FreeSpaceFor(dir string) (free, total int64, on string, err error) {
	for {
		if _, err := os.Stat(dir); err == nil || filepath.Dir(dir) == dir {
			break
		}
		dir = filepath.Dir(dir)
	}
	free, total, err = FreeSpace(dir)
	return free, total, dir, err
}

// DatabaseOpenError is err, an error of badger opening its database in
// dir, with the reason the folder takes no writes chained in when it has
// one (read-only filesystem, no space, no permission). badger flattens
// the errors of its own opens into text, so without this a caller could
// not tell a filesystem the kernel made read-only (an operator's fix,
// after which the open succeeds) from a broken database.
func DatabaseOpenError(dir string, err error) error {
	if merr := os.MkdirAll(dir, 0o755); merr != nil {
		return fmt.Errorf("%w: %w", merr, err)
	}
	f, perr := os.CreateTemp(dir, ".write-probe-*")
	if perr != nil {
		return fmt.Errorf("%w: %w", perr, err)
	}
	f.Close()
	os.Remove(f.Name())
	return err
}
