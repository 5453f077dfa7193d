package composite

// Mirrored content under a size limit, counted for the whole cluster:
// the same rule as the single-node store (cache/evict.go) — above the
// limit the least recently used content that only mirrors link goes
// until 90% of it is left — with the figures in the metadata every
// replica shares instead of one process's memory.
//
//   - Last use: a read (Hold, Touch) is noted in memory; each replica
//     writes what it noted once a minute in one statement
//     (metastore.RecordUses), so a hot blob costs no write per GET. What
//     is held at a flush counts as used then, so a long read elsewhere
//     stays recent.
//   - Size: each fill's commit adds its bytes to a figure in the
//     metadata (AddMirrorBytes) and kicks a pass when it passes the
//     limit; every pass counts the content again from the metadata and
//     corrects the figure. Every replica reports that figure.
//   - Eviction: one pass at a time in the cluster (a lease). The
//     metadata store unlinks and marks a batch in one transaction, and
//     checks again that each blob is still linked by mirrors only and
//     unused since it was listed, so a pushed repository's link or a
//     read on any replica meanwhile keeps it. Bytes go after, then the
//     records, as GC's sweep does (a pass that dies leaves marks that
//     GC finishes).
//   - Never evicted: what a pushed repository links, what is not linked
//     (a fill between its record and its link; GC's business), what this
//     replica holds or fills, and what any replica used in the last
//     recentUse (its note may not have reached the metadata yet).
//
// Manifests are metadata here (their bytes live in the database), so
// the limit counts blobs: the bytes in the blob store.

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
)

const (
	// useFlushInterval: how often a replica writes the uses it noted,
	// and checks the shared figure against the limit.
	useFlushInterval = time.Minute
	// recentUse: content used this recently is not evicted; a use on
	// another replica reaches the metadata within a flush.
	recentUse = 2 * useFlushInterval
	// recountInterval: without a kick, the content is counted again at
	// least this often (what fills do not tell: pushed repositories
	// that stopped or started linking mirrored blobs).
	recountInterval = 10 * time.Minute
	// evictBackoff: after a pass that stayed over the limit, kicks wait
	// this long.
	evictBackoff = 10 * time.Second
	// evictBatch is how many blobs one transaction evicts.
	evictBatch = 64
)

// ErrEvictElsewhere: another replica runs an eviction pass; this one did
// nothing.
var ErrEvictElsewhere = errors.New("mirror cache eviction is running on another replica")

// mirrorWork is the mirror cache state of one replica.
type mirrorWork struct {
	mu   sync.Mutex
	used map[cache.Digest]time.Time // noted since the last flush
	pins map[cache.Digest]int       // held by a read here

	kick   chan struct{}
	start  sync.Once
	cancel context.CancelFunc
	wg     sync.WaitGroup
	manual bool // tests: no background loop
}

// SetMirrorCache sets (or replaces: a config reload) the limit of
// mirrored content and which repositories are mirrors'. The first call
// starts this replica's loop: flushing uses, following the shared
// figure and running passes when over the limit.
func (s *Store) SetMirrorCache(c cache.MirrorCache) {
	if c.Mirrored == nil {
		s.mc.Store(nil)
		return
	}
	s.mc.Store(&c)
	if s.mirror.manual {
		return
	}
	s.mirror.start.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		s.mirror.mu.Lock()
		s.mirror.cancel = cancel
		s.mirror.mu.Unlock()
		s.mirror.wg.Add(1)
		go func() {
			defer s.mirror.wg.Done()
			s.mirrorLoop(ctx)
		}()
	})
	s.kickEvict()
}

// Hold notes blob d used now and keeps it from eviction on this replica
// until release is called (once); at release it is noted used again.
func (s *Store) Hold(d cache.Digest) (release func()) {
	if s.mc.Load() == nil {
		return func() {}
	}
	w := &s.mirror
	w.mu.Lock()
	w.pins[d]++
	w.noteLocked(d, s.now())
	w.mu.Unlock()
	return func() {
		w.mu.Lock()
		if w.pins[d]--; w.pins[d] <= 0 {
			delete(w.pins, d)
		}
		w.noteLocked(d, s.now())
		w.mu.Unlock()
	}
}

// Touch notes d used now, without holding it.
func (s *Store) Touch(d cache.Digest) {
	if s.mc.Load() == nil {
		return
	}
	s.mirror.mu.Lock()
	s.mirror.noteLocked(d, s.now())
	s.mirror.mu.Unlock()
}

func (w *mirrorWork) noteLocked(d cache.Digest, t time.Time) {
	if t.After(w.used[d]) {
		w.used[d] = t
	}
}

func (w *mirrorWork) pinned(d cache.Digest) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pins[d] > 0
}

// flushUses writes the uses noted since the last flush, and what is held
// now as used now, in one call. On failure they are kept for the next.
func (s *Store) flushUses(ctx context.Context) error {
	w := &s.mirror
	w.mu.Lock()
	used := w.used
	w.used = map[cache.Digest]time.Time{}
	now := s.now()
	for d := range w.pins {
		used[d] = now
	}
	w.mu.Unlock()
	if len(used) == 0 {
		return nil
	}
	if err := s.meta.RecordUses(ctx, used); err != nil {
		w.mu.Lock()
		for d, t := range used {
			w.noteLocked(d, t)
		}
		w.mu.Unlock()
		return mapErr(err)
	}
	return nil
}

// mirrorCommitted adds a fill of n bytes just committed and linked into
// repo to the shared figure, and kicks a pass if that passes the limit.
func (s *Store) mirrorCommitted(ctx context.Context, repo string, n int64) {
	mc := s.mc.Load()
	if mc == nil || !mc.Mirrored(repo) {
		return
	}
	total, err := s.meta.AddMirrorBytes(ctx, n)
	if err != nil {
		// The next count corrects the figure.
		s.log.Debug("add to the mirror cache size", zap.Error(err))
		return
	}
	if mc.Observer != nil {
		mc.Observer.MirrorCacheSize(total)
	}
	if mc.MaxBytes > 0 && total > mc.MaxBytes {
		s.kickEvict()
	}
}

func (s *Store) kickEvict() {
	select {
	case s.mirror.kick <- struct{}{}:
	default:
	}
}

// mirrorLoop flushes uses every useFlushInterval, reports the shared
// figure, and runs a pass when it is over the limit, when a fill kicks,
// and every recountInterval, until ctx ends.
func (s *Store) mirrorLoop(ctx context.Context) {
	t := time.NewTicker(useFlushInterval)
	defer t.Stop()
	var last time.Time // when this replica's last pass ended
	short := false     // it ended over the limit
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.mirror.kick:
			if short && time.Since(last) < evictBackoff {
				continue // the ticker comes back to it
			}
		case <-t.C:
			if err := s.flushUses(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("record mirror cache uses; kept for the next flush", zap.Error(err))
			}
			mc := s.mc.Load()
			if mc == nil {
				continue
			}
			size, err := s.meta.AddMirrorBytes(ctx, 0)
			if err != nil {
				continue
			}
			if mc.Observer != nil {
				mc.Observer.MirrorCacheSize(size)
			}
			if (mc.MaxBytes <= 0 || size <= mc.MaxBytes) && time.Since(last) < recountInterval {
				continue
			}
		}
		st, err := s.EvictMirrored(ctx)
		last = time.Now()
		switch {
		case errors.Is(err, ErrEvictElsewhere):
			short = false
			continue
		case err != nil:
			if ctx.Err() == nil {
				s.log.Error("mirror cache eviction failed", zap.Error(err))
			}
			continue
		}
		mc := s.mc.Load()
		if mc == nil {
			continue
		}
		short = mc.MaxBytes > 0 && st.Size > mc.MaxBytes
		if st.ItemsEvicted > 0 {
			s.log.Info("evicted mirrored content",
				zap.Int("items", st.ItemsEvicted), zap.Int64("bytes", st.BytesEvicted),
				zap.Int64("size", st.Size), zap.Int64("limit", mc.MaxBytes))
		}
		if short {
			s.log.Warn("mirror cache stays over its limit: what is left is in use, just used, or linked by pushed repositories",
				zap.Int64("size", st.Size), zap.Int64("limit", mc.MaxBytes))
		}
	}
}

// EvictMirrored counts the mirrored content of the cluster from the
// metadata and, if it is over the limit, evicts the least recently used
// until 90% of the limit is left. One replica at a time runs it (a
// lease); the others get ErrEvictElsewhere.
func (s *Store) EvictMirrored(ctx context.Context) (cache.EvictStats, error) {
	var st cache.EvictStats
	mc := s.mc.Load()
	if mc == nil {
		return st, nil
	}
	work, end, err := s.holdPass(ctx, "mirror-evict", ErrEvictElsewhere)
	if err != nil {
		return st, err
	}
	defer end()

	if err := s.flushUses(work); err != nil {
		return st, err
	}
	// The figure as the count starts: fills that commit meanwhile add to
	// it, and the count's correction keeps what they added.
	base, err := s.meta.AddMirrorBytes(work, 0)
	if err != nil {
		return st, mapErr(err)
	}
	now := s.now()
	cands, total, err := s.countMirrored(work, mc)
	if err != nil {
		return st, err
	}
	if mc.MaxBytes > 0 && total > mc.MaxBytes {
		low := mc.MaxBytes - mc.MaxBytes/10
		slices.SortFunc(cands, func(a, b metastore.BlobUse) int {
			return cmp.Or(a.Used.Compare(b.Used), cmp.Compare(a.Digest.String(), b.Digest.String()))
		})
		recent := now.Add(-recentUse)
		for i := 0; i < len(cands) && total > low; {
			var batch []metastore.Eviction
			var planned int64
			for ; i < len(cands) && len(batch) < evictBatch && total-planned > low; i++ {
				c := cands[i]
				if c.Used.After(recent) || s.mirror.pinned(c.Digest) || s.Filling(work, c.Digest) != nil {
					continue
				}
				batch = append(batch, metastore.Eviction{Digest: c.Digest, Repos: c.Repos, Used: c.Used})
				planned += c.Size
			}
			if len(batch) == 0 {
				break
			}
			marked, err := s.meta.EvictBlobs(work, batch)
			if err != nil {
				return st, mapErr(err)
			}
			for _, r := range marked {
				total -= r.Size
				st.ItemsEvicted++
				st.BytesEvicted += r.Size
				s.log.Debug("evicted", zap.String("digest", r.Digest.String()), zap.Int64("size", r.Size))
			}
			// Unlinked and marked: no longer mirrored content, whether
			// or not the bytes go now (GC retries what fails).
			var gst cache.GCStats
			if err := s.deleteBlobs(work, marked, &gst); err != nil {
				return st, err
			}
		}
	}
	st.Size, err = s.meta.AddMirrorBytes(work, total-base)
	if err != nil {
		return st, mapErr(err)
	}
	if mc.Observer != nil {
		mc.Observer.MirrorCacheSize(st.Size)
		if st.ItemsEvicted > 0 {
			mc.Observer.MirrorEvicted(st.ItemsEvicted, st.BytesEvicted)
		}
	}
	return st, nil
}

// countMirrored lists the blobs only mirrors link, and their bytes.
func (s *Store) countMirrored(ctx context.Context, mc *cache.MirrorCache) ([]metastore.BlobUse, int64, error) {
	var cands []metastore.BlobUse
	var total int64
	var after cache.Digest
	for {
		us, err := s.meta.BlobUses(ctx, after, gcBatch)
		if err != nil {
			return nil, 0, mapErr(err)
		}
		for _, u := range us {
			if len(u.Repos) == 0 || u.Manifest || !allMirrored(mc, u.Repos) {
				continue
			}
			total += u.Size
			if mc.MaxBytes > 0 {
				cands = append(cands, u)
			}
		}
		if len(us) < gcBatch {
			return cands, total, nil
		}
		after = us[len(us)-1].Digest
	}
}

func allMirrored(mc *cache.MirrorCache, repos []string) bool {
	for _, r := range repos {
		if !mc.Mirrored(r) {
			return false
		}
	}
	return true
}

// MirrorCacheSize is the shared figure of mirrored bytes.
func (s *Store) MirrorCacheSize(ctx context.Context) (int64, error) {
	n, err := s.meta.AddMirrorBytes(ctx, 0)
	return n, mapErr(err)
}

// stopMirror stops the loop, flushing what it noted.
func (s *Store) stopMirror() {
	s.mirror.mu.Lock()
	cancel := s.mirror.cancel
	s.mirror.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	s.mirror.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.flushUses(ctx)
}
