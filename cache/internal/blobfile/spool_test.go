package blobfile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
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

// failingWriter accepts limit bytes, then fails.
type failingWriter struct {
	memFile
	limit int
	err   error
}

func (f *failingWriter) Write(p []byte) (int, error) {
	if len(f.buf)+len(p) > f.limit {
		return 0, f.err
	}
	return f.memFile.Write(p)
}

// Copy gives its followers the whole blob, and refuses a source that
// sends more than its size, one that fails and a file that fails, with
// the cause; with a small buffer (in turn) as with a big one (the
// pipeline).
func TestSpoolCopyOutcomes(t *testing.T) {
	content := bytes.Repeat([]byte("0123456789abcdef"), 5<<16) // 5 MiB
	size := int64(len(content))
	boom, full := errors.New("upstream reset"), errors.New("disk full")
	for _, bufSize := range []int{SmallBufSize, CopyBufSize} {
		for _, tc := range []struct {
			name  string
			src   io.Reader
			file  *failingWriter
			want  error  // nil: the whole blob
			wrote string // what the file must hold then
		}{
			{name: "whole", src: bytes.NewReader(content), want: nil},
			{name: "overrun", src: io.MultiReader(bytes.NewReader(content), bytes.NewReader([]byte("x"))), want: ErrOverrun},
			{name: "source fails", src: io.MultiReader(bytes.NewReader(content[:3<<20]), iotest.ErrReader(boom)), want: boom},
			{name: "file fails", src: bytes.NewReader(content), file: &failingWriter{limit: 2 << 20, err: full}, want: full},
		} {
			t.Run(fmt.Sprintf("%s/buf=%d", tc.name, bufSize), func(t *testing.T) {
				buf := make([]byte, SmallBufSize) // in turn
				if bufSize == CopyBufSize {
					bp := GetBuf(-1)
					defer PutBuf(bp)
					if buf = *bp; cap(buf) != CopyBufSize {
						t.Skip("no big buffer left in the budget")
					}
				}
				file := tc.file
				if file == nil {
					file = &failingWriter{limit: math.MaxInt}
				}
				s := NewSpool()
				s.Begin(size)
				h := sha256.New()
				n, err := s.Copy(file, tc.src, h, size, buf)
				if !errors.Is(err, tc.want) {
					t.Fatalf("Copy: %d bytes, %v; want %v", n, err, tc.want)
				}
				if n != int64(len(file.buf)) || n > size || !bytes.Equal(file.buf, content[:n]) {
					t.Fatalf("Copy says %d bytes; the file holds %d, not the blob's start", n, len(file.buf))
				}
				if err != nil {
					s.Finish(err)
					r := s.Follow(context.Background(), file)
					if _, err := io.Copy(io.Discard, r); !errors.Is(err, tc.want) {
						t.Fatalf("follower: %v, want %v", err, tc.want)
					}
					return
				}
				if n != size || !bytes.Equal(h.Sum(nil), sha256Of(content)) {
					t.Fatalf("copied %d of %d bytes, hash matches: %v", n, size, bytes.Equal(h.Sum(nil), sha256Of(content)))
				}
				s.SetVerified(n)
				s.Finish(nil)
				got, err := io.ReadAll(s.Follow(context.Background(), file))
				if err != nil || !bytes.Equal(got, content) {
					t.Fatalf("follower read %d bytes, %v", len(got), err)
				}
			})
		}
	}
}

func sha256Of(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// gatedHash blocks its first Write until gate is closed.
type gatedHash struct {
	hash.Hash
	first bool
	gate  chan struct{}
	late  bool // the gate stayed shut 5 s
}

func (g *gatedHash) Write(p []byte) (int, error) {
	if !g.first {
		g.first = true
		select {
		case <-g.gate:
		case <-time.After(5 * time.Second):
			g.late = true
		}
	}
	return g.Hash.Write(p)
}

// notifyWriter closes second on its second Write.
type notifyWriter struct {
	memFile
	writes int
	second chan struct{}
}

func (w *notifyWriter) Write(p []byte) (int, error) {
	if w.writes++; w.writes == 2 {
		close(w.second)
	}
	return w.memFile.Write(p)
}

// With a big buffer, a spool's copy hashes one piece while it writes the
// next: the file's second piece goes out while the hash of the first is
// still busy (here: waits for it). In turn, the second write would wait
// for the first hash, which waits for the second write.
func TestSpoolCopyHashesBesideWrites(t *testing.T) {
	bp := GetBuf(-1)
	defer PutBuf(bp)
	if cap(*bp) != CopyBufSize {
		t.Skip("no big buffer left in the budget")
	}
	content := bytes.Repeat([]byte("x"), 4<<20)
	second := make(chan struct{})
	file := &notifyWriter{second: second}
	h := &gatedHash{Hash: sha256.New(), gate: second}
	s := NewSpool()
	s.Begin(int64(len(content)))
	// 1 MiB a read: the pipeline's pieces are the source's.
	if _, err := s.Copy(file, halfReader{bytes.NewReader(content)}, h, int64(len(content)), *bp); err != nil {
		t.Fatal(err)
	}
	if h.late {
		t.Fatal("the file's second piece waited for the hash of the first")
	}
	if !bytes.Equal(h.Sum(nil), sha256Of(content)) {
		t.Fatal("hash differs")
	}
}

// halfReader reads at most 1 MiB a call.
type halfReader struct{ r io.Reader }

func (h halfReader) Read(p []byte) (int, error) { return h.r.Read(p[:min(len(p), 1<<20)]) }
