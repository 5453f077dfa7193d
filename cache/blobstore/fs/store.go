// Package fs keeps blobs in a local (or shared) folder, with the layout
// package cache has always written, so a folder moves between the two:
//
//	blobs/<alg>/<2 hex>/<hex>   verified blobs, each written whole
//	uploads/<id>                the bytes of a write session so far
//	tmp/<random>                a Put's bytes before they are verified
//
// A blob file never holds unverified bytes: a Put writes to tmp/, a
// session to uploads/, and either is renamed to its blob path only after
// its digest (and size) matched and the file was fsynced; the folder is
// fsynced after the rename. Any number of Stores, in one process or in
// several sharing the folder, may work on it at once: a session lives in
// its file plus its State, so any of them continues it.
package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/internal/backend"
	"github.com/caddy-oci/caddy-oci/cache/internal/blobfile"
)

// Options say where the blobs go.
type Options struct {
	// Dir is the folder; blobs/, uploads/ and tmp/ are made inside it.
	Dir string
	// Logger receives what cannot be returned (a leftover file that could
	// not be removed) and the reserve's state changes. Nil: no log.
	Logger *zap.Logger
	// Reserve is the free space blob bytes leave on Dir's filesystem:
	// a Put or Append that would cross it fails with ErrStorageFull and
	// leaves nothing, as package cache's writes do (the same
	// cache.SpaceReserve). The zero value reserves nothing and measures
	// nothing.
	Reserve Reserve
	// SpaceObserver, if set, sees the free space whenever it is measured.
	SpaceObserver SpaceObserver
}

// Reserve and SpaceObserver are package cache's SpaceReserve and
// SpaceObserver: one definition for both writers of the folder.
type (
	Reserve       = blobfile.Reserve
	SpaceObserver = blobfile.SpaceObserver
)

// ErrStorageFull is cache.ErrStorageFull: a write refused by the reserve,
// or by the filesystem itself (ENOSPC, EDQUOT, which stay in the chain).
var ErrStorageFull = blobfile.ErrStorageFull

// asStorageFull makes the filesystem's "no space" the contract's
// ErrStorageFull: a disk filled with no reserve configured, or past the
// reserve by writers racing for the last bytes, refuses a push as the
// reserve does and as an object store's 507 does.
func asStorageFull(err error) error {
	if err != nil && !errors.Is(err, ErrStorageFull) && blobfile.IsNoSpace(err) {
		return fmt.Errorf("%w: %w", ErrStorageFull, err)
	}
	return err
}

// IsStorageFull reports whether err comes from a full storage: the
// reserve refused the bytes, or the filesystem did.
func IsStorageFull(err error) bool { return blobfile.IsStorageFull(err) }

// Store is a blobstore.Store on one folder. Safe for concurrent use.
type Store struct {
	blobsDir   string
	uploadsDir string
	tmpDir     string
	log        *zap.Logger
	space      *blobfile.Space // nil: no reserve
	// puts are the temporary files of Puts in flight (UndoInFlight).
	puts blobfile.InFlight
}

// UndoInFlight removes the temporary files of the Puts in flight, for the
// close of the store over this folder (see blobfile.InFlight), and
// returns how many there were. Those Puts fail; nothing else changes.
func (s *Store) UndoInFlight() int { return s.puts.UndoAll() }

// New makes the folders if needed and returns a Store on opts.Dir.
func New(opts Options) (*Store, error) {
	if opts.Dir == "" {
		return nil, errors.New("fs: no folder")
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	s := &Store{
		blobsDir:   filepath.Join(opts.Dir, "blobs"),
		uploadsDir: filepath.Join(opts.Dir, "uploads"),
		tmpDir:     filepath.Join(opts.Dir, "tmp"),
		log:        log,
	}
	// The fan-out folders are made once here, as package cache does, so a
	// commit only renames.
	dirs := []string{s.uploadsDir, s.tmpDir}
	for _, alg := range []blobstore.Algorithm{blobstore.SHA256, blobstore.SHA512} {
		for i := range 256 {
			dirs = append(dirs, filepath.Join(s.blobsDir, string(alg), fmt.Sprintf("%02x", i)))
		}
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("fs: %w", err)
		}
	}
	if opts.Reserve != (Reserve{}) {
		s.space = blobfile.NewSpace(opts.Dir, opts.Reserve, log, opts.SpaceObserver)
	}
	return s, nil
}

// blobPath is where blob d lives. d must be valid.
func (s *Store) blobPath(d blobstore.Digest) string {
	return filepath.Join(s.blobsDir, string(d.Algorithm), d.Hex[:2], d.Hex)
}

// Stat implements blobstore.Reader.
func (s *Store) Stat(ctx context.Context, d blobstore.Digest) (blobstore.Info, error) {
	if err := d.Validate(); err != nil {
		return blobstore.Info{}, err
	}
	fi, err := os.Stat(s.blobPath(d))
	if err != nil {
		return blobstore.Info{}, blobErr("stat", d, err)
	}
	return blobstore.Info{Digest: d, Size: fi.Size()}, nil
}

// fileBlob is an open blob. It embeds the *os.File so that what
// http.ServeContent hands to the connection still offers SyscallConn, and
// net/http sends the file with sendfile.
type fileBlob struct {
	*os.File
	size int64
}

func (b fileBlob) Size() int64 { return b.size }

// What net/http's sendfile looks for behind the io.LimitedReader that
// http.ServeContent wraps around a blob.
var _ syscall.Conn = fileBlob{}

// Open implements blobstore.Reader. ctx plays no part: a local read is
// not waited on.
func (s *Store) Open(ctx context.Context, d blobstore.Digest) (blobstore.Blob, error) {
	f, size, err := s.open(d)
	if err != nil {
		return nil, err
	}
	return fileBlob{File: f, size: size}, nil
}

func (s *Store) open(d blobstore.Digest) (*os.File, int64, error) {
	if err := d.Validate(); err != nil {
		return nil, 0, err
	}
	f, err := os.Open(s.blobPath(d))
	if err != nil {
		return nil, 0, blobErr("open", d, err)
	}
	// The size of the file opened, not of whatever the path names later.
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, blobErr("stat", d, err)
	}
	return f, fi.Size(), nil
}

// OpenRange implements blobstore.Reader.
func (s *Store) OpenRange(ctx context.Context, d blobstore.Digest, offset, length int64) (io.ReadCloser, error) {
	if err := d.Validate(); err != nil {
		return nil, err
	}
	if offset < 0 || length == 0 || length < -1 {
		return nil, fmt.Errorf("%w: offset %d, length %d", blobstore.ErrRange, offset, length)
	}
	f, size, err := s.open(d)
	if err != nil {
		return nil, err
	}
	if length == -1 {
		length = size - offset
	}
	if offset >= size || length > size-offset { // not offset+length: it may overflow

		f.Close()
		return nil, fmt.Errorf("%w: %d bytes at %d of %s (%d bytes)", blobstore.ErrRange, length, offset, d, size)
	}
	return struct {
		io.Reader
		io.Closer
	}{io.NewSectionReader(f, offset, length), f}, nil
}

// Put implements blobstore.Putter: temp file, hash while writing, verify,
// fsync, rename, fsync the folder. The bytes of a blob the folder holds
// already are verified all the same, then dropped.
func (s *Store) Put(ctx context.Context, d blobstore.Digest, size int64, r io.Reader) (_ blobstore.Info, err error) {
	defer func() { err = asStorageFull(err) }()
	if err := d.Validate(); err != nil {
		return blobstore.Info{}, err
	}
	if size >= 0 {
		r = io.LimitReader(r, size+1) // one byte more tells "too long"
	}
	r = ctxReader{ctx, r}
	if err := s.space.Admit(size); err != nil {
		return blobstore.Info{}, err
	}
	h := d.Algorithm.New()
	f, err := s.createTemp()
	if err != nil {
		return blobstore.Info{}, err
	}
	tmp := f.Name()
	defer s.puts.Add(func() { os.Remove(tmp) })()
	installed := false
	defer func() {
		if !installed {
			f.Close()
			os.Remove(tmp) // gone already when install moved it
		}
	}()
	dw := blobfile.WriteBehind(f, 0)
	n, err := blobfile.CopyHashing(s.space.Writer(dw), h, r, size)
	if err != nil {
		return blobstore.Info{}, fmt.Errorf("fs: put %s: %w", d, err)
	}
	if err := backend.Verify(d, size, n, h); err != nil {
		return blobstore.Info{}, err
	}
	if s.touch(d, n) {
		// Verified, and the folder has it already: ours need not be synced.
		return blobstore.Info{Digest: d, Size: n}, nil
	}
	if err := f.Sync(); err != nil {
		return blobstore.Info{}, fmt.Errorf("fs: put %s: sync: %w", d, err)
	}
	if err := f.Close(); err != nil {
		return blobstore.Info{}, fmt.Errorf("fs: put %s: close: %w", d, err)
	}
	if err := s.install(tmp, d, n); err != nil {
		return blobstore.Info{}, err
	}
	installed = true
	return blobstore.Info{Digest: d, Size: n}, nil
}

// createTemp makes a new file under tmp/ with a random name.
func (s *Store) createTemp() (*os.File, error) {
	name, err := backend.RandomID()
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(s.tmpDir, name), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("fs: temp file: %w", err)
	}
	return f, nil
}

// install moves the verified, synced file src, of size bytes, to d's
// place. If d is there already, as long, its bytes stay and src goes; the
// blob's time is set to now, as package cache does, because cache's GC
// counts its grace period from it. A file of another length at d's place
// is not d (cut short by a broken tool or a restore): src replaces it. On
// an error src may still be there: the caller removes a temp file and
// keeps a session's, so the session can try again.
func (s *Store) install(src string, d blobstore.Digest, size int64) error {
	if s.touch(d, size) {
		if err := os.Remove(src); err != nil {
			s.log.Warn("remove duplicate blob data", zap.String("file", src), zap.Error(err))
		}
		return nil
	}
	dst := s.blobPath(d)
	dir := filepath.Dir(dst)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("fs: commit %s: %w", d, err)
	}
	// Two writers of one digest may both get here: rename replaces, and
	// both files hold the same verified bytes.
	if err := os.Rename(src, dst); err != nil {
		return fmt.Errorf("fs: commit %s: %w", d, err)
	}
	if err := blobfile.SyncDir(dir); err != nil {
		return fmt.Errorf("fs: commit %s: sync folder: %w", d, err)
	}
	return nil
}

// touch reports whether blob d exists, size bytes long, setting its time
// to now if so. A file of another length is damaged, not d: the caller
// writes d over it.
func (s *Store) touch(d blobstore.Digest, size int64) bool {
	p := s.blobPath(d)
	if fi, err := os.Stat(p); err != nil || fi.Size() != size {
		return false
	}
	now := time.Now()
	return os.Chtimes(p, now, now) == nil
}

// Delete implements blobstore.Deleter.
func (s *Store) Delete(ctx context.Context, d blobstore.Digest) error {
	if err := d.Validate(); err != nil {
		return err
	}
	if err := os.Remove(s.blobPath(d)); err != nil && !errors.Is(err, iofs.ErrNotExist) {
		return fmt.Errorf("fs: delete %s: %w", d, err)
	}
	return nil
}

// blobErr turns a file error about blob d into the contract's.
func blobErr(op string, d blobstore.Digest, err error) error {
	if errors.Is(err, iofs.ErrNotExist) {
		return fmt.Errorf("%w: %s", blobstore.ErrNotFound, d)
	}
	return fmt.Errorf("fs: %s %s: %w", op, d, err)
}

// ctxReader stops a long copy once its request is gone.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

var _ blobstore.Store = (*Store)(nil)
