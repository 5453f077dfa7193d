package cache

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/internal/blobfile"
)

// StatBlob reports whether the blob exists in the content store, regardless
// of which repositories link it. ErrBlobUnknown when absent, and when its
// file's length is not the one recorded when it was installed (cut short
// behind the store's back: that file is not the blob's bytes; the error
// wraps blobstore.ErrSizeMismatch).
func (s *Store) StatBlob(ctx context.Context, d Digest) (BlobInfo, error) {
	if err := checkDigest(d); err != nil {
		return BlobInfo{}, fmt.Errorf("%w: %w", ErrBlobUnknown, err)
	}
	var size blobSize
	err := s.db.View(func(txn *badger.Txn) error {
		var err error
		size, err = readBlobSize(txn, d)
		return err
	})
	if err != nil {
		return BlobInfo{}, fmt.Errorf("cache: read blob size: %w", err)
	}
	return s.statBlob(d, size)
}

// statBlob is StatBlob with the length recorded for d read already.
func (s *Store) statBlob(d Digest, size blobSize) (BlobInfo, error) {
	fi, err := os.Stat(s.blobPath(d))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return BlobInfo{}, fmt.Errorf("%w: %s", ErrBlobUnknown, d)
		}
		return BlobInfo{}, fmt.Errorf("cache: stat blob: %w", err)
	}
	if size.known && fi.Size() != size.n {
		return BlobInfo{}, fmt.Errorf("%w: %w: %s: its file has %d bytes, %d were installed",
			ErrBlobUnknown, blobstore.ErrSizeMismatch, d, fi.Size(), size.n)
	}
	return BlobInfo{Digest: d, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// blobSize is the length recorded for a blob when it was installed; not
// known for blobs installed before lengths were recorded.
type blobSize struct {
	n     int64
	known bool
}

// readBlobSize reads the length recorded for d.
func readBlobSize(txn *badger.Txn, d Digest) (blobSize, error) {
	item, err := txn.Get(blobSizeKey(d))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return blobSize{}, nil
	}
	if err != nil {
		return blobSize{}, err
	}
	var size blobSize
	err = item.Value(func(v []byte) error {
		if len(v) == 8 {
			size = blobSize{n: int64(binary.BigEndian.Uint64(v)), known: true}
		}
		return nil
	})
	return size, err
}

// setBlobSize records size as the length of blob d. A digest names one
// content, so the record is never wrong for a later install of d.
func setBlobSize(txn *badger.Txn, d Digest, size int64) error {
	return txn.Set(blobSizeKey(d), binary.BigEndian.AppendUint64(nil, uint64(size)))
}

// OpenBlob opens a committed blob for reading, for http.ServeContent.
// ErrBlobUnknown when absent. The Blob is the blob's file (fileBlob), so
// that io.Copy and http.ServeContent from it reach net/http's sendfile.
func (s *Store) OpenBlob(ctx context.Context, d Digest) (blobstore.Blob, error) {
	f, err := s.openBlobFile(d)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("cache: stat blob: %w", err)
	}
	return &fileBlob{File: f, size: fi.Size()}, nil
}

// openBlobFile opens the file of a committed blob. ErrBlobUnknown when
// absent.
func (s *Store) openBlobFile(d Digest) (*os.File, error) {
	if err := checkDigest(d); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBlobUnknown, err)
	}
	f, err := os.Open(s.blobPath(d))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s", ErrBlobUnknown, d)
		}
		return nil, fmt.Errorf("cache: open blob: %w", err)
	}
	return f, nil
}

// fileBlob is an open blob file with its size. It embeds the *os.File
// rather than hiding it, so that what net/http's sendfile path looks for
// stays within reach: File.WriteTo for io.Copy of the whole blob, and
// syscall.Conn on the reader behind ServeContent's io.LimitedReader.
type fileBlob struct {
	*os.File
	size int64
}

// Size is the blob's length in bytes.
func (b *fileBlob) Size() int64 { return b.size }

// PutBlob writes r to the content store if its bytes hash to want (and, if
// size >= 0, are exactly size bytes long): temp file, hash while writing,
// verify, fsync, rename. The blob becomes visible only complete and
// verified; on any error nothing is visible. If the blob already exists the
// bytes are still read and verified, then discarded. Returns the size.
// It does not link the blob to any repository. The bytes count against
// the upload limits while they are written (ErrUploadTooLarge,
// ErrUploadSpace), as a session's do.
func (s *Store) PutBlob(ctx context.Context, want Digest, size int64, r io.Reader) (int64, error) {
	if err := checkDigest(want); err != nil {
		return 0, err
	}
	if max := s.uploadLimits().MaxBlobSize; max > 0 && size > max {
		return 0, fmt.Errorf("%w: %d bytes declared, the limit is %d", ErrUploadTooLarge, size, max)
	}
	if err := s.space.Admit(size); err != nil {
		return 0, err
	}
	f, err := s.createTemp()
	if err != nil {
		return 0, err
	}
	tmp := f.Name()
	defer s.pushes.Add(func() { os.Remove(tmp) })()
	committed := false
	defer func() {
		if !committed {
			f.Close()
			os.Remove(tmp)
		}
	}()

	src := r
	if size >= 0 {
		// One byte more than declared is enough to tell "too long".
		src = io.LimitReader(r, size+1)
	}
	m := s.meter(src, "", 0)
	defer func() { s.release(m.reserved, m.owner) }()
	h := want.Algorithm.New()
	dw := blobfile.WriteBehind(f, 0)
	n, err := blobfile.CopyHashing(s.space.Writer(dw), h, m, size)
	if err != nil {
		return 0, fmt.Errorf("cache: write blob: %w", err)
	}
	if size >= 0 && n != size {
		return 0, fmt.Errorf("%w: declared %d, got %d bytes", ErrSizeMismatch, size, n)
	}
	if got := FromHash(want.Algorithm, h); got != want {
		return 0, fmt.Errorf("%w: want %s, got %s", ErrDigestMismatch, want, got)
	}
	if s.touchExisting(want, n) {
		// Verified, and the store has it already: no need to sync ours.
		return n, nil
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("cache: sync blob: %w", err)
	}
	if err := f.Close(); err != nil {
		return 0, fmt.Errorf("cache: close blob: %w", err)
	}
	committed = true // from here on, install owns tmp
	if err := s.install(tmp, want, n); err != nil {
		os.Remove(tmp)
		return 0, err
	}
	return n, nil
}

// createTemp makes a new file under tmp/ with a random name.
func (s *Store) createTemp() (*os.File, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("cache: random: %w", err)
	}
	name := filepath.Join(s.tmpDir, hex.EncodeToString(b[:]))
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cache: temp file: %w", err)
	}
	return f, nil
}

// install moves the verified, synced file src, of size bytes, to d's
// place in the content store. If d is already there src is dropped and the
// existing file is touched, so a blob pushed again restarts its grace
// period and GC does not take it before the caller links it.
func (s *Store) install(src string, d Digest, size int64) error {
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	_, err := s.installLocked(src, d, size)
	return err
}

// touchExisting reports whether blob d is in the store, size bytes long,
// restarting its grace period if so (see install).
func (s *Store) touchExisting(d Digest, size int64) bool {
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	return s.touchFileLocked(d, size)
}

// touchFileLocked is touchExisting for callers already holding gcMu for
// reading. A file of another length than size is not d's bytes (cut short
// by a broken tool, a restore, a full disk's repair): it reports false, so
// the verified bytes in hand are installed over it and a push heals it.
//
// While a scrub reads d's file it reports false too: the file may be the
// damaged one the scrub is about to move to quarantine, and keeping it
// would drop the good bytes of a write it then acknowledged. Installed
// over it instead, they are what the scrub finds there and leaves.
func (s *Store) touchFileLocked(d Digest, size int64) bool {
	if s.beingScrubbed(d) {
		return false
	}
	p := s.blobPath(d)
	if fi, err := os.Stat(p); err != nil || fi.Size() != size {
		return false
	}
	now := time.Now()
	return os.Chtimes(p, now, now) == nil
}

// installLocked is install for callers already holding gcMu for reading.
// created reports whether src became the file (false: d was there, size
// bytes long).
func (s *Store) installLocked(src string, d Digest, size int64) (created bool, err error) {
	dst := s.blobPath(d)
	if s.touchFileLocked(d, size) {
		if err := os.Remove(src); err != nil {
			s.log.Warn("remove duplicate blob data", zap.String("file", src), zap.Error(err))
		}
		return false, nil
	}
	// A GC candidate until linked; marked before it appears, so a crash
	// cannot leave it unmarked. Its length is recorded with the mark, for
	// StatBlob to tell the file cut short later.
	err = s.update(func(txn *badger.Txn) error {
		if err := markBlob(txn, d); err != nil {
			return err
		}
		return setBlobSize(txn, d, size)
	})
	if err != nil {
		return false, fmt.Errorf("cache: mark gc candidate: %w", err)
	}
	dir := filepath.Dir(dst)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("cache: %w", err)
	}
	if err := os.Rename(src, dst); err != nil {
		return false, fmt.Errorf("cache: commit blob: %w", err)
	}
	if err := blobfile.SyncDir(dir); err != nil {
		return true, fmt.Errorf("cache: sync blob dir: %w", err)
	}
	return true, nil
}
