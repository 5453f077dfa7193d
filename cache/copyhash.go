package cache

import (
	"io"
)

// pipelineDepth is the most buffers one copyHashing keeps in flight.
const pipelineDepth = 4

// copyHashing copies r to w and feeds the same bytes to h. size is what r
// holds (< 0: unknown); it only picks the buffers. With big buffers to
// spare (copybuf.go) it hashes one buffer while the next is read and
// written: on a push the hash and the disk write are the two big costs;
// done in turn they add up, done side by side the slower one sets the
// pace. With one buffer it does them in turn. The bytes reach h in order,
// so the result equals io.Copy(io.MultiWriter(w, h), r).
func copyHashing(w, h io.Writer, r io.Reader, size int64) (int64, error) {
	first := getBuf(size)
	bufs := []*[]byte{first}
	if cap(*first) == copyBufSize && (size < 0 || size > copyBufSize) {
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
			putBuf(bp)
		}
	}()
	if len(bufs) == 1 {
		return copyBuffer(io.MultiWriter(w, h), r, *first)
	}
	return copyPipelined(w, h, r, bufs)
}

// copyBuffer is io.CopyBuffer with buf always used (no WriterTo or
// ReaderFrom short cut).
func copyBuffer(w io.Writer, r io.Reader, buf []byte) (int64, error) {
	return io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{r}, buf)
}

// copyPipelined is copyHashing with the hash on a goroutine of its own,
// bufs passing between the two.
func copyPipelined(w, h io.Writer, r io.Reader, bufs []*[]byte) (int64, error) {
	free := make(chan []byte, len(bufs))
	for _, bp := range bufs {
		free <- *bp
	}
	toHash := make(chan []byte, len(bufs))
	hashed := make(chan struct{})
	go func() {
		defer close(hashed)
		for b := range toHash {
			h.Write(b)
			free <- b[:cap(b)]
		}
	}()

	var n int64
	var err error
	for {
		buf := <-free
		nr, rerr := r.Read(buf)
		if nr > 0 {
			nw, werr := w.Write(buf[:nr])
			n += int64(nw)
			if werr == nil && nw != nr {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				err = werr
				break
			}
			toHash <- buf[:nr]
		} else {
			free <- buf
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			err = rerr
			break
		}
	}
	close(toHash)
	<-hashed
	return n, err
}
