package blobfile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"runtime"
	"sync"
	"testing"
	"testing/iotest"
	"time"
)

// memFile is a spool's file in memory: a writer no syscall interrupts,
// so only the spool's own yielding lets a follower run beside it.
type memFile struct {
	mu  sync.Mutex
	buf []byte
}

func (f *memFile) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.buf = append(f.buf, p...)
	return len(p), nil
}

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return copy(p, f.buf[off:]), nil
}

// A follower waiting for the first bytes gets them while the writer is
// still copying, even on one processor with a source that never makes
// the writer wait: a cold GET's first byte must not wait for the fill.
func TestSpoolFollowerRunsBesideWriter(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	content := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	s := NewSpool()
	file := &memFile{}
	firstAt := make(chan int64, 1)
	go func() {
		r := s.Follow(context.Background(), file)
		if _, err := s.Ready(context.Background()); err != nil {
			firstAt <- -1
			return
		}
		var b [1]byte
		if _, err := r.Read(b[:]); err != nil {
			firstAt <- -1
			return
		}
		s.mu.Lock()
		firstAt <- s.written
		s.mu.Unlock()
	}()
	runtime.Gosched() // the follower waits for Ready
	s.Begin(int64(len(content)))
	if _, err := s.Copy(file, bytes.NewReader(content), sha256.New(), int64(len(content)), make([]byte, 16<<10)); err != nil {
		t.Fatal(err)
	}
	s.SetVerified(int64(len(content)))
	s.Finish(nil)
	if at := <-firstAt; at < 0 || at >= int64(len(content)) {
		t.Fatalf("the follower's first byte came once %d of %d bytes were written", at, len(content))
	}
}

// BeginCopy gives followers the source's first piece from memory while
// the file is still to be opened, and still holds back the last byte
// until the writer verified the blob: a blob that fits in the first
// piece is never handed out whole before its digest matched.
func TestSpoolBeginCopyFirstPieceBeforeFile(t *testing.T) {
	content := []byte("a small blob, read by its first piece")
	s := NewSpool()
	file := &memFile{}
	opened := make(chan struct{})
	open := func() (io.Writer, error) { <-opened; return file, nil }
	copied := make(chan error, 1)
	go func() {
		h := sha256.New()
		_, err := s.BeginCopy(int64(len(content)), open, bytes.NewReader(content), h, make([]byte, 4096))
		copied <- err
	}()
	r := s.Follow(context.Background(), file)
	if _, err := s.Ready(context.Background()); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1024)
	n, err := r.Read(b)
	if err != nil || !bytes.Equal(b[:n], content[:len(content)-1]) {
		t.Fatalf("first read before the file: %q, %v; want all but the last byte", b[:n], err)
	}
	// The last byte waits for the verification, which waits for the file.
	last := make(chan []byte, 1)
	go func() {
		n, _ := r.Read(b)
		last <- b[:n]
	}()
	select {
	case got := <-last:
		t.Fatalf("the last byte %q came before the blob was verified", got)
	case <-time.After(50 * time.Millisecond):
	}
	close(opened)
	if err := <-copied; err != nil {
		t.Fatal(err)
	}
	s.SetVerified(int64(len(content)))
	s.Finish(nil)
	if got := <-last; !bytes.Equal(got, content[len(content)-1:]) {
		t.Fatalf("last read %q, want %q", got, content[len(content)-1:])
	}
	if n, err := r.Read(b); n != 0 || err != io.EOF {
		t.Fatalf("after the blob: %d, %v; want EOF", n, err)
	}
	if !bytes.Equal(file.buf, content) {
		t.Fatalf("file holds %q", file.buf)
	}
}

// A source that fails before its first byte fails BeginCopy without a
// file, and its followers see the failure once the writer reports it.
func TestSpoolBeginCopySourceFails(t *testing.T) {
	s := NewSpool()
	boom := errors.New("upstream reset")
	open := func() (io.Writer, error) { t.Error("file opened for a source that sent nothing"); return nil, nil }
	_, err := s.BeginCopy(10, open, iotest.ErrReader(boom), sha256.New(), make([]byte, 64))
	if !errors.Is(err, boom) {
		t.Fatalf("BeginCopy: %v, want %v", err, boom)
	}
	s.Finish(err)
	r := s.Follow(context.Background(), &memFile{})
	if _, err := r.Read(make([]byte, 8)); !errors.Is(err, boom) || !errors.Is(r.Err(), boom) {
		t.Fatalf("follower: %v (Err %v), want %v", err, r.Err(), boom)
	}
}
