package pgmeta

// Upload sessions and the GC queries of metastore.Store.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/metastore"
	"github.com/jackc/pgx/v5"
)

const uploadColumns = "id, repo, owner, state, size, version, started, updated, reserved"

func scanUpload(row pgx.Row) (metastore.Upload, error) {
	var u metastore.Upload
	err := row.Scan(&u.ID, &u.Repo, &u.Owner, &u.State, &u.Size, &u.Version, &u.Started, &u.Updated, &u.Reserved)
	return u, err
}

// CreateUpload records a new session within q.
func (s *Store) CreateUpload(ctx context.Context, u metastore.Upload, q metastore.UploadQuota) (metastore.Upload, error) {
	u, err := metastore.NewUpload(u)
	if err != nil {
		return metastore.Upload{}, err
	}
	err = s.inTx(ctx, "create upload", func(ctx context.Context, tx pgx.Tx) error {
		// Counting and inserting are one step for each limit: the
		// advisory lock of the repository (then of the owner, always in
		// that order) queues the replicas opening sessions of it.
		if q.PerRepo > 0 {
			if err := underQuota(ctx, tx, lockUploadRepo, "repo", u.Repo, q.PerRepo); err != nil {
				return err
			}
		}
		if q.PerOwner > 0 && u.Owner != "" {
			if err := underQuota(ctx, tx, lockUploadOwner, "owner", u.Owner, q.PerOwner); err != nil {
				return err
			}
		}
		if err := underBytes(ctx, tx, u.Owner, 0, q); err != nil {
			return err
		}
		tg, err := tx.Exec(ctx, `INSERT INTO uploads (`+uploadColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0)
			ON CONFLICT (id) DO NOTHING`, u.ID, u.Repo, u.Owner, u.State, u.Size, u.Version, u.Started, u.Updated)
		if err == nil && tg.RowsAffected() == 0 {
			return fmt.Errorf("%w: %s", metastore.ErrUploadExists, u.ID)
		}
		return err
	})
	if err != nil {
		return metastore.Upload{}, err
	}
	return u, nil
}

// underQuota takes the advisory lock of one limit and checks it. column
// is a constant of ours, never input.
func underQuota(ctx context.Context, tx pgx.Tx, class int32, column, name string, max int) error {
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1, hashtext($2))", class, name); err != nil {
		return err
	}
	var n int
	if err := tx.QueryRow(ctx, "SELECT count(*) FROM uploads WHERE "+column+" = $1", name).Scan(&n); err != nil {
		return err
	}
	if n >= max {
		return fmt.Errorf("%w: %d sessions of %s %s open, the limit", metastore.ErrTooManyUploads, n, column, name)
	}
	return nil
}

// underBytes checks that n more bytes keep the open sessions of owner
// and of everyone within q (n = 0: that they are below it, for a new
// session), under the advisory locks of the owner's bytes and then of
// everyone's, held to the end of tx: counting and the change the caller
// makes next are one step for every replica.
func underBytes(ctx context.Context, tx pgx.Tx, owner string, n int64, q metastore.UploadQuota) error {
	over := func(held, max int64) bool { return held+n > max || n == 0 && held >= max }
	if q.OwnerBytes > 0 && owner != "" {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1, hashtext($2))", lockUploadOwnerBytes, owner); err != nil {
			return err
		}
		var held int64
		if err := tx.QueryRow(ctx, "SELECT coalesce(sum(size + reserved), 0) FROM uploads WHERE owner = $1", owner).Scan(&held); err != nil {
			return err
		}
		if over(held, q.OwnerBytes) {
			return fmt.Errorf("%w: open uploads of %s hold %d bytes of %d", metastore.ErrUploadShare, owner, held, q.OwnerBytes)
		}
	}
	if q.Bytes > 0 {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1, 0)", lockUploadBytes); err != nil {
			return err
		}
		var held int64
		if err := tx.QueryRow(ctx, "SELECT coalesce(sum(size + reserved), 0) FROM uploads").Scan(&held); err != nil {
			return err
		}
		if over(held, q.Bytes) {
			return fmt.Errorf("%w: open uploads hold %d bytes of %d", metastore.ErrUploadSpace, held, q.Bytes)
		}
	}
	return nil
}

// ReserveUploadBytes counts and reserves n bytes of a chunk of id.
func (s *Store) ReserveUploadBytes(ctx context.Context, id string, n int64, q metastore.UploadQuota) error {
	if err := metastore.CheckName("upload", id); err != nil {
		return err
	}
	if n <= 0 {
		return fmt.Errorf("reserve upload bytes: %d is not a positive count", n)
	}
	return s.inTx(ctx, "reserve upload bytes", func(ctx context.Context, tx pgx.Tx) error {
		var owner string
		err := tx.QueryRow(ctx, "SELECT owner FROM uploads WHERE id = $1", id).Scan(&owner)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: %s", metastore.ErrUploadUnknown, id)
		}
		if err != nil {
			return err
		}
		if err := underBytes(ctx, tx, owner, n, q); err != nil {
			return err
		}
		tg, err := tx.Exec(ctx, "UPDATE uploads SET reserved = reserved + $2 WHERE id = $1", id, n)
		if err == nil && tg.RowsAffected() == 0 {
			return fmt.Errorf("%w: %s", metastore.ErrUploadUnknown, id)
		}
		return err
	})
}

// ReleaseUploadBytes ends id's reservation.
func (s *Store) ReleaseUploadBytes(ctx context.Context, id string) error {
	if err := metastore.CheckName("upload", id); err != nil {
		return err
	}
	cctx, cancel := s.metaCall(ctx)
	defer cancel()
	_, err := s.execTx(cctx, "UPDATE uploads SET reserved = 0 WHERE id = $1 AND reserved <> 0", id)
	return failed(ctx, "release upload bytes", err)
}

// Upload returns session id.
func (s *Store) Upload(ctx context.Context, id string) (metastore.Upload, error) {
	if err := metastore.CheckName("upload", id); err != nil {
		return metastore.Upload{}, err
	}
	cctx, cancel := s.metaCall(ctx)
	defer cancel()
	u, err := scanUpload(s.pool.QueryRow(cctx, "SELECT "+uploadColumns+" FROM uploads WHERE id = $1", id))
	if errors.Is(err, pgx.ErrNoRows) {
		return u, fmt.Errorf("%w: %s", metastore.ErrUploadUnknown, id)
	}
	return u, failed(ctx, "upload", err)
}

// AdvanceUpload is the compare-and-swap of a session.
func (s *Store) AdvanceUpload(ctx context.Context, read metastore.Upload, state []byte, size int64, at time.Time) (metastore.Upload, error) {
	if err := metastore.CheckName("upload", read.ID); err != nil {
		return metastore.Upload{}, err
	}
	if state == nil {
		state = []byte{}
	}
	cctx, cancel := s.metaCall(ctx)
	defer cancel()
	u, err := scanUpload(s.pool.QueryRow(cctx, `UPDATE uploads SET state = $4, size = $5, updated = $6, version = version + 1, reserved = 0
		WHERE id = $1 AND version = $2 AND size = $3 AND $5 >= size
		RETURNING `+uploadColumns, read.ID, read.Version, read.Size, state, size, at))
	if errors.Is(err, pgx.ErrNoRows) {
		return u, fmt.Errorf("%w: %s is not at version %d, size %d", metastore.ErrUploadMoved, read.ID, read.Version, read.Size)
	}
	return u, failed(ctx, "advance upload", err)
}

// DeleteUpload removes session id.
func (s *Store) DeleteUpload(ctx context.Context, id string) error {
	if err := metastore.CheckName("upload", id); err != nil {
		return err
	}
	return s.execOne(ctx, "delete upload", fmt.Errorf("%w: %s", metastore.ErrUploadUnknown, id),
		"DELETE FROM uploads WHERE id = $1", id)
}

// UploadUsage counts the sessions of repo and owner.
func (s *Store) UploadUsage(ctx context.Context, repo, owner string) (metastore.UploadUsage, error) {
	if err := metastore.CheckUsage(repo, owner); err != nil {
		return metastore.UploadUsage{}, err
	}
	cctx, cancel := s.metaCall(ctx)
	defer cancel()
	var u metastore.UploadUsage
	err := s.pool.QueryRow(cctx, `SELECT
		(SELECT count(*) FROM uploads WHERE repo = $1),
		(SELECT count(*) FROM uploads WHERE owner = $2 AND owner <> ''),
		(SELECT coalesce(sum(size + reserved), 0) FROM uploads WHERE owner = $2 AND owner <> ''),
		(SELECT coalesce(sum(size + reserved), 0) FROM uploads)`,
		repo, owner).Scan(&u.RepoSessions, &u.OwnerSessions, &u.OwnerBytes, &u.Bytes)
	return u, failed(ctx, "upload usage", err)
}

// ExpiredUploads lists sessions past their TTL or idle, after a cursor.
func (s *Store) ExpiredUploads(ctx context.Context, startedBefore, updatedBefore time.Time, after metastore.Upload, n int) ([]metastore.Upload, error) {
	var idle *time.Time
	if !updatedBefore.IsZero() {
		idle = &updatedBefore
	}
	cctx, cancel := s.metaCall(ctx)
	defer cancel()
	rows, _ := s.pool.Query(cctx, `SELECT `+uploadColumns+` FROM uploads
		WHERE (started < $1 OR updated < $2) AND (started, id) > ($3, $4)
		ORDER BY started, id LIMIT $5`, startedBefore, idle, after.Started, after.ID, limit(n))
	us, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (metastore.Upload, error) { return scanUpload(r) })
	return us, failed(ctx, "expired uploads", err)
}

// notReferenced is the condition of a link (alias l) that no manifest of
// its repository references or is.
const notReferenced = `NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.repo = l.repo AND r.ref = l.digest)
	AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repo = l.repo AND m.digest = l.digest)`

// notLinked is the condition of a blob (alias b) no repository links or
// holds as a manifest.
const notLinked = `NOT EXISTS (SELECT 1 FROM blob_links l WHERE l.digest = b.digest)
	AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.digest = b.digest)`

func scanLink(r pgx.CollectableRow) (metastore.Link, error) {
	var l metastore.Link
	var d string
	if err := r.Scan(&l.Repo, &d, &l.Linked); err != nil {
		return l, err
	}
	var err error
	l.Digest, err = parseDigest(d)
	return l, err
}

func scanBlob(r pgx.CollectableRow) (metastore.BlobRecord, error) {
	var b metastore.BlobRecord
	var d string
	if err := r.Scan(&d, &b.Size, &b.Created, &b.Touched); err != nil {
		return b, err
	}
	var err error
	b.Digest, err = parseDigest(d)
	return b, err
}

// cursor renders a digest cursor: "" (before every digest) for zero.
func cursor(d metastore.Digest) string {
	if d.IsZero() {
		return ""
	}
	return d.String()
}

// UnreferencedLinks lists old links no manifest references.
func (s *Store) UnreferencedLinks(ctx context.Context, before time.Time, after metastore.Link, n int) ([]metastore.Link, error) {
	if err := metastore.CheckLast(after.Repo); err != nil {
		return nil, err
	}
	cctx, cancel := s.metaCall(ctx)
	defer cancel()
	rows, _ := s.pool.Query(cctx, `SELECT l.repo, l.digest, l.linked FROM blob_links l
		WHERE (l.repo, l.digest) > ($1, $2) AND l.linked < $3 AND `+notReferenced+`
		ORDER BY l.repo, l.digest LIMIT $4`, after.Repo, cursor(after.Digest), before, limit(n))
	ls, err := pgx.CollectRows(rows, scanLink)
	return ls, failed(ctx, "unreferenced links", err)
}

// DropLinks removes the links of ls still unreferenced and old.
func (s *Store) DropLinks(ctx context.Context, ls []metastore.Link, before time.Time) ([]metastore.Link, error) {
	if len(ls) == 0 {
		return nil, nil
	}
	repos, ds := make([]string, len(ls)), make([]string, len(ls))
	for i, l := range ls {
		if err := metastore.CheckDigest("link", l.Digest); err != nil {
			return nil, err
		}
		repos[i], ds[i] = l.Repo, l.Digest.String()
	}
	var dropped []metastore.Link
	err := s.inTx(ctx, "drop links", func(ctx context.Context, tx pgx.Tx) error {
		// First the locks, waiting out a link or a manifest commit in
		// flight; then the check, in a statement whose snapshot sees what
		// they committed.
		if _, err := tx.Exec(ctx, `SELECT 1 FROM blob_links l JOIN unnest($1::text[], $2::text[]) AS c (repo, digest)
			ON l.repo = c.repo AND l.digest = c.digest ORDER BY l.repo, l.digest FOR UPDATE OF l`, repos, ds); err != nil {
			return err
		}
		rows, _ := tx.Query(ctx, `DELETE FROM blob_links l USING unnest($1::text[], $2::text[]) AS c (repo, digest)
			WHERE l.repo = c.repo AND l.digest = c.digest AND l.linked < $3 AND `+notReferenced+`
			RETURNING l.repo, l.digest, l.linked`, repos, ds, before)
		var err error
		dropped, err = pgx.CollectRows(rows, scanLink)
		return err
	})
	return dropped, err
}

// UnlinkedBlobs lists old blobs nothing links.
func (s *Store) UnlinkedBlobs(ctx context.Context, before time.Time, after metastore.Digest, n int) ([]metastore.BlobRecord, error) {
	cctx, cancel := s.metaCall(ctx)
	defer cancel()
	rows, _ := s.pool.Query(cctx, `SELECT b.digest, b.size, b.created, b.touched FROM blobs b
		WHERE b.digest > $1 AND b.deleting IS NULL AND b.touched < $2 AND `+notLinked+`
		ORDER BY b.digest LIMIT $3`, cursor(after), before, limit(n))
	bs, err := pgx.CollectRows(rows, scanBlob)
	return bs, failed(ctx, "unlinked blobs", err)
}

// MarkBlobsDeleting marks the blobs of ds still unlinked and old.
func (s *Store) MarkBlobsDeleting(ctx context.Context, ds []metastore.Digest, before time.Time) ([]metastore.BlobRecord, error) {
	txt, err := digests("blob", ds)
	if err != nil || len(txt) == 0 {
		return nil, err
	}
	var marked []metastore.BlobRecord
	err = s.inTx(ctx, "mark blobs", func(ctx context.Context, tx pgx.Tx) error {
		// As DropLinks: the locks wait out a LinkBlob in flight (it holds
		// the row FOR SHARE), and the next statement sees its link.
		if _, err := tx.Exec(ctx, "SELECT 1 FROM blobs WHERE digest = ANY($1) ORDER BY digest FOR UPDATE", txt); err != nil {
			return err
		}
		rows, _ := tx.Query(ctx, `UPDATE blobs b SET deleting = now()
			WHERE b.digest = ANY($1) AND b.deleting IS NULL AND b.touched < $2 AND `+notLinked+`
			RETURNING b.digest, b.size, b.created, b.touched`, txt, before)
		var err error
		marked, err = pgx.CollectRows(rows, scanBlob)
		return err
	})
	slices.SortFunc(marked, func(a, b metastore.BlobRecord) int { return cmpDigest(a.Digest, b.Digest) })
	return marked, err
}

func cmpDigest(a, b metastore.Digest) int {
	switch as, bs := a.String(), b.String(); {
	case as < bs:
		return -1
	case as > bs:
		return 1
	}
	return 0
}

// DeletingBlobs lists blobs marked as being deleted.
func (s *Store) DeletingBlobs(ctx context.Context, after metastore.Digest, n int) ([]metastore.BlobRecord, error) {
	cctx, cancel := s.metaCall(ctx)
	defer cancel()
	rows, _ := s.pool.Query(cctx, `SELECT digest, size, created, touched FROM blobs
		WHERE deleting IS NOT NULL AND digest > $1 ORDER BY digest LIMIT $2`, cursor(after), limit(n))
	bs, err := pgx.CollectRows(rows, scanBlob)
	return bs, failed(ctx, "deleting blobs", err)
}

// ForgetBlobs removes the records of marked blobs.
func (s *Store) ForgetBlobs(ctx context.Context, ds []metastore.Digest) error {
	txt, err := digests("blob", ds)
	if err != nil || len(txt) == 0 {
		return err
	}
	cctx, cancel := s.metaCall(ctx)
	defer cancel()
	_, err = s.pool.Exec(cctx, "DELETE FROM blobs WHERE digest = ANY($1) AND deleting IS NOT NULL", txt)
	return failed(ctx, "forget blobs", err)
}

// encodeAnnotations stores annotations exactly, whatever bytes they hold
// (JSON would replace invalid UTF-8): a count, then each key and value
// with its length, keys in order. Nil for none.
func encodeAnnotations(a map[string]string) []byte {
	if len(a) == 0 {
		return nil
	}
	b := binary.AppendUvarint(nil, uint64(len(a)))
	for _, k := range slices.Sorted(maps.Keys(a)) {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.AppendUvarint(b, uint64(len(a[k])))
		b = append(b, a[k]...)
	}
	return b
}

func decodeAnnotations(b []byte) (map[string]string, error) {
	if len(b) == 0 {
		return nil, nil
	}
	next := func() (string, bool) {
		n, w := binary.Uvarint(b)
		if w <= 0 || n > uint64(len(b)-w) {
			return "", false
		}
		s := string(b[w : w+int(n)])
		b = b[w+int(n):]
		return s, true
	}
	count, w := binary.Uvarint(b)
	if w <= 0 || count > uint64(len(b)) {
		return nil, fmt.Errorf("%w: annotations", errDamaged)
	}
	b = b[w:]
	a := make(map[string]string, count)
	for range count {
		k, ok := next()
		v, ok2 := next()
		if !ok || !ok2 {
			return nil, fmt.Errorf("%w: annotations", errDamaged)
		}
		a[k] = v
	}
	return a, nil
}

var _ metastore.Store = (*Store)(nil)
