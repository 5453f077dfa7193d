//go:build linux && (amd64 || arm64)

package benchclient

import (
	"os"
	"syscall"
)

// DropCache asks the kernel to drop the clean page-cache pages of the file
// at path (POSIX_FADV_DONTNEED), so the next write in the run reuses pages
// that were just freed; see the note at LimitPush.
func DropCache(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	const fadvDontNeed = 4
	if _, _, errno := syscall.Syscall6(syscall.SYS_FADVISE64, f.Fd(), 0, 0, fadvDontNeed, 0, 0); errno != 0 {
		return errno
	}
	return nil
}
