package caddymodule

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
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
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Skipf("no /proc/self/smaps: %v", err)
	}
	defer f.Close()
	var total int64
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if !strings.HasSuffix(fields[0], ":") {
			in = len(fields) >= 6 && fields[5] == exe
			continue
		}
		if fields[0] == "Rss:" && in && len(fields) >= 2 {
			kb, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			total += kb << 10
		}
	}
	return total
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
