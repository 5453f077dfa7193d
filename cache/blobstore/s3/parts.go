package s3

import (
	"bytes"
	"context"
	"io"
	"sync"
)

// partData is a part ready to go to S3: in memory (memPart) or in a local
// file (partFile).
type partData interface {
	body() io.ReadSeeker // from its start, each call (a retry sends it again)
	len() int64
	crc32c() string
}

// memPart is a part in memory.
type memPart []byte

func (m memPart) body() io.ReadSeeker { return bytes.NewReader(m) }
func (m memPart) len() int64          { return int64(len(m)) }
func (m memPart) crc32c() string      { return crc32cOf(m) }

// partsInFlight is how many parts of one upload go to S3 at once while the
// next one fills from the client. One would leave the client waiting
// for every part's upload (and S3 waiting for every part's bytes); a few
// overlap both. Each costs a part's local file (partfile.go).
const partsInFlight = 2

// partWriter uploads the parts of one multipart upload in the background,
// numbered in the order they are given, at most partsInFlight at once.
type partWriter struct {
	s        *Store
	ctx      context.Context
	key      string
	uploadID string
	crc      bool // the upload was created with CRC-32C part checksums
	next     int  // number of the next part
	slots    chan struct{}
	wg       sync.WaitGroup

	mu    sync.Mutex
	parts []uploadedPart // first.., by index
	first int
	err   error
}

func (s *Store) newPartWriter(ctx context.Context, key, uploadID string, crc bool, first int) *partWriter {
	return &partWriter{
		s: s, ctx: ctx, key: key, uploadID: uploadID, crc: crc, next: first, first: first,
		slots: make(chan struct{}, partsInFlight),
	}
}

// failed is the first upload's failure so far.
func (w *partWriter) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// send uploads part as the next part, once a slot is free, and calls done
// once it has gone (or failed). It returns the failure of an earlier
// part, if any, and then uploads nothing (done is called).
func (w *partWriter) send(part partData, done func()) error {
	select {
	case w.slots <- struct{}{}:
	case <-w.ctx.Done():
		done()
		return w.ctx.Err()
	}
	if err := w.failed(); err != nil {
		<-w.slots
		done()
		return err
	}
	number := w.next
	w.next++
	w.mu.Lock()
	w.parts = append(w.parts, uploadedPart{})
	w.mu.Unlock()
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer func() { <-w.slots }()
		p, err := w.s.uploadPart(w.ctx, w.key, w.uploadID, number, part, w.crc)
		done()
		w.mu.Lock()
		defer w.mu.Unlock()
		if err != nil && w.err == nil {
			w.err = err
		}
		w.parts[number-w.first] = p
	}()
	return nil
}

// wait waits for every upload and returns the parts in order, or the
// first failure. No upload runs once it returns.
func (w *partWriter) wait() ([]uploadedPart, error) {
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.parts, w.err
}
