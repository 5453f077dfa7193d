package cache

// Mirrored tags: a mirror serves a tag from the store while it is fresh
// and revalidates it upstream after that. The time of the last upstream
// confirmation is kept beside the tag.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// TagInfo is what the store knows about one tag.
type TagInfo struct {
	Digest Digest
	// Fetched is when a mirror last confirmed the tag upstream; zero for
	// a tag that was pushed, or never confirmed.
	Fetched time.Time
}

// TagInfo returns the digest tag points at in repo and when it was last
// confirmed upstream. ErrTagUnknown when the tag does not exist.
func (s *Store) TagInfo(ctx context.Context, repo, tag string) (TagInfo, error) {
	if err := checkName("repository", repo); err != nil {
		return TagInfo{}, err
	}
	if err := checkName("tag", tag); err != nil {
		return TagInfo{}, err
	}
	var ti TagInfo
	err := s.db.View(func(txn *badger.Txn) error {
		var err error
		if ti.Digest, err = readTag(txn, repo, tag); err != nil {
			return err
		}
		item, err := txn.Get(tagFetchKey(repo, tag))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("cache: read tag time: %w", err)
		}
		return item.Value(func(v []byte) error {
			if len(v) == 8 {
				ti.Fetched = time.Unix(0, int64(binary.BigEndian.Uint64(v)))
			}
			return nil
		})
	})
	return ti, err
}

// SetTagFetched records that tag in repo was confirmed upstream at t. The
// tag must exist (ErrTagUnknown otherwise).
func (s *Store) SetTagFetched(ctx context.Context, repo, tag string, t time.Time) error {
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
		return txn.Set(tagFetchKey(repo, tag), fetchedValue(t))
	})
}

// fetchedValue is how a tag's fetch time is stored.
func fetchedValue(t time.Time) []byte {
	return binary.BigEndian.AppendUint64(nil, uint64(t.UnixNano()))
}
