package cache

// The scrub (package cache/internal/scrub): a background pass hashes every
// blob file at a bounded rate. A file whose bytes no longer hash to its
// digest is moved to quarantine/, which turns it into a blob lost from
// storage, and the store already heals those: a mirror fetches it from
// upstream again at the next pull, a pushed blob answers 404 so the
// client's next push stores it again (and a manifest pushed over it is
// refused until then). The damaged file stays in quarantine/ for whoever
// wants to look at it; nothing removes it.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache/internal/blobfile"
	"github.com/caddy-oci/caddy-oci/cache/internal/scrub"
)

// keyScrubDone holds when the last complete scrub pass ended (unix ns, 8
// bytes BE), so a restart does not start the interval over.
const keyScrubDone = "scrubdone"

// keyScrubAt holds, while a pass is unfinished, the digest of the last
// blob it checked (text), so the background pass that follows a restart
// resumes after it: a pass longer than the process's uptime (tens of
// terabytes at the default rate, a restart a day) ended each time before
// the blobs late in its order, and started over from the first.
const keyScrubAt = "scrubat"

// scrubSaveEvery: how often a pass records where it is (and when it
// stops). A variable for tests.
var scrubSaveEvery = time.Minute

// scrubFirstDelay: a store that never finished a pass starts its first
// this long after opening (or after its interval, if shorter), out of
// the way of a start's own work.
const scrubFirstDelay = 10 * time.Minute

// ScrubReport is what one scrub pass found.
type ScrubReport struct {
	// Blobs and Bytes are what the pass read and hashed.
	Blobs int
	Bytes int64
	// Damaged are the blobs whose stored bytes were not theirs.
	Damaged []Digest
	// Took is how long the pass ran.
	Took time.Duration
}

// ScrubObserver sees a scrub's progress (metrics).
type ScrubObserver interface {
	// Scrubbed counts bytes read and hashed.
	Scrubbed(bytes int64)
	// ScrubFoundDamaged counts a blob found damaged.
	ScrubFoundDamaged()
	// ScrubPassDone is a pass that read every blob, at the time it ended.
	ScrubPassDone(at time.Time)
}

// Scrub hashes every blob file at rate bytes per second (DefaultScrubRate
// if <= 0) and moves those that do not hold their digest's bytes to
// quarantine/. It stops when ctx ends or the store closes.
func (s *Store) Scrub(ctx context.Context, rate int64) (ScrubReport, error) {
	return s.scrubAfter(ctx, rate, Digest{})
}

// scrubAfter is Scrub from the blob after `after` in the walk's order
// (zero: from the first): the rest of a pass that stopped there. Where it
// is goes to keyScrubAt every scrubSaveEvery and when it stops early.
func (s *Store) scrubAfter(ctx context.Context, rate int64, after Digest) (ScrubReport, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()
	if rate <= 0 {
		rate = DefaultScrubRate
	}
	start := time.Now()
	var rep ScrubReport
	p := scrub.NewPacer(rate)
	bp := blobfile.GetBuf(1 << 20)
	defer blobfile.PutBuf(bp)
	last, saved := after, time.Now()
	err := s.eachBlobFile(after, func(d Digest) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if time.Since(saved) >= scrubSaveEvery && last != after {
			s.saveScrubAt(last)
			saved = time.Now()
		}
		n, err := s.scrubBlob(ctx, d, p, *bp)
		rep.Bytes += n
		if s.scrubObs != nil && n > 0 {
			s.scrubObs.Scrubbed(n)
		}
		switch {
		case errors.Is(err, scrub.ErrDamaged):
			rep.Damaged = append(rep.Damaged, d)
			if s.scrubObs != nil {
				s.scrubObs.ScrubFoundDamaged()
			}
		case err != nil && ctx.Err() != nil:
			return ctx.Err()
		case err != nil:
			// A file that cannot be read now (gone since it was listed,
			// an I/O error) is the next pass's.
			s.log.Warn("scrub: could not read blob", zap.String("digest", d.String()), zap.Error(err))
			last = d
			return nil
		}
		rep.Blobs++
		last = d
		return nil
	})
	rep.Took = time.Since(start)
	if err != nil {
		if last != after {
			s.saveScrubAt(last)
		}
		return rep, err
	}
	now := time.Now()
	if err := s.update(func(txn *badger.Txn) error {
		if err := txn.Delete([]byte(keyScrubAt)); err != nil {
			return err
		}
		return txn.Set([]byte(keyScrubDone), binary.BigEndian.AppendUint64(nil, uint64(now.UnixNano())))
	}); err != nil {
		s.log.Warn("scrub: record the pass", zap.Error(err))
	}
	if s.scrubObs != nil {
		s.scrubObs.ScrubPassDone(now)
	}
	return rep, nil
}

// DefaultScrubRate is the pace of a scrub pass when none is given.
const DefaultScrubRate = scrub.DefaultRate

// saveScrubAt records d as the last blob an unfinished pass checked.
func (s *Store) saveScrubAt(d Digest) {
	if err := s.update(func(txn *badger.Txn) error {
		return txn.Set([]byte(keyScrubAt), []byte(d.String()))
	}); err != nil {
		s.log.Warn("scrub: record where the pass is", zap.Error(err))
	}
}

// scrubAt is where an unfinished pass stopped (zero: none did).
func (s *Store) scrubAt() Digest {
	var d Digest
	_ = s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(keyScrubAt))
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			if at, err := ParseDigest(string(v)); err == nil {
				d = at
			}
			return nil
		})
	})
	return d
}

// eachBlobFile calls fn with the digest of every file under blobs/, in
// order (by algorithm, then hex), from the one after `after` (zero: from
// the first). Files whose names are no digest are skipped.
func (s *Store) eachBlobFile(after Digest, fn func(Digest) error) error {
	resume := after.Hex != ""
	// A folder of hex prefix pre lies wholly before `after`; a digest is
	// `after` or before it.
	folderDone := func(alg Algorithm, pre string) bool {
		return resume && (alg < after.Algorithm || alg == after.Algorithm && pre < after.Hex[:2])
	}
	done := func(d Digest) bool {
		return resume && (d.Algorithm < after.Algorithm || d.Algorithm == after.Algorithm && d.Hex <= after.Hex)
	}
	algs, err := os.ReadDir(s.blobsDir)
	if err != nil {
		return fmt.Errorf("cache: scrub: %w", err)
	}
	for _, alg := range algs {
		if !alg.IsDir() {
			continue
		}
		prefixes, err := os.ReadDir(filepath.Join(s.blobsDir, alg.Name()))
		if err != nil {
			return fmt.Errorf("cache: scrub: %w", err)
		}
		for _, pre := range prefixes {
			if !pre.IsDir() || folderDone(Algorithm(alg.Name()), pre.Name()) {
				continue
			}
			files, err := os.ReadDir(filepath.Join(s.blobsDir, alg.Name(), pre.Name()))
			if errors.Is(err, fs.ErrNotExist) {
				continue // emptied and removed meanwhile
			}
			if err != nil {
				return fmt.Errorf("cache: scrub: %w", err)
			}
			for _, f := range files {
				d, err := ParseDigest(alg.Name() + ":" + f.Name())
				if err != nil || !f.Type().IsRegular() || d.Hex[:2] != pre.Name() || done(d) {
					continue
				}
				if err := fn(d); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// scrubBlob checks blob d's file: its length against the one recorded,
// its bytes against d. A damaged file goes to quarantine; the error then
// wraps scrub.ErrDamaged.
func (s *Store) scrubBlob(ctx context.Context, d Digest, p *scrub.Pacer, buf []byte) (int64, error) {
	// Marked before the file is opened, so every write of d that could
	// keep this file instead of its own bytes comes after the mark.
	s.markScrubbing(d, 1)
	defer s.markScrubbing(d, -1)
	f, err := s.openBlobFile(d)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var size blobSize
	if err := s.db.View(func(txn *badger.Txn) error {
		size, err = readBlobSize(txn, d)
		return err
	}); err != nil {
		return 0, fmt.Errorf("cache: read blob size: %w", err)
	}
	want := int64(-1)
	if size.known {
		want = size.n
	}
	n, err := scrub.Verify(ctx, f, d, want, p, buf)
	if !errors.Is(err, scrub.ErrDamaged) {
		return n, err
	}
	moved, qerr := s.quarantine(d, f)
	switch {
	case qerr != nil:
		s.log.Error("scrub: blob damaged in storage; moving it to quarantine failed",
			zap.String("digest", d.String()), zap.String("file", f.Name()), zap.NamedError("damage", err), zap.Error(qerr))
	case moved != "":
		s.log.Error("scrub: blob damaged in storage, moved to quarantine; a mirror fetches it again, a pushed blob must be pushed again",
			zap.String("digest", d.String()), zap.String("quarantined", moved), zap.NamedError("damage", err))
	default:
		// Replaced (a push healed it) or collected since it was read.
		return n, nil
	}
	return n, err
}

// markScrubbing counts a scrub starting (+1) or done (-1) reading d.
func (s *Store) markScrubbing(d Digest, n int) {
	s.scrubMu.Lock()
	defer s.scrubMu.Unlock()
	if s.scrubbing == nil {
		s.scrubbing = map[Digest]int{}
	}
	if s.scrubbing[d] += n; s.scrubbing[d] <= 0 {
		delete(s.scrubbing, d)
	}
}

// beingScrubbed reports whether a scrub reads d's file now.
func (s *Store) beingScrubbed(d Digest) bool {
	s.scrubMu.Lock()
	defer s.scrubMu.Unlock()
	return s.scrubbing[d] > 0
}

// quarantine moves f, blob d's file as the scrub read it, to quarantine/,
// if it is still d's file: under gcMu, so no install replaces it and no
// sweep removes it meanwhile. It returns where it went ("" if it was no
// longer there).
func (s *Store) quarantine(d Digest, f *os.File) (string, error) {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	read, err := f.Stat()
	if err != nil {
		return "", err
	}
	now, err := os.Stat(s.blobPath(d))
	if errors.Is(err, fs.ErrNotExist) || (err == nil && !os.SameFile(read, now)) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	dir := filepath.Join(s.dir, "quarantine")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	dst := filepath.Join(dir, string(d.Algorithm)+"-"+d.Hex+"-"+strconv.FormatInt(time.Now().UnixNano(), 10))
	if err := os.Rename(s.blobPath(d), dst); err != nil {
		return "", err
	}
	return dst, blobfile.SyncDir(filepath.Dir(s.blobPath(d)))
}

// scrubLoop runs a pass every interval, counted from the end of the
// last complete one (kept across restarts).
func (s *Store) scrubLoop(interval time.Duration, rate int64) {
	defer s.wg.Done()
	next := time.Now().Add(min(scrubFirstDelay, interval))
	if last, ok := s.lastScrub(); ok {
		next = last.Add(interval)
	}
	for {
		t := time.NewTimer(time.Until(next))
		select {
		case <-s.stop:
			t.Stop()
			return
		case <-t.C:
		}
		rep, err := s.scrubAfter(s.ctx, rate, s.scrubAt())
		switch {
		case s.ctx.Err() != nil:
			return
		case err != nil:
			s.log.Error("scrub failed", zap.Error(err))
			next = time.Now().Add(min(interval, time.Hour))
			continue
		}
		s.log.Info("scrub pass done", zap.Int("blobs", rep.Blobs), zap.Int64("bytes", rep.Bytes),
			zap.Int("damaged", len(rep.Damaged)), zap.Duration("took", rep.Took))
		next = time.Now().Add(interval)
	}
}

// lastScrub is when the last complete pass ended.
func (s *Store) lastScrub() (time.Time, bool) {
	var at time.Time
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(keyScrubDone))
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			if len(v) == 8 {
				at = time.Unix(0, int64(binary.BigEndian.Uint64(v)))
			}
			return nil
		})
	})
	return at, err == nil && !at.IsZero()
}
