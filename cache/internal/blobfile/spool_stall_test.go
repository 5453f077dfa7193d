package blobfile

import (
	"crypto/sha256"
	"errors"
	"sync"
	"testing"
	"time"
)

// stallingBody gives one piece, then blocks until closed, as a response
// body from an upstream that went quiet does.
type stallingBody struct {
	first  bool
	closed chan struct{}
	once   sync.Once
}

func (s *stallingBody) Read(p []byte) (int, error) {
	if !s.first {
		s.first = true
		return min(len(p), 1<<20), nil
	}
	<-s.closed
	return 0, errors.New("read on closed body")
}

func (s *stallingBody) Close() error {
	s.once.Do(func() { close(s.closed) })
	return nil
}

// A file that fails ends the copy at once, as in turn, even while the
// source has nothing more to give (a slow upstream): the pipeline's read
// under way is ended by closing the source.
func TestSpoolCopyFileFailsWhileSourceStalls(t *testing.T) {
	bp := GetBuf(-1)
	defer PutBuf(bp)
	if cap(*bp) != CopyBufSize {
		t.Skip("no big buffer left in the budget")
	}
	full := errors.New("disk full")
	src := &stallingBody{closed: make(chan struct{})}
	defer src.Close()
	s := NewSpool()
	s.Begin(8 << 20)
	done := make(chan error, 1)
	go func() {
		_, err := s.Copy(&failingWriter{limit: 0, err: full}, src, sha256.New(), 8<<20, *bp)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, full) {
			t.Fatalf("Copy: %v, want %v", err, full)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the file failed, and Copy still waits for the source 2 s later")
	}
}
