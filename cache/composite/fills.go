package composite

// Mirror fills across replicas. A blob that no replica holds is fetched
// from upstream once, cluster-wide: the replica that takes the fill's
// lease ("fill/<digest>") fetches it into a local spool file, streams it
// to its own clients as it arrives (blobfile.Spool, as the single-node
// store does), verifies it, then writes it to the blob store, records and
// links it. A request for the same digest on another replica waits for
// the lease to end and reads the committed blob from the blob store. A
// holder that dies lets its lease expire; the next request starts the
// fill again.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/coord"
	"github.com/caddy-oci/caddy-oci/cache/internal/blobfile"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
)

// fillTTL is a fill's lease: renewed while the holder works, so a holder
// that dies frees the digest this long after.
const fillTTL = 30 * time.Second

// fillWork tracks the fills of one Store.
type fillWork struct {
	mu     sync.Mutex
	m      map[cache.Digest]*fill
	ctx    context.Context // fills outlive the requests that start them
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// fill is one blob on its way into the store: this replica's own fill, or
// the wait for another replica's.
type fill struct {
	*blobfile.Spool
	s    *Store
	d    cache.Digest
	repo string
	// refill: d's record stays from before its bytes were lost, and the
	// mirror cache counted them then.
	refill bool
	// known is closed once this replica knows whether it holds the
	// fill's lease (the fill asks the source for repo) or follows
	// another replica's (awaits: that fill was started for a name not
	// known here, and asked upstream nothing for repo). nil: a fill of a
	// committed blob, for repo.
	known  chan struct{}
	awaits bool // set before known is closed

	mu    sync.Mutex
	spool string // the local spool file while this replica writes it
}

func (f *fill) Digest() cache.Digest { return f.d }

// Repo implements cache.Fill: the name this replica's own fill asks the
// source for and links, or "" for the wait for another replica's fill,
// which was started for a name not known here. A request that joins a
// fill of its own name without asking upstream (its source's answer is
// the one the request would get) must not join such a wait: upstream
// may refuse the blob under this name. It waits until the fill's lease
// was asked for (one round trip to the lease store).
func (f *fill) Repo() string {
	if f.known != nil {
		<-f.known
		if f.awaits {
			return ""
		}
	}
	return f.repo
}

// FillAdmitted returns the fill of d in progress on this replica, one of
// the committed blob, the wait for another replica's fill, or a new fill
// from src for repo that admit (asked only then) lets start.
func (s *Store) FillAdmitted(ctx context.Context, repo string, d cache.Digest, src cache.FillSource, admit cache.FillAdmit) (cache.Fill, bool, error) {
	if f, err := s.checkedFilling(ctx, repo, d); f != nil || err != nil {
		return f, false, err
	}
	if r, err := s.meta.Blob(ctx, d); err == nil {
		return &fill{Spool: blobfile.CommittedSpool(r.Size), s: s, d: d, repo: repo}, false, nil
	} else if !errors.Is(err, metastore.ErrBlobUnknown) {
		return nil, false, mapErr(err)
	}
	return s.newFill(repo, d, src, admit, false)
}

// RefillAdmitted is FillAdmitted for blob d whose record says it is
// stored but whose bytes the blob store lost or holds cut short (deleted
// from the bucket or the folder behind the registry's back): a fill from
// src starts even though d is recorded, unless the bytes are back (a
// refill by another request or replica committed meanwhile). The fill
// writes the bytes again and keeps the record and every link as they
// are, so the manifests that need d are whole again.
func (s *Store) RefillAdmitted(ctx context.Context, repo string, d cache.Digest, src cache.FillSource, admit cache.FillAdmit) (cache.Fill, bool, error) {
	if f, err := s.checkedFilling(ctx, repo, d); f != nil || err != nil {
		return f, false, err
	}
	r, err := s.meta.Blob(ctx, d)
	if errors.Is(err, metastore.ErrBlobUnknown) {
		return s.FillAdmitted(ctx, repo, d, src, admit) // collected meanwhile: a plain miss
	} else if err != nil {
		return nil, false, mapErr(err)
	}
	// One question to the blob store, on this rare path only: whether
	// the bytes are back, so the requests that all found them lost start
	// one refill, not one each.
	if info, err := s.blobs.Stat(ctx, d); err == nil && info.Size == r.Size {
		return &fill{Spool: blobfile.CommittedSpool(r.Size), s: s, d: d, repo: repo}, false, nil
	} else if err != nil && !errors.Is(err, blobstore.ErrNotFound) {
		return nil, false, blobErr(err)
	}
	return s.newFill(repo, d, src, admit, true)
}

// checkedFilling checks repo and d, and returns the fill of d in progress
// on this replica, if any (nil, nil when there is none).
func (s *Store) checkedFilling(ctx context.Context, repo string, d cache.Digest) (cache.Fill, error) {
	if err := metastore.CheckName("repository", repo); err != nil {
		return nil, mapErr(err)
	}
	if err := d.Validate(); err != nil {
		return nil, err
	}
	return s.Filling(ctx, d), nil
}

// newFill starts the fill of d for repo from src, or joins the one this
// replica or another started meanwhile. refill: d is recorded, its bytes
// lost (see RefillAdmitted).
func (s *Store) newFill(repo string, d cache.Digest, src cache.FillSource, admit cache.FillAdmit, refill bool) (cache.Fill, bool, error) {
	// The fill is in the map before its lease is asked for, and the lock
	// is not held across that round trip to the database: requests for
	// other digests go on, and one for the same digest joins this fill.
	s.fills.mu.Lock()
	if f := s.fills.m[d]; f != nil {
		s.fills.mu.Unlock()
		return f, false, nil
	}
	if err := s.fills.ctx.Err(); err != nil {
		s.fills.mu.Unlock()
		return nil, false, errors.New("composite: store closed")
	}
	f := &fill{Spool: blobfile.NewSpool(), s: s, d: d, repo: repo, refill: refill, known: make(chan struct{})}
	s.fills.m[d] = f
	s.fills.wg.Add(1)
	s.fills.mu.Unlock()

	held, release, ok, err := coord.Hold(s.fills.ctx, s.leases, "fill/"+d.String(), fillTTL)
	f.awaits = err == nil && !ok
	close(f.known)
	if err != nil {
		err = mapErr(err)
		f.finish(fmt.Errorf("%w: %s: %w", cache.ErrFillFailed, d, err)) // for those who joined
		return nil, false, err
	}
	if !ok {
		// Another replica fills it: wait for its commit.
		go f.await()
		return f, false, nil
	}
	done := func() {}
	if admit != nil {
		if done, err = admit(); err != nil {
			release()
			f.finish(fmt.Errorf("%w: %s: %w", cache.ErrFillFailed, d, err))
			return nil, false, err
		}
	}
	go func() {
		defer done()
		err := f.run(held, src)
		// The lease goes before the fill ends: a reader woken by the
		// failure retries at once, often on another replica, which must
		// find the lease free and fill afresh, not follow a fill already
		// over into a 503 (its holder "stopped before it committed").
		release()
		f.finish(err)
	}()
	return f, true, nil
}

// Filling returns this replica's fill of d in progress, or nil.
func (s *Store) Filling(_ context.Context, d cache.Digest) cache.Fill {
	s.fills.mu.Lock()
	defer s.fills.mu.Unlock()
	if f := s.fills.m[d]; f != nil {
		return f
	}
	return nil // not a nil *fill, which is no nil Fill
}

// finish ends f: out of the map first, so whoever Done wakes finds the
// blob or starts afresh.
func (f *fill) finish(err error) {
	f.s.fills.mu.Lock()
	delete(f.s.fills.m, f.d)
	f.s.fills.mu.Unlock()
	f.Finish(err)
	f.s.fills.wg.Done()
}

// run fetches, spools and commits the blob while holding its lease (held
// ends if the lease is lost: the fill stops rather than race a
// successor), and returns the fill's outcome for finish.
func (f *fill) run(held context.Context, src cache.FillSource) error {
	err := f.fetch(held, src)
	f.mu.Lock()
	if f.spool != "" {
		os.Remove(f.spool) // open readers keep their copy
		f.spool = ""
	}
	f.mu.Unlock()
	if err != nil {
		err = fmt.Errorf("%w: %s: %w", cache.ErrFillFailed, f.d, err)
		f.s.log.Debug("blob fill failed", zap.String("repo", f.repo), zap.String("digest", f.d.String()), zap.Error(err))
	}
	return err
}

func (f *fill) fetch(ctx context.Context, src cache.FillSource) error {
	// Made while the source's request is in flight (see PendingFile).
	spool := blobfile.CreateAsync(func() (*os.File, error) { return os.CreateTemp(f.s.spoolDir, "fill-*") })
	body, size, err := src(ctx)
	if err != nil {
		spool.Drop()
		return err
	}
	defer body.Close()
	file, err := spool.Take()
	if err != nil {
		return spoolErr(err)
	}
	defer file.Close()
	f.mu.Lock()
	f.spool = file.Name()
	f.mu.Unlock()
	f.Begin(size)

	h := f.d.Algorithm.New()
	bp := blobfile.GetBuf(size)
	defer blobfile.PutBuf(bp)
	n, err := f.Copy(spoolWriter{file}, body, h, size, (*bp)[:min(len(*bp), 256<<10)])
	if errors.Is(err, blobfile.ErrOverrun) {
		return fmt.Errorf("%w: %w", cache.ErrSizeMismatch, err)
	}
	if err != nil {
		return err
	}
	if size >= 0 && n != size {
		return fmt.Errorf("%w: source declared %d, sent %d bytes", cache.ErrSizeMismatch, size, n)
	}
	if got := cache.FromHash(f.d.Algorithm, h); got != f.d {
		return fmt.Errorf("%w: want %s, got %s", cache.ErrDigestMismatch, f.d, got)
	}
	f.SetVerified(n)
	// Readers here have every byte; the other replicas wait for these.
	if err := f.s.fence(ctx, f.d); err != nil {
		return err
	}
	if _, err := f.s.blobs.Put(ctx, f.d, n, io.NewSectionReader(file, 0, n)); err != nil {
		return blobErr(err)
	}
	if err := f.s.record(ctx, f.d, n); err != nil {
		return err
	}
	if err := f.s.meta.LinkBlob(ctx, f.repo, f.d, f.s.now()); err != nil {
		// Content is in; the next request links it.
		f.s.log.Warn("link filled blob", zap.String("repo", f.repo), zap.Error(err))
		return nil
	}
	if !f.refill {
		f.s.mirrorCommitted(ctx, f.repo, n)
	}
	return nil
}

// spoolErr is a failure of this replica's own spool (its temporary
// folder full, read-only, failing), never upstream's: a full folder is
// the store's full storage (507), anything else this replica's outage
// (503 with Retry-After; another replica, or this one later, fills).
func spoolErr(err error) error {
	if cache.IsStorageFull(err) {
		return fmt.Errorf("composite: spool: %w", err)
	}
	return fmt.Errorf("%w: composite: spool: %w", cache.ErrUnavailable, err)
}

// spoolWriter is the spool file, its write errors told apart from
// upstream's read errors (spoolErr).
type spoolWriter struct{ f *os.File }

func (w spoolWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if err != nil {
		err = spoolErr(err)
	}
	return n, err
}

// await follows another replica's fill: when its lease ends, the blob is
// there (committed) or not (the holder failed or died: this wait fails
// with cache.ErrFillAbandoned, and the registry starts a fill).
func (f *fill) await() {
	ctx := f.s.fills.ctx
	err := f.s.leases.Wait(ctx, "fill/"+f.d.String())
	if err == nil {
		var r metastore.BlobRecord
		if r, err = f.s.meta.Blob(ctx, f.d); err == nil && f.refill {
			err = f.s.refilled(ctx, f.d, r.Size)
		}
		if err == nil {
			f.Begin(r.Size)
			f.SetVerified(r.Size)
		} else if errors.Is(err, metastore.ErrBlobUnknown) {
			// Not upstream's failure, and not final: the registry starts
			// a fill of its own (or, past that, the client's retry does:
			// 503 with Retry-After, not 502).
			err = cache.ErrFillAbandoned
		}
	}
	if err != nil {
		err = fmt.Errorf("%w: %s: %w", cache.ErrFillFailed, f.d, mapErr(err))
	}
	f.finish(err)
}

// refilled says whether a refill of d (size bytes, its record kept from
// before its bytes were lost) that another replica held committed: the
// record says nothing then, the blob store does. metastore.ErrBlobUnknown
// when the bytes are still missing or cut short (that replica died, or
// its fill failed): the wait ends as for a cold fill abandoned, and the
// registry refills, instead of reading the lost bytes as committed.
func (s *Store) refilled(ctx context.Context, d cache.Digest, size int64) error {
	info, err := s.blobs.Stat(ctx, d)
	switch {
	case err == nil && info.Size == size:
		return nil
	case err == nil || errors.Is(err, blobstore.ErrNotFound) || errors.Is(err, blobstore.ErrSizeMismatch):
		return fmt.Errorf("%w: %s: the refill held by another replica did not commit", metastore.ErrBlobUnknown, d)
	default:
		return blobErr(err)
	}
}

// Reader implements cache.Fill: this replica's spool while it is being
// written, else the committed blob from the blob store.
func (f *fill) Reader(ctx context.Context) (cache.FillReader, error) {
	if _, err := f.Ready(ctx); err != nil {
		return nil, err
	}
	if err := f.Failed(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	spool := f.spool
	f.mu.Unlock()
	if spool != "" && !f.Committed() {
		if file, err := os.Open(spool); err == nil {
			return &spoolReader{Follower: f.Follow(ctx, file), file: file}, nil
		}
		// Gone: the fill finished meanwhile.
	}
	if err := f.Wait(ctx); err != nil {
		return nil, err
	}
	b, err := f.s.blobs.Open(ctx, f.d)
	if err != nil {
		return nil, blobErr(err)
	}
	if size, _ := f.Ready(ctx); size >= 0 && b.Size() != size {
		// Not the blob (cut short since, or another replica's refill
		// of it failed): never served as if whole.
		b.Close()
		return nil, fmt.Errorf("%w: %s: %w: %d bytes in the blob store, %d in its record",
			cache.ErrFillFailed, f.d, blobstore.ErrSizeMismatch, b.Size(), size)
	}
	return blobReader{b}, nil
}

// spoolReader follows this replica's spool file.
type spoolReader struct {
	*blobfile.Follower
	file *os.File
}

func (r *spoolReader) Close() error { return r.file.Close() }

// blobReader reads a committed blob as a cache.FillReader.
type blobReader struct{ blobstore.Blob }

func (blobReader) Err() error { return nil }

// Close stops the fills in progress and the mirror cache's loop (whose
// last uses it writes), and waits for them; then it removes what blob
// pushes still in flight wrote (a graceful stop's cut requests:
// blobfile.InFlight), when the blob store can (fs, S3).
func (s *Store) Close() {
	s.stopMirror()
	s.fills.cancel()
	s.fills.wg.Wait()
	if r, ok := s.blobs.(interface{ UndoInFlight() int }); ok {
		if n := r.UndoInFlight(); n > 0 {
			s.log.Info("removed what blob pushes cut by the close had written", zap.Int("pushes", n))
		}
	}
}
