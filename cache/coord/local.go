package coord

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Local is the in-process Leases of a single server. Its zero value is
// not usable: NewLocal.
type Local struct {
	mu    sync.Mutex
	held  map[string]*localLease
	freed map[string]chan struct{} // closed when the key's holder lets go
	now   func() time.Time
}

// NewLocal returns empty in-process leases.
func NewLocal() *Local {
	return &Local{held: map[string]*localLease{}, freed: map[string]chan struct{}{}, now: time.Now}
}

type localLease struct {
	ls       *Local
	key      string
	deadline time.Time
	released bool
}

// Acquire implements Leases.
func (ls *Local) Acquire(ctx context.Context, key string, ttl time.Duration) (Lease, bool, error) {
	if err := CheckKey(key, ttl); err != nil {
		return nil, false, err
	}
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	// The deadline counts from the call, before the lock is waited for,
	// as Deadline promises.
	start := ls.now()
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if cur := ls.held[key]; cur != nil && ls.now().Before(cur.deadline) {
		return nil, false, nil
	}
	l := &localLease{ls: ls, key: key, deadline: start.Add(ttl)}
	ls.held[key] = l
	if _, ok := ls.freed[key]; !ok {
		ls.freed[key] = make(chan struct{})
	}
	return l, true, nil
}

// Wait implements Leases. An expiry has no event to wake on, so a waiter
// also wakes at the holder's deadline and looks again.
func (ls *Local) Wait(ctx context.Context, key string) error {
	for {
		ls.mu.Lock()
		cur := ls.held[key]
		now := ls.now()
		if cur == nil || !now.Before(cur.deadline) {
			ls.mu.Unlock()
			return nil
		}
		freed, until := ls.freed[key], cur.deadline.Sub(now)
		ls.mu.Unlock()
		t := time.NewTimer(until)
		select {
		case <-freed:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		t.Stop()
	}
}

func (l *localLease) Key() string { return l.key }

func (l *localLease) Deadline() time.Time {
	l.ls.mu.Lock()
	defer l.ls.mu.Unlock()
	return l.deadline
}

// owned reports whether l is still its key's lease; mu is held.
func (l *localLease) owned() bool {
	return !l.released && l.ls.held[l.key] == l
}

func (l *localLease) Renew(ctx context.Context, ttl time.Duration) error {
	if err := CheckKey(l.key, ttl); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	start := l.ls.now()
	l.ls.mu.Lock()
	defer l.ls.mu.Unlock()
	if !l.owned() {
		return fmt.Errorf("%w: %s", ErrLost, l.key)
	}
	l.deadline = start.Add(ttl)
	return nil
}

func (l *localLease) Release(context.Context) error {
	l.ls.mu.Lock()
	defer l.ls.mu.Unlock()
	if !l.owned() {
		l.released = true
		return nil
	}
	l.released = true
	delete(l.ls.held, l.key)
	close(l.ls.freed[l.key])
	delete(l.ls.freed, l.key)
	return nil
}

// MaxKey bounds a lease key: keys name a digest or a task, not data.
const MaxKey = 512

// CheckKey refuses keys no backend could store and a ttl that would make
// a lease that is expired as it is taken.
func CheckKey(key string, ttl time.Duration) error {
	if key == "" || len(key) > MaxKey {
		return fmt.Errorf("coord: lease key of %d bytes (1 to %d)", len(key), MaxKey)
	}
	for _, r := range key {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("coord: lease key %q holds a control character", key)
		}
	}
	if ttl <= 0 {
		return fmt.Errorf("coord: lease ttl %v, want > 0", ttl)
	}
	return nil
}
