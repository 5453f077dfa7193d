package blobfile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"runtime"
	"sync"
	"testing"
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
