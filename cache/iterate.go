package cache

// Read-only listings of everything a store holds, for copying it
// elsewhere (`caddy oci migrate`): the registry's own calls look things
// up by name and digest and never need them.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// EachBlob calls fn for every blob file in the content store, in path
// order (by algorithm, then digest), and stops at fn's first error or when
// ctx ends. Files that are not blobs (a stray name) are passed over.
func (s *Store) EachBlob(ctx context.Context, fn func(BlobInfo) error) error {
	err := filepath.WalkDir(s.blobsDir, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if e.IsDir() {
			return nil
		}
		d, ok := s.digestOfPath(path)
		if !ok {
			return nil
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		return fn(BlobInfo{Digest: d, Size: fi.Size(), ModTime: fi.ModTime()})
	})
	if err != nil {
		return fmt.Errorf("cache: list blobs: %w", err)
	}
	return nil
}

// BlobLinks lists the blobs repo links, in digest order. ErrRepoUnknown
// if the repository does not exist.
func (s *Store) BlobLinks(ctx context.Context, repo string) ([]Digest, error) {
	return s.repoDigests(ctx, repo, blobLinkPrefix(repo))
}

// BlobLinkTimes returns when repo linked each blob it links (made or last
// renewed), which GC's grace period counts from; a link made before links
// had a time is left out. ErrRepoUnknown if the repository does not
// exist. A migration copies the times with the links.
func (s *Store) BlobLinkTimes(ctx context.Context, repo string) (map[Digest]time.Time, error) {
	if err := checkName("repository", repo); err != nil {
		return nil, err
	}
	out := map[Digest]time.Time{}
	prefix := blobLinkPrefix(repo)
	err := s.db.View(func(txn *badger.Txn) error {
		ok, err := exists(txn, repoKey(repo))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: %s", ErrRepoUnknown, repo)
		}
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			item := it.Item()
			d, err := ParseDigest(string(item.Key()[len(prefix):]))
			if err != nil {
				return fmt.Errorf("cache: repository %s: bad key %q: %w", repo, item.Key(), err)
			}
			err = item.Value(func(v []byte) error {
				if at, ok := parseLinkTime(v); ok {
					out[d] = at
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// ManifestDigests lists the manifests repo holds, in digest order.
// ErrRepoUnknown if the repository does not exist.
func (s *Store) ManifestDigests(ctx context.Context, repo string) ([]Digest, error) {
	return s.repoDigests(ctx, repo, manLinkPrefix(repo))
}

func (s *Store) repoDigests(ctx context.Context, repo string, prefix []byte) ([]Digest, error) {
	if err := checkName("repository", repo); err != nil {
		return nil, err
	}
	var out []Digest
	err := s.db.View(func(txn *badger.Txn) error {
		ok, err := exists(txn, repoKey(repo))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: %s", ErrRepoUnknown, repo)
		}
		names, _, err := page(ctx, txn, prefix, "", -1)
		if err != nil {
			return err
		}
		for _, n := range names {
			d, err := ParseDigest(n)
			if err != nil {
				return fmt.Errorf("cache: repository %s: bad key %q: %w", repo, n, err)
			}
			out = append(out, d)
		}
		return nil
	})
	return out, err
}

// AuthRecord is one record of the auth layer with its key: an API key, a
// session (with when it expires) or a secret (Record is the secret).
type AuthRecord struct {
	ID      string
	Record  []byte
	Expires time.Time // sessions only
}

// APIKeyRecords returns every API key record with its id, by id.
func (s *Store) APIKeyRecords() ([]AuthRecord, error) { return s.authRecords(pAPIKey) }

// Sessions returns every live sign-in session with its id and expiry, by
// id.
func (s *Store) Sessions() ([]AuthRecord, error) { return s.authRecords(pSession) }

// AuthSecrets returns every secret AuthSecret made, by name (ID).
func (s *Store) AuthSecrets() ([]AuthRecord, error) { return s.authRecords(pAuthSecret) }

// UploadSessions counts the upload sessions in progress: a migration
// does not copy them, and says how many it leaves.
func (s *Store) UploadSessions() (int, error) {
	n := 0
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(pUpload)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("cache: count upload sessions: %w", err)
	}
	return n, nil
}

func (s *Store) authRecords(prefix string) ([]AuthRecord, error) {
	var out []AuthRecord
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix), PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			v, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			r := AuthRecord{ID: string(item.Key()[len(prefix):]), Record: v}
			if e := item.ExpiresAt(); e > 0 {
				r.Expires = time.Unix(int64(e), 0)
			}
			out = append(out, r)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cache: list %s: %w", prefix, err)
	}
	return out, nil
}
