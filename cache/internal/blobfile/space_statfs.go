//go:build linux || darwin || freebsd

package blobfile

import (
	"errors"
	"syscall"
)

// FreeSpace is what statfs reports for the filesystem holding dir: the
// bytes an unprivileged writer may still use, and the filesystem's size.
func FreeSpace(dir string) (free, total int64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	bs := int64(st.Bsize)
	return int64(st.Bavail) * bs, int64(st.Blocks) * bs, nil
}

// IsNoSpace reports whether err is the filesystem saying it is full, or
// the writer's quota is.
func IsNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}
