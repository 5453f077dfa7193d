//go:build linux

// Package tmpfs gives tests a small filesystem of their own to fill to
// the brim.
package tmpfs

import (
	"os"
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

// Free is the bytes an unprivileged writer may still put on dir's
// filesystem, as statfs tells the stores.
func Free(t testing.TB, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// FillTo writes a filler file into dir (on a tmpfs from Mount) so that
// about left bytes stay free (tmpfs counts whole pages), and returns its
// path: removing it gives the space back.
func FillTo(t testing.TB, dir string, left int64) string {
	t.Helper()
	f, err := os.CreateTemp(dir, "filler-")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := Free(t, dir) - left
	if n < 0 {
		t.Fatalf("only %d bytes free, want %d left", Free(t, dir), left)
	}
	if _, err := f.Write(make([]byte, n)); err != nil {
		t.Fatalf("filler of %d bytes: %v", n, err)
	}
	if got := Free(t, dir); got > left || got < left-64<<10 {
		t.Fatalf("after the filler %d bytes are free, want about %d", got, left)
	}
	return f.Name()
}
