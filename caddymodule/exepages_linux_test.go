package caddymodule

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/caddy-oci/caddy-oci/internal/pageout"
)

// residentExeBytes is the resident memory (Rss in /proc/self/smaps) of
// this process's mappings of its executable.
func residentExeBytes(t *testing.T) int64 {
	t.Helper()
	exe, err := os.Executable()
	if err == nil {
		exe, err = filepath.EvalSymlinks(exe)
	}
	if err != nil {
		t.Skip(err)
	}
	n, err := pageout.Resident(func(path string) bool { return path == exe })
	if err != nil {
		t.Fatalf("smaps: %v", err)
	}
	return n
}

// Most of the executable's resident pages (code this test never runs
// again) leave the RSS once released.
func TestReleaseExePages(t *testing.T) {
	before := residentExeBytes(t)
	if before < 1<<20 {
		t.Skipf("only %d bytes of the executable resident", before)
	}
	asked, err := releaseExePages()
	if errors.Is(err, unix.EINVAL) {
		t.Skip("madvise MADV_PAGEOUT not supported by this kernel (Linux >= 5.4)")
	}
	if err != nil || asked < before {
		t.Fatalf("releaseExePages = %d, %v (resident before: %d)", asked, err, before)
	}
	after := residentExeBytes(t)
	t.Logf("executable resident: %d KiB before, %d KiB after", before>>10, after>>10)
	if after > before/2 {
		t.Errorf("executable resident: %d bytes before, %d after; want most of it gone", before, after)
	}
}
