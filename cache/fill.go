package cache

// Fill-once-read-many: a blob fetched from elsewhere (a mirror's upstream)
// is written into the store by one goroutine while any number of readers
// follow the growing temp file. The fill runs on the store's context, not a
// client's, so a client that goes away does not stop it; the bytes are
// verified against the digest before the same install path as PutBlob makes
// them visible, and a failed or mismatched fill leaves nothing behind.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache/internal/blobfile"
)

// ErrFillFailed wraps the reason a fill did not commit (the source broke,
// sent too much or too little, or the bytes did not match the digest).
// Readers that see it must not present what they read as complete.
var ErrFillFailed = errors.New("blob fill failed")

// FillSource opens the content of a blob for a fill: its bytes and their
// size (-1 when unknown). It is called once, on the fill's own goroutine,
// with a context that ends only when the store closes.
type FillSource func(ctx context.Context) (body io.ReadCloser, size int64, err error)

// Fill is one blob on its way into a store from elsewhere, written once
// while any number of requests follow it. Get one with Store.Fill; read it
// with Reader. It is an interface so that a store whose fills are
// coordinated across processes can hand out its own. All methods are safe
// for concurrent use.
type Fill interface {
	// Digest is the blob being filled.
	Digest() Digest
	// Repo is the repository the fill was started for, which its source
	// fetches from and its result is linked into; empty for the wait for
	// a fill another process runs (a replica's, for a name not known
	// here), which asks no source anything for any name.
	Repo() string
	// Ready waits until the source answered and returns the blob's size
	// (-1 when the source did not say); the fill's error if it failed
	// first.
	Ready(ctx context.Context) (int64, error)
	// Wait waits until the fill committed (nil) or failed (its error).
	Wait(ctx context.Context) error
	// Verified reports whether every byte is in and matched the digest:
	// the fill is only committing, and its readers may have had every
	// byte.
	Verified() bool
	// Done is closed when the fill committed or failed.
	Done() <-chan struct{}
	// Duration is how long the fill took, once Done.
	Duration() time.Duration
	// Reader returns a reader of the blob that follows the fill: it waits
	// for bytes not written yet (or for ctx), gives the last byte of a
	// blob of known size only once the whole blob is verified against the
	// digest, and fails with an error wrapping ErrFillFailed if the fill
	// does. (A fill that fails after verification, while committing, has
	// given its readers correct bytes; they keep them.) It waits for
	// Ready first. Close it when done.
	Reader(ctx context.Context) (FillReader, error)
}

// FillReader reads a blob while it is being filled. It is an
// io.ReadSeeker (for http.ServeContent) when the size is known; seeking
// from the end fails while it is not.
type FillReader interface {
	io.ReadSeekCloser
	// Err is the fill's failure if this reader saw it: what was read
	// must then not be presented as the whole blob.
	Err() error
}

// fileFill is this store's Fill: the blob is written to a temp file in
// the store, which its readers follow (blobfile.Spool), and installed as
// PutBlob's are.
type fileFill struct {
	*blobfile.Spool
	s    *Store
	d    Digest
	repo string

	mu  sync.Mutex
	tmp string // the temp file while it is one
}

// Fill returns the fill of blob d: the one in progress if there is one,
// else a new fill from src, whose result is linked into repo once
// committed. If the blob is in the store already the Fill returned is
// committed at once and src is not called. started reports whether this
// call started the fill.
func (s *Store) Fill(ctx context.Context, repo string, d Digest, src FillSource) (f Fill, started bool, err error) {
	return s.FillAdmitted(ctx, repo, d, src, nil)
}

// FillAdmit decides whether a new fill may start: it returns the release
// of what the fill takes (a slot among a bounded number), called once the
// fill is done, or an error that keeps the fill from starting. It is
// called under the store's fill lock, so it must not block.
type FillAdmit func() (release func(), err error)

// FillAdmitted is Fill, asking admit (nil: always yes) before it starts a
// fill; joining a fill in progress or finding the blob stored asks
// nothing. admit's error is returned as is.
func (s *Store) FillAdmitted(ctx context.Context, repo string, d Digest, src FillSource, admit FillAdmit) (Fill, bool, error) {
	if err := checkName("repository", repo); err != nil {
		return nil, false, err
	}
	if err := checkDigest(d); err != nil {
		return nil, false, err
	}
	s.fillMu.Lock()
	defer s.fillMu.Unlock()
	if f := s.fills[d]; f != nil {
		return f, false, nil
	}
	if info, err := s.StatBlob(ctx, d); err == nil {
		return &fileFill{Spool: blobfile.CommittedSpool(info.Size), s: s, d: d, repo: repo}, false, nil
	}
	f := &fileFill{Spool: blobfile.NewSpool(), s: s, d: d, repo: repo}
	select {
	case <-s.stop:
		return nil, false, errors.New("cache: store closed")
	default:
	}
	// Not even asked of the source while the store has no room.
	if err := s.space.Admit(-1); err != nil {
		return nil, false, err
	}
	release := func() {}
	if admit != nil {
		var err error
		if release, err = admit(); err != nil {
			return nil, false, err
		}
	}
	s.fills[d] = f
	s.wg.Add(1)
	go func() {
		defer release()
		f.run(src)
	}()
	return f, true, nil
}

// Filling returns the fill of blob d in progress, or nil.
func (s *Store) Filling(ctx context.Context, d Digest) Fill {
	if f := s.filling(d); f != nil {
		return f
	}
	return nil // not a nil *fileFill, which is no nil Fill
}

func (s *Store) filling(d Digest) *fileFill {
	s.fillMu.Lock()
	defer s.fillMu.Unlock()
	return s.fills[d]
}

// Fills reports the number of fills in progress.
func (s *Store) Fills() int {
	s.fillMu.Lock()
	defer s.fillMu.Unlock()
	return len(s.fills)
}

// Digest implements Fill.
func (f *fileFill) Digest() Digest { return f.d }

// Repo implements Fill.
func (f *fileFill) Repo() string { return f.repo }

func (f *fileFill) run(src FillSource) {
	defer f.s.wg.Done()
	err := f.fill(src)
	if err != nil {
		err = fmt.Errorf("%w: %s: %w", ErrFillFailed, f.d, err)
		// A source that never opened (upstream said no: a probe for a blob
		// it lacks, say) is the caller's to report; anyone can cause it,
		// so it must not flood the log at warn. A fill that broke while
		// writing is worth a warning.
		log := f.s.log.Debug
		f.mu.Lock()
		if f.tmp != "" {
			os.Remove(f.tmp)
			log = f.s.log.Warn
		}
		f.mu.Unlock()
		log("blob fill failed", zap.String("repo", f.repo), zap.String("digest", f.d.String()), zap.Error(err))
	}
	// Out of the map before Done, so whoever Done wakes finds the blob
	// (or starts afresh), never this finished fill.
	f.s.fillMu.Lock()
	delete(f.s.fills, f.d)
	f.s.fillMu.Unlock()
	f.Finish(err)
}

// fill copies the source into a temp file, verifies and installs it.
func (f *fileFill) fill(src FillSource) error {
	// Made while the source's request is in flight (see PendingFile); a
	// source that fails costs a create and a remove.
	create := f.s.createTemp
	if gate := f.s.fillTempGate; gate != nil {
		create = func() (*os.File, error) { gate(); return f.s.createTemp() }
	}
	tmp := blobfile.CreateAsync(create)
	body, size, err := src(f.s.ctx)
	if err != nil {
		tmp.Drop()
		return err
	}
	defer body.Close()
	if err := f.s.space.Admit(size); err != nil {
		tmp.Drop()
		return err
	}
	// The file is taken once followers have the first bytes (BeginCopy):
	// its create may still be waiting for the filesystem.
	var file *os.File
	defer func() {
		if file != nil {
			file.Close()
		} else {
			tmp.Drop()
		}
	}()
	open := func() (io.Writer, error) {
		var err error
		if file, err = tmp.Take(); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrFillSpool, err)
		}
		f.mu.Lock()
		f.tmp = file.Name()
		f.mu.Unlock()
		return spoolWriter{f.s.space.Writer(blobfile.WriteBehind(file, 0))}, nil
	}
	h := f.d.Algorithm.New()
	bp := blobfile.GetBuf(size)
	defer blobfile.PutBuf(bp)
	buf := (*bp)[:min(len(*bp), 256<<10)] // readers see progress sooner
	n, err := f.BeginCopy(size, open, body, h, buf)
	if errors.Is(err, blobfile.ErrOverrun) {
		return fmt.Errorf("%w: %w", ErrSizeMismatch, err)
	}
	if err != nil {
		return fmt.Errorf("cache: fill: %w", err)
	}
	if size >= 0 && n != size {
		return fmt.Errorf("%w: source declared %d, sent %d bytes", ErrSizeMismatch, size, n)
	}
	if got := FromHash(f.d.Algorithm, h); got != f.d {
		return fmt.Errorf("%w: want %s, got %s", ErrDigestMismatch, f.d, got)
	}
	f.SetVerified(n)
	if gate := f.s.fillCommitGate; gate != nil {
		gate()
	}
	if err := file.Sync(); err != nil {
		return fmt.Errorf("cache: sync fill: %w", err)
	}
	f.s.gcMu.RLock()
	defer f.s.gcMu.RUnlock()
	created, err := f.s.installLocked(file.Name(), f.d, n)
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.tmp = "" // the file now lives at its digest's place
	f.mu.Unlock()
	f.s.mirrorMu.RLock()
	defer f.s.mirrorMu.RUnlock()
	if err := f.s.linkBlobLocked(f.repo, f.d); err != nil {
		// Content is in; the next request links it.
		f.s.log.Warn("link filled blob", zap.String("repo", f.repo), zap.Error(err))
	} else if created {
		f.s.mirrorCommitted(f.repo, f.d, n)
	}
	return nil
}

// spoolWriter is a fill's local copy, its write errors marked
// ErrFillSpool so that they are told apart from the source's read errors.
type spoolWriter struct{ w io.Writer }

func (s spoolWriter) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	if err != nil {
		err = fmt.Errorf("%w: %w", ErrFillSpool, err)
	}
	return n, err
}

// Reader implements Fill. The reader holds the blob against eviction
// until it is closed.
func (f *fileFill) Reader(ctx context.Context) (FillReader, error) {
	if _, err := f.Ready(ctx); err != nil {
		return nil, err
	}
	// Held until Close: eviction never takes a blob someone reads.
	f.s.hold(f.d)
	held := true
	defer func() {
		if held {
			f.s.unhold(f.d)
		}
	}()
	if err := f.Failed(); err != nil {
		return nil, err
	}
	held = false // the reader's now
	r := &fileFillReader{f: f, ctx: ctx}
	// The file is opened when a read first needs it: the fill's first
	// bytes are read from memory (BeginCopy), and a cold GET's first
	// byte waits for no open.
	r.Follower = f.Follow(ctx, readerAtFunc(r.readAt))
	return r, nil
}

// open opens the fill's file: the temp file while it is being written,
// else the installed blob.
func (f *fileFill) open() (*os.File, error) {
	var file *os.File
	var err error
	f.mu.Lock()
	tmp := f.tmp
	f.mu.Unlock()
	// The install renames the temp file: once it is gone from tmp/ the
	// verified blob is at its digest's place.
	if tmp != "" && !f.Committed() {
		file, err = os.Open(tmp)
	}
	if file == nil && (err == nil || errors.Is(err, fs.ErrNotExist)) {
		file, err = f.s.openBlobFile(f.d)
	}
	if err != nil {
		return nil, fmt.Errorf("cache: open fill: %w", err)
	}
	return file, nil
}

// readerAtFunc is a function as an io.ReaderAt.
type readerAtFunc func(p []byte, off int64) (int, error)

func (fn readerAtFunc) ReadAt(p []byte, off int64) (int, error) { return fn(p, off) }

// fileFillReader is fileFill's FillReader: a follower of the fill's file
// that holds the blob against eviction until closed.
type fileFillReader struct {
	*blobfile.Follower
	f      *fileFill
	ctx    context.Context
	file   *os.File // nil until a read needs it
	closed bool
}

// readAt reads the fill's file, opened on first use. A follower asks
// only for bytes the fill has written, so the file is there: the temp
// file, or the blob it became.
func (r *fileFillReader) readAt(p []byte, off int64) (int, error) {
	if r.file == nil {
		if r.closed {
			return 0, errors.New("cache: read of a closed fill reader")
		}
		file, err := r.f.open()
		if err != nil {
			// Neither the temp file nor the blob: the fill failed
			// and removed its file, or is about to say so. Its own
			// error is the answer, as it is to a reader that opened
			// the file before.
			select {
			case <-r.f.Done():
			case <-r.ctx.Done():
				return 0, r.ctx.Err()
			}
			if ferr := r.f.Failed(); ferr != nil {
				return 0, ferr
			}
			if file, err = r.f.open(); err != nil {
				return 0, err
			}
		}
		r.file = file
	}
	return r.file.ReadAt(p, off)
}

// Close releases the reader's file and its hold on the blob; the fill
// goes on.
func (r *fileFillReader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	r.f.s.unhold(r.f.d)
	if r.file == nil {
		return nil
	}
	return r.file.Close()
}
