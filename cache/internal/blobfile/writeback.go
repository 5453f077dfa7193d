package blobfile

import (
	"io"
	"os"
)

// Write-behind: a push's bytes go to disk while the rest still arrives.
//
// A blob is acknowledged only after fsync, and the fsync of a file written
// at full speed into the page cache has all of it still to write: most of
// what separates a push from hash + write without fsync. The writer below
// asks the kernel to start writing back every window as soon as it is
// written, and waits for the window lag bytes behind to be on disk before
// going on, so the dirty pages of one push stay bounded (a few windows)
// and the final fsync finds little left. The fsync is still what makes
// the blob durable: starting write-back early only moves work forward
// (and fsync also flushes the metadata and the disk's cache, which the
// ranges do not).
const (
	WriteBehindWindow = 8 << 20  // bytes written before write-back starts on them
	WriteBehindLag    = 32 << 20 // how far behind the newest byte the writer waits for the disk
)

// writeBehindWriter writes to f from offset off on, sequentially (the
// caller seeked f there), starting write-back as it goes.
type writeBehindWriter struct {
	f       *os.File
	off     int64 // offset of the next byte written
	started int64 // write-back started on [.., started)
	waited  int64 // [.., waited) is on disk
}

// WriteBehind wraps f, positioned at off, for a long sequential write.
// Where the platform cannot start write-back early, it writes through.
func WriteBehind(f *os.File, off int64) io.Writer {
	if !canWriteBehind {
		return f
	}
	return &writeBehindWriter{f: f, off: off, started: off, waited: off}
}

func (w *writeBehindWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.off += int64(n)
	if err != nil {
		return n, err
	}
	if w.off-w.started < WriteBehindWindow {
		return n, nil
	}
	// A failure here is an I/O error the final fsync might no longer
	// report (the kernel tells each error once), so it fails the write.
	if err := startWriteback(w.f, w.started, w.off-w.started); err != nil {
		return n, err
	}
	w.started = w.off
	if behind := w.started - WriteBehindLag; behind > w.waited {
		if err := waitWriteback(w.f, w.waited, behind-w.waited); err != nil {
			return n, err
		}
		w.waited = behind
	}
	return n, nil
}
