package cache

// Incremental GC: a pass examines what changed since the last one, not the
// whole store.
//
// Garbage appears only where a reference goes or never came: a repository
// whose manifests were deleted (the links they referenced may go), a
// repository that got a blob link no manifest may ever reference (a push
// abandoned before its manifest), a blob that lost a link or a manifest
// link, and a blob installed that no one links yet. Each of these marks a
// candidate, in the same transaction as the change (the install writes its
// mark before the file appears), so a crash never loses one:
//
//	gr/<since><repo>  the repository has had a candidate since then
//	                (unix ns, 8 bytes BE, the store's clock): a blob
//	                linked (since the link), a manifest deleted (since a
//	                grace period before: what it referenced may be old)
//	gt/<at><digest> the blob is worth examining since at (unix ns, 8
//	                bytes BE, the real clock); its file's time is the
//	                grace period
//	gtfrom          where the next pass starts reading gt/ (unix ns):
//	                every mark before it was consumed
//	gcfull          when the last full pass finished (unix ns)
//	gb/<digest>     a blob mark as written before gt/ (by digest); only
//	                a full pass reads them, and deletes them all
//
// A repository mark younger than the grace period stays for a later pass
// (nothing it stands for may go before). Marks are written blindly (no
// read), so concurrent pushes never conflict over them; a repository may
// have several, ordered by time so a pass reads only those old enough. A
// pass consumes a mark only if its version is
// the one it read before examining, so a mark written again meanwhile
// stays for the next pass. A repository that still has young unreferenced
// links gets a new mark with the time of the oldest of them; a blob still
// young and unlinked keeps its mark (its file's time is its age).
//
// Blob marks are ordered by time so that those consumed, deleted, do not
// stay in the way: badger keeps a deleted key as a tombstone until
// compaction reaches the last level, and an iterator steps over every
// one, so a pass after a full pass (which consumes a mark per blob of the
// store, 150,000 at 50,000 images) spent a quarter of its time walking
// tombstones when the marks were keyed by digest. A pass starts at
// gtfrom, past everything consumed before, and leaves gtfrom at its own
// start less gcMarkSlack (a mark is timed when its transaction is made,
// and may commit that much later) or at the oldest mark it kept, if
// older. A mark whose transaction takes longer than gcMarkSlack to
// commit, or timed by a clock set back that far, is not seen by the
// incremental passes: the full pass takes its blob.
//
// An incremental pass may miss garbage (a store from before the marks, a
// link renewed past its mark), never keep less than the full pass would:
// it runs the same checks, only on fewer things. The full pass (the whole
// walk, every gc_full_interval and first on a store without gcfull) is
// the safety net.
//
// A metadata backend other than badger implements the same contract: mark
// a repository (with a time) or a blob in the transaction of the change,
// list the repository marks older than a time and the blob marks in pages, and delete a
// listed mark only if it was not marked again since it was listed. With
// SQL, a table per kind with a serial column as the version.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

const (
	pGCRepo     = "gr/"
	pGCBlob     = "gt/"
	pGCBlobV1   = "gb/"
	keyGCFull   = "gcfull"
	keyGCBlobAt = "gtfrom"

	// gcMarkSlack: how long after it is timed a blob mark may commit and
	// still be seen by the incremental passes.
	gcMarkSlack = time.Minute

	// gcMarkBatch: marks read, examined and settled per transaction.
	gcMarkBatch = 256
	// DefaultGCFullInterval: how often GC walks the whole store when the
	// store is not told otherwise.
	DefaultGCFullInterval = 24 * time.Hour
)

func gcRepoKey(since time.Time, repo string) []byte {
	return append(binary.BigEndian.AppendUint64([]byte(pGCRepo), uint64(since.UnixNano())), repo...)
}

func gcBlobKey(at time.Time, d Digest) []byte {
	return append(binary.BigEndian.AppendUint64([]byte(pGCBlob), uint64(at.UnixNano())), d.String()...)
}

// markRepo makes repo a candidate since the time since: of the first pass
// after the grace period from then.
func markRepo(txn *badger.Txn, repo string, since time.Time) error {
	return txn.Set(gcRepoKey(since, repo), nil)
}

// markBlob makes blob d a candidate of the next pass.
func markBlob(txn *badger.Txn, d Digest) error {
	return txn.Set(gcBlobKey(time.Now(), d), nil)
}

// markBlobs is markBlob for each of ds in one transaction of its own.
func (s *Store) markBlobs(ds ...Digest) error {
	err := s.update(func(txn *badger.Txn) error {
		for _, d := range ds {
			if err := markBlob(txn, d); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cache: mark gc candidate: %w", err)
	}
	return nil
}

// gcMark is a mark as read, for consuming it later.
type gcMark struct {
	key     []byte
	version uint64
	name    string // repository or digest
}

// repoMarks lists up to gcMarkBatch repository marks from cutoff or before,
// after the key `after` (nil: from the start).
func (s *Store) repoMarks(cutoff time.Time, after []byte) ([]gcMark, error) {
	return s.marks([]byte(pGCRepo), after, func(k []byte) (string, bool) {
		if len(k) < len(pGCRepo)+8 {
			return "", true // not a key we write; consumed like one
		}
		since := int64(binary.BigEndian.Uint64(k[len(pGCRepo):]))
		return string(k[len(pGCRepo)+8:]), since <= cutoff.UnixNano()
	})
}

// blobMarks lists up to gcMarkBatch blob marks after the key `after`
// (nil: from the time from on). A mark's at is in its key.
func (s *Store) blobMarks(from time.Time, after []byte) ([]gcMark, error) {
	if after == nil && !from.IsZero() {
		// (The zero time has no UnixNano: it would seek past every mark.)
		after = binary.BigEndian.AppendUint64([]byte(pGCBlob), uint64(from.UnixNano()))
	}
	return s.marks([]byte(pGCBlob), after, func(k []byte) (string, bool) {
		if len(k) < len(pGCBlob)+8 {
			return "", true // not a key we write; consumed like one
		}
		return string(k[len(pGCBlob)+8:]), true
	})
}

// markTime is when blob mark key k was made.
func markTime(k []byte) time.Time {
	if len(k) < len(pGCBlob)+8 {
		return time.Time{}
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(k[len(pGCBlob):])))
}

// blobMarksFrom reads gtfrom: where the blob marks not yet consumed
// start (zero: at the beginning).
func (s *Store) blobMarksFrom() (time.Time, error) {
	from, _, err := s.gcStateTime(keyGCBlobAt)
	return from, err
}

// gcStateTime reads the time GC keeps at key; ok is false when there is
// none (or none this version can read).
func (s *Store) gcStateTime(key string) (at time.Time, ok bool, err error) {
	err = s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(key))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			if at, ok = parseLinkTime(v); !ok {
				at = time.Time{}
			}
			return nil
		})
	})
	if err != nil {
		return time.Time{}, false, fmt.Errorf("cache: read gc state: %w", err)
	}
	return at, ok, nil
}

// setBlobMarksFrom writes gtfrom.
func (s *Store) setBlobMarksFrom(from time.Time) error {
	err := s.update(func(txn *badger.Txn) error { return txn.Set([]byte(keyGCBlobAt), linkTime(from)) })
	if err != nil {
		return fmt.Errorf("cache: write gc state: %w", err)
	}
	return nil
}

// dropOldBlobMarks deletes the blob marks written before gt/ (gb/, by
// digest), in transactions of gcMarkBatch. Only a full pass calls it,
// after its walk over every blob file: that walk is what those marks
// stood for.
func (s *Store) dropOldBlobMarks() error {
	var after []byte
	for !s.closing() {
		marks, err := s.marks([]byte(pGCBlobV1), after, func([]byte) (string, bool) { return "", true })
		if err != nil || len(marks) == 0 {
			return err
		}
		if err := s.settleMarks(marks, nil); err != nil {
			return err
		}
		after = marks[len(marks)-1].key
	}
	return nil
}

// marks lists up to gcMarkBatch keys under prefix after `after`, named by
// name, stopping where name says no.
func (s *Store) marks(prefix, after []byte, name func([]byte) (string, bool)) ([]gcMark, error) {
	var out []gcMark
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		if after == nil {
			it.Seek(prefix)
		} else {
			it.Seek(after)
			if it.Valid() && string(it.Item().Key()) == string(after) {
				it.Next()
			}
		}
		for ; it.Valid() && len(out) < gcMarkBatch; it.Next() {
			k := it.Item().KeyCopy(nil)
			n, ok := name(k)
			if !ok {
				break
			}
			out = append(out, gcMark{key: k, version: it.Item().Version(), name: n})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cache: read gc candidates: %w", err)
	}
	return out, nil
}

// settleMarks deletes the marks among done not written again since they
// were read, and marks the repositories in later with their times, in one
// transaction.
func (s *Store) settleMarks(done []gcMark, later map[string]time.Time) error {
	if len(done) == 0 && len(later) == 0 {
		return nil
	}
	err := s.update(func(txn *badger.Txn) error {
		for _, m := range done {
			item, err := txn.Get(m.key)
			if errors.Is(err, badger.ErrKeyNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if item.Version() != m.version {
				continue // marked again: the next pass looks again
			}
			if err := txn.Delete(m.key); err != nil {
				return err
			}
		}
		for repo, since := range later {
			if err := markRepo(txn, repo, since); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cache: settle gc candidates: %w", err)
	}
	return nil
}

// fullPassDue reports whether this pass must walk the whole store: never
// done on this store, or the last one is fullInterval old.
func (s *Store) fullPassDue(now time.Time) (bool, error) {
	at, ok, err := s.gcStateTime(keyGCFull)
	if err != nil {
		return false, err
	}
	return !ok || now.Sub(at) >= s.fullGC || at.After(now), nil
}

// fullPassDone records that a full pass that started at start finished.
func (s *Store) fullPassDone(start time.Time) error {
	err := s.update(func(txn *badger.Txn) error { return txn.Set([]byte(keyGCFull), linkTime(start)) })
	if err != nil {
		return fmt.Errorf("cache: write gc state: %w", err)
	}
	return nil
}
