//go:build !(linux || darwin || freebsd)

package cache

import (
	"errors"
	"syscall"
)

// freeSpace cannot be measured here: writes go on until the filesystem
// refuses them.
func freeSpace(string) (free, total int64, err error) {
	return 0, 0, errors.ErrUnsupported
}

// isNoSpace reports whether err is the filesystem saying it is full.
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC)
}
