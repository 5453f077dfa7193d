package pgmeta

// The mirror cache's queries (metastore.MirrorCache): last uses, the
// listing an eviction pass counts, the eviction itself and the size
// figure every replica shares (migrations/0004_mirror_cache.sql).

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/metastore"
	"github.com/jackc/pgx/v5"
)

// RecordUses moves the last use of each blob forward, in one statement.
func (s *Store) RecordUses(ctx context.Context, uses map[metastore.Digest]time.Time) error {
	if len(uses) == 0 {
		return nil
	}
	ds := make([]string, 0, len(uses))
	ats := make([]time.Time, 0, len(uses))
	for d, at := range uses {
		if err := metastore.CheckDigest("blob", d); err != nil {
			return err
		}
		ds, ats = append(ds, d.String()), append(ats, at)
	}
	// A transaction, so that a deadlock with an eviction (which locks
	// the same rows) runs it again.
	return s.inTx(ctx, "record uses", func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE blobs b SET used = u.at
			FROM unnest($1::text[], $2::timestamptz[]) AS u (digest, at)
			WHERE b.digest = u.digest AND b.deleting IS NULL AND (b.used IS NULL OR b.used < u.at)`, ds, ats)
		return err
	})
}

// BlobUses lists blob records with their last use and links.
func (s *Store) BlobUses(ctx context.Context, after metastore.Digest, n int) ([]metastore.BlobUse, error) {
	cctx, cancel := s.metaCall(ctx)
	defer cancel()
	rows, _ := s.pool.Query(cctx, `SELECT b.digest, b.size, b.created, b.touched, greatest(b.touched, b.used),
			ARRAY(SELECT l.repo FROM blob_links l WHERE l.digest = b.digest ORDER BY l.repo),
			EXISTS (SELECT 1 FROM manifests m WHERE m.digest = b.digest)
		FROM blobs b WHERE b.digest > $1 AND b.deleting IS NULL ORDER BY b.digest LIMIT $2`, cursor(after), limit(n))
	us, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (metastore.BlobUse, error) {
		var u metastore.BlobUse
		var d string
		if err := r.Scan(&d, &u.Size, &u.Created, &u.Touched, &u.Used, &u.Repos, &u.Manifest); err != nil {
			return u, err
		}
		var err error
		u.Digest, err = parseDigest(d)
		return u, err
	})
	return us, failed(ctx, "blob uses", err)
}

// EvictBlobs unlinks and marks the blobs of es that are still mirrored
// only and unused since.
func (s *Store) EvictBlobs(ctx context.Context, es []metastore.Eviction) ([]metastore.BlobRecord, error) {
	if len(es) == 0 {
		return nil, nil
	}
	for _, e := range es {
		if err := metastore.CheckDigest("blob", e.Digest); err != nil {
			return nil, err
		}
	}
	es = slices.Clone(es)
	slices.SortFunc(es, func(a, b metastore.Eviction) int { return cmpDigest(a.Digest, b.Digest) })
	var marked []metastore.BlobRecord
	err := s.inTx(ctx, "evict blobs", func(ctx context.Context, tx pgx.Tx) error {
		marked = marked[:0]
		for _, e := range es {
			d := e.Digest.String()
			// As MarkBlobsDeleting: the row lock waits out a LinkBlob in
			// flight (FOR SHARE), and the statements after it see its link.
			var used time.Time
			var manifest bool
			err := tx.QueryRow(ctx, `SELECT greatest(b.touched, b.used),
					EXISTS (SELECT 1 FROM manifests m WHERE m.digest = b.digest)
				FROM blobs b WHERE b.digest = $1 AND b.deleting IS NULL FOR UPDATE`, d).Scan(&used, &manifest)
			if errors.Is(err, pgx.ErrNoRows) {
				continue
			}
			if err != nil {
				return err
			}
			if manifest || used.After(e.Used) {
				continue
			}
			var repos []string
			if err := tx.QueryRow(ctx, `SELECT ARRAY(SELECT repo FROM blob_links WHERE digest = $1 ORDER BY repo)`,
				d).Scan(&repos); err != nil {
				return err
			}
			if !e.AllowsLinks(repos) {
				continue
			}
			// Links first (a mirror manifest that references them keeps
			// its bytes: the mirror fills the blob again when asked).
			if _, err := tx.Exec(ctx, "DELETE FROM blob_links WHERE digest = $1", d); err != nil {
				return err
			}
			r := metastore.BlobRecord{Digest: e.Digest}
			if err := tx.QueryRow(ctx, `UPDATE blobs SET deleting = now() WHERE digest = $1
				RETURNING size, created, touched`, d).Scan(&r.Size, &r.Created, &r.Touched); err != nil {
				return err
			}
			marked = append(marked, r)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return marked, nil
}

// AddMirrorBytes changes the shared figure of mirrored bytes.
func (s *Store) AddMirrorBytes(ctx context.Context, n int64) (int64, error) {
	cctx, cancel := s.metaCall(ctx)
	defer cancel()
	var total int64
	var err error
	if n == 0 {
		err = s.pool.QueryRow(cctx, "SELECT bytes FROM mirror_cache").Scan(&total)
	} else {
		err = s.pool.QueryRow(cctx, "UPDATE mirror_cache SET bytes = greatest(0, bytes + $1) RETURNING bytes", n).Scan(&total)
	}
	return total, failed(ctx, "mirror bytes", err)
}
