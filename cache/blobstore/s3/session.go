package s3

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/internal/backend"
)

// A session is a multipart upload at data/<2 hex>/<id> (links.go says
// why there), created with its first full part. Every part but the last
// must be at least 5 MiB while a chunk may be any size, so the bytes
// after the last full part wait in a small object of their own (the
// tail) and are read back by the Append that fills the part, or by the
// Commit. The state records the parts'
// ETags, the tail and the sha256 state, so any replica continues the
// session, and a commit checks a sha256 digest without reading any bytes.
//
// A tail, not the state, holds those bytes because the state is written to
// the metadata store after every chunk: up to a part size of bytes there,
// rewritten each time, would cost more than one small object here.

// stateVersion changes when sessionState does incompatibly. 2: the
// multipart upload moved from uploads/<id>/data to data/ (a session begun
// before the move is refused, and its client starts the upload again).
const stateVersion = 2

// sessionState is what Session.State serialises.
type sessionState struct {
	backend.SessionState
	PartSize int64 `json:"part_size"`
	// UploadID is the multipart upload, once a part was written.
	UploadID string `json:"upload_id,omitempty"`
	// Parts are the ETags of parts 1..n, each PartSize bytes.
	Parts []string `json:"parts,omitempty"`
	// CRC32C: the upload was created with CRC-32C part checksums
	// (checksums.go), and PartCRC32C holds each part's, as S3 wants them
	// again at completion. A replica that predates them refuses the state
	// (unknown field) rather than upload a part without one.
	CRC32C     bool     `json:"crc32c,omitempty"`
	PartCRC32C []string `json:"part_crc32c,omitempty"`
	// Tail names the object holding the TailSize bytes after the parts;
	// TailSHA256 is their hash, checked when they are read back.
	Tail       string `json:"tail,omitempty"`
	TailSize   int64  `json:"tail_size,omitempty"`
	TailSHA256 []byte `json:"tail_sha256,omitempty"`
	// Assembled: a commit put all Size bytes into the data object; no
	// parts, no tail.
	Assembled bool `json:"assembled,omitempty"`
}

type session struct {
	s  *Store
	st sessionState
	h  hash.Hash // sha256 over st.Size bytes
}

func (s *Store) sessionPrefix(id string) string { return s.prefix + "uploads/" + id + "/" }
func (s *Store) tailKey(id, tail string) string { return s.sessionPrefix(id) + "tail-" + tail }

// NewSession implements blobstore.Sessions. Nothing is written until the
// first Append.
func (s *Store) NewSession(ctx context.Context) (blobstore.Session, error) {
	id, err := backend.RandomID()
	if err != nil {
		return nil, err
	}
	return &session{
		s:  s,
		st: sessionState{SessionState: backend.SessionState{Version: stateVersion, ID: id}, PartSize: s.partSize},
		h:  sha256.New(),
	}, nil
}

// ResumeSession implements blobstore.Sessions. The state comes from the
// metadata store, which is trusted, but it names keys: anything that does
// not add up is refused rather than used.
func (s *Store) ResumeSession(ctx context.Context, state []byte) (blobstore.Session, error) {
	var st sessionState
	h, err := backend.DecodeState(state, &st, &st.SessionState, st.check)
	if err != nil {
		return nil, err
	}
	return &session{s: s, st: st, h: h}, nil
}

func (st *sessionState) check() error {
	if err := st.Check(stateVersion); err != nil {
		return err
	}
	switch {
	case st.PartSize < minPartSize || st.PartSize > maxPartSize:
		return errors.New("bad part size")
	case len(st.Parts) > maxParts || len(st.Parts) > 0 && st.UploadID == "":
		return errors.New("bad parts")
	case st.CRC32C && len(st.PartCRC32C) != len(st.Parts) || !st.CRC32C && len(st.PartCRC32C) > 0 ||
		slices.ContainsFunc(st.PartCRC32C, func(c string) bool { return !isCRC32C(c) }):
		return errors.New("bad part checksums")
	case st.Tail != "" && !backend.IsID(st.Tail) || (st.Tail == "") != (st.TailSize == 0):
		return errors.New("bad tail")
	case st.TailSize < 0 || st.TailSize >= st.PartSize:
		return errors.New("bad tail size")
	case st.Assembled && (len(st.Parts) > 0 || st.Tail != ""):
		return errors.New("assembled with parts")
	case !st.Assembled && st.Size != int64(len(st.Parts))*st.PartSize+st.TailSize:
		return errors.New("size does not add up")
	}
	return nil
}

func (ss *session) ID() string  { return ss.st.ID }
func (ss *session) Size() int64 { return ss.st.Size }

func (ss *session) State() ([]byte, error) {
	st := ss.st
	h, err := backend.MarshalSHA256(ss.h)
	if err != nil {
		return nil, fmt.Errorf("s3: session state: %w", err)
	}
	st.SHA256 = h
	return json.Marshal(st)
}

// Append implements blobstore.Session. It works on a copy of the state and
// keeps it only when everything landed, so a failure leaves the session as
// it was; parts a failed Append wrote under numbers the state does not
// count are overwritten by the next one or dropped by the commit.
func (ss *session) Append(ctx context.Context, offset int64, r io.Reader) (int64, error) {
	if err := ss.st.CheckAppend(offset); err != nil {
		return 0, err
	}
	if ss.st.Assembled {
		return 0, blobstore.ErrSessionSealed
	}
	s := ss.s
	next := ss.st
	next.Parts = slices.Clip(next.Parts) // appends must not reach ss.st's array
	next.PartCRC32C = slices.Clip(next.PartCRC32C)
	h, err := backend.CloneSHA256(ss.h)
	if err != nil {
		return 0, err
	}
	// Full parts go to S3 in the background while the next one fills,
	// each in a file of its own (partfile.go); a file whose part has gone
	// fills again.
	pw := s.newPartWriter(ctx, s.dataKey(next.ID), next.UploadID, next.CRC32C, len(next.Parts)+1)
	files := &partFiles{}
	defer func() {
		pw.wait() // no upload reads a file once it returns
		files.close()
	}()
	fail := func(err error) (int64, error) {
		pw.wait() // nothing of this Append may run on after it
		return 0, err
	}
	cur, err := files.take()
	if err != nil {
		return 0, err
	}
	if next.Tail != "" {
		if err := ss.readTail(ctx, cur); err != nil {
			return 0, err
		}
	}
	var n int64
	queued := 0
	for {
		got, rerr := cur.fill(r, h, next.PartSize)
		n += got
		if rerr != nil && rerr != io.EOF {
			return fail(fmt.Errorf("s3: append to session %s: %w", next.ID, rerr))
		}
		if cur.size == next.PartSize {
			if len(next.Parts)+queued == maxParts {
				return fail(fmt.Errorf("%w: more than %d parts of %d bytes", blobstore.ErrTooLarge, maxParts, next.PartSize))
			}
			if next.UploadID == "" {
				if err := ss.startUpload(ctx, &next); err != nil {
					return 0, err
				}
				pw.uploadID, pw.crc = next.UploadID, next.CRC32C
			}
			if err := pw.send(cur, files.gone(cur)); err != nil {
				return fail(sessionErr("append to", next.ID, err))
			}
			queued++
			if cur, err = files.take(); err != nil {
				return fail(err)
			}
		}
		if rerr == io.EOF {
			break
		}
	}
	parts, err := pw.wait()
	if err != nil {
		return 0, sessionErr("append to", next.ID, err)
	}
	next.addParts(parts)
	if n == 0 {
		return 0, nil
	}
	next.Tail, next.TailSize, next.TailSHA256 = "", 0, nil
	if cur.size > 0 {
		tail, err := backend.RandomID()
		if err != nil {
			return 0, err
		}
		sum, err := cur.tailSHA256()
		if err != nil {
			return 0, err
		}
		if err := s.putObjectFrom(ctx, s.tailKey(next.ID, tail), cur.body(), cur.size); err != nil {
			return 0, sessionErr("append to", next.ID, err)
		}
		next.Tail, next.TailSize, next.TailSHA256 = tail, cur.size, sum
	}
	next.Size += n
	ss.st, ss.h = next, h
	return n, nil
}

// startUpload starts st's multipart upload, before its first part.
func (ss *session) startUpload(ctx context.Context, st *sessionState) error {
	s := ss.s
	id, crc, err := s.createUpload(ctx, s.dataKey(st.ID))
	if err != nil {
		return sessionErr("append to", st.ID, err)
	}
	st.UploadID, st.CRC32C = id, crc
	return nil
}

// addParts records parts uploaded after st's.
func (st *sessionState) addParts(parts []uploadedPart) {
	for _, p := range parts {
		st.Parts = append(st.Parts, p.etag)
		if st.CRC32C {
			st.PartCRC32C = append(st.PartCRC32C, p.crc32c)
		}
	}
}

// uploadedParts are st's parts as completing the upload names them.
func (st *sessionState) uploadedParts() []uploadedPart {
	parts := make([]uploadedPart, len(st.Parts))
	for i, etag := range st.Parts {
		parts[i].etag = etag
		if st.CRC32C {
			parts[i].crc32c = st.PartCRC32C[i]
		}
	}
	return parts
}

// readTail writes the session's tail to w, checking it is the one the
// state recorded.
func (ss *session) readTail(ctx context.Context, w io.Writer) error {
	s, st := ss.s, ss.st
	key := s.tailKey(st.ID, st.Tail)
	out, err := s.client.GetObject(ctx, &awss3.GetObjectInput{Bucket: &s.bucket, Key: &key})
	if err != nil {
		return sessionErr("read", st.ID, err)
	}
	defer out.Body.Close()
	sum := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, sum), io.LimitReader(out.Body, st.TailSize))
	if err != nil {
		return fmt.Errorf("s3: read session %s: %w", st.ID, err)
	}
	if n != st.TailSize || !bytes.Equal(sum.Sum(nil), st.TailSHA256) {
		return fmt.Errorf("s3: session %s: tail does not match its state", st.ID)
	}
	return nil
}

// Commit implements blobstore.Session. A sha256 digest is checked against
// the hash state, before anything is written; another algorithm needs the
// bytes, so the session is assembled into one object and read back first.
// Unless the blob is there already, the verified bytes then become it: a
// session of less than a part is written at the blob key from its tail;
// a larger one is completed into its data object and linked (links.go),
// which costs the same whatever the size, where a copy to the blob key
// wrote every byte again. Completing the multipart straight at the blob
// key is not possible: S3 fixes an upload's key when it starts, and the
// digest is not known until now.
func (ss *session) Commit(ctx context.Context, d blobstore.Digest, size int64) (blobstore.Info, error) {
	if err := d.Validate(); err != nil {
		return blobstore.Info{}, err
	}
	if ss.st.Ended {
		return blobstore.Info{}, fmt.Errorf("%w: %s", blobstore.ErrSessionUnknown, ss.st.ID)
	}
	s := ss.s
	if size >= 0 && size != ss.st.Size {
		return blobstore.Info{}, fmt.Errorf("%w: declared %d, the session has %d bytes", blobstore.ErrSizeMismatch, size, ss.st.Size)
	}
	var src string
	if d.Algorithm == blobstore.SHA256 {
		if err := backend.Verify(d, -1, ss.st.Size, ss.h); err != nil {
			return blobstore.Info{}, err
		}
	} else {
		var err error
		if src, err = ss.assemble(ctx); err != nil {
			return blobstore.Info{}, err
		}
		if err := ss.verifyObject(ctx, src, d); err != nil {
			return blobstore.Info{}, err
		}
	}
	info := blobstore.Info{Digest: d, Size: ss.st.Size}
	have, err := s.Stat(ctx, d)
	if stalled(err) {
		// Not read as "absent": the commit would go on to its next call
		// on a server that just gave none an answer, and wait its bound
		// out again before its 503.
		return blobstore.Info{}, err
	}
	if err == nil && have.Size == info.Size {
		// Also a retry of a commit that linked this session's data and
		// was cut off before its answer: releaseData keeps linked data.
		ss.end(ctx, true)
		return info, nil
	} else if err == nil {
		// An object of another length is there (cut short by a broken
		// tool or a bucket restore): not d. Gone first, whichever form
		// it has, since reads try the blob key before a link and a link
		// is written only where none is.
		if err := s.Delete(ctx, d); err != nil {
			return blobstore.Info{}, err
		}
	}
	linked, err := ss.writeBlob(ctx, d, src)
	if err != nil {
		return blobstore.Info{}, err
	}
	ss.end(ctx, !linked)
	return info, nil
}

// timed logs how long one step of a commit took, for an operator (or a
// benchmark) asking where a slow push went.
func (ss *session) timed(step string, start time.Time) {
	ss.s.log.Debug("s3 commit", zap.String("session", ss.st.ID), zap.Int64("size", ss.st.Size),
		zap.String("step", step), zap.Duration("took", time.Since(start)))
}

// writeBlob makes the verified session blob d, from src if a sha512 check
// assembled it already. It reports whether the blob is the session's data
// object, linked (false: a plain object, or another session's linked data
// that won a race).
func (ss *session) writeBlob(ctx context.Context, d blobstore.Digest, src string) (bool, error) {
	s := ss.s
	if src == "" {
		var err error
		if src, err = ss.assemble(ctx); err != nil {
			return false, err
		}
	}
	defer ss.timed("write blob", time.Now())
	var err error
	linked := false
	switch {
	case src == "": // an empty blob
		err = s.putObject(ctx, s.blobKey(d), nil)
	case !ss.st.Assembled:
		// Under one part: the tail holds it all. Read back (which checks
		// it against the state) and written, rather than linked: one
		// object, as a Put would leave.
		var b bytes.Buffer
		b.Grow(int(ss.st.TailSize))
		if err := ss.readTail(ctx, &b); err != nil {
			return false, err
		}
		err = s.putObject(ctx, s.blobKey(d), b.Bytes())
	default:
		linked, err = s.linkData(ctx, d, ss.st.ID, ss.st.Size)
	}
	if err != nil {
		return false, sessionErr("commit", ss.st.ID, err)
	}
	return linked, nil
}

// assemble returns the key of one object holding all the session's bytes
// ("" for none): the tail when there are no parts, else the completed
// multipart upload, with the tail uploaded as its last part.
func (ss *session) assemble(ctx context.Context) (string, error) {
	s, st := ss.s, &ss.st
	switch {
	case st.Size == 0:
		return "", nil
	case st.Assembled:
		return s.dataKey(st.ID), nil
	case len(st.Parts) == 0:
		return s.tailKey(st.ID, st.Tail), nil
	}
	key := s.dataKey(st.ID)
	parts := st.uploadedParts()
	if st.Tail != "" {
		var buf bytes.Buffer
		buf.Grow(int(st.TailSize))
		if err := ss.readTail(ctx, &buf); err != nil {
			return "", err
		}
		p, err := s.uploadPart(ctx, key, st.UploadID, len(parts)+1, memPart(buf.Bytes()), st.CRC32C)
		switch {
		case err == nil:
			parts = append(parts, p)
		case ss.completedBefore(ctx, key, err):
			return ss.assembled(key), nil
		default:
			return "", sessionErr("commit", st.ID, err)
		}
	}
	defer ss.timed("assemble", time.Now())
	if err := s.complete(ctx, key, st.UploadID, parts); err != nil && !ss.completedBefore(ctx, key, err) {
		return "", sessionErr("commit", st.ID, err)
	}
	return ss.assembled(key), nil
}

// completedBefore says whether err, the upload's absence (404) on a step
// of assemble, is because an earlier try of this commit completed it (a
// replica killed, an answer lost, before the link): the data object is
// there, whole. The retry then goes on from it rather than lose the
// session: the state it resumed from predates that completion.
func (ss *session) completedBefore(ctx context.Context, key string, err error) bool {
	if statusOf(err) != http.StatusNotFound {
		return false
	}
	n, herr := ss.s.head(ctx, key)
	return herr == nil && n == ss.st.Size
}

// assembled records that the session's bytes are the data object key.
func (ss *session) assembled(key string) string {
	st := &ss.st
	*st = sessionState{SessionState: st.SessionState, PartSize: st.PartSize, Assembled: true}
	return key
}

// verifyObject reads key back and checks it hashes to d.
func (ss *session) verifyObject(ctx context.Context, key string, d blobstore.Digest) error {
	h := d.Algorithm.New()
	var n int64
	if key != "" {
		s := ss.s
		out, err := s.client.GetObject(ctx, &awss3.GetObjectInput{Bucket: &s.bucket, Key: &key})
		if err != nil {
			return sessionErr("commit", ss.st.ID, err)
		}
		defer out.Body.Close()
		if n, err = io.Copy(h, out.Body); err != nil {
			return fmt.Errorf("s3: commit session %s: %w", ss.st.ID, err)
		}
	}
	if n != ss.st.Size {
		return fmt.Errorf("s3: commit session %s: read %d of %d bytes", ss.st.ID, n, ss.st.Size)
	}
	return backend.Verify(d, -1, n, h)
}

// Cancel implements blobstore.Session.
func (ss *session) Cancel(ctx context.Context) error {
	if err := ss.s.purge(ctx, ss.st, true); err != nil {
		return sessionErr("cancel", ss.st.ID, err)
	}
	ss.st.Ended = true
	return nil
}

// end frees a committed session's bytes, and its data object too unless
// the commit linked it (release: releaseData decides). The blob is in
// place, so a failure here is garbage, not an error for the caller.
func (ss *session) end(ctx context.Context, release bool) {
	if err := ss.s.purge(ctx, ss.st, release); err != nil {
		ss.s.log.Warn("free committed upload session", zap.String("session", ss.st.ID), zap.Error(err))
	}
	ss.st.Ended = true
}

// purge aborts the session's multipart uploads and deletes its objects:
// the ones its state names, and any that a failed or raced Append left
// behind, found by listing the session's own prefixes; and with release,
// its data object, unless a link names it (a commit that linked it and
// was cut off before its answer, then cancelled).
//
// A call that met a hung server (stalled) ends the purge: each of the
// others would wait its own bound out, minutes in all, on the path of a
// commit that is done or a cancel; what is left the leftovers sweep
// finds.
func (s *Store) purge(ctx context.Context, st sessionState, release bool) error {
	prefix := s.sessionPrefix(st.ID)
	key := s.dataKey(st.ID)
	var errs []error
	// failed keeps err and reports whether the purge stops at it.
	failed := func(err error) bool {
		errs = append(errs, err)
		return stalled(err)
	}
	if st.UploadID != "" {
		_, err := s.client.AbortMultipartUpload(ctx, &awss3.AbortMultipartUploadInput{Bucket: &s.bucket, Key: &key, UploadId: &st.UploadID})
		switch {
		case err == nil:
			go s.abortAgain(key, st.UploadID) // a chunk's part may land late (see abort)
		case statusOf(err) != http.StatusNotFound && failed(err):
			return errors.Join(errs...)
		}
	}
	uploads, err := s.client.ListMultipartUploads(ctx, &awss3.ListMultipartUploadsInput{Bucket: &s.bucket, Prefix: &key})
	if err != nil {
		if failed(err) {
			return errors.Join(errs...)
		}
	} else {
		for _, u := range uploads.Uploads {
			if aws.ToString(u.Key) != key || aws.ToString(u.UploadId) == st.UploadID {
				continue
			}
			_, err := s.client.AbortMultipartUpload(ctx, &awss3.AbortMultipartUploadInput{Bucket: &s.bucket, Key: u.Key, UploadId: u.UploadId})
			switch {
			case err == nil:
				go s.abortAgain(key, aws.ToString(u.UploadId))
			case statusOf(err) != http.StatusNotFound && failed(err):
				return errors.Join(errs...)
			}
		}
	}
	pages := awss3.NewListObjectsV2Paginator(s.client, &awss3.ListObjectsV2Input{Bucket: &s.bucket, Prefix: &prefix})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			if failed(err) {
				return errors.Join(errs...)
			}
			break
		}
		for _, o := range page.Contents {
			if err := s.deleteObject(ctx, aws.ToString(o.Key)); err != nil && failed(err) {
				return errors.Join(errs...)
			}
		}
	}
	// Only a session with parts ever had a data object.
	if release && (st.Assembled || st.UploadID != "") {
		if err := s.releaseData(ctx, st.ID); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// sessionErr turns an S3 error about a session into the contract's: a
// missing upload or tail means the session is gone.
func sessionErr(op, id string, err error) error {
	if statusOf(err) == http.StatusNotFound {
		return fmt.Errorf("%w: %s: %w", blobstore.ErrSessionUnknown, id, err)
	}
	return fmt.Errorf("s3: %s session %s: %w", op, id, err)
}
