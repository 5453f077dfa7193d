package blobfile

// A spool is a blob written to a file once while any number of readers
// follow it: the fill of a mirror's blob, whose first client gets bytes
// as they arrive from upstream and whose later clients join the same
// copy. The writer reports progress (Begin, Copy, Verified, Finish); a
// Follower reads what is written so far and waits for the rest. The
// blob's last byte is held back from readers until the writer has
// verified the whole blob against its digest, so no reader is ever given
// a complete-looking copy of bytes that turn out wrong.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"runtime"
	"sync"
	"time"
)

// ErrOverrun: the source sent more bytes than the size it declared.
var ErrOverrun = errors.New("source sent more than its declared size")

type spoolState int

const (
	spoolStarting spoolState = iota // source not answered yet
	spoolWriting
	spoolCommitted
	spoolFailed
)

// Spool is the progress of one blob being written. Its zero value is not
// usable: NewSpool, or CommittedSpool for a blob that is already whole.
type Spool struct {
	ready chan struct{} // closed once the size is known or the write failed
	done  chan struct{} // closed once committed or failed

	mu       sync.Mutex
	notify   chan struct{} // closed and replaced on every change
	state    spoolState
	size     int64 // -1 unknown
	written  int64
	verified bool
	// head: the source's first bytes, which followers read from memory
	// until the file has them too (then nil). Never changed once set.
	head  []byte
	err   error
	start time.Time
	took  time.Duration
}

// NewSpool returns the spool of a write about to start.
func NewSpool() *Spool {
	return &Spool{
		ready: make(chan struct{}), done: make(chan struct{}), notify: make(chan struct{}),
		size: -1, start: time.Now(),
	}
}

// CommittedSpool is the spool of a blob of size bytes already whole.
func CommittedSpool(size int64) *Spool {
	s := NewSpool()
	s.state, s.size, s.written, s.verified = spoolCommitted, size, size, true
	close(s.ready)
	close(s.done)
	return s
}

// changed wakes every follower; mu is held.
func (s *Spool) changed() {
	close(s.notify)
	s.notify = make(chan struct{})
}

// Begin says the source answered with size bytes (-1: unknown) and
// writing starts.
func (s *Spool) Begin(size int64) {
	s.begin(size)
	yieldToFollowers()
}

// begin is Begin without the yield.
func (s *Spool) begin(size int64) {
	s.mu.Lock()
	s.state, s.size = spoolWriting, size
	close(s.ready)
	s.changed()
	s.mu.Unlock()
}

// yieldToFollowers lets the goroutines just woken (a follower waiting
// for the size, to send its response's headers, or for bytes, to send
// them) run before the writer reads on. Woken by the writer, a follower
// waits on the writer's own processor behind it, and a source that
// has its next bytes ready keeps the writer busy: on a loaded machine a
// cold GET's first byte then waited for a whole 16 MiB fill (15 ms).
func yieldToFollowers() { runtime.Gosched() }

// headMax bounds the source's first bytes a spool keeps in memory.
const headMax = 64 << 10

// BeginCopy is Begin and Copy for a writer whose followers should not
// wait for the disk: the source answered with size bytes (-1 unknown);
// BeginCopy reads its first piece and makes it (up to headMax) readable
// from memory at once, and only then gets dst from open and copies on.
// A cold GET's first byte so waits for no file create, write or read:
// under load each is a wait for the disk's journal or for a core
// between upstream's first byte and the client's. Followers are woken
// for the size and for the first piece by one yield, not two. size >= 0
// bounds the bytes (ErrOverrun past it). It returns the bytes copied.
func (s *Spool) BeginCopy(size int64, open func() (io.Writer, error), src io.Reader, h hash.Hash, buf []byte) (int64, error) {
	s.begin(size)
	var m int
	var rerr error
	for m == 0 && rerr == nil {
		m, rerr = src.Read(buf)
	}
	if m > 0 {
		if size >= 0 && int64(m) > size {
			return 0, fmt.Errorf("%w (%d bytes)", ErrOverrun, size)
		}
		s.mu.Lock()
		s.head = bytes.Clone(buf[:min(m, headMax)])
		s.changed()
		s.mu.Unlock()
	}
	yieldToFollowers()
	if rerr != nil && rerr != io.EOF {
		return 0, fmt.Errorf("read source after 0 bytes: %w", rerr)
	}
	dst, err := open()
	if err != nil {
		return 0, err
	}
	if m > 0 {
		if _, err := dst.Write(buf[:m]); err != nil {
			return 0, fmt.Errorf("write: %w", err)
		}
		h.Write(buf[:m])
		s.mu.Lock()
		s.written, s.head = int64(m), nil // the file has them now
		s.changed()
		s.mu.Unlock()
		yieldToFollowers()
	}
	if rerr == io.EOF {
		return int64(m), nil
	}
	return s.copyFrom(int64(m), dst, src, h, size, buf)
}

// Copy copies src to dst through buf, hashing into h and telling
// followers of every piece once dst has it. size >= 0 bounds the bytes
// (ErrOverrun past it). It returns the bytes copied.
func (s *Spool) Copy(dst io.Writer, src io.Reader, h hash.Hash, size int64, buf []byte) (int64, error) {
	return s.copyFrom(0, dst, src, h, size, buf)
}

// copyFrom is Copy once n bytes are written. When buf is a big buffer
// and the budget has more, it runs as a pipeline (copyPipelined): the
// source is read, the file written and the bytes hashed side by side, so
// a cold pull's last byte waits for the slowest of the three, not for
// their sum. Each piece goes on as the source delivers it, as in turn.
func (s *Spool) copyFrom(n int64, dst io.Writer, src io.Reader, h hash.Hash, size int64, buf []byte) (int64, error) {
	in := &spoolSource{r: src, n: n, size: size}
	out := &spoolProgress{s: s, w: dst, n: n}
	if bufs := moreBigBufs(buf); len(bufs) > 1 {
		// A failed write ends the copy at once, as in turn: the read
		// then under way may wait for a slow source (up to its stall
		// timeout), so a source that can be closed is, which ends it.
		// (The caller still closes it: closing twice is allowed.)
		if c, ok := src.(io.Closer); ok {
			out.failed = func() { c.Close() }
		}
		defer putBufs(bufs)
		_, err := copyPipelined(out, h, in.readPiece, bufs)
		return out.n, err
	}
	for {
		m, rerr := in.Read(buf)
		if m > 0 {
			if _, err := out.Write(buf[:m]); err != nil {
				return out.n, err
			}
			h.Write(buf[:m])
		}
		if rerr == io.EOF {
			return out.n, nil
		}
		if rerr != nil {
			return out.n, rerr
		}
	}
}

// spoolSource is a spool's source, past its first n bytes: it fails with
// ErrOverrun rather than give a byte past size (>= 0), and says how far
// it got when it fails.
type spoolSource struct {
	r    io.Reader
	n    int64
	size int64
}

func (r *spoolSource) Read(p []byte) (int, error) {
	m, err := r.r.Read(p)
	if r.size >= 0 && r.n+int64(m) > r.size {
		return 0, fmt.Errorf("%w (%d bytes)", ErrOverrun, r.size)
	}
	r.n += int64(m)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("read source after %d bytes: %w", r.n, err)
	}
	return m, err
}

// readPiece reads what the source has, at least one byte unless it
// ends or fails.
func (r *spoolSource) readPiece(p []byte) (int, error) {
	for {
		m, err := r.Read(p)
		if m > 0 || err != nil {
			return m, err
		}
	}
}

// spoolProgress writes a spool's bytes to its file and tells followers
// of every piece once the file has it.
type spoolProgress struct {
	s      *Spool
	w      io.Writer
	n      int64
	failed func() // if set, called when a write fails
}

func (p *spoolProgress) Write(b []byte) (int, error) {
	m, err := p.w.Write(b)
	if m > 0 {
		p.n += int64(m)
		p.s.mu.Lock()
		p.s.written = p.n
		p.s.changed()
		p.s.mu.Unlock()
		yieldToFollowers()
	}
	if err != nil {
		if p.failed != nil {
			p.failed()
		}
		return m, fmt.Errorf("write: %w", err)
	}
	return m, nil
}

// Verified says every byte is in and matched the digest: followers may
// have the last byte, and the size is n from now on.
func (s *Spool) SetVerified(n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.verified, s.size = true, n
	s.changed()
}

// Finish ends the write: committed when err is nil, else failed with err.
func (s *Spool) Finish(err error) {
	s.mu.Lock()
	s.took = time.Since(s.start)
	if err != nil {
		s.state, s.err = spoolFailed, err
	} else {
		s.state = spoolCommitted
	}
	select {
	case <-s.ready:
	default:
		close(s.ready)
	}
	s.changed()
	s.mu.Unlock()
	close(s.done)
}

// Ready waits until the source answered and returns the blob's size (-1
// when unknown), or the write's error if it failed first.
func (s *Spool) Ready(ctx context.Context) (int64, error) {
	select {
	case <-s.ready:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == spoolFailed {
		return 0, s.err
	}
	return s.size, nil
}

// Wait waits until the write committed (nil) or failed (its error).
func (s *Spool) Wait(ctx context.Context) error {
	select {
	case <-s.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Verified reports whether every byte is in and matched the digest.
func (s *Spool) Verified() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.verified
}

// Done is closed once the write committed or failed.
func (s *Spool) Done() <-chan struct{} { return s.done }

// Duration is how long the write took, once Done.
func (s *Spool) Duration() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.took
}

// Failed returns the write's error once it failed, else nil.
func (s *Spool) Failed() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == spoolFailed {
		return s.err
	}
	return nil
}

// Committed reports whether the write committed.
func (s *Spool) Committed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state == spoolCommitted
}

// Follow returns a reader of file (the spool's file, or the committed
// blob's) that follows the write from offset 0 under ctx.
func (s *Spool) Follow(ctx context.Context, file io.ReaderAt) *Follower {
	return &Follower{s: s, ctx: ctx, file: file}
}

// Follower reads a spool's file at its own offset, up to what the writer
// has written, waiting for more. Not safe for concurrent use.
type Follower struct {
	s    *Spool
	ctx  context.Context
	file io.ReaderAt
	off  int64
	err  error // the write's failure, once seen
}

// Read implements io.Reader.
func (r *Follower) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		s := r.s
		s.mu.Lock()
		state, avail, size, ch, serr, verified, head := s.state, s.written, s.size, s.notify, s.err, s.verified, s.head
		s.mu.Unlock()
		avail = max(avail, int64(len(head)))
		switch state {
		case spoolFailed:
			r.err = serr
			return 0, serr
		case spoolWriting:
			if size >= 0 && avail >= size && !verified {
				avail = size - 1 // held back until verified
			}
		}
		if r.off < avail {
			n := min(int64(len(p)), avail-r.off)
			if r.off < int64(len(head)) {
				m := copy(p[:n], head[r.off:])
				r.off += int64(m)
				return m, nil
			}
			m, err := r.file.ReadAt(p[:n], r.off)
			r.off += int64(m)
			if err == io.EOF && m > 0 {
				err = nil
			}
			if err != nil && err != io.EOF {
				// Bytes are missing: whoever serves them must not
				// end as if the blob were whole.
				r.err = err
			}
			return m, err
		}
		if state == spoolCommitted || (verified && size >= 0) {
			return 0, io.EOF
		}
		select {
		case <-ch:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
}

// Seek implements io.Seeker. Seeking from the end needs the size.
func (r *Follower) Seek(offset int64, whence int) (int64, error) {
	var base int64
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		base = r.off
	case io.SeekEnd:
		r.s.mu.Lock()
		size := r.s.size
		r.s.mu.Unlock()
		if size < 0 {
			return 0, errors.New("spool: size unknown")
		}
		base = size
	default:
		return 0, errors.New("spool: bad whence")
	}
	if base+offset < 0 {
		return 0, errors.New("spool: negative position")
	}
	r.off = base + offset
	return r.off, nil
}

// Err is the write's failure if this reader saw it: what was read must
// then not be presented as the whole blob.
func (r *Follower) Err() error { return r.err }
