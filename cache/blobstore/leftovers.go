package blobstore

import (
	"context"
	"time"
)

// Leftover is a piece of a write that never finished, as a backend holds
// it: an S3 multipart upload in progress, an object or a file of a write
// session, the temporary copy of a Put. A process killed mid-write leaves
// one, and so does ending a session while the backend is unreachable.
type Leftover struct {
	// Session is the write session it belongs to (Session.ID); "" when
	// it belongs to none (a Put or a commit's copy cut off).
	Session string
	// Since is when the backend began it (an upload's initiation, an
	// object's last write).
	Since time.Time
	// Key and Upload name it in the backend, for DropLeftover: opaque to
	// the caller.
	Key, Upload string
}

// Sweeper is what a backend offers whose unfinished writes can outlive
// the process that made them. Finding them lists the backend, which costs
// with what it holds: it is GC's work (one replica, in the background),
// never a request's. It is optional: a caller checks for it with a type
// assertion.
type Sweeper interface {
	// Leftovers lists up to n leftovers from cursor ("" for the first
	// page), and the cursor of the next page: "" once there is none.
	// Leftovers of live writes are listed too: the caller decides, by
	// their age and its records of sessions, which are abandoned.
	Leftovers(ctx context.Context, cursor string, n int) (ls []Leftover, next string, err error)
	// DropLeftover frees l. One gone already is not an error.
	DropLeftover(ctx context.Context, l Leftover) error
}
