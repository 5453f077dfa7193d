package composite

import (
	"bytes"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
)

// stepClock makes s's wall clock read d ahead of the real one, as a
// replica's whose clock was stepped.
func stepClock(t *testing.T, s *Store, d time.Duration) {
	t.Helper()
	stepped := func() time.Time { return time.Now().Add(d) }
	if s.clock == nil {
		s.now = stepped
		return
	}
	s.clock.mu.Lock()
	s.clock.local = stepped
	s.clock.at = time.Time{} // the next call takes a reading
	s.clock.mu.Unlock()
	s.now()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.clock.mu.Lock()
		synced := !s.clock.at.IsZero()
		s.clock.mu.Unlock()
		if synced || time.Now().After(deadline) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSteppedReplicaJudgesOthersTimes: a replica whose wall clock was
// stepped ten minutes ahead leads GC with a five-minute
// upload_idle_timeout; a session another replica received a chunk for a
// moment ago is not idle, and survives the pass. Before, times were
// written and judged on each replica's own clock: the leader saw the
// chunk as ten minutes old and expired the session (the client's next
// chunk, 404 BLOB_UPLOAD_UNKNOWN). With PostgreSQL's clock (the one
// shared by every replica) it holds; a badger store is one replica's,
// with one clock.
func TestSteppedReplicaJudgesOthersTimes(t *testing.T) {
	replica := combine(fsBlobs, pgMeta)(t)
	a, b := replica(), replica()
	stepClock(t, a, 10*time.Minute)
	a.SetUploadLimits(cache.UploadLimits{IdleTimeout: 5 * time.Minute})
	u, err := b.OpenUpload(ctx(t), "team/app", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.AppendUpload(ctx(t), "team/app", u.ID, 0, bytes.NewReader(randomBytes(100))); err != nil {
		t.Fatal(err)
	}
	st, err := a.GC(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.AppendUpload(ctx(t), "team/app", u.ID, 100, bytes.NewReader(randomBytes(100))); err != nil {
		t.Errorf("the next chunk of a session that got one a moment ago, after a pass (%+v) of a leader whose clock is 10 min ahead: %v", st, err)
	}
	if skew := a.Now().Sub(b.Now()).Abs(); skew > 2*time.Second {
		t.Errorf("the stepped replica's stored times are %s away from the other's", skew)
	}
}
