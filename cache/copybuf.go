package cache

import (
	"io"
	"sync"
)

// Copy buffers of the write paths (pushes, fills, the hash of a recovered
// upload). Their memory is bounded whatever the number of clients: big
// buffers come out of a fixed budget, and once it is spent a write gets a
// small one, which costs it a few more read, write and hash calls but no
// memory beyond smallBufSize per write in flight. A blob that declares a
// small size never takes a big buffer.
const (
	// copyBufSize is a big buffer: large enough that the per-call cost
	// of read, write and hash is lost in the bytes.
	copyBufSize = 1 << 20
	// smallBufSize is the buffer of a small blob or of a write past the
	// budget.
	smallBufSize = 32 << 10
	// bigBufBudget is how many big buffers are out at once across the
	// process (bigBufBudget*copyBufSize = 16 MiB).
	bigBufBudget = 16
)

var (
	bigBufs   = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}
	smallBufs = sync.Pool{New: func() any { b := make([]byte, smallBufSize); return &b }}
	// bigOut holds a token for each big buffer handed out.
	bigOut = make(chan struct{}, bigBufBudget)
)

// getBuf returns a buffer for copying size bytes (size < 0: unknown): a
// big one if size needs it and the budget has one left, else a small one.
// Give it back with putBuf.
func getBuf(size int64) *[]byte {
	if size < 0 || size > smallBufSize {
		if bp := tryBigBuf(); bp != nil {
			return bp
		}
	}
	return smallBufs.Get().(*[]byte)
}

// tryBigBuf returns a big buffer, or nil when the budget is spent.
func tryBigBuf() *[]byte {
	select {
	case bigOut <- struct{}{}:
		return bigBufs.Get().(*[]byte)
	default:
		return nil
	}
}

// putBuf gives back a buffer from getBuf or tryBigBuf.
func putBuf(bp *[]byte) {
	if cap(*bp) == copyBufSize {
		bigBufs.Put(bp)
		<-bigOut
		return
	}
	smallBufs.Put(bp)
}

// copyBuf copies r to w through a buffer from getBuf.
func copyBuf(w io.Writer, r io.Reader, size int64) (int64, error) {
	bp := getBuf(size)
	defer putBuf(bp)
	// Hide any WriterTo/ReaderFrom so the buffer is what is used.
	return io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{r}, *bp)
}
