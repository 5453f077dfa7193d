package composite

// The scrub (package cache/internal/scrub) over the seams: one replica
// at a time (a lease) reads every recorded blob from the blob store at a
// bounded rate and hashes it. A damaged blob only mirrors link is
// evicted as the size limit evicts (EvictBlobs marks it, fills of it
// wait, its bytes go): the next pull fetches it from upstream again. A
// damaged blob a push stored is reported, not deleted: the bytes are the
// only copy, and a delete here could race a push of the same digest
// writing good bytes over them (nothing in an object store deletes only
// the object one read). The log line names the repositories that link
// it; deleting its object lets the next push store it again.

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/internal/blobfile"
	"github.com/caddy-oci/caddy-oci/cache/internal/scrub"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
)

// ErrScrubElsewhere: another replica runs a scrub pass; this one did
// nothing.
var ErrScrubElsewhere = errors.New("a scrub pass is running on another replica")

// scrubFirstDelay: a replica's first pass starts this long after it
// starts, out of the way of a start's own work. A variable for tests.
var scrubFirstDelay = 10 * time.Minute

// Scrub reads and hashes every recorded blob at rate bytes per second
// (cache.DefaultScrubRate if <= 0). Damaged mirrored blobs are evicted,
// damaged pushed ones reported (Damaged, the log, obs). ErrScrubElsewhere
// if another replica holds the pass.
func (s *Store) Scrub(ctx context.Context, rate int64, obs cache.ScrubObserver) (cache.ScrubReport, error) {
	var rep cache.ScrubReport
	work, end, err := s.holdPass(ctx, "scrub", ErrScrubElsewhere)
	if err != nil {
		return rep, err
	}
	defer end()
	if rate <= 0 {
		rate = cache.DefaultScrubRate
	}
	start := time.Now()
	p := scrub.NewPacer(rate)
	bp := blobfile.GetBuf(1 << 20)
	defer blobfile.PutBuf(bp)
	var after cache.Digest
	for {
		us, err := s.meta.BlobUses(work, after, gcBatch)
		if err != nil {
			return rep, mapErr(err)
		}
		for _, u := range us {
			n, err := s.scrubBlob(work, u, p, *bp)
			rep.Bytes += n
			if obs != nil && n > 0 {
				obs.Scrubbed(n)
			}
			switch {
			case errors.Is(err, scrub.ErrDamaged):
				rep.Damaged = append(rep.Damaged, u.Digest)
				if obs != nil {
					obs.ScrubFoundDamaged()
				}
			case err != nil && work.Err() != nil:
				return rep, context.Cause(work)
			case err != nil:
				s.log.Warn("scrub: could not read blob", zap.String("digest", u.Digest.String()), zap.Error(err))
				continue
			}
			rep.Blobs++
		}
		if len(us) < gcBatch {
			break
		}
		after = us[len(us)-1].Digest
	}
	rep.Took = time.Since(start)
	if obs != nil {
		obs.ScrubPassDone(time.Now())
	}
	return rep, nil
}

// scrubBlob reads blob u and checks it; a damaged one is evicted if only
// mirrors link it, and reported either way (the error wraps
// scrub.ErrDamaged).
func (s *Store) scrubBlob(ctx context.Context, u metastore.BlobUse, p *scrub.Pacer, buf []byte) (int64, error) {
	if s.Filling(ctx, u.Digest) != nil {
		return 0, nil // being written: the next pass's
	}
	b, err := s.storedBytes().Open(ctx, u.Digest)
	if err != nil {
		return 0, err
	}
	n, err := scrub.Verify(ctx, b, u.Digest, u.Size, p, buf)
	b.Close()
	if !errors.Is(err, scrub.ErrDamaged) {
		return n, err
	}
	fields := []zap.Field{zap.String("digest", u.Digest.String()), zap.Strings("repositories", u.Repos), zap.NamedError("damage", err)}
	mc := s.mc.Load()
	if mc == nil || len(u.Repos) == 0 || u.Manifest || !allMirrored(mc, u.Repos) {
		s.log.Error("scrub: blob damaged in storage; its bytes are the only copy, so it stays until its object is deleted (the next push then stores it again)", fields...)
		return n, err
	}
	marked, eerr := s.meta.EvictBlobs(ctx, []metastore.Eviction{{Digest: u.Digest, Repos: u.Repos, Used: time.Now()}})
	if eerr == nil {
		var gst cache.GCStats
		eerr = s.deleteBlobs(ctx, marked, &gst)
	}
	if eerr == nil && len(marked) > 0 {
		if _, aerr := s.meta.AddMirrorBytes(ctx, -marked[0].Size); aerr != nil {
			s.log.Warn("scrub: mirror cache size", zap.Error(aerr))
		}
		s.log.Error("scrub: mirrored blob damaged in storage, evicted; the next pull fetches it from upstream again", fields...)
		return n, err
	}
	s.log.Error("scrub: mirrored blob damaged in storage; evicting it failed (used meanwhile, or an error), the next pass tries again",
		append(fields, zap.Error(eerr))...)
	return n, err
}

// storedBytes is the blob store whose bytes the scrub checks: behind any
// read cache (blobstore.Layered). Through it, a blob read lately would be
// hashed from its local copy, so damage in the blob store went unseen (and
// damage in the copy alone looked like the stored blob's), and every other
// blob would be copied in, a pass evicting all that pulls had warmed.
func (s *Store) storedBytes() blobstore.Reader {
	b := s.blobs
	for {
		l, ok := b.(blobstore.Layered)
		if !ok {
			return b
		}
		b = l.Backend()
	}
}

// scrubDoneKey is a lease taken when a background pass completes, for
// interval, and never released: it says, to every replica and to one that
// starts later (PostgreSQL's leases table), that no pass is due before it
// expires. Without it each replica's start began a pass of the whole
// store scrubFirstDelay later, whatever the interval: each rolling deploy
// read the bucket again, and a pass longer than the time between two never
// finished. (In-process leases, with badger metadata, last as long as the
// process: a restart still begins a pass.)
const scrubDoneKey = "scrub/done"

// RunScrub scrubs every interval (the first pass scrubFirstDelay after
// it starts, or interval if shorter) until ctx ends. A pass is skipped
// while another replica runs one or one completed less than interval ago;
// the replica then looks again within the hour.
func (s *Store) RunScrub(ctx context.Context, interval time.Duration, rate int64, obs cache.ScrubObserver) {
	next := min(scrubFirstDelay, interval)
	retry := min(interval, time.Hour)
	for {
		t := time.NewTimer(next)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		due, err := s.scrubDue(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			s.log.Warn("scrub: could not learn when the last pass ended; trying later", zap.Error(err))
			next = retry
			continue
		case !due:
			next = retry
			continue
		}
		rep, err := s.Scrub(ctx, rate, obs)
		switch {
		case err == nil:
			s.log.Info("scrub pass done", zap.Int("blobs", rep.Blobs), zap.Int64("bytes", rep.Bytes),
				zap.Int("damaged", len(rep.Damaged)), zap.Duration("took", rep.Took))
			// Recorded even when the replica is stopping right now (a
			// deploy): a pass done and not recorded is a pass repeated.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			s.recordPass(rctx, interval)
			cancel()
			next = interval
		case ctx.Err() != nil:
			return
		case errors.Is(err, ErrScrubElsewhere):
			next = retry
		default:
			s.log.Error("scrub failed", zap.Error(err))
			next = retry
		}
	}
}

// scrubDue reports whether no pass completed within the interval: the
// key of the last one is free. The probe's lease is released at once (one
// left behind expires within the minute).
func (s *Store) scrubDue(ctx context.Context) (bool, error) {
	probe, free, err := s.leases.Acquire(ctx, scrubDoneKey, time.Minute)
	if err != nil || !free {
		return false, mapErr(err)
	}
	_ = probe.Release(ctx)
	return true, nil
}

// recordPass takes scrubDoneKey for interval: no pass is due before. The
// key may be held for a moment by another replica's probe (scrubDue), so
// a refusal waits for it once.
func (s *Store) recordPass(ctx context.Context, interval time.Duration) {
	for try := 0; ; try++ {
		_, ok, err := s.leases.Acquire(ctx, scrubDoneKey, interval)
		if err == nil && ok {
			return
		}
		if err != nil || try == 1 {
			s.log.Warn("scrub: could not record the pass for the other replicas; one may start another within the hour", zap.Error(err))
			return
		}
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		err = s.leases.Wait(wctx, scrubDoneKey)
		cancel()
		if err != nil {
			return // held for longer than a probe: recorded by another pass
		}
	}
}
