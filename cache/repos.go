package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
)

// manifestRecord is what ml/ keys hold; the digest is in the key and the
// bytes are a blob in the content store.
type manifestRecord struct {
	MediaType    string            `json:"mediaType,omitempty"`
	Size         int64             `json:"size"`
	Subject      string            `json:"subject,omitempty"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
}

func (r manifestRecord) manifest(d Digest) Manifest {
	m := Manifest{
		Digest:       d,
		MediaType:    r.MediaType,
		Size:         r.Size,
		ArtifactType: r.ArtifactType,
		Annotations:  r.Annotations,
	}
	if r.Subject != "" {
		// Written by us from a checked Digest; a bad one is left zero.
		m.Subject, _ = ParseDigest(r.Subject)
	}
	return m
}

// exists reports whether key is present in txn.
func exists(txn *badger.Txn, key []byte) (bool, error) {
	_, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return false, nil
	}
	return err == nil, err
}

// hasPrefix reports whether any key starts with prefix.
func hasPrefix(txn *badger.Txn, prefix []byte) bool {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
	defer it.Close()
	it.Rewind()
	return it.Valid()
}

// LinkBlob records that repo holds blob d (which must exist in the content
// store: ErrBlobUnknown otherwise). Creates the repository if new.
func (s *Store) LinkBlob(ctx context.Context, repo string, d Digest) error {
	if err := checkName("repository", repo); err != nil {
		return err
	}
	if err := checkDigest(d); err != nil {
		return fmt.Errorf("%w: %w", ErrBlobUnknown, err)
	}
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	if _, err := s.StatBlob(ctx, d); err != nil {
		return err
	}
	return s.linkBlobLocked(repo, d)
}

// linkBlobLocked writes the link keys; gcMu is held for reading and the
// blob is known to exist.
func (s *Store) linkBlobLocked(repo string, d Digest) error {
	now := s.now()
	err := s.update(func(txn *badger.Txn) error { return setBlobLink(txn, repo, d, now) })
	if err != nil {
		return fmt.Errorf("cache: link blob: %w", err)
	}
	return nil
}

// setBlobLink writes (or renews) repo's link to d, made at now: GC leaves
// a link no manifest references alone for the grace period after that, and
// then looks at the repository (the manifest may never come).
func setBlobLink(txn *badger.Txn, repo string, d Digest, now time.Time) error {
	if err := txn.Set(blobLinkKey(repo, d), linkTime(now)); err != nil {
		return err
	}
	if err := markRepo(txn, repo, now); err != nil {
		return err
	}
	return setAll(txn, repoKey(repo), blobRevKey(d, repo))
}

// readLink reads a bl/ key: whether the link exists and, if it carries
// one, its time.
func readLink(txn *badger.Txn, key []byte) (linked bool, at time.Time, timed bool, err error) {
	item, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return false, at, false, nil
	}
	if err != nil {
		return false, at, false, err
	}
	err = item.Value(func(v []byte) error {
		at, timed = parseLinkTime(v)
		return nil
	})
	return true, at, timed, err
}

func setAll(txn *badger.Txn, keys ...[]byte) error {
	for _, k := range keys {
		if err := txn.Set(k, nil); err != nil {
			return err
		}
	}
	return nil
}

// HasBlob reports whether repo links blob d and the blob exists.
// ErrBlobUnknown otherwise. Asking renews a link older than half the GC
// grace period (renewLink).
func (s *Store) HasBlob(ctx context.Context, repo string, d Digest) (BlobInfo, error) {
	if err := checkName("repository", repo); err != nil {
		return BlobInfo{}, err
	}
	if err := checkDigest(d); err != nil {
		return BlobInfo{}, fmt.Errorf("%w: %w", ErrBlobUnknown, err)
	}
	var linked, timed bool
	var at time.Time
	var size blobSize
	err := s.db.View(func(txn *badger.Txn) error {
		var err error
		if linked, at, timed, err = readLink(txn, blobLinkKey(repo, d)); err != nil || !linked {
			return err
		}
		size, err = readBlobSize(txn, d)
		return err
	})
	if err != nil {
		return BlobInfo{}, fmt.Errorf("cache: read link: %w", err)
	}
	if !linked {
		return BlobInfo{}, fmt.Errorf("%w: %s in %s", ErrBlobUnknown, d, repo)
	}
	info, err := s.statBlob(d, size)
	if errors.Is(err, ErrBlobUnknown) && !errors.Is(err, blobstore.ErrSizeMismatch) {
		// Linked, yet no file: removed behind the store's back (by hand,
		// fsck, a disk repaired), since GC and eviction unlink before they
		// remove. The caller may heal it (a mirror fetches it again).
		return BlobInfo{}, fmt.Errorf("%w: %w: %s linked in %s, its file is gone", ErrBlobUnknown, blobstore.ErrNotFound, d, repo)
	}
	if err == nil && timed {
		if now := s.now(); now.Sub(at) > s.grace/2 && !s.renewLink(repo, d, now) {
			return BlobInfo{}, fmt.Errorf("%w: %s in %s", ErrBlobUnknown, d, repo)
		}
	}
	return info, err
}

// renewLink moves the time of repo's old link to d to now. A client asks
// whether a repository holds a blob right before it pushes a manifest that
// references it, instead of uploading it again, and the registry asks
// again while it checks the manifest; from then on the link must outlive
// the grace period as a fresh one would, even if no manifest referenced it
// so far (its manifest deleted, the same image pushed again). Renewing only
// links older than half the grace period costs at most one write per link
// per half period, and leaves the other half as the margin between the
// question and the manifest's commit. It reports false when GC dropped
// the link since it was read; a failure only costs the renewal.
func (s *Store) renewLink(repo string, d Digest, now time.Time) (linked bool) {
	err := s.update(func(txn *badger.Txn) error {
		var at time.Time
		var timed bool
		var err error
		linked, at, timed, err = readLink(txn, blobLinkKey(repo, d))
		// A link dropped meanwhile is never made again here.
		if err != nil || !linked || !timed || now.Sub(at) <= s.grace/2 {
			return err
		}
		return txn.Set(blobLinkKey(repo, d), linkTime(now))
	})
	if err != nil {
		s.log.Warn("renew blob link", zap.String("repo", repo), zap.String("digest", d.String()), zap.Error(err))
		return true // it was there when read
	}
	return linked
}

// UnlinkBlob removes repo's link to d; the content stays for other
// repositories until GC. ErrBlobUnknown when repo did not link it.
func (s *Store) UnlinkBlob(ctx context.Context, repo string, d Digest) error {
	if err := checkName("repository", repo); err != nil {
		return err
	}
	if err := checkDigest(d); err != nil {
		return fmt.Errorf("%w: %w", ErrBlobUnknown, err)
	}
	return s.update(func(txn *badger.Txn) error {
		ok, err := exists(txn, blobLinkKey(repo, d))
		if err != nil {
			return fmt.Errorf("cache: read link: %w", err)
		}
		if !ok {
			return fmt.Errorf("%w: %s in %s", ErrBlobUnknown, d, repo)
		}
		return deleteBlobLink(txn, repo, d)
	})
}

// deleteBlobLink removes repo's link to d: both its keys. The blob
// becomes a GC candidate (it may have been its last link).
func deleteBlobLink(txn *badger.Txn, repo string, d Digest) error {
	if err := txn.Delete(blobLinkKey(repo, d)); err != nil {
		return err
	}
	if err := markBlob(txn, d); err != nil {
		return err
	}
	return txn.Delete(blobRevKey(d, repo))
}

// ReposWithBlob lists repositories that link d (for a mount without
// `from`), in lexical order, at most limit of them (limit <= 0: all).
func (s *Store) ReposWithBlob(ctx context.Context, d Digest, limit int) ([]string, error) {
	if err := checkDigest(d); err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = -1
	}
	var repos []string
	err := s.db.View(func(txn *badger.Txn) error {
		var err error
		repos, _, err = page(ctx, txn, blobRevPrefix(d), "", limit)
		return err
	})
	return repos, err
}

// PutManifest stores body (as a blob in the content store, byte for byte)
// and links it to repo with the metadata in m (m.Digest must be the digest
// of body; ErrDigestMismatch otherwise). If m.Subject is set a referrer
// entry is added under the subject. Then points each of tags at it. All
// metadata changes commit in one badger transaction.
func (s *Store) PutManifest(ctx context.Context, repo string, m Manifest, body []byte, tags []string) error {
	return s.putManifest(repo, m, body, tags, time.Time{}, false)
}

// CreateManifest is PutManifest for a push that may only create: it
// applies only if each of tags is absent or points at m.Digest already
// (ErrTagMoved otherwise) and repo does not hold m.Digest under another
// media type (ErrManifestRetyped otherwise); refused, nothing changes in
// the metadata. The check and the write are one badger transaction,
// which conflicts (and is tried again) if another writer changes a tag
// or the manifest's record it read.
func (s *Store) CreateManifest(ctx context.Context, repo string, m Manifest, body []byte, tags []string) error {
	return s.putManifest(repo, m, body, tags, time.Time{}, true)
}

// stillLinked fails with ErrBlobUnknown if one of blobs, found linked in
// repo before a push's put, is not linked any more: GC dropped the link
// in between (the registry's check of a manifest's blobs runs before the
// put takes gcMu), and would then remove the blob under the manifest.
func stillLinked(txn *badger.Txn, repo string, blobs []Digest) error {
	for _, b := range blobs {
		linked, _, _, err := readLink(txn, blobLinkKey(repo, b))
		if err != nil {
			return err
		}
		if !linked {
			return fmt.Errorf("%w: %s is no longer linked in %s: collected while the manifest was pushed", ErrBlobUnknown, b, repo)
		}
	}
	return nil
}

// PutFetchedManifest is PutManifest of a manifest a mirror fetched for
// tag, and SetTagFetched(tag, fetched), in one transaction: a cold pull
// through a mirror then waits for one sync of the metadata, not two.
func (s *Store) PutFetchedManifest(ctx context.Context, repo string, m Manifest, body []byte, tag string, fetched time.Time) error {
	if fetched.IsZero() {
		return errors.New("cache: PutFetchedManifest needs a fetch time")
	}
	return s.putManifest(repo, m, body, []string{tag}, fetched, false)
}

// putManifest is PutManifest, or CreateManifest if createOnly; a
// non-zero fetched also records it as the time each tag was confirmed
// upstream.
func (s *Store) putManifest(repo string, m Manifest, body []byte, tags []string, fetched time.Time, createOnly bool) error {
	if err := checkName("repository", repo); err != nil {
		return err
	}
	for _, t := range tags {
		if err := checkName("tag", t); err != nil {
			return err
		}
	}
	if err := checkDigest(m.Digest); err != nil {
		return err
	}
	if !m.Subject.IsZero() {
		if err := checkDigest(m.Subject); err != nil {
			return fmt.Errorf("subject: %w", err)
		}
	}
	if got := FromBytes(m.Digest.Algorithm, body); got != m.Digest {
		return fmt.Errorf("%w: want %s, got %s", ErrDigestMismatch, m.Digest, got)
	}
	rec := manifestRecord{
		MediaType:    m.MediaType,
		Size:         int64(len(body)),
		ArtifactType: m.ArtifactType,
		Annotations:  m.Annotations,
	}
	if !m.Subject.IsZero() {
		rec.Subject = m.Subject.String()
	}
	val, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("cache: encode manifest: %w", err)
	}

	// Held across write and link so GC cannot take the bytes in between.
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	created, err := s.writeSmallBlobLocked(m.Digest, body)
	if err != nil {
		return err
	}
	d := m.Digest
	s.mirrorMu.RLock()
	defer s.mirrorMu.RUnlock()
	err = s.update(func(txn *badger.Txn) error {
		if err := stillLinked(txn, repo, m.Linked); err != nil {
			return err
		}
		// A re-push with another subject moves the referrer entry.
		if item, err := txn.Get(manLinkKey(repo, d)); err == nil {
			var old manifestRecord
			derr := item.Value(func(v []byte) error { return json.Unmarshal(v, &old) })
			if createOnly && derr == nil && old.MediaType != rec.MediaType {
				return fmt.Errorf("%w: %s in %s is %q", ErrManifestRetyped, d, repo, old.MediaType)
			}
			if derr == nil && old.Subject != "" && old.Subject != rec.Subject {
				if sub, err := ParseDigest(old.Subject); err == nil {
					if err := txn.Delete(refKey(repo, sub, d)); err != nil {
						return err
					}
				}
			}
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		if createOnly {
			for _, t := range tags {
				cur, err := readTag(txn, repo, t)
				if err == nil && cur != d {
					return fmt.Errorf("%w: %s:%s is at %s", ErrTagMoved, repo, t, cur)
				}
				if err != nil && !errors.Is(err, ErrTagUnknown) {
					return err
				}
			}
		}
		if err := txn.Set(manLinkKey(repo, d), val); err != nil {
			return err
		}
		if err := setAll(txn, repoKey(repo), manRevKey(d, repo)); err != nil {
			return err
		}
		if !m.Subject.IsZero() {
			if err := txn.Set(refKey(repo, m.Subject, d), nil); err != nil {
				return err
			}
		}
		for _, t := range tags {
			if err := txn.Set(tagKey(repo, t), []byte(d.String())); err != nil {
				return err
			}
			if !fetched.IsZero() {
				if err := txn.Set(tagFetchKey(repo, t), fetchedValue(fetched)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cache: put manifest: %w", err)
	}
	if created {
		s.mirrorCommitted(repo, d, int64(len(body)))
	}
	return nil
}

// writeSmallBlobLocked stores already verified bytes as blob d; gcMu is
// held for reading. created reports whether the file is new.
func (s *Store) writeSmallBlobLocked(d Digest, body []byte) (created bool, err error) {
	if s.touchFileLocked(d, int64(len(body))) {
		return false, nil // there already: a re-push or a tag move needs no room
	}
	if err := s.space.Admit(int64(len(body))); err != nil {
		return false, err
	}
	f, err := s.createTemp()
	if err != nil {
		return false, err
	}
	tmp := f.Name()
	_, err = f.Write(body)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		created, err = s.installLocked(tmp, d, int64(len(body)))
	}
	if err != nil {
		os.Remove(tmp)
		return false, fmt.Errorf("cache: write manifest: %w", err)
	}
	return created, nil
}

// GetManifest returns the manifest repo links under digest d, with its
// bytes. ErrManifestUnknown when repo does not link it.
func (s *Store) GetManifest(ctx context.Context, repo string, d Digest) (Manifest, []byte, error) {
	m, err := s.StatManifest(ctx, repo, d)
	if err != nil {
		return Manifest{}, nil, err
	}
	body, err := os.ReadFile(s.blobPath(d))
	if err != nil {
		// A link without bytes: the store is damaged; say unknown rather
		// than fail every pull of it.
		s.log.Error("manifest linked but its blob is missing",
			zap.String("repo", repo), zap.String("digest", d.String()), zap.Error(err))
		return Manifest{}, nil, fmt.Errorf("%w: %s in %s: %w", ErrManifestUnknown, d, repo, err)
	}
	return m, body, nil
}

// StatManifest is GetManifest without the bytes.
func (s *Store) StatManifest(ctx context.Context, repo string, d Digest) (Manifest, error) {
	if err := checkName("repository", repo); err != nil {
		return Manifest{}, err
	}
	if err := checkDigest(d); err != nil {
		return Manifest{}, fmt.Errorf("%w: %w", ErrManifestUnknown, err)
	}
	var m Manifest
	err := s.db.View(func(txn *badger.Txn) error {
		var err error
		m, err = getManifest(txn, repo, d)
		return err
	})
	if errors.Is(err, errRecordDamaged) {
		s.log.Error("manifest damaged in the metadata; answered as unknown until it is pushed again",
			zap.String("repo", repo), zap.String("digest", d.String()), zap.Error(err))
	}
	return m, err
}

func getManifest(txn *badger.Txn, repo string, d Digest) (Manifest, error) {
	item, err := txn.Get(manLinkKey(repo, d))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return Manifest{}, fmt.Errorf("%w: %s in %s", ErrManifestUnknown, d, repo)
	}
	if err != nil {
		return Manifest{}, fmt.Errorf("cache: read manifest: %w", err)
	}
	var rec manifestRecord
	if err := item.Value(func(v []byte) error { return json.Unmarshal(v, &rec) }); err != nil {
		return Manifest{}, fmt.Errorf("%w: %s in %s: %w: %w", ErrManifestUnknown, d, repo, errRecordDamaged, err)
	}
	return rec.manifest(d), nil
}

// errRecordDamaged marks a manifest record that does not read back (a
// record over the value threshold whose value log a crash cut short:
// badger answers it as empty). It is answered as unknown, as a manifest
// whose file is gone, so a client pushes it again, which writes it whole;
// a delete removes it.
var errRecordDamaged = errors.New("its record does not read back")

// ResolveTag returns the digest tag points at in repo. ErrTagUnknown when
// the tag does not exist.
func (s *Store) ResolveTag(ctx context.Context, repo, tag string) (Digest, error) {
	if err := checkName("repository", repo); err != nil {
		return Digest{}, err
	}
	if err := checkName("tag", tag); err != nil {
		return Digest{}, err
	}
	var d Digest
	err := s.db.View(func(txn *badger.Txn) (err error) {
		d, err = readTag(txn, repo, tag)
		return err
	})
	return d, err
}

// readTag returns the digest tag points at in repo within txn.
func readTag(txn *badger.Txn, repo, tag string) (Digest, error) {
	item, err := txn.Get(tagKey(repo, tag))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return Digest{}, fmt.Errorf("%w: %s:%s", ErrTagUnknown, repo, tag)
	}
	if err != nil {
		return Digest{}, fmt.Errorf("cache: read tag: %w", err)
	}
	var d Digest
	err = item.Value(func(v []byte) error {
		d, err = ParseDigest(string(v))
		return err
	})
	return d, err
}

// DeleteTag removes one tag; the manifest stays. ErrTagUnknown if absent.
func (s *Store) DeleteTag(ctx context.Context, repo, tag string) error {
	if err := checkName("repository", repo); err != nil {
		return err
	}
	if err := checkName("tag", tag); err != nil {
		return err
	}
	return s.update(func(txn *badger.Txn) error {
		ok, err := exists(txn, tagKey(repo, tag))
		if err != nil {
			return fmt.Errorf("cache: read tag: %w", err)
		}
		if !ok {
			return fmt.Errorf("%w: %s:%s", ErrTagUnknown, repo, tag)
		}
		if err := txn.Delete(tagKey(repo, tag)); err != nil {
			return err
		}
		return txn.Delete(tagFetchKey(repo, tag))
	})
}

// DeleteManifest unlinks manifest d from repo, removes every tag of repo
// pointing at it and its referrer entry (if it had a subject), in one
// transaction. ErrManifestUnknown when repo does not link it.
func (s *Store) DeleteManifest(ctx context.Context, repo string, d Digest) error {
	if err := checkName("repository", repo); err != nil {
		return err
	}
	if err := checkDigest(d); err != nil {
		return fmt.Errorf("%w: %w", ErrManifestUnknown, err)
	}
	if err := s.dropTagsOf(ctx, repo, d); err != nil {
		return err
	}
	since := s.now().Add(-s.grace)
	return s.update(func(txn *badger.Txn) error { return deleteManifestTxn(txn, repo, d, since) })
}

// tagBatch is how many tags one transaction deletes. badger refuses a
// transaction past a size its memtable sets (a few thousand writes here),
// and a manifest may carry any number of tags: CI that tags every build of
// an image that did not change.
const tagBatch = 500

// dropTagsOf deletes the tags of repo that point at manifest d, tagBatch
// per transaction, when there are more than deleteManifestTxn could
// delete with the manifest in one. A DELETE that fails midway has removed
// some tags of a manifest the client asked to delete; its retry removes
// the rest.
func (s *Store) dropTagsOf(ctx context.Context, repo string, d Digest) error {
	want := []byte(d.String())
	var keys [][]byte
	err := s.db.View(func(txn *badger.Txn) error {
		if _, err := getManifest(txn, repo, d); err != nil && !errors.Is(err, errRecordDamaged) {
			return nil // DeleteManifest's own transaction says so
		}
		it := txn.NewIterator(badger.IteratorOptions{Prefix: tagPrefix(repo), PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			item := it.Item()
			if err := item.Value(func(v []byte) error {
				if bytes.Equal(v, want) {
					keys = append(keys, item.KeyCopy(nil))
				}
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil || len(keys) <= tagBatch {
		return err
	}
	for len(keys) > 0 {
		batch := keys[:min(tagBatch, len(keys))]
		keys = keys[len(batch):]
		err := s.update(func(txn *badger.Txn) error {
			for _, k := range batch {
				item, err := txn.Get(k)
				if errors.Is(err, badger.ErrKeyNotFound) {
					continue
				}
				if err != nil {
					return err
				}
				same := false
				if err := item.Value(func(v []byte) error { same = bytes.Equal(v, want); return nil }); err != nil {
					return err
				}
				if !same {
					continue // moved since: not this manifest's any more
				}
				if err := txn.Delete(k); err != nil {
					return err
				}
				if err := txn.Delete(append([]byte(pTagFetch), k[len(pTag):]...)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("cache: delete tags of %s: %w", d, err)
		}
	}
	return nil
}

// deleteManifestTxn is DeleteManifest within txn (also eviction's). The
// manifest's blob and the repository become GC candidates: the repository
// marked at since, a grace period ago, so the next pass looks at it (the
// links only the manifest referenced may be old already; their own times
// keep the young ones).
func deleteManifestTxn(txn *badger.Txn, repo string, d Digest, since time.Time) error {
	m, err := getManifest(txn, repo, d)
	var dels [][]byte
	if errors.Is(err, errRecordDamaged) {
		// Only the record names its subject: its referrer entry is found
		// among the repository's entries instead, so that nothing of it
		// stays.
		m, err = Manifest{Digest: d}, nil
		dels = referrerEntriesOf(txn, repo, d)
	}
	if err != nil {
		return err
	}
	if err := markRepo(txn, repo, since); err != nil {
		return err
	}
	if err := markBlob(txn, d); err != nil {
		return err
	}
	dels = append(dels, manLinkKey(repo, d), manRevKey(d, repo))
	if !m.Subject.IsZero() {
		dels = append(dels, refKey(repo, m.Subject, d))
	}
	want := []byte(d.String())
	prefix := tagPrefix(repo)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true, PrefetchSize: 64})
	for it.Rewind(); it.Valid(); it.Next() {
		item := it.Item()
		err := item.Value(func(v []byte) error {
			if bytes.Equal(v, want) {
				k := item.KeyCopy(nil)
				dels = append(dels, k, append([]byte(pTagFetch), k[len(pTag):]...))
			}
			return nil
		})
		if err != nil {
			it.Close()
			return err
		}
	}
	it.Close()
	for _, k := range dels {
		if err := txn.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// referrerEntriesOf returns the keys of repo's referrer entries of
// manifest d, whatever their subject: a scan of the repository's entries,
// for a manifest whose record, which names its subject, is lost.
func referrerEntriesOf(txn *badger.Txn, repo string, d Digest) [][]byte {
	suffix := []byte(sep + d.String())
	var keys [][]byte
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(pRef + repo + sep)})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		if k := it.Item().Key(); bytes.HasSuffix(k, suffix) {
			keys = append(keys, it.Item().KeyCopy(nil))
		}
	}
	return keys
}

// Tags lists repo's tags in lexical order, starting after `last` (empty:
// from the start), at most n (n < 0: all). more reports whether tags
// remain after the returned page. ErrRepoUnknown if the repository does
// not exist.
func (s *Store) Tags(ctx context.Context, repo string, last string, n int) (tags []string, more bool, err error) {
	if err := checkName("repository", repo); err != nil {
		return nil, false, err
	}
	err = s.db.View(func(txn *badger.Txn) error {
		ok, err := exists(txn, repoKey(repo))
		if err != nil {
			return fmt.Errorf("cache: read repository: %w", err)
		}
		if !ok {
			return fmt.Errorf("%w: %s", ErrRepoUnknown, repo)
		}
		tags, more, err = page(ctx, txn, tagPrefix(repo), last, n)
		return err
	})
	return tags, more, err
}

// Repositories lists repository names in lexical order with the same
// paging rules as Tags. A repository exists from its first link.
func (s *Store) Repositories(ctx context.Context, last string, n int) (repos []string, more bool, err error) {
	err = s.db.View(func(txn *badger.Txn) error {
		var err error
		repos, more, err = page(ctx, txn, []byte(pRepo), last, n)
		return err
	})
	return repos, more, err
}

// page lists the key suffixes under prefix that sort after last, at most n
// of them (n < 0: all), and whether more remain. The result is never nil.
// A listing of every key can be long: it stops with ctx's error when ctx
// ends first.
func page(ctx context.Context, txn *badger.Txn, prefix []byte, last string, n int) ([]string, bool, error) {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
	defer it.Close()
	start := append(append([]byte(nil), prefix...), last...)
	it.Seek(start)
	if last != "" && it.Valid() && bytes.Equal(it.Item().Key(), start) {
		it.Next()
	}
	out := []string{}
	for ; it.Valid(); it.Next() {
		if n >= 0 && len(out) >= n {
			return out, true, nil
		}
		if err := ctx.Err(); err != nil {
			return nil, false, err
		}
		out = append(out, string(it.Item().Key()[len(prefix):]))
	}
	return out, false, nil
}

// Referrers lists the manifests in repo whose subject is d, ordered by
// digest, after the digest `after`, at most n (n < 0: all), and whether
// more remain. An unknown subject gives an empty list, not an error.
func (s *Store) Referrers(ctx context.Context, repo string, d Digest, after string, n int) ([]Manifest, bool, error) {
	if err := checkName("repository", repo); err != nil {
		return nil, false, err
	}
	if err := checkDigest(d); err != nil {
		return nil, false, err
	}
	out := []Manifest{}
	more := false
	err := s.db.View(func(txn *badger.Txn) error {
		// The names are small; a name whose manifest is gone is skipped,
		// so a page is counted in manifests, not names.
		refs, _, err := page(ctx, txn, refPrefix(repo, d), after, -1)
		if err != nil {
			return err
		}
		for _, r := range refs {
			if n >= 0 && len(out) >= n {
				more = true
				return nil
			}
			rd, err := ParseDigest(r)
			if err != nil {
				continue
			}
			m, err := getManifest(txn, repo, rd)
			if err == nil {
				// A referrer listed answers its GET, which reads its file.
				if _, serr := os.Stat(s.blobPath(rd)); serr != nil {
					err = fmt.Errorf("%w: %s in %s: %w: %w", ErrManifestUnknown, rd, repo, errRecordDamaged, serr)
				}
			}
			if errors.Is(err, errRecordDamaged) {
				// Left out, as its GET answers it unknown, and logged as
				// that GET logs it.
				s.log.Error("manifest damaged; left out of the list of referrers until it is pushed again",
					zap.String("repo", repo), zap.String("digest", rd.String()), zap.Error(err))
				continue
			}
			if errors.Is(err, ErrManifestUnknown) {
				continue
			}
			if err != nil {
				return err
			}
			out = append(out, m)
		}
		return nil
	})
	return out, more, err
}
