package blobfile

import (
	"io"
	"sync"
)

// pipelineDepth is the most buffers one CopyHashing keeps in flight.
const pipelineDepth = 4

// CopyHashing copies r to w and feeds the same bytes to h. size is what r
// holds (< 0: unknown); it only picks the buffers. With big buffers to
// spare (copybuf.go) it runs as a pipeline (copyPipelined); with one
// buffer it reads, writes and hashes in turn. The bytes reach h in order,
// so the result equals io.Copy(io.MultiWriter(w, h), r).
func CopyHashing(w, h io.Writer, r io.Reader, size int64) (int64, error) {
	if size >= 0 {
		return copyHashingSized(w, h, r, size)
	}
	// Of unknown size (a PUT with the blob as its body declares none to
	// the store) is most often a small blob: a config, a small layer. Its
	// start goes through a small buffer, and big ones are taken only if
	// more follows, so many small pushes at once do not hold the big
	// buffers' budget (or grow the heap) for a few KiB each.
	sp := GetBuf(SmallBufSize)
	defer PutBuf(sp)
	nr, rerr := fill(r, *sp)
	var n int64
	if nr > 0 {
		nw, err := w.Write((*sp)[:nr])
		n = int64(nw)
		if err == nil && nw != nr {
			err = io.ErrShortWrite
		}
		if err != nil {
			return n, err
		}
		h.Write((*sp)[:nr])
	}
	if rerr == io.EOF {
		return n, nil
	}
	if rerr != nil {
		return n, rerr
	}
	m, err := copyHashingSized(w, h, r, -1)
	return n + m, err
}

// copyHashingSized is CopyHashing with buffers picked by size alone.
func copyHashingSized(w, h io.Writer, r io.Reader, size int64) (int64, error) {
	first := GetBuf(size)
	bufs := []*[]byte{first}
	if cap(*first) == CopyBufSize && (size < 0 || size > CopyBufSize) {
		for len(bufs) < pipelineDepth {
			bp := tryBigBuf()
			if bp == nil {
				break
			}
			bufs = append(bufs, bp)
		}
	}
	defer func() {
		for _, bp := range bufs {
			PutBuf(bp)
		}
	}()
	if len(bufs) == 1 {
		return copyBuffer(io.MultiWriter(w, h), r, *first)
	}
	pipe := make([][]byte, len(bufs))
	for i, bp := range bufs {
		pipe[i] = *bp
	}
	return copyPipelined(w, h, func(b []byte) (int, error) { return fill(r, b) }, pipe)
}

// moreBigBufs returns first with up to pipelineDepth-1 more big buffers
// from the budget, when first is a big buffer itself (else first alone).
// Give the others back with putBufs.
func moreBigBufs(first []byte) [][]byte {
	bufs := [][]byte{first}
	if cap(first) != CopyBufSize {
		return bufs
	}
	for len(bufs) < pipelineDepth {
		bp := tryBigBuf()
		if bp == nil {
			break
		}
		bufs = append(bufs, *bp)
	}
	return bufs
}

// putBufs gives back the buffers moreBigBufs took (all but the first).
func putBufs(bufs [][]byte) {
	for _, b := range bufs[1:] {
		b = b[:cap(b)]
		PutBuf(&b)
	}
}

// copyBuffer is io.CopyBuffer with buf always used (no WriterTo or
// ReaderFrom short cut).
func copyBuffer(w io.Writer, r io.Reader, buf []byte) (int64, error) {
	return io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{r}, buf)
}

// copyPipelined is CopyHashing as three stages on bufs: while one buffer
// is being hashed, the next is written and the one after is read. On a
// push the hash, the disk write (which may wait for write-back, see
// WriteBehind) and the network read are the big costs; done in turn they
// add up, side by side the slowest sets the pace. Each buffer is filled
// before it moves on, so the file and the hash see few, large calls
// whatever sizes the network delivers. The bytes reach h in order and
// only once written. On an error the first one is returned (a write's
// before a read's) with the bytes written. read fills one buffer: to the
// brim (fill), or with what one read brings (a spool, whose followers
// wait for each piece).
func copyPipelined(w, h io.Writer, read func([]byte) (int, error), bufs [][]byte) (int64, error) {
	depth := len(bufs)
	free := make(chan []byte, depth)
	for _, b := range bufs {
		free <- b[:cap(b)]
	}
	toWrite := make(chan []byte, depth)
	toHash := make(chan []byte, depth)
	recycle := func(b []byte) { free <- b[:cap(b)] }

	var (
		n       int64
		werr    error
		failed  = make(chan struct{}) // closed on the first write error
		written sync.WaitGroup
		hashed  sync.WaitGroup
	)
	written.Add(1)
	go func() {
		defer written.Done()
		defer close(toHash)
		for b := range toWrite {
			if werr != nil {
				recycle(b)
				continue
			}
			nw, err := w.Write(b)
			n += int64(nw)
			if err == nil && nw != len(b) {
				err = io.ErrShortWrite
			}
			if err != nil {
				werr = err
				close(failed)
				recycle(b)
				continue
			}
			toHash <- b
		}
	}()
	hashed.Add(1)
	go func() {
		defer hashed.Done()
		for b := range toHash {
			h.Write(b)
			recycle(b)
		}
	}()

	var rerr error
	for rerr == nil {
		var buf []byte
		select {
		case buf = <-free:
		case <-failed:
		}
		if buf == nil {
			break
		}
		var nr int
		nr, rerr = read(buf)
		if nr > 0 {
			toWrite <- buf[:nr]
		} else {
			free <- buf
		}
	}
	close(toWrite)
	written.Wait()
	hashed.Wait()
	if werr != nil {
		return n, werr
	}
	if rerr == io.EOF {
		rerr = nil
	}
	return n, rerr
}

// fill reads from r until buf is full or r fails (io.EOF included), and
// returns what it read with that error. Unlike io.ReadFull it hands back
// r's own error, so a body cut short stays told apart from its end.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
