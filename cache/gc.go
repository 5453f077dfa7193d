package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache/internal/fdguard"
)

// GC drops blob links no manifest of their repository references that are
// older than the grace period (links.go), then removes blob files no
// repository links (as blob or manifest) that are older than the grace
// period, and expires stale upload sessions. Safe to run while the store
// serves requests.
//
// A pass examines the repositories and blobs marked as candidates since
// the last one (gccandidates.go), so its cost follows what changed. Every
// gc_full_interval, and first on a store that never had a full pass, it
// also examines every repository and walks every blob file: the safety
// net for anything a mark missed.
//
// The mark is a lookup per file in the by-digest link keys (rb/, rm/)
// rather than a set built up front, so memory does not grow with the store.
// It is made under gcMu, for a batch of files at once (collectBatch), so a
// link made during the walk always wins.
func (s *Store) GC() (GCStats, error) {
	var st GCStats
	now := s.now()
	cutoff := time.Now().Add(-s.grace) // file times are the real clock's

	n, err := s.expireUploads(now, cutoff)
	st.UploadsExpired = n
	if err != nil {
		return st, err
	}
	if err := s.cleanTmp(cutoff); err != nil {
		return st, err
	}
	full, err := s.fullPassDue(now)
	if err != nil {
		return st, err
	}
	st.Full = full
	lp := newLinkPass()
	err = s.dropMarkedLinks(now, lp)
	if err == nil && full {
		err = s.dropLinks(now, lp)
	}
	st.LinksRemoved, st.ReposExamined = lp.dropped, lp.examined
	if lp.mirrored {
		// The running total still holds what was only linked there.
		s.forcePass.Store(true)
		s.kickEvict()
	}
	if err != nil {
		return st, err
	}
	if full {
		if err := s.sweepBlobs(cutoff, &st); err != nil {
			return st, err
		}
	}
	if err := s.sweepMarkedBlobs(cutoff, &st); err != nil {
		return st, err
	}
	if full {
		if err := s.dropOldBlobMarks(); err != nil {
			return st, err
		}
	}
	if full && !s.closing() {
		if err := s.fullPassDone(now); err != nil {
			return st, err
		}
	}
	return st, nil
}

// sweepBlobs walks every blob file and collects those no repository links
// that are older than cutoff; the younger unlinked ones are marked, so an
// incremental pass takes them once they are old enough. Files are
// examined in batches of gcMarkBatch, as the marks are.
func (s *Store) sweepBlobs(cutoff time.Time, st *GCStats) error {
	var young, batch []Digest
	flush := func() error {
		fates, err := s.collectBatch(batch, cutoff, st)
		var linked []Digest
		for i, f := range fates {
			switch f {
			case blobYoung:
				young = append(young, batch[i])
			case blobLinked:
				linked = append(linked, batch[i])
			}
		}
		s.recordMissingSizes(linked)
		batch = batch[:0]
		return err
	}
	err := filepath.WalkDir(s.blobsDir, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if s.closing() {
			return filepath.SkipAll // the next round finishes
		}
		if e.IsDir() {
			return nil
		}
		d, ok := s.digestOfPath(path)
		if !ok {
			return nil // not ours; leave it
		}
		if batch = append(batch, d); len(batch) == gcMarkBatch {
			return flush()
		}
		return nil
	})
	if err == nil && len(batch) > 0 && !s.closing() {
		err = flush()
	}
	if err != nil {
		return fmt.Errorf("cache: gc: %w", err)
	}
	for len(young) > 0 {
		batch := young[:min(len(young), gcMarkBatch)]
		young = young[len(batch):]
		if err := s.markBlobs(batch...); err != nil {
			return err
		}
	}
	return nil
}

// sweepMarkedBlobs examines the blobs marked as candidates: collects
// those unlinked and older than cutoff, and consumes the marks of those
// collected, linked or gone. A young unlinked blob keeps its mark. It
// reads the marks from gtfrom on and moves gtfrom past what it consumed
// (gccandidates.go).
func (s *Store) sweepMarkedBlobs(cutoff time.Time, st *GCStats) error {
	start := time.Now()
	from, err := s.blobMarksFrom()
	if err != nil {
		return err
	}
	next := start.Add(-gcMarkSlack) // gtfrom after this pass
	// A batch's marks are settled while the next batch is examined: the
	// commit waits for badger's log sync, which has nothing to do with the
	// next batch's marks (other keys). One settle at a time.
	var settling chan error
	settled := func() error {
		if settling == nil {
			return nil
		}
		err := <-settling
		settling = nil
		return err
	}
	defer settled()
	var after []byte
	for !s.closing() {
		marks, err := s.blobMarks(from, after)
		if err != nil {
			return err
		}
		if len(marks) == 0 {
			if err := settled(); err != nil {
				return err
			}
			if next.After(from) {
				return s.setBlobMarksFrom(next)
			}
			return nil
		}
		// A blob may have several marks; examined once, in digest order
		// (collectBatch's seeks go forward).
		var done []gcMark
		byDigest := map[Digest][]gcMark{}
		for _, m := range marks {
			d, err := ParseDigest(m.name)
			if err != nil {
				done = append(done, m) // not a key we write
				continue
			}
			byDigest[d] = append(byDigest[d], m)
		}
		ds := slices.SortedFunc(maps.Keys(byDigest), func(a, b Digest) int { return strings.Compare(a.String(), b.String()) })
		fates, err := s.collectBatch(ds, cutoff, st)
		if err != nil {
			return fmt.Errorf("cache: gc: %w", err)
		}
		for i, f := range fates {
			// Young or unreadable stays a candidate; a blob linked since
			// is marked again when it loses its last link.
			if f != blobYoung && f != blobUnknown {
				done = append(done, byDigest[ds[i]]...)
				continue
			}
			for _, m := range byDigest[ds[i]] {
				if at := markTime(m.key); at.Before(next) {
					next = at
				}
			}
		}
		if err := settled(); err != nil {
			return err
		}
		ch := make(chan error, 1)
		go func() { ch <- s.settleMarks(done, nil) }()
		settling = ch
		after = marks[len(marks)-1].key
	}
	return nil
}

// blobFate is what collectBatch found of one blob.
type blobFate uint8

const (
	blobLinked  blobFate = iota // a repository links it: not garbage
	blobRemoved                 // unlinked and old: its file is gone now
	blobGone                    // unlinked and no file: nothing to do
	blobYoung                   // unlinked, younger than the cutoff
	blobUnknown                 // unlinked, its file cannot be examined
)

// gcRemovers: files collectBatch removes at once. An unlink is mostly
// the filesystem's metadata work (directory entry, inode, journal), which
// overlaps well; more than a few only queue on the same locks.
const gcRemovers = 4

// collectBatch removes the blobs of ds that, with linking held off (gcMu),
// no repository links and whose files are older than cutoff, counted in
// st, and reports what it found of each. Holding gcMu for the whole batch
// is what makes it safe: a push links, or installs a file and then links,
// under gcMu for reading, so no link can appear between the lookup and
// the unlink, and a blob pushed again (its file touched, or installed
// anew) waits until the old file is gone and then installs its own. The
// lookups share one read transaction and one iterator per kind of link,
// seeking in the order the marks and the walk list digests (sorted), so a
// batch costs two iterators, not two per blob.
func (s *Store) collectBatch(ds []Digest, cutoff time.Time, st *GCStats) ([]blobFate, error) {
	fates := make([]blobFate, len(ds))
	if len(ds) == 0 {
		return fates, nil
	}
	st.BlobsExamined += len(ds)
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	err := s.db.View(func(txn *badger.Txn) error {
		blobs := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(pBlobRev)})
		defer blobs.Close()
		mans := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(pManRev)})
		defer mans.Close()
		for i, d := range ds {
			if seekPrefix(blobs, blobRevPrefix(d)) || seekPrefix(mans, manRevPrefix(d)) {
				fates[i] = blobLinked
			} else {
				fates[i] = blobUnknown // until its file is looked at
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		sizes   = make([]int64, len(ds))
		errs    = make([]error, len(ds))
		workers = min(gcRemovers, len(ds))
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(ds) {
					return
				}
				if fates[i] == blobUnknown {
					fates[i], sizes[i], errs[i] = s.removeIfOld(ds[i], cutoff)
				}
			}
		}()
	}
	wg.Wait()
	s.dropBlobSizes(ds, fates)
	for i, f := range fates {
		if f == blobRemoved {
			st.BlobsRemoved++
			st.BytesRemoved += sizes[i]
			s.log.Debug("collected blob", zap.String("digest", ds[i].String()), zap.Int64("size", sizes[i]))
		}
	}
	return fates, errors.Join(errs...)
}

// recordMissingSizes records, for the blobs of ds that have no recorded
// length (installed before lengths were recorded), the length of their
// file now, so that a cut from now on is noticed (StatBlob). A file cut
// already is taken as it is, as it was without a record; a push or a
// fetch of the blob again replaces it and records its true length. The
// stat is taken inside the transaction, after the record was read: an
// install records its length before its file appears, so one that runs
// meanwhile makes this transaction conflict, and the retry finds its
// record. A record left for a file removed meanwhile is harmless (a
// digest names one content). Failures only cost the record.
func (s *Store) recordMissingSizes(ds []Digest) {
	var missing []Digest
	err := s.db.View(func(txn *badger.Txn) error {
		for _, d := range ds {
			size, err := readBlobSize(txn, d)
			if err != nil {
				return err
			}
			if !size.known {
				missing = append(missing, d)
			}
		}
		return nil
	})
	if err != nil || len(missing) == 0 {
		return
	}
	err = s.update(func(txn *badger.Txn) error {
		for _, d := range missing {
			size, err := readBlobSize(txn, d)
			if err != nil {
				return err
			}
			if size.known {
				continue
			}
			fi, err := os.Stat(s.blobPath(d))
			if err != nil {
				continue // gone: nothing to record
			}
			if err := setBlobSize(txn, d, fi.Size()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.log.Warn("record the lengths of blobs stored before lengths were", zap.Int("blobs", len(missing)), zap.Error(err))
	}
}

// dropBlobSizes drops the recorded lengths of the blobs of ds whose
// files collectBatch removed, while it still holds gcMu (an install of the
// same digest waits for it, then records its own). A length left behind
// costs a key, never a wrong answer (a digest names one content), so a
// failure is only logged.
func (s *Store) dropBlobSizes(ds []Digest, fates []blobFate) {
	var removed []Digest
	for i, f := range fates {
		if f == blobRemoved {
			removed = append(removed, ds[i])
		}
	}
	if len(removed) == 0 {
		return
	}
	err := s.update(func(txn *badger.Txn) error {
		for _, d := range removed {
			if err := txn.Delete(blobSizeKey(d)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.log.Warn("drop the recorded lengths of collected blobs", zap.Int("blobs", len(removed)), zap.Error(err))
	}
}

// seekPrefix reports whether it, an iterator of one kind of link, has a
// key under prefix.
func seekPrefix(it *badger.Iterator, prefix []byte) bool {
	it.Seek(prefix)
	return it.ValidForPrefix(prefix)
}

// removeIfOld removes blob d's file if it is older than cutoff; gcMu is
// held for writing and d is known to be unlinked.
func (s *Store) removeIfOld(d Digest, cutoff time.Time) (blobFate, int64, error) {
	path := s.blobPath(d)
	info, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return blobGone, 0, nil
	case err != nil:
		return blobUnknown, 0, nil
	case !info.ModTime().Before(cutoff):
		return blobYoung, 0, nil
	}
	if err := os.Remove(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return blobGone, 0, nil
		}
		return blobUnknown, 0, err
	}
	return blobRemoved, info.Size(), nil
}

// digestOfPath turns blobs/<alg>/<2 hex>/<hex> back into a Digest, or
// reports false for anything else found there.
func (s *Store) digestOfPath(path string) (Digest, bool) {
	rel, err := filepath.Rel(s.blobsDir, path)
	if err != nil {
		return Digest{}, false
	}
	parts := strings.Split(filepath.ToSlash(rel), "/")
	if len(parts) != 3 {
		return Digest{}, false
	}
	d, err := ParseDigest(parts[0] + ":" + parts[2])
	if err != nil || d.Hex[:2] != parts[1] {
		return Digest{}, false
	}
	return d, true
}

// expireUploads removes sessions past their TTL, and data files in
// uploads/ without a session that are older than cutoff (a crash between
// creating the file and recording the session).
func (s *Store) expireUploads(now, cutoff time.Time) (int, error) {
	known := map[string]bool{}
	var stale []string
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(pUpload), PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			id := string(it.Item().Key()[len(pUpload):])
			known[id] = true
			var rec uploadRecord
			err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &rec) })
			if err != nil || s.expired(rec, now) {
				stale = append(stale, id)
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("cache: scan uploads: %w", err)
	}
	expired := 0
	for _, id := range stale {
		if !validID(id) {
			// Not a key NewUpload writes; drop the record only.
			err := s.update(func(txn *badger.Txn) error { return txn.Delete(uploadKey(id)) })
			if err != nil {
				return expired, fmt.Errorf("cache: remove upload: %w", err)
			}
			continue
		}
		removed, err := s.expireSession(id, now)
		if err != nil {
			return expired, err
		}
		if removed {
			expired++
		}
	}

	entries, err := os.ReadDir(s.uploadsDir)
	if err != nil {
		return expired, fmt.Errorf("cache: list uploads: %w", err)
	}
	for _, e := range entries {
		if known[e.Name()] {
			continue
		}
		if info, err := e.Info(); err == nil && info.ModTime().Before(cutoff) {
			if err := os.RemoveAll(filepath.Join(s.uploadsDir, e.Name())); err != nil {
				s.log.Warn("remove orphan upload data", zap.String("name", e.Name()), zap.Error(err))
			}
		}
	}
	return expired, nil
}

// expireSession removes session id if it is past its time (or its record
// is unreadable) and nobody is working on it right now.
func (s *Store) expireSession(id string, now time.Time) (bool, error) {
	unlock, _, err := s.lockSession(context.Background(), id, lockTry)
	if err != nil {
		return false, nil // in use right now, so not stale
	}
	defer unlock()
	rec, err := s.readUpload(id)
	if errors.Is(err, ErrUploadUnknown) {
		s.forgetUpload(id) // gone meanwhile
		return false, nil
	}
	if err == nil && !s.expired(rec, now) {
		return false, nil
	}
	if err := s.removeUpload(id); err != nil {
		return false, err
	}
	s.log.Debug("expired upload", zap.String("repo", rec.Repo), zap.String("upload", id))
	return true, nil
}

// cleanTmp removes temp files of writes that died (older than cutoff; a
// live write keeps touching its file).
func (s *Store) cleanTmp(cutoff time.Time) error {
	entries, err := os.ReadDir(s.tmpDir)
	if err != nil {
		return fmt.Errorf("cache: list tmp: %w", err)
	}
	for _, e := range entries {
		if info, err := e.Info(); err == nil && info.ModTime().Before(cutoff) {
			if err := os.RemoveAll(filepath.Join(s.tmpDir, e.Name())); err != nil {
				s.log.Warn("remove temp file", zap.String("name", e.Name()), zap.Error(err))
			}
		}
	}
	return nil
}

// gcLoop runs GC and badger's value-log GC every interval until Close.
func (s *Store) gcLoop(interval time.Duration) {
	defer s.wg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		s.gcRound()
	}
}

// PauseGC stops (true) or resumes (false) the background collection: while
// paused its rounds are skipped, so nothing the API served is removed
// (unlinked blobs, expired upload sessions stay). Mirror eviction is not
// paused: it bounds a cache that pulls keep filling. A caller may still run
// GC itself.
func (s *Store) PauseGC(paused bool) {
	if s.gcPaused.Swap(paused) == paused {
		return
	}
	if paused {
		s.log.Info("background gc paused")
	} else {
		s.log.Info("background gc resumed")
	}
}

// GCPaused reports whether PauseGC paused the background collection.
func (s *Store) GCPaused() bool { return s.gcPaused.Load() }

// gcRound is one round of the background collection: GC, then badger's
// value-log GC; nothing while paused.
func (s *Store) gcRound() (ran bool) {
	if s.gcPaused.Load() {
		return false
	}
	st, err := s.GC()
	if err != nil {
		s.log.Error("gc failed", zap.Error(err))
	} else if st.removedAny() {
		s.log.Info("gc",
			zap.Bool("full", st.Full),
			zap.Int("repos_examined", st.ReposExamined),
			zap.Int("blobs_examined", st.BlobsExamined),
			zap.Int("links_removed", st.LinksRemoved),
			zap.Int("blobs_removed", st.BlobsRemoved),
			zap.Int64("bytes_removed", st.BytesRemoved),
			zap.Int("uploads_expired", st.UploadsExpired))
	}
	// Rewrites at most a few value-log files per round; stops at the
	// first "nothing to do". Its rewrites are writes (fdguard).
	for range 4 {
		if fdguard.Admit() != nil || s.db.RunValueLogGC(0.5) != nil {
			break
		}
	}
	return true
}
