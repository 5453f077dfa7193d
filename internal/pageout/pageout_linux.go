// Package pageout asks the kernel (madvise MADV_PAGEOUT) to take back the
// pages of this process's file mappings, and measures what stays
// resident. A clean page of a file is dropped and read again on its next
// use, a dirty one is written first, and anonymous memory stays without
// swap: nothing changes but where the pages are. That is why it is safe
// on mappings that another goroutine may unmap (and the address be
// reused) between reading /proc/self/maps and the call: at worst other
// memory is asked to be paged out (unlike MADV_DONTNEED, which would zero
// anonymous memory).
package pageout

import (
	"bufio"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Mapping is a range of this process's address space mapped from a file.
type Mapping struct {
	Start, End uintptr
	Path       string
}

// Mappings returns this process's file mappings whose path keep accepts.
func Mappings(keep func(path string) bool) ([]Mapping, error) {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ms []Mapping
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m, ok := ParseMapsLine(sc.Text()); ok && keep(m.Path) {
			ms = append(ms, m)
		}
	}
	return ms, sc.Err()
}

// ParseMapsLine reads "start-end perms offset dev inode path" of
// /proc/self/maps; ok is false for a line without a path.
func ParseMapsLine(line string) (m Mapping, ok bool) {
	fields := strings.Fields(line)
	if len(fields) < 6 {
		return Mapping{}, false
	}
	lo, hi, found := strings.Cut(fields[0], "-")
	if !found {
		return Mapping{}, false
	}
	s, err1 := strconv.ParseUint(lo, 16, 64)
	e, err2 := strconv.ParseUint(hi, 16, 64)
	if err1 != nil || err2 != nil || e <= s {
		return Mapping{}, false
	}
	// A path may hold spaces; the kernel writes it last.
	i := strings.Index(line, fields[5])
	return Mapping{Start: uintptr(s), End: uintptr(e), Path: line[i:]}, true
}

// Release asks the kernel to page out each of ms, calls asked (if not
// nil) for each it could ask about, and returns how many bytes those
// span. A range that fails with ENOMEM or EAGAIN (unmapped since it was
// read, or the kernel busy) is skipped; EINVAL before any range worked
// means a kernel without MADV_PAGEOUT (Linux < 5.4) and is returned.
func Release(ms []Mapping, asked func(Mapping)) (int64, error) {
	var n int64
	for _, m := range ms {
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, m.Start, m.End-m.Start, unix.MADV_PAGEOUT); errno != 0 {
			if errno == unix.EINVAL && n == 0 {
				return 0, errno
			}
			continue
		}
		n += int64(m.End - m.Start)
		if asked != nil {
			asked(m)
		}
	}
	return n, nil
}

// Resident is the resident memory (Rss in /proc/self/smaps) of this
// process's mappings whose path keep accepts.
func Resident(keep func(path string) bool) (int64, error) {
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var total int64
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if fields := strings.Fields(line); len(fields) > 0 && !strings.HasSuffix(fields[0], ":") {
			// A mapping's header line; the lines after it are its own.
			m, ok := ParseMapsLine(line)
			in = ok && keep(m.Path)
			continue
		}
		if v, ok := strings.CutPrefix(line, "Rss:"); ok && in {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, err
			}
			total += kb << 10
		}
	}
	return total, sc.Err()
}
