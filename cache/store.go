package cache

import (
	"context"
	"errors"
	"fmt"
	"github.com/caddy-oci/caddy-oci/cache/internal/authrecords"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache/internal/badgeropen"
	"github.com/caddy-oci/caddy-oci/cache/internal/badgerwrite"
	"github.com/caddy-oci/caddy-oci/cache/internal/blobfile"
)

// Store is safe for concurrent use. Open it once per directory per process.
type Store struct {
	dir        string
	blobsDir   string
	uploadsDir string
	tmpDir     string
	ttl        time.Duration
	grace      time.Duration
	log        *zap.Logger
	db         *badger.DB
	now        func() time.Time // the clock of session times; tests move it
	space      *spaceGuard      // refuses blob bytes that would eat the reserve
	scrubObs   ScrubObserver    // nil: none

	// scrubbing counts the scrub passes reading each blob's file now:
	// a write of such a blob installs its bytes over the file rather than
	// keep it (touchFileLocked), since the file may be damaged.
	scrubMu   sync.Mutex
	scrubbing map[Digest]int

	// fullGC: how often GC walks the whole store (gccandidates.go).
	fullGC time.Duration

	// gcMu orders blob removal against linking: GC and eviction remove a
	// file only under the write lock after re-checking its links, and
	// every "the blob exists, now link it" sequence holds the read lock, so
	// a link never points at a file GC is about to remove.
	gcMu sync.RWMutex
	// writer takes the metadata writes (update).
	writer *badgerwrite.Writer
	// gcPaused skips the background collection's rounds (PauseGC).
	gcPaused atomic.Bool

	// auth keeps the auth layer's records (apikeys.go).
	auth *authrecords.Records

	// sessions serialises work on one upload session.
	sessMu   sync.Mutex
	sessions map[string]*sessionLock
	// up is the index of open sessions that upLimits are checked against
	// (uploadlimits.go).
	up       uploadIndex
	upLimits atomic.Pointer[UploadLimits]

	// fills are the blob fills in progress, by digest (fill.go); they
	// run on ctx, which Close cancels.
	fillMu sync.Mutex
	fills  map[Digest]*fileFill
	// fillTempGate, when set (tests), runs before a fill's temp file is
	// created: a test holds it there to stand for a slow filesystem.
	fillTempGate func()
	// fillCommitGate, when set (tests), runs once a fill's bytes are in
	// and verified, before its sync and install: a slow disk's commit.
	fillCommitGate func()
	ctx            context.Context
	cancel         context.CancelFunc

	// Mirrored content under a limit (evict.go): its configuration, the
	// running total of its bytes, and the uses and holds of blobs.
	// mirrorMu orders a commit of mirrored content (link plus the bytes
	// it adds) against the snapshot a count starts from. evictMu
	// serialises eviction passes and use flushes. useMu guards pins,
	// used and evicting; useCond wakes holds waiting out an eviction.
	mc         atomic.Pointer[MirrorCache]
	mirrorMu   sync.RWMutex
	mirrorSize atomic.Int64
	evictMu    sync.Mutex
	evictKick  chan struct{}
	forcePass  atomic.Bool
	// manualEvict: passes only through EvictMirrored (tests).
	manualEvict atomic.Bool
	useMu       sync.Mutex
	useCond     *sync.Cond
	pins        map[Digest]int
	used        map[Digest]int64 // last use, unix ns, since the last flush
	evicting    map[Digest]bool

	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
	// pushes are the temporary files of PutBlobs in flight, which Close
	// removes (see blobfile.InFlight).
	pushes blobfile.InFlight
}

const (
	defaultUploadTTL = 24 * time.Hour
	defaultGCGrace   = time.Hour
)

// Open opens (creating if needed) the store in opts.Dir.
func Open(opts Options) (*Store, error) {
	if opts.Dir == "" {
		return nil, errors.New("cache: no directory")
	}
	if err := CheckMetadataDir(opts.Dir, opts.MetadataDir); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	s := &Store{
		dir:        opts.Dir,
		blobsDir:   filepath.Join(opts.Dir, "blobs"),
		uploadsDir: filepath.Join(opts.Dir, "uploads"),
		tmpDir:     filepath.Join(opts.Dir, "tmp"),
		ttl:        opts.UploadTTL,
		grace:      opts.GCGrace,
		log:        log,
		sessions:   map[string]*sessionLock{},
		fills:      map[Digest]*fileFill{},
		stop:       make(chan struct{}),
		now:        time.Now,
		evictKick:  make(chan struct{}, 1),
		pins:       map[Digest]int{},
		used:       map[Digest]int64{},
		evicting:   map[Digest]bool{},
		scrubObs:   opts.ScrubObserver,
	}
	s.useCond = sync.NewCond(&s.useMu)
	s.auth = newAuthRecords(s)
	s.up.sessions, s.up.byOwner, s.up.byRepo = map[string]openSession{}, map[string]int{}, map[string]int{}
	s.up.ownerBytes = map[string]int64{}
	if s.ttl <= 0 {
		s.ttl = defaultUploadTTL
	}
	if s.grace <= 0 {
		s.grace = defaultGCGrace
	}
	s.fullGC = opts.GCFullInterval
	if s.fullGC <= 0 {
		s.fullGC = DefaultGCFullInterval
	}
	// The fan-out folders are made once here so a commit only renames.
	dirs := []string{s.uploadsDir, s.tmpDir}
	for _, alg := range []Algorithm{SHA256, SHA512} {
		for i := 0; i < 256; i++ {
			dirs = append(dirs, filepath.Join(s.blobsDir, string(alg), fmt.Sprintf("%02x", i)))
		}
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("cache: %w", err)
		}
	}

	metaDir := opts.DatabaseDir()
	s.space = newSpaceGuard(opts.Dir, metaDir, opts.Reserve, log, opts.SpaceObserver)
	// Opening writes too: badger starts a new memtable (and replays the
	// last one, whose unwritten pages a tmpfs gives only on demand)
	// through memory maps. On a filesystem another program filled while
	// the process was down, that is a SIGBUS at every start; below the
	// floor where a running store refuses metadata changes, refuse to
	// open instead, and the caller tries again once space is freed.
	if err := s.space.admitOpen(); err != nil {
		return nil, fmt.Errorf("cache: the metadata database cannot open: %w", err)
	}
	// badger's files are sparse and memory-mapped (a memtable's log is
	// mapped at twice MemTableSize, a value log at twice ValueLogFileSize)
	// and take disk space only as pages are written: a few MiB for each
	// memtable of metadata, as much again for a table flushed or compacted.
	// With these sizes the reserve (space.go) is its room; a page it
	// cannot get would be a SIGBUS, not an error.
	bo := badger.DefaultOptions(metaDir).
		WithLogger(badgerLogger{log.Named("badger")}).
		WithSyncWrites(true).
		WithMetricsEnabled(false).
		// Metadata is small; keep badger's memory well under the process
		// budget (defaults would take several hundred MiB). Each memtable
		// costs about 1.3 times its size in an arena on the heap, and as
		// much again of mapped log, two at once while one is flushed.
		WithMemTableSize(4 << 20).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(8).
		// Compaction builds up to a dozen tables at once, each held in
		// memory whole until written (twice its size): small tables
		// keep that a few tens of MiB.
		WithBaseTableSize(1 << 20).
		WithBlockCacheSize(8 << 20).
		WithIndexCacheSize(4 << 20).
		WithValueLogFileSize(64 << 20).
		// A value the log cannot read back whole (a crash cut it
		// short, a page overwritten) reads as empty, not as other bytes.
		WithVerifyValueChecksum(true).
		WithValueThreshold(64 << 10).
		WithNumCompactors(2).
		WithNumGoroutines(2).
		// No block compression: a table builder keeps each block both
		// whole and compressed, and fills a table by its compressed size,
		// so a 2 MiB table held several times that; every read of a
		// compressed block allocates its copy, too. Tables already
		// written compressed stay readable (each table records its own).
		WithCompression(options.None)
	// Every level's tables as small as the base level's: with the
	// default doubling per level a grown store's deepest tables would be
	// 64 times larger, and so would their builders. (Options has no
	// setter for it.)
	bo.TableSizeMultiplier = 1
	db, err := badgeropen.Open(bo)
	if err != nil {
		return nil, fmt.Errorf("cache: open metadata: %w", blobfile.DatabaseOpenError(metaDir, err))
	}
	s.db = db
	s.writer = &badgerwrite.Writer{DB: db, Unavailable: ErrUnavailable}
	s.ctx, s.cancel = context.WithCancel(context.Background())

	if err := s.recoverUploads(); err != nil {
		db.Close()
		return nil, err
	}
	if opts.GCInterval > 0 {
		s.wg.Add(1)
		go s.gcLoop(opts.GCInterval)
	}
	if opts.ScrubInterval > 0 {
		s.wg.Add(1)
		go s.scrubLoop(opts.ScrubInterval, opts.ScrubRate)
	}
	s.wg.Add(1)
	go s.mirrorLoop()
	s.wg.Add(1)
	go s.spaceLoop()
	if !opts.keepTablePages {
		s.wg.Add(1)
		go s.tablePagesLoop(metaDir)
	}
	return s, nil
}

// CheckMetadataDir refuses a MetadataDir that would share the store's
// folders: Dir itself, or anything under blobs/, uploads/ or tmp/, whose
// entries GC removes, or quarantine/, where the scrub moves files.
func CheckMetadataDir(dir, metaDir string) error {
	if metaDir == "" {
		return nil
	}
	dir, metaDir = filepath.Clean(dir), filepath.Clean(metaDir)
	if metaDir == dir {
		return fmt.Errorf("cache: metadata folder %s is the storage folder itself", metaDir)
	}
	for _, sub := range []string{"blobs", "uploads", "tmp", "quarantine"} {
		d := filepath.Join(dir, sub)
		if metaDir == d || strings.HasPrefix(metaDir, d+string(filepath.Separator)) {
			return fmt.Errorf("cache: metadata folder %s is inside the store's %s/", metaDir, sub)
		}
	}
	return nil
}

// Close stops background work and closes badger.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		s.cancel()
		s.wg.Wait()
		if n := s.pushes.UndoAll(); n > 0 {
			s.log.Info("removed what blob pushes cut by the close had written", zap.Int("pushes", n))
		}
		s.evictMu.Lock()
		s.flushUse() // uses since the last flush survive the restart
		s.evictMu.Unlock()
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("cache: close metadata: %w", err)
		}
	})
	return s.closeErr
}

// update runs fn in a read-write transaction (badgerwrite: refused
// while the process is nearly out of file descriptors, retried while it
// conflicts). It refuses (ErrStorageFull) while the metadata's filesystem
// is nearly full (space.go).
func (s *Store) update(fn func(txn *badger.Txn) error) error {
	if err := s.space.admitMeta(); err != nil {
		return err
	}
	return s.writer.Update(context.Background(), fn)
}

// blobPath is where the committed blob d lives. d must be valid.
func (s *Store) blobPath(d Digest) string {
	return filepath.Join(s.blobsDir, string(d.Algorithm), d.Hex[:2], d.Hex)
}

// checkDigest guards every path and key built from a Digest: the fields
// are exported, so a Digest that did not come from ParseDigest is checked
// again before it names a file.
func checkDigest(d Digest) error { return d.Validate() }

// badgerLogger sends badger's chatter to zap: errors and warnings as
// warnings, the rest at debug so a running server stays quiet.
type badgerLogger struct{ l *zap.Logger }

func (b badgerLogger) Errorf(f string, a ...any)   { b.l.Warn(line(f, a)) }
func (b badgerLogger) Warningf(f string, a ...any) { b.l.Warn(line(f, a)) }
func (b badgerLogger) Infof(f string, a ...any)    { b.l.Debug(line(f, a)) }
func (b badgerLogger) Debugf(f string, a ...any)   { b.l.Debug(line(f, a)) }

func line(f string, a []any) string { return strings.TrimSpace(fmt.Sprintf(f, a...)) }
