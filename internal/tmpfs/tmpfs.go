//go:build linux

// Package tmpfs gives tests a small filesystem of their own to fill to
// the brim.
package tmpfs

import (
	"strconv"
	"syscall"
	"testing"
)

// Mount mounts a tmpfs of size bytes on a new folder and unmounts it when
// the test ends. It skips when mounting is not permitted (not root, or a
// container without the capability).
func Mount(t testing.TB, size int64) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+strconv.FormatInt(size, 10)); err != nil {
		t.Skipf("cannot mount a tmpfs to fill (needs root or CAP_SYS_ADMIN): %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}
