package cache

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache/internal/blobfile"
)

// uploadRecord is what up/<id> holds. SHA256State is the marshalled
// sha256 state over the first Size bytes, so a session resumes hashing
// after a restart without re-reading its data.
type uploadRecord struct {
	ID          string    `json:"id"`
	Repo        string    `json:"repo"`
	Owner       string    `json:"owner,omitempty"`
	Size        int64     `json:"size"`
	Started     time.Time `json:"started"`
	Updated     time.Time `json:"updated"`
	SHA256State []byte    `json:"sha256State"`
}

func (r uploadRecord) upload() Upload {
	return Upload{ID: r.ID, Repo: r.Repo, Owner: r.Owner, Size: r.Size, Started: r.Started, Updated: r.Updated}
}

func (r uploadRecord) indexed() openSession {
	return openSession{owner: r.Owner, repo: r.Repo, size: r.Size, started: r.Started, updated: r.Updated}
}

// sessionLock serialises the work on one session; refs counts holders and
// waiters so the map entry goes when nobody needs it. Both fields after
// token are guarded by Store.sessMu.
type sessionLock struct {
	token chan struct{} // holds one value while someone works on the session
	refs  int
	// abort is non-nil while an append holds the session: its body comes
	// at the client's pace, so nothing may wait for it unasked. A cancel
	// closes it, and the append stops at its next read.
	abort chan struct{}
}

// lockMode says what a request on a session does when another holds it.
type lockMode int

const (
	// lockAppend never waits (a second chunk at one offset is the
	// client's mistake) and gets the channel a cancel closes.
	lockAppend lockMode = iota
	// lockTry never waits (expiry: a session in use is not stale).
	lockTry
	// lockCommit waits for a commit or cancel (a retried PUT), never for
	// an append, which may trickle in for as long as the client likes.
	lockCommit
	// lockCancel stops an append and waits for it to let go.
	lockCancel
)

// holdWait bounds how long a commit or cancel waits for another request
// on its session. A stalled body ends by the server's read idle timeout
// (Caddy's default: one minute), so a cancel outlasts it.
const holdWait = 2 * time.Minute

// lockSession takes the lock of session id as mode says. When the session stays busy the
// error wraps ErrOffsetMismatch, as a second chunk at one offset does.
func (s *Store) lockSession(ctx context.Context, id string, mode lockMode) (unlock func(), abort <-chan struct{}, err error) {
	s.sessMu.Lock()
	l := s.sessions[id]
	if l == nil {
		l = &sessionLock{token: make(chan struct{}, 1)}
		s.sessions[id] = l
	}
	l.refs++
	release := func() {
		if l.refs--; l.refs == 0 {
			delete(s.sessions, id)
		}
	}
	unlock = func() {
		s.sessMu.Lock()
		l.abort = nil
		<-l.token
		release()
		s.sessMu.Unlock()
	}
	select {
	case l.token <- struct{}{}:
		if mode == lockAppend {
			l.abort = make(chan struct{})
			abort = l.abort
		}
		s.sessMu.Unlock()
		return unlock, abort, nil
	default:
	}
	busy := fmt.Errorf("%w: another request is writing session %s", ErrOffsetMismatch, id)
	switch {
	case mode == lockAppend, mode == lockTry, mode == lockCommit && l.abort != nil:
		release()
		s.sessMu.Unlock()
		return nil, nil, busy
	case mode == lockCancel && l.abort != nil:
		select {
		case <-l.abort: // another cancel asked already
		default:
			close(l.abort)
		}
	}
	s.sessMu.Unlock()
	t := time.NewTimer(holdWait)
	defer t.Stop()
	select {
	case l.token <- struct{}{}:
		return unlock, nil, nil
	case <-ctx.Done():
		err = fmt.Errorf("cache: waiting for session %s: %w", id, context.Cause(ctx))
	case <-t.C:
		err = busy
	}
	s.sessMu.Lock()
	release()
	s.sessMu.Unlock()
	return nil, nil, err
}

// CancellableChunk is r, a chunk's body, ending in ErrUploadUnknown once
// stop is closed or the session's end passes (its start plus the upload
// TTL; zero: none): the session was cancelled, or outlived the longest
// a session may live, while the chunk arrived at its client's pace, and
// the store cuts the chunk off. Without the end, a body that trickles in
// for ever would keep its session (which expiry leaves alone while a
// request writes it) and the space it holds for ever. A read blocked on
// a body that has stalled ends at once when ctx carries an interrupt
// (WithChunkInterrupt), else when the next bytes come or the server's
// read idle timeout fires. Call release when the chunk is done with: it
// returns once no interrupt can come any more.
func CancellableChunk(ctx context.Context, r io.Reader, stop <-chan struct{}, end time.Time) (chunk io.Reader, release func()) {
	if end.IsZero() {
		return cancellableChunk(ctx, r, stop)
	}
	ended := make(chan struct{})
	var once sync.Once
	finish := func() { once.Do(func() { close(ended) }) }
	timer := time.AfterFunc(time.Until(end), finish)
	done := make(chan struct{})
	var watch sync.WaitGroup
	if stop != nil {
		watch.Go(func() {
			select {
			case <-stop:
				finish()
			case <-done:
			}
		})
	}
	chunk, rel := cancellableChunk(ctx, r, ended)
	return chunk, func() {
		rel()
		timer.Stop()
		close(done)
		watch.Wait()
	}
}

func cancellableChunk(ctx context.Context, r io.Reader, stop <-chan struct{}) (chunk io.Reader, release func()) {
	c := cancellable{r: r, stop: stop}
	interrupt, _ := ctx.Value(interruptKey{}).(func())
	if interrupt == nil || stop == nil {
		return c, func() {}
	}
	done := make(chan struct{})
	var watch sync.WaitGroup
	watch.Go(func() {
		select {
		case <-stop:
			interrupt()
		case <-done:
		}
	})
	return c, func() {
		close(done)
		watch.Wait()
	}
}

type interruptKey struct{}

// WithChunkInterrupt returns ctx carrying interrupt, which ends a read of
// the request's body that is blocked waiting for the client (the
// registry sets the connection's read deadline to now). A cancel of the
// session calls it, so it never waits for a body that has stalled.
func WithChunkInterrupt(ctx context.Context, interrupt func()) context.Context {
	return context.WithValue(ctx, interruptKey{}, interrupt)
}

type cancellable struct {
	r    io.Reader
	stop <-chan struct{}
}

func (c cancellable) Read(p []byte) (int, error) {
	if c.cancelled() {
		return 0, errChunkCancelled
	}
	n, err := c.r.Read(p)
	if err != nil && c.cancelled() {
		// The interrupt's deadline, not the client, ended this read.
		err = errChunkCancelled
	}
	return n, err
}

func (c cancellable) cancelled() bool {
	select {
	case <-c.stop:
		return true
	default:
		return false
	}
}

var errChunkCancelled = fmt.Errorf("%w: cancelled, or past its upload TTL, while a chunk was arriving", ErrUploadUnknown)

// validID reports whether id has the form NewUpload gives, which also
// makes it safe as a file name.
func validID(id string) bool {
	if len(id) != 32 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func (s *Store) uploadPath(id string) string { return filepath.Join(s.uploadsDir, id) }

func sha256State(h io.Writer) ([]byte, error) {
	m, ok := h.(encoding.BinaryMarshaler)
	if !ok {
		return nil, errors.New("sha256 state cannot be saved")
	}
	return m.MarshalBinary()
}

func restoreSHA256(state []byte) (hash.Hash, error) {
	h := sha256.New()
	u, ok := h.(encoding.BinaryUnmarshaler)
	if !ok {
		return nil, errors.New("sha256 state cannot be restored")
	}
	if err := u.UnmarshalBinary(state); err != nil {
		return nil, err
	}
	return h, nil
}

// NewUpload starts a session for repo without an owner.
func (s *Store) NewUpload(ctx context.Context, repo string) (Upload, error) {
	return s.OpenUpload(ctx, repo, "")
}

// OpenUpload starts a session for repo, opened by owner (who counts
// against UploadLimits.PerOwner; empty: nobody), with a random,
// unguessable ID. ErrTooManyUploads or ErrUploadSpace when a limit is
// reached, and nothing is created.
func (s *Store) OpenUpload(ctx context.Context, repo, owner string) (Upload, error) {
	if err := checkName("repository", repo); err != nil {
		return Upload{}, err
	}
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return Upload{}, fmt.Errorf("cache: random: %w", err)
	}
	id := hex.EncodeToString(b[:])
	state, err := sha256State(sha256.New())
	if err != nil {
		return Upload{}, fmt.Errorf("cache: %w", err)
	}
	now := s.now().UTC()
	rec := uploadRecord{ID: id, Repo: repo, Owner: owner, Started: now, Updated: now, SHA256State: state}
	if err := s.admitUpload(id, rec.indexed()); err != nil {
		return Upload{}, err
	}
	if err := s.createUpload(rec); err != nil {
		s.forgetUpload(id)
		return Upload{}, err
	}
	return rec.upload(), nil
}

// createUpload makes the data file and the record of a new session.
func (s *Store) createUpload(rec uploadRecord) error {
	f, err := os.OpenFile(s.uploadPath(rec.ID), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("cache: create upload: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("cache: create upload: %w", err)
	}
	if err := blobfile.SyncDir(s.uploadsDir); err != nil {
		os.Remove(s.uploadPath(rec.ID))
		return fmt.Errorf("cache: create upload: %w", err)
	}
	if err := s.saveUpload(rec); err != nil {
		os.Remove(s.uploadPath(rec.ID))
		return err
	}
	return nil
}

func (s *Store) saveUpload(rec uploadRecord) error {
	val, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("cache: encode upload: %w", err)
	}
	if err := s.update(func(txn *badger.Txn) error { return txn.Set(uploadKey(rec.ID), val) }); err != nil {
		return fmt.Errorf("cache: save upload: %w", err)
	}
	return nil
}

// readUpload returns the stored record of id whatever its repository or age.
func (s *Store) readUpload(id string) (uploadRecord, error) {
	var rec uploadRecord
	if !validID(id) {
		return rec, fmt.Errorf("%w: %q", ErrUploadUnknown, id)
	}
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(uploadKey(id))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("%w: %s", ErrUploadUnknown, id)
		}
		if err != nil {
			return fmt.Errorf("cache: read upload: %w", err)
		}
		return item.Value(func(v []byte) error {
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("cache: decode upload %s: %w", id, err)
			}
			return nil
		})
	})
	return rec, err
}

// errUploadExpired is a session past its time: unknown to callers.
var errUploadExpired = fmt.Errorf("%w: expired", ErrUploadUnknown)

// loadUpload is readUpload for a caller acting in repo: a session of
// another repository or past its time is unknown.
func (s *Store) loadUpload(repo, id string) (uploadRecord, error) {
	rec, err := s.readUpload(id)
	if err != nil {
		return rec, err
	}
	if rec.Repo != repo {
		return uploadRecord{}, fmt.Errorf("%w: %s in %s", ErrUploadUnknown, id, repo)
	}
	if s.expired(rec, s.now()) {
		return uploadRecord{}, fmt.Errorf("%w: %s", errUploadExpired, id)
	}
	return rec, nil
}

// loadLocked is loadUpload for a caller holding the session's lock: an
// expired session it finds is removed at once, freeing its bytes.
func (s *Store) loadLocked(repo, id string) (uploadRecord, error) {
	rec, err := s.loadUpload(repo, id)
	if errors.Is(err, errUploadExpired) {
		if rerr := s.removeUpload(id); rerr != nil {
			return rec, rerr
		}
	}
	return rec, err
}

func (s *Store) expired(rec uploadRecord, now time.Time) bool {
	return s.expiredAt(rec.Started, rec.Updated, now)
}

// expiredAt: a session lives UploadTTL from its start at most, and
// UploadLimits.IdleTimeout from its last chunk.
func (s *Store) expiredAt(started, updated, now time.Time) bool {
	if now.Sub(started) > s.ttl {
		return true
	}
	idle := s.uploadLimits().IdleTimeout
	return idle > 0 && now.Sub(updated) > idle
}

// removeUpload drops a session's record and data.
func (s *Store) removeUpload(id string) error {
	err := s.update(func(txn *badger.Txn) error { return txn.Delete(uploadKey(id)) })
	if err != nil {
		return fmt.Errorf("cache: remove upload: %w", err)
	}
	s.forgetUpload(id)
	if err := os.Remove(s.uploadPath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cache: remove upload data: %w", err)
	}
	return nil
}

// openData opens the session's data file and brings it back to the
// recorded size: longer means a chunk was cut off (crash or broken
// connection) and is dropped; shorter or missing means the session lost
// data it had accounted for and cannot continue, so it is removed.
// The caller holds the session lock.
func (s *Store) openData(rec uploadRecord) (*os.File, error) {
	f, err := os.OpenFile(s.uploadPath(rec.ID), os.O_RDWR, 0)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("cache: open upload: %w", err)
	}
	var size int64 = -1
	if err == nil {
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("cache: stat upload: %w", err)
		}
		size = fi.Size()
	}
	switch {
	case size < rec.Size:
		if f != nil {
			f.Close()
		}
		s.log.Warn("upload session lost data; removing it",
			zap.String("repo", rec.Repo), zap.String("upload", rec.ID),
			zap.Int64("recorded", rec.Size), zap.Int64("on_disk", size))
		if err := s.removeUpload(rec.ID); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %s lost its data", ErrUploadUnknown, rec.ID)
	case size > rec.Size:
		if err := f.Truncate(rec.Size); err != nil {
			f.Close()
			return nil, fmt.Errorf("cache: truncate upload: %w", err)
		}
	}
	return f, nil
}

// recoverUploads runs at Open, before any request: every session's data
// is brought back to its recorded size, and the sessions that go on are
// indexed for the upload limits.
func (s *Store) recoverUploads() error {
	var recs []uploadRecord
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(pUpload), PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var rec uploadRecord
			err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &rec) })
			if err != nil || !validID(rec.ID) || string(it.Item().Key()) != pUpload+rec.ID {
				s.log.Warn("dropping unreadable upload record", zap.ByteString("key", it.Item().Key()), zap.Error(err))
				continue
			}
			recs = append(recs, rec)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cache: scan uploads: %w", err)
	}
	for _, rec := range recs {
		f, err := s.openData(rec)
		if errors.Is(err, ErrUploadUnknown) {
			continue
		}
		if err != nil {
			return err
		}
		f.Close()
		s.up.mu.Lock()
		s.indexUpload(rec.ID, rec.indexed())
		s.up.mu.Unlock()
	}
	return nil
}

// GetUpload returns the session id of repo. ErrUploadUnknown when it does
// not exist, has expired, or belongs to another repository.
func (s *Store) GetUpload(ctx context.Context, repo, id string) (Upload, error) {
	rec, err := s.loadUpload(repo, id)
	if err != nil {
		return Upload{}, err
	}
	return rec.upload(), nil
}

// AppendUpload appends r to the session if offset equals the session's
// current size (ErrOffsetMismatch otherwise, nothing written). The hash
// state and new size are persisted when the chunk completes, so a
// restart resumes at the last complete chunk; bytes from a chunk cut off
// mid-way are discarded. Concurrent appends to one session are serialised;
// the second sees ErrOffsetMismatch. Returns the new session state.
func (s *Store) AppendUpload(ctx context.Context, repo, id string, offset int64, r io.Reader) (Upload, error) {
	if !validID(id) {
		return Upload{}, fmt.Errorf("%w: %q", ErrUploadUnknown, id)
	}
	unlock, abort, err := s.lockSession(ctx, id, lockAppend)
	if err != nil {
		return Upload{}, err
	}
	defer unlock()
	rec, err := s.loadLocked(repo, id)
	if err != nil {
		return Upload{}, err
	}
	r, release := CancellableChunk(ctx, r, abort, rec.Started.Add(s.ttl))
	defer release()
	if offset != rec.Size {
		return Upload{}, fmt.Errorf("%w: offset %d, session at %d", ErrOffsetMismatch, offset, rec.Size)
	}
	h, err := restoreSHA256(rec.SHA256State)
	if err != nil {
		s.log.Warn("upload session has a bad hash state; removing it",
			zap.String("repo", repo), zap.String("upload", id), zap.Error(err))
		if rerr := s.removeUpload(id); rerr != nil {
			return Upload{}, rerr
		}
		return Upload{}, fmt.Errorf("%w: %s is damaged", ErrUploadUnknown, id)
	}
	f, err := s.openData(rec)
	if err != nil {
		return Upload{}, err
	}
	m := s.meter(r, rec.Owner, rec.Size)
	n, err := s.appendData(f, rec.Size, h, m)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("cache: close upload: %w", cerr)
	}
	if err == nil {
		err = s.recordChunk(&rec, h, n)
	}
	if err != nil {
		s.release(m.reserved, m.owner)
		if errors.Is(err, ErrUploadTooLarge) {
			// It can never be committed: free what it holds now.
			if rerr := s.removeUpload(id); rerr != nil {
				return Upload{}, rerr
			}
		}
		return Upload{}, err
	}
	s.grewUpload(id, rec.Size, rec.Updated)
	return rec.upload(), nil
}

// recordChunk persists a session after a chunk of n bytes hashed into h.
func (s *Store) recordChunk(rec *uploadRecord, h hash.Hash, n int64) error {
	state, err := sha256State(h)
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	next := *rec
	next.Size += n
	next.Updated = s.now().UTC()
	next.SHA256State = state
	if err := s.saveUpload(next); err != nil {
		// The file holds bytes the record does not count; the next append
		// or a restart truncates them.
		return err
	}
	*rec = next
	return nil
}

// appendData writes r at offset at, hashing sha256 along, and syncs. On
// any error the chunk is cut off again, so the file matches the record.
func (s *Store) appendData(f *os.File, at int64, h io.Writer, r io.Reader) (int64, error) {
	fail := func(what string, err error) (int64, error) {
		if terr := f.Truncate(at); terr != nil {
			s.log.Warn("cut off failed chunk", zap.String("file", f.Name()), zap.Error(terr))
		}
		return 0, fmt.Errorf("cache: %s: %w", what, err)
	}
	if _, err := f.Seek(at, io.SeekStart); err != nil {
		return fail("seek upload", err)
	}
	if err := s.space.Admit(-1); err != nil {
		return fail("append upload", err)
	}
	dw := blobfile.WriteBehind(f, at)
	n, err := blobfile.CopyHashing(s.space.Writer(dw), h, r, -1)
	if err != nil {
		return fail("append upload", err)
	}
	if err := f.Sync(); err != nil {
		return fail("sync upload", err)
	}
	return n, nil
}

// CommitUpload finishes the session: the data must hash to want
// (ErrDigestMismatch otherwise; the session stays so the client may
// retry or cancel), then it is fsynced and renamed into the content store,
// linked to repo, and the session is removed. sha256 is hashed
// incrementally during appends; other algorithms are computed at commit.
func (s *Store) CommitUpload(ctx context.Context, repo, id string, want Digest) (BlobInfo, error) {
	if err := checkDigest(want); err != nil {
		return BlobInfo{}, err
	}
	if !validID(id) {
		return BlobInfo{}, fmt.Errorf("%w: %q", ErrUploadUnknown, id)
	}
	unlock, _, err := s.lockSession(ctx, id, lockCommit)
	if err != nil {
		return BlobInfo{}, err
	}
	defer unlock()
	rec, err := s.loadLocked(repo, id)
	if err != nil {
		return BlobInfo{}, err
	}
	f, err := s.openData(rec)
	if err != nil {
		return BlobInfo{}, err
	}
	got, err := s.digestData(f, rec, want.Algorithm)
	if err == nil {
		// Appends synced already; this covers a truncate by openData.
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return BlobInfo{}, fmt.Errorf("cache: commit upload: %w", err)
	}
	if got != want {
		return BlobInfo{}, fmt.Errorf("%w: want %s, got %s", ErrDigestMismatch, want, got)
	}

	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	// A blob the store has already (pushed to another repository) needs
	// only its link: the session's data goes once the link is made, so a
	// link refused (a full disk, no descriptors left) leaves the session
	// whole for the client's retry, as a refused chunk does.
	have := s.touchFileLocked(want, rec.Size)
	if !have {
		if _, err := s.installLocked(s.uploadPath(id), want, rec.Size); err != nil {
			return BlobInfo{}, err
		}
	}
	now := s.now()
	err = s.update(func(txn *badger.Txn) error {
		if err := setBlobLink(txn, repo, want, now); err != nil {
			return err
		}
		return txn.Delete(uploadKey(id))
	})
	if err != nil {
		// A new blob is in the store but unlinked (GC takes it after the
		// grace period); the session has no data any more.
		return BlobInfo{}, fmt.Errorf("cache: link upload: %w", err)
	}
	s.forgetUpload(id)
	if have {
		// A crash before this leaves the file to GC's sweep of orphans.
		if err := os.Remove(s.uploadPath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("remove duplicate blob data", zap.String("file", s.uploadPath(id)), zap.Error(err))
		}
	}
	info, err := s.StatBlob(ctx, want)
	if err != nil {
		return BlobInfo{}, err
	}
	return info, nil
}

// digestData returns the digest of the session's data under alg: sha256
// from the state kept during appends, anything else by reading the file.
func (s *Store) digestData(f *os.File, rec uploadRecord, alg Algorithm) (Digest, error) {
	if alg == SHA256 {
		h, err := restoreSHA256(rec.SHA256State)
		if err != nil {
			return Digest{}, err
		}
		return FromHash(alg, h), nil
	}
	h := alg.New()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return Digest{}, err
	}
	if _, err := blobfile.CopyBuf(h, io.LimitReader(f, rec.Size), rec.Size); err != nil {
		return Digest{}, err
	}
	return FromHash(alg, h), nil
}

// CancelUpload removes the session and its data. ErrUploadUnknown if absent.
func (s *Store) CancelUpload(ctx context.Context, repo, id string) error {
	if !validID(id) {
		return fmt.Errorf("%w: %q", ErrUploadUnknown, id)
	}
	unlock, _, err := s.lockSession(ctx, id, lockCancel)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := s.loadLocked(repo, id); err != nil {
		return err
	}
	return s.removeUpload(id)
}
