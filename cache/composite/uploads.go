package composite

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/coord"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
)

// sessionTTL is the lease on a session while one request writes it: long
// enough for renewals through a slow database, short enough that a
// replica killed mid-chunk frees the session for the client's retry soon.
const sessionTTL = 15 * time.Second

// holdWait bounds how long a commit or cancel waits for another request
// on its session. A stalled body ends by the server's read idle timeout
// (Caddy's default: one minute), so the wait outlasts it, as the
// single-node store's does: a cancel behind a stalled chunk on another
// replica then removes the session rather than answering 416.
const holdWait = 2 * time.Minute

// appendWait bounds how long a chunk waits for its session's lease. A
// chunk's lease whose release failed (a connection to PostgreSQL cut as
// the chunk ended) is released again in the background within a second
// or two, and the client's next chunk, sent at once, must not find it
// taken and be refused. Chunks of one session that truly overlap are the
// client's mistake: they still fail, this much later.
const appendWait = 3 * time.Second

// localAppends are the chunks this replica is receiving, by session, so a
// commit or cancel of the session here need not wait for the lease: a
// commit is refused at once (the client's requests overlap) and a cancel
// stops the chunk. One on another replica is waited for (holdWait).
//
// An append registers before it asks for the lease and leaves after it
// let go: so a commit or cancel that finds the lease taken and only then
// looks here cannot miss a chunk of this replica that holds it (looking
// first left a window in which the chunk took the lease unseen, and the
// commit or cancel waited out holdWait behind a trickling body).
type localAppends struct {
	mu sync.Mutex
	m  map[string][]chan struct{} // closed to stop
}

func (l *localAppends) start(id string) (stop <-chan struct{}, done func()) {
	ch := make(chan struct{})
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[string][]chan struct{}{}
	}
	l.m[id] = append(l.m[id], ch)
	return ch, func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		chs := l.m[id]
		for i, c := range chs {
			if c == ch {
				chs = append(chs[:i:i], chs[i+1:]...)
				break
			}
		}
		if len(chs) == 0 {
			delete(l.m, id)
		} else {
			l.m[id] = chs
		}
	}
}

func (l *localAppends) running(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m[id]) > 0
}

// stop asks the chunks of session id arriving here, if any, to end.
func (l *localAppends) stop(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ch := range l.m[id] {
		close(ch)
	}
	delete(l.m, id)
}

func upload(u metastore.Upload) cache.Upload {
	return cache.Upload{ID: u.ID, Repo: u.Repo, Owner: u.Owner, Size: u.Size, Started: u.Started, Updated: u.Updated}
}

// NewUpload opens a session without an owner.
func (s *Store) NewUpload(ctx context.Context, repo string) (cache.Upload, error) {
	return s.OpenUpload(ctx, repo, "")
}

// OpenUpload opens a session of repo for owner, within the limits on
// sessions per owner and per repository and on the bytes open sessions
// hold, counted across replicas.
func (s *Store) OpenUpload(ctx context.Context, repo, owner string) (cache.Upload, error) {
	if err := metastore.CheckName("repository", repo); err != nil {
		return cache.Upload{}, mapErr(err)
	}
	sess, err := s.blobs.NewSession(ctx)
	if err != nil {
		return cache.Upload{}, blobErr(err)
	}
	state, err := sess.State()
	if err != nil {
		_ = sess.Cancel(context.WithoutCancel(ctx))
		return cache.Upload{}, err
	}
	u, err := s.meta.CreateUpload(ctx, metastore.Upload{
		ID: sess.ID(), Repo: repo, Owner: owner, State: state, Started: s.now(),
	}, s.quota())
	if err != nil {
		_ = sess.Cancel(context.WithoutCancel(ctx))
		return cache.Upload{}, mapErr(err)
	}
	return upload(u), nil
}

// load returns repo's live session id: cache.ErrUploadUnknown if absent,
// of another repository, or expired.
func (s *Store) load(ctx context.Context, repo, id string) (metastore.Upload, error) {
	if metastore.CheckName("upload", id) != nil {
		return metastore.Upload{}, fmt.Errorf("%w: %q", cache.ErrUploadUnknown, id)
	}
	u, err := s.meta.Upload(ctx, id)
	if err != nil {
		return metastore.Upload{}, mapErr(err)
	}
	if u.Repo != repo {
		return metastore.Upload{}, fmt.Errorf("%w: %s in %s", cache.ErrUploadUnknown, id, repo)
	}
	if s.expired(u) {
		return metastore.Upload{}, fmt.Errorf("%w: %s expired", cache.ErrUploadUnknown, id)
	}
	return u, nil
}

func (s *Store) expired(u metastore.Upload) bool {
	now := s.now()
	if now.Sub(u.Started) > s.ttl {
		return true
	}
	idle := s.limits.get().IdleTimeout
	return idle > 0 && now.Sub(u.Updated) > idle
}

// GetUpload returns repo's session id.
func (s *Store) GetUpload(ctx context.Context, repo, id string) (cache.Upload, error) {
	u, err := s.load(ctx, repo, id)
	if err != nil {
		return cache.Upload{}, err
	}
	return upload(u), nil
}

// hold takes the lease on session id for one request: another request
// writing the same session (on any replica) makes this one fail with
// cache.ErrOffsetMismatch, as two chunks at one offset do. A chunk
// (busy nil) that finds the lease taken first waits up to appendWait:
// the lease may be the previous chunk's, answered already but not yet
// released (its release failed and is retried in the background). With
// busy (a commit or cancel), a taken lease is first shown to busy, which
// may refuse at once (its error) or stop a chunk arriving here; then the
// request waits up to holdWait for the holder. A holder still there is
// ErrOffsetMismatch too (the registry's 416), never the wait's own
// deadline (which the registry would answer 500).
func (s *Store) hold(ctx context.Context, id string, busy func() error) (context.Context, func(), error) {
	key := "upload/" + id
	refused := func() error {
		return fmt.Errorf("%w: another request is writing session %s", cache.ErrOffsetMismatch, id)
	}
	held, release, ok, err := coord.Hold(ctx, s.leases, key, sessionTTL)
	if err == nil && !ok {
		wait := s.appendWait
		if busy != nil {
			if err := busy(); err != nil {
				return nil, nil, err
			}
			// A commit or cancel retried while the first try still runs
			// (a client timed out at the load balancer), or a chunk
			// arriving at another replica: wait for it, then act on what
			// it left — usually no session any more.
			wait = s.holdWait
		}
		wctx, cancel := context.WithTimeout(ctx, wait)
		err = s.leases.Wait(wctx, key)
		cancel()
		switch {
		case err == nil:
			held, release, ok, err = coord.Hold(ctx, s.leases, key, sessionTTL)
		case ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded):
			return nil, nil, refused()
		}
	}
	if err != nil {
		return nil, nil, mapErr(err)
	}
	if !ok {
		return nil, nil, refused()
	}
	// The request's cancellation still counts: held outlives ctx only for
	// the lease's renewals.
	work, cancel := context.WithCancel(held)
	stop := context.AfterFunc(ctx, cancel)
	return work, func() { stop(); cancel(); release() }, nil
}

// leaseEnded turns an error that an operation under work met because
// work's session lease ended first (the process stopped past the lease's
// deadline and woken, or its renewals did not get through) into
// ErrUnavailable naming why: a 503 the client sends again, where the bare
// context.Canceled the lease's end left was answered 500. The client's own
// cancellation stays what it is.
func leaseEnded(work context.Context, err error) error {
	if err == nil || !errors.Is(err, context.Canceled) {
		return err
	}
	if cause := context.Cause(work); errors.Is(cause, coord.ErrExpired) || errors.Is(cause, coord.ErrLost) {
		return fmt.Errorf("%w: session %w", cache.ErrUnavailable, cause)
	}
	return err
}

// AppendUpload appends r at offset, which must be the session's size
// (cache.ErrOffsetMismatch otherwise, nothing written). The blob store's
// append is all or nothing and the new state is stored with a
// compare-and-swap, so a chunk cut off mid-way leaves the session as it
// was, on every replica.
func (s *Store) AppendUpload(ctx context.Context, repo, id string, offset int64, r io.Reader) (_ cache.Upload, err error) {
	stop, running := s.appends.start(id) // before the lease: see localAppends
	defer running()
	work, done, err := s.hold(ctx, id, nil)
	if err != nil {
		return cache.Upload{}, err
	}
	defer func() { err = leaseEnded(work, err); done() }()
	u, err := s.load(work, repo, id)
	if err != nil {
		return cache.Upload{}, err
	}
	r, release := cache.CancellableChunk(ctx, r, stop, u.Started.Add(s.ttl))
	defer release()
	if offset != u.Size {
		return cache.Upload{}, fmt.Errorf("%w: offset %d, session at %d", cache.ErrOffsetMismatch, offset, u.Size)
	}
	if u.Reserved > 0 {
		// Left by a chunk whose replica died: this request holds the
		// session's lease, so no other chunk is being written.
		if err := s.meta.ReleaseUploadBytes(work, id); err != nil {
			return cache.Upload{}, mapErr(err)
		}
	}
	sess, err := s.blobs.ResumeSession(work, u.State)
	if err != nil {
		return cache.Upload{}, blobErr(err)
	}
	if max := s.limits.get().MaxBlobSize; max > 0 {
		r = &capped{r: r, left: max - u.Size}
	}
	m := &meteredChunk{s: s, ctx: work, id: id, q: s.quota(), r: r}
	if _, err := sess.Append(work, offset, m); err != nil {
		if m.reserved > 0 {
			if rerr := s.meta.ReleaseUploadBytes(context.WithoutCancel(work), id); rerr != nil {
				// Held until the session's next chunk or its expiry.
				s.log.Warn("release upload bytes", zap.String("upload", id), zap.Error(rerr))
			}
		}
		if errors.Is(err, cache.ErrUploadTooLarge) {
			// As the single-node store does: the session goes.
			_ = s.drop(context.WithoutCancel(ctx), u, sess) // logged; the answer is the size
		}
		return cache.Upload{}, blobErr(err)
	}
	state, err := sess.State()
	if err != nil {
		return cache.Upload{}, err
	}
	nu, err := s.meta.AdvanceUpload(work, u, state, sess.Size(), s.now())
	if err != nil {
		return cache.Upload{}, mapErr(err)
	}
	return upload(nu), nil
}

// drop ends a session: its record, then (sess, if not nil) its bytes.
// The record's removal is the end: no request resumes the session after
// it. Its failure is returned, and the bytes are left as they are, so the
// session stays whole for the client's retry (a cancel acknowledged with
// its record still there was a session the client thought gone).
//
// The bytes are garbage from then on, freed behind the caller: nothing
// waits for them. On a hung blob store the purge's first call waits its
// bound out (30 s), and a cancel waiting behind a chunk stalled on the
// same store answered after both, past a minute. What the purge cannot
// free, the leftovers sweep does.
func (s *Store) drop(ctx context.Context, u metastore.Upload, sess blobstore.Session) error {
	if err := s.meta.DeleteUpload(ctx, u.ID); err != nil && !errors.Is(err, metastore.ErrUploadUnknown) {
		s.log.Warn("delete upload record", zap.String("upload", u.ID), zap.Error(err))
		return mapErr(err)
	}
	if sess == nil {
		return nil
	}
	purge := func(ctx context.Context) {
		if err := sess.Cancel(ctx); err != nil {
			s.log.Warn("free the bytes of an ended upload session; the leftovers sweep will",
				zap.String("upload", u.ID), zap.Error(err))
		}
	}
	if !s.background(purge) {
		purge(ctx) // the store is closing: no background work is taken
	}
	return nil
}

// CommitUpload makes the session's bytes blob want of repo if they hash to
// it (cache.ErrDigestMismatch otherwise; the session stays for another
// try or a cancel). The blob is recorded and linked before the session's
// record goes, so a replica killed in between leaves a session that
// expires, never a blob without its record.
func (s *Store) CommitUpload(ctx context.Context, repo, id string, want cache.Digest) (_ cache.BlobInfo, err error) {
	work, done, err := s.hold(ctx, id, func() error {
		if s.appends.running(id) {
			return fmt.Errorf("%w: a chunk of session %s is still arriving", cache.ErrOffsetMismatch, id)
		}
		return nil
	})
	if err != nil {
		return cache.BlobInfo{}, err
	}
	defer func() { err = leaseEnded(work, err); done() }()
	u, err := s.load(work, repo, id)
	if err != nil {
		return cache.BlobInfo{}, err
	}
	sess, err := s.blobs.ResumeSession(work, u.State)
	if err != nil {
		return cache.BlobInfo{}, blobErr(err)
	}
	if err := s.fence(work, want); err != nil {
		return cache.BlobInfo{}, err
	}
	info, err := sess.Commit(work, want, -1)
	if err != nil {
		if state, serr := sess.State(); serr == nil {
			// A failed verification seals the session: keep that state.
			_, _ = s.meta.AdvanceUpload(work, u, state, sess.Size(), s.now())
		}
		return cache.BlobInfo{}, blobErr(err)
	}
	if err := s.record(work, want, info.Size); err != nil {
		if errors.Is(err, ErrCollected) {
			// The session's bytes are gone with the commit: the client
			// must push again, and finds the session gone (404).
			_ = s.drop(context.WithoutCancel(work), u, nil) // logged; the answer is the collection
		}
		return cache.BlobInfo{}, err
	}
	if err := s.meta.LinkBlob(work, repo, want, s.now()); err != nil {
		return cache.BlobInfo{}, mapErr(err)
	}
	// The blob is in: a record left behind (logged) expires with the
	// session's TTL.
	_ = s.drop(context.WithoutCancel(work), u, nil)
	r, err := s.meta.Blob(work, want)
	if err != nil {
		return cache.BlobInfo{}, mapErr(err)
	}
	return blobInfo(r), nil
}

// CancelUpload ends repo's session id and frees its bytes.
func (s *Store) CancelUpload(ctx context.Context, repo, id string) (err error) {
	work, done, err := s.hold(ctx, id, func() error {
		s.appends.stop(id)
		return nil
	})
	if err != nil {
		return err
	}
	defer func() { err = leaseEnded(work, err); done() }()
	u, err := s.load(work, repo, id)
	if err != nil {
		return err
	}
	sess, err := s.blobs.ResumeSession(work, u.State)
	if err != nil && !errors.Is(err, blobstore.ErrSessionUnknown) {
		return blobErr(err)
	}
	return s.drop(context.WithoutCancel(work), u, sess)
}

// UploadUsage is not kept in memory on this store: what sessions hold is
// in the metadata, for every replica (metastore.Uploads.UploadUsage).
func (s *Store) UploadUsage() cache.UploadUsage { return cache.UploadUsage{} }

// quota is the upload limits as the metadata counts them.
func (s *Store) quota() metastore.UploadQuota {
	l := s.limits.get()
	return metastore.UploadQuota{PerRepo: l.PerRepo, PerOwner: l.PerOwner, Bytes: l.TotalBytes, OwnerBytes: l.PerOwnerBytes}
}

// reserveStep is how many bytes of a chunk are reserved at a time: one
// round trip to the metadata per step, not per read.
const reserveStep = 8 << 20

// meteredChunk reserves the bytes of a chunk in the session's record as
// they arrive, so the limits on the bytes of open uploads hold for every
// replica with chunks in flight. A reservation of a whole step that would
// pass a limit is asked again for the bytes read only, so a limit is
// reached exactly.
type meteredChunk struct {
	s        *Store
	ctx      context.Context
	id       string
	q        metastore.UploadQuota
	r        io.Reader
	read     int64
	reserved int64
}

func (m *meteredChunk) Read(p []byte) (int, error) {
	n, err := m.r.Read(p)
	if n == 0 || m.q.Bytes <= 0 && m.q.OwnerBytes <= 0 {
		return n, err
	}
	m.read += int64(n)
	if m.read <= m.reserved {
		return n, err
	}
	need := m.read - m.reserved
	step := max(need, reserveStep)
	rerr := m.s.meta.ReserveUploadBytes(m.ctx, m.id, step, m.q)
	if errors.Is(rerr, metastore.ErrUploadSpace) && step > need {
		step = need
		rerr = m.s.meta.ReserveUploadBytes(m.ctx, m.id, step, m.q)
	}
	if rerr != nil {
		return 0, mapErr(rerr)
	}
	m.reserved += step
	return n, err
}
