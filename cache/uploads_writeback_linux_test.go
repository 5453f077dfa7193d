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

// TestUploadWritebackErrorNotCommitted: chunks are not fsynced, so a
// write-back error on a chunk's bytes (a disk that fills as blocks are
// allocated, an I/O error) shows later, and only once: the kernel
// reports a file's write-back error to one fsync or waited
// sync_file_range, and the bytes are gone from the disk though still in
// the page cache. The request that saw it (the commit, or a later chunk
// large enough to wait for its write-back) fails; the session must not
// survive it, or the client's retry (507 says: retry when space is
// freed) gets 201 for a blob whose file holds zeros.
func TestUploadWritebackErrorNotCommitted(t *testing.T) {
	for _, seenBy := range []string{"commit", "chunk"} {
		t.Run(seenBy, func(t *testing.T) {
			dir, fill, free := failingDisk(t)
			s := openStore(t, Options{Dir: dir})
			u, err := s.NewUpload(t.Context(), "app")
			if err != nil {
				t.Fatal(err)
			}
			first := bytes.Repeat([]byte("c"), 16<<20)
			data := first
			fill()
			appendChunks(t, s, "app", u.ID, first)
			if seenBy == "commit" {
				_, err = s.CommitUpload(t.Context(), "app", u.ID, digestOf(data))
				if err == nil {
					t.Fatal("commit after a failed write-back succeeded")
				}
				free()
			} else {
				free()
				// Past WriteBehindLag, so the chunk waits for its own
				// write-back, and hears of the first chunk's failure.
				second := bytes.Repeat([]byte("d"), 48<<20)
				data = append(append([]byte{}, first...), second...)
				if _, err := s.AppendUpload(t.Context(), "app", u.ID, int64(len(first)), bytes.NewReader(second)); err == nil {
					t.Fatal("chunk after a failed write-back succeeded")
				}
				// The client's retry of the chunk.
				_, err = s.AppendUpload(t.Context(), "app", u.ID, int64(len(first)), bytes.NewReader(second))
				if err == nil {
					_, err = s.CommitUpload(t.Context(), "app", u.ID, digestOf(data))
				}
			}
			want := digestOf(data)
			if seenBy == "commit" {
				_, err = s.CommitUpload(t.Context(), "app", u.ID, want)
			}
			if err == nil {
				f, oerr := os.OpenFile(s.blobPath(want), os.O_RDONLY|unix.O_DIRECT, 0)
				if oerr != nil {
					t.Fatal(oerr)
				}
				defer f.Close()
				buf := make([]byte, 1<<20) // page-aligned enough for O_DIRECT
				n, _ := f.Read(buf)
				t.Fatalf("retried after a failed write-back: stored %s; its file begins with %q on disk", want, buf[:min(n, 8)])
			}
			wantErr(t, "retry after a failed write-back", err, ErrUploadUnknown)
		})
	}
}
