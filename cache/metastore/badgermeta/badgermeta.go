// Package badgermeta keeps the registry's metadata (metastore.Store) in
// badger, on one node: the default engine, beside the PostgreSQL one
// (package pgmeta) that many replicas share.
//
// Badger's transactions are optimistic: one that read a key another
// committed meanwhile fails with a conflict and runs again (update). The
// races the metastore contract settles are made to meet on a key both
// sides read or write:
//   - a tag move reads the tag (compare-and-swap) and rewrites the
//     manifest it points at, which a manifest delete reads;
//   - a link rewrites the blob's record, which GC's mark reads, and a
//     manifest PUT rewrites the links it references, which GC's drop
//     reads;
//   - the sessions of a repository and of an owner are counted in a key
//     each, read and written by every create and delete.
//
// Keys: a NUL separates the parts (CheckName refuses NUL in names), so a
// prefix of one repository never matches another.
//
//	r/<repo>                          repository exists
//	b/<digest>                        blob record (blobRecord)
//	bd/<digest>                       the blob is being deleted (GC)
//	bu/<digest>                       last read of the blob (mirrorcache.go)
//	l/<repo>\0<digest>                link -> when (unix ns)
//	lr/<digest>\0<repo>               the same link, by digest
//	m/<repo>\0<digest>                manifest record (gob)
//	mb/<repo>\0<digest>               manifest bytes
//	mr/<digest>\0<repo>               the same manifest, by digest
//	ref/<repo>\0<ref>\0<manifest>     manifest references ref
//	s/<repo>\0<subject>\0<manifest>   referrer
//	t/<repo>\0<tag>                   tag -> digest, fetched
//	td/<repo>\0<digest>\0<tag>        the same tag, by digest
//	u/<id>                            upload session (gob)
//	uc/r/<repo>, uc/o/<owner>         open sessions (and bytes) of one
//	uc/all                            open sessions (and bytes) of all
//	mc                                bytes of mirrored content
package badgermeta

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/internal/authrecords"
	"github.com/caddy-oci/caddy-oci/cache/internal/badgeropen"
	"github.com/caddy-oci/caddy-oci/cache/internal/badgerwrite"
	"github.com/caddy-oci/caddy-oci/cache/internal/blobfile"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
	badger "github.com/dgraph-io/badger/v4"
)

// Store is the metadata in one badger directory. Open it once per
// directory per process.
type Store struct {
	db     *badger.DB
	dir    string
	writer *badgerwrite.Writer  // update
	auth   *authrecords.Records // auth.go
	// damaged hears of the damaged records a listing left out
	// (ReportDamaged); nil: nobody.
	damaged func(repo string, d metastore.Digest, err error)
}

// ReportDamaged sets fn to hear of each damaged manifest Referrers leaves
// out (metastore.DamageReporter).
func (s *Store) ReportDamaged(fn func(repo string, d metastore.Digest, err error)) { s.damaged = fn }

// Open opens (creating if needed) the metadata in dir. It refuses
// (blobfile.ErrStorageFull) while dir's filesystem has less than
// spaceFloor free, as every write does (update).
func Open(dir string) (*Store, error) {
	if err := admitSpace(dir); err != nil {
		return nil, fmt.Errorf("badgermeta: open %s: %w", dir, err)
	}
	opts := badger.DefaultOptions(dir).
		WithLogger(nil).
		WithSyncWrites(true).
		WithMetricsEnabled(false).
		// Metadata is small; keep badger's memory modest.
		WithMemTableSize(8 << 20).
		WithNumMemtables(2).
		WithBlockCacheSize(8 << 20).
		WithIndexCacheSize(4 << 20).
		WithValueLogFileSize(64 << 20).
		// A value the log cannot read back whole (a crash cut it
		// short, a page overwritten) reads as empty, not as other bytes.
		WithVerifyValueChecksum(true)
	db, err := badgeropen.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("badgermeta: open %s: %w", dir, blobfile.DatabaseOpenError(dir, err))
	}
	st := &Store{db: db, dir: dir}
	st.writer = &badgerwrite.Writer{DB: db, Unavailable: metastore.ErrUnavailable}
	st.auth = newAuthRecords(st)
	return st, nil
}

// Close closes badger.
func (s *Store) Close() error { return s.db.Close() }

const sep = "\x00"

func key(prefix string, parts ...string) []byte {
	return []byte(prefix + strings.Join(parts, sep))
}

// prefixOf is the key prefix of everything under parts.
func prefixOf(prefix string, parts ...string) []byte {
	return []byte(prefix + strings.Join(parts, sep) + sep)
}

func unixNano(t time.Time) []byte {
	if t.IsZero() {
		return make([]byte, 8)
	}
	return binary.BigEndian.AppendUint64(nil, uint64(t.UnixNano()))
}

func fromNano(b []byte) time.Time {
	if len(b) < 8 {
		return time.Time{}
	}
	n := int64(binary.BigEndian.Uint64(b))
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// view and update run fn in a transaction, update again while it
// conflicts with a concurrent one.
func (s *Store) view(ctx context.Context, fn func(txn *badger.Txn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.View(fn)
}

func (s *Store) update(ctx context.Context, fn func(txn *badger.Txn) error) error {
	if err := admitSpace(s.dir); err != nil {
		return err
	}
	return s.writer.Update(ctx, fn)
}

// spaceFloor is the free space below which the database is neither
// opened nor written (at most half its filesystem). badger writes its
// memtables and tables through memory maps of sparse files, where a page
// a full filesystem cannot give is a SIGBUS that ends the process, not
// an error; a few memtables and a table or two at a time fit in this.
// The folder store keeps the same floor inside its storage_reserve
// (package cache, space.go); here, where no blob bytes share the
// filesystem, the floor is all there is.
const spaceFloor = 64 << 20

// admitSpace refuses (blobfile.ErrStorageFull) while the filesystem of
// dir, or of its nearest existing parent, has less than spaceFloor free.
func admitSpace(dir string) error {
	free, total, dir, err := blobfile.FreeSpaceFor(dir)
	if err != nil {
		return nil
	}
	if floor := min(spaceFloor, total/2); free < floor {
		return fmt.Errorf("%w: %d bytes free on the filesystem of the metadata database (%s), %d kept for it",
			blobfile.ErrStorageFull, free, dir, floor)
	}
	return nil
}

// get returns the value of k, or nil and false.
func get(txn *badger.Txn, k []byte) ([]byte, bool, error) {
	item, err := txn.Get(k)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	v, err := item.ValueCopy(nil)
	return v, err == nil, err
}

func has(txn *badger.Txn, k []byte) (bool, error) {
	_, ok, err := get(txn, k)
	return ok, err
}

// hasPrefix reports whether any key starts with p.
func hasPrefix(txn *badger.Txn, p []byte) bool {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: p})
	defer it.Close()
	it.Rewind()
	return it.Valid()
}

// each calls fn with the suffix and value of every key under p that
// sorts after p+after, until fn says stop.
func each(txn *badger.Txn, p []byte, after string, fn func(suffix string, v []byte) (more bool, err error)) error {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: p, PrefetchValues: false})
	defer it.Close()
	start := append(slices.Clone(p), after...)
	for it.Seek(start); it.Valid(); it.Next() {
		k := it.Item().Key()
		if after != "" && bytes.Equal(k, start) {
			continue
		}
		v, err := it.Item().ValueCopy(nil)
		if err != nil {
			return err
		}
		more, err := fn(string(k[len(p):]), v)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

// page lists the suffixes under p after last, at most n (n < 0: all).
func page(txn *badger.Txn, p []byte, last string, n int) (metastore.Page, error) {
	out := metastore.Page{Names: []string{}}
	err := each(txn, p, last, func(name string, _ []byte) (bool, error) {
		if n >= 0 && len(out.Names) >= n {
			out.More = true
			return false, nil
		}
		out.Names = append(out.Names, name)
		return true, nil
	})
	return out, err
}

func encode(v any) ([]byte, error) {
	var b bytes.Buffer
	err := gob.NewEncoder(&b).Encode(v)
	return b.Bytes(), err
}

func decode(b []byte, v any) error { return gob.NewDecoder(bytes.NewReader(b)).Decode(v) }

func parseDigest(s string) (metastore.Digest, error) {
	d, err := blobstore.ParseDigest(s)
	if err != nil {
		return d, fmt.Errorf("badgermeta: stored digest: %w", err)
	}
	return d, nil
}

// Repositories lists repository names after last.
func (s *Store) Repositories(ctx context.Context, last string, n int) (metastore.Page, error) {
	if err := metastore.CheckLast(last); err != nil {
		return metastore.Page{}, err
	}
	var p metastore.Page
	err := s.view(ctx, func(txn *badger.Txn) (err error) {
		p, err = page(txn, []byte("r/"), last, n)
		return err
	})
	return p, err
}

// blobRecord is the value of b/<digest>.
type blobRecord struct {
	size             int64
	created, touched time.Time
	deleting         bool
}

func (r blobRecord) bytes() []byte {
	b := binary.BigEndian.AppendUint64(nil, uint64(r.size))
	b = append(b, unixNano(r.created)...)
	b = append(b, unixNano(r.touched)...)
	if r.deleting {
		return append(b, 1)
	}
	return append(b, 0)
}

func readBlob(txn *badger.Txn, d metastore.Digest) (blobRecord, bool, error) {
	v, ok, err := get(txn, key("b/", d.String()))
	if !ok || err != nil {
		return blobRecord{}, false, err
	}
	if len(v) != 25 {
		return blobRecord{}, false, fmt.Errorf("badgermeta: blob record of %s is damaged", d)
	}
	return blobRecord{
		size:     int64(binary.BigEndian.Uint64(v)),
		created:  fromNano(v[8:16]),
		touched:  fromNano(v[16:24]),
		deleting: v[24] == 1,
	}, true, nil
}

func (r blobRecord) record(d metastore.Digest) metastore.BlobRecord {
	return metastore.BlobRecord{Digest: d, Size: r.size, Created: r.created, Touched: r.touched}
}

// RecordBlob records blob d, or touches its record.
func (s *Store) RecordBlob(ctx context.Context, d metastore.Digest, size int64, at time.Time) (metastore.BlobRecord, error) {
	if err := metastore.CheckDigest("blob", d); err != nil {
		return metastore.BlobRecord{}, err
	}
	if size < 0 {
		return metastore.BlobRecord{}, fmt.Errorf("blob %s: negative size %d", d, size)
	}
	var rec blobRecord
	err := s.update(ctx, func(txn *badger.Txn) error {
		old, ok, err := readBlob(txn, d)
		switch {
		case err != nil:
			return err
		case !ok:
			rec = blobRecord{size: size, created: at, touched: at}
		case old.deleting:
			return fmt.Errorf("%w: %s", metastore.ErrBlobDeleting, d)
		case old.size != size:
			return fmt.Errorf("%w: blob %s has %d bytes, not %d", metastore.ErrSizeMismatch, d, old.size, size)
		default:
			rec = old
			rec.touched = later(old.touched, at)
		}
		return txn.Set(key("b/", d.String()), rec.bytes())
	})
	return rec.record(d), err
}

// Blob returns d's record.
func (s *Store) Blob(ctx context.Context, d metastore.Digest) (metastore.BlobRecord, error) {
	if err := metastore.CheckDigest("blob", d); err != nil {
		return metastore.BlobRecord{}, err
	}
	var rec blobRecord
	err := s.view(ctx, func(txn *badger.Txn) error {
		var ok bool
		var err error
		rec, ok, err = readBlob(txn, d)
		if err == nil && (!ok || rec.deleting) {
			return fmt.Errorf("%w: %s", metastore.ErrBlobUnknown, d)
		}
		return err
	})
	return rec.record(d), err
}

func addRepo(txn *badger.Txn, repo string) error { return txn.Set(key("r/", repo), nil) }

// LinkBlob links d into repo as of at.
func (s *Store) LinkBlob(ctx context.Context, repo string, d metastore.Digest, at time.Time) error {
	if err := metastore.CheckRepoDigest(repo, "blob", d); err != nil {
		return err
	}
	return s.update(ctx, func(txn *badger.Txn) error {
		rec, ok, err := readBlob(txn, d)
		if err != nil {
			return err
		}
		if !ok || rec.deleting {
			return fmt.Errorf("%w: %s", metastore.ErrBlobUnknown, d)
		}
		// Written again unchanged: GC's mark reads this key, so a mark
		// and this link never both commit.
		if err := txn.Set(key("b/", d.String()), rec.bytes()); err != nil {
			return err
		}
		if err := addRepo(txn, repo); err != nil {
			return err
		}
		lk := key("l/", repo, d.String())
		v, _, err := get(txn, lk)
		if err != nil {
			return err
		}
		if err := txn.Set(lk, unixNano(later(fromNano(v), at))); err != nil {
			return err
		}
		return txn.Set(key("lr/", d.String(), repo), nil)
	})
}

// BlobLink returns repo's link to d with d's record.
func (s *Store) BlobLink(ctx context.Context, repo string, d metastore.Digest) (metastore.Link, metastore.BlobRecord, error) {
	if err := metastore.CheckRepoDigest(repo, "blob", d); err != nil {
		return metastore.Link{}, metastore.BlobRecord{}, err
	}
	l := metastore.Link{Repo: repo, Digest: d}
	var rec blobRecord
	err := s.view(ctx, func(txn *badger.Txn) error {
		v, linked, err := get(txn, key("l/", repo, d.String()))
		if err != nil {
			return err
		}
		var ok bool
		if linked {
			l.Linked = fromNano(v)
			rec, ok, err = readBlob(txn, d)
		}
		if err == nil && (!ok || rec.deleting) {
			return fmt.Errorf("%w: %s in %s", metastore.ErrBlobUnknown, d, repo)
		}
		return err
	})
	return l, rec.record(d), err
}

// RenewBlobLink moves an old link's time to at.
func (s *Store) RenewBlobLink(ctx context.Context, repo string, d metastore.Digest, at, olderThan time.Time) (bool, error) {
	if err := metastore.CheckRepoDigest(repo, "blob", d); err != nil {
		return false, err
	}
	var linked bool
	err := s.update(ctx, func(txn *badger.Txn) error {
		lk := key("l/", repo, d.String())
		v, ok, err := get(txn, lk)
		linked = ok
		if err != nil || !ok || !fromNano(v).Before(olderThan) {
			return err
		}
		return txn.Set(lk, unixNano(at))
	})
	return linked, err
}

// UnlinkBlob removes repo's link to d.
func (s *Store) UnlinkBlob(ctx context.Context, repo string, d metastore.Digest) error {
	if err := metastore.CheckRepoDigest(repo, "blob", d); err != nil {
		return err
	}
	return s.update(ctx, func(txn *badger.Txn) error {
		lk := key("l/", repo, d.String())
		if ok, err := has(txn, lk); err != nil || !ok {
			return cmpErr(err, fmt.Errorf("%w: %s in %s", metastore.ErrBlobUnknown, d, repo))
		}
		return deleteKeys(txn, lk, key("lr/", d.String(), repo))
	})
}

// cmpErr is err, or missing when there is none.
func cmpErr(err, missing error) error {
	if err != nil {
		return err
	}
	return missing
}

func deleteKeys(txn *badger.Txn, ks ...[]byte) error {
	for _, k := range ks {
		if err := txn.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// ReposWithBlob lists the repositories linking d.
func (s *Store) ReposWithBlob(ctx context.Context, d metastore.Digest, n int) ([]string, error) {
	if err := metastore.CheckDigest("blob", d); err != nil {
		return nil, err
	}
	if n <= 0 {
		n = -1
	}
	var p metastore.Page
	err := s.view(ctx, func(txn *badger.Txn) (err error) {
		p, err = page(txn, prefixOf("lr/", d.String()), "", n)
		return err
	})
	return p.Names, err
}

var (
	_ metastore.Store = (*Store)(nil)
)
