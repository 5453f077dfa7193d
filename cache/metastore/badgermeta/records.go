package badgermeta

// Manifests, tags, upload sessions and the GC queries.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/metastore"
	badger "github.com/dgraph-io/badger/v4"
)

// manifestRecord is the value of m/<repo>\0<digest>. gob keeps strings
// byte for byte, so annotations of any bytes read back exactly.
type manifestRecord struct {
	MediaType    string
	Size         int64
	Subject      string
	ArtifactType string
	Annotations  map[string]string
	Refs         []string
}

func (r manifestRecord) manifest(d metastore.Digest, withRefs bool) (metastore.Manifest, error) {
	m := metastore.Manifest{Digest: d, MediaType: r.MediaType, Size: r.Size, ArtifactType: r.ArtifactType}
	if len(r.Annotations) > 0 {
		m.Annotations = r.Annotations
	}
	var err error
	if r.Subject != "" {
		if m.Subject, err = parseDigest(r.Subject); err != nil {
			return m, err
		}
	}
	if withRefs {
		for _, ref := range r.Refs {
			rd, err := parseDigest(ref)
			if err != nil {
				return m, err
			}
			m.Refs = append(m.Refs, rd)
		}
	}
	return m, nil
}

func readManifest(txn *badger.Txn, repo, d string) (manifestRecord, bool, error) {
	var rec manifestRecord
	v, ok, err := get(txn, key("m/", repo, d))
	if !ok || err != nil {
		return rec, false, err
	}
	if err := decode(v, &rec); err != nil {
		return rec, false, fmt.Errorf("%w: badgermeta: manifest %s in %s: %w", metastore.ErrDamaged, d, repo, err)
	}
	return rec, true, nil
}

// PutManifest stores a manifest and its tags in one transaction.
func (s *Store) PutManifest(ctx context.Context, repo string, m metastore.Manifest, body []byte, tags []string) error {
	return s.putManifest(ctx, repo, m, body, tags, false)
}

// CreateManifest is PutManifest only if it moves no tag and retypes no
// manifest. Badger's transactions conflict on what they read: a tag or
// manifest record another writer changes between this check and the
// commit makes the commit fail, and the retry checks again.
func (s *Store) CreateManifest(ctx context.Context, repo string, m metastore.Manifest, body []byte, tags []string) error {
	return s.putManifest(ctx, repo, m, body, tags, true)
}

// putManifest is PutManifest, or CreateManifest if createOnly.
func (s *Store) putManifest(ctx context.Context, repo string, m metastore.Manifest, body []byte, tags []string, createOnly bool) error {
	refs, err := metastore.CheckManifest(repo, m, body, tags)
	if err != nil {
		return err
	}
	d := m.Digest.String()
	rec := manifestRecord{MediaType: m.MediaType, Size: int64(len(body)), ArtifactType: m.ArtifactType,
		Annotations: m.Annotations, Refs: refs}
	if !m.Subject.IsZero() {
		rec.Subject = m.Subject.String()
	}
	val, err := encode(rec)
	if err != nil {
		return fmt.Errorf("badgermeta: encode manifest: %w", err)
	}
	return s.update(ctx, func(txn *badger.Txn) error {
		// A push's blobs, found linked before the put, must still be:
		// GC may have dropped a link since (see metastore.Manifest.Linked).
		// Read in this transaction, so a drop that commits first makes it
		// conflict and run again.
		for _, b := range m.Linked {
			if _, linked, err := get(txn, key("l/", repo, b.String())); err != nil {
				return err
			} else if !linked {
				return fmt.Errorf("%w: %s is no longer linked in %s: collected while the manifest was pushed", metastore.ErrBlobUnknown, b, repo)
			}
		}
		if err := addRepo(txn, repo); err != nil {
			return err
		}
		old, ok, err := readManifest(txn, repo, d)
		if errors.Is(err, metastore.ErrDamaged) {
			// Written whole again: the same digest names the same
			// bytes, so the indexes the damaged record had are the
			// ones set below.
			ok, err = false, nil
		}
		if err != nil {
			return err
		}
		if createOnly {
			if ok && old.MediaType != m.MediaType {
				return fmt.Errorf("%w: %s in %s is %q", metastore.ErrManifestRetyped, d, repo, old.MediaType)
			}
			for _, t := range tags {
				cur, _, ok, err := readTag(txn, repo, t)
				if err != nil {
					return err
				}
				if ok && cur != d {
					return fmt.Errorf("%w: %s:%s is at %s", metastore.ErrTagMoved, repo, t, cur)
				}
			}
		}
		if ok {
			if err := dropManifestIndexes(txn, repo, d, old); err != nil {
				return err
			}
		}
		// The links this manifest references are written again
		// unchanged: GC's drop reads them, so a drop and this manifest
		// never both commit.
		for _, ref := range refs {
			lk := key("l/", repo, ref)
			v, ok, err := get(txn, lk)
			if err != nil {
				return err
			}
			if ok {
				if err := txn.Set(lk, v); err != nil {
					return err
				}
			}
			if err := txn.Set(key("ref/", repo, ref, d), nil); err != nil {
				return err
			}
		}
		for k, v := range map[string][]byte{
			string(key("m/", repo, d)):  val,
			string(key("mb/", repo, d)): body,
			string(key("mr/", d, repo)): nil,
		} {
			if err := txn.Set([]byte(k), v); err != nil {
				return err
			}
		}
		if rec.Subject != "" {
			if err := txn.Set(key("s/", repo, rec.Subject, d), nil); err != nil {
				return err
			}
		}
		for _, t := range tags {
			if err := setTag(txn, repo, t, d); err != nil {
				return err
			}
		}
		return nil
	})
}

// dropManifestIndexes removes the referrer and reference entries of a
// manifest record.
func dropManifestIndexes(txn *badger.Txn, repo, d string, rec manifestRecord) error {
	if rec.Subject != "" {
		if err := txn.Delete(key("s/", repo, rec.Subject, d)); err != nil {
			return err
		}
	}
	for _, ref := range rec.Refs {
		if err := txn.Delete(key("ref/", repo, ref, d)); err != nil {
			return err
		}
	}
	return nil
}

// indexesOf is what dropManifestIndexes needs of manifest d of repo,
// read from its referrer and reference entries rather than its record:
// for a manifest whose record is lost. It scans all of the repository's
// entries; only the delete of a damaged manifest pays for that.
func indexesOf(txn *badger.Txn, repo, d string) (manifestRecord, error) {
	var rec manifestRecord
	suffix := sep + d
	err := each(txn, prefixOf("s/", repo), "", func(rest string, _ []byte) (bool, error) {
		if subject, ok := strings.CutSuffix(rest, suffix); ok {
			rec.Subject = subject
		}
		return true, nil
	})
	if err != nil {
		return rec, err
	}
	err = each(txn, prefixOf("ref/", repo), "", func(rest string, _ []byte) (bool, error) {
		if ref, ok := strings.CutSuffix(rest, suffix); ok {
			rec.Refs = append(rec.Refs, ref)
		}
		return true, nil
	})
	return rec, err
}

// tagValue is the value of t/<repo>\0<tag>: fetched (8 bytes) and the
// digest.
func tagValue(d string, fetched time.Time) []byte { return append(unixNano(fetched), d...) }

func readTag(txn *badger.Txn, repo, tag string) (d string, fetched time.Time, ok bool, err error) {
	v, ok, err := get(txn, key("t/", repo, tag))
	if !ok || err != nil || len(v) < 8 {
		return "", time.Time{}, false, err
	}
	return string(v[8:]), fromNano(v[:8]), true, nil
}

// existingTag is the digest tag points at, or ErrTagUnknown.
func existingTag(txn *badger.Txn, repo, tag string) (string, error) {
	d, _, ok, err := readTag(txn, repo, tag)
	if err != nil || !ok {
		return "", cmpErr(err, fmt.Errorf("%w: %s:%s", metastore.ErrTagUnknown, repo, tag))
	}
	return d, nil
}

// setTag points tag at d; a tag that moves loses its fetch time.
func setTag(txn *badger.Txn, repo, tag, d string) error {
	old, fetched, ok, err := readTag(txn, repo, tag)
	if err != nil {
		return err
	}
	if ok && old != d {
		fetched = time.Time{}
		if err := txn.Delete(key("td/", repo, old, tag)); err != nil {
			return err
		}
	}
	if err := txn.Set(key("t/", repo, tag), tagValue(d, fetched)); err != nil {
		return err
	}
	return txn.Set(key("td/", repo, d, tag), nil)
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
	var m metastore.Manifest
	var body []byte
	err := s.view(ctx, func(txn *badger.Txn) error {
		rec, ok, err := readManifest(txn, repo, d.String())
		if err != nil || !ok {
			return cmpErr(err, fmt.Errorf("%w: %s in %s", metastore.ErrManifestUnknown, d, repo))
		}
		if m, err = rec.manifest(d, true); err != nil {
			return err
		}
		// Without the body too, so that a HEAD says what a GET would.
		body, err = readBody(txn, repo, d.String(), m.Size, withBody)
		return err
	})
	return m, body, err
}

// readBody checks that manifest d of repo has its size bytes, and returns
// a copy of them if withBody. badger answers a value its log cannot read
// back as empty, with no error (it logs the failure): ErrDamaged.
func readBody(txn *badger.Txn, repo, d string, size int64, withBody bool) ([]byte, error) {
	n := 0
	var body []byte
	item, err := txn.Get(key("mb/", repo, d))
	if err == nil {
		err = item.Value(func(v []byte) error {
			n = len(v)
			if withBody {
				body = slices.Clone(v)
			}
			return nil
		})
	}
	if err != nil && !errors.Is(err, badger.ErrKeyNotFound) {
		return nil, err
	}
	if int64(n) != size {
		return nil, fmt.Errorf("%w: badgermeta: manifest %s in %s: %d of its %d bytes read back",
			metastore.ErrDamaged, d, repo, n, size)
	}
	return body, nil
}

// DeleteManifest removes repo's manifest d with its tags and entries.
func (s *Store) DeleteManifest(ctx context.Context, repo string, d metastore.Digest) error {
	if err := metastore.CheckRepoDigest(repo, "manifest", d); err != nil {
		return err
	}
	ds := d.String()
	if err := s.dropTagsOf(ctx, repo, ds); err != nil {
		return err
	}
	return s.update(ctx, func(txn *badger.Txn) error {
		rec, ok, err := readManifest(txn, repo, ds)
		if errors.Is(err, metastore.ErrDamaged) {
			// Only the record names its subject and references: they
			// are found among the repository's entries instead, so
			// that no reference entry keeps a blob from GC.
			rec, err = indexesOf(txn, repo, ds)
			ok = err == nil
		}
		if err != nil || !ok {
			return cmpErr(err, fmt.Errorf("%w: %s in %s", metastore.ErrManifestUnknown, d, repo))
		}
		if err := dropManifestIndexes(txn, repo, ds, rec); err != nil {
			return err
		}
		var tags []string
		err = each(txn, prefixOf("td/", repo, ds), "", func(tag string, _ []byte) (bool, error) {
			tags = append(tags, tag)
			return true, nil
		})
		if err != nil {
			return err
		}
		for _, t := range tags {
			if err := deleteKeys(txn, key("t/", repo, t), key("td/", repo, ds, t)); err != nil {
				return err
			}
		}
		return deleteKeys(txn, key("m/", repo, ds), key("mb/", repo, ds), key("mr/", ds, repo))
	})
}

// tagBatch is how many tags one transaction deletes. badger refuses a
// transaction past a size its memtable sets (a few thousand writes), and a
// manifest may carry any number of tags: CI that tags every build of an
// image that did not change.
const tagBatch = 500

// dropTagsOf deletes the tags of repo that point at manifest ds, tagBatch
// per transaction, when there are more than DeleteManifest's transaction
// could delete with the manifest. A delete that fails midway has removed
// some tags of a manifest the client asked to delete; its retry removes
// the rest.
func (s *Store) dropTagsOf(ctx context.Context, repo, ds string) error {
	var tags []string
	err := s.view(ctx, func(txn *badger.Txn) error {
		return each(txn, prefixOf("td/", repo, ds), "", func(tag string, _ []byte) (bool, error) {
			tags = append(tags, tag)
			return true, nil
		})
	})
	if err != nil || len(tags) <= tagBatch {
		return err
	}
	for len(tags) > 0 {
		batch := tags[:min(tagBatch, len(tags))]
		tags = tags[len(batch):]
		err := s.update(ctx, func(txn *badger.Txn) error {
			for _, t := range batch {
				d, _, ok, err := readTag(txn, repo, t)
				if err != nil {
					return err
				}
				if ok && d == ds {
					if err := deleteKeys(txn, key("t/", repo, t)); err != nil {
						return err
					}
				}
				if err := deleteKeys(txn, key("td/", repo, ds, t)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// Referrers lists repo's manifests whose subject is d.
func (s *Store) Referrers(ctx context.Context, repo string, d metastore.Digest, after string, n int) ([]metastore.Manifest, bool, error) {
	if err := metastore.CheckRepoDigest(repo, "subject", d); err != nil {
		return nil, false, err
	}
	var out []metastore.Manifest
	var damaged map[metastore.Digest]error
	more := false
	err := s.view(ctx, func(txn *badger.Txn) error {
		out, damaged, more = []metastore.Manifest{}, nil, false
		return each(txn, prefixOf("s/", repo, d.String()), after, func(ref string, _ []byte) (bool, error) {
			if n >= 0 && len(out) >= n {
				more = true
				return false, nil
			}
			rd, err := parseDigest(ref)
			if err != nil {
				return false, err
			}
			rec, ok, err := readManifest(txn, repo, ref)
			if err == nil && ok {
				// Its bytes too: a referrer listed answers its GET.
				_, err = readBody(txn, repo, ref, rec.Size, false)
			}
			if errors.Is(err, metastore.ErrDamaged) {
				// Left out, as its GET answers it unknown: the others
				// still answer.
				if damaged == nil {
					damaged = make(map[metastore.Digest]error)
				}
				damaged[rd] = err
				return true, nil
			}
			if err != nil || !ok {
				return err == nil, err
			}
			m, err := rec.manifest(rd, false)
			out = append(out, m)
			return true, err
		})
	})
	if s.damaged != nil {
		for rd, derr := range damaged {
			s.damaged(repo, rd, derr)
		}
	}
	return out, more, err
}

// Tag returns what tag of repo points at.
func (s *Store) Tag(ctx context.Context, repo, tag string) (metastore.TagInfo, error) {
	if err := metastore.CheckTag(repo, tag); err != nil {
		return metastore.TagInfo{}, err
	}
	var ti metastore.TagInfo
	err := s.view(ctx, func(txn *badger.Txn) error {
		d, fetched, ok, err := readTag(txn, repo, tag)
		if err != nil || !ok {
			return cmpErr(err, fmt.Errorf("%w: %s:%s", metastore.ErrTagUnknown, repo, tag))
		}
		ti.Fetched = fetched
		ti.Digest, err = parseDigest(d)
		return err
	})
	return ti, err
}

// MoveTag is the compare-and-swap of a tag.
func (s *Store) MoveTag(ctx context.Context, repo, tag string, from, to metastore.Digest) error {
	if err := metastore.CheckMove(repo, tag, from, to); err != nil {
		return err
	}
	return s.update(ctx, func(txn *badger.Txn) error {
		cur, _, ok, err := readTag(txn, repo, tag)
		if err != nil {
			return err
		}
		if ok != !from.IsZero() || ok && cur != from.String() {
			return fmt.Errorf("%w: %s:%s is not at %s", metastore.ErrTagMoved, repo, tag, from)
		}
		mk := key("m/", repo, to.String())
		v, ok, err := get(txn, mk)
		if err != nil || !ok {
			return cmpErr(err, fmt.Errorf("%w: %s in %s", metastore.ErrManifestUnknown, to, repo))
		}
		// Written again unchanged: a manifest delete reads it, so a tag
		// never lands on a manifest deleted meanwhile.
		if err := txn.Set(mk, v); err != nil {
			return err
		}
		return setTag(txn, repo, tag, to.String())
	})
}

// DeleteTag removes one tag.
func (s *Store) DeleteTag(ctx context.Context, repo, tag string) error {
	if err := metastore.CheckTag(repo, tag); err != nil {
		return err
	}
	return s.update(ctx, func(txn *badger.Txn) error {
		d, err := existingTag(txn, repo, tag)
		if err != nil {
			return err
		}
		return deleteKeys(txn, key("t/", repo, tag), key("td/", repo, d, tag))
	})
}

// Tags lists repo's tags after last.
func (s *Store) Tags(ctx context.Context, repo, last string, n int) (metastore.Page, error) {
	if err := metastore.CheckName("repository", repo); err != nil {
		return metastore.Page{}, err
	}
	if err := metastore.CheckLast(last); err != nil {
		return metastore.Page{}, err
	}
	var p metastore.Page
	err := s.view(ctx, func(txn *badger.Txn) error {
		if ok, err := has(txn, key("r/", repo)); err != nil || !ok {
			return cmpErr(err, fmt.Errorf("%w: %s", metastore.ErrRepoUnknown, repo))
		}
		var err error
		p, err = page(txn, prefixOf("t/", repo), last, n)
		return err
	})
	return p, err
}

// SetTagFetched records a mirror's confirmation of a tag.
func (s *Store) SetTagFetched(ctx context.Context, repo, tag string, at time.Time) error {
	if err := metastore.CheckTag(repo, tag); err != nil {
		return err
	}
	return s.update(ctx, func(txn *badger.Txn) error {
		d, err := existingTag(txn, repo, tag)
		if err != nil {
			return err
		}
		return txn.Set(key("t/", repo, tag), tagValue(d, at))
	})
}

// counter is the value of uc/r/<repo> or uc/o/<owner>: sessions, bytes.
type counter struct{ sessions, bytes int64 }

func readCounter(txn *badger.Txn, k []byte) (counter, error) {
	v, _, err := get(txn, k)
	if err != nil || len(v) != 16 {
		return counter{}, err
	}
	return counter{int64(binary.BigEndian.Uint64(v)), int64(binary.BigEndian.Uint64(v[8:]))}, nil
}

// addCounter changes the counter at k by sessions and bytes, refusing
// (before any change) a new session past max (0: no limit).
func addCounter(txn *badger.Txn, k []byte, sessions, bytes int64, max int) error {
	c, err := readCounter(txn, k)
	if err != nil {
		return err
	}
	if sessions > 0 && max > 0 && c.sessions >= int64(max) {
		return fmt.Errorf("%w: %d sessions of %s open, the limit", metastore.ErrTooManyUploads, c.sessions, k)
	}
	c.sessions += sessions
	c.bytes += bytes
	if c.sessions <= 0 {
		return txn.Delete(k)
	}
	v := binary.BigEndian.AppendUint64(nil, uint64(c.sessions))
	return txn.Set(k, binary.BigEndian.AppendUint64(v, uint64(c.bytes)))
}

// allUploads is the counter of every open session.
var allUploads = []byte("uc/all")

// countUpload changes the counters of u's repository and owner, and of
// every session.
func countUpload(txn *badger.Txn, u metastore.Upload, sessions, bytes int64, q metastore.UploadQuota) error {
	if err := addCounter(txn, key("uc/r/", u.Repo), sessions, bytes, q.PerRepo); err != nil {
		return err
	}
	if err := addCounter(txn, allUploads, sessions, bytes, 0); err != nil {
		return err
	}
	if u.Owner == "" {
		return nil
	}
	return addCounter(txn, key("uc/o/", u.Owner), sessions, bytes, q.PerOwner)
}

// underBytes checks that n more bytes keep the sessions of owner and of
// everyone within q (n = 0: that they are below it, for a new session).
// The counters it reads are written by every change of the bytes, so a
// concurrent one makes this transaction run again.
func underBytes(txn *badger.Txn, owner string, n int64, q metastore.UploadQuota) error {
	over := func(held, max int64) bool { return held+n > max || n == 0 && held >= max }
	if q.OwnerBytes > 0 && owner != "" {
		c, err := readCounter(txn, key("uc/o/", owner))
		if err != nil {
			return err
		}
		if over(c.bytes, q.OwnerBytes) {
			return fmt.Errorf("%w: open uploads of %s hold %d bytes of %d", metastore.ErrUploadShare, owner, c.bytes, q.OwnerBytes)
		}
	}
	if q.Bytes > 0 {
		c, err := readCounter(txn, allUploads)
		if err != nil {
			return err
		}
		if over(c.bytes, q.Bytes) {
			return fmt.Errorf("%w: open uploads hold %d bytes of %d", metastore.ErrUploadSpace, c.bytes, q.Bytes)
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
	return s.update(ctx, func(txn *badger.Txn) error {
		u, ok, err := readUpload(txn, id)
		if err != nil || !ok {
			return cmpErr(err, fmt.Errorf("%w: %s", metastore.ErrUploadUnknown, id))
		}
		if err := underBytes(txn, u.Owner, n, q); err != nil {
			return err
		}
		if err := countUpload(txn, u, 0, n, metastore.UploadQuota{}); err != nil {
			return err
		}
		u.Reserved += n
		return writeUpload(txn, u)
	})
}

// ReleaseUploadBytes ends id's reservation.
func (s *Store) ReleaseUploadBytes(ctx context.Context, id string) error {
	if err := metastore.CheckName("upload", id); err != nil {
		return err
	}
	return s.update(ctx, func(txn *badger.Txn) error {
		u, ok, err := readUpload(txn, id)
		if err != nil || !ok || u.Reserved == 0 {
			return err
		}
		if err := countUpload(txn, u, 0, -u.Reserved, metastore.UploadQuota{}); err != nil {
			return err
		}
		u.Reserved = 0
		return writeUpload(txn, u)
	})
}

func readUpload(txn *badger.Txn, id string) (metastore.Upload, bool, error) {
	var u metastore.Upload
	v, ok, err := get(txn, key("u/", id))
	if !ok || err != nil {
		return u, false, err
	}
	if err := decode(v, &u); err != nil {
		return u, false, fmt.Errorf("badgermeta: upload %s is damaged: %w", id, err)
	}
	if u.State == nil {
		u.State = []byte{}
	}
	return u, true, nil
}

func writeUpload(txn *badger.Txn, u metastore.Upload) error {
	v, err := encode(u)
	if err != nil {
		return err
	}
	return txn.Set(key("u/", u.ID), v)
}

// CreateUpload records a new session within q.
func (s *Store) CreateUpload(ctx context.Context, u metastore.Upload, q metastore.UploadQuota) (metastore.Upload, error) {
	u, err := metastore.NewUpload(u)
	if err != nil {
		return metastore.Upload{}, err
	}
	err = s.update(ctx, func(txn *badger.Txn) error {
		if ok, err := has(txn, key("u/", u.ID)); err != nil || ok {
			return cmpErr(err, fmt.Errorf("%w: %s", metastore.ErrUploadExists, u.ID))
		}
		if err := underBytes(txn, u.Owner, 0, q); err != nil {
			return err
		}
		if err := countUpload(txn, u, 1, 0, q); err != nil {
			return err
		}
		return writeUpload(txn, u)
	})
	if err != nil {
		return metastore.Upload{}, err
	}
	return u, nil
}

// Upload returns session id.
func (s *Store) Upload(ctx context.Context, id string) (metastore.Upload, error) {
	if err := metastore.CheckName("upload", id); err != nil {
		return metastore.Upload{}, err
	}
	var u metastore.Upload
	err := s.view(ctx, func(txn *badger.Txn) error {
		var ok bool
		var err error
		u, ok, err = readUpload(txn, id)
		if err != nil || !ok {
			return cmpErr(err, fmt.Errorf("%w: %s", metastore.ErrUploadUnknown, id))
		}
		return nil
	})
	return u, err
}

// AdvanceUpload is the compare-and-swap of a session.
func (s *Store) AdvanceUpload(ctx context.Context, read metastore.Upload, state []byte, size int64, at time.Time) (metastore.Upload, error) {
	if err := metastore.CheckName("upload", read.ID); err != nil {
		return metastore.Upload{}, err
	}
	var u metastore.Upload
	err := s.update(ctx, func(txn *badger.Txn) error {
		cur, ok, err := readUpload(txn, read.ID)
		if err != nil {
			return err
		}
		if !ok || cur.Version != read.Version || cur.Size != read.Size || size < cur.Size {
			return fmt.Errorf("%w: %s is not at version %d, size %d", metastore.ErrUploadMoved, read.ID, read.Version, read.Size)
		}
		if err := countUpload(txn, cur, 0, size-cur.Size-cur.Reserved, metastore.UploadQuota{}); err != nil {
			return err
		}
		u = cur
		u.Reserved = 0
		u.State = slices.Clone(state)
		if u.State == nil {
			u.State = []byte{}
		}
		u.Size, u.Updated, u.Version = size, at, cur.Version+1
		return writeUpload(txn, u)
	})
	return u, err
}

// DeleteUpload removes session id.
func (s *Store) DeleteUpload(ctx context.Context, id string) error {
	if err := metastore.CheckName("upload", id); err != nil {
		return err
	}
	return s.update(ctx, func(txn *badger.Txn) error {
		u, ok, err := readUpload(txn, id)
		if err != nil || !ok {
			return cmpErr(err, fmt.Errorf("%w: %s", metastore.ErrUploadUnknown, id))
		}
		if err := countUpload(txn, u, -1, -u.Size-u.Reserved, metastore.UploadQuota{}); err != nil {
			return err
		}
		return txn.Delete(key("u/", id))
	})
}

// UploadUsage counts the sessions of repo and owner.
func (s *Store) UploadUsage(ctx context.Context, repo, owner string) (metastore.UploadUsage, error) {
	if err := metastore.CheckUsage(repo, owner); err != nil {
		return metastore.UploadUsage{}, err
	}
	var use metastore.UploadUsage
	err := s.view(ctx, func(txn *badger.Txn) error {
		r, err := readCounter(txn, key("uc/r/", repo))
		if err != nil {
			return err
		}
		all, err := readCounter(txn, allUploads)
		use.RepoSessions, use.Bytes = int(r.sessions), all.bytes
		if err != nil || owner == "" {
			return err
		}
		o, err := readCounter(txn, key("uc/o/", owner))
		use.OwnerSessions, use.OwnerBytes = int(o.sessions), o.bytes
		return err
	})
	return use, err
}

// ExpiredUploads lists sessions past their TTL or idle, after a cursor.
// It reads every session: GC's work, not a request's, over the sessions
// open on one node now.
func (s *Store) ExpiredUploads(ctx context.Context, startedBefore, updatedBefore time.Time, after metastore.Upload, n int) ([]metastore.Upload, error) {
	var out []metastore.Upload
	err := s.view(ctx, func(txn *badger.Txn) error {
		return each(txn, []byte("u/"), "", func(id string, v []byte) (bool, error) {
			var u metastore.Upload
			if err := decode(v, &u); err != nil {
				return false, fmt.Errorf("badgermeta: upload %s is damaged: %w", id, err)
			}
			if cmpUpload(u, after) > 0 && (u.Started.Before(startedBefore) || !updatedBefore.IsZero() && u.Updated.Before(updatedBefore)) {
				out = append(out, u)
			}
			return true, nil
		})
	})
	slices.SortFunc(out, cmpUpload)
	if n >= 0 && len(out) > n {
		out = out[:n]
	}
	return out, err
}

// cmpUpload orders sessions by (Started, ID), ExpiredUploads' order.
func cmpUpload(a, b metastore.Upload) int {
	if c := a.Started.Compare(b.Started); c != 0 {
		return c
	}
	return strings.Compare(a.ID, b.ID)
}

// referenced reports whether a manifest of repo references d or is d.
func referenced(txn *badger.Txn, repo, d string) (bool, error) {
	if hasPrefix(txn, prefixOf("ref/", repo, d)) {
		return true, nil
	}
	return has(txn, key("m/", repo, d))
}

// linked reports whether a repository links d or holds it as a manifest.
func linked(txn *badger.Txn, d string) bool {
	return hasPrefix(txn, prefixOf("lr/", d)) || hasPrefix(txn, prefixOf("mr/", d))
}

// UnreferencedLinks lists old links no manifest references.
func (s *Store) UnreferencedLinks(ctx context.Context, before time.Time, after metastore.Link, n int) ([]metastore.Link, error) {
	if err := metastore.CheckLast(after.Repo); err != nil {
		return nil, err
	}
	cur := ""
	if after.Repo != "" {
		cur = after.Repo + sep + after.Digest.String()
	}
	var out []metastore.Link
	err := s.view(ctx, func(txn *badger.Txn) error {
		return each(txn, []byte("l/"), cur, func(k string, v []byte) (bool, error) {
			if n >= 0 && len(out) >= n {
				return false, nil
			}
			repo, ds, _ := strings.Cut(k, sep)
			at := fromNano(v)
			if !at.Before(before) {
				return true, nil
			}
			if ref, err := referenced(txn, repo, ds); err != nil || ref {
				return err == nil, err
			}
			d, err := parseDigest(ds)
			out = append(out, metastore.Link{Repo: repo, Digest: d, Linked: at})
			return err == nil, err
		})
	})
	return out, err
}

// DropLinks removes the links of ls still unreferenced and old.
func (s *Store) DropLinks(ctx context.Context, ls []metastore.Link, before time.Time) ([]metastore.Link, error) {
	for _, l := range ls {
		if err := metastore.CheckRepoDigest(l.Repo, "link", l.Digest); err != nil {
			return nil, err
		}
	}
	var dropped []metastore.Link
	err := s.update(ctx, func(txn *badger.Txn) error {
		dropped = dropped[:0]
		for _, l := range ls {
			ds := l.Digest.String()
			lk := key("l/", l.Repo, ds)
			v, ok, err := get(txn, lk)
			if err != nil {
				return err
			}
			if !ok || !fromNano(v).Before(before) {
				continue
			}
			if ref, err := referenced(txn, l.Repo, ds); err != nil || ref {
				if err != nil {
					return err
				}
				continue
			}
			if err := deleteKeys(txn, lk, key("lr/", ds, l.Repo)); err != nil {
				return err
			}
			dropped = append(dropped, metastore.Link{Repo: l.Repo, Digest: l.Digest, Linked: fromNano(v)})
		}
		return nil
	})
	return dropped, err
}

// blobPage lists blob records under p (b/ or bd/) after `after` that
// keep says to, at most n.
func (s *Store) blobPage(ctx context.Context, p string, after metastore.Digest, n int, keep func(txn *badger.Txn, d string, r blobRecord) bool) ([]metastore.BlobRecord, error) {
	cur := ""
	if !after.IsZero() {
		cur = after.String()
	}
	var out []metastore.BlobRecord
	err := s.view(ctx, func(txn *badger.Txn) error {
		return each(txn, []byte(p), cur, func(ds string, _ []byte) (bool, error) {
			if n >= 0 && len(out) >= n {
				return false, nil
			}
			d, err := parseDigest(ds)
			if err != nil {
				return false, err
			}
			r, ok, err := readBlob(txn, d)
			if err != nil || !ok || !keep(txn, ds, r) {
				return err == nil, err
			}
			out = append(out, r.record(d))
			return true, nil
		})
	})
	return out, err
}

// UnlinkedBlobs lists old blobs nothing links.
func (s *Store) UnlinkedBlobs(ctx context.Context, before time.Time, after metastore.Digest, n int) ([]metastore.BlobRecord, error) {
	return s.blobPage(ctx, "b/", after, n, func(txn *badger.Txn, d string, r blobRecord) bool {
		return !r.deleting && r.touched.Before(before) && !linked(txn, d)
	})
}

// MarkBlobsDeleting marks the blobs of ds still unlinked and old.
func (s *Store) MarkBlobsDeleting(ctx context.Context, ds []metastore.Digest, before time.Time) ([]metastore.BlobRecord, error) {
	for _, d := range ds {
		if err := metastore.CheckDigest("blob", d); err != nil {
			return nil, err
		}
	}
	var marked []metastore.BlobRecord
	err := s.update(ctx, func(txn *badger.Txn) error {
		marked = marked[:0]
		for _, d := range ds {
			r, ok, err := readBlob(txn, d)
			if err != nil {
				return err
			}
			if !ok || r.deleting || !r.touched.Before(before) || linked(txn, d.String()) {
				continue
			}
			r.deleting = true
			if err := txn.Set(key("b/", d.String()), r.bytes()); err != nil {
				return err
			}
			if err := txn.Set(key("bd/", d.String()), nil); err != nil {
				return err
			}
			marked = append(marked, r.record(d))
		}
		return nil
	})
	slices.SortFunc(marked, func(a, b metastore.BlobRecord) int { return strings.Compare(a.Digest.String(), b.Digest.String()) })
	return marked, err
}

// DeletingBlobs lists blobs marked as being deleted.
func (s *Store) DeletingBlobs(ctx context.Context, after metastore.Digest, n int) ([]metastore.BlobRecord, error) {
	return s.blobPage(ctx, "bd/", after, n, func(*badger.Txn, string, blobRecord) bool { return true })
}

// ForgetBlobs removes the records of marked blobs.
func (s *Store) ForgetBlobs(ctx context.Context, ds []metastore.Digest) error {
	for _, d := range ds {
		if err := metastore.CheckDigest("blob", d); err != nil {
			return err
		}
	}
	return s.update(ctx, func(txn *badger.Txn) error {
		for _, d := range ds {
			r, ok, err := readBlob(txn, d)
			if err != nil {
				return err
			}
			if ok && r.deleting {
				if err := deleteKeys(txn, key("b/", d.String()), key("bd/", d.String()), key("bu/", d.String())); err != nil {
					return err
				}
			}
		}
		return nil
	})
}
