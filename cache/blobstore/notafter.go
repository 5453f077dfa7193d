package blobstore

import (
	"context"
	"time"
)

// A GC sweep deletes a blob's bytes while it holds the GC lease, and
// checks the lease right before each delete; but a process stopped
// between that check and the request reaching the server (SIGSTOP, a
// frozen VM) sends the request when it wakes, its lease long expired,
// after another replica took GC over, finished the sweep and a push wrote
// the same digest's bytes again: the late delete would take an
// acknowledged blob. A backend whose server can refuse a request that
// arrives too late (S3: a presigned request's expiry, checked on the
// server's clock) fences such deletes with the time ctx carries.

type notAfterKey struct{}

// WithNotAfter returns ctx carrying t: a Delete under it must not take
// effect after t. Backends that cannot fence ignore it.
func WithNotAfter(ctx context.Context, t time.Time) context.Context {
	return context.WithValue(ctx, notAfterKey{}, t)
}

// NotAfter is the time WithNotAfter put in ctx, if any.
func NotAfter(ctx context.Context) (time.Time, bool) {
	t, ok := ctx.Value(notAfterKey{}).(time.Time)
	return t, ok
}
