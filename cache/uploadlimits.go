package cache

// The limits on upload sessions (UploadLimits) and the index they are
// checked against: every open session with its owner, repository and
// size, and the bytes all of them hold. The index is built from badger at
// Open (recoverUploads) and changed beside every session change, under
// one mutex, so a check and the change it allows are one step.

import (
	"fmt"
	"io"
	"sync"
	"time"

	"go.uber.org/zap"
)

// openSession is what the index knows of one session.
type openSession struct {
	owner, repo      string
	size             int64
	started, updated time.Time
}

// uploadIndex is the accounting of open uploads.
type uploadIndex struct {
	mu       sync.Mutex
	sessions map[string]openSession
	byOwner  map[string]int
	byRepo   map[string]int
	// bytes is the recorded size of every session plus the bytes of
	// writes in flight (reserved as they arrive).
	bytes int64
	// ownerBytes is bytes per owner, counted the same way.
	ownerBytes map[string]int64
}

// SetUploadLimits sets (or replaces: a config reload) the limits on
// uploads. Sessions already open stay, even past a lower limit; they only
// keep new ones from opening.
func (s *Store) SetUploadLimits(l UploadLimits) {
	s.upLimits.Store(&l)
}

func (s *Store) uploadLimits() UploadLimits {
	if l := s.upLimits.Load(); l != nil {
		return *l
	}
	return UploadLimits{}
}

// UploadUsage reports the open sessions and the bytes they hold.
func (s *Store) UploadUsage() UploadUsage {
	s.up.mu.Lock()
	defer s.up.mu.Unlock()
	return UploadUsage{Sessions: len(s.up.sessions), Bytes: s.up.bytes}
}

// indexUpload adds a session to the index (at Open, or when created).
// The caller holds s.up.mu.
func (s *Store) indexUpload(id string, o openSession) {
	s.up.sessions[id] = o
	if o.owner != "" {
		s.up.byOwner[o.owner]++
		s.up.ownerBytes[o.owner] += o.size
	}
	s.up.byRepo[o.repo]++
	s.up.bytes += o.size
}

// forgetUpload takes a removed or committed session out of the index and
// frees its bytes.
func (s *Store) forgetUpload(id string) {
	s.up.mu.Lock()
	defer s.up.mu.Unlock()
	o, ok := s.up.sessions[id]
	if !ok {
		return
	}
	delete(s.up.sessions, id)
	if o.owner != "" {
		if s.up.byOwner[o.owner]--; s.up.byOwner[o.owner] <= 0 {
			delete(s.up.byOwner, o.owner)
		}
		s.addOwnerBytes(o.owner, -o.size)
	}
	if s.up.byRepo[o.repo]--; s.up.byRepo[o.repo] <= 0 {
		delete(s.up.byRepo, o.repo)
	}
	s.up.bytes -= o.size
}

// grewUpload records a session's new size and time after a chunk whose
// bytes were reserved while they arrived.
func (s *Store) grewUpload(id string, size int64, updated time.Time) {
	s.up.mu.Lock()
	defer s.up.mu.Unlock()
	if o, ok := s.up.sessions[id]; ok {
		o.size, o.updated = size, updated
		s.up.sessions[id] = o
	}
}

// admitUpload checks the limits for a new session and, if they allow it,
// indexes it, in one step. When a limit is reached, idle sessions are
// expired first and the check is made again, so abandoned sessions never
// hold a limit down between collections.
func (s *Store) admitUpload(id string, o openSession) error {
	l := s.uploadLimits()
	if err := s.tryAdmit(l, id, o); err == nil {
		return nil
	}
	s.expireIndexed(s.now())
	return s.tryAdmit(l, id, o)
}

func (s *Store) tryAdmit(l UploadLimits, id string, o openSession) error {
	s.up.mu.Lock()
	defer s.up.mu.Unlock()
	switch {
	case l.PerOwner > 0 && o.owner != "" && s.up.byOwner[o.owner] >= l.PerOwner:
		return fmt.Errorf("%w: %d sessions of %s open, the limit per client", ErrTooManyUploads, s.up.byOwner[o.owner], o.owner)
	case l.PerRepo > 0 && s.up.byRepo[o.repo] >= l.PerRepo:
		return fmt.Errorf("%w: %d sessions of repository %s open, the limit per repository", ErrTooManyUploads, s.up.byRepo[o.repo], o.repo)
	case l.TotalBytes > 0 && s.up.bytes >= l.TotalBytes:
		return fmt.Errorf("%w: open uploads hold %d bytes of %d", ErrUploadSpace, s.up.bytes, l.TotalBytes)
	case l.PerOwnerBytes > 0 && o.owner != "" && s.up.ownerBytes[o.owner] >= l.PerOwnerBytes:
		return fmt.Errorf("%w: open uploads of %s hold %d bytes of %d", ErrUploadShare, o.owner, s.up.ownerBytes[o.owner], l.PerOwnerBytes)
	}
	s.indexUpload(id, o)
	return nil
}

// expireIndexed removes the sessions the index shows past their time.
func (s *Store) expireIndexed(now time.Time) {
	var stale []string
	s.up.mu.Lock()
	for id, o := range s.up.sessions {
		if s.expiredAt(o.started, o.updated, now) {
			stale = append(stale, id)
		}
	}
	s.up.mu.Unlock()
	for _, id := range stale {
		if _, err := s.expireSession(id, now); err != nil {
			s.log.Warn("expire upload", zap.String("upload", id), zap.Error(err))
		}
	}
}

// addOwnerBytes changes owner's bytes by n. The caller holds s.up.mu.
func (s *Store) addOwnerBytes(owner string, n int64) {
	if owner == "" {
		return
	}
	if s.up.ownerBytes[owner] += n; s.up.ownerBytes[owner] <= 0 {
		delete(s.up.ownerBytes, owner)
	}
}

// reserve counts n more bytes of a write in flight by owner ("" for
// none) against TotalBytes and PerOwnerBytes.
func (s *Store) reserve(n int64, owner string, l UploadLimits) error {
	s.up.mu.Lock()
	defer s.up.mu.Unlock()
	if l.TotalBytes > 0 && s.up.bytes+n > l.TotalBytes {
		return fmt.Errorf("%w: open uploads hold %d bytes of %d", ErrUploadSpace, s.up.bytes, l.TotalBytes)
	}
	if l.PerOwnerBytes > 0 && owner != "" && s.up.ownerBytes[owner]+n > l.PerOwnerBytes {
		return fmt.Errorf("%w: open uploads of %s hold %d bytes of %d", ErrUploadShare, owner, s.up.ownerBytes[owner], l.PerOwnerBytes)
	}
	s.up.bytes += n
	s.addOwnerBytes(owner, n)
	return nil
}

// release frees n bytes that owner reserved and whose write failed or
// ended elsewhere.
func (s *Store) release(n int64, owner string) {
	if n == 0 {
		return
	}
	s.up.mu.Lock()
	s.up.bytes -= n
	s.addOwnerBytes(owner, -n)
	s.up.mu.Unlock()
}

// meteredReader reserves the bytes of one write as they arrive and stops
// it at the blob size limit or when the open uploads are full. The bytes
// it reserved stay reserved until the caller hands them to a session
// (grewUpload) or releases them.
type meteredReader struct {
	s        *Store
	r        io.Reader
	limits   UploadLimits
	owner    string // whose share the bytes count against; "" for none
	before   int64  // bytes of the blob before this write
	reserved int64
}

func (s *Store) meter(r io.Reader, owner string, before int64) *meteredReader {
	return &meteredReader{s: s, r: r, limits: s.uploadLimits(), owner: owner, before: before}
}

func (m *meteredReader) Read(p []byte) (int, error) {
	n, err := m.r.Read(p)
	if n == 0 {
		return 0, err
	}
	if max := m.limits.MaxBlobSize; max > 0 && m.before+m.reserved+int64(n) > max {
		return 0, fmt.Errorf("%w: more than %d bytes", ErrUploadTooLarge, max)
	}
	if rerr := m.s.reserve(int64(n), m.owner, m.limits); rerr != nil {
		return 0, rerr
	}
	m.reserved += int64(n)
	return n, err
}
