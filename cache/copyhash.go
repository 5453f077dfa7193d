package cache

import (
	"io"
)

// copyHashing copies r to w and feeds the same bytes to h, hashing one
// buffer while the next is read and written. On a push the hash and the
// disk write are the two big costs; done in turn they add up, done side by
// side the slower one sets the pace. The bytes reach h in order, so the
// result equals io.Copy(io.MultiWriter(w, h), r).
func copyHashing(w, h io.Writer, r io.Reader) (int64, error) {
	const depth = 4 // buffers in flight: a few MiB, whatever the blob size
	free := make(chan *[]byte, depth)
	for range depth {
		free <- bufPool.Get().(*[]byte)
	}
	toHash := make(chan []byte, depth)
	hashed := make(chan struct{})
	go func() {
		defer close(hashed)
		for b := range toHash {
			h.Write(b)
			bp := b[:cap(b)]
			free <- &bp
		}
	}()

	var n int64
	var err error
	for {
		bp := <-free
		buf := *bp
		nr, rerr := r.Read(buf)
		if nr > 0 {
			nw, werr := w.Write(buf[:nr])
			n += int64(nw)
			if werr == nil && nw != nr {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				err = werr
				free <- bp
				break
			}
			toHash <- buf[:nr]
		} else {
			free <- bp
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
	for range depth {
		bufPool.Put(<-free)
	}
	return n, err
}
