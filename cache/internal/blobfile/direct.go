package blobfile

import (
	"io"
	"os"
)

// Direct writes: a push's bytes go from the copy buffer to the disk
// without passing through the page cache.
//
// On a push the machine's CPUs, not the disk, set the pace: the client,
// the network copy, sha256 and the write share them. A buffered write
// copies every byte into the page cache and later has the kernel write
// those pages back (write-back above); O_DIRECT hands the buffer to the
// disk as it is, which saves the copy, the page allocations and the
// write-back work for most of a blob's bytes. Only whole aligned blocks
// can go that way; a head or tail that is not aligned (in the file or in
// memory) goes through WriteBehind as before. The fsync at the end is
// still what makes the blob durable: a direct write may sit in the disk's
// cache, and the file's size and blocks are metadata.
//
// The cost: the pushed bytes are not in the page cache afterwards, so the
// first read of a fresh blob comes from the disk. Fills from an upstream
// (read while still arriving) keep using WriteBehind for that reason.

// directAlign is the alignment of file offset, memory and length a direct
// write needs: the largest logical block size of common disks.
const directAlign = 4096

// directWriter writes to f from offset off on, sequentially (the caller
// seeked f there): aligned whole blocks with O_DIRECT, the rest through
// behind.
type directWriter struct {
	f       *os.File
	behind  *writeBehindWriter
	direct  bool  // O_DIRECT is set on f
	failed  bool  // the filesystem refused O_DIRECT: buffered from here on
	nDirect int64 // bytes written directly (for tests)
}

// WriteDirect wraps f, positioned at off, for a long sequential write of
// a blob nobody reads until it is complete. Where the platform or the
// filesystem cannot write directly, it is WriteBehind. Call the returned
// done before using f otherwise (sync, truncate, close): it turns direct
// writes off again.
func WriteDirect(f *os.File, off int64) (w io.Writer, done func()) {
	if !canWriteDirect || !canWriteBehind {
		return WriteBehind(f, off), func() {}
	}
	d := &directWriter{f: f, behind: &writeBehindWriter{f: f, off: off, started: off, waited: off}}
	return d, d.done
}

func (w *directWriter) Write(p []byte) (int, error) {
	written := 0
	for written < len(p) {
		q := p[written:]
		if n := w.directPart(q); n > 0 {
			if err := w.setDirect(true); err == nil {
				m, err := w.f.Write(q[:n])
				written += m
				w.nDirect += int64(m)
				w.behind.skip(int64(m))
				if err == nil {
					continue
				}
				if m > 0 || !isDirectRefused(err) {
					return written, err
				}
				// Refused before any byte was written (the filesystem
				// takes the flag but not the write): buffered from here.
			}
			w.failed = true
		}
		if err := w.setDirect(false); err != nil {
			return written, err
		}
		// Buffered up to where a direct write may take over again: the
		// next aligned offset if the rest of q would then be aligned in
		// memory too, else all of q.
		n := len(q)
		if gap := int(-w.behind.off & (directAlign - 1)); gap > 0 && gap < n && aligned(q[gap:]) {
			n = gap
		}
		m, err := w.behind.Write(q[:n])
		written += m
		if err != nil {
			return written, err
		}
	}
	return written, nil
}

// directPart is how many bytes at the start of q can be written directly:
// whole blocks, from an aligned offset and an aligned address.
func (w *directWriter) directPart(q []byte) int {
	if w.failed || w.behind.off%directAlign != 0 || !aligned(q) {
		return 0
	}
	return len(q) &^ (directAlign - 1)
}

func (w *directWriter) setDirect(on bool) error {
	if w.direct == on {
		return nil
	}
	if err := setODirect(w.f, on); err != nil {
		return err // turning it on: not supported here, the caller writes buffered
	}
	w.direct = on
	return nil
}

func (w *directWriter) done() {
	if w.direct {
		// Failing to clear it leaves later writes to f direct, which
		// only makes unaligned ones fail: nobody writes f after this.
		_ = w.setDirect(false)
	}
}

// skip moves the write-behind writer past n bytes written directly: they
// need no write-back, so if nothing buffered is pending, write-back's
// bookkeeping moves on with them.
func (w *writeBehindWriter) skip(n int64) {
	if w.started == w.off {
		w.started += n
	}
	if w.waited == w.off {
		w.waited += n
	}
	w.off += n
}
