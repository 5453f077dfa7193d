//go:build !(linux || darwin || freebsd)

package blobfile

import (
	"errors"
	"syscall"
)

// FreeSpace cannot be measured here: writes go on until the filesystem
// refuses them.
func FreeSpace(string) (free, total int64, err error) {
	return 0, 0, errors.ErrUnsupported
}

// IsNoSpace reports whether err is the filesystem saying it is full.
func IsNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC)
}
