package fs

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	iofs "io/fs"
	"os"
	"path/filepath"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/internal/backend"
	"github.com/caddy-oci/caddy-oci/cache/internal/blobfile"
)

// A session is the file uploads/<id>, grown by each Append and fsynced
// before the Append returns, and its State: the id, the size and the
// sha256 state over those bytes, so whichever Store resumes it continues
// hashing where the last one stopped and a sha256 commit reads nothing
// back. A sha512 commit reads the file once (hashing both on every chunk
// would slow every push for the rare sha512 one), as package cache does.
//
// The file may be longer than the state says: an Append cut off by a
// crash wrote bytes it never acknowledged. The next Append or Commit cuts
// them off again. A file shorter than the state, or none, means the
// session is gone (committed, cancelled, expired): ErrSessionUnknown.

// stateKind marks states this backend made; stateVersion changes when
// sessionState does incompatibly.
const (
	stateKind    = "fs"
	stateVersion = 1
)

// sessionState is what Session.State serialises.
type sessionState struct {
	Kind string `json:"kind"`
	backend.SessionState
}

type session struct {
	s  *Store
	st sessionState
	h  hash.Hash // sha256 over st.Size bytes
}

func (s *Store) uploadPath(id string) string { return filepath.Join(s.uploadsDir, id) }

// NewSession implements blobstore.Sessions: an empty file under uploads/,
// made durable at once so another Store sees it.
func (s *Store) NewSession(ctx context.Context) (_ blobstore.Session, err error) {
	defer func() { err = asStorageFull(err) }()
	id, err := backend.RandomID()
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(s.uploadPath(id), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("fs: new session: %w", err)
	}
	err = f.Close()
	if err == nil {
		err = blobfile.SyncDir(s.uploadsDir)
	}
	if err != nil {
		os.Remove(s.uploadPath(id))
		return nil, fmt.Errorf("fs: new session: %w", err)
	}
	return &session{s: s, st: sessionState{Kind: stateKind, SessionState: backend.SessionState{Version: stateVersion, ID: id}}, h: sha256.New()}, nil
}

// ResumeSession implements blobstore.Sessions. The state comes from the
// metadata store, but its id becomes a file name and its size an offset:
// a state that does not add up is refused before anything is touched.
// Whether the file is still there is for Append and Commit to find out,
// so that a Cancel of a session that is gone is not an error.
func (s *Store) ResumeSession(ctx context.Context, state []byte) (blobstore.Session, error) {
	var st sessionState
	h, err := backend.DecodeState(state, &st, &st.SessionState, st.check)
	if err != nil {
		return nil, err
	}
	return &session{s: s, st: st, h: h}, nil
}

func (st *sessionState) check() error {
	if st.Kind != stateKind {
		return fmt.Errorf("state of kind %q", st.Kind)
	}
	return st.Check(stateVersion)
}

func (ss *session) ID() string  { return ss.st.ID }
func (ss *session) Size() int64 { return ss.st.Size }

// State implements blobstore.Session.
func (ss *session) State() ([]byte, error) {
	st := ss.st
	var err error
	if st.SHA256, err = backend.MarshalSHA256(ss.h); err != nil {
		return nil, fmt.Errorf("fs: session state: %w", err)
	}
	return json.Marshal(st)
}

// openData opens the session's file, cut back to the state's size.
func (ss *session) openData() (*os.File, error) {
	if ss.st.Ended {
		return nil, fmt.Errorf("%w: %s", blobstore.ErrSessionUnknown, ss.st.ID)
	}
	f, err := os.OpenFile(ss.s.uploadPath(ss.st.ID), os.O_RDWR, 0)
	if errors.Is(err, iofs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", blobstore.ErrSessionUnknown, ss.st.ID)
	}
	if err != nil {
		return nil, fmt.Errorf("fs: open session %s: %w", ss.st.ID, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("fs: open session %s: %w", ss.st.ID, err)
	}
	switch {
	case !fi.Mode().IsRegular() || fi.Size() < ss.st.Size:
		f.Close()
		return nil, fmt.Errorf("%w: %s holds %d bytes, the state %d", blobstore.ErrSessionUnknown, ss.st.ID, fi.Size(), ss.st.Size)
	case fi.Size() > ss.st.Size:
		if err := f.Truncate(ss.st.Size); err != nil {
			f.Close()
			return nil, fmt.Errorf("fs: cut off a torn chunk of session %s: %w", ss.st.ID, err)
		}
	}
	return f, nil
}

// Append implements blobstore.Session. The chunk is hashed into a copy of
// the hash and written after the session's bytes; only once it is all
// there and fsynced do the size and hash move on. On an error the file is
// cut back, so the session is as it was.
func (ss *session) Append(ctx context.Context, offset int64, r io.Reader) (_ int64, err error) {
	defer func() { err = asStorageFull(err) }()
	if err := ss.st.CheckAppend(offset); err != nil {
		return 0, err
	}
	f, err := ss.openData()
	if err != nil {
		return 0, err
	}
	defer f.Close()
	h, err := backend.CloneSHA256(ss.h)
	if err != nil {
		return 0, err
	}
	at := ss.st.Size
	fail := func(err error) (int64, error) {
		if terr := f.Truncate(at); terr != nil {
			// The next Append or Commit cuts it off instead.
			ss.s.log.Warn("cut off a failed chunk", zap.String("session", ss.st.ID), zap.Error(terr))
		}
		return 0, fmt.Errorf("fs: append to session %s: %w", ss.st.ID, err)
	}
	if _, err := f.Seek(at, io.SeekStart); err != nil {
		return fail(err)
	}
	if err := ss.s.space.Admit(-1); err != nil {
		return fail(err)
	}
	dw := blobfile.WriteBehind(f, at)
	n, err := blobfile.CopyHashing(ss.s.space.Writer(dw), h, ctxReader{ctx, r}, -1)
	if err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		return fail(err)
	}
	ss.st.Size += n
	ss.h = h
	return n, nil
}

// Commit implements blobstore.Session: verify (sha256 from the state,
// sha512 by reading the file), fsync, rename into blobs/, fsync the
// folder.
func (ss *session) Commit(ctx context.Context, d blobstore.Digest, size int64) (_ blobstore.Info, err error) {
	defer func() { err = asStorageFull(err) }()
	if err := d.Validate(); err != nil {
		return blobstore.Info{}, err
	}
	f, err := ss.openData()
	if err != nil {
		return blobstore.Info{}, err
	}
	defer f.Close()
	if size >= 0 && size != ss.st.Size {
		return blobstore.Info{}, fmt.Errorf("%w: declared %d, session holds %d bytes", blobstore.ErrSizeMismatch, size, ss.st.Size)
	}
	h := ss.h
	if d.Algorithm != blobstore.SHA256 {
		h = d.Algorithm.New()
		if _, err := blobfile.CopyBuf(h, ctxReader{ctx, io.NewSectionReader(f, 0, ss.st.Size)}, ss.st.Size); err != nil {
			return blobstore.Info{}, fmt.Errorf("fs: commit session %s: %w", ss.st.ID, err)
		}
	}
	if err := backend.Verify(d, -1, ss.st.Size, h); err != nil {
		return blobstore.Info{}, err
	}
	// Every Append synced; this covers a cut made by openData.
	if err := f.Sync(); err != nil {
		return blobstore.Info{}, fmt.Errorf("fs: commit session %s: %w", ss.st.ID, err)
	}
	if err := f.Close(); err != nil {
		return blobstore.Info{}, fmt.Errorf("fs: commit session %s: %w", ss.st.ID, err)
	}
	if err := ss.s.install(ss.s.uploadPath(ss.st.ID), d, ss.st.Size); err != nil {
		return blobstore.Info{}, err
	}
	ss.st.Ended = true
	return blobstore.Info{Digest: d, Size: ss.st.Size}, nil
}

// Cancel implements blobstore.Session.
func (ss *session) Cancel(ctx context.Context) error {
	if err := os.Remove(ss.s.uploadPath(ss.st.ID)); err != nil && !errors.Is(err, iofs.ErrNotExist) {
		return fmt.Errorf("fs: cancel session %s: %w", ss.st.ID, err)
	}
	ss.st.Ended = true
	return nil
}
