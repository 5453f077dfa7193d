package cache

import (
	"io"
	"sync"
)

// copyHashing copies r to w and feeds the same bytes to h, as a pipeline
// of three stages on buffers of copyBufSize: while one buffer is being
// hashed, the next is written and the one after is read. On a push the
// hash, the disk write (which may wait for write-back, see writeBehind)
// and the network read are the big costs; done in turn they add up, side
// by side the slowest sets the pace. Each buffer is filled before it moves
// on, so the file and the hash see few, large calls whatever sizes the
// network delivers. The bytes reach h in order and only once written, so
// the result equals io.Copy(io.MultiWriter(w, h), r). On an error the
// first one is returned (a write's before a read's) with the bytes written.
func copyHashing(w, h io.Writer, r io.Reader) (int64, error) {
	const depth = 4 // buffers in flight: a few MiB, whatever the blob size
	free := make(chan *[]byte, depth)
	for range depth {
		free <- bufPool.Get().(*[]byte)
	}
	toWrite := make(chan []byte, depth)
	toHash := make(chan []byte, depth)
	recycle := func(b []byte) { b = b[:cap(b)]; free <- &b }

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
		var bp *[]byte
		select {
		case bp = <-free:
		case <-failed:
		}
		if bp == nil {
			break
		}
		var nr int
		nr, rerr = fill(r, *bp)
		if nr > 0 {
			toWrite <- (*bp)[:nr]
		} else {
			free <- bp
		}
	}
	close(toWrite)
	written.Wait()
	hashed.Wait()
	for range depth {
		bufPool.Put(<-free)
	}
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
