package blobfile

import (
	"io"
	"sync"
)

// Copy buffers of the write paths (pushes, fills, the hash of a recovered
// upload). Their memory is bounded whatever the number of clients: big
// buffers come out of a fixed budget, and once it is spent a write gets a
// small one, which costs it a few more read, write and hash calls but no
// memory beyond SmallBufSize per write in flight. A blob that declares a
// small size never takes a big buffer.
const (
	// CopyBufSize is a big buffer: large enough that the per-call cost
	// of read, write and hash is lost in the bytes.
	CopyBufSize = 1 << 20
	// SmallBufSize is the buffer of a small blob or of a write past the
	// budget.
	SmallBufSize = 32 << 10
	// bigBufBudget is how many big buffers are out at once across the
	// process (bigBufBudget*CopyBufSize = 16 MiB).
	bigBufBudget = 16
)

var (
	bigBufs   = sync.Pool{New: func() any { b := make([]byte, CopyBufSize); return &b }}
	smallBufs = sync.Pool{New: func() any { b := make([]byte, SmallBufSize); return &b }}
	// bigOut holds a token for each big buffer handed out.
	bigOut = make(chan struct{}, bigBufBudget)
)

// GetBuf returns a buffer for copying size bytes (size < 0: unknown): a
// big one if size needs it and the budget has one left, else a small one.
// Give it back with PutBuf.
func GetBuf(size int64) *[]byte {
	if size < 0 || size > SmallBufSize {
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

// PutBuf gives back a buffer from GetBuf or tryBigBuf.
func PutBuf(bp *[]byte) {
	if cap(*bp) == CopyBufSize {
		bigBufs.Put(bp)
		<-bigOut
		return
	}
	smallBufs.Put(bp)
}

// CopyBuf copies r to w through a buffer from GetBuf.
func CopyBuf(w io.Writer, r io.Reader, size int64) (int64, error) {
	bp := GetBuf(size)
	defer PutBuf(bp)
	// Hide any WriterTo/ReaderFrom so the buffer is what is used.
	return io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{r}, *bp)
}
