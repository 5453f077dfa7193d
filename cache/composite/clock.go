package composite

import (
	"context"
	"sync"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/metastore"
)

// The times this store writes are read by every replica: a session's
// last chunk (idle expiry), a blob's or a link's last use (the grace
// period), a mirrored tag's last check upstream (tag_ttl). Each replica
// writing and judging them on its own clock made one whose clock was
// stepped or drifted away from the others misjudge the others' writes
// and theirs its own: a GC leader ten minutes ahead expired, under a
// five-minute upload_idle_timeout, the sessions other replicas were
// receiving chunks for. Leases, session expiry and the login ledger
// already use the database's clock; so does this store for the times it
// writes, when its metadata store has one (metastore.Clock): the
// database's time at a recent reading plus the time elapsed on this
// process's monotonic clock since, which no step of the wall clock
// moves. Without a reading yet (the database down since the start) it is
// the local clock.

// clockSyncEvery is how often the reading is taken again: it bounds
// the drift between the two clocks, not their steps.
const clockSyncEvery = time.Minute

// clockSyncTimeout bounds one reading; one that took longer than
// clockSyncSlow says little of when the database read its clock and is
// not used.
const (
	clockSyncTimeout = 5 * time.Second
	clockSyncSlow    = time.Second
)

type dbClock struct {
	db    metastore.Clock
	local func() time.Time // time.Now; tests set a stepped one
	// background runs a reading off the caller's path; false once the
	// store is closed.
	background func(func(ctx context.Context)) bool

	mu      sync.Mutex
	read    time.Time // the database's time at the last reading
	at      time.Time // local time (with its monotonic reading) then
	syncing bool
}

func (c *dbClock) now() time.Time {
	l := c.local()
	c.mu.Lock()
	due := !c.syncing && (c.at.IsZero() || l.Sub(c.at) >= clockSyncEvery || l.Before(c.at))
	if due {
		c.syncing = true
	}
	var t time.Time
	if c.at.IsZero() {
		t = l
	} else {
		t = c.read.Add(l.Sub(c.at))
	}
	c.mu.Unlock()
	if due && !c.background(c.sync) {
		c.mu.Lock()
		c.syncing = false
		c.mu.Unlock()
	}
	return t
}

// sync takes a reading of the database's clock.
func (c *dbClock) sync(ctx context.Context) {
	defer func() {
		c.mu.Lock()
		c.syncing = false
		c.mu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(ctx, clockSyncTimeout)
	defer cancel()
	before := c.local()
	read, err := c.db.Now(ctx)
	after := c.local()
	if err != nil || after.Sub(before) > clockSyncSlow {
		return // the next call tries again
	}
	c.mu.Lock()
	c.read, c.at = read, before.Add(after.Sub(before)/2)
	c.mu.Unlock()
}

// background runs fn under the store's life (the fills' context and
// wait group), or reports false if the store is closed.
func (s *Store) background(fn func(ctx context.Context)) bool {
	s.fills.mu.Lock()
	defer s.fills.mu.Unlock()
	if s.fills.ctx.Err() != nil {
		return false
	}
	s.fills.wg.Add(1)
	go func() {
		defer s.fills.wg.Done()
		fn(s.fills.ctx)
	}()
	return true
}
