// Package readcache keeps copies of blobs read from a remote blob store
// (S3) in a local folder, so that a blob read again is served from disk,
// by sendfile, instead of over the network. It wraps any blobstore.Store
// and is one replica's own: nothing in it is shared or needs to be.
//
// A blob enters the cache as it is read: the first whole read streams from
// the backend to the caller while the same bytes go to a temp file, which
// becomes the cached copy only when every byte arrived in order and they
// hash to the digest. A partial read, a seek elsewhere, a backend that
// breaks off or sends other bytes: the temp file is dropped, never kept.
// Above the size limit the least recently read copies are removed.
//
// Writes, stats, ranges and sessions go to the backend untouched; a
// cached copy answers only Open and OpenRecorded. Stat in particular
// always asks the backend, since callers use it to learn whether the
// bytes are still stored. Open of a cached copy asks the backend too (a
// HEAD or two, no bytes): another replica may have deleted the blob, and a
// deleted blob must not be served from a copy. When the backend cannot
// answer at all (S3 down), the copy is served: its bytes are the digest's
// whatever S3 holds. OpenRecorded, for a caller whose metadata says the
// blob is stored (package composite, which checks the blob's record on
// every read, and whose GC takes the record away before the bytes), asks
// the backend nothing: a warm read is the local file alone. A copy of a
// blob another replica's GC deleted is then never asked for, and leaves
// as the least recently read.
//
// Layout: <dir>/<alg>/<hex> for cached copies, <dir>/tmp/ for copies being
// written (left-overs removed at start). The sizes are counted at start by scanning
// the folder, oldest modification first, and a read sets a copy's
// modification time, so the order survives a restart.
package readcache

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/internal/blobfile"
)

// Options configure a Store.
type Options struct {
	// Dir holds the copies. It is created if missing.
	Dir string
	// MaxBytes bounds the copies' total size. A blob larger than this is
	// never cached.
	MaxBytes int64
	Logger   *zap.Logger
}

// Store is a blobstore.Store that serves Open from local copies of the
// backend's blobs when it has them. Safe for concurrent use. One Store
// per folder: two would count the same files twice.
type Store struct {
	blobstore.Store // the backend; everything but Open and Delete goes there

	dir, tmp string
	max      int64
	log      *zap.Logger

	mu      sync.Mutex
	lru     *list.List // of *entry, most recently read first
	entries map[blobstore.Digest]*list.Element
	size    int64 // of all entries
	filling map[blobstore.Digest]*fillState
}

type entry struct {
	d    blobstore.Digest
	size int64
}

// fillState is one copy being written; deleted is set when the blob is
// deleted meanwhile, so the copy is not kept.
type fillState struct{ deleted bool }

// algorithms are the folders copies live in.
var algorithms = []blobstore.Algorithm{blobstore.SHA256, blobstore.SHA512}

// New returns a Store over backend, counting the copies already in
// opts.Dir (and removing any beyond the limit, or left half-written).
func New(backend blobstore.Store, opts Options) (*Store, error) {
	if backend == nil {
		return nil, errors.New("readcache: a backend is required")
	}
	if opts.Dir == "" || opts.MaxBytes <= 0 {
		return nil, errors.New("readcache: a folder and a size above zero are required")
	}
	s := &Store{
		Store:   backend,
		dir:     opts.Dir,
		tmp:     filepath.Join(opts.Dir, "tmp"),
		max:     opts.MaxBytes,
		log:     opts.Logger,
		lru:     list.New(),
		entries: map[blobstore.Digest]*list.Element{},
		filling: map[blobstore.Digest]*fillState{},
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	for _, d := range append([]string{s.tmp}, s.algDirs()...) {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("readcache: %w", err)
		}
	}
	s.removeStaleTemps()
	if err := s.scan(); err != nil {
		return nil, err
	}
	return s, nil
}

// staleTemp is how long a temp file goes unwritten before a new Store
// takes it for a leftover: one still being written (by a process that
// still runs, as during `caddy validate` beside a server) is written to
// all the time.
const staleTemp = time.Hour

// removeStaleTemps removes the half-written copies of earlier runs.
func (s *Store) removeStaleTemps() {
	des, _ := os.ReadDir(s.tmp)
	for _, de := range des {
		if fi, err := de.Info(); err == nil && time.Since(fi.ModTime()) > staleTemp {
			os.Remove(filepath.Join(s.tmp, de.Name()))
		}
	}
}

func (s *Store) algDirs() []string {
	var ds []string
	for _, a := range algorithms {
		ds = append(ds, filepath.Join(s.dir, string(a)))
	}
	return ds
}

func (s *Store) path(d blobstore.Digest) string {
	return filepath.Join(s.dir, string(d.Algorithm), d.Hex)
}

// scan counts the copies in the folder, least recently read last. Files
// whose names are not digests are not the cache's and are left alone.
func (s *Store) scan() error {
	type found struct {
		entry
		mod time.Time
	}
	var all []found
	for _, a := range algorithms {
		des, err := os.ReadDir(filepath.Join(s.dir, string(a)))
		if err != nil {
			return fmt.Errorf("readcache: %w", err)
		}
		for _, de := range des {
			d := blobstore.Digest{Algorithm: a, Hex: de.Name()}
			if !de.Type().IsRegular() || d.Validate() != nil {
				continue
			}
			fi, err := de.Info()
			if err != nil {
				continue // removed meanwhile
			}
			all = append(all, found{entry{d, fi.Size()}, fi.ModTime()})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].mod.After(all[j].mod) })
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range all {
		e := f.entry
		s.entries[e.d] = s.lru.PushBack(&e)
		s.size += e.size
	}
	s.evictLocked()
	return nil
}

// Open implements blobstore.Reader: the local copy if there is one, else
// the backend's blob, copied into the cache as it is read whole.
func (s *Store) Open(ctx context.Context, d blobstore.Digest) (blobstore.Blob, error) {
	if err := d.Validate(); err != nil {
		return nil, err
	}
	if b := s.openCopy(d); b != nil {
		info, err := s.Store.Stat(ctx, d)
		switch {
		case err == nil && info.Size == b.Size():
			return b, nil
		case errors.Is(err, blobstore.ErrNotFound):
			b.Close()
			s.drop(d)
			return nil, err
		case err != nil:
			s.log.Debug("read cache: backend unavailable, serving the copy", zap.String("digest", d.String()), zap.Error(err))
			return b, nil
		default:
			b.Close() // not the blob's size: not its copy
			s.drop(d)
		}
	}
	b, err := s.Store.Open(ctx, d)
	if err != nil {
		return nil, err
	}
	return s.tee(d, b), nil
}

// Backend implements blobstore.Layered: the store behind the copies.
func (s *Store) Backend() blobstore.Store { return s.Store }

// DropCopy implements blobstore.Layered.
func (s *Store) DropCopy(d blobstore.Digest) {
	if d.Validate() == nil {
		s.drop(d)
	}
}

// OpenRecorded implements blobstore.RecordedOpener: the local copy as it
// is, without asking the backend (its bytes were verified against the
// digest when it was kept, and the caller's record says the blob is
// stored), else the backend's blob, copied into the cache as Open does.
func (s *Store) OpenRecorded(ctx context.Context, d blobstore.Digest, size int64) (blobstore.Blob, error) {
	if err := d.Validate(); err != nil {
		return nil, err
	}
	if b := s.openCopy(d); b != nil {
		if b.Size() == size {
			return b, nil
		}
		b.Close() // not the blob's size: not its copy
		s.drop(d)
	}
	var b blobstore.Blob
	var err error
	if ro, ok := s.Store.(blobstore.RecordedOpener); ok {
		b, err = ro.OpenRecorded(ctx, d, size)
	} else {
		b, err = s.Store.Open(ctx, d)
	}
	if err != nil {
		return nil, err
	}
	return s.tee(d, b), nil
}

// tee returns the backend's blob b, copied into the cache as it is read
// whole, unless it is being copied already or would not fit.
func (s *Store) tee(d blobstore.Digest, b blobstore.Blob) blobstore.Blob {
	fill := s.startFill(d, b.Size())
	if fill == nil {
		return b
	}
	f, err := os.CreateTemp(s.tmp, d.Hex+"-*")
	if err != nil {
		s.endFill(d)
		s.log.Warn("read cache: cannot write a copy", zap.String("digest", d.String()), zap.Error(err))
		return b
	}
	return &teeBlob{Blob: b, s: s, d: d, fill: fill, f: f, buf: blobfile.GetBuf(b.Size()), h: d.Algorithm.New()}
}

// Start implements blobstore.Starter for the backend's blob being copied.
func (t *teeBlob) Start() error {
	if st, ok := t.Blob.(blobstore.Starter); ok {
		return st.Start()
	}
	return nil
}

// Check implements blobstore.Checker for the backend's blob being
// copied. A local copy has no Check: it serves a GET, so a HEAD says so.
func (t *teeBlob) Check() error {
	if c, ok := t.Blob.(blobstore.Checker); ok {
		return c.Check()
	}
	return nil
}

// openCopy opens the local copy of d, or returns nil.
func (s *Store) openCopy(d blobstore.Digest) blobstore.Blob {
	s.mu.Lock()
	el, ok := s.entries[d]
	if ok {
		s.lru.MoveToFront(el)
	}
	s.mu.Unlock()
	if !ok {
		return nil
	}
	f, err := os.Open(s.path(d))
	if err == nil {
		var fi os.FileInfo
		if fi, err = f.Stat(); err == nil {
			// The order, for the next start; a minute's precision is
			// plenty, and spares a hot copy an inode write per read.
			if now := time.Now(); now.Sub(fi.ModTime()) > time.Minute {
				_ = os.Chtimes(f.Name(), now, now)
			}
			return fileBlob{File: f, size: fi.Size()}
		}
		f.Close()
	}
	// Removed by hand, or by another Store on the folder: a miss.
	s.log.Warn("read cache: copy unreadable, reading the backend", zap.String("digest", d.String()), zap.Error(err))
	s.drop(d)
	return nil
}

// startFill registers a copy of d being written, unless one is already
// (the concurrent reader streams without copying) or the blob would not
// fit at all.
func (s *Store) startFill(d blobstore.Digest, size int64) *fillState {
	if size > s.max {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, busy := s.filling[d]; busy {
		return nil
	}
	if _, cached := s.entries[d]; cached {
		return nil
	}
	f := &fillState{}
	s.filling[d] = f
	return f
}

func (s *Store) endFill(d blobstore.Digest) {
	s.mu.Lock()
	delete(s.filling, d)
	s.mu.Unlock()
}

// keep makes the verified temp file tmp the copy of d, unless d was
// deleted meanwhile, and evicts what no longer fits.
func (s *Store) keep(d blobstore.Digest, fill *fillState, tmp string, size int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.filling, d)
	if fill.deleted {
		return errors.New("deleted while read")
	}
	if err := os.Rename(tmp, s.path(d)); err != nil {
		return err
	}
	if _, ok := s.entries[d]; !ok {
		s.entries[d] = s.lru.PushFront(&entry{d, size})
		s.size += size
	}
	s.evictLocked()
	return nil
}

// evictLocked removes the least recently read copies until the rest fit.
// A copy being served stays readable: its file is open.
func (s *Store) evictLocked() {
	for s.size > s.max {
		el := s.lru.Back()
		e := el.Value.(*entry)
		if err := os.Remove(s.path(e.d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("read cache: cannot evict", zap.String("digest", e.d.String()), zap.Error(err))
		}
		s.lru.Remove(el)
		delete(s.entries, e.d)
		s.size -= e.size
	}
}

// drop forgets d's copy and removes its file.
func (s *Store) drop(d blobstore.Digest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f, ok := s.filling[d]; ok {
		f.deleted = true
	}
	if el, ok := s.entries[d]; ok {
		s.size -= el.Value.(*entry).size
		s.lru.Remove(el)
		delete(s.entries, d)
	}
	if err := os.Remove(s.path(d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("read cache: cannot remove a copy", zap.String("digest", d.String()), zap.Error(err))
	}
}

// Delete implements blobstore.Deleter: the copy goes with the blob.
func (s *Store) Delete(ctx context.Context, d blobstore.Digest) error {
	if err := d.Validate(); err != nil {
		return err
	}
	s.drop(d)
	return s.Store.Delete(ctx, d)
}

// Size is the total size of the cached copies.
func (s *Store) Size() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.size
}

// fileBlob is a cached copy. It embeds the *os.File so that io.Copy
// reaches File.WriteTo and http.ServeContent's LimitedReader finds a
// syscall.Conn: both lead net/http to sendfile.
type fileBlob struct {
	*os.File
	size int64
}

func (b fileBlob) Size() int64 { return b.size }

var _ syscall.Conn = fileBlob{}

// teeBlob is a backend blob being read while its bytes are copied to a
// temp file. The copy stays usable only while reads follow each other from
// the start; Close keeps it if it is complete and hashes to the digest.
type teeBlob struct {
	blobstore.Blob
	s    *Store
	d    blobstore.Digest
	fill *fillState
	f    *os.File // nil once the copy was given up
	// buf gathers the copy's bytes into whole-buffer writes (writeCopy):
	// the page cache keeps a file written in large pieces in large
	// folios, and sendfile serves those about twice as fast as a file
	// written in the network's small reads (bench S3WarmPullCache).
	buf  *[]byte
	held int // bytes in buf not yet written
	h    hash.Hash
	pos  int64 // where the next Read starts
	n    int64 // bytes in f
}

func (t *teeBlob) Read(p []byte) (int, error) {
	n, err := t.Blob.Read(p)
	if t.f != nil {
		if t.pos != t.n {
			t.giveUp() // not the next bytes of the copy
		} else if n > 0 {
			if werr := t.writeCopy(p[:n]); werr != nil {
				t.s.log.Warn("read cache: cannot write a copy", zap.String("digest", t.d.String()), zap.Error(werr))
				t.giveUp()
			} else {
				t.h.Write(p[:n])
				t.n += int64(n)
			}
		}
	}
	t.pos += int64(n)
	if t.f != nil && t.n == t.Size() && !t.verified() {
		// The backend's bytes are not the blob's: say so rather than end
		// the stream as if it were whole.
		t.giveUp()
		return n, fmt.Errorf("readcache: %s: %w (backend sent other bytes)", t.d, blobstore.ErrDigestMismatch)
	}
	return n, err
}

func (t *teeBlob) verified() bool {
	return blobstore.FromHash(t.d.Algorithm, t.h) == t.d
}

func (t *teeBlob) Seek(offset int64, whence int) (int64, error) {
	pos, err := t.Blob.Seek(offset, whence)
	if err == nil {
		t.pos = pos
	}
	return pos, err
}

// writeCopy adds p to the copy, writing whenever buf is full.
func (t *teeBlob) writeCopy(p []byte) error {
	for len(p) > 0 {
		c := copy((*t.buf)[t.held:], p)
		t.held += c
		p = p[c:]
		if t.held == len(*t.buf) {
			if err := t.flushCopy(); err != nil {
				return err
			}
		}
	}
	return nil
}

// flushCopy writes what buf holds.
func (t *teeBlob) flushCopy() error {
	_, err := t.f.Write((*t.buf)[:t.held])
	t.held = 0
	return err
}

// giveUp drops the copy.
func (t *teeBlob) giveUp() {
	if t.f == nil {
		return
	}
	blobfile.PutBuf(t.buf)
	t.buf = nil
	name := t.f.Name()
	t.f.Close()
	os.Remove(name)
	t.f = nil
	t.s.endFill(t.d)
}

// Close keeps the copy if every byte arrived and they hash to the digest;
// the copy is synced first, so a crash cannot leave a cut file under the
// digest's name.
func (t *teeBlob) Close() error {
	err := t.Blob.Close()
	if t.f == nil {
		return err
	}
	if t.n != t.Size() || !t.verified() {
		t.giveUp()
		return err
	}
	name := t.f.Name()
	serr := t.flushCopy()
	blobfile.PutBuf(t.buf)
	t.buf = nil
	if serr == nil {
		serr = t.f.Sync()
	}
	if cerr := t.f.Close(); serr == nil {
		serr = cerr
	}
	t.f = nil
	if serr == nil {
		serr = t.s.keep(t.d, t.fill, name, t.n)
	} else {
		t.s.endFill(t.d)
	}
	if serr != nil {
		os.Remove(name)
		t.s.log.Debug("read cache: copy not kept", zap.String("digest", t.d.String()), zap.Error(serr))
	}
	return err
}

var (
	_ blobstore.Store          = (*Store)(nil)
	_ blobstore.RecordedOpener = (*Store)(nil)
)

// Leftovers implements blobstore.Sweeper for the backend, when it is one
// (the cache itself writes nothing a crash leaves behind that the next
// start does not clear: removeStaleTemps); none otherwise.
func (s *Store) Leftovers(ctx context.Context, cursor string, n int) ([]blobstore.Leftover, string, error) {
	if sw, ok := s.Store.(blobstore.Sweeper); ok {
		return sw.Leftovers(ctx, cursor, n)
	}
	return nil, "", nil
}

// DropLeftover implements blobstore.Sweeper for the backend.
func (s *Store) DropLeftover(ctx context.Context, l blobstore.Leftover) error {
	if sw, ok := s.Store.(blobstore.Sweeper); ok {
		return sw.DropLeftover(ctx, l)
	}
	return nil
}

// UndoInFlight undoes what the backend's Puts in flight wrote, when it
// can (see blobfile.InFlight): the store's close, past the cache.
func (s *Store) UndoInFlight() int {
	if u, ok := s.Store.(interface{ UndoInFlight() int }); ok {
		return u.UndoInFlight()
	}
	return 0
}

// Blobs implements blobstore.Lister for the backend, when it is one.
func (s *Store) Blobs(ctx context.Context, cursor string, n int) ([]blobstore.Listed, string, error) {
	if l, ok := s.Store.(blobstore.Lister); ok {
		return l.Blobs(ctx, cursor, n)
	}
	return nil, "", nil
}
