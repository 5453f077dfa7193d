package benchclient

import (
	"io"
	"os"
	"time"
)

// LimitDisk is LimitPush without the hash: the blob's bytes written to a
// new file in dir through the page cache, then fsync. It is the disk's
// share of the bar: a durable push that hashes on another core while the
// disk writes back can come near it, never past it; where it is below
// LimitWrite (sha256 + write, no fsync) the disk, not the CPU, sets the
// push's pace. The file is removed; the time taken is returned. Same
// page-recycling note as LimitPush.
func LimitDisk(dir string, seed uint64, size int64) (time.Duration, error) {
	buf := make([]byte, mib)
	start := time.Now()
	f, err := os.CreateTemp(dir, "limit-disk-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if _, err := io.CopyBuffer(f, NewBlob(seed, size), buf); err != nil {
		return 0, err
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}
