package cache

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// releaseTablePages asks the kernel (madvise MADV_PAGEOUT) to take back
// the pages of this process's mappings of the .sst files in dir, and
// returns how many bytes of mappings it asked about. With done not nil
// it asks only about tables not in done that were last written at least
// tableSettled ago (a table being written now would only be faulted back
// in by its writer), adds those to done, and drops from done the tables
// no longer mapped; nil asks about every table. MADV_PAGEOUT keeps
// the data: a clean page is dropped and read again on its next use, a
// dirty one is written first. That is why it is safe here, where badger
// may unmap a table (and the address be reused) between reading
// /proc/self/maps and the call: at worst other memory is asked to be
// paged out, which changes where it lives, never what it holds (unlike
// MADV_DONTNEED, which would zero anonymous memory).
func releaseTablePages(dir string, done map[string]bool) (int64, error) {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var (
		asked  int64
		mapped map[string]bool
		now    = time.Now()
	)
	if done != nil {
		mapped = make(map[string]bool, len(done))
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		start, end, path, ok := parseMapsLine(sc.Text())
		if !ok || filepath.Dir(path) != dir || filepath.Ext(path) != ".sst" {
			continue
		}
		if done != nil {
			mapped[path] = true
			if done[path] {
				continue
			}
			if info, err := os.Stat(path); err != nil || now.Sub(info.ModTime()) < tableSettled {
				continue // gone already, or still being written: next round
			}
		}
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, start, end-start, unix.MADV_PAGEOUT); errno != 0 {
			// ENOMEM or EAGAIN: the table was unmapped after the line was
			// read (a compaction), or the kernel is busy; the next range
			// and the next round go on. EINVAL before any range worked:
			// a kernel without MADV_PAGEOUT, and the caller stops.
			if errno == unix.EINVAL && asked == 0 {
				return asked, errno
			}
			continue
		}
		asked += int64(end - start)
		if done != nil {
			done[path] = true
		}
	}
	for path := range done {
		if !mapped[path] {
			delete(done, path)
		}
	}
	return asked, sc.Err()
}

// parseMapsLine reads "start-end perms offset dev inode path" of
// /proc/self/maps; ok is false for a line without a path.
func parseMapsLine(line string) (start, end uintptr, path string, ok bool) {
	fields := strings.Fields(line)
	if len(fields) < 6 {
		return 0, 0, "", false
	}
	lo, hi, found := strings.Cut(fields[0], "-")
	if !found {
		return 0, 0, "", false
	}
	s, err1 := strconv.ParseUint(lo, 16, 64)
	e, err2 := strconv.ParseUint(hi, 16, 64)
	if err1 != nil || err2 != nil || e <= s {
		return 0, 0, "", false
	}
	// A path may hold spaces; the kernel writes it last.
	i := strings.Index(line, fields[5])
	return uintptr(s), uintptr(e), line[i:], true
}

// inMemoryFS reports whether dir is on tmpfs.
func inMemoryFS(dir string) bool {
	var fs unix.Statfs_t
	return unix.Statfs(dir, &fs) == nil && fs.Type == unix.TMPFS_MAGIC
}
