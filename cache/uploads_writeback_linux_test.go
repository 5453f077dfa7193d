package cache

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// failingDisk mounts an ext4 filesystem on a loop device whose backing
// file lives on a small tmpfs, and returns its mount point and a
// function that fills the tmpfs: from then on, writing back data to
// blocks never written before fails with ENOSPC on the device, after
// write() and the page cache accepted it, as a thin-provisioned or
// failing disk does. free frees the tmpfs again. Needs root.
func failingDisk(t *testing.T) (dir string, fill, free func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (mount, losetup)")
	}
	for _, tool := range []string{"losetup", "mkfs.ext4", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	run := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Skipf("%s %v: %v: %s", name, args, err, out)
		}
		return string(bytes.TrimSpace(out))
	}
	base := t.TempDir()
	back, mnt := filepath.Join(base, "back"), filepath.Join(base, "mnt")
	for _, d := range []string{back, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	run("mount", "-t", "tmpfs", "-o", "size=192m", "tmpfs", back)
	t.Cleanup(func() { _ = exec.Command("umount", back).Run() })
	img := filepath.Join(back, "img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 128<<20); err != nil {
		t.Fatal(err)
	}
	// Metadata and journal written now, so only new data blocks fail.
	run("mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", img)
	loop := run("losetup", "-f", "--show", img)
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", loop).Run() })
	run("mount", loop, mnt)
	t.Cleanup(func() { _ = exec.Command("umount", mnt).Run() })
	filler := filepath.Join(back, "filler")
	fill = func() {
		var st unix.Statfs_t
		if err := unix.Statfs(back, &st); err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(filler)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		_, err = f.Write(make([]byte, int64(st.Bavail)*st.Bsize+1<<20))
		if !errors.Is(err, unix.ENOSPC) {
			t.Fatalf("filling the tmpfs: %v", err)
		}
	}
	free = func() {
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(mnt, "store"), fill, free
}

// TestUploadWritebackErrorNotCommitted: a write-back error on a chunk's
// bytes (a disk that fills as blocks are allocated, an I/O error) comes
// after write() and the page cache took them, and the kernel reports it
// once. The chunk's own fsync must hear it, so that it is that chunk which
// fails and is cut off, not a later request (a commit's fsync after the
// error was reported, or after the file's pages were evicted, succeeds),
// which would store what the disk holds (zeros) under the pushed digest.
// The client's retry, once space is freed, stores the pushed bytes.
func TestUploadWritebackErrorNotCommitted(t *testing.T) {
	dir, fill, free := failingDisk(t)
	s := openStore(t, Options{Dir: dir})
	u, err := s.NewUpload(t.Context(), "app")
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("c"), 16<<20)
	fill()
	_, err = s.AppendUpload(t.Context(), "app", u.ID, 0, bytes.NewReader(chunk))
	free()
	if err == nil {
		t.Fatal("a chunk whose write-back failed was acknowledged")
	}
	// The client's retry of the chunk, then the commit.
	if _, err := s.AppendUpload(t.Context(), "app", u.ID, 0, bytes.NewReader(chunk)); err != nil {
		t.Fatalf("retry of the chunk after space was freed: %v", err)
	}
	if _, err := s.CommitUpload(t.Context(), "app", u.ID, digestOf(chunk)); err != nil {
		t.Fatalf("commit after the retry: %v", err)
	}
	// What the disk holds, not the page cache.
	f, err := os.OpenFile(s.blobPath(digestOf(chunk)), os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20) // page-aligned enough for O_DIRECT
	for off := 0; off < len(chunk); off += len(buf) {
		n, err := f.ReadAt(buf, int64(off))
		if err != nil || !bytes.Equal(buf[:n], chunk[off:off+n]) {
			t.Fatalf("the stored blob on disk at %d: %q, %v; want the pushed bytes", off, buf[:min(n, 8)], err)
		}
	}
}
