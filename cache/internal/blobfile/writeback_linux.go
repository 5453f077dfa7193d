package blobfile

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

const canWriteBehind = true

// startWriteback starts writing [off, off+n) of f to disk and returns
// without waiting.
func startWriteback(f *os.File, off, n int64) error {
	return syncRange(f, off, n, unix.SYNC_FILE_RANGE_WRITE)
}

// waitWriteback returns once [off, off+n) of f, written before, is on
// disk (the data; metadata and the disk's cache wait for fsync).
func waitWriteback(f *os.File, off, n int64) error {
	return syncRange(f, off, n, unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER)
}

func syncRange(f *os.File, off, n int64, flags int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil // not a plain file: fsync alone does the work
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			serr = unix.SyncFileRange(int(fd), off, n, flags)
			if serr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		return nil
	}
	switch {
	case serr == nil:
		return nil
	case errors.Is(serr, unix.ENOSYS), errors.Is(serr, unix.EINVAL), errors.Is(serr, unix.EOPNOTSUPP), errors.Is(serr, unix.ESPIPE):
		// Not supported on this file or kernel: the final fsync does it all.
		return nil
	default:
		return fmt.Errorf("write back: %w", serr)
	}
}
