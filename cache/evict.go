package cache

// Mirrored content under a size limit: the store keeps a running total of
// the bytes only mirrors link, and when it passes the limit removes the
// least recently used of them until 90% of the limit is left.
//
// Last use is the blob file's modification time. Reads record it in
// memory (Hold, Touch) and a flush writes it to the files once a minute,
// so a hot blob costs no disk write per GET and no metadata at all. The
// total is counted from the link keys by every eviction pass (and when
// the limit is set), and kept up to date in between by the commits that
// bring new mirrored files in, so checking the limit costs nothing.
//
// Eviction removes the links first and the file after, under gcMu's write
// lock: a crash in between leaves an unlinked file for GC, never a link to
// a missing file. (The mirror treats a link without its file as a miss
// anyway and fetches again.)

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"go.uber.org/zap"
)

const (
	// useFlushInterval: how often recorded uses reach the files' times,
	// and how often the limit is checked without a commit asking.
	useFlushInterval = time.Minute
	// recountInterval: with a limit, the total is counted again at least
	// this often, to pick up what commits do not tell (content a local
	// repository stopped or started linking).
	recountInterval = 10 * time.Minute
	// evictBackoff: after a pass that could not get under the limit
	// (everything left is held or pushed), commits do not ask for
	// another one sooner than this.
	evictBackoff = 10 * time.Second
)

// SetMirrorCache sets (or replaces: a config reload) the limit of mirrored
// content and which repositories are mirrors'. The total is counted in
// the background right away; EvictMirrored does it synchronously.
func (s *Store) SetMirrorCache(c MirrorCache) {
	if c.Mirrored == nil {
		s.mc.Store(nil)
		s.mirrorSize.Store(0) // nothing is mirrored any more
		return
	}
	s.mc.Store(&c)
	s.forcePass.Store(true)
	s.kickEvict()
}

// MirrorCacheSize is the running total of mirrored bytes; zero until the
// first count after SetMirrorCache.
func (s *Store) MirrorCacheSize() int64 { return s.mirrorSize.Load() }

// Hold marks blob d used now and keeps it from eviction until release is
// called (once). If d is being evicted at this moment Hold waits for that
// to finish, so after Hold the blob is either whole and linked, or gone
// and a miss.
func (s *Store) Hold(d Digest) (release func()) {
	s.hold(d)
	return func() { s.unhold(d) }
}

// Touch marks blob d used now, without holding it (manifests, read whole
// at once).
func (s *Store) Touch(d Digest) {
	t := s.now().UnixNano()
	s.useMu.Lock()
	s.touchLocked(d, t)
	s.useMu.Unlock()
}

func (s *Store) hold(d Digest) {
	t := s.now().UnixNano()
	s.useMu.Lock()
	for s.evicting[d] {
		s.useCond.Wait()
	}
	s.pins[d]++
	s.touchLocked(d, t)
	s.useMu.Unlock()
}

func (s *Store) unhold(d Digest) {
	s.useMu.Lock()
	if s.pins[d]--; s.pins[d] <= 0 {
		delete(s.pins, d)
	}
	s.useMu.Unlock()
}

func (s *Store) touchLocked(d Digest, t int64) {
	if t > s.used[d] {
		s.used[d] = t
	}
}

// flushUse writes the uses recorded since the last flush to the files'
// modification times (never moving one back). evictMu is held, so a pass
// sees either the map or the file, never neither.
func (s *Store) flushUse() {
	s.useMu.Lock()
	used := s.used
	if len(used) == 0 {
		s.useMu.Unlock()
		return
	}
	s.used = make(map[Digest]int64, len(used))
	s.useMu.Unlock()
	for d, ns := range used {
		path := s.blobPath(d)
		t := time.Unix(0, ns)
		if fi, err := os.Stat(path); err != nil || !fi.ModTime().Before(t) {
			continue
		}
		if err := os.Chtimes(path, t, t); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("record blob use", zap.String("digest", d.String()), zap.Error(err))
		}
	}
}

// mirrorCommitted accounts for a file of n bytes that a commit just
// created and linked into repo. The caller holds mirrorMu for reading
// across the link and this call, so a recount never misses or doubles it.
func (s *Store) mirrorCommitted(repo string, d Digest, n int64) {
	mc := s.mc.Load()
	if mc == nil || !mc.Mirrored(repo) {
		return
	}
	s.Touch(d)
	size := s.mirrorSize.Add(n)
	if mc.Observer != nil {
		mc.Observer.MirrorCacheSize(size)
	}
	if mc.MaxBytes > 0 && size > mc.MaxBytes {
		s.kickEvict()
	}
}

func (s *Store) kickEvict() {
	if s.manualEvict.Load() {
		return
	}
	select {
	case s.evictKick <- struct{}{}:
	default:
	}
}

// mirrorLoop flushes uses and runs eviction passes when a commit passes
// the limit, when the limit is set, and periodically, until Close.
func (s *Store) mirrorLoop() {
	defer s.wg.Done()
	t := time.NewTicker(useFlushInterval)
	defer t.Stop()
	var last time.Time // when the last pass ended
	short := false     // it ended over the limit
	for {
		select {
		case <-s.stop:
			return
		case <-s.evictKick:
			if !s.forcePass.Swap(false) && short && time.Since(last) < evictBackoff {
				continue // the ticker comes back to it
			}
		case <-t.C:
			mc := s.mc.Load()
			if mc == nil || mc.MaxBytes <= 0 ||
				(s.mirrorSize.Load() <= mc.MaxBytes && time.Since(last) < recountInterval) {
				s.evictMu.Lock()
				s.flushUse()
				s.evictMu.Unlock()
				continue
			}
		}
		st, err := s.EvictMirrored()
		last = time.Now()
		if err != nil {
			s.log.Error("mirror cache eviction failed", zap.Error(err))
			continue
		}
		mc := s.mc.Load()
		short = mc != nil && mc.MaxBytes > 0 && st.Size > mc.MaxBytes
		if st.ItemsEvicted > 0 {
			s.log.Info("evicted mirrored content",
				zap.Int("items", st.ItemsEvicted), zap.Int64("bytes", st.BytesEvicted),
				zap.Int64("size", st.Size), zap.Int64("limit", mc.MaxBytes))
		}
		if short {
			s.log.Warn("mirror cache stays over its limit: what is left is in use or being filled",
				zap.Int64("size", st.Size), zap.Int64("limit", mc.MaxBytes))
		}
	}
}

// evictCandidate is mirrored content found by a count.
type evictCandidate struct {
	d    Digest
	size int64
	used int64 // file modification time, unix ns
}

// EvictMirrored counts the mirrored content and, if it is over the limit,
// evicts the least recently used until 90% of the limit is left. Safe to
// run while the store serves requests; passes do not overlap.
func (s *Store) EvictMirrored() (EvictStats, error) {
	s.evictMu.Lock()
	defer s.evictMu.Unlock()
	mc := s.mc.Load()
	if mc == nil {
		return EvictStats{}, nil
	}
	s.flushUse()
	cands := s.countMirrored(mc)
	var st EvictStats
	if mc.MaxBytes > 0 && s.mirrorSize.Load() > mc.MaxBytes {
		low := mc.MaxBytes - mc.MaxBytes/10
		slices.SortFunc(cands, func(a, b evictCandidate) int {
			return cmp.Or(cmp.Compare(a.used, b.used), cmp.Compare(a.d.Hex, b.d.Hex))
		})
		for _, c := range cands {
			if s.mirrorSize.Load() <= low || s.closing() {
				break
			}
			ok, err := s.evict(mc, c)
			if err != nil {
				return st, err
			}
			if ok {
				s.mirrorSize.Add(-c.size)
				st.ItemsEvicted++
				st.BytesEvicted += c.size
				s.log.Debug("evicted", zap.String("digest", c.d.String()), zap.Int64("size", c.size))
			}
		}
	}
	st.Size = s.mirrorSize.Load()
	if mc.Observer != nil {
		mc.Observer.MirrorCacheSize(st.Size)
		if st.ItemsEvicted > 0 {
			mc.Observer.MirrorEvicted(st.ItemsEvicted, st.BytesEvicted)
		}
	}
	return st, nil
}

func (s *Store) closing() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

// countMirrored lists the content only mirrors link, with size and last
// use, and sets the running total from it. The snapshot is taken with
// commits held off for a moment, and what commits add during the count is
// kept on top of it.
func (s *Store) countMirrored(mc *MirrorCache) []evictCandidate {
	s.mirrorMu.Lock()
	txn := s.db.NewTransaction(false)
	base := s.mirrorSize.Load()
	s.mirrorMu.Unlock()
	defer txn.Discard()

	var cands []evictCandidate
	var total int64
	for _, rev := range []string{pBlobRev, pManRev} {
		eachLinked(txn, rev, func(d Digest, repos []string) {
			if !allMirrored(mc, repos) {
				return
			}
			if rev == pBlobRev {
				if others := linksOf(txn, manRevPrefix(d)); !allMirrored(mc, others) {
					return
				}
			} else if hasPrefix(txn, blobRevPrefix(d)) {
				return // seen with the blob links
			}
			fi, err := os.Stat(s.blobPath(d))
			if err != nil {
				return // a link without its file is a miss already
			}
			cands = append(cands, evictCandidate{d: d, size: fi.Size(), used: fi.ModTime().UnixNano()})
			total += fi.Size()
		})
	}
	s.mirrorMu.Lock()
	s.mirrorSize.Store(total + s.mirrorSize.Load() - base)
	s.mirrorMu.Unlock()
	return cands
}

// eachLinked calls fn once per digest under a by-digest prefix (rb/ or
// rm/) with the repositories that link it.
func eachLinked(txn *badger.Txn, rev string, fn func(d Digest, repos []string)) {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(rev)})
	defer it.Close()
	var cur string
	var repos []string
	flush := func() {
		if cur == "" {
			return
		}
		if d, err := ParseDigest(cur); err == nil {
			fn(d, repos)
		}
	}
	for it.Rewind(); it.Valid(); it.Next() {
		k := it.Item().Key()[len(rev):]
		i := bytes.IndexByte(k, 0)
		if i < 0 {
			continue
		}
		if string(k[:i]) != cur {
			flush()
			cur, repos = string(k[:i]), repos[:0]
		}
		repos = append(repos, string(k[i+1:]))
	}
	flush()
}

// linksOf lists the repositories under a by-digest prefix.
func linksOf(txn *badger.Txn, prefix []byte) []string {
	out, _, _ := page(context.Background(), txn, prefix, "", -1)
	return out
}

func allMirrored(mc *MirrorCache, repos []string) bool {
	for _, r := range repos {
		if !mc.Mirrored(r) {
			return false
		}
	}
	return true
}

// evict removes candidate c if, with linking held off, it is still
// mirrored only, not held, not being filled and not used since it was
// counted: its links (and, for a manifest, its tags and referrer entries)
// first, then its file.
func (s *Store) evict(mc *MirrorCache, c evictCandidate) (bool, error) {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()

	s.useMu.Lock()
	if s.pins[c.d] > 0 || s.used[c.d] > c.used {
		s.useMu.Unlock()
		return false, nil
	}
	s.evicting[c.d] = true
	s.useMu.Unlock()
	defer func() {
		s.useMu.Lock()
		delete(s.evicting, c.d)
		s.useCond.Broadcast()
		s.useMu.Unlock()
	}()
	if s.filling(c.d) != nil {
		return false, nil
	}
	path := s.blobPath(c.d)
	fi, err := os.Stat(path)
	if err != nil || fi.ModTime().UnixNano() > c.used {
		return false, nil // gone, or installed or pushed again since
	}
	removed := false
	since := s.now().Add(-s.grace) // see deleteManifestTxn
	if err := s.thinMirroredLinks(mc, c.d, since); err != nil {
		return false, fmt.Errorf("cache: evict %s: %w", c.d, err)
	}
	err = s.update(func(txn *badger.Txn) error {
		var err error
		removed, err = unlinkMirrored(txn, mc, c.d, since)
		if err != nil || !removed {
			return err
		}
		return txn.Delete(blobSizeKey(c.d))
	})
	if err != nil {
		return false, fmt.Errorf("cache: evict %s: %w", c.d, err)
	}
	if !removed {
		return false, nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		// Unlinked already: GC takes the file after the grace period.
		s.log.Warn("remove evicted blob", zap.String("digest", c.d.String()), zap.Error(err))
	}
	return true, nil
}

// evictBatch is how many links of one digest a transaction of eviction
// removes. badger refuses a transaction past a size its memtable sets (a
// few thousand writes here), and a layer may be linked by thousands of
// mirrored repositories.
const evictBatch = 300

// thinMirroredLinks removes the links to d evictBatch at a time while
// there are more than unlinkMirrored could remove in one transaction and
// all are mirrors' (else unlinkMirrored keeps d). gcMu is held, so no link
// is made meanwhile; should a pass stop midway, a mirrored repository
// whose link went asks upstream again on its next pull, as after any
// eviction.
func (s *Store) thinMirroredLinks(mc *MirrorCache, d Digest, since time.Time) error {
	for {
		more := false
		err := s.update(func(txn *badger.Txn) error {
			blobRepos := linksOf(txn, blobRevPrefix(d))
			manRepos := linksOf(txn, manRevPrefix(d))
			if len(blobRepos)+len(manRepos) <= evictBatch || !allMirrored(mc, blobRepos) || !allMirrored(mc, manRepos) {
				return nil
			}
			more = true
			n := 0
			for _, repo := range blobRepos {
				if n == evictBatch {
					return nil
				}
				if err := deleteBlobLink(txn, repo, d); err != nil {
					return err
				}
				n++
			}
			for _, repo := range manRepos {
				if n == evictBatch {
					return nil
				}
				if err := deleteManifestTxn(txn, repo, d, since); err != nil && !errors.Is(err, ErrManifestUnknown) {
					return err
				}
				if err := txn.Delete(manRevKey(d, repo)); err != nil {
					return err
				}
				n++
			}
			return nil
		})
		if err != nil || !more {
			return err
		}
	}
}

// unlinkMirrored removes every link to d, as blob and as manifest, in txn
// — unless a repository that is not a mirror's links it (false). since is
// deleteManifestTxn's.
func unlinkMirrored(txn *badger.Txn, mc *MirrorCache, d Digest, since time.Time) (bool, error) {
	blobRepos := linksOf(txn, blobRevPrefix(d))
	manRepos := linksOf(txn, manRevPrefix(d))
	if len(blobRepos)+len(manRepos) == 0 || !allMirrored(mc, blobRepos) || !allMirrored(mc, manRepos) {
		return false, nil
	}
	for _, repo := range blobRepos {
		if err := deleteBlobLink(txn, repo, d); err != nil {
			return false, err
		}
	}
	for _, repo := range manRepos {
		if err := deleteManifestTxn(txn, repo, d, since); err != nil && !errors.Is(err, ErrManifestUnknown) {
			return false, err
		}
		// A by-digest key without its link (never written so, but
		// harmless to clear).
		if err := txn.Delete(manRevKey(d, repo)); err != nil {
			return false, err
		}
	}
	return true, nil
}
