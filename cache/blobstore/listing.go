package blobstore

import (
	"context"
	"time"
)

// Listed is a committed blob as a backend's listing shows it.
type Listed struct {
	Digest Digest
	// Since is when the backend last wrote it (an object's or a file's
	// modification time); zero when the backend gave none.
	Since time.Time
}

// Lister is what a backend offers whose committed blobs can be listed:
// bytes written whose record then failed (the database full or down, the
// process killed before it retried) are in no record, and only a listing
// of the backend finds them again. Like Sweeper it costs with what the
// backend holds: GC's work, a page at a time. It is optional: a caller
// checks for it with a type assertion.
type Lister interface {
	// Blobs lists up to n committed blobs from cursor ("" for the
	// first page), and the cursor of the next page: "" once there is
	// none.
	Blobs(ctx context.Context, cursor string, n int) (bs []Listed, next string, err error)
}
