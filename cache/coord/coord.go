// Package coord is the seam for coordination between replicas: who fills
// a digest from upstream, who runs GC. Its one primitive is a lease: a
// named, exclusive right that expires when its holder stops renewing it,
// so a replica that dies (kill -9, a lost network) frees what it held
// without anyone's help.
//
// Local is the in-process implementation a single server uses; package
// pgmeta has the PostgreSQL one replicas share. Both run the contract
// suite of package coordtest.
//
// Why leases rather than PostgreSQL advisory locks for everything: a
// session lock lives on one connection, which a pool may close or a
// proxy (pgbouncer) may share, and its holder learns it lost the lock
// only on its next query. A lease row has a deadline both sides agree on,
// works through any pool, and Hold turns it into a context that ends
// before anyone else may take over.
package coord

import (
	"context"
	"errors"
	"time"
)

// ErrLost: the lease is no longer the caller's — it expired and another
// holder took it, or it was released.
var ErrLost = errors.New("lease lost")

// Leases hands out named leases. Keys are short printable strings chosen
// by the caller ("fill/sha256:...", "gc").
type Leases interface {
	// Acquire takes the lease on key for ttl if nobody holds it, or its
	// holder let it expire. ok is false when another holder has it; the
	// error is for the store failing, never for a lease that is taken.
	Acquire(ctx context.Context, key string, ttl time.Duration) (l Lease, ok bool, err error)
	// Wait returns nil once key is free (released, expired or never
	// taken), or ctx's error. A free key may be taken again by the time
	// the caller acts: Wait is a hint to retry Acquire or to look for the
	// holder's result, not a grant.
	Wait(ctx context.Context, key string) error
}

// Lease is one holder's right to a key.
type Lease interface {
	Key() string
	// Deadline is when the lease ends unless renewed, on the caller's
	// clock, measured from before the request that set it was sent: up
	// to then no other holder can have it.
	Deadline() time.Time
	// Renew extends the lease to ttl from now. ErrLost if it is no longer
	// the caller's; then the caller must stop acting on it.
	Renew(ctx context.Context, ttl time.Duration) error
	// Release frees the key at once. Releasing a lease that is lost or
	// already released is not an error and frees nobody else's.
	Release(ctx context.Context) error
}

// Hold acquires key and keeps it renewed until release is called or the
// lease is lost. held is done when either happens, and when a deadline
// passes without a renewal (the store unreachable): so work bound to held
// stops before another holder may start. ok is false (and held nil) when
// another holder has the key. release ends held and any renewal in
// flight, and frees the key.
func Hold(ctx context.Context, ls Leases, key string, ttl time.Duration) (held context.Context, release func(), ok bool, err error) {
	l, ok, err := ls.Acquire(ctx, key, ttl)
	if err != nil || !ok {
		return nil, nil, ok, err
	}
	inner, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	held = context.WithValue(inner, heldLease{}, l)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		keep(inner, l, ttl, stop, cancel)
	}()
	var once bool
	release = func() {
		if once {
			return
		}
		once = true
		// The work is over: a renewal in flight is of no use any more,
		// and is ended rather than waited for. On a hung store it held
		// the caller for its whole bound before the release's own (a
		// chunk's 503 with PostgreSQL stopped came after 15 s: the
		// chunk's call, the renewal, the release). A renewal that lands
		// all the same keeps the token the release deletes by.
		cancel(context.Canceled)
		close(stop)
		<-done
		Free(context.WithoutCancel(ctx), l, ttl)
	}
	return held, release, true, nil
}

// heldLease is the context key of the lease behind a context Hold made.
type heldLease struct{}

// Check is nil while ctx, made by Hold or derived from it, may still act
// on its lease: ctx's error once it ended, and ErrExpired once the lease's
// deadline has passed, even if nothing has ended ctx yet. That happens to
// a process stopped past its deadline (SIGSTOP, a frozen VM, a long
// pause) and then woken: its goroutines resume in any order, and a step
// of the work may run before the timer that ends held. A step that
// another holder must never overlap (a GC's delete of a blob's bytes)
// asks Check right before it. A context Hold did not make answers its
// own error only.
func Check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if l, ok := ctx.Value(heldLease{}).(Lease); ok && !time.Now().Before(l.Deadline()) {
		return ErrExpired
	}
	return nil
}

// Deadline is the deadline of the lease behind ctx, made by Hold or
// derived from it; ok is false for any other context.
func Deadline(ctx context.Context) (deadline time.Time, ok bool) {
	l, ok := ctx.Value(heldLease{}).(Lease)
	if !ok {
		return time.Time{}, false
	}
	return l.Deadline(), true
}

// Free releases l. If the store cannot be reached (PostgreSQL
// restarting), it keeps trying in the background until l's deadline or
// until ctx ends (a store's lifetime, for a caller whose store may close
// first: no retry can work then): a lease its holder is done with but
// could not release keeps everyone waiting on its key (a fill's followers
// on every replica, the next GC) until it expires, up to ttl after the
// store is back.
func Free(ctx context.Context, l Lease, ttl time.Duration) {
	rctx, rcancel := context.WithTimeout(ctx, ttl)
	err := l.Release(rctx)
	rcancel()
	if err == nil {
		return
	}
	go func() {
		for delay := 100 * time.Millisecond; time.Now().Before(l.Deadline()); delay = min(delay*2, 2*time.Second) {
			t := time.NewTimer(delay)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			rctx, rcancel := context.WithDeadline(ctx, l.Deadline())
			err := l.Release(rctx)
			rcancel()
			if err == nil {
				return
			}
		}
	}()
}

// ErrExpired ends a held context whose lease reached its deadline without
// a renewal getting through.
var ErrExpired = errors.New("lease expired: its store did not confirm a renewal in time")

// keep renews l every third of ttl until stop. A renewal that fails for a
// transient reason is retried soon; held ends (cancel) when the lease is
// lost or its deadline passes first.
func keep(held context.Context, l Lease, ttl time.Duration, stop <-chan struct{}, cancel context.CancelCauseFunc) {
	every := max(ttl/3, time.Millisecond)
	next := time.Now().Add(every)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		wake := next
		if d := l.Deadline(); d.Before(wake) {
			wake = d
		}
		t.Reset(time.Until(wake))
		select {
		case <-stop:
			return
		case <-held.Done():
			return
		case <-t.C:
		}
		if !time.Now().Before(l.Deadline()) {
			cancel(ErrExpired)
			return
		}
		if time.Now().Before(next) {
			continue
		}
		rctx, rcancel := context.WithDeadline(held, l.Deadline())
		err := l.Renew(rctx, ttl)
		rcancel()
		switch {
		case errors.Is(err, ErrLost):
			cancel(err)
			return
		case err != nil:
			next = time.Now().Add(every / 4) // the deadline still stands
		default:
			next = time.Now().Add(every)
		}
	}
}
