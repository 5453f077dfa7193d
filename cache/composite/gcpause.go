package composite

import (
	"context"
	"errors"

	"go.uber.org/zap"
)

// What read_only means for the cluster's GC (README "Read-only mode" and
// "Running several replicas"): a replica whose handlers are all read-only
// never runs a background pass, so it never takes the GC lease and never
// becomes the leader; the replicas that take writes go on collecting, as
// their deletes and tag moves leave garbage. With every replica read-only
// (an operator's migration or backup), nothing is deleted cluster-wide,
// as on the single-node store (cache.Store.PauseGC).

// gcPause is the pause switch of the background collection, and the way
// to stop a pass that is running when the switch is thrown.
type gcPause struct {
	paused bool
	stop   context.CancelFunc // of the pass running now, if any
}

// PauseGC stops (true) or resumes (false) this replica's background
// collection. Pausing also stops a pass this replica is running: it
// releases the lease, and whatever it left (a blob marked for deletion)
// is finished by the next pass, as after a replica killed mid-pass. A
// caller may still run GC itself.
func (s *Store) PauseGC(paused bool) {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	if s.gcPause.paused == paused {
		return
	}
	s.gcPause.paused = paused
	if paused {
		if s.gcPause.stop != nil {
			s.gcPause.stop()
		}
		s.log.Info("background gc paused")
	} else {
		s.log.Info("background gc resumed")
	}
}

// GCPaused reports whether PauseGC paused the background collection.
func (s *Store) GCPaused() bool {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	return s.gcPause.paused
}

// gcRound is one pass of the background collection, unless paused; ran
// is false when it did not try (paused). A pass another replica runs is
// not an error.
func (s *Store) gcRound(ctx context.Context) (ran bool) {
	s.gcMu.Lock()
	if s.gcPause.paused {
		s.gcMu.Unlock()
		return false
	}
	pass, stop := context.WithCancel(ctx)
	defer stop()
	s.gcPause.stop = stop
	s.gcMu.Unlock()
	defer func() {
		s.gcMu.Lock()
		s.gcPause.stop = nil
		s.gcMu.Unlock()
	}()
	s.recordLeft()
	if _, err := s.GC(pass); err != nil && !errors.Is(err, ErrGCElsewhere) && pass.Err() == nil {
		s.log.Error("GC failed", zap.Error(err))
	}
	return true
}
