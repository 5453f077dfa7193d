package pgmeta

// The registry's metadata (metastore.Store) in PostgreSQL: schema in
// migrations/0002_metadata.sql.
//
// Races between replicas are settled by the database, never by a lock of
// this process:
//   - tag moves and upload advances are compare-and-swap UPDATEs (the
//     row lock orders them; the loser's WHERE no longer matches);
//   - a create-only manifest put (CreateManifest) writes its manifest
//     and tags with INSERT ... ON CONFLICT DO UPDATE ... WHERE: a
//     concurrent insert of the same key makes it wait for that
//     transaction's end, then it locks the committed row and checks its
//     WHERE against it, so at Read Committed two replicas cannot both
//     pass; one that does not touch every row it names rolls back;
//   - a link and GC's removal of what it links take the same row lock
//     first (LinkBlob and PutManifest FOR SHARE, GC FOR UPDATE), and GC
//     checks again in a later statement, whose snapshot sees what the
//     other committed: a link made or referenced meanwhile always wins;
//   - opening an upload session counts and inserts under an advisory
//     lock of its repository and of its owner.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Advisory lock classes (the two-key form, apart from the migration
// lock's one-key form) of the upload limits.
const (
	lockUploadRepo       int32 = 0x75706c72 // "uplr"
	lockUploadOwner      int32 = 0x75706c6f // "uplo"
	lockUploadOwnerBytes int32 = 0x75706262 // "upbb"
	lockUploadBytes      int32 = 0x75706261 // "upba"
)

// metaCall bounds one call by the store's timeout within ctx.
func (s *Store) metaCall(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout)
}

// errDamaged: a stored value this code cannot read (written by hand, or
// by a newer release). A server that answered is not unavailable.
var errDamaged = errors.New("postgres: stored record does not decode")

// ownErrors are the errors a call makes itself; they pass unwrapped.
var ownErrors = []error{
	errDamaged,
	metastore.ErrNameInvalid, metastore.ErrDigestInvalid, metastore.ErrDigestMismatch,
	metastore.ErrRepoUnknown, metastore.ErrBlobUnknown, metastore.ErrManifestUnknown,
	metastore.ErrTagUnknown, metastore.ErrUploadUnknown, metastore.ErrTagMoved, metastore.ErrManifestRetyped,
	metastore.ErrUploadMoved, metastore.ErrUploadExists, metastore.ErrTooManyUploads,
	metastore.ErrBlobDeleting, metastore.ErrSizeMismatch, metastore.ErrUploadSpace,
}

// failed turns a failure of a call into what callers test for: the
// call's own errors as they are, the caller's context as it is, and
// everything that says the server cannot be reached or did not answer in
// time as metastore.ErrUnavailable. What is left is a statement the
// server refused: a bug, named as such.
func failed(parent context.Context, what string, err error) error {
	if err == nil {
		return nil
	}
	for _, own := range ownErrors {
		if errors.Is(err, own) {
			return err
		}
	}
	if perr := parent.Err(); perr != nil {
		return fmt.Errorf("postgres: %s: %w", what, perr)
	}
	if isCode(err, "53100") { // disk_full: a class 53 code, but no outage
		return fmt.Errorf("%w: postgres: %s: %w", metastore.ErrStorageFull, what, err)
	}
	if unavailable(err) {
		return fmt.Errorf("%w: postgres: %s: %w", metastore.ErrUnavailable, what, err)
	}
	return fmt.Errorf("postgres: %s: %w", what, err)
}

// unavailable: the server is down, hung, starting, stopping or out of
// connections, rather than refusing the statement.
func unavailable(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		// No answer from the server: a network error, the call's
		// timeout, a broken connection, the pool's wait.
		return true
	}
	switch {
	case pgErr.Code[:2] == "08", // connection exception
		pgErr.Code[:2] == "53",                                              // insufficient resources (too many connections)
		pgErr.Code == "57P01", pgErr.Code == "57P02", pgErr.Code == "57P03", // shutdown, starting up
		pgErr.Code == "57014": // query cancelled: our timeout
		return true
	}
	return false
}

// retryable: a transaction the server aborted to break a deadlock or a
// serialization conflict; running it again is the documented answer.
func retryable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "40P01" || pgErr.Code == "40001")
}

func isCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

// inTx runs fn in a transaction, again if the server aborted it for a
// deadlock, within one call's time.
func (s *Store) inTx(ctx context.Context, what string, fn func(ctx context.Context, tx pgx.Tx) error) error {
	cctx, cancel := s.metaCall(ctx)
	defer cancel()
	var err error
	for range 5 {
		err = pgx.BeginFunc(cctx, s.pool, func(tx pgx.Tx) error { return fn(cctx, tx) })
		if !retryable(err) {
			break
		}
	}
	return failed(ctx, what, err)
}

// execOne runs a statement that changes one row, or none: then the
// thing was not there, and missing says so.
func (s *Store) execOne(ctx context.Context, what string, missing error, sql string, args ...any) error {
	cctx, cancel := s.metaCall(ctx)
	defer cancel()
	tag, err := s.execTx(cctx, sql, args...)
	if err == nil && tag.RowsAffected() == 0 {
		return missing
	}
	return failed(ctx, what, err)
}

// execTx runs one write in a transaction committed once its answer is
// in. Sent on its own, a statement whose answer never came (the server
// process stopped, its network path stalled, and the call timed out)
// still waits in the server's socket and runs whenever the server goes
// on, after the caller was told it failed and after newer writes of the
// same row, acknowledged through other connections or replicas, which
// it then undoes: a late DeleteTag drops a tag moved since, a late tag
// create brings back a tag deleted since. In a transaction it runs and
// is rolled back, as the server finds its client gone before a COMMIT.
// Writes that only add (the login ledger), or that check a version or a
// token of their own, need none of this.
//
// BEGIN goes out with the statement, in one batch (one round trip), and
// COMMIT once the answer is in: two round trips where a transaction
// opened on its own takes three. Sent again, as resendingPool sends a
// statement, while it failed on a dead connection before a byte of it
// went out (then nothing of it ran, or was committed).
func (s *Store) execTx(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	tag, err := s.execTxOnce(ctx, sql, args...)
	for tries := 0; resend(ctx, err, tries); tries++ {
		tag, err = s.execTxOnce(ctx, sql, args...)
	}
	return tag, err
}

func (s *Store) execTxOnce(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	// A connection still in a transaction here (the ROLLBACK below
	// failed: the call's time is up, the server gone) is closed by the
	// pool, never handed to another call.
	defer conn.Release()
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue(sql, args...)
	br := conn.SendBatch(ctx, b)
	_, err = br.Exec()
	var tag pgconn.CommandTag
	if err == nil {
		tag, err = br.Exec()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		_, err = conn.Exec(ctx, "COMMIT")
	}
	if err != nil && conn.Conn().PgConn().TxStatus() != 'I' && !conn.Conn().IsClosed() {
		_, _ = conn.Exec(ctx, "ROLLBACK")
	}
	return tag, err
}

// digests renders ds as text, checking each.
func digests(kind string, ds []metastore.Digest) ([]string, error) {
	out := make([]string, 0, len(ds))
	for _, d := range ds {
		if err := metastore.CheckDigest(kind, d); err != nil {
			return nil, err
		}
		out = append(out, d.String())
	}
	return out, nil
}

// parseDigest reads a digest this store wrote.
func parseDigest(s string) (metastore.Digest, error) {
	d, err := blobstore.ParseDigest(s)
	if err != nil {
		return d, fmt.Errorf("%w: digest %q: %w", errDamaged, s, err)
	}
	return d, nil
}

// limit renders n as a LIMIT: nil (none) for n < 0.
func limit(n int) *int {
	if n < 0 {
		return nil
	}
	return &n
}

// page reads names from rows into a page of at most n (n < 0: all),
// given rows of at most n+1.
func page(rows pgx.Rows, n int) (metastore.Page, error) {
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return metastore.Page{}, err
	}
	p := metastore.Page{Names: names}
	if p.Names == nil {
		p.Names = []string{}
	}
	if n >= 0 && len(p.Names) > n {
		p.Names, p.More = p.Names[:n], true
	}
	return p, nil
}

// plusOne is the LIMIT that tells whether more follow a page of n.
func plusOne(n int) *int {
	if n < 0 {
		return nil
	}
	m := n + 1
	return &m
}

// Repositories lists repository names after last.
func (s *Store) Repositories(ctx context.Context, last string, n int) (metastore.Page, error) {
	if err := metastore.CheckLast(last); err != nil {
		return metastore.Page{}, err
	}
	cctx, cancel := s.metaCall(ctx)
	defer cancel()
	rows, _ := s.pool.Query(cctx, "SELECT name FROM repositories WHERE name > $1 ORDER BY name LIMIT $2", last, plusOne(n))
	p, err := page(rows, n)
	return p, failed(ctx, "repositories", err)
}

// RecordBlob records blob d, or touches its record.
func (s *Store) RecordBlob(ctx context.Context, d metastore.Digest, size int64, at time.Time) (metastore.BlobRecord, error) {
	if err := metastore.CheckDigest("blob", d); err != nil {
		return metastore.BlobRecord{}, err
	}
	if size < 0 {
		return metastore.BlobRecord{}, fmt.Errorf("blob %s: negative size %d", d, size)
	}
	rec := metastore.BlobRecord{Digest: d}
	err := s.inTx(ctx, "record blob "+d.String(), func(ctx context.Context, tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `INSERT INTO blobs (digest, size, created, touched) VALUES ($1, $2, $3, $3)
			ON CONFLICT (digest) DO UPDATE SET touched = greatest(blobs.touched, excluded.touched)
			WHERE blobs.deleting IS NULL AND blobs.size = excluded.size
			RETURNING size, created, touched`, d.String(), size, at).Scan(&rec.Size, &rec.Created, &rec.Touched)
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		// The row is there and the update's condition failed: say which.
		var have int64
		var deleting bool
		if err := tx.QueryRow(ctx, "SELECT size, deleting IS NOT NULL FROM blobs WHERE digest = $1", d.String()).Scan(&have, &deleting); err != nil {
			return err
		}
		if deleting {
			return fmt.Errorf("%w: %s", metastore.ErrBlobDeleting, d)
		}
		return fmt.Errorf("%w: blob %s has %d bytes, not %d", metastore.ErrSizeMismatch, d, have, size)
	})
	return rec, err
}

// Blob returns d's record.
func (s *Store) Blob(ctx context.Context, d metastore.Digest) (metastore.BlobRecord, error) {
	if err := metastore.CheckDigest("blob", d); err != nil {
		return metastore.BlobRecord{}, err
	}
	cctx, cancel := s.metaCall(ctx)
	defer cancel()
	rec := metastore.BlobRecord{Digest: d}
	err := s.pool.QueryRow(cctx, "SELECT size, created, touched FROM blobs WHERE digest = $1 AND deleting IS NULL",
		d.String()).Scan(&rec.Size, &rec.Created, &rec.Touched)
	if errors.Is(err, pgx.ErrNoRows) {
		return rec, fmt.Errorf("%w: %s", metastore.ErrBlobUnknown, d)
	}
	return rec, failed(ctx, "blob "+d.String(), err)
}

// LinkBlob links d into repo as of at.
func (s *Store) LinkBlob(ctx context.Context, repo string, d metastore.Digest, at time.Time) error {
	if err := metastore.CheckRepoDigest(repo, "blob", d); err != nil {
		return err
	}
	return s.inTx(ctx, "link blob", func(ctx context.Context, tx pgx.Tx) error {
		// The share lock holds off GC's mark of this blob until the link
		// is committed; a blob marked already is not there to link.
		var one int
		err := tx.QueryRow(ctx, "SELECT 1 FROM blobs WHERE digest = $1 AND deleting IS NULL FOR SHARE", d.String()).Scan(&one)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: %s", metastore.ErrBlobUnknown, d)
		}
		if err != nil {
			return err
		}
		if err := addRepo(ctx, tx, repo, at); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO blob_links (repo, digest, linked) VALUES ($1, $2, $3)
			ON CONFLICT (repo, digest) DO UPDATE SET linked = greatest(blob_links.linked, excluded.linked)`,
			repo, d.String(), at)
		return err
	})
}

// addRepo makes repo exist. An existing one costs an index probe, no
// write.
func addRepo(ctx context.Context, tx pgx.Tx, repo string, at time.Time) error {
	_, err := tx.Exec(ctx, "INSERT INTO repositories (name, created) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", repo, at)
	return err
}

// BlobLink returns repo's link to d with d's record.
func (s *Store) BlobLink(ctx context.Context, repo string, d metastore.Digest) (metastore.Link, metastore.BlobRecord, error) {
	if err := metastore.CheckRepoDigest(repo, "blob", d); err != nil {
		return metastore.Link{}, metastore.BlobRecord{}, err
	}
	cctx, cancel := s.metaCall(ctx)
	defer cancel()
	l := metastore.Link{Repo: repo, Digest: d}
	b := metastore.BlobRecord{Digest: d}
	err := s.pool.QueryRow(cctx, `SELECT l.linked, b.size, b.created, b.touched
		FROM blob_links l JOIN blobs b ON b.digest = l.digest
		WHERE l.repo = $1 AND l.digest = $2 AND b.deleting IS NULL`, repo, d.String()).
		Scan(&l.Linked, &b.Size, &b.Created, &b.Touched)
	if errors.Is(err, pgx.ErrNoRows) {
		return l, b, fmt.Errorf("%w: %s in %s", metastore.ErrBlobUnknown, d, repo)
	}
	return l, b, failed(ctx, "blob link", err)
}

// RenewBlobLink moves an old link's time to at.
func (s *Store) RenewBlobLink(ctx context.Context, repo string, d metastore.Digest, at, olderThan time.Time) (bool, error) {
	if err := metastore.CheckRepoDigest(repo, "blob", d); err != nil {
		return false, err
	}
	cctx, cancel := s.metaCall(ctx)
	defer cancel()
	var linked bool
	err := s.pool.QueryRow(cctx, `WITH renewed AS (
			UPDATE blob_links SET linked = $3 WHERE repo = $1 AND digest = $2 AND linked < $4 RETURNING 1)
		SELECT EXISTS (SELECT 1 FROM renewed) OR EXISTS (SELECT 1 FROM blob_links WHERE repo = $1 AND digest = $2)`,
		repo, d.String(), at, olderThan).Scan(&linked)
	return linked, failed(ctx, "renew blob link", err)
}

// UnlinkBlob removes repo's link to d.
func (s *Store) UnlinkBlob(ctx context.Context, repo string, d metastore.Digest) error {
	if err := metastore.CheckRepoDigest(repo, "blob", d); err != nil {
		return err
	}
	return s.execOne(ctx, "unlink blob", fmt.Errorf("%w: %s in %s", metastore.ErrBlobUnknown, d, repo),
		"DELETE FROM blob_links WHERE repo = $1 AND digest = $2", repo, d.String())
}

// ReposWithBlob lists the repositories linking d.
func (s *Store) ReposWithBlob(ctx context.Context, d metastore.Digest, n int) ([]string, error) {
	if err := metastore.CheckDigest("blob", d); err != nil {
		return nil, err
	}
	if n <= 0 {
		n = -1
	}
	cctx, cancel := s.metaCall(ctx)
	defer cancel()
	rows, _ := s.pool.Query(cctx, "SELECT repo FROM blob_links WHERE digest = $1 ORDER BY repo LIMIT $2", d.String(), limit(n))
	repos, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, failed(ctx, "repositories with blob", err)
	}
	if repos == nil {
		repos = []string{}
	}
	return repos, nil
}

// PutManifest stores a manifest and its tags in one transaction.
func (s *Store) PutManifest(ctx context.Context, repo string, m metastore.Manifest, body []byte, tags []string) error {
	return s.putManifest(ctx, repo, m, body, tags, false)
}

// CreateManifest is PutManifest only if it moves no tag and retypes no
// manifest, checked by the writes themselves (see the file's comment).
func (s *Store) CreateManifest(ctx context.Context, repo string, m metastore.Manifest, body []byte, tags []string) error {
	return s.putManifest(ctx, repo, m, body, tags, true)
}

// putManifest is PutManifest, or CreateManifest if createOnly: then the
// upserts of the manifest and of the tags update only a row that stays
// as it is (the same media type, the same digest), and report the rows
// they wrote; a row they left is the refusal, and the transaction rolls
// back.
func (s *Store) putManifest(ctx context.Context, repo string, m metastore.Manifest, body []byte, tags []string, createOnly bool) error {
	refs, err := metastore.CheckManifest(repo, m, body, tags)
	if err != nil {
		return err
	}
	tags = slices.Compact(slices.Sorted(slices.Values(tags)))
	var subject *string
	if !m.Subject.IsZero() {
		s := m.Subject.String()
		subject = &s
	}
	d := m.Digest.String()
	// The links locked: those of every reference, and of the blobs the
	// caller found linked (metastore.Manifest.Linked), which must all
	// still be there.
	linked := make([]string, len(m.Linked))
	for i, l := range m.Linked {
		linked[i] = l.String()
	}
	locked := slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(refs), linked...))))
	manifestIf, tagIf := "", ""
	if createOnly {
		manifestIf = " WHERE manifests.media_type = excluded.media_type RETURNING 1"
		tagIf = " WHERE tags.digest = excluded.digest RETURNING tag"
	}
	return s.inTx(ctx, "put manifest", func(ctx context.Context, tx pgx.Tx) error {
		// One round trip for the statements, which need nothing of each
		// other's results; they run in order, in this transaction.
		var b pgx.Batch
		b.Queue("INSERT INTO repositories (name, created) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", repo, time.Now())
		// Hold off GC's drop of the links this manifest references until
		// it is committed (see the file's comment). Locked in the order
		// GC locks them, so the two never deadlock.
		b.Queue(`SELECT digest FROM blob_links WHERE repo = $1 AND digest = ANY($2) ORDER BY digest FOR SHARE`, repo, locked)
		b.Queue(`INSERT INTO manifests (repo, digest, media_type, size, body, subject, artifact_type, annotations)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
			ON CONFLICT (repo, digest) DO UPDATE SET media_type = excluded.media_type, size = excluded.size,
				body = excluded.body, subject = excluded.subject, artifact_type = excluded.artifact_type,
				annotations = excluded.annotations`+manifestIf,
			repo, d, m.MediaType, len(body), body, subject, m.ArtifactType, encodeAnnotations(m.Annotations))
		b.Queue("DELETE FROM manifest_refs WHERE repo = $1 AND manifest = $2 AND NOT (ref = ANY($3))", repo, d, refs)
		b.Queue(`INSERT INTO manifest_refs (repo, manifest, ref) SELECT $1, $2, unnest($3::text[])
			ON CONFLICT DO NOTHING`, repo, d, refs)
		// Sorted, so concurrent puts lock the rows of shared tags in one
		// order and never deadlock.
		b.Queue(`INSERT INTO tags (repo, tag, digest) SELECT $1, unnest($2::text[]), $3
			ON CONFLICT (repo, tag) DO UPDATE SET digest = excluded.digest,
				fetched = CASE WHEN tags.digest = excluded.digest THEN tags.fetched END`+tagIf, repo, tags, d)
		br := tx.SendBatch(ctx, &b)
		defer br.Close()
		if _, err := br.Exec(); err != nil {
			return err
		}
		rows, err := br.Query()
		if err != nil {
			return err
		}
		have := make(map[string]bool, len(locked))
		var digest string
		if _, err := pgx.ForEachRow(rows, []any{&digest}, func() error { have[digest] = true; return nil }); err != nil {
			return err
		}
		for _, l := range linked {
			if !have[l] {
				// GC dropped it after the caller's check; the statements
				// after this one roll back with the transaction.
				return fmt.Errorf("%w: %s is no longer linked in %s: collected while the manifest was pushed", metastore.ErrBlobUnknown, l, repo)
			}
		}
		if !createOnly {
			return br.Close()
		}
		tg, err := br.Exec()
		if err != nil {
			return err
		}
		if tg.RowsAffected() == 0 {
			var old string
			if err := br.Close(); err != nil {
				return err
			}
			if err := tx.QueryRow(ctx, "SELECT media_type FROM manifests WHERE repo = $1 AND digest = $2", repo, d).Scan(&old); err != nil {
				return err
			}
			return fmt.Errorf("%w: %s in %s is %q", metastore.ErrManifestRetyped, d, repo, old)
		}
		for range 2 {
			if _, err := br.Exec(); err != nil {
				return err
			}
		}
		rows, err = br.Query()
		if err != nil {
			return err
		}
		written, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		if len(written) < len(tags) {
			for _, t := range tags {
				if !slices.Contains(written, t) {
					return fmt.Errorf("%w: %s:%s points at another manifest", metastore.ErrTagMoved, repo, t)
				}
			}
		}
		return br.Close()
	})
}

const manifestColumns = "media_type, size, subject, artifact_type, annotations"

// scanManifest reads manifestColumns (and what follows them in dest).
func scanManifest(row pgx.Row, m *metastore.Manifest, more ...any) error {
	var subject *string
	var ann []byte
	if err := row.Scan(append([]any{&m.MediaType, &m.Size, &subject, &m.ArtifactType, &ann}, more...)...); err != nil {
		return err
	}
	if subject != nil {
		d, err := parseDigest(*subject)
		if err != nil {
			return err
		}
		m.Subject = d
	}
	var err error
	m.Annotations, err = decodeAnnotations(ann)
	return err
}

// Manifest returns repo's manifest d without its bytes.
func (s *Store) Manifest(ctx context.Context, repo string, d metastore.Digest) (metastore.Manifest, error) {
	m, _, err := s.manifest(ctx, repo, d, false)
	return m, err
}

// ManifestBody returns repo's manifest d with its bytes.
func (s *Store) ManifestBody(ctx context.Context, repo string, d metastore.Digest) (metastore.Manifest, []byte, error) {
	return s.manifest(ctx, repo, d, true)
}

func (s *Store) manifest(ctx context.Context, repo string, d metastore.Digest, withBody bool) (metastore.Manifest, []byte, error) {
	if err := metastore.CheckRepoDigest(repo, "manifest", d); err != nil {
		return metastore.Manifest{}, nil, err
	}
	cctx, cancel := s.metaCall(ctx)
	defer cancel()
	body := "NULL::bytea"
	if withBody {
		body = "body"
	}
	m := metastore.Manifest{Digest: d}
	var b []byte
	var refs []string
	err := scanManifest(s.pool.QueryRow(cctx, `SELECT `+manifestColumns+`, `+body+`,
		ARRAY(SELECT ref FROM manifest_refs WHERE repo = $1 AND manifest = $2)
		FROM manifests WHERE repo = $1 AND digest = $2`, repo, d.String()), &m, &b, &refs)
	if errors.Is(err, pgx.ErrNoRows) {
		return m, nil, fmt.Errorf("%w: %s in %s", metastore.ErrManifestUnknown, d, repo)
	}
	if err != nil {
		return m, nil, failed(ctx, "manifest", err)
	}
	for _, r := range refs {
		rd, err := parseDigest(r)
		if err != nil {
			return m, nil, err
		}
		m.Refs = append(m.Refs, rd)
	}
	return m, b, nil
}

// DeleteManifest removes repo's manifest d; its tags and references go
// with it (ON DELETE CASCADE), in the same statement.
func (s *Store) DeleteManifest(ctx context.Context, repo string, d metastore.Digest) error {
	if err := metastore.CheckRepoDigest(repo, "manifest", d); err != nil {
		return err
	}
	return s.execOne(ctx, "delete manifest", fmt.Errorf("%w: %s in %s", metastore.ErrManifestUnknown, d, repo),
		"DELETE FROM manifests WHERE repo = $1 AND digest = $2", repo, d.String())
}

// Referrers lists repo's manifests whose subject is d.
func (s *Store) Referrers(ctx context.Context, repo string, d metastore.Digest, after string, n int) ([]metastore.Manifest, bool, error) {
	if err := metastore.CheckRepoDigest(repo, "subject", d); err != nil {
		return nil, false, err
	}
	cctx, cancel := s.metaCall(ctx)
	defer cancel()
	limit := int64(n) + 1 // one more tells whether more remain
	if n < 0 {
		limit = -1
	}
	out := []metastore.Manifest{}
	more := false
	rows, _ := s.pool.Query(cctx, `SELECT `+manifestColumns+`, digest FROM manifests
		WHERE repo = $1 AND subject = $2 AND digest > $3 ORDER BY digest
		LIMIT CASE WHEN $4::bigint < 0 THEN NULL ELSE $4::bigint END`, repo, d.String(), after, limit)
	defer rows.Close()
	for rows.Next() {
		if n >= 0 && len(out) >= n {
			more = true
			break
		}
		var m metastore.Manifest
		var digest string
		if err := scanManifest(rows, &m, &digest); err != nil {
			return nil, false, failed(ctx, "referrers", err)
		}
		var err error
		if m.Digest, err = parseDigest(digest); err != nil {
			return nil, false, err
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, false, failed(ctx, "referrers", err)
	}
	return out, more, nil
}

// Tag returns what tag of repo points at.
func (s *Store) Tag(ctx context.Context, repo, tag string) (metastore.TagInfo, error) {
	if err := metastore.CheckTag(repo, tag); err != nil {
		return metastore.TagInfo{}, err
	}
	cctx, cancel := s.metaCall(ctx)
	defer cancel()
	var d string
	var fetched *time.Time
	err := s.pool.QueryRow(cctx, "SELECT digest, fetched FROM tags WHERE repo = $1 AND tag = $2", repo, tag).Scan(&d, &fetched)
	if errors.Is(err, pgx.ErrNoRows) {
		return metastore.TagInfo{}, fmt.Errorf("%w: %s:%s", metastore.ErrTagUnknown, repo, tag)
	}
	if err != nil {
		return metastore.TagInfo{}, failed(ctx, "tag", err)
	}
	ti := metastore.TagInfo{}
	if fetched != nil {
		ti.Fetched = *fetched
	}
	ti.Digest, err = parseDigest(d)
	return ti, err
}

// MoveTag is the compare-and-swap of a tag.
func (s *Store) MoveTag(ctx context.Context, repo, tag string, from, to metastore.Digest) error {
	if err := metastore.CheckMove(repo, tag, from, to); err != nil {
		return err
	}
	cctx, cancel := s.metaCall(ctx)
	defer cancel()
	var tg pgconn.CommandTag
	var err error
	if from.IsZero() {
		tg, err = s.execTx(cctx, `INSERT INTO tags (repo, tag, digest) VALUES ($1, $2, $3)
			ON CONFLICT (repo, tag) DO NOTHING`, repo, tag, to.String())
	} else {
		// Concurrent movers queue on the row lock; each then checks the
		// WHERE against the row the one before it left, so only the first
		// still finds `from`.
		tg, err = s.execTx(cctx, `UPDATE tags SET digest = $4, fetched = NULL
			WHERE repo = $1 AND tag = $2 AND digest = $3`, repo, tag, from.String(), to.String())
	}
	switch {
	case isCode(err, "23503"): // foreign key: repo does not hold `to`
		return fmt.Errorf("%w: %s in %s", metastore.ErrManifestUnknown, to, repo)
	case err != nil:
		return failed(ctx, "move tag", err)
	case tg.RowsAffected() == 0:
		return fmt.Errorf("%w: %s:%s is not at %s", metastore.ErrTagMoved, repo, tag, from)
	}
	return nil
}

// DeleteTag removes one tag.
func (s *Store) DeleteTag(ctx context.Context, repo, tag string) error {
	if err := metastore.CheckTag(repo, tag); err != nil {
		return err
	}
	return s.execOne(ctx, "delete tag", fmt.Errorf("%w: %s:%s", metastore.ErrTagUnknown, repo, tag),
		"DELETE FROM tags WHERE repo = $1 AND tag = $2", repo, tag)
}

// Tags lists repo's tags after last.
func (s *Store) Tags(ctx context.Context, repo, last string, n int) (metastore.Page, error) {
	if err := metastore.CheckName("repository", repo); err != nil {
		return metastore.Page{}, err
	}
	if err := metastore.CheckLast(last); err != nil {
		return metastore.Page{}, err
	}
	cctx, cancel := s.metaCall(ctx)
	defer cancel()
	rows, _ := s.pool.Query(cctx, "SELECT tag FROM tags WHERE repo = $1 AND tag > $2 ORDER BY tag LIMIT $3", repo, last, plusOne(n))
	p, err := page(rows, n)
	if err != nil {
		return p, failed(ctx, "tags", err)
	}
	if len(p.Names) > 0 || p.More {
		return p, nil
	}
	// Nothing listed: the repository may not exist.
	var exists bool
	if err := s.pool.QueryRow(cctx, "SELECT EXISTS (SELECT 1 FROM repositories WHERE name = $1)", repo).Scan(&exists); err != nil {
		return p, failed(ctx, "tags", err)
	}
	if !exists {
		return p, fmt.Errorf("%w: %s", metastore.ErrRepoUnknown, repo)
	}
	return p, nil
}

// SetTagFetched records a mirror's confirmation of a tag.
func (s *Store) SetTagFetched(ctx context.Context, repo, tag string, at time.Time) error {
	if err := metastore.CheckTag(repo, tag); err != nil {
		return err
	}
	return s.execOne(ctx, "tag fetched", fmt.Errorf("%w: %s:%s", metastore.ErrTagUnknown, repo, tag),
		"UPDATE tags SET fetched = $3 WHERE repo = $1 AND tag = $2", repo, tag, at)
}

// Now implements metastore.Clock: PostgreSQL's clock, the one leases and
// session expiry are judged by.
func (s *Store) Now(ctx context.Context) (time.Time, error) {
	cctx, cancel := s.metaCall(ctx)
	defer cancel()
	var t time.Time
	err := s.pool.QueryRow(cctx, "SELECT clock_timestamp()").Scan(&t)
	return t, failed(ctx, "clock", err)
}

var _ metastore.Clock = (*Store)(nil)
